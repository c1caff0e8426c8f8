"""Toy frame codec (tests, benchmarks, CPU smoke runs): a deterministic, weight-free stand-in for a codec.

``FrameCodec.encode(audio [B, N]) -> latent [B, N // hop, 1 + bands]``: per frame of ``hop`` samples its
log RMS and the log mean magnitude of ``bands`` equal slices of the frame's spectrum (bins 1 ..
``bands * ((hop // 2) // bands)`` of its real FFT).
``FrameCodec.decode(latent) -> audio [B, F * hop]``: per frame, the band magnitudes spread over their bins
with fixed pseudo-random phases (``seed``), inverse FFT, scaled to the frame's RMS; so re-encoding a
decoded latent gives back its RMS channel. Pure jnp, jit-able.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

RMS_EPS = 1e-10
BAND_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class FrameCodec:
    sample_rate: int = 22050
    hop: int = 256
    bands: int = 7
    seed: int = 0      # phases of the decoder

    def __post_init__(self):
        if self.hop < 2 or self.bands < 1 or (self.hop // 2) // self.bands < 1:
            raise ValueError(f"FrameCodec: hop={self.hop} must give at least one FFT bin per band "
                             f"(bands={self.bands}): need hop // 2 >= bands")

    @property
    def latent_channels(self) -> int:
        return 1 + self.bands

    @property
    def bins_per_band(self) -> int:
        return (self.hop // 2) // self.bands

    def encode(self, audio):
        """audio [B, N] -> latent [B, N // hop, 1 + bands] float32."""
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim != 2:
            raise ValueError(f"FrameCodec.encode expects audio [B, N], got shape {tuple(audio.shape)}")
        b, t = audio.shape
        f = t // self.hop
        frames = audio[:, : f * self.hop].reshape(b, f, self.hop)
        rms = jnp.sqrt(jnp.mean(frames**2, axis=-1) + RMS_EPS)
        mag = jnp.abs(jnp.fft.rfft(frames, axis=-1))[..., 1:]  # [B, F, hop/2]
        nb = self.bins_per_band
        band = mag[..., : nb * self.bands].reshape(b, f, self.bands, nb).mean(-1)
        return jnp.concatenate([jnp.log(rms)[..., None], jnp.log(band + BAND_EPS)], axis=-1)

    def decode(self, latent):
        """latent [B, F, 1 + bands] -> audio [B, F * hop] float32."""
        z = jnp.asarray(latent, jnp.float32)
        if z.ndim != 3 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"FrameCodec.decode expects latent [B, F, {self.latent_channels}], "
                             f"got shape {tuple(z.shape)}")
        b, f, _ = z.shape
        nb, nbins = self.bins_per_band, self.hop // 2 + 1
        mag = jnp.repeat(jnp.maximum(jnp.exp(z[..., 1:]) - BAND_EPS, 0.0), nb, axis=-1)  # [B, F, bands*nb]
        mag = jnp.pad(mag, ((0, 0), (0, 0), (1, nbins - 1 - mag.shape[-1])))            # DC and the rest: 0
        phase = jax.random.uniform(jax.random.PRNGKey(self.seed), (f, nbins), jnp.float32, 0.0, 2 * jnp.pi)
        frames = jnp.fft.irfft(mag * jnp.exp(1j * phase), n=self.hop, axis=-1)          # [B, F, hop]
        target = jnp.maximum(jnp.exp(2.0 * z[..., :1]) - RMS_EPS, 0.0)                  # mean square
        power = jnp.mean(frames**2, axis=-1, keepdims=True)
        frames = frames * jnp.sqrt(target / jnp.maximum(power, 1e-30))
        return frames.reshape(b, f * self.hop).astype(jnp.float32)

    @property
    def codec_id(self) -> str:
        return f"toy-frame-codec(sr={self.sample_rate},hop={self.hop},bands={self.bands})"


__all__ = ["FrameCodec"]
