"""VGGish (Hershey et al. 2017) as a linen module (converter and loader: :mod:`tta_jax.convert.vggish`).

FAD (Kilgour et al. 2019) uses VGGish frame embeddings: 16 kHz audio -> 0.96 s log-mel patches
[96, 64] (:func:`tta_jax.eval.frontends.vggish_examples`) -> VGG (64, M, 128, M, 256, 256, M, 512, 512,
M; 3x3 convs, ReLU, 2x2 max-pools) -> fc 4096 -> fc 4096 -> fc 128. audioldm_eval (and the FAD in most
TTA papers) drops the final ReLU and the PCA/quantisation post-processing: that is the default here
(``final_relu=False``); set it to True for torchvggish's raw ``embeddings`` output.

Checkpoint: torchvggish's ``vggish-10086976.pth`` (keys ``features.{0,3,6,8,11,13}``,
``embeddings.{0,2,4}``), the port of the official TF release.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.eval.frontends import VGGISH_MELS, VGGISH_PATCH, vggish_examples

_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """``__call__(patches [N, 96, 64]) -> embeddings [N, 128]``."""

    final_relu: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, patches):
        if patches.shape[-2:] != (VGGISH_PATCH, VGGISH_MELS):
            raise ValueError(f"VGGish expects patches [N, 96, 64], got {patches.shape}")
        x = patches[..., None].astype(self.dtype)  # [N, 96, 64, 1] (time, mel, ch)
        k = 0
        for c in _CFG:
            if c == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"conv{k}")(x))
                k += 1
        x = x.reshape(x.shape[0], -1)  # [N, 6*4*512] in (time, mel, ch) order = TF / torchvggish order
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))
        x = nn.Dense(128, dtype=self.dtype, name="fc3")(x)
        if self.final_relu:
            x = nn.relu(x)
        return x.astype(jnp.float32)


def init_variables(rng=None):
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return VGGish().init(rng, jnp.zeros((1, VGGISH_PATCH, VGGISH_MELS), jnp.float32))


def make_embed_fn(variables, final_relu: bool = False):
    """jit-compiled ``wav [B, T] @ 16 kHz -> frame embeddings [B, n_patches, 128]``."""
    fn = _jitted_embed(bool(final_relu))
    return lambda wav: fn(variables, wav)


@functools.lru_cache(maxsize=2)
def _jitted_embed(final_relu: bool):
    model = VGGish(final_relu=final_relu)

    @jax.jit
    def fn(v, wav):
        ex = vggish_examples(wav)  # [B, n, 96, 64]
        b, n = ex.shape[:2]
        return model.apply(v, ex.reshape(b * n, VGGISH_PATCH, VGGISH_MELS)).reshape(b, n, -1)

    return fn
