"""Conditioner registry: ``config.conditioner`` -> a wrapper around the denoiser and the features its data needs.

A system whose condition is more than text (SERST's reference audio; later DreamAudio's reference pairs and
DC-LDM's acoustic LM) names it in ``config.conditioner.name``; everything else (task, generator, loader,
precompute, sampling) stays shared:

    den = wrap_denoiser(den, config.conditioner)   # Denoiser reading the conditioner's cond keys
    spec = reference_spec_of(config.conditioner)   # {"seconds", "count", "sample_rate"} | None
    feats = reference_features_of(config.conditioner)(audio [N, S] at spec["sample_rate"]) -> {name: [N, ...]}

Entries: ``serst`` (:mod:`tta_jax.conditioners.serst`). An empty section (no name) is no conditioner.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import numpy as np

from tta_jax import sections
from tta_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Conditioner:
    """wrap(den, section, where) -> Denoiser; reference(section) -> spec | None; features(audio) -> dict."""
    wrap: Callable[..., Any]
    reference: Callable[[Mapping[str, Any]], dict | None] | None = None
    features: Callable[[Any], dict] | None = None
    keys: tuple[str, ...] = ()   # section keys the entry accepts (besides name)


def _serst() -> Conditioner:
    from tta_jax.conditioners import serst

    return Conditioner(serst.with_serst, lambda s: serst.reference_spec(s.get("reference")),
                       serst.reference_features, ("heads", "encoder", "reference"))


CONDITIONERS: dict[str, Callable[[], Conditioner]] = {"serst": _serst}


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


def reference_spec_of(section, where: str = "config.conditioner") -> dict | None:
    """What references the conditioner reads ({"seconds", "count", "sample_rate"}), or None."""
    entry, d = _entry(section, where)
    return None if entry is None or entry.reference is None else entry.reference(d)


def reference_features_of(section, where: str = "config.conditioner") -> Callable[[Any], dict]:
    entry, _ = _entry(section, where)
    if entry is None or entry.features is None:
        raise ConfigError(f"{where} reads no reference audio")
    return entry.features


def load_references(paths, spec: dict) -> np.ndarray:
    """Reference files (or arrays already at ``spec["sample_rate"]``) -> [K, S] float32: mono, resampled, the
    first ``spec["seconds"]`` (zero-padded when shorter). A file that cannot be read fails naming it."""
    from tta_jax.audio.io import check_audio, load_audio

    sr, n = int(spec["sample_rate"]), int(round(float(spec["seconds"]) * int(spec["sample_rate"])))
    out = np.zeros((len(paths), n), np.float32)
    for i, p in enumerate(paths):
        a = np.asarray(p, np.float32) if not isinstance(p, (str, os.PathLike)) else load_audio(p, sr)[0]
        a = check_audio(a.reshape(-1), str(p) if isinstance(p, (str, os.PathLike)) else f"reference {i}")[:n]
        out[i, :len(a)] = a
    return out


def reference_cond(section, paths, batch: int, where: str = "config.conditioner") -> tuple[dict, dict]:
    """``--reference`` files -> (cond, uncond) for the generator: ``reference`` [batch, K, T, M], ``reference_mask``
    all True; the unconditioned branch switches them off. ``paths``: K files (or arrays) shared by every prompt,
    or one tuple/list of K per prompt (``batch`` of them)."""
    spec = reference_spec_of(section, where)
    if spec is None:
        raise ConfigError(f"{where} reads no reference audio; drop --reference")
    per_row = len(paths) == batch and all(isinstance(p, (list, tuple)) for p in paths)
    rows = [list(p) for p in paths] if per_row else [list(paths)]
    k = len(rows[0])
    if any(len(r) != k for r in rows):
        raise ConfigError(f"every prompt needs the same number of references, got {[len(r) for r in rows]}")
    feats = reference_features_of(section, where)(load_references([p for r in rows for p in r], spec))
    cond = {name: np.broadcast_to(v.reshape((len(rows), k) + v.shape[1:]), (batch, k) + v.shape[1:])
            for name, v in feats.items()}
    cond["reference_mask"] = np.ones((batch, k), bool)
    return cond, {"reference_mask": np.zeros((1, k), bool)}


__all__ = ["Conditioner", "CONDITIONERS", "wrap_denoiser", "reference_spec_of", "reference_features_of",
           "load_references", "reference_cond"]
