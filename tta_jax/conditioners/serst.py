"""SERST sound-event prompt adapter (arXiv:2409.09381; reference-architectures.md section 4).

Reference audio x text -> a style embedding -> the denoiser's ``style`` condition:

    emb   = ReferenceEncoder(log-mel of each reference)            [B, K, E]   (L2-normalised)
    a     = CrossAttention(q = text token states, kv = emb)        [B, L, D]   (``heads`` heads, key mask = refs)
    style = mean over valid text tokens of (a + text)              [B, D]      (residual; zero when a row has no
                                                                                 reference: CFG's "no reference")

and the denoiser takes ``style``: the U-Net projects it (``class_embed_type="simple_projection"``), concatenates
it with the time embedding and modulates every ResNet through zero-initialised scale/shift
(``resnet_time_scale_shift="default_ada"``); the DiT adds it to the timestep embedding that drives every AdaLN
(``style_dim``, zero-initialised). Either way a pretrained base is unchanged at step 0.

A DiT with ``style_path="pooled"`` adds the style to the masked mean of its text states before its own pretrained
pooled-text MLP; there the adapter returns only the residual part, ``mean over valid text tokens of a``, with the
attention's output projection zero-initialised, so the DiT's pooled input is exactly the style above and a zero
residual (at init, or a row without reference) is exactly the base. The family of a reference then reaches the
AdaLN of every block through the global text path the base already uses for the prompt's sound event.

``config.conditioner.path="tokens"`` (either denoiser, no style input needed) keeps the per-token residual instead of
its mean: the denoiser reads ``text + a`` as its text states (``a`` zero for a row without reference, the output
projection zero-initialised), so the reference rewrites the prompt's token states that the base's cross-attention
(and a DiT's pooled-text path, which then moves by exactly the style above) already reads for the sound event.
This goes beyond the paper, whose style drives only the normalisation; the prepared ``cond`` carries the residual
as ``text_residual`` [B, L, D] and the wrapper adds it at every call.

The public code (a Tango fork) builds this adapter inside ``forward()``, so its weights never train; this follows
the paper (the code only for shapes). The reference encoder trains from scratch with the adapter.

``cond`` keys the wrapped denoiser reads (on top of the base's, ``style`` excepted):

- ``reference`` [B, K, T, M]: log-mels of K reference clips (:func:`reference_features`).
- ``reference_mask`` [B, K] bool (optional; absent = all valid): False drops a reference (CFG, padding).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.conditioners.reference_encoder import (REFERENCE_MEL, ReferenceEncoder, get_config,
                                                    reference_log_mel)
from tta_jax.errors import ConfigError
from tta_jax.nn.attention import Attention

REFERENCE_KEYS = ("reference", "reference_mask")
PATHS = ("style", "tokens")   # config.conditioner.path: the denoiser's style input, or a residual of the text states


def encoder_config(section: Mapping[str, Any] | None, where: str = "config.conditioner.encoder"):
    """``{"preset": "serst"|"tiny", field: value, ...}`` -> ReferenceEncoderConfig (unknown keys fail)."""
    from tta_jax.conditioners.reference_encoder import CONFIGS, ReferenceEncoderConfig

    d = dict(section or {})
    preset = d.pop("preset", "serst")
    if preset not in CONFIGS:
        raise ConfigError(f"{where}.preset={preset!r}; expected one of {sorted(CONFIGS)}")
    known = {f.name for f in dataclasses.fields(ReferenceEncoderConfig)}
    bad = sorted(set(d) - known)
    if bad:
        raise ConfigError(f"{where}.{bad[0]} is not a reference-encoder field ({sorted(known)})")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return get_config(preset, **d)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


class StyleAdapter(nn.Module):
    """(text [B, L, D], text_mask [B, L] | None, reference [B, K, T, M], reference_mask [B, K] | None)
    -> style [B, D] float32 (module docstring), or with ``per_token`` the residual ``a`` itself [B, L, D] (zero on
    rows without a reference). Params: ``encoder`` (the ResNet), ``attn``."""

    encoder: Any      # ReferenceEncoderConfig
    heads: int = 16
    residual: bool = False   # return mean(a) only, with a zero-initialised attention output (module docstring)
    per_token: bool = False  # return a [B, L, D] (implies residual)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text, text_mask, reference, reference_mask=None):
        text = jnp.asarray(text, jnp.float32)
        B, L, D = text.shape
        ref = jnp.asarray(reference, jnp.float32)
        if ref.ndim != 4 or ref.shape[0] != B:
            raise ValueError(f"cond['reference'] must be [B={B}, K, T, M] log-mels, got {ref.shape}")
        K = ref.shape[1]
        if D % self.heads:
            raise ValueError(f"the text width {D} is not divisible by config.conditioner.heads={self.heads}")
        emb = ReferenceEncoder(self.encoder, name="encoder")(ref.reshape((B * K,) + ref.shape[2:]))
        emb = emb.reshape(B, K, -1)                                                    # [B, K, E]
        rmask = (jnp.ones((B, K), bool) if reference_mask is None
                 else jnp.asarray(reference_mask).astype(bool).reshape(B, K))
        residual = self.residual or self.per_token
        a = Attention(self.heads, D // self.heads, out_features=D, dtype=self.dtype, name="attn",
                      out_kernel_init=nn.initializers.zeros if residual else None)(
            text.astype(self.dtype), emb.astype(self.dtype), rmask)
        if self.per_token:
            return jnp.where(rmask.any(-1)[:, None, None], a.astype(jnp.float32), 0.0)  # [B, L, D]
        h = a.astype(jnp.float32) + (0.0 if residual else text)                        # residual [B, L, D]
        tmask = jnp.ones((B, L), jnp.float32) if text_mask is None else jnp.asarray(text_mask, jnp.float32)
        style = (h * tmask[..., None]).sum(1) / jnp.maximum(tmask.sum(1, keepdims=True), 1.0)
        return jnp.where(rmask.any(-1, keepdims=True), style, 0.0)                     # [B, D]


class ReferenceStyled(nn.Module):
    """A denoiser behind the SERST adapter: ``cond['reference']`` (+ mask) and the text states -> ``style``
    (``path="tokens"``: ``text_residual``) -> ``net``. Params ``{"conditioner": StyleAdapter's, "net": the
    denoiser's}``; every other cond key is passed through."""

    net: nn.Module
    encoder: Any
    heads: int = 16
    residual: bool = False
    path: str = "style"

    def setup(self):
        if self.path not in PATHS:
            raise ValueError(f"ReferenceStyled.path must be one of {PATHS}, got {self.path!r}")
        self.conditioner = StyleAdapter(self.encoder, self.heads, self.residual, per_token=self.path == "tokens")

    def prepare(self, cond, train: bool = False, like=None):
        """``cond`` with :data:`REFERENCE_KEYS` -> ``cond`` with ``style`` [B, D] (``path="tokens"``:
        ``text_residual`` [B, L, D], added to ``text`` by :meth:`__call__`) instead. The style does not
        depend on x_t or t, so a sampler computes it once (:meth:`tta_jax.denoisers.factory.Denoiser.prepare`)
        and every step's call passes it through. ``like``: an x_t [B, ...] for the dummy reference of ``init``."""
        cond = dict(cond)
        out = "text_residual" if self.path == "tokens" else "style"
        if out in cond:
            if any(k in cond for k in REFERENCE_KEYS):
                raise ValueError(f"cond[{out!r}] is computed by the SERST adapter from cond['reference']; pass one "
                                 f"or the other")
            return cond     # prepared already
        ref = cond.pop("reference", None)
        rmask = cond.pop("reference_mask", None)
        if ref is None:
            if not self.is_initializing() or like is None:
                raise ValueError("cond has no 'reference' [B, K, T, M]: this denoiser is conditioned on reference "
                                 "audio (pass reference_mask all False for none)")
            ref = jnp.zeros((like.shape[0], 1, 8, self.encoder.n_mels))
        if "text" not in cond:
            raise ValueError(f"the SERST adapter reads the text states cond['text']; cond has {sorted(cond)}")
        cond[out] = self.conditioner(cond["text"], cond.get("text_mask"), ref, rmask)
        return cond

    def __call__(self, x, t, cond, train: bool = False):
        """x_t [B, ...], t [B], cond with :data:`REFERENCE_KEYS` (or already prepared) -> the net's output."""
        cond = self.prepare(cond, train=train, like=x)
        if self.path == "tokens":
            res = cond.pop("text_residual")
            text = jnp.asarray(cond["text"])
            if res.shape != text.shape:
                raise ValueError(f"cond['text_residual'] {res.shape} does not match cond['text'] {text.shape}")
            cond["text"] = (text.astype(jnp.float32) + res).astype(text.dtype)
        return self.net(x, t, cond, train=train)


def with_serst(den, section: Mapping[str, Any], where: str = "config.conditioner"):
    """A :class:`tta_jax.denoisers.factory.Denoiser` reading ``style`` [B, D_text] -> the same denoiser behind the
    SERST adapter, reading ``reference`` / ``reference_mask`` instead of ``style``. ``section.path="tokens"``: any
    denoiser with a text context; the adapter's per-token residual joins the text states (module docstring)."""
    path = str(section.get("path", "style"))
    if path not in PATHS:
        raise ConfigError(f"{where}.path={path!r}; expected one of {PATHS}")
    if path == "style" and "style" not in den.cond_keys:
        raise ConfigError(f"{where}.name='serst' needs a denoiser with a style input: for the U-Net set "
                          f"config.model.class_embed_type='simple_projection' (+ projection_class_embeddings_"
                          f"input_dim = the text width, resnet_time_scale_shift='default_ada'); for the DiT "
                          f"config.model.style_dim")
    if path == "tokens" and "style" in den.cond_keys:
        raise ConfigError(f"{where}.path='tokens' adds the style to the text states, but this {den.name} also has a "
                          f"style input that nothing would feed (an untrained style projection): drop "
                          f"config.model.style_dim (DiT) / class_embed_type (U-Net)")
    if "text" not in den.cond_keys or not den.context_dim:
        raise ConfigError(f"{where}.name='serst' queries the reference with the text states; this "
                          f"{den.name} has no text context")
    enc = encoder_config(section.get("encoder"), f"{where}.encoder")
    heads = int(section.get("heads", 16))
    keys = tuple(k for k in den.cond_keys if k != "style") + REFERENCE_KEYS
    inner = den.dummy_cond
    seconds = float((section.get("reference") or {}).get("seconds", 2.0))
    count = int((section.get("reference") or {}).get("count", 1))
    frames = REFERENCE_MEL.num_frames(int(round(seconds * REFERENCE_MEL.sample_rate)))

    def dummy_cond(b, shape, length):
        cond = {k: v for k, v in inner(b, shape, length).items() if k != "style"}
        cond["reference"] = jnp.zeros((b, count, frames, enc.n_mels))
        cond["reference_mask"] = jnp.ones((b, count), bool)
        return cond

    # a DiT that adds the style to its pooled text (style_path="pooled") takes the residual part only
    residual = getattr(getattr(den.module, "config", None), "style_path", "embed") == "pooled"
    module = ReferenceStyled(den.module.clone(parent=None), enc, heads, residual, path)
    return dataclasses.replace(den, module=module, cond_keys=keys, dummy_cond=dummy_cond)


# ------------------------------------------------------------------------------------------------ features
def reference_spec(section: Mapping[str, Any] | None) -> dict:
    """``config.conditioner.reference`` with defaults: seconds (2.0), count K (1)."""
    d = dict(section or {})
    return {"seconds": float(d.get("seconds", 2.0)), "count": int(d.get("count", 1)),
            "sample_rate": REFERENCE_MEL.sample_rate, "features": ("reference",)}


def reference_features(audio: np.ndarray) -> dict[str, np.ndarray]:
    """Reference clips at 16 kHz [N, S] -> ``{"reference": [N, T, 80]}`` log-mels (what precompute stores per
    reference and sampling computes from ``--reference`` files)."""
    return {"reference": np.asarray(_log_mel(jnp.asarray(audio, jnp.float32)))}


@jax.jit
def _log_mel(audio):
    return reference_log_mel(audio, REFERENCE_MEL.sample_rate)


__all__ = ["StyleAdapter", "ReferenceStyled", "with_serst", "encoder_config", "reference_spec",
           "reference_features", "REFERENCE_KEYS", "PATHS"]
