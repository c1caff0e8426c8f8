"""Sampling from the codec LM: one jitted ``lax.scan`` over the delayed steps with a KV cache.

:func:`generate` runs ``S = T + K - 1`` cached decode steps inside ONE ``jax.jit`` (module-level, so a second
call with the same shapes/static options reuses the compiled program; the key, text, temperature, top_p and
cfg_scale are traced). Step ``s`` feeds the previous delayed row (a BOS row of the special id V at ``s = 0``),
reads logits [B, K, V], and:

- classifier-free guidance: the conditional and unconditional rows run as one batch [2B] (cond first) and
  ``logits = uncond + cfg_scale * (cond - uncond)`` (audiocraft's form). CFG runs when ``null_text`` is given or
  ``cfg_scale != 1``; the default null condition is a fully masked text (zeros, all-False mask), for which the
  shared cross-attention returns only its output bias (audiocraft instead encodes an empty/dropped text; pass
  ``null_text``/``null_mask`` for that);
- sampling (:func:`sample_logits`): ``temperature`` 0 = argmax; otherwise logits / temperature, then top-k
  (``top_k`` > 0, static) and then top-p / nucleus (0 < ``top_p`` < 1: the smallest set of most likely codes whose
  probability reaches top_p, the top code always kept), then a categorical draw with key ``fold_in(key, s)``.
  audiocraft applies top-p OR top-k; applying both (top-k first) is the HF convention and reduces to either one
  when the other is off;
- the delay pattern: codebook ``k`` takes the sampled code only when ``k <= s < k + T``; elsewhere the row holds
  the special id V (what the model saw as padding in training, :func:`tta_jax.lm.delay.delayed_lm_batch`).

The delayed rows [B, S, K] are de-interleaved to tokens [B, T, K].
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tta_jax.lm.delay import delay_deinterleave, delay_valid_mask
from tta_jax.lm.transformer import CodecLM, CodecLMConfig, as_variables, init_cache


def top_k_filter(logits, k: int):
    """logits [..., V] -> logits with everything below the k-th largest set to -inf (k <= 0 or k >= V: no-op)."""
    V = logits.shape[-1]
    if k <= 0 or k >= V:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits, p):
    """logits [..., V] -> logits outside the nucleus set to -inf.

    The nucleus is the smallest set of most likely codes whose softmax mass reaches ``p`` (the most likely code
    is always kept). ``p`` may be traced; p <= 0 or p >= 1 keeps everything."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the strictly more likely codes
    keep_sorted = before < p
    # the smallest kept probability is the cut-off; ties at the cut-off are kept
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    keep = probs >= cutoff
    p = jnp.asarray(p, jnp.float32)
    keep = keep | ~((p > 0) & (p < 1))
    return jnp.where(keep, logits, -jnp.inf)


def sample_logits(key, logits, temperature, top_k: int = 0, top_p=0.0):
    """Sample codes from logits [..., V] -> int32 [...]. ``temperature`` (traced ok) 0 = argmax of the raw
    logits; otherwise top-k (static int) then top-p (traced ok) on ``logits / temperature``."""
    logits = logits.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    scaled = top_p_filter(top_k_filter(scaled, top_k), top_p)
    drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)


def apply_cfg(logits, cfg_scale):
    """logits [2B, ...] (conditional rows first) -> ``uncond + cfg_scale * (cond - uncond)`` [B, ...]."""
    cond, uncond = jnp.split(logits, 2, axis=0)
    return uncond + jnp.asarray(cfg_scale, logits.dtype) * (cond - uncond)


@functools.partial(jax.jit, static_argnames=("config", "steps", "top_k", "use_cfg"))
def _generate_jit(params, text, text_mask, null_text, null_mask, key, temperature, top_p, cfg_scale, *,
                  config: CodecLMConfig, steps: int, top_k: int, use_cfg: bool):
    B = text.shape[0]
    K, V = config.num_codebooks, config.codebook_size
    S = steps + K - 1
    model = CodecLM(config)
    variables = as_variables(params)
    if use_cfg:
        ctx = jnp.concatenate([text, null_text.astype(text.dtype)], axis=0)
        ctx_mask = jnp.concatenate([text_mask, null_mask], axis=0)
    else:
        ctx, ctx_mask = text, text_mask
    rows_batch = ctx.shape[0]
    valid = jnp.asarray(delay_valid_mask(steps, K))  # [S, K]

    def step(carry, s):
        cache, prev = carry  # prev [B, K]
        inp = jnp.concatenate([prev, prev], axis=0) if use_cfg else prev
        logits, cache = model.apply(variables, inp[:, None, :], ctx, ctx_mask, cache=cache, index=s)
        logits = logits[:, 0]  # [rows, K, V]
        if use_cfg:
            logits = apply_cfg(logits, cfg_scale)
        tok = sample_logits(jax.random.fold_in(key, s), logits, temperature, top_k, top_p)
        tok = jnp.where(valid[s][None, :], tok, V).astype(jnp.int32)
        return (cache, tok), tok

    cache = init_cache(config, rows_batch, S)
    bos = jnp.full((B, K), V, jnp.int32)
    _, rows = jax.lax.scan(step, (cache, bos), jnp.arange(S, dtype=jnp.int32))
    return delay_deinterleave(jnp.swapaxes(rows, 0, 1))


