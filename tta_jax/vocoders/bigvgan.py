"""BigVGAN (v1/v2, NVIDIA) generator as a flax.linen module, channels-last.

``BigVGAN(cfg).apply({"params": p}, mel [B, frames, num_mels]) -> audio [B, ~frames * hop]``.

Differences from HiFi-GAN: no LeakyReLU; every activation is an anti-aliased periodic activation
(:class:`AntiAliasedActivation`): 2x upsample with a Kaiser-windowed sinc low-pass (kernel 12, replicate
padding), Snake / SnakeBeta (per-channel alpha/beta, optionally log-scale), then low-pass + 2x downsample;
AMP residual blocks; optional final tanh (v2 checkpoints clamp to [-1, 1] instead) and optional final
conv bias. The filters are fixed (computed in numpy from the same formula as NVIDIA's code).

Param tree::

  conv_pre, ups_{i}, resblocks_{n}/{convs1_{m},convs2_{m}} (AMP1) or convs_{m} (AMP2),
  resblocks_{n}/act_{k}/{alpha[,beta]}, act_post/{alpha[,beta]}, conv_post
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.vocoders.hifigan import ConvTranspose1d, get_padding


@dataclasses.dataclass(frozen=True)
class BigVGANConfig:
    """Hyper-parameters (names follow BigVGAN's config.json)."""

    num_mels: int = 100
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = False
    use_bias_at_final: bool = False
    sampling_rate: int = 24000

    def __post_init__(self):
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"BigVGANConfig: activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"BigVGANConfig: resblock must be '1' or '2', got {self.resblock!r}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.upsample_rates))

    @classmethod
    def from_json_dict(cls, d: dict) -> "BigVGANConfig":
        return cls(num_mels=int(d["num_mels"]), upsample_rates=tuple(d["upsample_rates"]),
                   upsample_kernel_sizes=tuple(d["upsample_kernel_sizes"]),
                   upsample_initial_channel=int(d["upsample_initial_channel"]), resblock=str(d["resblock"]),
                   resblock_kernel_sizes=tuple(d["resblock_kernel_sizes"]),
                   resblock_dilation_sizes=tuple(tuple(x) for x in d["resblock_dilation_sizes"]),
                   activation=d.get("activation", "snakebeta"), snake_logscale=bool(d.get("snake_logscale", True)),
                   use_tanh_at_final=bool(d.get("use_tanh_at_final", True)),
                   use_bias_at_final=bool(d.get("use_bias_at_final", True)),
                   sampling_rate=int(d.get("sampling_rate", 24000)))


# Architectures (a checkpoint folder's config.json is what loading uses; these are for init="random" and
# for reading which mel front end a release needs). Every BigVGAN reads log(clamp(mel, 1e-5)) frames with
# the "hifigan" padding of tta_jax.audio.mel (n_fft 1024, win 1024, fmin 0 for all releases below).
# v2 24 kHz / 100 mel / 256x layout (bigvgan_v2_24khz_100band_256x; mel fmax 12 kHz: no preset in
# tta_jax.audio.mel).
V2_24K_100BAND = BigVGANConfig()
# v2 22.05 kHz / 80 mel / 256x: bigvgan_v2_22khz_80band_fmax8k_256x takes tta_jax.audio.mel.HIFIGAN_22K
# (mel="hifigan_22k": hop 256, fmax 8 kHz); bigvgan_v2_22khz_80band_256x is full band (fmax 11025 Hz: no
# preset). The v1 bigvgan_22khz_80band has the same layout with a final tanh (its config.json has no
# use_tanh_at_final: from_json_dict's default True).
V2_22K_80BAND = BigVGANConfig(num_mels=80, sampling_rate=22050)
# 16 kHz / hop 160 (5 * 4 * 2 * 2 * 2) in the v2 layout, 64 mels: fits tta_jax.audio.mel.AUDIOLDM (the
# AudioLDM / Tango mel VAE front end; DreamAudio's mel VAE + BigVGAN). NVIDIA released no 16 kHz BigVGAN:
# this is an architecture for random init or a checkpoint trained elsewhere in the released layout.
V2_16K_160X = BigVGANConfig(num_mels=64, upsample_rates=(5, 4, 2, 2, 2), upsample_kernel_sizes=(10, 8, 4, 4, 4),
                            sampling_rate=16000)


# --------------------------------------------------------------------------------------------------
# Anti-aliasing filters (numpy, build time)
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass [kernel_size] (sum 1), as ``kaiser_sinc_filter1d`` in BigVGAN."""
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    delta_f = 4 * half_width
    a = 2.285 * (half - 1) * math.pi * delta_f + 7.95
    if a > 50.0:
        beta = 0.1102 * (a - 8.7)
    elif a >= 21.0:
        beta = 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21.0)
    else:
        beta = 0.0
    window = np.kaiser(kernel_size, beta)
    t = (np.arange(-half, half) + 0.5) if even else (np.arange(kernel_size) - half)
    if cutoff == 0:
        return np.zeros(kernel_size, np.float32)
    f = 2 * cutoff * window * np.sinc(2 * cutoff * t)
    return (f / f.sum()).astype(np.float32)


def _depthwise(x, taps, stride=1, lhs_dilation=1, padding=(0, 0)):
    """Same FIR filter on every channel: x [B, T, C], taps [K] -> [B, T', C]."""
    c = x.shape[-1]
    k = jnp.broadcast_to(jnp.asarray(taps, x.dtype)[:, None, None], (len(taps), 1, c))
    return jax.lax.conv_general_dilated(x, k, (stride,), (padding,), lhs_dilation=(lhs_dilation,),
                                        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=c)


def upsample2x(x, kernel_size: int = 12, ratio: int = 2):
    """BigVGAN UpSample1d: replicate pad, ratio * transposed FIR conv, crop. [B, T, C] -> [B, ratio*T, C]."""
    taps = kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size)
    pad = kernel_size // ratio - 1
    pad_left = pad * ratio + (kernel_size - ratio) // 2
    pad_right = pad * ratio + (kernel_size - ratio + 1) // 2
    x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="edge")
    # conv_transpose1d(stride=r) == input-dilated conv with the flipped kernel and full padding
    y = _depthwise(x, taps[::-1].copy(), lhs_dilation=ratio, padding=(kernel_size - 1, kernel_size - 1))
    y = ratio * y
    return y[:, pad_left: y.shape[1] - pad_right]


