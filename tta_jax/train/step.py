"""The generic train step: grads (+ optional micro-batch scan), non-finite guard, optimizer, EMA.

Protocol the trainer needs from a task::

    loss_fn(params, batch, rng) -> (scalar loss, metrics: dict[str, scalar])

For a diffusion system this is ``lambda p, b, r: diffusion_loss(apply_fn, p, b, r, schedule, cfg)``.

Non-finite guard: when the loss or any gradient is NaN/Inf, params, EMA and optimizer state are kept
unchanged (``jnp.where`` inside jit), ``nonfinite_total``/``nonfinite_streak`` are incremented, and the
step counter still advances (the batch was consumed; data position and step stay aligned).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tta_jax.train.state import TrainState, cast_floating, ema_decay_at, ema_update

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def all_finite(tree) -> jax.Array:
    """Scalar bool: every floating leaf of ``tree`` is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def select_tree(pred: jax.Array, on_true, on_false):
    """``on_true if pred else on_false`` for whole pytrees, as one ``lax.cond``.

    Not ``where(pred, new, old)`` per leaf: XLA fuses the computation of a scalar ``pred`` such as
    :func:`all_finite` (one reduction per gradient leaf, then an and-chain) into every one of those selects,
    ~290k scalar ops for the demo DiT, which alone made its train step take 80 s to compile.
    """
    return jax.lax.cond(pred, lambda a, b: a, lambda a, b: b, on_true, on_false)


def _split_microbatches(batch, n: int):
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"batch leaf of shape {x.shape}: leading dim not divisible by "
                             f"train.microbatches={n}")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])
    return jax.tree.map(one, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    lr_schedule: Callable | None = None, ema_decay: float | None = 0.999,
                    ema_warmup: bool = True, microbatches: int = 1,
                    compute_dtype=None) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``, pure (jit it with shardings + donation).

    Args:
      microbatches: > 1 splits the batch's leading dim and accumulates mean gradients with a
        ``lax.scan`` (activation memory of one micro-batch; per-micro-batch RNG via ``fold_in``).
      compute_dtype: if set (e.g. ``jnp.bfloat16``) the params are cast to it before ``loss_fn``;
        the master params, gradients and optimizer state stay float32.
      ema_decay: None disables EMA (state.ema_params must then be None).
    """
    def grads_of(params, batch, rng):
        def f(p):
            loss, metrics = loss_fn(cast_floating(p, compute_dtype), batch, rng)
            return loss.astype(jnp.float32), metrics
        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, metrics, grads

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if microbatches <= 1:
            loss, metrics, grads = grads_of(state.params, batch, rng)
        else:
            mbs = _split_microbatches(batch, microbatches)

            def body(carry, xs):
                i, mb = xs
                loss, metrics, grads = grads_of(state.params, mb, jax.random.fold_in(rng, i))
                acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return acc, None

            zero = jax.eval_shape(grads_of, state.params, jax.tree.map(lambda x: x[0], mbs), rng)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (loss, metrics, grads), _ = jax.lax.scan(body, zero, (jnp.arange(microbatches), mbs))
            loss, metrics, grads = jax.tree.map(lambda x: x / microbatches, (loss, metrics, grads))

        finite = all_finite((loss, grads))
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)

        params, opt_state = select_tree(finite, (new_params, new_opt), (state.params, state.opt_state))
        ema = state.ema_params
        decay = jnp.float32(0.0)
        if ema_decay is not None and ema is not None:
            n_good = state.step - state.nonfinite_total   # index of this (micro-)update
            decay = ema_decay_at(n_good, ema_decay, ema_warmup)
            # optax.MultiSteps only changes the params every k-th call: update the EMA then only.
            applied = tx.has_updated(new_opt) if hasattr(tx, "has_updated") else True
            new_ema = ema_update(ema, params, decay)
            ema = select_tree(finite & applied, new_ema, ema)
        bad = jnp.logical_not(finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state,
            nonfinite_total=state.nonfinite_total + bad,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
        out = dict(metrics)
        out.update(loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                   finite=finite.astype(jnp.float32), nonfinite_total=new_state.nonfinite_total,
                   nonfinite_streak=new_state.nonfinite_streak, ema_decay=decay)
        if lr_schedule is not None:
            out["lr"] = jnp.asarray(lr_schedule(state.step - state.nonfinite_total), jnp.float32)
        return new_state, out

    return step
