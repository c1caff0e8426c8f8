"""Conditional 2-D U-Net (Stable Diffusion v1.5 / Auffusion, Tango, SERST, DC-LDM, DreamAudio).

Numerically equivalent to diffusers ``UNet2DConditionModel`` (positional time embedding,
``CrossAttnDownBlock2D``/``DownBlock2D``, ``UNetMidBlock2DCrossAttn``, ``UpBlock2D``/``CrossAttnUpBlock2D``,
``Transformer2DModel`` with ``BasicTransformerBlock``s) for the configurations the systems use, with
weights loaded by :mod:`tta_jax.convert.diffusers_unet`.

Layout: **channels last**. ``UNet.__call__(x_t [B, H, W, C], t [B], cond) -> [B, H, W, C_out]``; a
diffusers sample ``[B, C, H, W]`` is ``x.transpose(0, 2, 3, 1)``. ``H``/``W`` need not be divisible by
``2 ** (n_blocks - 1)`` (every upsampler resizes to the matching skip connection, as diffusers does
with ``upsample_size``).

``cond`` keys (a missing key means "not used"):

- ``text`` [B, L, D_cross], ``text_mask`` [B, L] (bool/0-1, True = attend; diffusers
  ``encoder_attention_mask``).
- ``class_labels`` (alias ``style``) [B, Dc]: the class/style vector for ``class_embed_type``
  ("simple_projection": one Linear; "projection": a TimestepMLP). Missing -> contributes zeros.
- any key named by an :class:`ExtraContext` (e.g. ``acoustic`` [B, La, Da] + ``acoustic_mask``): an
  extra cross-attention layer right after the existing one in the chosen blocks (DC-LDM). A batch row whose
  extra/reference mask is all False gets exactly nothing from that layer (a dropped condition).
- ``refs``: a list with one entry per up block (``None``, [B, L_s, C_s], a feature map [B, h, w, C_s] or
  a tuple (features, mask [B, L_s])): per-scale reference
  features appended as an extra cross-attention context in that decoder block (DreamAudio MRC);
  :meth:`UNet.encode` + :func:`refs_from_encoder_features` produce them from a reference U-Net.
- ``attn_control`` (as for the DiT; alias ``control``): an :class:`tta_jax.nn.attention.AttentionControl`
  forwarded to every text cross-attention (``attn2``): attention-map capture / token re-weighting /
  probability replacement (prompt-to-prompt).

Time/class conditioning of the ResNets (``resnet_time_scale_shift``):

- ``"default"``: diffusers ``ResnetBlock2D`` (``time_emb_proj`` added after ``conv1``).
- ``"scale_shift"``: ``norm2(h) * (1 + scale) + shift`` from ``time_emb_proj``.
- ``"ada_group"``: diffusers ``ResnetBlockCondNorm2D`` (``norm1``/``norm2`` are ``AdaGroupNorm`` on
  the fused time(+class) embedding, no ``time_emb_proj``). Note that diffusers' own
  ``UNet2DConditionModel`` refuses this flag for cross-attention blocks; here every ResNet supports it.
- ``"default_ada"`` (SERST AdaLN-zero adapter on a pretrained U-Net): the ``"default"`` block (its
  ``time_emb_proj`` sees only the time embedding, so pretrained weights load unchanged) plus a
  zero-initialised ``ada1``/``ada2`` Linear on SiLU(fused embedding) that modulates the outputs of
  ``norm1``/``norm2`` with ``(1 + scale), shift``; at init the network equals the pretrained one.

With ``class_embeddings_concat`` the fused embedding is ``concat(time_emb, class_emb)``; otherwise
their sum (diffusers semantics).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.nn.attention import Attention
from tta_jax.nn.embeddings import TimestepMLP, timestep_embedding
from tta_jax.nn.layers import AdaGroupNorm, FeedForward, dense, modulate
from tta_jax.nn.sharding import constrain, dense_init

Array = jax.Array

CROSS_DOWN = "CrossAttnDownBlock2D"
PLAIN_DOWN = "DownBlock2D"
CROSS_UP = "CrossAttnUpBlock2D"
PLAIN_UP = "UpBlock2D"
MID_CROSS = "UNetMidBlock2DCrossAttn"
TIME_NORMS = ("default", "scale_shift", "ada_group", "default_ada")

_zeros = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class ExtraContext:
    """An extra cross-attention context (DC-LDM acoustic condition).

    key: ``cond`` key of the context [B, L, dim]; the mask (optional) is ``cond[mask_key]``
      (default ``key + "_mask"``).
    dim: context width (used to create the params when the context is absent at init).
    blocks: host blocks, e.g. ``("down_0", "up_3")`` or ``"mid"``; each must contain attention.
      In a host block every transformer block gets ``norm_<key>`` (LayerNorm) + ``attn_<key>``
      (cross-attention, same heads as the host) right after ``attn2``, added residually.
    zero_init: zero-initialise ``attn_<key>/to_out`` so the layer is a no-op at init (skip connection).
    """

    key: str
    dim: int
    blocks: tuple[str, ...]
    mask_key: str | None = None
    zero_init: bool = True

    @property
    def mask_name(self) -> str:
        return self.mask_key or f"{self.key}_mask"


def _conv(features, *, kernel=3, stride=1, name, dtype, kernel_init=nn.initializers.lecun_normal()):
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   dtype=dtype, name=name,
                   kernel_init=dense_init(kernel_init, (None, None, "conv_in", "conv_out")),
                   bias_init=dense_init(_zeros, ("conv_out",)))


def _group_norm(groups, eps, *, name, dtype):
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name, use_fast_variance=False,
                        scale_init=dense_init(nn.initializers.ones, ("norm",)),
                        bias_init=dense_init(_zeros, ("norm",)))


def _layer_norm(eps, *, name, dtype):
    return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name, use_fast_variance=False,
                        scale_init=dense_init(nn.initializers.ones, ("norm",)),
                        bias_init=dense_init(_zeros, ("norm",)))


def _resize_nearest(x, hw):
    """Nearest-neighbour resize of x [B, H, W, C] to ``hw`` (PyTorch ``F.interpolate(mode="nearest")``)."""
    H, W = x.shape[1:3]
    oh, ow = hw
    if (oh, ow) == (2 * H, 2 * W):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    ih = jnp.floor(jnp.arange(oh) * (H / oh)).astype(jnp.int32)
    iw = jnp.floor(jnp.arange(ow) * (W / ow)).astype(jnp.int32)
    return x[:, ih][:, :, iw]


def _act(x):
    return nn.silu(x)


# --------------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` / ``ResnetBlockCondNorm2D``. x [B, H, W, Cin] -> [B, H, W, out_channels].

    ``temb`` [B, T] is the embedding the time path sees; ``cond_emb`` [B, E] the fused time+class embedding
    used by ``"default_ada"`` (see module docstring for the modes).
    """

    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    time_norm: str = "default"
    dropout: float = 0.0
    output_scale_factor: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, cond_emb=None, train: bool = False):
        C = self.out_channels
        ada = self.time_norm == "ada_group"
        if ada:
            h = AdaGroupNorm(x.shape[-1], self.groups, eps=self.eps, dtype=self.dtype, name="norm1")(x, temb)
        else:
            h = _group_norm(self.groups, self.eps, name="norm1", dtype=self.dtype)(x)
            if self.time_norm == "default_ada":
                h = self._ada("ada1", h, cond_emb)
        h = _act(h)
        h = _conv(C, name="conv1", dtype=self.dtype)(h)
        if ada:
            h = AdaGroupNorm(C, self.groups, eps=self.eps, dtype=self.dtype, name="norm2")(h, temb)
        else:
            mult = 2 if self.time_norm == "scale_shift" else 1
            e = dense(mult * C, ("embed_in", "embed"), name="time_emb_proj", dtype=self.dtype)(_act(temb))
            e = e[:, None, None, :]
            if self.time_norm == "scale_shift":
                scale, shift = jnp.split(e, 2, axis=-1)
                h = _group_norm(self.groups, self.eps, name="norm2", dtype=self.dtype)(h)
                h = h * (1 + scale) + shift
            else:
                h = _group_norm(self.groups, self.eps, name="norm2", dtype=self.dtype)(h + e)
                if self.time_norm == "default_ada":
                    h = self._ada("ada2", h, cond_emb)
        h = _act(h)
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(C, name="conv2", dtype=self.dtype)(h)
        if x.shape[-1] != C:
            x = _conv(C, kernel=1, name="conv_shortcut", dtype=self.dtype)(x)
        return (x + h) / self.output_scale_factor

    def _ada(self, name, h, cond_emb):
        """Zero-init AdaLN modulation ``h * (1 + scale) + shift`` from SiLU(cond_emb) [B, E]."""
        if cond_emb is None:
            raise ValueError("ResnetBlock(time_norm='default_ada') needs the fused embedding cond_emb")
        C = h.shape[-1]
        e = dense(2 * C, ("embed_in", "embed"), name=name, dtype=self.dtype, kernel_init=_zeros)(_act(cond_emb))
        scale, shift = jnp.split(e, 2, axis=-1)
        return modulate(h, shift, scale)


