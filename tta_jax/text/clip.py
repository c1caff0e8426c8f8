"""CLIP text tower (= ``transformers.CLIPTextModel`` / ``CLIPTextModelWithProjection``), [B, L, D].

Token + learned position embeddings -> pre-LN transformer layers (causal self-attention with the
padding mask on keys, quick_gelu MLP) -> final LayerNorm. Pooled output = the final hidden state at
the EOS token (first ``eos_token_id``; the legacy configs with ``eos_token_id == 2`` take the arg-max
token id, as transformers does). ``text_embeds`` = bias-free projection of the pooled output when
``projection_dim`` is set.

This module also holds the small pieces the other text towers share (:class:`TextEncoderOutput`,
:func:`key_padding_bias`, :func:`attention`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = float(jnp.finfo(jnp.float32).min)


class TextEncoderOutput(NamedTuple):
    """What every text tower returns. ``last_hidden_state`` [B, L, D]; ``pooler_output`` [B, D] or None;
    ``text_embeds`` [B, P] (projection head) or None."""

    last_hidden_state: Array
    pooler_output: Array | None = None
    text_embeds: Array | None = None


def key_padding_bias(attention_mask: Array | None, batch: int, length: int) -> Array:
    """[B, L] 1/0 mask -> additive bias [B, 1, 1, L] (0 or float32 min), as transformers builds it."""
    if attention_mask is None:
        return jnp.zeros((batch, 1, 1, length), jnp.float32)
    m = jnp.asarray(attention_mask).astype(bool)
    return jnp.where(m, 0.0, NEG_INF)[:, None, None, :].astype(jnp.float32)


def attention(q: Array, k: Array, v: Array, bias: Array | None, scale: float) -> Array:
    """q, k, v [B, L, H, Dh]; bias broadcastable to [B, H, Lq, Lk] -> [B, Lq, H, Dh]. Softmax in float32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)


def activation(name: str):
    """transformers ACT2FN names -> functions."""
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(table)}")
    return table[name]


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    projection_dim: int | None = None  # set for CLIPTextModelWithProjection / CLIPModel

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], *, with_projection: bool | None = None) -> "CLIPTextConfig":
        """From a transformers ``config.json`` dict (CLIPTextConfig or CLIPConfig with ``text_config``)."""
        top = d
        if "text_config" in d and isinstance(d["text_config"], Mapping):
            d = d["text_config"]
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: d[k] for k in fields if k in d and d[k] is not None}
        proj = d.get("projection_dim", top.get("projection_dim"))
        if with_projection is False:
            proj = None
        kw["projection_dim"] = proj if (with_projection or with_projection is None and proj) else None
        return cls(**kw)


CONFIGS = {
    # openai/clip-vit-large-patch14 text tower (Auffusion's CLIP-L/14), legacy eos id 2 -> arg-max pooling.
    "clip_l14": CLIPTextConfig(eos_token_id=2, projection_dim=768),
    "tiny": CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=16, eos_token_id=98,
                           projection_dim=8),
}


