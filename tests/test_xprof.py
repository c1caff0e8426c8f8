"""launch/xprof.py: HLO op_name metadata, model-part naming, self time of nested trace events, a real trace."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import xprof


def test_part_of_names_pass_and_module_path():
    m = ("DiT",)
    assert xprof.part_of("jit(step)/transpose(jvp(DiT))/DiT._forward/in_blocks_3/attn/to_q/dot_general", m) \
        == "bwd in_blocks_*/attn/to_q"
    assert xprof.part_of("jit(step)/jvp(DiT)/out_blocks_0/ff/net_0/proj/dot_general", m) == "fwd out_blocks_*/ff/net_*/proj"
    assert xprof.part_of("jit(step)/jvp(DiT)/mid_block/attn/vmap()/reduce_sum", m) == "fwd mid_block/attn"
    assert xprof.part_of("jit(step)/adamw/mul", m) == "update"
    assert xprof.layer_of("bwd out_blocks_*/attn") == "bwd attn"
    assert xprof.layer_of("fwd down_blocks_*/resnets_*/conv1") == "fwd resnets_*/conv1"
    assert xprof.layer_of("update") == "update"
    assert xprof.primitive_of("a/b/dot_general") == "dot_general"


def test_self_times_subtract_nested_events():
    ev = [{"ph": "X", "name": "while.1", "ts": 0, "dur": 100, "pid": 1, "tid": 1},
          {"ph": "X", "name": "dot.2", "ts": 10, "dur": 30, "pid": 1, "tid": 1},
          {"ph": "X", "name": "add.3", "ts": 50, "dur": 20, "pid": 1, "tid": 1},
          {"ph": "X", "name": "dot.2", "ts": 5, "dur": 7, "pid": 1, "tid": 2},   # another thread
          {"ph": "i", "name": "marker", "ts": 3, "pid": 1, "tid": 1}]
    t = xprof._self_times(ev)
    assert t["while.1"] == pytest.approx(50) and t["dot.2"] == pytest.approx(37) and t["add.3"] == 20


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, name="head")(nn.gelu(nn.Dense(256, name="body")(x)))


def test_profile_of_a_real_train_step_attributes_its_time():
    net = _Net()
    x = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    p = net.init(jax.random.key(0), x)["params"]

    def step(p, x):
        g = jax.grad(lambda p: jnp.mean(net.apply({"params": p}, x) ** 2))(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

    compiled = jax.jit(step).lower(p, x).compile()
    names = xprof.hlo_op_names(compiled.as_text())
    assert names and any("body" in v for v in names.values())
    prof = xprof.profile(compiled, lambda: compiled(p, x), ("_Net",), calls=2)
    assert prof["total_ms"] > 0 and prof["wall_ms"] > 0
    parts = {q["part"] for q in prof["parts"]}
    assert {"fwd body", "bwd body"} <= parts, parts
    assert sum(q["frac"] for q in prof["parts"]) == pytest.approx(1.0)
    assert prof["ops"] and all(o["ms"] >= 0 for o in prof["ops"])
