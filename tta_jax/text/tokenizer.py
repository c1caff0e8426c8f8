"""Tokenizer wrapper over ``transformers.AutoTokenizer`` loading LOCAL files only.

Pass the tokenizer directory (tokenizer.json / vocab.txt / tokenizer_config.json). Note: transformers 5
silently ignores old keyword names such as ``vocab_file=``; always pass the directory (or a
``tokenizer.json`` path, loaded via ``tokenizer_file=``).

``TextTokenizer(dir, max_length)(texts) -> {"input_ids": int32 [B, L], "attention_mask": int32 [B, L]}``
(numpy). ``padding="max_length"`` (default, fixed shapes for jit) or ``"longest"``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


class TextTokenizer:
    def __init__(self, path: str | os.PathLike, max_length: int = 77, *, padding: str = "max_length",
                 lowercase_check: bool = False):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer files not found: {path}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        try:
            if os.path.isdir(path):
                self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            elif path.endswith(".json"):
                self.tok = PreTrainedTokenizerFast(tokenizer_file=path)
            else:
                raise ValueError("expected a tokenizer directory or a tokenizer.json file")
        except Exception as e:
            raise ValueError(f"{path}: could not load a tokenizer from local files ({e})") from e
        self.path, self.max_length, self.padding = path, int(max_length), padding

    @property
    def pad_token_id(self) -> int:
        return int(self.tok.pad_token_id or 0)

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def __call__(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"TextTokenizer expects strings, got {[type(t).__name__ for t in texts][:5]}")
        enc = self.tok(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                       return_tensors="np", return_attention_mask=True)
        return {"input_ids": np.asarray(enc["input_ids"], np.int32),
                "attention_mask": np.asarray(enc["attention_mask"], np.int32)}

    def decode(self, ids) -> str:
        return self.tok.decode(list(np.asarray(ids)), skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------ save / load
def save_tokenizer(tok, directory: str) -> dict:
    """Writes what rebuilds ``tok`` without any model code into ``directory`` and returns its spec (JSON):
    a :class:`TextTokenizer` -> its files (``save_pretrained``) + ``{"kind": "hf", "max_len", "padding"}``;
    ``functools.partial(byte_tokens, ...)`` -> ``{"kind": "bytes", **its keyword arguments}`` (no files).
    :func:`load_tokenizer` inverts it."""
    import functools

    from tta_jax.text.bytes import byte_tokens

    if isinstance(tok, TextTokenizer):
        os.makedirs(directory, exist_ok=True)
        tok.tok.save_pretrained(directory)
        return {"kind": "hf", "max_len": tok.max_length, "padding": tok.padding}
    if isinstance(tok, functools.partial) and tok.func is byte_tokens and not tok.args:
        return {"kind": "bytes", **{k: (int(v) if v is not None else None) for k, v in tok.keywords.items()}}
    raise TypeError(f"cannot save tokenizer {tok!r}: expected a TextTokenizer or a partial of byte_tokens")


def load_tokenizer(spec: dict, directory: str):
    """:func:`save_tokenizer`'s spec (and folder) -> ``texts -> {"input_ids", "attention_mask"}`` [B, L]."""
    import functools

    from tta_jax.text.bytes import byte_tokens

    kind = spec.get("kind")
    if kind == "hf":
        return TextTokenizer(directory, max_length=int(spec["max_len"]), padding=spec.get("padding", "max_length"))
    if kind == "bytes":
        return functools.partial(byte_tokens, **{k: v for k, v in spec.items() if k != "kind"})
    raise ValueError(f"{directory}: unknown tokenizer kind {kind!r} (expected 'hf' or 'bytes')")
