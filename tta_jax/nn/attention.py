"""Multi-head attention (self / cross) with RoPE, QK-norm, key masks and attention-map hooks.

Shapes: ``x`` [B, Lq, Dq], ``context`` [B, Lk, Dc] (``None`` -> self-attention), ``key_mask`` [B, Lk]
(True = attend). Projections are 2-D Dense kernels (``to_q``, ``to_k``, ``to_v``: [D, H*hd];
``to_out``: [H*hd, out]) reshaped to heads, so logical sharding stays simple.

Fully masked rows (a query whose keys are all masked, e.g. an all-padding caption) give a zero
attention output (before ``to_out``), never NaN, with either backend.

Attention-map hooks (prompt-to-prompt style) go through :class:`AttentionControl`, passed per call:

- ``capture=True`` sows the post-softmax probabilities [B, H, Lq, Lk] (float32) into the
  ``'intermediates'`` collection under ``'attn_probs'`` (``apply(..., mutable=['intermediates'])``);
- ``token_weights`` [Lk] or [B, Lk] multiplies the probabilities per key token (no renormalisation,
  as prompt-to-prompt re-weighting does);
- ``replace_probs(probs, layer_name) -> probs`` may replace/edit the probabilities; ``layer_name`` is the
  module path (e.g. ``"blocks_3/cross_attn"``) so a controller can act per layer.

:func:`captured_maps` turns the captured probabilities of one forward pass into per-token maps on the latent
grid (time for sequences, freq x time for images), averaged over heads and layers.

Backends (``backend``, the models' ``attention_backend`` config key): ``xla`` (``jax.nn.dot_product_attention``),
``einsum`` (explicit probabilities), ``deferred`` (:func:`deferred_attention`: normalised after the value
product), ``auto`` = ``deferred`` (on the 2-core CPU: U-Net train step -11 %, 20-step sampler -19 %, step
memory -25 % vs ``xla``; the DiT resolves ``auto`` per pass itself, see :class:`tta_jax.denoisers.dit.DiT`).
Any active control forces ``einsum`` (the other cores never materialise the probabilities). ``AttentionControl`` is a pytree (``token_weights`` is a leaf), so it can travel through
``jit`` inside a condition dict.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.nn.sharding import dense_init


@flax.struct.dataclass
class AttentionControl:
    """Per-call hook on attention probabilities (see module docstring)."""

    capture: bool = flax.struct.field(pytree_node=False, default=False)
    token_weights: Any = None  # [Lk] or [B, Lk]
    replace_probs: Callable[[jax.Array, str], jax.Array] | None = flax.struct.field(
        pytree_node=False, default=None)

    @property
    def active(self) -> bool:
        return bool(self.capture or self.token_weights is not None or self.replace_probs is not None)


# --------------------------------------------------------------------------------------------------
# RoPE (rotate-half layout, float32 tables)
# --------------------------------------------------------------------------------------------------
def rope_tables(positions, head_dim: int, base: float = 10000.0):
    """cos/sin tables [..., L, head_dim] for integer positions [..., L] (``[freqs, freqs]`` layout)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
    """x [B, L, H, hd]; cos/sin [L, hd] or [B, L, hd]. Computed in float32, returned in x.dtype."""
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.astype(jnp.float32)
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------------
# Attention cores (pure functions)
# --------------------------------------------------------------------------------------------------
def _row_valid(key_mask):
    # [B, Lk] -> [B, 1, 1, 1] (as a float multiplier)
    return jnp.any(key_mask, axis=-1)[:, None, None, None]


def attention_probs(q, k, key_mask=None):
    """Softmax probabilities [B, H, Lq, Lk] (float32) for q [B, Lq, H, d], k [B, Lk, H, d]."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = logits.astype(jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if key_mask is not None:
        probs = probs * _row_valid(key_mask).astype(probs.dtype)
    return probs


def einsum_attention(q, k, v, key_mask=None):
    """Reference attention: q [B, Lq, H, d], k/v [B, Lk, H, d] -> [B, Lq, H, d]."""
    probs = attention_probs(q, k, key_mask)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def xla_attention(q, k, v, key_mask=None):
    """``jax.nn.dot_product_attention`` with the same masking semantics as :func:`einsum_attention`."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    if key_mask is not None:
        out = out * jnp.any(key_mask, axis=-1)[:, None, None, None].astype(out.dtype)
    return out


