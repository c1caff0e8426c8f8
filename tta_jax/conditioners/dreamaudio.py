"""DreamAudio multi-reference customisation (MRC; arXiv:2509.06027, reference-architectures.md section 6).

A text prompt plus up to K (audio, caption) references -> audio containing the referenced events. Two encoder
stacks of the same backbone work side by side:

    generation path:  net(x_t [B, ...], t, text [B, L, D])                       the denoiser itself
    reference path:   enc(ref_latent[:, k] [B*K, ...], t = 0, ref_text[:, k])     k = 0..K-1, one batch
                      -> per-scale features (each encoder block's output)         [B*K, L_s, C_s]
                      -> K references side by side along the sequence axis         [B, K*L_s, C_s]
                      -> cond["refs"]: extra cross-attention context of the decoder block at that scale

so the decoder reads the references at every scale through zero-initialised cross-attention (a no-op on a
pretrained generator at step 0). ``reference_mask`` [B, K] switches references off one by one (fewer than K,
the paper's 40% concept dropping) or all at once (CFG's null branch, DreamAudio's "null = all dropped"): a row
whose references are all off gets exactly nothing from those layers, i.e. the wrapped model *is* the plain
text-conditioned model of the same weights. K is fixed per configuration (masked slots), so 0..K references
run in one compiled sampler.

Backbones: the U-Net (:meth:`tta_jax.denoisers.unet.UNet.encode`: the output of every down block, flattened
h*w; up block i reads down block n-1-i, ``config.model.ref_blocks`` picks which) and the DiT
(:meth:`tta_jax.denoisers.dit.DiT.encode`: the in-block outputs the long skips carry; out block i reads
in-block n-1-i). Both take ``refs`` entries (features [B, Lr, C], mask [B, Lr]).

Choices where the paper is silent (no public code):

- The reference path sees *clean* reference latents at t = 0 (the references are given, not generated), so
  its features do not depend on x_t or the sampling step.
- ``shared_encoder=False`` (default, the paper's DreamAudio): the reference encoder is a second copy of the
  backbone's encoder half with its own weights (params ``conditioner/...``; only the blocks ``encode`` runs
  exist); ``True`` is the paper's "SEncoder" ablation: the generation network's own encoder runs the
  references (no extra params).
- The reference captions go through the system's text encoder (FLAN-T5 in ``full``) into the reference
  encoder's cross-attention, as the prompt does in the generation encoder.
- "Mask 10% of the customised audio content": the loader zeroes one random span of ``content_mask`` (10%) of
  the frames of each reference latent; "drop 40% of reference concepts": each reference is dropped on its own
  with ``concept_drop`` (40%). Both are loader augmentations (``reference_spec``), applied in training only.

``cond`` keys the wrapped denoiser reads (besides the base's text keys; ``refs`` is computed here):

- ``ref_latent`` [B, K, *latent] reference latents in the system codec's space (what precompute stores).
- ``ref_text`` [B, K, L, D] / ``ref_text_mask`` [B, K, L]: the reference captions' text states.
- ``reference_mask`` [B, K] bool (absent: all present).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tta_jax.denoisers.dit import dit_refs_from_encoder_features
from tta_jax.errors import ConfigError

REFERENCE_KEYS = ("ref_latent", "ref_text", "ref_text_mask", "reference_mask")
SECTION_KEYS = ("shared_encoder", "reference", "augment")


def reference_spec(section: Mapping[str, Any]) -> dict:
    """``config.conditioner`` -> the registry's reference spec: ``reference.seconds`` (default 2.5) and
    ``reference.count`` K (3) clips at the system codec's rate, each with a caption; the loader augmentation
    ``augment.concept_drop`` (0.4) and ``augment.content_mask`` (0.1) on ``ref_latent``."""
    r = dict(section.get("reference") or {})
    a = dict(section.get("augment") or {})
    bad = sorted(set(r) - {"seconds", "count"}) or sorted(set(a) - {"concept_drop", "content_mask"})
    if bad:
        raise ConfigError(f"config.conditioner.{'reference' if set(r) - {'seconds', 'count'} else 'augment'}."
                          f"{bad[0]} is not a DreamAudio setting")
    count = int(r.get("count", 3))
    if count < 1:
        raise ConfigError(f"config.conditioner.reference.count={count}: need at least one reference slot")
    return {"seconds": float(r.get("seconds", 2.5)), "count": count, "sample_rate": None, "captions": True,
            "fixed_count": True, "concept_drop": float(a.get("concept_drop", 0.4)),
            "content_mask": float(a.get("content_mask", 0.1)), "content_keys": ("ref_latent",),
            "latent_keys": ("ref_latent",),
            "features": ("ref_latent", "ref_text", "ref_text_mask")}


def reference_encoder(section: Mapping[str, Any], codec, text):
    """-> ``encode(audio [N, S] at the codec's rate, captions [N]) -> {"ref_latent": [N, *latent],
    "ref_text": [N, L, D], "ref_text_mask": [N, L]}`` with the system's own codec and text encoder (what
    precompute stores per reference and sampling computes from ``--reference`` / ``--reference_caption``)."""
    if codec is None or text is None:
        raise ConfigError("DreamAudio encodes its references with the system's codec and text encoder "
                          "(config.codec, config.text); both are needed")

    def encode(audio, captions):
        if captions is None or len(captions) != len(audio):
            raise ValueError(f"DreamAudio references need one caption each: {len(audio)} clips, "
                             f"{None if captions is None else len(captions)} captions")
        out = {"ref_latent": np.asarray(codec.encode(np.asarray(audio, np.float32)), np.float32)}
        states = text.encode([str(c) for c in captions])
        if "text" not in states:
            raise ConfigError(f"DreamAudio reads caption states 'text'; the text encoder gives {sorted(states)}")
        out["ref_text"] = np.asarray(states["text"], np.float32)
        out["ref_text_mask"] = (np.asarray(states["text_mask"]).astype(bool) if "text_mask" in states
                                else np.ones(out["ref_text"].shape[:2], bool))
        return out

    return encode


def _encoder_copy(module: nn.Module, family: str) -> nn.Module:
    """The backbone without its reference hooks (the reference path's own encoder)."""
    if family == "unet":
        return module.clone(parent=None, ref_blocks=(), ref_dims=None)
    if family == "dit":
        return module.clone(parent=None, config=dataclasses.replace(module.config, ref_blocks=()))
    raise ConfigError(f"DreamAudio has no reference path for the {family!r} denoiser")


def _scale_features(feats, B: int, K: int) -> list:
    """Per-scale encoder outputs of B*K references ([B*K, h, w, C] or [B*K, T, C]) -> [B, K, L_s, C]."""
    return [f.reshape(B, K, -1, f.shape[-1]) for f in feats]


class MultiReference(nn.Module):
    """A denoiser behind DreamAudio's MRC (module docstring). Params ``{"net": the denoiser's,
    "conditioner": the reference encoder's}`` (no ``conditioner`` with a shared encoder)."""

    net: nn.Module
    conditioner: nn.Module | None   # reference encoder (None: the generation network's own, "SEncoder")
    ref_blocks: tuple[int, ...]
    n_scales: int

    def prepare(self, cond, train: bool = False, like=None):
        """``cond`` with :data:`REFERENCE_KEYS` -> ``cond`` with ``refs`` (the reference encoder's per-scale
        features, masked) instead. The features do not depend on x_t or t, so a sampler computes them once
        (:meth:`tta_jax.denoisers.factory.Denoiser.prepare`) and every step's call passes them through.
        ``like``: an x_t [B, ...] for the dummy references of ``init``."""
        cond = dict(cond)
        if "refs" in cond:
            if any(k in cond for k in REFERENCE_KEYS):
                raise ValueError("cond['refs'] is computed by DreamAudio's reference path from cond['ref_latent']; "
                                 "pass one or the other")
            return cond     # prepared already
        lat = cond.pop("ref_latent", None)
        txt = cond.pop("ref_text", None)
        tmask = cond.pop("ref_text_mask", None)
        rmask = cond.pop("reference_mask", None)
        B = jnp.shape(cond["text"])[0] if like is None else like.shape[0]
        if lat is None or txt is None:
            if not self.is_initializing() or like is None:
                raise ValueError("cond needs 'ref_latent' [B, K, ...] and 'ref_text' [B, K, L, D] (DreamAudio); "
                                 "pass reference_mask all False for no reference")
            lat = jnp.zeros((B, 1) + like.shape[1:], like.dtype)
            txt = jnp.zeros((B, 1) + jnp.shape(cond["text"])[1:], jnp.float32)
        lat, txt = jnp.asarray(lat), jnp.asarray(txt)
        if lat.shape[0] != B or (like is not None and (lat.ndim != like.ndim + 1 or lat.shape[2:-2] != like.shape[1:-2]
                                                       or lat.shape[-1] != like.shape[-1])):
            raise ValueError(f"cond['ref_latent'] must be [B={B}, K, *latent] like x_t "
                             f"{None if like is None else like.shape} (any length), got {lat.shape}")
        enc = self.net if self.conditioner is None else self.conditioner
        want_c = getattr(enc, "in_channels", None) or getattr(getattr(enc, "config", None), "in_channels", None)
        if like is None and want_c is not None and lat.shape[-1] != want_c:   # (with like: checked above)
            raise ValueError(f"cond['ref_latent'] {lat.shape} has {lat.shape[-1]} latent channels; the reference "
                             f"encoder reads {want_c} (references encoded by another codec?)")
        K = lat.shape[1]
        if txt.ndim != 4 or txt.shape[:2] != (B, K):
            raise ValueError(f"cond['ref_text'] must be [B={B}, K={K}, L, D], got {txt.shape}")
        L = txt.shape[2]
        rc = {"text": txt.reshape((B * K,) + txt.shape[2:])}
        if tmask is not None:
            tmask = jnp.asarray(tmask).astype(bool)
            if tmask.shape != (B, K, L):
                raise ValueError(f"cond['ref_text_mask'] must be [B, K, L] = {(B, K, L)}, got {tmask.shape}")
            rc["text_mask"] = tmask.reshape(B * K, L)
        rmask = (jnp.ones((B, K), bool) if rmask is None else jnp.asarray(rmask).astype(bool))
        if rmask.shape != (B, K):
            raise ValueError(f"cond['reference_mask'] must be [B, K] = {(B, K)}, got {rmask.shape}")
        flat = lat.reshape((B * K,) + lat.shape[2:])
        feats = enc.encode(flat, jnp.zeros((B * K,), jnp.float32), rc, train=train)
        if len(feats) != self.n_scales:
            raise ValueError(f"the reference encoder gave {len(feats)} scales, the decoder has {self.n_scales}")
        cond["refs"] = dit_refs_from_encoder_features(_scale_features(feats, B, K), self.ref_blocks, mask=rmask)
        return cond

    def __call__(self, x, t, cond, train: bool = False):
        """x_t [B, ...], t [B], cond with :data:`REFERENCE_KEYS` (or already prepared) -> the net's output."""
        return self.net(x, t, self.prepare(cond, train=train, like=x), train=train)


def _ref_blocks(den) -> tuple[tuple[int, ...], int]:
    m = den.module
    if den.name == "unet":
        return tuple(m.ref_blocks), m.n_blocks
    return tuple(m.config.ref_blocks), m.config.depth // 2


def with_mrc(den, section: Mapping[str, Any], where: str = "config.conditioner"):
    """A :class:`tta_jax.denoisers.factory.Denoiser` with reference hooks (``config.model.ref_blocks``) ->
    the same denoiser behind DreamAudio's reference path, reading :data:`REFERENCE_KEYS` instead of ``refs``."""
    if "refs" not in den.cond_keys:
        raise ConfigError(f"{where}.name='dreamaudio' feeds reference features to decoder blocks: set "
                          f"config.model.ref_blocks (U-Net up blocks / DiT out blocks that read them)")
    if "text" not in den.cond_keys or not den.context_dim:
        raise ConfigError(f"{where}.name='dreamaudio' encodes reference captions like the prompt; this "
                          f"{den.name} has no text context")
    spec = reference_spec(section)
    shared = bool(section.get("shared_encoder", False))
    ref_blocks, n_scales = _ref_blocks(den)
    keys = tuple(k for k in den.cond_keys if k != "refs") + REFERENCE_KEYS
    inner = den.dummy_cond
    count = spec["count"]

    def dummy_cond(b, shape, length):
        cond = {k: v for k, v in inner(b, shape, length).items() if k != "refs"}
        cond["ref_latent"] = jnp.zeros((b, count) + tuple(shape))
        cond["ref_text"] = jnp.zeros((b, count, length, den.context_dim))
        cond["ref_text_mask"] = jnp.ones((b, count, length), bool)
        cond["reference_mask"] = jnp.ones((b, count), bool)
        return cond

    encoder = None if shared else _encoder_copy(den.module, den.name)
    module = MultiReference(den.module.clone(parent=None), encoder, ref_blocks, n_scales)
    return dataclasses.replace(den, module=module, cond_keys=keys, dummy_cond=dummy_cond)


__all__ = ["MultiReference", "with_mrc", "reference_spec", "reference_encoder", "REFERENCE_KEYS"]
