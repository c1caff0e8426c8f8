"""Random fixed-length crops of variable-length log-mels, as a checkpointable batch iterator: the training data of
the mel VAE (:mod:`tta_jax.train.kl_vae`) and of the reference-encoder classifier
(:mod:`tta_jax.train.reference_encoder`)."""
from __future__ import annotations

import numpy as np


class MelCropIterator:
    """Random crops [B, crop, M] of a list of log-mels (padded with the log floor when shorter); batch i is
    drawn from ``default_rng([seed, i])`` (checkpointable: ``get_state``/``set_state``). With ``labels`` (one
    int per clip) a batch is ``{"mel": [B, crop, M], "label": [B]}``."""

    def __init__(self, mels: list[np.ndarray], batch_size: int, crop: int, seed: int = 0, floor: float = -11.5,
                 labels: list[int] | None = None):
        if not mels:
            raise ValueError("MelCropIterator: no clips")
        if labels is not None and len(labels) != len(mels):
            raise ValueError(f"MelCropIterator: {len(labels)} labels for {len(mels)} clips")
        self.mels, self.batch, self.crop, self.seed, self.floor, self.index = mels, batch_size, crop, seed, floor, 0
        self.labels = None if labels is None else np.asarray(labels, np.int32)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        r = np.random.default_rng([self.seed, self.index])
        self.index += 1
        m = self.mels[0].shape[-1]
        out = np.full((self.batch, self.crop, m), self.floor, np.float32)
        picks = np.zeros(self.batch, np.int64)
        for b in range(self.batch):
            picks[b] = int(r.integers(len(self.mels)))
            x = self.mels[picks[b]]
            s = int(r.integers(0, max(x.shape[0] - self.crop, 0) + 1))
            piece = x[s:s + self.crop]
            out[b, :piece.shape[0]] = piece
        return out if self.labels is None else {"mel": out, "label": self.labels[picks]}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, s):
        self.index = int(s["index"])


__all__ = ["MelCropIterator"]
