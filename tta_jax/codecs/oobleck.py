"""Oobleck waveform VAE (Stable Audio / EzAudio), channels-last ``[B, T, C]``.

Architecture (identical to ``diffusers.AutoencoderOobleck`` and stable-audio-tools' ``OobleckEncoder``/
``OobleckDecoder`` with ``use_snake=True``):

- encoder: conv7 stem -> per stride ``s``: 3 residual units (dilations 1, 3, 9; SnakeBeta, conv7,
  SnakeBeta, conv1, + skip), SnakeBeta, strided conv (kernel ``2s``, padding ``ceil(s/2)``) -> SnakeBeta,
  conv3 to ``2 * latent_dim`` channels (mean, scale);
- decoder: conv7 from ``latent_dim`` -> per stride (reversed): SnakeBeta, transposed conv (kernel ``2s``,
  padding ``ceil(s/2)``), 3 residual units -> SnakeBeta, conv7 without bias (optional tanh);
- SnakeBeta with log-scale per-channel parameters: ``x + 1/(exp(b)+1e-9) * sin(exp(a) x)^2``;
- VAE bottleneck: ``std = softplus(scale) + 1e-4``, ``z = mean + std * eps``,
  ``KL = sum_c(mean^2 + var - log var - 1)``, averaged over batch and time.

The PyTorch models use weight-normalised convolutions; here every conv is a plain conv (the norm is
folded by :mod:`tta_jax.convert.oobleck`; a model trained from scratch keeps plain convs).

Parameter names follow diffusers: ``encoder/conv1``, ``encoder/block_{i}/res_unit{1,2,3}/{snake1,conv1,
snake2,conv2}``, ``encoder/block_{i}/{snake1,conv1}``, ``encoder/{snake1,conv2}``; ``decoder/conv1``,
``decoder/block_{i}/{snake1,conv_t1,res_unit1..3}``, ``decoder/{snake1,conv2}``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OobleckConfig:
    """Static facts of an Oobleck VAE.

    Attributes:
      sample_rate: audio sample rate in Hz.
      audio_channels: 1 (mono) or 2 (stereo).
      encoder_channels: base width of the encoder (diffusers ``encoder_hidden_size``).
      decoder_channels: base width of the decoder.
      channel_multiples: width multipliers per stride stage (a leading 1 is implied, as in the references).
      strides: down-sampling ratio per stage (the decoder uses them reversed).
      latent_dim: latent channels; the encoder emits ``2 * latent_dim`` (mean, scale).
      final_tanh: ``tanh`` after the decoder (stable-audio-tools option; EzAudio/SAO: False).
    """

    sample_rate: int = 44100
    audio_channels: int = 2
    encoder_channels: int = 128
    decoder_channels: int = 128
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 8, 8)
    latent_dim: int = 64
    final_tanh: bool = False

    def __post_init__(self):
        if len(self.channel_multiples) != len(self.strides):
            raise ValueError(f"channel_multiples {self.channel_multiples} and strides {self.strides} "
                             "must have the same length")

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return int(math.prod(self.strides))

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop_length


CONFIGS: dict[str, OobleckConfig] = {
    # EzAudio's official VAE (ckpts/vae/config.json): 24 kHz mono, hop 480 -> 50 Hz, latent 128.
    "ezaudio_24k": OobleckConfig(sample_rate=24000, audio_channels=1, encoder_channels=128,
                                 decoder_channels=128, channel_multiples=(1, 2, 4, 8),
                                 strides=(2, 4, 6, 10), latent_dim=128),
    # Stable Audio Open 1.0 (= diffusers AutoencoderOobleck defaults): 44.1 kHz stereo, hop 2048, latent 64.
    "stable_audio_open": OobleckConfig(sample_rate=44100, audio_channels=2, encoder_channels=128,
                                       decoder_channels=128, channel_multiples=(1, 2, 4, 8, 16),
                                       strides=(2, 4, 4, 8, 8), latent_dim=64),
    # Tiny config for tests.
    "tiny": OobleckConfig(sample_rate=8000, audio_channels=1, encoder_channels=4, decoder_channels=4,
                          channel_multiples=(1, 2), strides=(2, 3), latent_dim=2),
}


def get_config(name: str) -> OobleckConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown Oobleck config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------
def snake_beta(x: Array, log_alpha: Array, log_beta: Array) -> Array:
    """SnakeBeta with log-scale parameters; ``x`` is ``[..., C]``, parameters ``[C]``."""
    alpha = jnp.exp(log_alpha).astype(x.dtype)
    beta = jnp.exp(log_beta).astype(x.dtype)
    return x + (1.0 / (beta + 1e-9)) * jnp.square(jnp.sin(alpha * x))


def bottleneck_stats(h: Array) -> tuple[Array, Array]:
    """Encoder output ``[..., 2D]`` -> (mean ``[..., D]``, std ``[..., D]``), std = softplus(scale) + 1e-4."""
    mean, scale = jnp.split(h, 2, axis=-1)
    return mean, jax.nn.softplus(scale) + 1e-4


def sample_latent(rng: Array, mean: Array, std: Array) -> Array:
    """``z = mean + std * eps`` with ``eps ~ N(0, 1)``."""
    eps = jax.random.normal(rng, mean.shape, mean.dtype)
    return mean + std * eps


def kl_loss(mean: Array, std: Array) -> Array:
    """KL(q || N(0, 1)) as stable-audio-tools codes it: summed over channels (last axis), mean over the
    rest (batch and time). Scalar."""
    var = jnp.square(std)
    return jnp.mean(jnp.sum(jnp.square(mean) + var - jnp.log(var) - 1.0, axis=-1))


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
class SnakeBeta(nn.Module):
    """Per-channel SnakeBeta, parameters ``alpha``/``beta`` [C] in log scale (init 0). x: [B, T, C]."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        alpha = self.param("alpha", nn.initializers.zeros, (c,), jnp.float32)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        return snake_beta(x, alpha, beta)


