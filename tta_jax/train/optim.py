"""Optimizer factory: learning-rate schedules, weight-decay masks, clipping, gradient accumulation.

Config (``config.optimizer``, an ml_collections ConfigDict or dict)::

    name            "adamw" | "adafactor"
    lr              peak learning rate
    schedule        "constant" | "linear" | "cosine" | "inverse_sqrt"
                    (every schedule starts with ``warmup_steps`` of linear warm-up from 0;
                    "constant" with warm-up is EzAudio's "5000 linear warm-up steps then constant")
    warmup_steps    int >= 0
    decay_steps     total steps of the schedule (None -> config.train.total_steps)
    end_lr_factor   final lr = lr * end_lr_factor for "linear"/"cosine"
    b1, b2, eps     AdamW moments
    weight_decay    decoupled weight decay (AdamW) / Adafactor's weight_decay_rate
    clip_norm       global-norm clipping (None or 0 disables)
    grad_accum      >1: optax.MultiSteps over micro-batches (see also train.microbatches, which
                    accumulates inside one step with a scan; use one or the other)
    trainable       regexes over parameter paths; only matching leaves train, the others stay
                    bit-identical (empty: all train; :mod:`tta_jax.train.partial`)

Weight decay follows EzAudio: only linear/conv *kernels* (ndim >= 2) decay; biases, norm scales, snake
``alpha``/``beta``, mask embeddings and modulation/embedding tables do not (:func:`decay_mask`).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import optax

from tta_jax.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
OPTIMIZERS = ("adamw", "adafactor")

# Path fragments (lower-cased, matched against every key of the param path) that never decay.
# (Leaves not named ``kernel`` -- bias, scale, embedding, alpha, beta, tables -- never decay anyway.)
NO_DECAY_PATTERNS: tuple[str, ...] = (
    r"norm", r"snake", r"mask_emb", r"mask_token", r"table", r"null_",
)


def _path_keys(path) -> list[str]:
    out = []
    for k in path:
        if hasattr(k, "key"):
            out.append(str(k.key))
        elif hasattr(k, "name"):
            out.append(str(k.name))
        elif hasattr(k, "idx"):
            out.append(str(k.idx))
        else:
            out.append(str(k))
    return out


def path_str(path) -> str:
    """'/'-joined key names of a ``tree_flatten_with_path`` path."""
    return "/".join(_path_keys(path))


def decay_mask(params, no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS) -> Any:
    """Boolean tree: True where decoupled weight decay applies.

    A leaf decays iff its name is ``kernel`` (Dense/Conv weight), it has ndim >= 2, and no key on its
    path matches one of ``no_decay_patterns`` (case-insensitive regexes).
    """
    regs = [re.compile(p, re.IGNORECASE) for p in no_decay_patterns]

    def one(path, leaf):
        keys = _path_keys(path)
        if not keys or keys[-1] != "kernel" or getattr(leaf, "ndim", 0) < 2:
            return False
        return not any(r.search(k) for r in regs for k in keys[:-1])

    return jax.tree_util.tree_map_with_path(one, params)


# ------------------------------------------------------------------------------ trainable groups (partial.py)
def _paths(tree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _compile(patterns: Sequence[str], where: str) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(str(p)))
        except re.error as e:
            raise ConfigError(f"{where}: {p!r} is not a valid regular expression ({e})") from None
    return out


def trainable_mask(params, patterns: Sequence[str], where: str = "config.optimizer.trainable"):
    """Bool tree: True where a leaf's path fully matches one of ``patterns`` (all True when empty).
    A pattern that matches no parameter raises ConfigError naming it (a typo would silently freeze all)."""
    if not patterns:
        return jax.tree.map(lambda _: True, params)
    regs = _compile(patterns, where)
    paths = _paths(params)
    for p, r in zip(patterns, regs):
        if not any(r.fullmatch(x) for x in paths):
            raise ConfigError(f"{where}: {p!r} matches no parameter (paths look like {paths[:3]}; "
                              f"param_overview.txt in the workdir lists them all)")
    return jax.tree_util.tree_map_with_path(lambda path, _: any(r.fullmatch(path_str(path)) for r in regs),
                                            params)


def freeze(tx: optax.GradientTransformation, patterns: Sequence[str]) -> optax.GradientTransformation:
    """``tx`` on the leaves matching ``patterns``, a zero update (and no state) on the others."""
    if not patterns:
        return tx

    def labels(params):
        return jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, patterns))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)



def _get(cfg, key, default=None):
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def make_schedule(cfg, total_steps: int | None = None) -> optax.Schedule:
    """Learning-rate schedule from ``cfg`` (see module docstring)."""
    name = _get(cfg, "schedule", "constant")
    lr = float(_get(cfg, "lr"))
    warm = int(_get(cfg, "warmup_steps", 0) or 0)
    decay_steps = _get(cfg, "decay_steps", None) or total_steps
    end = lr * float(_get(cfg, "end_lr_factor", 0.0) or 0.0)
    if name not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule={name!r}: expected one of {SCHEDULES}")
    warmup = optax.linear_schedule(0.0, lr, warm) if warm > 0 else None
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "inverse_sqrt":
        w = max(warm, 1)
        main = lambda step: lr * jax.numpy.sqrt(w / jax.numpy.maximum(step + w, 1.0))  # noqa: E731
    else:
        if not decay_steps:
            raise ValueError(f"config.optimizer.schedule={name!r} needs config.optimizer.decay_steps "
                             "or config.train.total_steps")
        n = max(int(decay_steps) - warm, 1)
        if name == "linear":
            main = optax.linear_schedule(lr, end, n)
        else:
            main = optax.cosine_decay_schedule(lr, n, alpha=end / lr if lr else 0.0)
    if warmup is None:
        return main
    return optax.join_schedules([warmup, main], [warm])


def schedule_warnings(cfg, total_steps: int | None = None) -> list[str]:
    """Config combinations that leave the learning rate far from the configured peak (one message each,
    naming the keys and their values): a run shorter than its warm-up never reaches ``optimizer.lr``."""
    out = []
    warm = int(_get(cfg, "warmup_steps", 0) or 0)
    accum = int(_get(cfg, "grad_accum", 1) or 1)
    if total_steps and warm > 0:
        updates = int(total_steps) // accum  # optax.MultiSteps advances the schedule once per accum steps
        if updates < warm:
            lr = float(_get(cfg, "lr"))
            peak = lr * updates / warm
            via = (f" ({updates} optimizer updates with config.optimizer.grad_accum={accum})"
                   if accum > 1 else "")
            out.append(f"config.train.total_steps={int(total_steps)}{via} is shorter than "
                       f"config.optimizer.warmup_steps={warm}: the run ends during the linear warm-up, so the "
                       f"learning rate never gets above {peak:.3g} ({updates / warm:.0%} of config.optimizer.lr="
                       f"{lr:g}); lower warmup_steps or raise total_steps")
    return out


def make_optimizer(cfg, total_steps: int | None = None,
                   mask_fn: Callable[[Any], Any] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, lr schedule) from ``config.optimizer``.

    ``mask_fn(params) -> bool tree`` overrides :func:`decay_mask` (e.g. a system with extra tables).
    """
    name = _get(cfg, "name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={name!r}: expected one of {OPTIMIZERS}")
    sched = make_schedule(cfg, total_steps)
    for w in schedule_warnings(cfg, total_steps):
        log.warning(w)
    wd = float(_get(cfg, "weight_decay", 0.0) or 0.0)
    mask = mask_fn or decay_mask
    if name == "adamw":
        tx = optax.adamw(sched, b1=float(_get(cfg, "b1", 0.9)), b2=float(_get(cfg, "b2", 0.999)),
                         eps=float(_get(cfg, "eps", 1e-8)), weight_decay=wd, mask=mask)
    else:
        tx = optax.adafactor(sched, weight_decay_rate=wd or None, weight_decay_mask=mask,
                             multiply_by_parameter_scale=bool(_get(cfg, "multiply_by_parameter_scale",
                                                                   False)),
                             clipping_threshold=_get(cfg, "clipping_threshold", None))
    parts = []
    clip = _get(cfg, "clip_norm", None)
    if clip:
        parts.append(optax.clip_by_global_norm(float(clip)))
    parts.append(tx)
    tx = optax.chain(*parts) if len(parts) > 1 else tx
    trainable = tuple(_get(cfg, "trainable", ()) or ())
    if trainable:  # clipping and decay see the trainable leaves only; frozen ones get a zero update
        tx = freeze(tx, trainable)
    accum = int(_get(cfg, "grad_accum", 1) or 1)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx, sched
