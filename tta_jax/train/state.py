"""Train state (params, EMA, optimizer state, step, RNG, non-finite counters) and its shardings.

The RNG is a raw ``uint32[2]`` key (``jax.random.PRNGKey``) so Orbax saves it as a plain array; the key
of step ``s`` is ``fold_in(state.rng, s)``, so resuming at step ``s`` reproduces the same randomness.

Shardings: parameters take theirs from the boxed logical metadata of ``init_fn`` (via
``tta_jax.nn.sharding.logical_to_mesh_sharding``); every optimizer-state / EMA leaf whose tree path ends
with a parameter's path and has the same shape gets that parameter's sharding (Adam's mu/nu); all other
leaves (counts, Adafactor's factored rows/cols, scalars) are replicated. A task with its own state (several
networks and optimizers, :func:`task_state_shardings`) gets the same rules from the leaves it boxes with
logical names.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tta_jax.nn import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array                 # int32 scalar: train iterations done (skipped ones included)
    params: Any                     # float32 param tree (unboxed)
    ema_params: Any                 # EMA of params (same tree) or None when EMA is off
    opt_state: Any                  # optax state
    rng: jax.Array                  # uint32[2] base key
    nonfinite_total: jax.Array      # int32: updates skipped because loss/grads were not finite
    nonfinite_streak: jax.Array     # int32: consecutive skipped updates (0 after a good step)


def ema_decay_at(step, decay: float, warmup: bool = True):
    """EMA decay used after optimizer update number ``step`` (0-based).

    With ``warmup``: ``min(decay, (1 + step) / (10 + step))`` (so early EMA follows the params).
    """
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def ema_update(ema, params, decay):
    """``ema <- decay * ema + (1 - decay) * params`` (leafwise, in the EMA's dtype). A leaf whose params equal
    its EMA (a frozen one) keeps it bit-for-bit."""
    def one(e, p):
        p = p.astype(e.dtype)
        return jnp.where(p == e, e, (decay * e + (1.0 - decay) * p).astype(e.dtype))

    return jax.tree.map(one, ema, params)


def create_state(init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 rng: jax.Array, *, use_ema: bool = True) -> TrainState:
    """Fresh state: ``init_fn(init_key)`` (boxed or plain params), ``tx.init``, step 0.

    ``rng`` (raw uint32[2] key) is split into the init key and the state's base key.
    """
    init_key, base_key = jax.random.split(rng)
    params = nn.unbox(init_fn(init_key))
    params = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                          else x, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
        opt_state=tx.init(params),
        rng=base_key,
        nonfinite_total=jnp.zeros((), jnp.int32),
        nonfinite_streak=jnp.zeros((), jnp.int32),
    )


def _suffix_match(path: tuple, shape, table: dict) -> Any:
    for start in range(len(path)):
        hit = table.get(path[start:])
        if hit is not None and tuple(hit[0]) == tuple(shape):
            return hit[1]
    return None


def _key_tuple(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def state_shardings(init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                    mesh: Mesh, rules=None, *, use_ema: bool = True) -> tuple[TrainState, TrainState]:
    """(abstract state, sharding tree) for ``create_state`` on ``mesh`` with logical ``rules``."""
    rules = shd.DEFAULT_RULES if rules is None else rules
    key = jax.random.PRNGKey(0)
    boxed = jax.eval_shape(init_fn, key)
    param_sh = shd.logical_to_mesh_sharding(boxed, mesh, rules)
    abstract = jax.eval_shape(lambda k: create_state(init_fn, tx, k, use_ema=use_ema), key)

    table = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(abstract.params)[0],
                                jax.tree_util.tree_leaves(param_sh)):
        table[_key_tuple(path)] = (leaf.shape, sh)
    replicated = NamedSharding(mesh, P())

    def by_match(path, leaf):
        hit = _suffix_match(_key_tuple(path), leaf.shape, table)
        return hit if hit is not None else replicated

    shardings = jax.tree_util.tree_map_with_path(by_match, abstract)
    shardings = shardings.replace(params=param_sh)
    return abstract, shardings


def task_state_shardings(init_state: Callable[[jax.Array], Any], mesh: Mesh,
                         rules=None) -> tuple[Any, Any]:
    """(abstract state, sharding tree) for a task's own train state ``init_state(rng)``.

    Any leaf ``init_state`` returns boxed with logical names (``nn.LogicallyPartitioned``, e.g. the params a
    module initialises with ``tta_jax.nn.sharding.dense_init``) takes its sharding from ``rules``; every
    other leaf whose path ends with a boxed leaf's path below its state field, with the same shape, shares
    that sharding (the optimizer moments of those params); the rest is replicated. The abstract state is
    unboxed: jit ``lambda k: nn.unbox(init_state(k))`` into the shardings.
    """
    rules = shd.DEFAULT_RULES if rules is None else rules
    boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
    named = jax.tree.leaves(shd.logical_to_mesh_sharding(boxed, mesh, rules))
    abstract = jax.tree.map(lambda x: x.value if is_box(x) else x, boxed, is_leaf=is_box)
    table = {_key_tuple(path)[1:]: (leaf.value.shape, sh)
             for (path, leaf), sh in zip(flat, named) if is_box(leaf)}
    out = []
    for (path, leaf), sh in zip(flat, named):
        hit = None if is_box(leaf) else _suffix_match(_key_tuple(path), leaf.shape, table)
        out.append(sh if hit is None else hit)
    return abstract, jax.tree.unflatten(jax.tree.structure(abstract), out)


def with_shardings(abstract, shardings):
    """ShapeDtypeStruct tree carrying the target shardings (an Orbax restore target)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def init_state_sharded(init_fn, tx, rng, shardings: TrainState, *, use_ema: bool = True) -> TrainState:
    """``create_state`` jitted straight into ``shardings`` (no full copy on one device)."""
    fn = jax.jit(lambda k: create_state(init_fn, tx, k, use_ema=use_ema), out_shardings=shardings)
    return fn(rng)


def cast_floating(tree, dtype):
    """Cast floating leaves of ``tree`` to ``dtype`` (mixed-precision compute copy of the params)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
