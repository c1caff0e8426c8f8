"""TextConditioner: several frozen text encoders -> one cross-attention context.

Encoder-agnostic: an encoder is any callable ``texts -> (states [B, L, D], mask [B, L])`` (e.g.
:class:`tta_jax.text.bert.BertTextEncoder`, a T5 or CLAP wrapper). Per encoder (an :class:`EncoderSpec`):

1. its output is zero-padded / cropped to ``max_length`` tokens (fixed shapes for jit);
2. a trainable adapter ``Linear(D -> dim) + LayerNorm`` maps it to the common width (Auffusion);
3. during training it is dropped independently per sample with probability ``drop_prob`` (CFG);
   a dropped encoder contributes its *null embedding*: ``"zeros"`` (zero states, keys kept attendable, as
   Auffusion's all-zero negative embedding) or ``"empty"`` (the encoding of the empty string, as
   EzAudio/Tango);
4. the encoders' sequences are concatenated along the sequence axis:
   context ``[B, sum(max_length), dim]``, mask ``[B, sum(max_length)]`` (bool, True = attend).

Encodings are computed on the host (frozen encoders) and optionally cached per text (LRU), so repeated
captions (training epochs, CFG's empty prompt) are encoded once. The adapter step
(:meth:`TextConditioner.apply`) is a pure function of params, encodings and an RNG key and can be jitted.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Encoder = Callable[[Sequence[str]], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a :class:`TextConditioner`.

    Attributes:
      name: key of this encoder (param sub-tree ``adapter_<name>``).
      encoder: ``texts -> (states [B, L, dim_in], mask [B, L])``.
      dim_in: width D of the encoder's states.
      max_length: tokens kept (pad with zeros / crop).
      drop_prob: training dropout probability for CFG.
      null: ``"zeros"`` or ``"empty"`` (see module docstring).
    """

    name: str
    encoder: Encoder = dataclasses.field(compare=False, hash=False)
    dim_in: int
    max_length: int
    drop_prob: float = 0.1
    null: str = "empty"

    def __post_init__(self):
        if self.null not in ("zeros", "empty"):
            raise ValueError(f"EncoderSpec {self.name!r}: null must be 'zeros' or 'empty', got {self.null!r}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError(f"EncoderSpec {self.name!r}: drop_prob must be in [0, 1], got {self.drop_prob}")


class TextAdapters(nn.Module):
    """Per-encoder Linear + LayerNorm adapters: {name: [B, L, D_name]} -> {name: [B, L, dim]}."""

    dims_in: Mapping[str, int]
    dim: int
    use_adapter: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        out = {}
        for name in self.dims_in:
            x = jnp.asarray(states[name], self.dtype)
            if self.use_adapter:
                x = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, name=f"adapter_{name}")(x)
                x = nn.LayerNorm(1e-5, dtype=self.dtype, param_dtype=jnp.float32, name=f"adapter_{name}_norm")(x)
            out[name] = x
        return out