def generate(params, config: CodecLMConfig, text, text_mask, key, *, steps: int, temperature=1.0, top_k: int = 0,
             top_p=0.0, cfg_scale=1.0, null_text=None, null_mask=None):
    """Sample ``steps`` frames of codec tokens.

    Args:
      params: the CodecLM variables (``{'params': ...}``) or the bare param tree.
      config: the model's :class:`CodecLMConfig`.
      text: [B, L, text_dim] text states; text_mask: [B, L] bool (None = all valid).
      key: PRNG key.
      steps: frames T to generate (S = T + K - 1 delayed steps must fit ``config.max_len``).
      temperature: 0 = greedy (argmax); top_k: static int (0 = off); top_p: nucleus mass (0 = off).
      cfg_scale: guidance scale; null_text [B or 1, Ln, text_dim] / null_mask [B or 1, Ln]: the unconditional
        text (default: ``text``-shaped zeros with an all-False mask).
    Returns:
      tokens [B, T, K] int32 in 0..V-1.
    """
    text = jnp.asarray(text)
    if text.ndim != 3 or text.shape[-1] != config.text_dim:
        raise ValueError(f"generate: text must be [B, L, text_dim={config.text_dim}], got {text.shape}")
    B = text.shape[0]
    text_mask = jnp.ones(text.shape[:2], bool) if text_mask is None else jnp.asarray(text_mask, bool)
    if text_mask.shape != text.shape[:2]:
        raise ValueError(f"generate: text_mask must be [B, L] = {text.shape[:2]}, got {text_mask.shape}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"generate: steps must be a positive int, got {steps!r}")
    if steps + config.num_codebooks - 1 > config.max_len:
        raise ValueError(f"generate: steps {steps} + {config.num_codebooks - 1} delay steps exceed "
                         f"CodecLMConfig.max_len {config.max_len}")
    if null_text is None and null_mask is not None:
        raise ValueError("generate: null_mask was given without null_text")
    use_cfg = null_text is not None or not isinstance(cfg_scale, (int, float)) or float(cfg_scale) != 1.0
    if use_cfg:
        if null_text is None:
            null_text = jnp.zeros_like(text)
            null_mask = jnp.zeros(text.shape[:2], bool)
        null_text = jnp.asarray(null_text)
        if null_mask is None:
            null_mask = jnp.ones(null_text.shape[:2], bool)
        null_mask = jnp.asarray(null_mask, bool)
        if null_text.ndim != 3 or null_text.shape[-1] != config.text_dim or null_text.shape[0] not in (1, B):
            raise ValueError(f"generate: null_text must be [B or 1, Ln, {config.text_dim}], got {null_text.shape}")
        if null_mask.shape != null_text.shape[:2]:
            raise ValueError(f"generate: null_mask must be {null_text.shape[:2]}, got {null_mask.shape}")
        null_text = jnp.broadcast_to(null_text, (B,) + null_text.shape[1:])
        null_mask = jnp.broadcast_to(null_mask, (B,) + null_mask.shape[1:])
        # one batch for both branches needs one text length: pad the shorter with masked zeros
        L = max(text.shape[1], null_text.shape[1])
        text, text_mask = _pad_len(text, text_mask, L)
        null_text, null_mask = _pad_len(null_text, null_mask, L)
    return _generate_jit(params, text, text_mask, null_text, null_mask, key,
                         jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                         jnp.asarray(cfg_scale, jnp.float32),
                         config=config, steps=steps, top_k=int(top_k), use_cfg=use_cfg)


def _pad_len(x, mask, L):
    """x [B, l, D], mask [B, l] -> padded to length L with zeros / False."""
    pad = L - x.shape[1]
    if pad == 0:
        return x, mask
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0))), jnp.pad(mask, ((0, 0), (0, pad)))
