"""EzAudio span masks for masked diffusion modelling (docs/reference-architectures.md section 1).

Per sample: ratio ~ U(0.25, 1.0); number of spans = floor(ratio * L / 10 + U(0, 1)), at least 1;
span length 10 frames; span starts drawn without replacement from [0, L - 10) (overlaps allowed).
Per batch 25% of samples get such a partial mask, the rest are fully masked (plain text-to-audio):
here that is a per-record Bernoulli(partial_prob) so each record's mask depends only on its own
seed (`np.random.Generator` seeded per record by the loader).
Mask convention: 1.0 on frames to generate, 0.0 on frames given as context.
"""
from __future__ import annotations

import numpy as np


def span_mask(length: int, rng: np.random.Generator, span: int = 10, min_ratio: float = 0.25,
              max_ratio: float = 1.0) -> np.ndarray:
    """Partial span mask float32 [length] (1 = generate)."""
    mask = np.zeros(length, np.float32)
    if length <= span:
        mask[:] = 1.0
        return mask
    ratio = rng.uniform(min_ratio, max_ratio)
    n = max(1, int(np.floor(ratio * length / span + rng.uniform(0.0, 1.0))))
    n = min(n, length - span)
    for s in rng.choice(length - span, size=n, replace=False):
        mask[s:s + span] = 1.0
    return mask


def sample_mask(length: int, rng: np.random.Generator, partial_prob: float = 0.25,
                span: int = 10) -> np.ndarray:
    """With probability `partial_prob` a span mask, else a full mask (all ones) [length]."""
    if rng.uniform() < partial_prob:
        return span_mask(length, rng, span)
    return np.ones(length, np.float32)
