"""Unit tests of the trainer pieces: schedules, decay mask, EMA, train step guard, micro-batching,
config validation, checkpoint iterator-state encoding, metric helpers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tta_jax.train import observe, optim
from tta_jax.train.checkpoint import (decode_iter_state, encode_iter_state, gather_iter_states,
                                     select_iter_state)
from tta_jax.train.config import ConfigError, trainer_config, validate_trainer_config
from tta_jax.train.state import create_state, ema_decay_at
from tta_jax.train.step import make_train_step


def _cfg(**kw):
    c = dict(name="adamw", lr=1.0, schedule="constant", warmup_steps=0, end_lr_factor=0.0)
    c.update(kw)
    return c


def test_schedules():
    s = optim.make_schedule(_cfg(warmup_steps=10))
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(100)) == 1.0
    s = optim.make_schedule(_cfg(schedule="linear", warmup_steps=10, end_lr_factor=0.1), 110)
    assert float(s(10)) == pytest.approx(1.0) and float(s(110)) == pytest.approx(0.1)
    assert float(s(60)) == pytest.approx(0.55)
    s = optim.make_schedule(_cfg(schedule="cosine", warmup_steps=0), 100)
    assert float(s(50)) == pytest.approx(0.5, abs=1e-6) and float(s(100)) == pytest.approx(0.0)
    s = optim.make_schedule(_cfg(schedule="inverse_sqrt", warmup_steps=4))
    # lr * sqrt(warmup / step) after the warm-up
    assert float(s(4)) == pytest.approx(1.0) and float(s(16)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="config.optimizer.schedule"):
        optim.make_schedule(_cfg(schedule="exp"))
    with pytest.raises(ValueError, match="decay_steps"):
        optim.make_schedule(_cfg(schedule="cosine"))


def test_run_shorter_than_warmup_warns_naming_both_keys(caplog):
    """A run that ends inside the warm-up never reaches the configured peak lr: make_optimizer logs it."""
    with caplog.at_level("WARNING", logger="tta_jax.train.optim"):
        optim.make_optimizer(_cfg(lr=2e-3, warmup_steps=5000), total_steps=300)
    msg = caplog.text
    assert "config.train.total_steps=300" in msg and "config.optimizer.warmup_steps=5000" in msg
    assert "0.00012" in msg and "config.optimizer.lr=0.002" in msg  # 2e-3 * 300 / 5000
    caplog.clear()
    with caplog.at_level("WARNING", logger="tta_jax.train.optim"):
        optim.make_optimizer(_cfg(warmup_steps=100), total_steps=3400)
        optim.make_optimizer(_cfg(warmup_steps=100))  # total unknown: nothing to compare
    assert caplog.text == ""
    # gradient accumulation: the schedule advances once per grad_accum steps
    w = optim.schedule_warnings(_cfg(warmup_steps=100, grad_accum=4), 300)
    assert len(w) == 1 and "75 optimizer updates" in w[0] and "grad_accum=4" in w[0]
    assert optim.schedule_warnings(_cfg(warmup_steps=100, grad_accum=2), 300) == []


def test_decay_mask_ezaudio_rules():
    params = {"params": {
        "blocks_0": {"attn": {"q": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}},
                     "norm1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
                     "conv": {"kernel": jnp.ones((3, 4, 4))},
                     "snake": {"alpha": jnp.ones(4), "beta": jnp.ones(4)}},
        "mask_embed": {"kernel": jnp.ones((4, 4))},
        "mod_table": {"kernel": jnp.ones((6, 4))},
        "scale_shift_table": jnp.ones((6, 4)),
        "text_norm": {"kernel": jnp.ones((4, 4))},
        "embed": {"embedding": jnp.ones((10, 4))}}}
    m = optim.decay_mask(params)["params"]
    assert m["blocks_0"]["attn"]["q"] == {"kernel": True, "bias": False}
    assert m["blocks_0"]["conv"]["kernel"] is True
    assert not any(jax.tree.leaves(m["blocks_0"]["norm1"]))
    assert not any(jax.tree.leaves(m["blocks_0"]["snake"]))
    assert m["mask_embed"]["kernel"] is False and m["mod_table"]["kernel"] is False
    assert m["scale_shift_table"] is False and m["text_norm"]["kernel"] is False
    assert m["embed"]["embedding"] is False


def test_adamw_decays_only_masked_params():
    params = {"d": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    tx, _ = optim.make_optimizer(_cfg(lr=0.1, weight_decay=0.5, clip_norm=1.0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(upd["d"]["kernel"], -0.05)   # -lr * wd * p
    np.testing.assert_allclose(upd["d"]["bias"], 0.0)
    tx, _ = optim.make_optimizer(_cfg(name="adafactor", lr=0.1))
    tx.update(zeros, tx.init(params), params)               # builds
    with pytest.raises(ValueError, match="config.optimizer.name"):
        optim.make_optimizer(_cfg(name="sgd"))


def test_ema_warmup():
    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(10, 0.999)) == pytest.approx(11 / 20)
    assert float(ema_decay_at(10 ** 6, 0.999)) == pytest.approx(0.999)
    assert float(ema_decay_at(0, 0.9, warmup=False)) == pytest.approx(0.9)


def _lin_task():
    def init_fn(rng):
        return {"w": jax.random.normal(rng, (3, 2)), "b": jnp.zeros(2)}

    def loss_fn(p, batch, rng):
        pred = batch["x"] @ p["w"] + p["b"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"mse": loss}
    return init_fn, loss_fn


def _batch(seed, n=8, poison=False):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 3)).astype(np.float32)
    if poison:
        x[0, 0] = np.inf
    return {"x": jnp.asarray(x), "y": jnp.asarray(r.standard_normal((n, 2)).astype(np.float32))}


def test_step_skips_nonfinite_and_keeps_state():
    init_fn, loss_fn = _lin_task()
    tx = optax.adamw(1e-2)
    state = create_state(init_fn, tx, jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(loss_fn, tx, ema_decay=0.9))
    s1, m1 = step(state, _batch(0))
    assert float(m1["finite"]) == 1.0 and int(s1.step) == 1
    assert not np.allclose(s1.params["w"], state.params["w"])
    s2, m2 = step(s1, _batch(1, poison=True))
    assert float(m2["finite"]) == 0.0
    assert int(s2.step) == 2 and int(s2.nonfinite_total) == 1 and int(s2.nonfinite_streak) == 1
    for a, b in zip(jax.tree.leaves((s1.params, s1.ema_params, s1.opt_state)),
                    jax.tree.leaves((s2.params, s2.ema_params, s2.opt_state))):
        np.testing.assert_array_equal(a, b)
    s3, m3 = step(s2, _batch(2))
    assert float(m3["finite"]) == 1.0 and int(s3.nonfinite_streak) == 0
    assert int(s3.nonfinite_total) == 1
    assert np.isfinite(np.asarray(s3.params["w"])).all()


def test_step_finiteness_check_is_not_copied_into_every_update():
    """The guard's finiteness reduction must be computed once, not fused into each param/optimizer/EMA leaf's
    update: with per-leaf ``where(finite, new, old)`` XLA:CPU copied the and-chain into every select (ops ~
    leaves^2; 80 s to compile the demo DiT's step). 60 leaves here: the quadratic form had ~10k ands."""
    n = 60

    def init_fn(rng):
        return {f"w{i:02d}": jnp.full((3,), 0.1 * i) for i in range(n)}

    def loss_fn(params, batch, rng):
        loss = sum(jnp.sum((p * batch["x"]) ** 2) for p in params.values())
        return loss, {"loss": loss}

    tx = optax.adamw(1e-2)
    state = create_state(init_fn, tx, jax.random.PRNGKey(0))
    hlo = jax.jit(make_train_step(loss_fn, tx, ema_decay=0.9)).lower(state, {"x": jnp.ones((3,))}).compile().as_text()
    ands = sum(" and(" in line for line in hlo.splitlines())
    assert ands < 10 * n, f"{ands} and-ops in the compiled step for {n} leaves"


def test_microbatch_scan_matches_full_batch():
    init_fn, loss_fn = _lin_task()
    tx = optax.sgd(0.1)
    state = create_state(init_fn, tx, jax.random.PRNGKey(0), use_ema=False)
    full = jax.jit(make_train_step(loss_fn, tx, ema_decay=None))
    micro = jax.jit(make_train_step(loss_fn, tx, ema_decay=None, microbatches=4))
    b = _batch(3, n=8)
    sa, ma = full(state, b)
    sb, mb = micro(state, b)
    # equal-size micro-batches: mean of micro-batch mean grads == full-batch mean grad
    np.testing.assert_allclose(sa.params["w"], sb.params["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def test_bf16_compute_keeps_f32_master():
    init_fn, loss_fn = _lin_task()
    tx = optax.adam(1e-2)
    state = create_state(init_fn, tx, jax.random.PRNGKey(0))
    s, m = jax.jit(make_train_step(loss_fn, tx, compute_dtype=jnp.bfloat16))(state, _batch(0))
    assert s.params["w"].dtype == jnp.float32 and s.ema_params["w"].dtype == jnp.float32
    assert float(m["finite"]) == 1.0


def test_config_validation_names_key():
    c = trainer_config()
    c.builder = "tta_jax.train.toy:build"
    validate_trainer_config(c)
    bad = [("train.batch_size", 0, "config.train.batch_size"),
           ("optimizer.lr", -1.0, "config.optimizer.lr"),
           ("optimizer.schedule", "exp", "config.optimizer.schedule"),
           ("train.compute_dtype", "int8", "config.train.compute_dtype"),
           ("mesh.fsdp", 0, "config.mesh.fsdp"),
           ("builder", "nocolon", "config.builder")]
    for key, val, msg in bad:
        c2 = trainer_config()
        c2.builder = "tta_jax.train.toy:build"
        node = c2
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = val
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
            validate_trainer_config(c2)
    c3 = trainer_config()
    c3.builder = "a:b"
    c3.train.batch_size, c3.train.microbatches = 6, 4
    with pytest.raises(ConfigError, match=r"config\.train\.microbatches"):
        validate_trainer_config(c3)
    del c3.train["log_every"]
    with pytest.raises(ConfigError, match=r"config\.train\.log_every is missing"):
        c3.train.microbatches = 1
        validate_trainer_config(c3)


def test_iter_state_roundtrip():
    import json

    import grain
    for s in ({"index": 3, "nested": {"a": [1, 2]}}, b'{"x": 1}\x00\xff', None):
        assert decode_iter_state(encode_iter_state(s)) == s
        assert select_iter_state(json.loads(json.dumps(gather_iter_states(s)))) == s
    with pytest.raises(ValueError, match="2 process states"):
        select_iter_state({"per_process": [encode_iter_state(None)] * 2})
    # a real grain iterator resumes from the JSON round trip
    ds = grain.MapDataset.range(20).shuffle(seed=0).batch(4)
    it = iter(ds.to_iter_dataset())
    next(it)
    blob = json.loads(json.dumps(gather_iter_states(it.get_state())))
    want = next(it)
    it2 = iter(ds.to_iter_dataset())
    it2.set_state(select_iter_state(blob))
    np.testing.assert_array_equal(next(it2), want)


def test_observe_helpers(tmp_path):
    avg = observe.MetricAverager()
    for v in (1.0, 2.0, 6.0):
        avg.update({"loss": jnp.float32(v), "vec": jnp.ones(3)})
    assert avg.compute() == {"loss": pytest.approx(3.0)}
    assert avg.compute() == {}
    img = observe.spectrogram_image(np.outer(np.arange(8), np.ones(5)))
    assert img.shape == (8, 5, 3) and img.dtype == np.uint8
    assert img[0].mean() > img[-1].mean() or img[0].sum() != img[-1].sum()  # flipped: low freq at bottom
    with pytest.raises(ValueError, match=r"\[F, T\]"):
        observe.spectrogram_image(np.ones(4))
    w = observe.JsonlWriter(str(tmp_path / "m.jsonl"))
    w.write(3, {"loss": np.float32(0.5)})
    w.close()
    rec = observe.read_jsonl(str(tmp_path / "m.jsonl"))
    assert rec[0]["step"] == 3 and rec[0]["loss"] == 0.5
    f = jax.jit(lambda x: x @ x).lower(jnp.ones((32, 32))).compile()
    assert observe.compiled_flops(f) == pytest.approx(2 * 32 ** 3, rel=0.01)
    assert observe.measure_peak_flops(n=128, repeats=2) > 0


def test_multisteps_ema_updates_only_on_applied_steps():
    init_fn, loss_fn = _lin_task()
    tx, _ = optim.make_optimizer(_cfg(lr=0.1, grad_accum=2, clip_norm=None))
    state = create_state(init_fn, tx, jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(loss_fn, tx, ema_decay=0.5, ema_warmup=False))
    s1, _ = step(state, _batch(0))
    np.testing.assert_array_equal(s1.params["w"], state.params["w"])      # accumulating
    np.testing.assert_array_equal(s1.ema_params["w"], state.ema_params["w"])
    s2, _ = step(s1, _batch(1))
    assert not np.allclose(s2.params["w"], s1.params["w"])
    np.testing.assert_allclose(s2.ema_params["w"], 0.5 * s1.ema_params["w"] + 0.5 * s2.params["w"],
                               rtol=1e-6)


def test_to_global_shards_batch_and_drops_strings():
    from tta_jax.train.loop import make_mesh_from_config, to_global
    mesh = make_mesh_from_config({"data": 2, "fsdp": 2, "tensor": 2})
    out = to_global({"latent": np.ones((4, 3, 2), np.float32), "caption": np.array(["a"] * 4),
                     "cond": {"text": np.zeros((4, 5, 6), np.float32)}}, mesh)
    assert set(out) == {"latent", "cond"} and out["latent"].shape == (4, 3, 2)
    assert out["cond"]["text"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    with pytest.raises(ValueError, match="divisible"):
        make_mesh_from_config({"data": -1, "fsdp": 3, "tensor": 1})
