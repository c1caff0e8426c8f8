"""The generic train step: grads (+ optional micro-batch scan), non-finite guard, optimizer, EMA.

Protocol the trainer needs from a task::

    loss_fn(params, batch, rng) -> (scalar loss, metrics: dict[str, scalar])

For a diffusion system this is ``lambda p, b, r: diffusion_loss(apply_fn, p, b, r, schedule, cfg)``.

Non-finite guard: when the loss or any gradient is NaN/Inf, params, EMA and optimizer state are kept
unchanged (one ``lax.cond`` inside jit), ``nonfinite_total``/``nonfinite_streak`` are incremented, and the
step counter still advances (the batch was consumed; data position and step stay aligned).

A task with its own update (a GAN with two networks and two optimizers, several losses) gives a
:data:`TrainStep` instead of a loss; :func:`make_guarded_step` wraps it with the same RNG, step counter and
non-finite guard, so the loop treats both kinds alike.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tta_jax.train.state import TrainState, cast_floating, ema_decay_at, ema_update

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]
# A task's own update: (state, batch, rng) -> (updated state, metrics: dict[str, scalar]); see make_guarded_step.
TrainStep = Callable[[Any, Any, jax.Array], tuple[Any, dict]]


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


def advance_counters(state, finite: jax.Array) -> dict:
    """The step counter and non-finite counters after one step (``state.replace(**...)``):
    ``step + 1``; ``nonfinite_total + 1`` and ``nonfinite_streak + 1`` when not ``finite``, else the
    streak resets to 0."""
    bad = jnp.logical_not(finite).astype(jnp.int32)
    return dict(step=state.step + 1, nonfinite_total=state.nonfinite_total + bad,
                nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))


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
        new_state = state.replace(params=params, ema_params=ema, opt_state=opt_state,
                                  **advance_counters(state, finite))
        out = dict(metrics)
        out.update(loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                   finite=finite.astype(jnp.float32), nonfinite_total=new_state.nonfinite_total,
                   nonfinite_streak=new_state.nonfinite_streak, ema_decay=decay)
        if lr_schedule is not None:
            out["lr"] = jnp.asarray(lr_schedule(state.step - state.nonfinite_total), jnp.float32)
        return new_state, out

    return step


def make_guarded_step(step_fn: TrainStep) -> Callable[[Any, Any], tuple[Any, dict]]:
    """A task's own update ``step_fn(state, batch, rng) -> (state, metrics)`` as the loop's
    ``step(state, batch) -> (state, metrics)``, pure (jit it with shardings + donation).

    ``state`` is the task's train state: a ``flax.struct`` dataclass with at least ``step``, ``params``,
    ``rng``, ``nonfinite_total`` and ``nonfinite_streak`` (like :class:`tta_jax.train.state.TrainState`) and
    any further fields (a second network, one optimizer state per network). ``step_fn`` gets the key
    ``fold_in(state.rng, state.step)`` (so a resumed run draws the same randomness) and returns the state
    with its networks and optimizer states updated; it leaves the counters alone. The guard keeps the update
    only when every scalar metric and every floating leaf of the returned state is finite (a NaN/inf loss or
    gradient shows in its norm, or in the params it produced); otherwise the whole state stays as it was.
    Either way ``step`` advances and ``nonfinite_total``/``nonfinite_streak`` count as in
    :func:`make_train_step`; the metrics gain ``finite``, ``nonfinite_total`` and ``nonfinite_streak``.
    """
    def step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        new, metrics = step_fn(state, batch, rng)
        scalars = [v for v in metrics.values() if jnp.ndim(v) == 0]
        finite = all_finite((scalars, new))
        new = select_tree(finite, new, state)
        new = new.replace(rng=state.rng, **advance_counters(state, finite))
        out = dict(metrics)
        out.update(finite=finite.astype(jnp.float32), nonfinite_total=new.nonfinite_total,
                   nonfinite_streak=new.nonfinite_streak)
        return new, out

    return step
