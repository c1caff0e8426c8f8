"""Timestep / position embeddings shared by the denoisers.

`timestep_embedding` reproduces diffusers' ``get_timestep_embedding`` bit for bit (same formula, float32),
which also covers the DiT/EzAudio variant (``flip_sin_to_cos=True, downscale_freq_shift=0`` gives the
``[cos, sin]`` layout with frequencies ``exp(-log(max_period) * i / half)``).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tta_jax.nn.sharding import dense_init


def timestep_embedding(t, dim: int, *, flip_sin_to_cos: bool, downscale_freq_shift: float = 1.0,
                       max_period: float = 10000, scale: float = 1.0):
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
      t: [B] timesteps (int or float).
      dim: output width.
      flip_sin_to_cos: False -> ``[sin, cos]`` halves, True -> ``[cos, sin]``.
      downscale_freq_shift: frequencies are ``exp(-log(max_period) * i / (half - shift))``.
      max_period: smallest frequency is ``1 / max_period``.
      scale: multiplies the arguments.
    Returns:
      [B, dim] float32 (a zero column is appended when ``dim`` is odd).
    """
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects timesteps of shape [B], got {t.shape}")
    half = dim // 2
    # The frequency table is static: float32 exponent as torch computes it, exp in float64 then rounded (an
    # ulp of error in a frequency is amplified by timesteps up to ~1e3).
    exponent = (-math.log(max_period) * np.arange(half, dtype=np.float32)) / np.float32(half - downscale_freq_shift)
    freqs = jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))
    args = scale * (t.astype(jnp.float32)[:, None] * freqs[None, :])
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepMLP(nn.Module):
    """``Linear(in -> D), SiLU, Linear(D -> D)`` (diffusers ``TimestepEmbedding``; EzAudio ``time_embed.mlp``).

    [B, Din] -> [B, features]. Params ``linear_1``, ``linear_2``; kernels xavier-uniform by default.
    """

    features: int
    out_features: int | None = None
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features, dtype=self.dtype, name="linear_1",
                     kernel_init=dense_init(self.kernel_init, ("embed_in", "embed")),
                     bias_init=dense_init(nn.initializers.zeros, ("embed",)))(x)
        x = nn.silu(x)
        out = self.out_features or self.features
        return nn.Dense(out, dtype=self.dtype, name="linear_2",
                        kernel_init=dense_init(self.kernel_init, ("embed_in", "embed")),
                        bias_init=dense_init(nn.initializers.zeros, ("embed",)))(x)
