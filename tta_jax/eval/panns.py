"""PANNs CNN14 (Kong et al. 2020) as a linen module (converter and loader: :mod:`tta_jax.convert.panns`).

The evaluation protocol (FD on the 2048-d embedding, KL and IS on the 527 AudioSet logits) uses the
16 kHz model ``Cnn14_16k_mAP=0.438.pth`` (zenodo 3987831) with STFT 512 / hop 160 / 64 mels /
fmin 50 / fmax 8000, exactly as audioldm_eval's ``EvaluationHelper(16000)``. The 32 kHz checkpoint
(``Cnn14_mAP=0.431.pth``: STFT 1024 / hop 320 / fmax 14000) is supported by :data:`CNN14_32K`.

Layout: waveform [B, T] -> log-mel [B, F, 64] -> bn0 over mel bins -> [B, F, 64, 1] NHWC ->
6 conv blocks (2 x (conv3x3, BN, ReLU), avg-pool 2x2; last block no pool) -> mean over mel ->
max + mean over time -> fc1 + ReLU = ``embedding`` [B, 2048] -> fc_audioset = ``logits`` [B, 527].
Eval mode only (BatchNorm uses running statistics, no dropout / SpecAugment).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.eval.frontends import panns_logmel


@dataclasses.dataclass(frozen=True)
class Cnn14Config:
    sample_rate: int = 16000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    classes_num: int = 527
    widths: tuple = (64, 128, 256, 512, 1024, 2048)


CNN14_16K = Cnn14Config()
CNN14_32K = Cnn14Config(sample_rate=32000, window_size=1024, hop_size=320, fmax=14000.0)

_BN = dict(use_running_average=True, momentum=0.9, epsilon=1e-5)


class ConvBlock(nn.Module):
    """[B, H, W, C] -> [B, H/p, W/p, features]: 2 x (conv3x3 no bias, BN, ReLU), avg-pool p."""

    features: int
    pool: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in (1, 2):
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                        name=f"conv{i}")(x)
            x = nn.relu(nn.BatchNorm(**_BN, dtype=self.dtype, name=f"bn{i}")(x))
        if self.pool > 1:
            x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
        return x


class Cnn14(nn.Module):
    """PANNs CNN14. ``__call__(wav [B, T]) -> {"embedding": [B, 2048], "logits": [B, 527]}``."""

    config: Cnn14Config = CNN14_16K
    dtype: Any = jnp.float32

    def logmel(self, wav):
        c = self.config
        return panns_logmel(wav, c.sample_rate, c.window_size, c.hop_size, c.mel_bins, c.fmin, c.fmax)

    @nn.compact
    def __call__(self, wav):
        c = self.config
        x = self.logmel(wav)  # [B, F, M]
        x = nn.BatchNorm(**_BN, name="bn0")(x)  # normalises each mel bin
        x = x[..., None].astype(self.dtype)  # [B, F, M, 1]
        for i, w in enumerate(c.widths):
            x = ConvBlock(w, pool=2 if i < len(c.widths) - 1 else 1, dtype=self.dtype,
                          name=f"conv_block{i + 1}")(x)
        x = jnp.mean(x, axis=2)  # over mel -> [B, F', C]
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)
        x = nn.relu(nn.Dense(c.widths[-1], dtype=self.dtype, name="fc1")(x))
        logits = nn.Dense(c.classes_num, dtype=self.dtype, name="fc_audioset")(x)
        return {"embedding": x.astype(jnp.float32), "logits": logits.astype(jnp.float32)}


def init_variables(config: Cnn14Config = CNN14_16K, rng=None, n_samples: int = 16000):
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return Cnn14(config).init(rng, jnp.zeros((1, n_samples), jnp.float32))


def abstract_variables(config: Cnn14Config = CNN14_16K):
    return jax.eval_shape(lambda: init_variables(config))


def make_embed_fn(variables, config: Cnn14Config = CNN14_16K):
    """jit-compiled ``wav [B, T] (config.sample_rate) -> {"embedding", "logits"}``."""
    apply = _jitted_apply(config)  # variables as an argument: no constant folding of weights
    return lambda wav: apply(variables, wav)


@functools.lru_cache(maxsize=4)
def _jitted_apply(config: Cnn14Config):
    return jax.jit(Cnn14(config).apply)
