"""AudioGen-style autoregressive codec-token LM (DC-LDM's acoustic prior), Flax linen.

DC-LDM (reference-architectures.md section 5) takes its acoustic condition from AudioGen: a transformer decoder
that predicts EnCodec tokens from T5 text states. The paper gives no LM details; we follow AudioGen / audiocraft
(MusicGen's LM as re-used by audiocraft's AudioGen):

- input: the delayed token rows (:mod:`tta_jax.lm.delay`) ``tokens`` [B, S, K], ids in 0..V where V is the
  special BOS/pad id; embedding ``x = sum_k Embed_k(tokens[..., k])`` ([V + 1, D] tables ``emb_{k}``) plus a
  fixed sinusoidal position embedding (audiocraft's default ``sin``: ``[cos, sin]`` halves, max period 1e4; the
  same formula as :func:`tta_jax.nn.embeddings.timestep_embedding`);
- ``depth`` pre-LN decoder blocks ``block_{i}``: causal self-attention (``self_attn``), cross-attention to the
  text states [B, L, text_dim] with ``text_mask`` [B, L] (``cross_attn``, the shared
  :class:`tta_jax.nn.attention.Attention`; its k/v projections take text_dim directly, so no separate text
  projection), GELU MLP (``mlp``, :class:`tta_jax.nn.layers.FeedForward`); dropout after each sub-layer;
- a final LayerNorm (``norm_out``) and K linear heads ``head_{k}`` (no bias) -> logits [B, S, K, V].

Choices where AudioGen/DC-LDM are silent or where we simplify: sinusoidal (not learned) positions, no layer
scale, plain GELU MLP with biases, zero-init-free xavier init; a fully masked text (all-False mask) gives a zero
cross-attention output before ``to_out`` (the shared Attention's rule), which :mod:`tta_jax.lm.generate` uses as
the default null condition for classifier-free guidance.

KV cache: explicit arrays, :func:`init_cache` -> a tuple (one per block) of ``(k, v)`` [B, S_max, H, hd].
``CodecLM(...)(tokens, text, mask, cache=cache, index=i)`` writes the new rows' keys/values at positions
``i .. i + Lq - 1`` and attends over the whole fixed-size cache with the mask ``key_pos <= query_pos``, so one
new step costs O(S_max) and shapes never change (one compile for a ``lax.scan``). The text keys/values of the
cross-attention are recomputed each step (O(L), L the text length; not cached). Without a cache the same
module runs the full causal forward.

Loss: :func:`lm_loss` is the masked cross-entropy over the valid delayed positions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.nn.attention import Attention
from tta_jax.nn.embeddings import timestep_embedding
from tta_jax.nn.layers import FeedForward, dense, layer_norm
from tta_jax.nn.sharding import constrain, dense_init
from tta_jax.sections import DictConfig

ACT = ("batch", "length", "act_embed")


@dataclasses.dataclass(frozen=True)
class CodecLMConfig(DictConfig):
    """Codec-LM hyper-parameters (hashable: usable as a static jit argument).

    ``to_dict``/``from_dict`` round-trip (unknown keys fail loudly). ``max_len`` bounds the number of delayed
    steps ``S = T + K - 1`` (positions are sinusoidal, so it is a check, not a table size).
    """

    num_codebooks: int = 4        # K (EnCodec 16 kHz as in audiocraft's AudioGen: 4 codebooks at 50 Hz)
    codebook_size: int = 2048     # V; the special BOS/pad id is V
    width: int = 1024
    depth: int = 24
    heads: int = 16
    text_dim: int = 1024          # T5-large states
    max_len: int = 1024
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: str = "float32"        # compute dtype; params stay float32

    def __post_init__(self):
        for f in ("num_codebooks", "codebook_size", "width", "depth", "heads", "text_dim", "max_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"CodecLMConfig.{f} must be a positive int, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"CodecLMConfig: width {self.width} not divisible by heads {self.heads}")
        if (self.width // self.heads) % 2:
            raise ValueError(f"CodecLMConfig: head_dim {self.width // self.heads} must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CodecLMConfig.dropout must be in [0, 1), got {self.dropout}")
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def special_id(self) -> int:
        """The BOS / delay-pad token id (= codebook_size)."""
        return self.codebook_size

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def tiny(**kw) -> CodecLMConfig:
    """A CPU test config: K=3 codebooks of 16 codes, width 32, depth 2, 4 heads, 8-d text, 64 steps."""
    base = dict(num_codebooks=3, codebook_size=16, width=32, depth=2, heads=4, text_dim=8, max_len=64)
    base.update(kw)
    return CodecLMConfig(**base)


def audiogen_base(**kw) -> CodecLMConfig:
    """AudioGen-base-like LM.

    AudioGen (Kreuk et al. 2022) publishes two sizes, base 285M and large 1B parameters; audiocraft's released
    re-implementation (``facebook/audiogen-medium``, 4 x 2048-code EnCodec at 50 Hz) is 1.5B (width 1536, 48
    layers, 24 heads). We choose the BASE size. Its width/depth/heads are not restated in the DC-LDM material
    we have, so they are our choice: width 1024, 24 layers, 16 heads, MLP x4 = 302M in self-attention + MLP
    (close to the published 285M), 420M in all here once the 24 cross-attentions (~101M) and the K=4
    embedding tables / heads (~17M) are counted. Codes: audiocraft's 4 x 2048 EnCodec codebooks; text: T5-large
    (1024); 10 s at 50 Hz is 500 frames -> 503 delayed steps, well inside ``max_len`` 1024.
    """
    base = dict(num_codebooks=4, codebook_size=2048, width=1024, depth=24, heads=16, text_dim=1024,
                max_len=1024, mlp_ratio=4.0, dropout=0.0)
    base.update(kw)
    return CodecLMConfig(**base)


PRESETS = {"tiny": tiny, "audiogen_base": audiogen_base}


# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------
def init_cache(config: CodecLMConfig, batch: int, length: int):
    """Empty KV cache: a tuple of ``depth`` pairs ``(k, v)``, each zeros [batch, length, heads, head_dim] in the
    compute dtype. ``length`` is the number of steps the cache can hold (<= config.max_len)."""
    if length > config.max_len:
        raise ValueError(f"init_cache: length {length} exceeds CodecLMConfig.max_len {config.max_len}")
    shape = (batch, length, config.heads, config.head_dim)
    z = jnp.zeros(shape, config.compute_dtype)
    return tuple((z, z) for _ in range(config.depth))


def causal_attention(q, k, v, q_pos, k_pos):
    """q [B, Lq, H, d], k/v [B, Lk, H, d]; integer positions q_pos [Lq], k_pos [Lk] -> [B, Lq, H, d].

    Query ``i`` attends to keys with ``k_pos <= q_pos[i]`` (softmax in float32; masked logits -> finfo.min)."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32).astype(jnp.float32) * scale
    mask = k_pos[None, :] <= q_pos[:, None]  # [Lq, Lk]
    logits = jnp.where(mask[None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache.

    ``(x [B, Lq, D], *, cache=(k, v) [B, S_max, H, hd] | None, index) -> (out [B, Lq, D], new_cache | None)``.
    Params ``to_q``/``to_k``/``to_v`` [D, D] and ``to_out`` [D, D] (+ bias), as :class:`Attention`.
    """

    heads: int
    head_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, cache=None, index=0):
        B, Lq, D = x.shape
        H, hd = self.heads, self.head_dim
        inner = H * hd

        def proj(name, inp, feats, names, use_bias):
            return dense(feats, names, name=name, use_bias=use_bias, dtype=self.dtype)(inp)

        q = proj("to_q", x, inner, ("embed", "heads"), False).reshape(B, Lq, H, hd)
        k = proj("to_k", x, inner, ("embed", "heads"), False).reshape(B, Lq, H, hd)
        v = proj("to_v", x, inner, ("embed", "heads"), False).reshape(B, Lq, H, hd)
        q_pos = index + jnp.arange(Lq)
        new_cache = None
        if cache is not None:
            ck, cv = cache
            if ck.shape[0] != B or ck.shape[2:] != (H, hd):
                raise ValueError(f"CausalSelfAttention: cache is {ck.shape}, expected [{B}, S_max, {H}, {hd}]")
            zero = jnp.zeros((), jnp.int32)
            start = (zero, jnp.asarray(index, jnp.int32), zero, zero)
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            new_cache = (k, v)
        k_pos = jnp.arange(k.shape[1])
        out = causal_attention(q, k.astype(q.dtype), v.astype(q.dtype), q_pos, k_pos).reshape(B, Lq, inner)
        return proj("to_out", out, D, ("heads", "embed"), True), new_cache


class CodecLMBlock(nn.Module):
    """Pre-LN decoder block: ``x + SA(LN x)``, ``+ CA(LN x, text, text_mask)``, ``+ MLP(LN x)``.

    ``(x [B, Lq, D], text [B, L, text_dim], text_mask [B, L] bool, *, cache, index, deterministic)
    -> (x [B, Lq, D], new_cache)``.
    """

    config: CodecLMConfig

    @nn.compact
    def __call__(self, x, text, text_mask, *, cache=None, index=0, deterministic=True):
        c = self.config
        dt = c.compute_dtype
        drop = nn.Dropout(c.dropout)
        h, new_cache = CausalSelfAttention(c.heads, c.head_dim, dtype=dt, name="self_attn")(
            layer_norm("norm1", dtype=dt)(x), cache=cache, index=index)
        x = x + drop(h, deterministic=deterministic)
        h = Attention(num_heads=c.heads, head_dim=c.head_dim, dtype=dt, name="cross_attn")(
            layer_norm("norm2", dtype=dt)(x), text, text_mask)
        x = x + drop(h, deterministic=deterministic)
        h = FeedForward(mult=c.mlp_ratio, activation="gelu", dtype=dt, name="mlp")(layer_norm("norm3", dtype=dt)(x))
        x = x + drop(h, deterministic=deterministic)
        return constrain(x, ACT), new_cache


class CodecLM(nn.Module):
    """The codec-token LM (see module docstring).

    ``__call__(tokens [B, Lq, K] int in 0..V, text [B, L, text_dim], text_mask [B, L] | None, *, cache=None,
    index=0, deterministic=True)``:
    without ``cache`` -> logits [B, Lq, K, V] (float32) of the full causal forward (positions 0..Lq-1);
    with ``cache`` (from :func:`init_cache`) -> ``(logits [B, Lq, K, V], new_cache)`` for rows at positions
    ``index .. index + Lq - 1`` (``index`` may be traced).
    """

    config: CodecLMConfig

    @nn.compact
    def __call__(self, tokens, text, text_mask=None, *, cache=None, index=0, deterministic=True):
        c = self.config
        dt = c.compute_dtype
        if tokens.ndim != 3 or tokens.shape[-1] != c.num_codebooks:
            raise ValueError(f"CodecLM: tokens must be [B, Lq, K={c.num_codebooks}], got {tokens.shape}")
        B, Lq, K = tokens.shape
        if text.ndim != 3 or text.shape[0] != B or text.shape[-1] != c.text_dim:
            raise ValueError(f"CodecLM: text must be [B={B}, L, text_dim={c.text_dim}], got {text.shape}")
        if text_mask is None:
            text_mask = jnp.ones(text.shape[:2], bool)
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"CodecLM: text_mask must be [B, L] = {text.shape[:2]}, got {text_mask.shape}")
        if cache is not None and len(cache) != c.depth:
            raise ValueError(f"CodecLM: cache has {len(cache)} layers, config.depth is {c.depth}")
        if Lq > c.max_len or (cache is not None and cache[0][0].shape[1] > c.max_len):
            raise ValueError(f"CodecLM: sequence longer than CodecLMConfig.max_len {c.max_len}")

        x = sum(nn.Embed(c.codebook_size + 1, c.width, dtype=dt, name=f"emb_{k}",
                         embedding_init=dense_init(nn.initializers.normal(0.02), ("vocab", "embed")))(tokens[..., k])
                for k in range(K))
        pos = index + jnp.arange(Lq)
        x = x + timestep_embedding(pos, c.width, flip_sin_to_cos=True, downscale_freq_shift=1.0).astype(dt)[None]
        x = constrain(x, ACT)
        text = text.astype(dt)
        text_mask = text_mask.astype(bool)
        new_cache = []
        for i in range(c.depth):
            x, layer_cache = CodecLMBlock(c, name=f"block_{i}")(
                x, text, text_mask, cache=None if cache is None else cache[i], index=index,
                deterministic=deterministic)
            new_cache.append(layer_cache)
        x = layer_norm("norm_out", dtype=dt)(x)
        logits = jnp.stack([dense(c.codebook_size, ("embed", "vocab"), name=f"head_{k}", use_bias=False,
                                  dtype=dt)(x) for k in range(K)], axis=2).astype(jnp.float32)
        return logits if cache is None else (logits, tuple(new_cache))


def as_variables(params) -> dict:
    """Accept either the ``{'params': ...}`` variables dict or the bare param tree."""
    return params if isinstance(params, Mapping) and "params" in params else {"params": params}


def decode_step(params, config: CodecLMConfig, tokens, text, text_mask, cache, index):
    """One cached step: tokens [B, K] (or [B, Lq, K] for a prefill) at position ``index`` ->
    (logits [B, K, V] (or [B, Lq, K, V]), new_cache)."""
    single = tokens.ndim == 2
    rows = tokens[:, None, :] if single else tokens
    logits, cache = CodecLM(config).apply(as_variables(params), rows, text, text_mask, cache=cache, index=index)
    return (logits[:, 0] if single else logits), cache


def lm_loss(logits, targets, valid):
    """Masked cross-entropy over the valid delayed positions.

    logits [B, T, K, V]; targets [B, T, K] int (invalid positions may hold any id, e.g. the pad id V);
    valid [B, T, K] or [T, K] bool. Returns ``(loss, metrics)``: ``loss`` = mean CE over valid positions
    (0 when none), metrics ``{'ce', 'accuracy', 'ce_per_codebook' [K], 'num_valid'}``.
    """
    if logits.ndim != 4 or targets.shape != logits.shape[:3]:
        raise ValueError(f"lm_loss: logits must be [B, T, K, V] and targets [B, T, K]; got {logits.shape}, "
                         f"{targets.shape}")
    valid = jnp.broadcast_to(jnp.asarray(valid, bool), targets.shape)
    logits = logits.astype(jnp.float32)
    safe = jnp.where(valid, targets, 0).astype(jnp.int32)
    logz = jax.nn.logsumexp(jnp.where(valid[..., None], logits, 0.0), axis=-1)
    picked = jnp.take_along_axis(jnp.where(valid[..., None], logits, 0.0), safe[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, logz - picked, 0.0)
    w = valid.astype(jnp.float32)
    n = w.sum()
    loss = ce.sum() / jnp.maximum(n, 1.0)
    correct = jnp.where(valid, jnp.argmax(logits, -1) == safe, False).astype(jnp.float32)
    n_k = w.sum(axis=(0, 1))
    metrics = {"ce": loss, "accuracy": correct.sum() / jnp.maximum(n, 1.0),
               "ce_per_codebook": ce.sum(axis=(0, 1)) / jnp.maximum(n_k, 1.0), "num_valid": n}
    return loss, metrics