def deferred_attention(q, k, v, key_mask=None):
    """Softmax attention normalised *after* the value product: ``(exp(l - max) @ v) / sum(exp(l - max))``,
    the flash-attention order, so the division touches [B, Lq, H, d] instead of the [B, H, Lq, Lk] probabilities,
    the scale multiplies q instead of the logits, and the max shift is a constant for the gradient. Same function
    as :func:`einsum_attention` up to rounding (float32 logits, exponentials and sums); rows whose keys are all
    masked give zeros. q [B, Lq, H, d], k/v [B, Lk, H, d] -> [B, Lq, H, d] in v.dtype."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.exp(logits - shift)
    total = jnp.transpose(jnp.sum(p, axis=-1), (0, 2, 1))[..., None]           # [B, Lq, H, 1]
    out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
    if key_mask is not None:
        out = out * _row_valid(key_mask).astype(out.dtype)
    return out.astype(v.dtype)


BACKENDS = ("auto", "xla", "einsum", "deferred")


class Attention(nn.Module):
    """Multi-head attention. ``__call__(x [B, Lq, Dq], context [B, Lk, Dc] | None, key_mask [B, Lk] | None,
    *, positions [Lq] | [B, Lq] | None, control: AttentionControl | None) -> [B, Lq, out_features]``.

    Fields: ``num_heads``, ``head_dim``; ``out_features`` (default Dq); ``qkv_bias``; ``out_bias``;
    ``qk_norm`` (per-head affine LayerNorm eps 1e-5 after the head split, params ``q_norm``/``k_norm``);
    ``rope`` (self-attention only; positions default to 0..Lq-1); ``backend`` one of :data:`BACKENDS`;
    ``dtype`` compute dtype; ``out_kernel_init`` (e.g. zeros for a zero-init cross-attention output).
    """

    num_heads: int
    head_dim: int
    out_features: int | None = None
    qkv_bias: bool = False
    out_bias: bool = True
    qk_norm: bool = False
    rope: bool = False
    rope_base: float = 10000.0
    backend: str = "auto"
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_uniform()
    out_kernel_init: Any = None

    @nn.compact
    def __call__(self, x, context=None, key_mask=None, *, positions=None, control=None):
        if self.backend not in BACKENDS:
            raise ValueError(f"Attention.backend must be one of {BACKENDS}, got {self.backend!r}")
        is_self = context is None
        if self.rope and not is_self:
            raise ValueError("Attention: rope=True is only supported for self-attention (context=None)")
        ctx = x if is_self else context
        B, Lq, Dq = x.shape
        Lk = ctx.shape[1]
        if key_mask is not None and key_mask.shape != (B, Lk):
            raise ValueError(f"Attention: key_mask must be [B, Lk] = {(B, Lk)}, got {key_mask.shape}")
        H, hd = self.num_heads, self.head_dim
        inner = H * hd

        def proj(name, inp, feats, use_bias, names, kinit):
            return nn.Dense(feats, use_bias=use_bias, dtype=self.dtype, name=name,
                            kernel_init=dense_init(kinit, names),
                            bias_init=dense_init(nn.initializers.zeros, names[1:]))(inp)

        q = proj("to_q", x, inner, self.qkv_bias, ("embed", "heads"), self.kernel_init)
        k = proj("to_k", ctx, inner, self.qkv_bias, ("embed", "heads"), self.kernel_init)
        v = proj("to_v", ctx, inner, self.qkv_bias, ("embed", "heads"), self.kernel_init)
        q = q.reshape(B, Lq, H, hd)
        k = k.reshape(B, Lk, H, hd)
        v = v.reshape(B, Lk, H, hd)
        if self.qk_norm:
            norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name,  # noqa: E731
                                             scale_init=dense_init(nn.initializers.ones, ("norm",)),
                                             bias_init=dense_init(nn.initializers.zeros, ("norm",)))
            q = norm("q_norm")(q)
            k = norm("k_norm")(k)
        if self.rope:
            pos = jnp.arange(Lq) if positions is None else positions
            cos, sin = rope_tables(pos, hd, self.rope_base)
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        key_mask = None if key_mask is None else key_mask.astype(bool)

        controlled = control is not None and control.active
        backend = self.backend
        if backend == "auto":
            backend = "einsum" if controlled else "deferred"
        if controlled and backend != "einsum":
            raise ValueError("Attention: an active AttentionControl needs backend 'einsum' or 'auto'")

        if backend == "xla":
            out = xla_attention(q, k, v, key_mask)
        elif backend == "deferred":
            out = deferred_attention(q, k, v, key_mask)
        else:
            probs = attention_probs(q, k, key_mask)
            if controlled:
                probs = self._control(probs, control)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        out = out.reshape(B, Lq, inner)
        okinit = self.out_kernel_init if self.out_kernel_init is not None else self.kernel_init
        return proj("to_out", out, self.out_features or Dq, self.out_bias, ("heads", "embed"), okinit)

    def _control(self, probs, control: AttentionControl):
        if control.token_weights is not None:
            w = jnp.asarray(control.token_weights, probs.dtype)
            if w.ndim == 1:
                w = w[None]
            probs = probs * w[:, None, None, :]
        if control.replace_probs is not None:
            probs = control.replace_probs(probs, "/".join(str(p) for p in self.scope.path))
        if control.capture:
            self.sow("intermediates", "attn_probs", probs)
        return probs


# --------------------------------------------------------------------------------------------------
# Captured maps -> the latent grid
# --------------------------------------------------------------------------------------------------
def _grid_of(length: int, grid: tuple[int, ...]) -> tuple[int, ...]:
    """The grid a layer of ``length`` queries works on: ``grid`` halved (rounding up, as a stride-2 conv
    does) until its size matches. Raises ValueError when no halving fits."""
    g = tuple(int(s) for s in grid)
    while True:
        if int(np.prod(g)) == length:
            return g
        if all(s == 1 for s in g):
            raise ValueError(f"captured attention over {length} queries does not fit the latent grid {grid} "
                             f"or any of its halvings")
        g = tuple(-(-s // 2) for s in g)


def captured_maps(intermediates, grid: tuple[int, ...]) -> jax.Array:
    """Every ``attn_probs`` sown into ``intermediates`` (the ``'intermediates'`` collection of one forward
    pass with ``AttentionControl(capture=True)``; [B, H, Lq, Lk] each) -> their mean over heads and layers
    on the latent ``grid``: [B, *grid, Lk]. ``grid`` is (T,) for sequence latents or (H, T) for image
    latents; a layer working at a coarser resolution (a U-Net level: Lq = ceil(H/2^k) * ceil(T/2^k)) is
    brought to ``grid`` by linear interpolation, which keeps each position's distribution over the keys
    summing to what it summed to. Raises ValueError when nothing was captured."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]
              if any(getattr(k, "key", None) == "attn_probs" for k in path)]
    if not leaves:
        raise ValueError("no attention probabilities were captured: the denoiser has no text cross-attention "
                         "(or cond['attn_control'] did not reach it)")
    maps = []
    for probs in leaves:
        b, _, lq, lk = probs.shape
        g = _grid_of(lq, grid)
        m = probs.astype(jnp.float32).mean(axis=1).reshape((b,) + g + (lk,))
        if g != tuple(grid):
            m = jax.image.resize(m, (b,) + tuple(grid) + (lk,), method="linear")
        maps.append(m)
    return sum(maps[1:], maps[0]) / len(maps)
