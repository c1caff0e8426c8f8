"""CLAP text tower (= ``transformers.ClapTextModelWithProjection`` / ``ClapModel.get_text_features``).

RoBERTa encoder: word + position (ids counted from ``pad_token_id + 1`` over non-pad tokens, pads keep
``pad_token_id``) + token-type embeddings, LayerNorm -> post-LN BERT layers (self-attention, residual,
LayerNorm; GELU MLP, residual, LayerNorm) -> pooler (tanh Dense on the first token) -> projection
(Linear, ReLU, Linear). ``ClapModel.get_text_features`` = L2-normalised ``text_embeds``
(:func:`normalize`).

Params: ``word_embeddings``, ``position_embeddings``, ``token_type_embeddings``, ``embeddings_ln``,
``layer_{i}/{query,key,value,attn_out,attn_ln,ffn_in,ffn_out,ffn_ln}``, ``pooler``,
``projection/{linear1,linear2}``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.text.clip import TextEncoderOutput, activation, attention, key_padding_bias

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClapTextConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    projection_dim: int = 512
    projection_hidden_act: str = "relu"

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "ClapTextConfig":
        """From a transformers ``config.json`` dict (ClapTextConfig, or ClapConfig with ``text_config``)."""
        top = d
        if "text_config" in d and isinstance(d["text_config"], Mapping):
            d = dict(d["text_config"])
            if "projection_dim" not in d and "projection_dim" in top:
                d["projection_dim"] = top["projection_dim"]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d[k] for k in fields if k in d and d[k] is not None})


CONFIGS = {
    # laion/clap-htsat-unfused / -fused text tower (RoBERTa-base + 512-d projection).
    "clap_htsat": ClapTextConfig(),
    "tiny": ClapTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=40, projection_dim=16),
}


def roberta_position_ids(input_ids: Array, pad_token_id: int) -> Array:
    """fairseq/RoBERTa positions: pad_token_id + running count of non-pad tokens; pads get pad_token_id."""
    m = (jnp.asarray(input_ids) != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(m, axis=1) * m + pad_token_id


def normalize(x: Array, eps: float = 1e-12) -> Array:
    """torch.nn.functional.normalize(x, dim=-1)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _ln(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class RobertaLayer(nn.Module):
    config: ClapTextConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, bias: Array) -> Array:
        cfg = self.config
        b, l, d = x.shape
        h = cfg.num_attention_heads
        q, k, v = (nn.Dense(d, dtype=self.dtype, name=n)(x).reshape(b, l, h, d // h)
                   for n in ("query", "key", "value"))
        y = attention(q, k, v, bias, (d // h) ** -0.5).reshape(b, l, d)
        x = _ln(cfg.layer_norm_eps, "attn_ln")(nn.Dense(d, dtype=self.dtype, name="attn_out")(y) + x)
        y = activation(cfg.hidden_act)(nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="ffn_in")(x))
        return _ln(cfg.layer_norm_eps, "ffn_ln")(nn.Dense(d, dtype=self.dtype, name="ffn_out")(y) + x)


class ClapTextEncoder(nn.Module):
    """input_ids [B, L], attention_mask [B, L] (1 = token) -> TextEncoderOutput(last_hidden_state
    [B, L, D], pooler_output [B, D], text_embeds [B, projection_dim] (not normalised))."""

    config: ClapTextConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None) -> TextEncoderOutput:
        cfg = self.config
        b, l = input_ids.shape
        pos = roberta_position_ids(input_ids, cfg.pad_token_id)
        if l + cfg.pad_token_id >= cfg.max_position_embeddings:
            raise ValueError(f"CLAP text: sequence length {l} too long for max_position_embeddings "
                             f"{cfg.max_position_embeddings} (pad_token_id {cfg.pad_token_id})")
        tt = jnp.zeros((b, l), jnp.int32) if token_type_ids is None else token_type_ids
        x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(tt)
             + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embeddings")(pos))
        x = _ln(cfg.layer_norm_eps, "embeddings_ln")(x).astype(self.dtype or jnp.float32)
        bias = key_padding_bias(attention_mask, b, l)
        for i in range(cfg.num_hidden_layers):
            x = RobertaLayer(cfg, self.dtype, name=f"layer_{i}")(x, bias)
        x = x.astype(jnp.float32)
        pooled = jnp.tanh(nn.Dense(cfg.hidden_size, name="pooler")(x[:, 0]))
        proj = ClapProjection(cfg, name="projection")(pooled)
        return TextEncoderOutput(x, pooled, proj)


class ClapProjection(nn.Module):
    """Linear(hidden -> P), activation, Linear(P -> P)."""

    config: ClapTextConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        x = activation(cfg.projection_hidden_act)(nn.Dense(cfg.projection_dim, name="linear1")(x))
        return nn.Dense(cfg.projection_dim, name="linear2")(x)


def get_text_features(module: ClapTextEncoder, params, input_ids: Array, attention_mask: Array | None = None):
    """``ClapModel.get_text_features``: L2-normalised projection [B, P]."""
    out = module.apply({"params": params}, input_ids, attention_mask)
    return normalize(out.text_embeds)


__all__ = ["ClapTextConfig", "ClapTextEncoder", "CONFIGS", "roberta_position_ids", "normalize",
           "get_text_features"]