def downsample2x(x, kernel_size: int = 12, ratio: int = 2):
    """BigVGAN DownSample1d: replicate pad, FIR low-pass, stride ratio. [B, T, C] -> [B, T/ratio, C]."""
    taps = kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size)
    even = kernel_size % 2 == 0
    x = jnp.pad(x, ((0, 0), (kernel_size // 2 - int(even), kernel_size // 2), (0, 0)), mode="edge")
    return _depthwise(x, taps, stride=ratio)  # conv1d is cross-correlation: taps as is


class Snake(nn.Module):
    """Snake / SnakeBeta on [B, T, C]: ``x + 1/(b + 1e-9) * sin(a x)^2`` (b = a for Snake)."""

    beta: bool = True
    logscale: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        init = nn.initializers.zeros if self.logscale else nn.initializers.ones
        alpha = self.param("alpha", init, (c,), jnp.float32)
        b = self.param("beta", init, (c,), jnp.float32) if self.beta else alpha
        if self.logscale:
            alpha, b = jnp.exp(alpha), jnp.exp(b)
        alpha, b = alpha.astype(x.dtype), b.astype(x.dtype)
        return x + (1.0 / (b + 1e-9)) * jnp.sin(x * alpha) ** 2


class AntiAliasedActivation(nn.Module):
    """Activation1d: upsample 2x -> Snake(Beta) -> downsample 2x. [B, T, C] -> [B, T, C]."""

    beta: bool = True
    logscale: bool = True

    @nn.compact
    def __call__(self, x):
        return downsample2x(Snake(self.beta, self.logscale, name="act")(upsample2x(x)))


def _conv(features, k, d=1, dtype=jnp.float32, name=None, use_bias=True):
    return nn.Conv(features, (k,), kernel_dilation=(d,), padding=((get_padding(k, d),) * 2,), dtype=dtype,
                   param_dtype=jnp.float32, use_bias=use_bias, name=name)


class AMPBlock(nn.Module):
    """AMP block "1" (conv_d + conv_1 per dilation) or "2" (conv_d only), residual. [B, T, C] -> [B, T, C]."""

    channels: int
    kernel_size: int
    dilations: Sequence[int]
    kind: str = "1"
    beta: bool = True
    logscale: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        act = lambda i: AntiAliasedActivation(self.beta, self.logscale, name=f"act_{i}")  # noqa: E731
        for m, d in enumerate(self.dilations):
            if self.kind == "1":
                xt = _conv(self.channels, self.kernel_size, d, self.dtype, f"convs1_{m}")(act(2 * m)(x))
                xt = _conv(self.channels, self.kernel_size, 1, self.dtype, f"convs2_{m}")(act(2 * m + 1)(xt))
            else:
                xt = _conv(self.channels, self.kernel_size, d, self.dtype, f"convs_{m}")(act(m)(x))
            x = x + xt
        return x


class BigVGAN(nn.Module):
    """BigVGAN generator: mel [B, frames, num_mels] -> audio [B, ~frames * hop] in [-1, 1]."""

    config: BigVGANConfig = V2_24K_100BAND
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mel):
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.num_mels:
            raise ValueError(f"BigVGAN expects mel [B, frames, {cfg.num_mels}], got {mel.shape}")
        beta = cfg.activation == "snakebeta"
        x = _conv(cfg.upsample_initial_channel, 7, 1, self.dtype, "conv_pre")(mel.astype(self.dtype))
        nk = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.upsample_initial_channel // (2 ** (i + 1))
            x = ConvTranspose1d(ch, k, u, (k - u) // 2, dtype=self.dtype, name=f"ups_{i}")(x)
            xs = None
            for j, (rk, rd) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                r = AMPBlock(ch, rk, tuple(rd), cfg.resblock, beta, cfg.snake_logscale, self.dtype,
                             name=f"resblocks_{i * nk + j}")(x)
                xs = r if xs is None else xs + r
            x = xs / nk
        x = AntiAliasedActivation(beta, cfg.snake_logscale, name="act_post")(x)
        x = _conv(1, 7, 1, self.dtype, "conv_post", use_bias=cfg.use_bias_at_final)(x)[..., 0]
        x = jnp.tanh(x) if cfg.use_tanh_at_final else jnp.clip(x, -1.0, 1.0)
        return x.astype(jnp.float32)

    def init_params(self, rng: jax.Array, frames: int = 4) -> dict:
        return self.init(rng, jnp.zeros((1, frames, self.config.num_mels), jnp.float32))["params"]
