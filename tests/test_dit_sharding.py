"""Sharded tiny EzAudio-DiT: jitted forward + backward on a data=2 x fsdp=4 mesh of 8 simulated CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from jax.sharding import NamedSharding, PartitionSpec as P

from tta_jax.denoisers.dit import DiT, ezaudio_tiny
from tta_jax.nn.sharding import DEFAULT_RULES, logical_to_mesh_sharding, make_mesh


def _device0_fraction(tree):
    dev = jax.devices()[0]
    total = held = 0
    for a in jax.tree.leaves(tree):
        total += a.size
        held += sum(s.data.size for s in a.addressable_shards if s.device == dev)
    return held / total


def test_fsdp_forward_backward_on_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    c = ezaudio_tiny(depth=2)  # in, mid, out (with a long skip): enough to exercise every layer type
    m = DiT(c)
    B, T, L = 8, 8, 4
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, c.in_channels)), jnp.float32)
    t = jnp.arange(B) * 100
    cond = {"text": jnp.asarray(rng.standard_normal((B, L, c.context_dim)), jnp.float32),
            "text_mask": jnp.ones((B, L), bool)}
    abstract = jax.eval_shape(m.init, jax.random.key(0), x, t, cond)
    shardings = logical_to_mesh_sharding(abstract, mesh)
    # the big kernels are split over fsdp, norms replicated
    assert shardings["params"]["mid_block"]["ff"]["net_0"]["proj"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["params"]["mid_block"]["norm1"]["scale"].spec == P(None)
    params = jax.tree.map(lambda a, s: jax.device_put(jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), s),
                          meta.unbox(abstract), shardings)
    frac = _device0_fraction(params)
    print(f"device 0 holds {frac:.4f} of the params")
    assert 0.24 < frac < 0.30, frac  # ~1/4 of the params per device (tiny replicated norms/biases on top)

    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    x, t = jax.device_put(x, batch_sharding), jax.device_put(t, batch_sharding)
    cond = jax.device_put(cond, batch_sharding)

    def loss_fn(p, x, t, cond):
        return jnp.mean(m.apply(p, x, t, cond) ** 2)

    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        step = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(NamedSharding(mesh, P()), shardings))
        loss, grads = step(params, x, t, cond)
    ref_loss = jax.jit(loss_fn)(jax.device_get(params), jax.device_get(x), jax.device_get(t), jax.device_get(cond))
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-4)
    assert 0.24 < _device0_fraction(grads) < 0.30
    g = grads["params"]["mid_block"]["attn"]["to_q"]["kernel"]
    assert g.sharding.spec == P("fsdp", "tensor") and float(jnp.abs(g).max()) > 0