def _conv(features: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
          use_bias: bool = True, dtype: Any = None, name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (kernel,), strides=(stride,), padding=[(padding, padding)],
                   kernel_dilation=(dilation,), use_bias=use_bias, dtype=dtype, name=name)


class ResidualUnit(nn.Module):
    """SnakeBeta, conv7 (dilated), SnakeBeta, conv1, plus skip. [B, T, C] -> [B, T, C]."""

    dilation: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        pad = (7 - 1) * self.dilation // 2
        h = SnakeBeta(name="snake1")(x)
        h = _conv(c, 7, padding=pad, dilation=self.dilation, dtype=self.dtype, name="conv1")(h)
        h = SnakeBeta(name="snake2")(h)
        h = _conv(c, 1, dtype=self.dtype, name="conv2")(h)
        return x + h


class EncoderBlock(nn.Module):
    """3 residual units, SnakeBeta, strided conv. [B, T, Cin] -> [B, T/stride, Cout]."""

    out_channels: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, d in enumerate((1, 3, 9)):
            x = ResidualUnit(d, dtype=self.dtype, name=f"res_unit{i + 1}")(x)
        x = SnakeBeta(name="snake1")(x)
        s = self.stride
        return _conv(self.out_channels, 2 * s, stride=s, padding=math.ceil(s / 2), dtype=self.dtype,
                     name="conv1")(x)


class DecoderBlock(nn.Module):
    """SnakeBeta, transposed conv (kernel 2s, stride s, padding ceil(s/2)), 3 residual units.
    [B, T, Cin] -> [B, T*stride, Cout]."""

    out_channels: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = self.stride
        k, p = 2 * s, math.ceil(s / 2)
        x = SnakeBeta(name="snake1")(x)
        # PyTorch ConvTranspose1d(k, s, p) == dilate the input by s, pad k-1-p on both sides and convolve
        # with the flipped kernel (the converter flips it); output length (T-1)s + k - 2p.
        x = nn.ConvTranspose(self.out_channels, (k,), strides=(s,), padding=[(k - 1 - p, k - 1 - p)],
                             transpose_kernel=False, dtype=self.dtype, name="conv_t1")(x)
        for i, d in enumerate((1, 3, 9)):
            x = ResidualUnit(d, dtype=self.dtype, name=f"res_unit{i + 1}")(x)
        return x


class OobleckEncoder(nn.Module):
    """audio [B, T, audio_channels] -> [B, T / hop, 2 * latent_dim] (mean and scale, concatenated)."""

    config: OobleckConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        mults = (1,) + tuple(cfg.channel_multiples)
        c = cfg.encoder_channels
        x = _conv(c * mults[0], 7, padding=3, dtype=self.dtype, name="conv1")(x)
        for i, s in enumerate(cfg.strides):
            x = EncoderBlock(c * mults[i + 1], s, dtype=self.dtype, name=f"block_{i}")(x)
        x = SnakeBeta(name="snake1")(x)
        return _conv(2 * cfg.latent_dim, 3, padding=1, dtype=self.dtype, name="conv2")(x)


