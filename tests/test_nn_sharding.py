"""Logical -> mesh rules and helpers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from tta_jax.nn.layers import FeedForward
from tta_jax.nn.sharding import DEFAULT_RULES, constrain, logical_to_mesh_sharding, make_mesh


def test_rules_and_divisibility_fallback():
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    mesh = make_mesh(2, 4, 1)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    ff = FeedForward(mult=4)
    abstract = jax.eval_shape(ff.init, jax.random.key(0), jnp.zeros((1, 3, 8)))
    s = logical_to_mesh_sharding(abstract, mesh)["params"]
    assert s["net_0"]["proj"]["kernel"].spec == P("fsdp", "tensor")
    assert s["net_2"]["kernel"].spec == P("tensor", "fsdp")
    # a width that fsdp=4 does not divide stays replicated instead of failing
    abstract = jax.eval_shape(ff.init, jax.random.key(0), jnp.zeros((1, 3, 6)))
    s = logical_to_mesh_sharding(abstract, mesh)["params"]
    assert s["net_0"]["proj"]["kernel"].spec == P(None, "tensor")
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(4, 4, 1)


def test_constrain_is_noop_without_mesh_and_applies_with_one():
    x = jnp.ones((8, 4, 2))
    assert constrain(x, ("batch", "length", "act_embed")) is x
    if jax.device_count() < 8:
        return
    mesh = make_mesh(2, 4, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        y = jax.jit(lambda a: constrain(a * 2, ("batch", "length", "act_embed")))(x)
    assert y.sharding.spec[0] == ("data", "fsdp")
