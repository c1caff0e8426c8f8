"""T5 encoder (= ``transformers.T5EncoderModel``), [B, L, D]; FLAN-T5 base / large / XL configs.

Token embedding (no scaling, no absolute positions) -> pre-norm layers: RMS LayerNorm (no mean, no
bias, eps 1e-6), self-attention without 1/sqrt(d) scaling plus a learned relative-position bias
(bidirectional log buckets, owned by the first layer and shared by all), RMS LayerNorm, feed-forward
(ReLU for T5 v1.0; gated-gelu with the tanh GELU for T5 v1.1 / FLAN-T5) -> final RMS LayerNorm.

Params: ``shared`` (embedding), ``block_{i}/{q,k,v,o}``, ``block_0/relative_attention_bias``
([buckets, heads]), ``block_{i}/layer_norm_0``, ``block_{i}/{wi | wi_0, wi_1}``, ``block_{i}/wo``,
``block_{i}/layer_norm_1``, ``final_layer_norm``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.text.clip import TextEncoderOutput, activation, attention, key_padding_bias

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def act(self) -> str:
        """transformers' rule: "gated-gelu" means the tanh GELU (gelu_new)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "T5Config":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d[k] for k in fields if k in d and d[k] is not None})


CONFIGS = {
    "flan_t5_base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "flan_t5_large": T5Config(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    "flan_t5_xl": T5Config(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
    "tiny": T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=20),
}


def relative_position_bucket(relative_position: np.ndarray, *, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """T5's bucketing of ``memory_pos - query_pos`` (numpy, float32 math as transformers does)."""
    rel = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        large = (np.log(rel.astype(np.float32) / np.float32(max_exact))
                 / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, large).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


def _rms_norm(x: Array, scale: Array, eps: float) -> Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (scale * (x32 * jax.lax.rsqrt(var + eps))).astype(x.dtype)


class T5LayerNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return _rms_norm(x, scale, self.eps)


class T5Block(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask_bias: Array, position_bias: Array | None) -> tuple[Array, Array]:
        cfg = self.config
        b, l, _ = x.shape
        h, dk = cfg.num_heads, cfg.d_kv
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        if position_bias is None:
            if not self.has_relative_bias:
                raise ValueError("the first T5 block must own the relative attention bias")
            table = self.param("relative_attention_bias", nn.initializers.normal(1.0),
                               (cfg.relative_attention_num_buckets, h), jnp.float32)
            pos = np.arange(l)
            buckets = relative_position_bucket(pos[None, :] - pos[:, None], bidirectional=True,
                                               num_buckets=cfg.relative_attention_num_buckets,
                                               max_distance=cfg.relative_attention_max_distance)
            position_bias = jnp.transpose(table[jnp.asarray(buckets)], (2, 0, 1))[None]  # [1, H, L, L]
        y = T5LayerNorm(cfg.layer_norm_epsilon, name="layer_norm_0")(x)
        q, k, v = (dense(h * dk, n)(y).reshape(b, l, h, dk) for n in ("q", "k", "v"))
        y = attention(q, k, v, position_bias + mask_bias, 1.0).reshape(b, l, h * dk)
        x = x + dense(cfg.d_model, "o")(y)
        y = T5LayerNorm(cfg.layer_norm_epsilon, name="layer_norm_1")(x)
        act = activation(cfg.act)
        if cfg.is_gated:
            y = act(dense(cfg.d_ff, "wi_0")(y)) * dense(cfg.d_ff, "wi_1")(y)
        else:
            y = act(dense(cfg.d_ff, "wi")(y))
        x = x + dense(cfg.d_model, "wo")(y)
        return x, position_bias


class T5Encoder(nn.Module):
    """input_ids [B, L], attention_mask [B, L] (1 = token) -> TextEncoderOutput(last_hidden_state [B, L, D]).

    Positions past the mask still get (finite) values, exactly as in transformers; callers that need
    zeros there multiply by the mask.
    """

    config: T5Config
    dtype: Any = None

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> TextEncoderOutput:
        cfg = self.config
        b, l = input_ids.shape
        x = nn.Embed(cfg.vocab_size, cfg.d_model, name="shared")(input_ids).astype(self.dtype or jnp.float32)
        mask_bias = key_padding_bias(attention_mask, b, l)
        position_bias = None
        for i in range(cfg.num_layers):
            x, position_bias = T5Block(cfg, has_relative_bias=(i == 0), dtype=self.dtype,
                                       name=f"block_{i}")(x, mask_bias, position_bias)
        x = T5LayerNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(x)
        return TextEncoderOutput(x.astype(jnp.float32))


__all__ = ["T5Config", "T5Encoder", "CONFIGS", "relative_position_bucket"]
