"""A tiny self-contained task for trainer tests and smoke runs (no files, no downloads).

* :class:`TinyDenoiser` -- a 2-layer MLP over [B, T, C] latents with a timestep embedding and a conv,
  parameters carrying logical names (so fsdp/tensor sharding is exercised).
* :class:`SyntheticIterator` -- deterministic batches (a function of seed and index), with
  ``get_state``/``set_state`` like a grain iterator; optional NaN ``poison`` indices and a per-batch
  ``delay_s`` (to make a subprocess slow enough to be killed mid-run). With several processes each
  one draws the same global batch and keeps its own ``rows`` of it, so a run's data (and params) do
  not depend on how many processes feed it.
* :func:`build` -- the ``config.builder`` entry (``"tta_jax.train.toy:build"``), epsilon-prediction loss.
* :func:`get_config` -- a complete tiny trainer config.

Run: ``python -m launch.train --config tta_jax/train/toy.py --workdir /tmp/toy``
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tta_jax.nn.sharding import dense_init


class TinyDenoiser(nn.Module):
    """x_t [B, T, C], t [B] -> [B, T, C]."""
    hidden: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        c = x.shape[-1]
        freqs = jnp.exp(-jnp.arange(8, dtype=jnp.float32))
        temb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
        temb = nn.Dense(self.hidden, dtype=self.dtype, name="t_proj",
                        kernel_init=dense_init(nn.initializers.lecun_normal(), ("embed_in", "embed")),
                        bias_init=dense_init(nn.initializers.zeros, ("embed",)))(temb)
        h = nn.Dense(self.hidden, dtype=self.dtype, name="in_proj",
                     kernel_init=dense_init(nn.initializers.lecun_normal(), ("embed_in", "embed")),
                     bias_init=dense_init(nn.initializers.zeros, ("embed",)))(x)
        h = h + temb[:, None, :].astype(h.dtype)
        h = nn.LayerNorm(dtype=self.dtype, name="norm",
                         scale_init=dense_init(nn.initializers.ones, ("norm",)),
                         bias_init=dense_init(nn.initializers.zeros, ("norm",)))(h)
        h = nn.Dense(2 * self.hidden, dtype=self.dtype, name="mlp_in",
                     kernel_init=dense_init(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=dense_init(nn.initializers.zeros, ("mlp",)))(h)
        h = nn.gelu(h)
        h = nn.Dense(self.hidden, dtype=self.dtype, name="mlp_out",
                     kernel_init=dense_init(nn.initializers.lecun_normal(), ("mlp", "embed")),
                     bias_init=dense_init(nn.initializers.zeros, ("embed",)))(h)
        h = nn.Conv(c, (3,), dtype=self.dtype, name="out_conv",
                    kernel_init=dense_init(nn.initializers.lecun_normal(),
                                           (None, "conv_in", "conv_out")),
                    bias_init=dense_init(nn.initializers.zeros, ("conv_out",)))(h)
        return h.astype(jnp.float32)


class SyntheticIterator:
    """Batches ``{"latent": [b, T, C] float32}`` from a fixed random 'dataset' (index-addressed).

    Each step draws a [batch_size, T, C] batch; ``rows`` (default: all) keeps this process's part of
    it (:func:`tta_jax.train.loop.process_batch_rows`), so b = batch_size / processes.
    """

    def __init__(self, batch_size: int, length: int = 16, channels: int = 4, seed: int = 0,
                 poison: tuple[int, ...] = (), poison_from: int | None = None, delay_s: float = 0.0,
                 rows: slice | None = None):
        self.batch_size, self.length, self.channels = batch_size, length, channels
        self.seed = seed
        self.rows = rows if rows is not None else slice(0, batch_size)
        self.poison = set(int(i) for i in poison)
        self.poison_from = poison_from
        self.delay_s = delay_s
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        rng = np.random.default_rng([self.seed, self.index])
        t = np.linspace(0, 1, self.length, dtype=np.float32)[None, :, None]
        f = rng.uniform(1, 4, size=(self.batch_size, 1, self.channels)).astype(np.float32)
        x = np.sin(2 * np.pi * f * t) + 0.1 * rng.standard_normal(
            (self.batch_size, self.length, self.channels)).astype(np.float32)
        if self.index in self.poison or (self.poison_from is not None
                                         and self.index >= self.poison_from):
            x[0, 0, 0] = np.nan
        self.index += 1
        return {"latent": x[self.rows].astype(np.float32)}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or "index" not in state:
            raise ValueError(f"SyntheticIterator.set_state: expected {{'index': int}}, got {state!r}")
        self.index = int(state["index"])


def eps_loss(apply_fn, params, batch, rng):
    """Epsilon-prediction MSE with a cosine alpha-bar, t ~ U(0, 1)."""
    x0 = batch["latent"]
    k1, k2 = jax.random.split(rng)
    t = jax.random.uniform(k1, (x0.shape[0],))
    noise = jax.random.normal(k2, x0.shape)
    ab = jnp.cos(0.5 * jnp.pi * t)[:, None, None] ** 2
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise
    pred = apply_fn(params, xt, t * 1000.0)
    loss = jnp.mean((pred - noise) ** 2)
    return loss, {"mse": loss}


def build(config, mesh):
    from tta_jax.train.loop import Task, process_batch_rows
    d = config.data
    model = TinyDenoiser(hidden=config.model.hidden)
    shape = (1, d.length, d.channels)

    def init_fn(rng):
        return model.init(rng, jnp.zeros(shape), jnp.zeros((1,)))

    def apply_fn(params, x, t):
        return model.apply(params, x, t)

    def loss_fn(params, batch, rng):
        return eps_loss(apply_fn, params, batch, rng)

    # Every process draws the global batch and keeps the rows its devices hold in the mesh.
    it = SyntheticIterator(config.train.batch_size, d.length, d.channels, seed=config.seed,
                           poison=tuple(d.poison),
                           poison_from=d.poison_from if d.poison_from >= 0 else None,
                           delay_s=d.delay_s,
                           rows=process_batch_rows(mesh, config.train.batch_size))
    return Task(init_fn=init_fn, loss_fn=loss_fn, train_iter=it)


def sample(config, params, prompts, out_dir, *, seed=0, steps=None, guidance=None, rescale=None,  # noqa: ARG001
           workdir=None):
    """``config.sample_pipeline`` entry for launch/sample.py: a few Euler steps of the toy eps-model from noise
    (prompts only name the files). Returns the written .npy paths."""
    import os
    model = TinyDenoiser(hidden=config.model.hidden)
    n = int(steps or 4)
    paths = []
    for i, prompt in enumerate(prompts):
        x = jax.random.normal(jax.random.PRNGKey(seed + i), (1, config.data.length, config.data.channels))
        for k in range(n, 0, -1):
            t = jnp.full((1,), k / n)
            eps = model.apply(params, x, t * 1000.0)
            ab = jnp.cos(0.5 * jnp.pi * t) ** 2
            x0 = (x - jnp.sqrt(1 - ab) * eps) / jnp.maximum(jnp.sqrt(ab), 1e-3)
            ab_prev = jnp.cos(0.5 * jnp.pi * (k - 1) / n) ** 2
            x = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1 - ab_prev) * eps
        path = os.path.join(out_dir, f"{i:02d}_{prompt.replace(' ', '_')[:40]}.npy")
        np.save(path, np.asarray(x[0]))
        paths.append(path)
    return paths


def get_config() -> ml_collections.ConfigDict:
    from tta_jax.train.config import trainer_config
    c = trainer_config()
    c.builder = "tta_jax.train.toy:build"
    c.sample_pipeline = "tta_jax.train.toy:sample"
    c.model = ml_collections.ConfigDict(dict(hidden=32))
    c.data = ml_collections.ConfigDict(dict(length=16, channels=4, poison=(), poison_from=-1,
                                            delay_s=0.0))
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    c.train.total_steps = 20
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.ckpt_every = 10
    c.train.ema_decay = 0.99
    return c
