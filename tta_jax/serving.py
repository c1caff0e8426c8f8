"""Run an exported sampler (``python -m launch.export --workdir DIR --out EXPORT``) without the model source.

An export folder holds::

    sampler.jax          the whole text -> audio sampler serialised by ``jax.export`` (StableHLO, fixed batch,
                         length and steps; text encoders, CFG, sampler loop, token PCA and codec decoder inside)
    params.safetensors   the denoiser's inference params ('/'-joined keys; float32 or bfloat16)
    export.json          what to feed it: batch, sample rate, platforms, guidance / rescale defaults,
                         the tokenizers (``tokenizer_<i>/`` folders or byte-token settings)
    config.json          the run's resolved config (for reference; not read here)

:class:`ExportedSampler` imports only jax, numpy, safetensors and the model-free tokenizers
(:mod:`tta_jax.text.tokenizer`, :mod:`tta_jax.text.bytes`): no Flax, no denoiser, codec or text-encoder module
(tests/test_export.py blocks them)::

    s = load_exported("EXPORT")
    audio, latents = s(["a dog barks"], seed=0, guidance=3.0)   # [N, S] at s.sample_rate, N = len(prompts)

Prompts beyond the exported batch are sampled in several calls (call c with seed + c); a short call is padded
with the empty prompt.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from tta_jax.convert.common import flatten_params as flatten
from tta_jax.convert.common import unflatten_params as nest
from tta_jax.errors import UserError

EXPORT_FORMAT = 1
SAMPLER_FILE = "sampler.jax"
PARAMS_FILE = "params.safetensors"
META_FILE = "export.json"
CONFIG_FILE = "config.json"


class ExportError(UserError, ValueError):
    """An export folder is incomplete, of another format, or not runnable here; the message names the file."""


class ExportedSampler:
    """An export folder loaded for sampling; see the module docstring."""

    def __init__(self, directory: str):
        import jax
        from safetensors.numpy import load_file

        from tta_jax.text.tokenizer import load_tokenizer

        self.directory = directory
        meta_path = os.path.join(directory, META_FILE)
        for name in (META_FILE, SAMPLER_FILE, PARAMS_FILE):
            if not os.path.exists(os.path.join(directory, name)):
                raise ExportError(f"{os.path.join(directory, name)} is missing: {directory} is not a complete "
                                  f"export (python -m launch.export --workdir DIR --out {directory})")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{meta_path}: export format {self.meta.get('format')!r}; this tta_jax reads "
                              f"format {EXPORT_FORMAT}")
        here = jax.default_backend()
        if here not in self.meta["platforms"]:
            raise ExportError(f"{meta_path}: exported for {self.meta['platforms']}, this machine runs {here!r}")
        with open(os.path.join(directory, SAMPLER_FILE), "rb") as f:
            self.exported = jax.export.deserialize(bytearray(f.read()))
        # bf16 is a storage format: computed in float32. On the device once, not once per call.
        self.params = jax.device_put(nest({k: np.asarray(v, np.float32)
                                           for k, v in load_file(os.path.join(directory, PARAMS_FILE)).items()}))
        self.tokenizers = {t["key"]: load_tokenizer(t["spec"], os.path.join(directory, t["dir"]))
                           for t in self.meta["tokenizers"]}
        self._call = jax.jit(self.exported.call)

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    def tokens(self, texts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """{text key: {"input_ids", "attention_mask"} [B, L] int32} for the exported text encoders."""
        return {k: {n: np.asarray(v, np.int32) for n, v in tok(list(texts)).items()}
                for k, tok in self.tokenizers.items()}

    def __call__(self, prompts: Sequence[str], *, seed: int = 0, guidance: float | None = None,
                 rescale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (audio [N, S] float32, codec latents [N, ...]) for N = len(prompts), batch rows at a time;
        call ``c`` (0-based) uses seed ``seed + c``."""
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ExportError("prompts must be a non-empty list of strings")
        g = _finite("guidance", self.meta["guidance"] if guidance is None else guidance)
        r = _finite("rescale", self.meta["rescale"] if rescale is None else rescale)
        null = self.tokens([""])
        audio, lat = [], []
        for c, i in enumerate(range(0, len(prompts), self.batch)):
            chunk = prompts[i:i + self.batch]
            toks = self.tokens(chunk + [""] * (self.batch - len(chunk)))
            a, z = self._call(self.params, toks, null, np.int32(seed + c), np.float32(g), np.float32(r))
            audio.append(np.asarray(a)[:len(chunk)])
            lat.append(np.asarray(z)[:len(chunk)])
        return np.concatenate(audio), np.concatenate(lat)


def _finite(name: str, value) -> float:
    """``value`` as a finite float, else an :class:`ExportError` naming ``name`` (NaN guidance gives NaN audio)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{name}={value!r} is not a number") from None
    if not np.isfinite(v):
        raise ExportError(f"{name}={value!r} is not finite")
    return v


def load_exported(directory: str) -> ExportedSampler:
    """An export folder -> :class:`ExportedSampler` (no model code imported)."""
    if not os.path.isdir(directory):
        raise ExportError(f"{directory}: not a directory (expected an export folder from launch.export)")
    return ExportedSampler(directory)


__all__ = ["ExportError", "ExportedSampler", "load_exported", "flatten", "nest", "EXPORT_FORMAT"]
