"""Logical axis names, default logical -> mesh rules, and small sharding helpers.

Parameters carry logical names through ``nn.with_logical_partitioning`` (see :func:`dense_init`);
activations are constrained at block boundaries with :func:`constrain`. A rules table maps logical
names to the mesh axes ``("data", "fsdp", "tensor")``; changing the mesh (1 CPU, 8 GPUs, a pod) needs
no model change.

Parameter names
  ``embed``     model width (sharded over ``fsdp``: ZeRO-3 style parameter sharding)
  ``mlp``       hidden width of MLPs / the wide side of D->kD projections (``tensor``)
  ``heads``     the joint ``heads * head_dim`` side of q/k/v/out projections (``tensor``)
  ``kv``        per-head feature dim (replicated)
  ``vocab``     vocabulary / class tables (``tensor``)
  ``conv_in``   input channels of conv kernels (replicated)
  ``conv_out``  output channels of conv kernels (``fsdp``)
  ``norm``      norm scales/biases, small tables (replicated)
  any other name (``embed_in``, ``freq``, ``out_ch`` ...) is replicated.
Activation names
  ``batch`` (``data`` + ``fsdp``), ``length`` (replicated), ``act_embed`` (replicated),
  ``act_heads``/``act_mlp`` (``tensor``).

A mesh axis is used at most once per array (flax's rule); :func:`logical_to_mesh_sharding` also drops a
mesh axis whose size does not divide the dimension, so odd shapes (e.g. 4 latent channels) stay legal.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
)


def dense_init(init, names: Sequence[str | None]):
    """``init`` wrapped with logical axis names (``nn.with_logical_partitioning``)."""
    return nn.with_logical_partitioning(init, tuple(names))


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, *, devices=None) -> jax.sharding.Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types (needed by linen's logical constraints)."""
    n = data * fsdp * tensor
    avail = len(devices) if devices is not None else jax.device_count()
    if n > avail:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {n} devices, "
                         f"only {avail} available")
    kwargs = {"axis_types": (jax.sharding.AxisType.Auto,) * 3}
    if devices is not None:
        kwargs["devices"] = devices
    return jax.make_mesh((data, fsdp, tensor), MESH_AXES, **kwargs)


def _spec_for(names, shape, mesh, rules) -> P:
    axes = nn.logical_to_mesh_axes(tuple(names), rules)
    out = []
    for dim, ax in zip(shape, axes):
        if ax is None:
            out.append(None)
            continue
        group = (ax,) if isinstance(ax, str) else tuple(ax)
        size = int(np.prod([mesh.shape[a] for a in group]))
        out.append(ax if size > 0 and dim % size == 0 else None)
    return P(*out)


def logical_to_mesh_sharding(abstract_params, mesh, rules=DEFAULT_RULES):
    """Tree of ``NamedSharding`` for a (possibly abstract) param tree with ``LogicallyPartitioned`` leaves.

    Unboxed leaves (no names) are replicated. The returned tree has the structure of the *unboxed* tree,
    ready for ``jax.jit(..., out_shardings=...)`` or ``jax.device_put``.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, _spec_for(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map(one, abstract_params,
                                  is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def constrain(x, names: Sequence[str | None]):
    """``nn.with_logical_constraint`` (a no-op outside a mesh / rules context)."""
    return nn.with_logical_constraint(x, tuple(names))
