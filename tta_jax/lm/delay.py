"""MusicGen / AudioGen "delay" codebook interleaving (pure functions; numpy in -> numpy out, else jnp).

EnCodec gives K parallel token streams per frame, ``tokens`` [B, T, K]. The delay pattern shifts codebook
``k`` right by ``k`` steps, so the LM predicts one delayed row [K] per step and codebook ``k`` of frame ``t``
is sampled after codebooks ``< k`` of the same frame (the coarser residual levels) are known:

    delayed[:, s, k] = tokens[:, s - k, k]   if k <= s < k + T   (valid)
                     = pad_id                otherwise          (the K - 1 corner positions per codebook)

with ``S = T + K - 1`` delayed steps. ``K = 1`` is the identity.

Training layout (:func:`delayed_lm_batch`): the LM input at step ``s`` is the delayed row ``s - 1`` (a row of
``special_id`` at ``s = 0``, i.e. BOS), the target is the delayed row ``s``; the loss counts only valid target
positions. audiocraft uses one special id (= codebook size V) for both the start row and the padding; so do
we, which is why the input embeddings have ``V + 1`` rows while the heads predict only the ``V`` real codes.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _xp(x):
    """numpy for numpy inputs (data pipelines), jax.numpy otherwise (inside jit)."""
    return np if isinstance(x, np.ndarray) else jnp


def delay_valid_mask(T: int, K: int) -> np.ndarray:
    """Bool numpy [T + K - 1, K] (static): True where delayed step ``s`` of codebook ``k`` holds a real token
    (``k <= s < k + T``)."""
    if T < 1 or K < 1:
        raise ValueError(f"delay_valid_mask: T and K must be >= 1, got T={T}, K={K}")
    s = np.arange(T + K - 1)[:, None]
    k = np.arange(K)[None, :]
    return (s >= k) & (s < k + T)


def delay_interleave(tokens, pad_id: int):
    """tokens [B, T, K] (int) -> (delayed [B, T + K - 1, K], valid [T + K - 1, K] bool).

    Codebook ``k`` is shifted right by ``k`` steps; the positions before/after it hold ``pad_id``.
    """
    xp = _xp(tokens)
    tokens = xp.asarray(tokens)
    if tokens.ndim != 3:
        raise ValueError(f"delay_interleave: tokens must be [B, T, K], got shape {tokens.shape}")
    _, T, K = tokens.shape
    valid = delay_valid_mask(T, K)
    src = np.clip(np.arange(T + K - 1)[:, None] - np.arange(K)[None, :], 0, T - 1)  # [S, K] frame index
    gathered = xp.take_along_axis(tokens, xp.asarray(np.broadcast_to(src[None], (tokens.shape[0],) + src.shape)),
                                  axis=1)
    return xp.where(valid[None], gathered, xp.asarray(pad_id, tokens.dtype)), xp.asarray(valid)


def delay_deinterleave(delayed):
    """delayed [B, S, K] (S = T + K - 1) -> tokens [B, T, K]: ``tokens[:, t, k] = delayed[:, t + k, k]``."""
    xp = _xp(delayed)
    delayed = xp.asarray(delayed)
    if delayed.ndim != 3:
        raise ValueError(f"delay_deinterleave: delayed must be [B, T + K - 1, K], got shape {delayed.shape}")
    _, S, K = delayed.shape
    T = S - K + 1
    if T < 1:
        raise ValueError(f"delay_deinterleave: {S} delayed steps are too few for K={K} codebooks (need >= {K})")
    src = np.arange(T)[:, None] + np.arange(K)[None, :]  # [T, K]
    return xp.take_along_axis(delayed, xp.asarray(np.broadcast_to(src[None], (delayed.shape[0], T, K))), axis=1)


def delayed_lm_batch(tokens, special_id: int):
    """Teacher-forcing batch for the codec LM.

    tokens [B, T, K] (codes in 0..V-1) -> (inputs [B, S, K], targets [B, S, K], valid [B, S, K] bool), S = T+K-1:
    ``targets`` is the delayed sequence (``special_id`` at invalid positions), ``inputs`` the targets shifted right
    by one step with a BOS row of ``special_id`` first, ``valid`` the delay mask broadcast over the batch.
    """
    xp = _xp(tokens)
    targets, valid = delay_interleave(tokens, special_id)
    B, _, K = targets.shape
    bos = xp.full((B, 1, K), special_id, targets.dtype)
    inputs = xp.concatenate([bos, targets[:, :-1]], axis=1)
    return inputs, targets, xp.broadcast_to(valid[None], targets.shape)