# --------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------
class BasicTransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` (layer_norm variant): self-attn, cross-attn, [extra cross-attns],
    GEGLU feed-forward, each pre-LN and residual. x [B, L, D] -> [B, L, D].

    ``extras``: tuple of (key, zero_init) for the extra cross-attention layers; their contexts come in
    ``extra_ctx`` as {key: (context [B, Lk, Dk], mask [B, Lk] | None)}.
    """

    num_heads: int
    head_dim: int
    only_cross_attention: bool = False
    extras: tuple[tuple[str, bool], ...] = ()
    backend: str = "auto"
    dtype: Any = jnp.float32

    def _attn(self, name, zero_out=False):
        return Attention(self.num_heads, self.head_dim, qkv_bias=False, out_bias=True, backend=self.backend,
                         dtype=self.dtype, name=name,
                         out_kernel_init=_zeros if zero_out else None)

    @nn.compact
    def __call__(self, x, context, context_mask=None, extra_ctx=None, *, control=None):
        if context is None:
            raise ValueError("the U-Net's cross-attention blocks need cond['text'] [B, L, D]")
        h = _layer_norm(1e-5, name="norm1", dtype=self.dtype)(x)
        if self.only_cross_attention:  # diffusers passes no key mask to attn1 here
            x = x + self._attn("attn1")(h, context)
        else:
            x = x + self._attn("attn1")(h)
        h = _layer_norm(1e-5, name="norm2", dtype=self.dtype)(x)
        x = x + self._attn("attn2")(h, context, context_mask, control=control)
        for key, zero in self.extras:
            ctx = (extra_ctx or {}).get(key)
            if ctx is None:
                continue
            c, m = ctx
            h = _layer_norm(1e-5, name=f"norm_{key}", dtype=self.dtype)(x)
            y = self._attn(f"attn_{key}", zero_out=zero)(h, c, m)
            if m is not None:  # a row whose context is all masked (dropped) adds exactly 0, bias included
                y = y * jnp.any(m, axis=-1)[:, None, None].astype(y.dtype)
            x = x + y
        h = _layer_norm(1e-5, name="norm3", dtype=self.dtype)(x)
        return x + FeedForward(mult=4.0, activation="geglu", dtype=self.dtype, name="ff")(h)


class Transformer2D(nn.Module):
    """diffusers ``Transformer2DModel`` (continuous input). x [B, H, W, C] -> [B, H, W, C].

    ``proj_in``/``proj_out`` are Dense layers for both ``use_linear_projection`` settings (a 1x1 conv is
    the same map; the converter squeezes its kernel).
    """

    num_heads: int
    head_dim: int
    groups: int = 32
    num_layers: int = 1
    only_cross_attention: bool = False
    extras: tuple[tuple[str, bool], ...] = ()
    backend: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask=None, extra_ctx=None, *, control=None):
        B, H, W, C = x.shape
        inner = self.num_heads * self.head_dim
        residual = x
        h = _group_norm(self.groups, 1e-6, name="norm", dtype=self.dtype)(x)
        h = h.reshape(B, H * W, C)
        h = dense(inner, ("embed", "mlp"), name="proj_in", dtype=self.dtype)(h)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(self.num_heads, self.head_dim, self.only_cross_attention, self.extras,
                                      self.backend, self.dtype, name=f"transformer_blocks_{i}")(
                h, context, context_mask, extra_ctx, control=control)
        h = dense(C, ("mlp", "embed"), name="proj_out", dtype=self.dtype)(h)
        return h.reshape(B, H, W, C) + residual


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _BlockCfg:
    out_channels: int
    num_layers: int
    has_attn: bool
    heads: int
    groups: int
    eps: float
    time_norm: str
    transformer_layers: int
    only_cross_attention: bool
    extras: tuple[tuple[str, bool], ...]
    dropout: float
    backend: str
    output_scale_factor: float = 1.0
    remat: str | None = None    # a jax.checkpoint_policies name: recompute each resnet / transformer in backward


def _resnet(cfg: _BlockCfg, name, dtype, x, temb, cond_emb, train):
    """A :class:`ResnetBlock` of ``cfg`` applied to x [B, H, W, C] (under ``nn.remat`` when ``cfg.remat``)."""
    cls = ResnetBlock
    if cfg.remat:
        cls = nn.remat(ResnetBlock, static_argnums=(4,), policy=getattr(jax.checkpoint_policies, cfg.remat))
    return cls(cfg.out_channels, cfg.groups, cfg.eps, cfg.time_norm, cfg.dropout, cfg.output_scale_factor,
               dtype=dtype, name=name)(x, temb, cond_emb, train)


def _transformer(cfg: _BlockCfg, name, dtype, x, text, text_mask, extra, control):
    """A :class:`Transformer2D` of ``cfg`` applied to x [B, H, W, C] (under ``nn.remat`` when ``cfg.remat``;
    attention control is refused there by :class:`UNet`)."""
    cls = Transformer2D
    if cfg.remat:
        cls = nn.remat(Transformer2D, policy=getattr(jax.checkpoint_policies, cfg.remat))
    m = cls(cfg.heads, cfg.out_channels // cfg.heads, cfg.groups, cfg.transformer_layers,
            cfg.only_cross_attention, cfg.extras, cfg.backend, dtype, name=name)
    return m(x, text, text_mask, extra) if control is None else m(x, text, text_mask, extra, control=control)


class DownBlock(nn.Module):
    """``CrossAttnDownBlock2D`` (``has_attn``) or ``DownBlock2D``.

    x [B, H, W, Cin] -> (x [B, H', W', C], skips: tuple of [B, h, w, C] (one per layer + the downsampled)).
    """

    cfg: _BlockCfg
    add_downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, cond_emb, ctx, *, train=False):
        text, text_mask, extra, control = ctx
        skips = []
        for i in range(self.cfg.num_layers):
            x = _resnet(self.cfg, f"resnets_{i}", self.dtype, x, temb, cond_emb, train)
            if self.cfg.has_attn:
                x = _transformer(self.cfg, f"attentions_{i}", self.dtype, x, text, text_mask, extra, control)
            skips.append(x)
        if self.add_downsample:
            x = _conv(self.cfg.out_channels, stride=2, name="downsamplers_0", dtype=self.dtype)(x)
            skips.append(x)
        return x, tuple(skips)


class MidBlock(nn.Module):
    """``UNetMidBlock2DCrossAttn``: resnet, (attention, resnet) x num_layers. [B, h, w, C] -> same."""

    cfg: _BlockCfg
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, cond_emb, ctx, *, train=False):
        text, text_mask, extra, control = ctx
        x = _resnet(self.cfg, "resnets_0", self.dtype, x, temb, cond_emb, train)
        for i in range(self.cfg.num_layers):
            x = _transformer(self.cfg, f"attentions_{i}", self.dtype, x, text, text_mask, extra, control)
            x = _resnet(self.cfg, f"resnets_{i + 1}", self.dtype, x, temb, cond_emb, train)
        return x


class UpBlock(nn.Module):
    """``CrossAttnUpBlock2D`` (``has_attn``) or ``UpBlock2D``. Consumes ``num_layers`` skips (last first);
    the upsampler resizes to ``upsample_hw`` (nearest) then applies a 3x3 conv."""

    cfg: _BlockCfg
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, cond_emb, ctx, upsample_hw=None, *, train=False):
        text, text_mask, extra, control = ctx
        skips = list(skips)
        for i in range(self.cfg.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = _resnet(self.cfg, f"resnets_{i}", self.dtype, x, temb, cond_emb, train)
            if self.cfg.has_attn:
                x = _transformer(self.cfg, f"attentions_{i}", self.dtype, x, text, text_mask, extra, control)
        if self.add_upsample:
            hw = upsample_hw or (2 * x.shape[1], 2 * x.shape[2])
            x = _resize_nearest(x, hw)
            x = _conv(self.cfg.out_channels, name="upsamplers_0", dtype=self.dtype)(x)
        return x


# --------------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------------
def _per_block(v, n, what):
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"UNet.{what} has {len(v)} entries, expected one per block ({n})")
        return tuple(v)
    return (v,) * n


class UNet(nn.Module):
    """diffusers-equivalent ``UNet2DConditionModel`` (channels-last) with conditioning hooks.

    Field names follow the diffusers config (``attention_head_dim`` = number of heads, as in diffusers).
    Extra fields: ``extra_contexts`` (DC-LDM), ``ref_blocks``/``ref_dims`` (DreamAudio), ``"default_ada"``
    time norm (SERST), ``dtype`` (compute), ``attention_backend``.

    ``__call__(x_t [B, H, W, in_channels], t [B] or scalar, cond: dict, *, train=False)
      -> [B, H, W, out_channels]``.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    mid_block_type: str | None = MID_CROSS
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8
    cross_attention_dim: int = 768
    transformer_layers_per_block: int = 1
    only_cross_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False  # only matters for the converter (proj_in/out are Dense here)
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    class_embed_type: str | None = None
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False
    resnet_time_scale_shift: str = "default"
    extra_contexts: tuple[ExtraContext, ...] = ()
    ref_blocks: tuple[int, ...] = ()  # up-block indices that take cond["refs"][i]
    ref_dims: tuple[int, ...] | None = None  # context width per entry of ref_blocks (default: channels)
    ref_zero_init: bool = True
    attention_backend: str = "auto"
    remat: bool = False                        # recompute each resnet / transformer in the backward (memory)
    remat_policy: str = "nothing_saveable"     # a jax.checkpoint_policies name
    dtype: Any = jnp.float32

    # ---------------------------------------------------------------- config helpers
    @property
    def n_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def _validate(self):
        n = self.n_blocks
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"UNet: {n} block_out_channels but {len(self.down_block_types)} down / "
                             f"{len(self.up_block_types)} up block types")
        for t in self.down_block_types:
            if t not in (CROSS_DOWN, PLAIN_DOWN):
                raise ValueError(f"UNet: unsupported down block {t!r} (supported: {CROSS_DOWN}, {PLAIN_DOWN})")
        for t in self.up_block_types:
            if t not in (CROSS_UP, PLAIN_UP):
                raise ValueError(f"UNet: unsupported up block {t!r} (supported: {CROSS_UP}, {PLAIN_UP})")
        if self.downsample_padding != 1:
            raise ValueError(f"UNet: only downsample_padding=1 is supported, got {self.downsample_padding}")
        if self.mid_block_type not in (MID_CROSS, None):
            raise ValueError(f"UNet: unsupported mid block {self.mid_block_type!r}")
        if self.resnet_time_scale_shift not in TIME_NORMS:
            raise ValueError(f"UNet.resnet_time_scale_shift must be one of {TIME_NORMS}, "
                             f"got {self.resnet_time_scale_shift!r}")
        if self.class_embed_type not in (None, "simple_projection", "projection"):
            raise ValueError(f"UNet.class_embed_type {self.class_embed_type!r} is not supported "
                             "(None, 'simple_projection', 'projection')")
        if self.class_embed_type and not self.projection_class_embeddings_input_dim:
            raise ValueError("UNet: class_embed_type needs projection_class_embeddings_input_dim")
        if not isinstance(self.transformer_layers_per_block, int):
            raise ValueError("UNet: only an int transformer_layers_per_block is supported")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"UNet: channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
        known = {f"down_{i}" for i in range(n)} | {f"up_{i}" for i in range(n)} | {"mid"}
        attn = self._attn_blocks()
        keys = [ec.key for ec in self.extra_contexts]
        if len(set(keys)) != len(keys) or {"ref", "text"} & set(keys):
            raise ValueError(f"UNet.extra_contexts keys must be unique and not 'ref'/'text', got {keys}")
        for ec in self.extra_contexts:
            for b in ec.blocks:
                if b not in known:
                    raise ValueError(f"ExtraContext {ec.key!r}: unknown block {b!r}; use one of {sorted(known)}")
                if b not in attn:
                    raise ValueError(f"ExtraContext {ec.key!r}: block {b!r} has no attention to host it")
        for i in self.ref_blocks:
            if f"up_{i}" not in attn:
                raise ValueError(f"UNet.ref_blocks: up block {i} has no attention to host a reference context")
        if self.remat and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(f"UNet.remat_policy {self.remat_policy!r} is not in jax.checkpoint_policies")
        if self.ref_dims is not None and len(self.ref_dims) != len(self.ref_blocks):
            raise ValueError("UNet.ref_dims must have one entry per ref_blocks entry")

    def _attn_blocks(self):
        n = self.n_blocks
        out = {f"down_{i}" for i in range(n) if self.down_block_types[i] == CROSS_DOWN}
        out |= {f"up_{i}" for i in range(n) if self.up_block_types[i] == CROSS_UP}
        if self.mid_block_type == MID_CROSS:
            out.add("mid")
        return out

    def _extras_for(self, block: str):
        ex = tuple((ec.key, ec.zero_init) for ec in self.extra_contexts if block in ec.blocks)
        if block.startswith("up_") and int(block[3:]) in self.ref_blocks:
            ex = ex + (("ref", self.ref_zero_init),)
        return ex

    def _ref_dim(self, up_index: int) -> int:
        j = self.ref_blocks.index(up_index)
        if self.ref_dims is not None:
            return self.ref_dims[j]
        return tuple(reversed(self.block_out_channels))[up_index]

    def _cfg(self, block, channels, heads, has_attn, num_layers):
        return _BlockCfg(channels, num_layers, has_attn, heads, self.norm_num_groups, self.norm_eps,
                         self.resnet_time_scale_shift, self.transformer_layers_per_block,
                         self.only_cross_attention, self._extras_for(block) if has_attn else (),
                         self.dropout, self.attention_backend,
                         remat=self.remat_policy if self.remat else None)

    def setup(self):
        self._validate()
        n = self.n_blocks
        heads = _per_block(self.attention_head_dim, n, "attention_head_dim")
        layers = _per_block(self.layers_per_block, n, "layers_per_block")
        ch = self.block_out_channels
        self.conv_in = _conv(ch[0], name=None, dtype=self.dtype)
        self.time_embedding = TimestepMLP(self.time_embed_dim, dtype=self.dtype)
        if self.class_embed_type == "simple_projection":
            self.class_embedding = dense(self.time_embed_dim, ("embed_in", "embed"), name=None, dtype=self.dtype)
        elif self.class_embed_type == "projection":
            self.class_embedding = TimestepMLP(self.time_embed_dim, dtype=self.dtype)
        self.down_blocks = [
            DownBlock(self._cfg(f"down_{i}", ch[i], heads[i], self.down_block_types[i] == CROSS_DOWN, layers[i]),
                      add_downsample=i < n - 1, dtype=self.dtype)
            for i in range(n)]
        if self.mid_block_type == MID_CROSS:
            cfg = dataclasses.replace(self._cfg("mid", ch[-1], heads[-1], True, 1),
                                      output_scale_factor=self.mid_block_scale_factor)
            self.mid_block = MidBlock(cfg, dtype=self.dtype)
        rch, rheads, rlayers = ch[::-1], heads[::-1], layers[::-1]
        self.up_blocks = [
            UpBlock(self._cfg(f"up_{i}", rch[i], rheads[i], self.up_block_types[i] == CROSS_UP, rlayers[i] + 1),
                    add_upsample=i < n - 1, dtype=self.dtype)
            for i in range(n)]
        self.conv_norm_out = _group_norm(self.norm_num_groups, self.norm_eps, name=None, dtype=self.dtype)
        self.conv_out = _conv(self.out_channels, name=None, dtype=self.dtype)

    # ---------------------------------------------------------------- conditioning
    def _embeddings(self, t, cond, B):
        """(temb [B, T] for the time path, fused [B, T or 2T] for the blocks)."""
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (B,))
        if t.shape != (B,):
            raise ValueError(f"UNet: t must be a scalar or [B]={B}, got shape {t.shape}")
        t_emb = timestep_embedding(t, self.block_out_channels[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                   downscale_freq_shift=self.freq_shift).astype(self.dtype)
        temb = self.time_embedding(t_emb)
        if self.class_embed_type is None:
            return temb, temb
        labels = cond.get("class_labels", cond.get("style"))
        Dc = self.projection_class_embeddings_input_dim
        if labels is None:
            if self.is_initializing():
                self.class_embedding(jnp.zeros((B, Dc), self.dtype))
            class_emb = jnp.zeros_like(temb)
        else:
            labels = jnp.asarray(labels)
            if labels.shape != (B, Dc):
                raise ValueError(f"UNet: cond['class_labels'/'style'] must be [B, {Dc}] = {(B, Dc)}, "
                                 f"got {labels.shape}")
            class_emb = self.class_embedding(labels.astype(self.dtype))
        fused = jnp.concatenate([temb, class_emb], -1) if self.class_embeddings_concat else temb + class_emb
        return temb, fused

    def _contexts(self, cond, B):
        text = cond.get("text")
        text_mask = cond.get("text_mask")
        if text is not None:
            text = jnp.asarray(text).astype(self.dtype)
            if text.ndim != 3 or text.shape[0] != B or text.shape[-1] != self.cross_attention_dim:
                raise ValueError(f"UNet: cond['text'] must be [B={B}, L, {self.cross_attention_dim}], "
                                 f"got {text.shape}")
            if text_mask is not None:
                text_mask = jnp.asarray(text_mask).astype(bool)
                if text_mask.shape != text.shape[:2]:
                    raise ValueError(f"UNet: cond['text_mask'] must be [B, L] = {text.shape[:2]}, "
                                     f"got {text_mask.shape}")
        elif self._attn_blocks():
            raise ValueError("UNet: cond['text'] [B, L, D] is required (the U-Net has cross-attention blocks)")
        init = self.is_initializing()
        extra = {}
        for ec in self.extra_contexts:
            c = cond.get(ec.key)
            m = cond.get(ec.mask_name)
            if c is None:
                if init:
                    c = jnp.zeros((B, 1, ec.dim), self.dtype)
                else:
                    continue
            c = jnp.asarray(c).astype(self.dtype)
            if c.ndim != 3 or c.shape[0] != B or c.shape[-1] != ec.dim:
                raise ValueError(f"UNet: cond[{ec.key!r}] must be [B={B}, L, {ec.dim}], got {c.shape}")
            if m is not None:
                m = jnp.asarray(m).astype(bool)
                if m.shape != c.shape[:2]:
                    raise ValueError(f"UNet: cond[{ec.mask_name!r}] must be [B, L] = {c.shape[:2]}, got {m.shape}")
            extra[ec.key] = (c, m)
        refs = cond.get("refs")
        ref_ctx = [None] * self.n_blocks
        if refs is not None and len(refs) != self.n_blocks:
            raise ValueError(f"UNet: cond['refs'] must have one entry (None or [B, L, C]) per up block "
                             f"({self.n_blocks}), got {len(refs)}")
        for i in self.ref_blocks:
            r = None if refs is None else refs[i]
            dim = self._ref_dim(i)
            if r is None:
                if init:
                    ref_ctx[i] = (jnp.zeros((B, 1, dim), self.dtype), None)
                continue
            rm = None
            if isinstance(r, tuple):  # (features, mask [B, L]) e.g. with dropped references
                r, rm = r
            r = jnp.asarray(r).astype(self.dtype)
            if r.ndim == 4:  # [B, h, w, C] feature map
                r = r.reshape(B, -1, r.shape[-1])
            if r.ndim != 3 or r.shape[0] != B or r.shape[-1] != dim:
                raise ValueError(f"UNet: cond['refs'][{i}] must be [B={B}, L, {dim}], got {r.shape}")
            if rm is not None:
                rm = jnp.asarray(rm).astype(bool)
                if rm.shape != r.shape[:2]:
                    raise ValueError(f"UNet: mask of cond['refs'][{i}] must be [B, L] = {r.shape[:2]}, "
                                     f"got {rm.shape}")
            ref_ctx[i] = (r, rm)
        if refs is not None:
            for i, r in enumerate(refs):
                if r is not None and i not in self.ref_blocks:
                    raise ValueError(f"UNet: cond['refs'][{i}] given but up block {i} is not in ref_blocks "
                                     f"{self.ref_blocks}")
        return text, text_mask, extra, ref_ctx

    def _check_x(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet: x_t must be [B, H, W, {self.in_channels}] (channels last), got {x.shape}")

    # ---------------------------------------------------------------- forward
    def _encode(self, x, t, cond, train):
        self._check_x(x)
        B = x.shape[0]
        temb, fused = self._embeddings(t, cond, B)
        block_temb = fused if self.resnet_time_scale_shift != "default_ada" else temb
        text, text_mask, extra, ref_ctx = self._contexts(cond, B)
        control = cond.get("attn_control", cond.get("control"))
        if control is not None and self.remat:
            raise ValueError("UNet: attn_control is not supported with remat=True")
        h = self.conv_in(x.astype(self.dtype))
        skips = [h]
        feats = []
        for i, blk in enumerate(self.down_blocks):
            h, s = blk(h, block_temb, fused, (text, text_mask, extra, control), train=train)
            h = constrain(h, ("batch", None, None, "act_embed"))
            skips.extend(s)
            feats.append(s[self.down_blocks[i].cfg.num_layers - 1])
        state = (block_temb, fused, text, text_mask, extra, ref_ctx, control)
        return h, skips, feats, state

    def __call__(self, x, t, cond: Mapping[str, Any] | None = None, *, train: bool = False):
        """x [B, H, W, in_channels], t [B] -> [B, H, W, out_channels] float32 (see class/module docstrings)."""
        cond = dict(cond or {})
        h, skips, _, state = self._encode(x, t, cond, train)
        block_temb, fused, text, text_mask, extra, ref_ctx, control = state
        if self.mid_block_type is not None:
            h = self.mid_block(h, block_temb, fused, (text, text_mask, extra, control), train=train)
        for i, blk in enumerate(self.up_blocks):
            n_res = blk.cfg.num_layers
            res, skips = skips[-n_res:], skips[:-n_res]
            hw = tuple(skips[-1].shape[1:3]) if i < self.n_blocks - 1 else None
            ex = extra
            if ref_ctx[i] is not None:
                ex = dict(extra, ref=ref_ctx[i])
            h = blk(h, res, block_temb, fused, (text, text_mask, ex, control), hw, train=train)
            h = constrain(h, ("batch", None, None, "act_embed"))
        h = _act(self.conv_norm_out(h))
        return self.conv_out(h).astype(jnp.float32)

    def encode(self, x, t, cond: Mapping[str, Any] | None = None, *, train: bool = False):
        """Encoder half only: per-down-block features (output of each block's last layer, before its
        downsampler): list of [B, H_s, W_s, block_out_channels[s]], s = 0..n-1. Used as DreamAudio
        reference features (see :func:`refs_from_encoder_features`). Call with
        ``model.apply(params, x, t, cond, method=UNet.encode)``."""
        cond = dict(cond or {})
        _, _, feats, _ = self._encode(x, t, cond, train)
        return feats

    # ---------------------------------------------------------------- helpers
    def dummy_inputs(self, batch: int = 1, height: int = 8, width: int = 8, text_len: int = 4):
        """(x, t, cond) with every configured condition, for ``init``/``eval_shape``."""
        x = jnp.zeros((batch, height, width, self.in_channels), jnp.float32)
        t = jnp.zeros((batch,), jnp.float32)
        cond = {"text": jnp.zeros((batch, text_len, self.cross_attention_dim), jnp.float32)}
        if self.class_embed_type:
            cond["class_labels"] = jnp.zeros((batch, self.projection_class_embeddings_input_dim), jnp.float32)
        return x, t, cond

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any], **overrides) -> "UNet":
        """Builds the module from a diffusers ``UNet2DConditionModel`` config dict (``model.config``).
        Options this port does not implement raise ``ValueError`` naming the key."""
        cfg = dict(config)
        unsupported = {
            "center_input_sample": False, "time_embedding_type": "positional", "encoder_hid_dim": None,
            "encoder_hid_dim_type": None, "addition_embed_type": None, "num_class_embeds": None,
            "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
            "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "dual_cross_attention": False,
            "attention_type": "default", "num_attention_heads": None, "resnet_skip_time_act": False,
            "resnet_out_scale_factor": 1.0, "cross_attention_norm": None, "act_fn": "silu",
            "reverse_transformer_layers_per_block": None,
        }
        for k, ok in unsupported.items():
            if k in cfg and cfg[k] != ok and not (isinstance(ok, (int, float)) and cfg[k] == ok):
                raise ValueError(f"diffusers UNet config: {k}={cfg[k]!r} is not supported (only {ok!r})")
        if cfg.get("mid_block_only_cross_attention") not in (None, False):
            raise ValueError("diffusers UNet config: mid_block_only_cross_attention is not supported")
        if isinstance(cfg.get("only_cross_attention", False), (list, tuple)):
            vals = set(cfg["only_cross_attention"])
            if len(vals) != 1:
                raise ValueError("diffusers UNet config: per-block only_cross_attention is not supported")
            cfg["only_cross_attention"] = vals.pop()
        if isinstance(cfg.get("cross_attention_dim"), (list, tuple)):
            vals = set(cfg["cross_attention_dim"])
            if len(vals) != 1:
                raise ValueError("diffusers UNet config: per-block cross_attention_dim is not supported")
            cfg["cross_attention_dim"] = vals.pop()
        keys = ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
                "mid_block_type", "layers_per_block", "attention_head_dim", "cross_attention_dim",
                "transformer_layers_per_block", "only_cross_attention", "norm_num_groups", "norm_eps",
                "use_linear_projection", "flip_sin_to_cos", "freq_shift", "dropout", "class_embed_type",
                "projection_class_embeddings_input_dim", "class_embeddings_concat", "resnet_time_scale_shift",
                "downsample_padding", "mid_block_scale_factor")
        kw = {}
        for k in keys:
            if k in cfg:
                v = cfg[k]
                kw[k] = tuple(v) if isinstance(v, list) else v
        kw.update(overrides)
        return cls(**kw)


def refs_from_encoder_features(feats: Sequence[Array], ref_blocks: Sequence[int] | None = None) -> list:
    """Per-down-block features (from :meth:`UNet.encode`) -> ``cond['refs']`` for the up blocks.

    Up block ``i`` works at the resolution of down block ``n-1-i``; each feature map [B, h, w, C] becomes a
    sequence [B, h*w, C]. ``ref_blocks`` (default all) selects which entries are kept (others ``None``).
    Several references can be concatenated along the sequence axis by the caller.
    """
    n = len(feats)
    out = []
    for i in range(n):
        f = feats[n - 1 - i]
        if ref_blocks is not None and i not in ref_blocks:
            out.append(None)
        else:
            out.append(f.reshape(f.shape[0], -1, f.shape[-1]))
    return out