class CLIPEncoderLayer(nn.Module):
    """Pre-LN layer: x + attn(LN1(x)); x + MLP(LN2(x)). Params: layer_norm1, q_proj, k_proj, v_proj,
    out_proj, layer_norm2, fc1, fc2. x [B, L, D], bias [B, 1, L, L] additive."""

    config: CLIPTextConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, bias: Array) -> Array:
        cfg = self.config
        b, l, d = x.shape
        h = cfg.num_attention_heads
        y = _layer_norm(cfg.layer_norm_eps, "layer_norm1")(x)
        q, k, v = (nn.Dense(d, dtype=self.dtype, name=n)(y).reshape(b, l, h, d // h)
                   for n in ("q_proj", "k_proj", "v_proj"))
        y = attention(q, k, v, bias, (d // h) ** -0.5).reshape(b, l, d)
        x = x + nn.Dense(d, dtype=self.dtype, name="out_proj")(y)
        y = _layer_norm(cfg.layer_norm_eps, "layer_norm2")(x)
        y = activation(cfg.hidden_act)(nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="fc1")(y))
        return x + nn.Dense(d, dtype=self.dtype, name="fc2")(y)


def pool_eos(hidden: Array, input_ids: Array, eos_token_id: int) -> Array:
    """Hidden state at the EOS position: first ``eos_token_id``, or arg-max id for legacy eos id 2."""
    ids = jnp.asarray(input_ids)
    if eos_token_id == 2:
        idx = jnp.argmax(ids, axis=-1)
    else:
        idx = jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


class CLIPTextEncoder(nn.Module):
    """input_ids [B, L] (L <= max_position_embeddings), attention_mask [B, L] (1 = token) ->
    TextEncoderOutput(last_hidden_state [B, L, D], pooler_output [B, D], text_embeds [B, P] or None).

    Params: token_embedding, position_embedding, layers_{i}, final_layer_norm, text_projection (opt.).
    """

    config: CLIPTextConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> TextEncoderOutput:
        cfg = self.config
        b, l = input_ids.shape
        if l > cfg.max_position_embeddings:
            raise ValueError(f"CLIP text: sequence length {l} > max_position_embeddings {cfg.max_position_embeddings}")
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")(input_ids)
        pos = self.param("position_embedding", nn.initializers.normal(0.01),
                         (cfg.max_position_embeddings, cfg.hidden_size), jnp.float32)
        x = (x + pos[None, :l]).astype(self.dtype or jnp.float32)
        causal = jnp.tril(jnp.ones((l, l), bool))
        keys = jnp.ones((b, l), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        allowed = causal[None, None] & keys[:, None, None, :]
        bias = jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)
        for i in range(cfg.num_hidden_layers):
            x = CLIPEncoderLayer(cfg, self.dtype, name=f"layers_{i}")(x, bias)
        x = _layer_norm(cfg.layer_norm_eps, "final_layer_norm")(x).astype(jnp.float32)
        pooled = pool_eos(x, input_ids, cfg.eos_token_id)
        embeds = None
        if cfg.projection_dim:
            embeds = nn.Dense(cfg.projection_dim, use_bias=False, name="text_projection")(pooled)
        return TextEncoderOutput(x, pooled, embeds)


class TowerTextEncoder:
    """Host-side callable for :class:`tta_jax.text.conditioner.TextConditioner`:
    ``texts -> (states [B, L, D] float32, mask [B, L] bool)`` for any tower here (T5, CLIP, CLAP).

    ``tokenizer(texts)`` must return ``{"input_ids", "attention_mask"}`` padded to a fixed length (e.g.
    :mod:`tta_jax.text.tokenizer`). ``output``: ``"last_hidden_state"`` (default), ``"pooler_output"`` or
    ``"text_embeds"`` (the last two as a single token, [B, 1, D], mask all ones).
    """

    def __init__(self, module: nn.Module, params, tokenizer, *, output: str = "last_hidden_state"):
        if output not in TextEncoderOutput._fields:
            raise ValueError(f"output must be one of {TextEncoderOutput._fields}, got {output!r}")
        self.module, self.params, self.tokenizer, self.output = module, params, tokenizer, output
        self._fn = jax.jit(lambda p, ids, m: getattr(module.apply({"params": p}, ids, m), output))

    def __call__(self, texts):
        tok = self.tokenizer(list(texts))
        return self.forward(jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"]))

    def forward(self, ids, mask):
        """Token ids and attention mask [B, L] -> (states [B, L, D], mask [B, L] bool); traceable (the params
        are constants of the trace)."""
        states = self._fn(self.params, ids, mask)
        if states is None:
            raise ValueError(f"{type(self.module).__name__} has no {self.output!r} output")
        if states.ndim == 2:
            return states[:, None, :], jnp.ones((states.shape[0], 1), bool)
        return states, mask > 0


__all__ = ["CLIPTextConfig", "CLIPTextEncoder", "CONFIGS", "TextEncoderOutput", "TowerTextEncoder", "attention",
           "key_padding_bias", "activation", "pool_eos"]
