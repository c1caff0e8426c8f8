"""Hugging Face ``BertModel`` state dict -> :class:`tta_jax.text.bert.BertEncoder` params.

Accepts keys with or without a ``bert.`` prefix. The pooler (``pooler.dense``), the MLM/NSP heads
(``cls.*``) and the ``embeddings.position_ids`` buffer are not used and are ignored.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tta_jax.convert.common import shapes_of
from tta_jax.convert.hifigan import LenientMapper
from tta_jax.text.bert import BertConfig, BertEncoder

_IGNORED_PREFIXES = ("pooler.", "cls.")


def _target_shapes(cfg: BertConfig):
    import jax
    import jax.numpy as jnp

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