class OobleckDecoder(nn.Module):
    """latent [B, L, latent_dim] -> audio [B, L * hop, audio_channels]."""

    config: OobleckConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        mults = (1,) + tuple(cfg.channel_multiples)
        c = cfg.decoder_channels
        n = len(cfg.strides)
        x = _conv(c * mults[-1], 7, padding=3, dtype=self.dtype, name="conv1")(z)
        for i, s in enumerate(reversed(cfg.strides)):
            x = DecoderBlock(c * mults[n - i - 1], s, dtype=self.dtype, name=f"block_{i}")(x)
        x = SnakeBeta(name="snake1")(x)
        x = _conv(cfg.audio_channels, 7, padding=3, use_bias=False, dtype=self.dtype, name="conv2")(x)
        return jnp.tanh(x) if cfg.final_tanh else x


class OobleckVAE(nn.Module):
    """Oobleck VAE. Layout [B, T, C] throughout.

    Use ``apply(params, audio, method="encode")`` -> (mean, std) each [B, T/hop, latent_dim];
    ``apply(params, z, method="decode")`` -> audio [B, L*hop, audio_channels];
    ``apply(params, audio, rng)`` (``__call__``) -> (reconstruction, mean, std) for training.
    Codec facts: ``sample_rate``, ``hop_length`` (= ``hop``), ``latent_rate``, ``latent_dim``,
    ``audio_channels``.
    """

    config: OobleckConfig
    dtype: Any = None

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def hop(self) -> int:
        """Alias of :attr:`hop_length`."""
        return self.config.hop_length

    @property
    def latent_rate(self) -> float:
        return self.config.latent_rate

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def audio_channels(self) -> int:
        return self.config.audio_channels

    def setup(self):
        self.encoder = OobleckEncoder(self.config, dtype=self.dtype)
        self.decoder = OobleckDecoder(self.config, dtype=self.dtype)

    def _check_audio(self, audio: Array) -> Array:
        if audio.ndim == 2 and self.config.audio_channels == 1:
            audio = audio[..., None]
        if audio.ndim != 3 or audio.shape[-1] != self.config.audio_channels:
            raise ValueError(f"OobleckVAE.encode expects audio [B, T, {self.config.audio_channels}], "
                             f"got shape {tuple(audio.shape)}")
        return audio

    def encode(self, audio: Array) -> tuple[Array, Array]:
        """audio [B, T, C] (or [B, T] for mono) -> (mean, std), each [B, T/hop, latent_dim] (float32)."""
        h = self.encoder(self._check_audio(audio)).astype(jnp.float32)
        return bottleneck_stats(h)

    def decode(self, z: Array) -> Array:
        """z [B, L, latent_dim] -> audio [B, L * hop, audio_channels] (exact for even strides; an odd
        stride s gives s*L - 1 per stage, as in PyTorch)."""
        if z.ndim != 3 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"OobleckVAE.decode expects z [B, L, {self.config.latent_dim}], got {tuple(z.shape)}")
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, audio: Array, rng: Array | None = None) -> tuple[Array, Array, Array]:
        """Training pass: encode, sample (mean if ``rng`` is None), decode -> (recon, mean, std)."""
        mean, std = self.encode(audio)
        z = mean if rng is None else sample_latent(rng, mean, std)
        return self.decode(z), mean, std


def init_params(config: OobleckConfig | str, rng: Array, num_samples: int | None = None) -> dict:
    """Random params for ``config`` (plain convs; flax default init)."""
    cfg = get_config(config) if isinstance(config, str) else config
    n = num_samples or 2 * cfg.hop_length
    return OobleckVAE(cfg).init(rng, jnp.zeros((1, n, cfg.audio_channels), jnp.float32))["params"]


def abstract_params(config: OobleckConfig) -> Any:
    """Shape-only param tree (no compute)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


__all__ = ["OobleckConfig", "CONFIGS", "get_config", "OobleckVAE", "OobleckEncoder", "OobleckDecoder",
           "snake_beta", "bottleneck_stats", "sample_latent", "kl_loss", "init_params", "abstract_params"]
