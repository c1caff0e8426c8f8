"""LAION CLAP audio tower (HTSAT Swin transformer) as a linen module.

Equal to ``transformers.ClapAudioModelWithProjection`` / ``ClapModel.get_audio_features`` in eval mode
(no dropout / drop-path; BatchNorms use their running statistics). Converter from the transformers
state dict: :mod:`tta_jax.convert.clap_audio`.

Data flow (shapes for the released checkpoints: 64 mel bins, spec_size 256, patch 4, window 8)::

    input_features [B, C, T, F] (the ClapFeatureExtractor layout; C = 1, or 4 with fusion; T = 1001)
      -> BatchNorm over the mel bins F (running stats)
      -> bicubic (align_corners) resize of T to spec_size * r and F to spec_size / r, r = spec_size // F
      -> "mel2img": the time axis is cut into r chunks stacked along frequency -> image [B, r*F, T/r, C]
      -> patch embed: Conv(patch_size, patch_stride) -> tokens [B, h*w, D] (row-major) -> LayerNorm
         (fusion: for clips flagged ``is_longer`` the 3 local crops go through ``mel_conv2d`` and are
         mixed into the global patches by the attentional feature fusion block, AFF)
      -> stages i = 0..L-1 of depths[i] Swin blocks at dim D * 2**i (window attention with a relative
         position bias; odd blocks use windows cyclically shifted by window // 2, with the -100 mask
         between regions that the roll made adjacent), then patch merging (2x2 -> LayerNorm -> Linear)
         between stages
      -> LayerNorm -> mean over all tokens = ``pooler_output`` [B, D * 2**(L-1)]
      -> projection Linear, ReLU, Linear = ``audio_embeds`` [B, projection_dim]
    ``get_audio_features`` = L2-normalised ``audio_embeds``.

A Swin block whose input resolution is not larger than the window uses one window covering the whole
map and no shift (as transformers' ``set_shift_and_window_size``). Window partition / reverse are pure
reshapes; relative position indices and shift masks are numpy constants built from the static shapes.

Variables: ``params`` and ``batch_stats`` (``batch_norm``; with fusion also the AFF BatchNorms).
Param names: ``batch_norm``, ``patch_embed/{proj,norm[,mel_conv2d,fusion/...]}``,
``layers_{i}/blocks_{j}/{layernorm_before,query,key,value,relative_position_bias_table,attn_out,
layernorm_after,intermediate,output}``, ``layers_{i}/downsample/{norm,reduction}``, ``norm``,
``projection/{linear1,linear2}``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.text.clap import ClapProjection, normalize
from tta_jax.text.clip import activation

Array = jax.Array


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclasses.dataclass(frozen=True)
class HTSATConfig:
    """The audio part of a transformers ``ClapConfig`` (field names as ``ClapAudioConfig``)."""

    window_size: int = 8
    num_mel_bins: int = 64
    spec_size: int = 256
    hidden_act: str = "gelu"
    patch_size: int | tuple = 4
    patch_stride: int | tuple = (4, 4)
    hidden_size: int = 768
    projection_dim: int = 512
    depths: tuple = (2, 2, 6, 2)
    num_attention_heads: tuple = (4, 8, 16, 32)
    enable_fusion: bool = False
    fusion_type: str | None = None
    patch_embed_input_channels: int = 1
    flatten_patch_embeds: bool = True
    patch_embeds_hidden_size: int = 96
    enable_patch_layer_norm: bool = True
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    aff_block_r: int = 4
    projection_hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for f in ("depths", "num_attention_heads"):
            object.__setattr__(self, f, tuple(int(x) for x in getattr(self, f)))
        for f in ("patch_size", "patch_stride"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        if len(self.depths) != len(self.num_attention_heads):
            raise ValueError(f"HTSAT: depths {self.depths} and num_attention_heads {self.num_attention_heads} "
                             "must have the same length")
        if self.spec_size % self.num_mel_bins:
            raise ValueError(f"HTSAT: spec_size {self.spec_size} must be a multiple of num_mel_bins "
                             f"{self.num_mel_bins}")
        if self.enable_fusion and self.fusion_type not in (None, "aff_2d"):
            raise NotImplementedError(
                f"HTSAT: enable_fusion with fusion_type={self.fusion_type!r} is not implemented "
                "(only the 2-D attentional feature fusion, fusion_type None / 'aff_2d')")
        if not self.flatten_patch_embeds:
            raise NotImplementedError("HTSAT: flatten_patch_embeds=False is not implemented")
        if self.patch_embed_input_channels != 1:
            raise NotImplementedError("HTSAT: patch_embed_input_channels != 1 is not implemented")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.num_mel_bins

    @property
    def num_features(self) -> int:
        return self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)

    @property
    def in_channels(self) -> int:
        """Channels of ``input_features``: 4 (global mel + 3 crops) with fusion, else 1."""
        return 4 if self.enable_fusion else 1

    @property
    def grid_size(self) -> tuple[int, int]:
        (kh, kw), (sh, sw) = self.patch_size, self.patch_stride
        ph, pw = (kh - sh) // 2, (kw - sw) // 2
        return ((self.spec_size + 2 * ph - kh) // sh + 1, (self.spec_size + 2 * pw - kw) // sw + 1)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "HTSATConfig":
        """From a transformers ``config.json`` dict: a ``ClapConfig`` (``audio_config`` inside; its
        top-level ``projection_dim`` / ``projection_hidden_act`` win, as ClapConfig does) or a
        ``ClapAudioConfig``."""
        top = d
        if "audio_config" in d and isinstance(d["audio_config"], Mapping):
            d = dict(d["audio_config"])
            for k in ("projection_dim", "projection_hidden_act"):
                if k in top and top[k] is not None:
                    d[k] = top[k]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d[k] for k in fields if k in d and d[k] is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class HTSATOutput(NamedTuple):
    last_hidden_state: Array  # [B, h, w, D] after the final LayerNorm (token grid of the last stage)
    pooler_output: Array  # [B, D]: mean over tokens
    audio_embeds: Array  # [B, projection_dim], not normalised


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------
def window_partition(x: Array, ws: int) -> Array:
    """[B, H, W, C] (H, W multiples of ws) -> [B * nW, ws*ws, C], windows row-major, batch outermost."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: Array, ws: int, h: int, w: int) -> Array:
    """Inverse of :func:`window_partition`: [B * nW, ws*ws, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=32)
def relative_position_index(ws: int) -> np.ndarray:
    """[ws*ws, ws*ws] int: index into the (2ws-1)^2 bias table for each (query, key) pair in a window."""
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2, N, N], each in [0, 2ws-2]
    return (rel[0] * (2 * ws - 1) + rel[1]).astype(np.int32)


@functools.lru_cache(maxsize=32)
def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> np.ndarray:
    """[nW, ws*ws, ws*ws] float32 additive mask for shifted windows: 0 within a region, -100 across the
    regions that the cyclic shift (by ``shift``) put into one window."""
    def regions(n):
        i = np.arange(n)
        return (i >= n - ws).astype(np.int64) + (i >= n - shift).astype(np.int64)

    img = (regions(h)[:, None] * 3 + regions(w)[None, :]).astype(np.float32)  # [H, W]
    win = img.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)  # [nW, N]
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=32)
def cubic_resize_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] float32 matrix of 1-D bicubic interpolation with ``align_corners=True`` and clamped
    borders (PyTorch ``interpolate(mode="bicubic", align_corners=True)`` along one axis)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        src = np.float32(scale) * np.float32(o)  # PyTorch computes the source index in float32
        i0 = int(np.floor(src))
        t = float(src) - i0
        ws = (((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
              ((a + 2) * t - (a + 3)) * t * t + 1,
              ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
              ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
        for k, wk in enumerate(ws):
            m[o, min(max(i0 - 1 + k, 0), n_in - 1)] += wk
    return m.astype(np.float32)


def mel_to_image(x: Array, spec_size: int, freq_ratio: int) -> Array:
    """Normalised features [B, C, T, F] -> image [B, H, W, C] (NHWC) of transformers' ``reshape_mel2img``:
    T is resized to spec_size * r and F to spec_size // r (bicubic, only when smaller), then the r time
    chunks are stacked along frequency: ``img[b, k*F + f, t, c] = x[b, c, k*(T/r) + t, f]``."""
    b, c, t, f = x.shape
    width, height = spec_size * freq_ratio, spec_size // freq_ratio
    if t > width or f > height:
        raise ValueError(f"HTSAT: input features of {t} frames x {f} mel bins exceed the model input "
                         f"{width} x {height} (spec_size {spec_size})")
    t0 = t
    if t < width:
        x = jnp.einsum("ot,bctf->bcof", jnp.asarray(cubic_resize_matrix(t, width)), x)
        t = width
    if f < height:  # transformers resizes time back to the original length here (kept as is)
        x = jnp.einsum("ot,bctf->bcof", jnp.asarray(cubic_resize_matrix(t, t0)), x)
        x = jnp.einsum("gf,bctf->bctg", jnp.asarray(cubic_resize_matrix(f, height)), x)
        t, f = t0, height
    if t % freq_ratio:
        raise ValueError(f"HTSAT: {t} frames do not split into freq_ratio={freq_ratio} chunks")
    x = x.reshape(b, c, freq_ratio, t // freq_ratio, f).transpose(0, 2, 4, 3, 1)  # [B, r, F, T/r, C]
    return x.reshape(b, freq_ratio * f, t // freq_ratio, c)


def _ln(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, use_fast_variance=False, name=name)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
class AFFBlock(nn.Module):
    """Attentional feature fusion (2-D): x, residual [B, h, w, D] -> [B, h, w, D]."""

    channels: int
    r: int = 4
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        inter = int(self.channels // self.r)
        conv = lambda n, name: nn.Conv(n, (1, 1), dtype=self.dtype, name=name)  # noqa: E731
        a = x + residual
        loc = _bn("local_att_4")(conv(self.channels, "local_att_3")(
            nn.relu(_bn("local_att_1")(conv(inter, "local_att_0")(a)))))
        g = jnp.mean(a, axis=(1, 2), keepdims=True)
        glo = _bn("global_att_5")(conv(self.channels, "global_att_4")(
            nn.relu(_bn("global_att_2")(conv(inter, "global_att_1")(g)))))
        w = jax.nn.sigmoid(loc + glo)
        return 2 * x * w + 2 * residual * (1 - w)


class PatchEmbed(nn.Module):
    """image [B, H, W, C] (+ is_longer [B] with fusion) -> tokens [B, h*w, D]."""

    config: HTSATConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, img: Array, is_longer: Array | None = None) -> Array:
        cfg = self.config
        (kh, kw), (sh, sw) = cfg.patch_size, cfg.patch_stride
        pad = ((kh - sh) // 2, (kh - sh) // 2), ((kw - sw) // 2, (kw - sw) // 2)
        d = cfg.patch_embeds_hidden_size
        x = nn.Conv(d, (kh, kw), strides=(sh, sw), padding=pad, dtype=self.dtype, name="proj")(img[..., :1])
        if cfg.enable_fusion:
            mel_conv = nn.Conv(d, (kh, 3 * kw), strides=(sh, 3 * sw), padding=pad, dtype=self.dtype,
                               name="mel_conv2d")
            fusion = AFFBlock(d, cfg.aff_block_r, self.dtype, name="fusion")
            if is_longer is None:  # no clip is longer: the local branch is unused (shapes still created)
                if self.is_initializing():
                    fusion(x, x)
                    mel_conv(img[..., 1:2])
            else:
                b, hh, ww, c = img.shape
                local = img[..., 1:].transpose(0, 3, 1, 2).reshape(b * (c - 1), hh, ww, 1)
                local = mel_conv(local)  # [B*(C-1), h, w', D]
                _, h, w2, _ = local.shape
                local = local.reshape(b, c - 1, h, w2, d).transpose(0, 2, 1, 3, 4).reshape(b, h, (c - 1) * w2, d)
                w = x.shape[2]
                local = jnp.pad(local[:, :, :w], ((0, 0), (0, 0), (0, max(w - local.shape[2], 0)), (0, 0)))
                fused = fusion(x, local)
                x = jnp.where(jnp.asarray(is_longer).reshape(-1, 1, 1, 1).astype(bool), fused, x)
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, d)
        if cfg.enable_patch_layer_norm:
            x = _ln(1e-5, "norm")(x)
        return x


class SwinBlock(nn.Module):
    """tokens [B, H*W, C] at ``resolution`` (H, W) -> same. Window attention (+ shift), then MLP."""

    config: HTSATConfig
    dim: int
    heads: int
    resolution: tuple[int, int]
    shift: int = 0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h, w = self.resolution
        ws, shift = cfg.window_size, self.shift
        if min(h, w) <= ws:  # one window over the whole (smaller) map, no shift
            ws, shift = min(h, w), 0
            if ws != cfg.window_size:
                raise ValueError(f"HTSAT: a stage resolution {self.resolution} smaller than window_size "
                                 f"{cfg.window_size} is not supported (transformers cannot run it either)")
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"HTSAT block: got {n} tokens, expected {h}x{w}")
        nh, hd = self.heads, c // self.heads
        dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, dtype=self.dtype, name=name)  # noqa: E731

        y = _ln(cfg.layer_norm_eps, "layernorm_before")(x).reshape(b, h, w, c)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        win = window_partition(y, ws)  # [B*nW, N, C]
        q, k, v = (dense(c, nm, cfg.qkv_bias)(win).reshape(win.shape[0], ws * ws, nh, hd)
                   for nm in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.float32(np.sqrt(hd))
        table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                           ((2 * cfg.window_size - 1) ** 2, nh), jnp.float32)
        rel = table[relative_position_index(ws).reshape(-1)].reshape(ws * ws, ws * ws, nh)
        logits = logits + rel.transpose(2, 0, 1)[None]
        if shift:
            mask = shifted_window_mask(hp, wp, ws, shift)  # [nW, N, N]
            logits = logits.reshape(b, mask.shape[0], nh, ws * ws, ws * ws) + jnp.asarray(mask)[None, :, None]
            logits = logits.reshape(-1, nh, ws * ws, ws * ws)
        p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(-1, ws * ws, c)
        o = dense(c, "attn_out")(o)
        y = window_reverse(o, ws, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y[:, :h, :w].reshape(b, h * w, c).astype(x.dtype)

        y = _ln(cfg.layer_norm_eps, "layernorm_after")(x)
        y = activation(cfg.hidden_act)(dense(int(cfg.mlp_ratio * c), "intermediate")(y))
        return x + dense(c, "output")(y).astype(x.dtype)


class PatchMerging(nn.Module):
    """tokens [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C] (2x2 neighbours concatenated, LN, Linear)."""

    resolution: tuple[int, int]
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = x.reshape(b, -1, 4 * c)
        x = _ln(1e-5, "norm")(x)
        return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinStage(nn.Module):
    """Stage ``index``: depths[index] Swin blocks (odd ones shifted) at ``resolution``, then patch merging
    unless it is the last stage."""

    config: HTSATConfig
    index: int
    resolution: tuple[int, int]
    downsample: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, i = self.config, self.index
        dim = cfg.patch_embeds_hidden_size * 2 ** i
        for j in range(cfg.depths[i]):
            shift = 0 if j % 2 == 0 else cfg.window_size // 2
            x = SwinBlock(cfg, dim, cfg.num_attention_heads[i], self.resolution, shift, self.dtype,
                          name=f"blocks_{j}")(x)
        if self.downsample:
            x = PatchMerging(self.resolution, self.dtype, name="downsample")(x)
        return x


class HTSAT(nn.Module):
    """``input_features [B, C, T, F]`` (C = :attr:`HTSATConfig.in_channels`), optional ``is_longer [B]``
    (fusion only; None = no clip is longer) -> :class:`HTSATOutput`."""

    config: HTSATConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, input_features: Array, is_longer: Array | None = None) -> HTSATOutput:
        cfg = self.config
        x = jnp.asarray(input_features, jnp.float32)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"HTSAT: input_features must be [B, {cfg.in_channels}, frames, mel bins] "
                             f"(enable_fusion={cfg.enable_fusion}), got shape {x.shape}")
        if x.shape[-1] != cfg.num_mel_bins:
            raise ValueError(f"HTSAT: input has {x.shape[-1]} mel bins, the model expects {cfg.num_mel_bins}")
        x = _bn("batch_norm")(x)  # over the mel bins (last axis)
        img = mel_to_image(x, cfg.spec_size, cfg.freq_ratio)  # [B, H, W, C]
        x = PatchEmbed(cfg, self.dtype, name="patch_embed")(img, is_longer if cfg.enable_fusion else None)
        gh, gw = cfg.grid_size
        n_stages = len(cfg.depths)
        for i in range(n_stages):
            x = SwinStage(cfg, i, (gh // 2 ** i, gw // 2 ** i), i < n_stages - 1, self.dtype,
                          name=f"layers_{i}")(x)
        x = _ln(cfg.layer_norm_eps, "norm")(x.astype(jnp.float32))
        pooled = jnp.mean(x, axis=1)
        embeds = ClapProjection(cfg, name="projection")(pooled)
        fh, fw = gh // 2 ** (n_stages - 1), gw // 2 ** (n_stages - 1)
        return HTSATOutput(x.reshape(x.shape[0], fh, fw, -1), pooled, embeds)


def get_audio_features(module: HTSAT, variables, input_features: Array, is_longer: Array | None = None) -> Array:
    """``ClapModel.get_audio_features``: L2-normalised projection [B, P]."""
    return normalize(module.apply(variables, input_features, is_longer).audio_embeds)


def init_variables(config: HTSATConfig, rng=None, frames: int | None = None) -> dict:
    """Random variables (params + batch_stats) for ``config`` (``frames`` defaults to the model width
    spec_size * freq_ratio; the variables do not depend on it)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    frames = config.spec_size * config.freq_ratio if frames is None else frames
    x = jnp.zeros((1, config.in_channels, frames, config.num_mel_bins), jnp.float32)
    return jax.jit(HTSAT(config).init)(rng, x)


def abstract_variables(config: HTSATConfig, frames: int | None = None) -> dict:
    return jax.eval_shape(lambda: init_variables(config, frames=frames))


__all__ = ["HTSATConfig", "HTSAT", "HTSATOutput", "window_partition", "window_reverse",
           "relative_position_index", "shifted_window_mask", "cubic_resize_matrix", "mel_to_image",
           "get_audio_features", "init_variables", "abstract_variables"]
