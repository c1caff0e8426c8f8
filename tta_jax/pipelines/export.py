"""Export a trained text-to-audio run as one serialised sampler (``jax.export``, StableHLO) that
:mod:`tta_jax.serving` runs without the model source; ``python -m launch.export --workdir DIR --out EXPORT``.

The exported function, for a fixed batch B, length (latent frames) and number of sampler steps::

    sample(params, tokens, null_tokens, seed int32, guidance float32, rescale float32)
        -> (audio [B, S] float32, codec latents [B, T, C] or [B, H, T, C])

``tokens`` / ``null_tokens``: per text encoder ``{"input_ids", "attention_mask"}`` [B, L] / [1, L] int32 of the
prompts and of the empty prompt (host tokenizers saved beside it); inside: the text encoders' forward passes,
CFG with the run's guidance form, the whole sampler loop, the token PCA and the codec's decoder. The denoiser's
``params`` are an input (stored once in ``params.safetensors``, float32 or bfloat16; the loader casts bfloat16
to float32, so only storage shrinks and the sampler computes as the rounded float32 model); the text encoders', the PCA's and the codec's weights are
constants of the module. Systems whose extra condition is computed outside the graph (reference audio:
SERST, DreamAudio; DC-LDM's LM) are refused.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax import serving
from tta_jax.errors import ConfigError
from tta_jax.pipelines import tta

PLATFORMS = ("cpu", "cuda", "tpu")
DTYPES = {"float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16}


def sampler_fn(sm: tta.Sampling):
    """-> ``sample(params, tokens, null_tokens, seed, guidance, rescale)`` (module docstring) for one
    :class:`~tta_jax.pipelines.tta.Sampling`; traceable, the batch comes from ``tokens``."""
    from tta_jax.text.registry import text_features

    def sample(params, tokens, null_tokens, seed, guidance, rescale):
        cond = text_features(sm.text, tokens)
        if sm.negative == "zeros":
            b = jax.tree_util.tree_leaves(cond)[0].shape[0]
            cond["text_null"] = jnp.zeros((b,), bool)
            uncond = {"text_null": jnp.ones((1,), bool)}
        else:
            uncond = text_features(sm.text, null_tokens)
        lat = sm.generator.traceable(params, cond, uncond, jax.random.PRNGKey(seed), sm.shape,
                                     guidance=guidance, rescale=rescale)
        lat, audio = sm.to_audio(lat)
        return audio.astype(jnp.float32), lat.astype(jnp.float32)

    return sample


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)


def export_sampler(config, params, out_dir: str, *, batch: int = 1, num_frames: int | None = None,
                   steps: int | None = None, dtype: str = "float32", platforms: Sequence[str] = PLATFORMS,
                   workdir: str | None = None) -> dict:
    """Writes the export folder (:mod:`tta_jax.serving`) for ``config`` and its denoiser ``params`` (unboxed or
    boxed) -> the metadata written. ``platforms``: lowered for all at once; when that fails (an op without a
    lowering there) each is tried alone and the ones that lower are kept (at least the current backend)."""
    from flax.core import meta

    from tta_jax.conditioners.registry import reference_spec_of
    from tta_jax.text.registry import tokenize
    from tta_jax.text.tokenizer import save_tokenizer

    if reference_spec_of(config.get("conditioner")) is not None:
        raise ConfigError("config.conditioner: this system's extra condition (reference audio or an LM's "
                          "acoustics) is computed outside the sampler; exporting it is not supported")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if int(batch) < 1:
        raise ConfigError(f"--batch {batch}: expected >= 1")
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad:
        raise ConfigError(f"--platforms {bad[0]!r}: expected some of {PLATFORMS}")
    sm = tta.sampling_of(config, workdir=workdir, num_frames=num_frames, steps=steps)
    if not sm.text.towers:
        raise ConfigError(f"config.text.name={sm.text.name!r} gives token ids, not text states: no sampler to export")
    params = meta.unbox(params)
    tokens = tokenize(sm.text, [""] * int(batch))
    null = tokenize(sm.text, [""])
    probe = tta.text_conds(sm.text.encode, [""], sm.negative)[0]
    tta.check_params(sm.denoiser, params, sm.shape, int(probe["text"].shape[1]) if "text" in probe else 1,
                     workdir or "params", probe)
    stored = serving.flatten(jax.tree.map(lambda p: np.asarray(p, np.float32).astype(DTYPES[dtype]), params))
    params = serving.nest({k: v.astype(np.float32) for k, v in stored.items()})   # what the loader feeds
    args = (params, tokens, null, np.int32(0), np.float32(0), np.float32(0))
    specs = jax.tree.map(_spec, args)
    fn = jax.jit(sampler_fn(sm))
    here = jax.default_backend()
    try:
        exp = jax.export.export(fn, platforms=tuple(platforms))(*specs)
    except Exception as e:   # one platform without a lowering: keep the ones that lower
        logging.warning("export for %s failed (%s); trying each platform alone", list(platforms), e)
        ok = [p for p in platforms if _lowers(fn, specs, p)]
        if here not in ok:
            raise
        exp = jax.export.export(fn, platforms=tuple(ok))(*specs)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, serving.SAMPLER_FILE), "wb") as f:
        f.write(exp.serialize())
    from safetensors.numpy import save_file

    save_file(stored, os.path.join(out_dir, serving.PARAMS_FILE))
    toks = []
    for i, (key, _, tower) in enumerate(sm.text.towers):
        d = f"tokenizer_{i}"
        toks.append({"key": key, "dir": d, "spec": save_tokenizer(tower.tokenizer, os.path.join(out_dir, d))})
    info = {"format": serving.EXPORT_FORMAT, "platforms": list(exp.platforms), "batch": int(batch),
            "frames": sm.frames, "steps": int(sm.generator.sampler.num_steps), "sample_rate": int(sm.codec.sample_rate),
            "seconds": sm.frames * sm.codec.hop_length / sm.codec.sample_rate, "dtype": dtype,
            "guidance": float(sm.generator.guidance_scale), "rescale": float(sm.generator.guidance_rescale),
            "guidance_mode": sm.generator.guidance_mode, "negative": sm.negative, "tokenizers": toks,
            "jax": jax.__version__, "codec": sm.codec.name, "text": sm.text.name,
            "denoiser": sm.denoiser.name, "model_shape": list(sm.shape)}
    with open(os.path.join(out_dir, serving.META_FILE), "w") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(out_dir, serving.CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=1) if hasattr(config, "to_json") else json.dumps(dict(config)))
    return info


def _lowers(fn, specs, platform: str) -> bool:
    try:
        jax.export.export(fn, platforms=(platform,))(*specs)
        return True
    except Exception as e:  # noqa: BLE001 - reported, the platform is left out
        logging.warning("no %s lowering: %s", platform, str(e).splitlines()[0][:200])
        return False


__all__ = ["export_sampler", "sampler_fn", "PLATFORMS"]
