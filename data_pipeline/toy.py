"""Trivial deterministic stand-ins for a codec and a text encoder (tests, benchmarks, CPU smoke runs).

`FrameCodec.encode(audio [B, T]) -> latent [B, T // hop, 1 + bands]`: per frame the log RMS and
the log mean magnitude of `bands` equal slices of the frame's spectrum. Pure jnp, jit-able.
`byte_tokens(captions, max_len) -> {"input_ids" [B, L] int32, "attention_mask" [B, L] int32}`:
UTF-8 bytes + 1 (0 = padding), truncated to `max_len`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrameCodec:
    sample_rate: int = 22050
    hop: int = 256
    bands: int = 7

    @property
    def latent_channels(self) -> int:
        return 1 + self.bands

    def encode(self, audio):
        """audio [B, T] -> latent [B, T // hop, 1 + bands] float32."""
        import jax.numpy as jnp

        audio = jnp.asarray(audio, jnp.float32)
        b, t = audio.shape
        f = t // self.hop
        frames = audio[:, : f * self.hop].reshape(b, f, self.hop)
        rms = jnp.sqrt(jnp.mean(frames**2, axis=-1) + 1e-10)
        mag = jnp.abs(jnp.fft.rfft(frames, axis=-1))[..., 1:]  # [B, F, hop/2]
        nb = mag.shape[-1] // self.bands
        band = mag[..., : nb * self.bands].reshape(b, f, self.bands, nb).mean(-1)
        return jnp.concatenate([jnp.log(rms)[..., None], jnp.log(band + 1e-5)], axis=-1)

    @property
    def codec_id(self) -> str:
        return f"toy-frame-codec(sr={self.sample_rate},hop={self.hop},bands={self.bands})"


def byte_tokens(captions: Sequence[str], max_len: int = 64) -> dict[str, np.ndarray]:
    """Captions -> byte-level token ids [B, max_len] (+1 offset, 0 = pad) and attention mask."""
    ids = np.zeros((len(captions), max_len), np.int32)
    for i, c in enumerate(captions):
        b = np.frombuffer(c.encode("utf-8")[:max_len], np.uint8).astype(np.int32) + 1
        ids[i, : len(b)] = b
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}
