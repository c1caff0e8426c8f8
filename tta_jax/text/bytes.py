"""Byte-level text stand-ins (tests, CPU smoke runs, random-weight towers): no vocabulary files needed.

``byte_tokens(captions, max_len) -> {"input_ids" [B, L] int32, "attention_mask" [B, L] int32}``: UTF-8
bytes + 1 (0 = padding), truncated to ``max_len``. With ``bos`` the sequence starts with that id (so the
empty caption keeps one token); with ``vocab_size`` the bytes are folded into ``[pad_id + 1, vocab_size)``
below ``bos`` (what a random-weight T5 / CLIP / CLAP of a small vocabulary can embed).

``byte_embeddings(captions, dim, max_len, seed) -> {"text" [B, L, dim] float32, "text_mask" [B, L] bool}``:
BOS + bytes looked up in a fixed random table (``seed``); padding rows are zero. The toy text states of the
tiny EzAudio recipe.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BYTES_BOS = 257  # bos id of byte_embeddings: ids 1..256 are bytes, 0 is padding


def byte_tokens(captions: Sequence[str], max_len: int = 64, *, bos: int | None = None, pad_id: int = 0,
                vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """Captions -> token ids [B, max_len] int32 (pad ``pad_id``) and attention mask [B, max_len] int32.

    Default: id = byte + 1. With ``vocab_size``: id = pad_id + 1 + byte % span, span = the ids left below
    ``vocab_size`` (and below ``bos`` when ``bos`` is given)."""
    if max_len < 1 or (bos is not None and max_len < 2):
        raise ValueError(f"byte_tokens: max_len={max_len} too small (bos={bos})")
    top = vocab_size if vocab_size is not None else pad_id + 257
    if bos is not None and vocab_size is not None:
        top = min(top, bos)
    span = top - pad_id - 1
    if span < 1:
        raise ValueError(f"byte_tokens: no ids left for bytes (pad_id={pad_id}, bos={bos}, vocab_size={vocab_size})")
    lead = 0 if bos is None else 1
    ids = np.full((len(captions), max_len), pad_id, np.int32)
    mask = np.zeros((len(captions), max_len), np.int32)
    for i, c in enumerate(captions):
        b = np.frombuffer(c.encode("utf-8")[: max_len - lead], np.uint8).astype(np.int32)
        if bos is not None:
            ids[i, 0] = bos
        ids[i, lead:lead + len(b)] = pad_id + 1 + b % span
        mask[i, : lead + len(b)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def byte_table(dim: int, seed: int = 0) -> np.ndarray:
    """The fixed embedding table of :func:`byte_embeddings`: [258, dim] float32 (pad, 256 bytes, bos)."""
    return (np.random.default_rng(seed).standard_normal((BYTES_BOS + 1, dim)) / np.sqrt(dim)).astype(np.float32)


def byte_embeddings(captions: Sequence[str], dim: int = 32, max_len: int = 16, seed: int = 0,
                    table: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Captions -> {"text" [B, max_len, dim] float32 (zero past the mask), "text_mask" [B, max_len] bool}."""
    table = byte_table(dim, seed) if table is None else table
    tok = byte_tokens(list(captions), max_len, bos=BYTES_BOS)
    mask = tok["attention_mask"] > 0
    return {"text": table[tok["input_ids"]] * mask[..., None], "text_mask": mask}


__all__ = ["byte_tokens", "byte_table", "byte_embeddings", "BYTES_BOS"]
