"""Conditioner registry: ``config.conditioner`` -> a wrapper around the denoiser and the features its data needs.

A system whose condition is more than text (SERST's reference audio; later DreamAudio's reference pairs and
DC-LDM's acoustic LM) names it in ``config.conditioner.name``; everything else (task, generator, loader,
precompute, sampling) stays shared:

    den = wrap_denoiser(den, config.conditioner)   # Denoiser reading the conditioner's cond keys
    spec = reference_spec_of(config.conditioner, sample_rate=codec.sample_rate)   # dict | None
    encode = reference_features_of(config.conditioner, codec=codec, text=text)
    feats = encode(audio [N, S] at spec["sample_rate"], captions [N]) -> {name: [N, ...]}

``spec``: ``seconds`` and ``count`` K of the references, their ``sample_rate`` (the codec's when the entry
encodes references with the system's own codec), ``captions`` (whether each reference needs a caption),
``fixed_count`` (K slots always, fewer references masked: the model takes 0..K) and
the loader's reference augmentation: ``concept_drop`` (p of dropping each reference on its own),
``content_mask`` (fraction of frames zeroed, one span per reference, along axis -2 of the features named in
``content_keys``); ``latent_keys``: the features that are latents of the system codec ([K, T, C] per example),
which the task and the sampler move to the denoiser's token space (patches, token PCA) as they do the target; ``features``: the names the feature function returns; ``target``: the one "reference" is the example itself (its own clip and caption in
training; at sampling the features come from the prompt alone, e.g. DC-LDM's LM). The feature names are the cond keys the wrapped denoiser reads (precompute stores them as
``ref:<name>`` [K, ...]; the loader emits ``<name>`` [B, K, ...] and ``reference_mask`` [B, K]).

Entries: ``serst`` (:mod:`tta_jax.conditioners.serst`), ``dreamaudio`` (:mod:`tta_jax.conditioners.
dreamaudio`), ``dcldm`` (:mod:`tta_jax.conditioners.dcldm`). An empty section (no name) is no conditioner.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import numpy as np

from tta_jax import sections
from tta_jax.errors import ConfigError


SPEC_DEFAULTS = {"sample_rate": None, "captions": False, "fixed_count": False, "concept_drop": 0.0,
                 "content_mask": 0.0, "content_keys": (), "latent_keys": (), "target": False, "features": ()}


@dataclasses.dataclass(frozen=True)
class Conditioner:
    """wrap(den, section, where) -> Denoiser; reference(section) -> spec | None (module docstring);
    features(section, codec, text) -> encode(audio [N, S], captions [N]) -> {name: [N, ...]}."""
    wrap: Callable[..., Any]
    reference: Callable[[Mapping[str, Any]], dict | None] | None = None
    features: Callable[..., Callable[[Any, Any], dict]] | None = None
    keys: tuple[str, ...] = ()   # section keys the entry accepts (besides name)


def _serst() -> Conditioner:
    from tta_jax.conditioners import serst

    return Conditioner(serst.with_serst, lambda s: serst.reference_spec(s.get("reference")),
                       lambda s, codec, text: lambda audio, captions=None: serst.reference_features(audio),
                       ("heads", "encoder", "reference", "path"))


def _dreamaudio() -> Conditioner:
    from tta_jax.conditioners import dreamaudio

    return Conditioner(dreamaudio.with_mrc, dreamaudio.reference_spec, dreamaudio.reference_encoder,
                       dreamaudio.SECTION_KEYS)


def _dcldm() -> Conditioner:
    from tta_jax.conditioners import dcldm

    return Conditioner(dcldm.with_acoustic, dcldm.reference_spec, dcldm.acoustic_features, dcldm.SECTION_KEYS)


CONDITIONERS: dict[str, Callable[[], Conditioner]] = {"serst": _serst, "dreamaudio": _dreamaudio, "dcldm": _dcldm}


def _entry(section, where: str) -> tuple[Conditioner | None, dict]:
    d = sections.as_dict(section) if section is not None else {}
    name = d.get("name")
    if not name:
        if d:
            raise ConfigError(f"{where} has settings {sorted(d)} but no name; choose one of {sorted(CONDITIONERS)}")
        return None, d
    if name not in CONDITIONERS:
        raise ConfigError(f"{where}.name={name!r}; expected one of {sorted(CONDITIONERS)}")
    entry = CONDITIONERS[name]()
    bad = sorted(set(d) - set(entry.keys) - {"name"})
    if bad:
        raise ConfigError(f"{where}.{bad[0]} is not a setting of the {name!r} conditioner ({list(entry.keys)})")
    return entry, d


def wrap_denoiser(den, section, where: str = "config.conditioner"):
    """The denoiser behind the configured conditioner (unchanged when there is none)."""
    entry, d = _entry(section, where)
    return den if entry is None else entry.wrap(den, d, where)


def reference_spec_of(section, where: str = "config.conditioner", *, sample_rate: int | None = None
                      ) -> dict | None:
    """What references the conditioner reads (module docstring), or None. ``sample_rate``: the system codec's
    rate, for an entry that encodes its references with that codec."""
    entry, d = _entry(section, where)
    if entry is None or entry.reference is None:
        return None
    spec = {**SPEC_DEFAULTS, **entry.reference(d)}
    if spec["sample_rate"] is None and sample_rate is not None:
        spec["sample_rate"] = int(sample_rate)   # stays None when the caller does not know the codec
    return spec


def reference_features_of(section, where: str = "config.conditioner", *, codec=None, text=None
                          ) -> Callable[..., dict]:
    """-> ``encode(audio [N, S] at the spec's rate, captions: list[str] | None) -> {name: [N, ...]}``;
    ``codec`` / ``text``: the system's (registry) codec and text encoder, for an entry that uses them."""
    entry, d = _entry(section, where)
    if entry is None or entry.features is None:
        raise ConfigError(f"{where} reads no reference audio")
    return entry.features(d, codec, text)


def is_reference_conditioned(section, where: str = "config.conditioner") -> bool:
    entry, _ = _entry(section, where)
    return entry is not None and entry.reference is not None


def load_references(paths, spec: dict) -> np.ndarray:
    """Reference files (or arrays already at ``spec["sample_rate"]``) -> [K, S] float32: mono, resampled, the
    first ``spec["seconds"]`` (zero-padded when shorter). A file that cannot be read fails naming it."""
    from tta_jax.audio.io import check_audio, load_audio

    if spec.get("sample_rate") is None:
        raise ValueError("the reference spec has no sample_rate (pass the codec's to reference_spec_of)")
    sr, n = int(spec["sample_rate"]), int(round(float(spec["seconds"]) * int(spec["sample_rate"])))
    out = np.zeros((len(paths), n), np.float32)
    for i, p in enumerate(paths):
        a = np.asarray(p, np.float32) if not isinstance(p, (str, os.PathLike)) else load_audio(p, sr)[0]
        a = check_audio(a.reshape(-1), str(p) if isinstance(p, (str, os.PathLike)) else f"reference {i}")[:n]
        out[i, :len(a)] = a
    return out


def _rows(items, batch: int, what: str) -> list[list]:
    """K items shared by every prompt, or one list/tuple of K per prompt (``batch`` of them) -> rows."""
    items = list(items)
    per_row = len(items) == batch and all(isinstance(p, (list, tuple)) for p in items)
    rows = [list(p) for p in items] if per_row else [items]
    if any(len(r) != len(rows[0]) for r in rows):
        raise ConfigError(f"every prompt needs the same number of {what}, got {[len(r) for r in rows]}")
    return rows


def prompt_cond(section, prompts, seconds: float, where: str = "config.conditioner", *, codec=None, text=None,
                seed: int = 0) -> tuple[dict, dict]:
    """A ``target`` conditioner (module docstring; DC-LDM) -> (cond, uncond) computed from the prompts alone:
    each feature [N, 1, ...] for a clip of ``seconds``, ``reference_mask`` [N, 1] True; the unconditioned
    branch switches the slot off."""
    encode = reference_features_of(section, where, codec=codec, text=text)
    feats = encode(None, [str(p) for p in prompts], seconds=float(seconds), seed=int(seed))
    cond = {name: np.asarray(v)[:, None] for name, v in feats.items()}
    cond["reference_mask"] = np.ones((len(prompts), 1), bool)
    return cond, {"reference_mask": np.zeros((1, 1), bool)}


def reference_cond(section, paths, batch: int, where: str = "config.conditioner", *, codec=None, text=None,
                   captions=None) -> tuple[dict, dict]:
    """``--reference`` files -> (cond, uncond) for the generator: each reference feature [batch, K, ...] and
    ``reference_mask`` [batch, K] (True = present); the unconditioned branch switches them all off.

    ``paths``: the references shared by every prompt, or one tuple/list per prompt (``batch`` of them);
    ``captions`` the same way, one per reference (needed when the conditioner reads reference captions).
    With a fixed reference count (``spec["fixed_count"]``, DreamAudio) fewer than K references (none too) fill
    the first slots and the rest are masked, so every count runs in the same compiled sampler.
    ``codec`` / ``text``: the system's, for a conditioner that encodes references with them."""
    spec = reference_spec_of(section, where, sample_rate=None if codec is None else codec.sample_rate)
    if spec is None:
        raise ConfigError(f"{where} reads no reference audio; drop --reference")
    if spec["target"]:
        raise ConfigError(f"{where} computes its condition from the prompt (prompt_cond), not from --reference")
    rows = _rows(paths or [], batch, "references")
    k = len(rows[0])
    fixed = bool(spec.get("fixed_count"))
    if not fixed and k == 0:
        raise ConfigError("this system is conditioned on reference audio (config.conditioner): pass one or more "
                          "references (launch.sample --reference clip.wav)")
    if fixed and k > spec["count"]:
        raise ConfigError(f"{k} references per prompt, but the model takes at most "
                          f"{where}.reference.count={spec['count']}")
    cap_rows = None
    if spec["captions"]:
        cap_rows = _rows(captions or [], batch, "reference captions")
        if len(cap_rows) == 1 and len(rows) > 1:
            cap_rows = cap_rows * len(rows)
        if [len(r) for r in cap_rows] != [len(r) for r in rows] or len(cap_rows) != len(rows):
            raise ConfigError(f"{sum(len(r) for r in cap_rows)} reference captions for {sum(len(r) for r in rows)} "
                              f"references: give one caption per reference (--reference_caption once per "
                              f"--reference)")
    elif captions:
        raise ConfigError(f"{where} reads no reference captions; drop --reference_caption")
    slots = spec["count"] if fixed else k
    if spec["sample_rate"] is None:
        raise ConfigError(f"{where} encodes references with the system codec: pass the codec")
    n = int(round(float(spec["seconds"]) * int(spec["sample_rate"])))
    audio = [p for r in rows for p in r + [np.zeros(n, np.float32)] * (slots - len(r))]
    caps = None if cap_rows is None else [c for r in cap_rows for c in list(r) + [""] * (slots - len(r))]
    feats = reference_features_of(section, where, codec=codec, text=text)(load_references(audio, spec), caps)
    cond = {name: np.broadcast_to(np.asarray(v).reshape((len(rows), slots) + np.shape(v)[1:]),
                                  (batch, slots) + np.shape(v)[1:]) for name, v in feats.items()}
    cond["reference_mask"] = np.broadcast_to(np.arange(slots)[None] < k, (batch, slots))
    return cond, {"reference_mask": np.zeros((1, slots), bool)}


__all__ = ["Conditioner", "CONDITIONERS", "wrap_denoiser", "reference_spec_of", "reference_features_of",
           "is_reference_conditioned", "load_references", "reference_cond", "prompt_cond"]