def _fit_length(states: np.ndarray, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads or crops [B, L, D] / [B, L] to ``length`` tokens."""
    b, l = mask.shape
    if l >= length:
        return states[:, :length], mask[:, :length]
    pad = length - l
    return (np.concatenate([states, np.zeros((b, pad, states.shape[-1]), states.dtype)], axis=1),
            np.concatenate([mask, np.zeros((b, pad), bool)], axis=1))


class TextConditioner:
    """Combines several text encoders; see the module docstring.

    >>> cond = TextConditioner([EncoderSpec("minilm", enc, 384, 32)], dim=256)
    >>> params = cond.init(jax.random.PRNGKey(0))
    >>> enc = cond.encode(["a dog barks", "rain"])             # host side, cached
    >>> ctx, mask = cond.apply(params, enc, rng=key, train=True)  # [2, 32, 256], [2, 32]
    """

    def __init__(self, specs: Sequence[EncoderSpec], dim: int, *, use_adapter: bool = True,
                 cache_size: int = 4096, dtype=jnp.float32):
        if not specs:
            raise ValueError("TextConditioner needs at least one encoder")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"TextConditioner: duplicate encoder names {names}")
        if not use_adapter:
            bad = [s.name for s in specs if s.dim_in != dim]
            if bad:
                raise ValueError(f"TextConditioner: without adapters every encoder must have width {dim}; {bad} differ")
        self.specs = list(specs)
        self.dim = dim
        self.module = TextAdapters({s.name: s.dim_in for s in specs}, dim, use_adapter, dtype)
        self.cache_size = cache_size
        # per encoder: LRU {text: (states [L, D], mask [L])}, at most cache_size entries each
        self._cache: dict[str, collections.OrderedDict] = {s.name: collections.OrderedDict() for s in specs}
        self._null: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # facts ---------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Total context length (sum of max_length)."""
        return sum(s.max_length for s in self.specs)

    def init(self, rng: jax.Array) -> dict:
        dummy = {s.name: jnp.zeros((1, 1, s.dim_in)) for s in self.specs}
        return dict(self.module.init(rng, dummy).get("params", {}))

    # host-side encoding --------------------------------------------------------------------------
    def _encode_one(self, spec: EncoderSpec, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        states, mask = spec.encoder(list(texts))
        states = np.asarray(states, np.float32)
        mask = np.asarray(mask).astype(bool)
        if states.ndim != 3 or states.shape[-1] != spec.dim_in or mask.shape != states.shape[:2]:
            raise ValueError(f"encoder {spec.name!r} returned states {states.shape} and mask {mask.shape}; "
                             f"expected [B, L, {spec.dim_in}] and [B, L]")
        if states.shape[0] != len(texts):
            raise ValueError(f"encoder {spec.name!r} returned batch {states.shape[0]} for {len(texts)} texts")
        return _fit_length(states, mask, spec.max_length)

    def encode(self, texts: Sequence[str], *, use_cache: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """texts -> {name: (states [B, max_length, D] float32, mask [B, max_length] bool)}."""
        if isinstance(texts, str):
            texts = [texts]
        out = {}
        for spec in self.specs:
            if not use_cache or self.cache_size <= 0:
                out[spec.name] = self._encode_one(spec, texts)
                continue
            cache = self._cache[spec.name]
            todo = sorted({t for t in texts if t not in cache})
            fresh = {}
            if todo:
                s, m = self._encode_one(spec, todo)
                fresh = {t: (s[i], m[i]) for i, t in enumerate(todo)}
            items = []
            for t in texts:
                if t in fresh:
                    cache[t] = fresh[t]
                cache.move_to_end(t)
                items.append(cache[t])
            out[spec.name] = (np.stack([a for a, _ in items]), np.stack([b for _, b in items]))
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return out

    def null_encodings(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{name: (states [1, L, D], mask [1, L])} of the empty string (for ``null="empty"`` encoders)."""
        for spec in self.specs:
            if spec.null == "empty" and spec.name not in self._null:
                self._null[spec.name] = self._encode_one(spec, [""])
        return self._null

    # device-side combination ----------------------------------------------------------------------
    def apply(self, params, encodings: Mapping[str, tuple[Any, Any]], *, rng: jax.Array | None = None,
              train: bool = False, drop: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Adapters, dropout/null substitution and concatenation.

        Args:
          params: from :meth:`init`.
          encodings: :meth:`encode` output.
          rng: key for training dropout (needed when ``train`` and any ``drop_prob > 0``).
          train: apply per-encoder CFG dropout.
          drop: explicit {name: bool [B] or scalar} drop decisions (override the random ones; use
            ``drop={n: True ...}`` or :meth:`unconditional` for the CFG branch).
        Returns:
          (context [B, sum L, dim], mask [B, sum L] bool)
        """
        states = {n: jnp.asarray(encodings[n][0]) for n in self.module.dims_in}
        masks = {n: jnp.asarray(encodings[n][1]).astype(bool) for n in self.module.dims_in}
        b = next(iter(states.values())).shape[0]
        nulls = self.null_encodings()
        # the null inputs go through the adapter too (empty-string null); zero null is applied after it
        adapted = self.module.apply({"params": params}, states)
        null_adapted = self.module.apply({"params": params}, {
            n: (jnp.asarray(nulls[n][0]) if n in nulls else jnp.zeros((1, 1, s.dim_in))) for n, s in
            ((s.name, s) for s in self.specs)})
        ctx, msk = [], []
        keys = jax.random.split(rng, len(self.specs)) if rng is not None else [None] * len(self.specs)
        for spec, key in zip(self.specs, keys):
            n = spec.name
            d = None
            if drop is not None and n in drop:
                d = jnp.broadcast_to(jnp.asarray(drop[n], bool), (b,))
            elif train and spec.drop_prob > 0:
                if key is None:
                    raise ValueError("TextConditioner.apply(train=True) needs an rng for caption dropout")
                d = jax.random.bernoulli(key, spec.drop_prob, (b,))
            x, m = adapted[n], masks[n]
            if d is not None:
                if spec.null == "zeros":
                    nx, nm = jnp.zeros_like(x), jnp.ones_like(m)
                else:
                    nx = jnp.broadcast_to(null_adapted[n], x.shape)
                    nm = jnp.broadcast_to(jnp.asarray(nulls[n][1]), m.shape)
                x = jnp.where(d[:, None, None], nx, x)
                m = jnp.where(d[:, None], nm, m)
            ctx.append(x)
            msk.append(m)
        return jnp.concatenate(ctx, axis=1), jnp.concatenate(msk, axis=1)

    def unconditional(self, params, batch: int) -> tuple[jax.Array, jax.Array]:
        """All encoders replaced by their null embedding: (context [B, sum L, dim], mask [B, sum L])."""
        enc = {s.name: (np.zeros((batch, s.max_length, s.dim_in), np.float32),
                        np.zeros((batch, s.max_length), bool)) for s in self.specs}
        return self.apply(params, enc, drop={s.name: True for s in self.specs})

    def __call__(self, params, texts: Sequence[str], *, rng=None, train: bool = False):
        """Convenience: :meth:`encode` then :meth:`apply`."""
        return self.apply(params, self.encode(texts), rng=rng, train=train)
