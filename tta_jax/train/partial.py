"""Training part of a model: trainable parameter groups, starting from a pretrained run, exporting a subset.

Adapters (SERST's prompt adapter, LoRA, new conditioning paths) train on top of a frozen pretrained model:

- ``config.optimizer.trainable``: regexes matched (``re.fullmatch``) against each parameter's ``/``-joined path
  (e.g. ``"conditioner/.*"``, ``"net/.*/ada[12]/.*"``); empty = everything trains. Frozen leaves get a zero
  update (:func:`freeze`: ``optax.multi_transform`` with ``set_to_zero``, no optimizer state), so they stay
  bit-identical; clipping and weight decay see only the trainable leaves.
- ``config.train.init_from``: a training workdir (its latest checkpoint; EMA params when it kept them) or a
  ``.safetensors`` params file whose leaves replace the fresh initialisation at ``config.train.init_prefix``
  (e.g. ``"net"`` when the new model wraps the old one). Leaves the source does not have keep their
  initialisation (the new adapter); a source leaf that the model lacks, or of another shape, fails naming it.
  Applied to a fresh run only: a resumed run continues from its own checkpoint.
- ``config.train.init_parts``: more pretrained parts, each ``"SOURCE[#SUBTREE]@PREFIX"``: the params of
  ``SOURCE`` (a workdir or ``.safetensors``), or only their ``SUBTREE`` (``/``-joined), placed at ``PREFIX``
  after ``init_from`` (e.g. ``"runs/serst_encoder#encoder@conditioner/encoder"``: a pretrained reference
  encoder inside a SERST adapter; :func:`parse_part`).
- :func:`export_subset`: the leaves matching patterns -> one ``.safetensors`` file (the adapter alone).

Paths are the ones :func:`tta_jax.train.optim.path_str` prints (``param_overview.txt`` lists them).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from tta_jax.errors import ConfigError
from tta_jax.train.optim import freeze, path_str, trainable_mask  # noqa: F401 (re-exported)


def read_params(source: str, where: str = "config.train.init_from") -> dict:
    """A workdir (latest checkpoint, EMA if kept) or a ``.safetensors`` file -> nested numpy params."""
    from tta_jax.convert.common import unflatten_params

    if not os.path.exists(source):
        raise ConfigError(f"{where}={source!r} does not exist (a training workdir or a .safetensors file)")
    if os.path.isfile(source):
        if not source.endswith(".safetensors"):
            raise ConfigError(f"{where}={source!r}: expected a workdir or a .safetensors params file")
        from safetensors.numpy import load_file

        return unflatten_params(load_file(source))
    from tta_jax.train.checkpoint import load_params

    try:
        params, _ = load_params(source)
    except FileNotFoundError as e:
        raise ConfigError(f"{where}={source!r}: {e}") from None
    return jax.tree.map(np.asarray, params)


def _at(tree: Mapping, prefix: str, where: str, what: str = "config.train.init_prefix", owner: str = "the model"):
    node = tree
    for k in [k for k in prefix.split("/") if k]:
        if not isinstance(node, Mapping) or k not in node:
            raise ConfigError(f"{what}={prefix!r}: {owner} has no {k!r} there "
                              f"({sorted(node) if isinstance(node, Mapping) else type(node).__name__})")
        node = node[k]
    return node


def parse_part(spec: str, where: str = "config.train.init_parts") -> tuple[str, str, str]:
    """``"SOURCE[#SUBTREE]@PREFIX"`` -> (source, subtree, prefix); the prefix may be empty (the top)."""
    source, at, prefix = str(spec).rpartition("@")
    if not at or not source:
        raise ConfigError(f"{where}: {spec!r} is not 'SOURCE[#SUBTREE]@PREFIX' (e.g. "
                          f"'runs/encoder#encoder@conditioner/encoder')")
    source, _, subtree = source.partition("#")
    return source, subtree, prefix


def read_part(spec: str, where: str = "config.train.init_parts") -> tuple[Mapping, str]:
    """One ``init_parts`` entry -> (the source's params at SUBTREE, PREFIX)."""
    source, subtree, prefix = parse_part(spec, where)
    params = read_params(source, where)
    return _at(params, subtree, where, f"{where} {spec!r}: SUBTREE", source), prefix


def merge_pretrained(params, source_params: Mapping, prefix: str = "", where: str = "config.train.init_from"):
    """``params`` with every leaf of ``source_params`` placed at ``prefix`` (shapes must agree; dtype of the
    model kept). -> (params, number of leaves replaced)."""
    from flax.core import meta

    from tta_jax.convert.common import flatten_params, unflatten_params

    boxed = params
    params = meta.unbox(params)
    target = _at(params, prefix, where, f"{where} prefix" if where != "config.train.init_from" else
                 "config.train.init_prefix")
    flat_t = flatten_params(target)
    flat_s = flatten_params(dict(source_params))
    for k, v in flat_s.items():
        if k not in flat_t:
            hint = "config.train.init_prefix" if where == "config.train.init_from" else "the entry's #SUBTREE / @PREFIX"
            raise ConfigError(f"{where}: parameter {k!r} is not in the model at {prefix or 'the top'!r} "
                              f"(set {hint}, or the source is another architecture)")
        if tuple(np.shape(v)) != tuple(flat_t[k].shape):
            raise ConfigError(f"{where}: parameter {k!r} has shape {tuple(np.shape(v))} there but "
                              f"{tuple(flat_t[k].shape)} in the model")
    merged = {k: (np.asarray(flat_s[k]).astype(flat_t[k].dtype) if k in flat_s else v) for k, v in flat_t.items()}
    sub = unflatten_params(merged)
    keys = [k for k in prefix.split("/") if k]
    out = _replace(params, keys, sub)
    # keep the logical-axis boxes of the fresh init (sharding) around the new values
    out = jax.tree.map(lambda b, v: b.replace_boxed(v) if isinstance(b, meta.AxisMetadata) else v, boxed, out,
                       is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
    return out, len(flat_s)


def _replace(tree, keys, value):
    if not keys:
        return value
    out = dict(tree)
    out[keys[0]] = _replace(tree[keys[0]], keys[1:], value)
    return out


def export_subset(params, patterns: Sequence[str], path: str) -> dict[str, tuple]:
    """Writes the leaves of ``params`` whose paths match ``patterns`` (all when empty) to ``path``
    (safetensors, ``/``-joined keys) -> {key: shape} written."""
    from flax.core import meta
    from safetensors.numpy import save_file

    from tta_jax.convert.common import flatten_params

    params = meta.unbox(params)
    mask = flatten_params(trainable_mask(params, patterns, "export patterns"))
    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(params).items() if mask[k]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(flat, path)
    return {k: v.shape for k, v in flat.items()}


__all__ = ["trainable_mask", "freeze", "read_params", "merge_pretrained", "export_subset"]
