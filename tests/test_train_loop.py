"""Trainer acceptance tests (in-process, tiny model, synthetic data): exact resume, SIGTERM, restore
onto a different mesh, non-finite guard and abort, logging/sampling outputs."""
import os
import signal

import jax
import numpy as np
import pytest

from tta_jax.train import loop, observe, toy
from tta_jax.train.checkpoint import Checkpointer, load_params
from tta_jax.train.optim import make_optimizer
from tta_jax.train.preemption import PreemptionGuard
from tta_jax.train.state import state_shardings, with_shardings


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Persistent compilation cache shared by the trainer tests (the same programs recur)."""
    from jax._src import compilation_cache as cc
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.getbasetemp() / "jax_cache"))
    jax.config.update(keys[1], 0)
    jax.config.update(keys[2], 0)
    cc.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


def tiny_config(**train):
    c = toy.get_config()
    c.mesh.num_devices = 1
    c.train.progress_bar = False
    c.train.tensorboard = False
    c.train.measure_peak = False
    c.train.peak_flops_per_device = 1e9
    c.train.log_every = 2
    c.train.ckpt_every = 4
    c.train.total_steps = 8
    for k, v in train.items():
        c.train[k] = v
    return c


class StopAt(PreemptionGuard):
    """Behaves like a preemption arriving at ``step``."""

    def __init__(self, step):
        super().__init__()
        self.at = step

    def should_stop(self, step):
        return step >= self.at or super().should_stop(step)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(
        (state.step, state.params, state.ema_params, state.opt_state, state.rng,
         state.nonfinite_total))]


def assert_states_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # ~10 s CPU; first test of the module, it pays the (cached) compiles
def test_resume_is_bit_exact(tmp_path):
    cfg = tiny_config()
    straight = loop.train(cfg, str(tmp_path / "a"))
    assert straight.step == 8 and straight.reason == "done"

    first = loop.train(cfg, str(tmp_path / "b"), guard=StopAt(4))
    assert first.reason == "preempted" and first.step == 4
    second = loop.train(cfg, str(tmp_path / "b"))        # fresh trainer, resumes from workdir
    assert second.start_step == 4 and second.step == 8
    assert_states_equal(straight.state, second.state)
    # the comparison can fail: a run from a different seed differs
    other = tiny_config()
    other.seed = 1
    diff = loop.train(other, str(tmp_path / "c"))
    assert not np.array_equal(np.asarray(diff.state.params["params"]["in_proj"]["kernel"]),
                              np.asarray(straight.state.params["params"]["in_proj"]["kernel"]))


class SigtermAt:
    """Wraps an iterator; sends SIGTERM to this process when batch ``index`` is drawn."""

    def __init__(self, it, index):
        self.it, self.index = it, index

    def __next__(self):
        if self.it.index == self.index:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def test_sigterm_saves_restorable_checkpoint(tmp_path):
    cfg = tiny_config(total_steps=50, ckpt_every=100)
    mesh = loop.make_mesh_from_config(cfg.mesh)
    task = toy.build(cfg, mesh)
    task.train_iter = SigtermAt(task.train_iter, 2)
    old = signal.getsignal(signal.SIGTERM)
    res = loop.train(cfg, str(tmp_path), task=task)
    assert signal.getsignal(signal.SIGTERM) == old          # handler restored
    assert res.reason == "preempted" and res.step == 3
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    assert ck.latest_step() == 3
    tx, _ = make_optimizer(cfg.optimizer, cfg.train.total_steps)
    abstract, sh = state_shardings(task.init_fn, tx, mesh)
    state, data_state, step = ck.restore(with_shardings(abstract, sh))
    ck.close()
    assert step == 3 and int(state.step) == 3 and data_state == {"index": 3}
    assert_states_equal(state, res.state)
    params, pstep = load_params(str(tmp_path))               # inference loader (EMA)
    np.testing.assert_array_equal(params["params"]["mlp_in"]["kernel"],
                                  res.state.ema_params["params"]["mlp_in"]["kernel"])


def test_wall_clock_budget_checkpoints_and_stops(tmp_path):
    """``launch.train --train_minutes`` / ``launch.demo``: a spent budget stops the run after its first step with
    a checkpoint (reason "preempted"), like a SIGTERM; an unspent one does not stop it."""
    from tta_jax.train.preemption import BudgetGuard

    assert not BudgetGuard(3600).should_stop(1)
    cfg = tiny_config(total_steps=50, ckpt_every=100)
    res = loop.train(cfg, str(tmp_path), task=toy.build(cfg, loop.make_mesh_from_config(cfg.mesh)),
                     guard=BudgetGuard(0.0))
    assert res.reason == "preempted" and res.step == 1
    assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 1


@pytest.mark.slow  # ~20 s CPU: compiles for two meshes + Orbax's replica-parallel slicing
def test_restore_onto_smaller_mesh_and_continue(tmp_path):
    assert jax.device_count() == 8
    cfg8 = tiny_config(total_steps=3, ckpt_every=100)
    cfg8.mesh.num_devices = None
    cfg8.mesh.data, cfg8.mesh.fsdp = 2, 4
    r8 = loop.train(cfg8, str(tmp_path))
    k8 = r8.state.params["params"]["mlp_in"]["kernel"]
    assert len(k8.sharding.device_set) == 8 and k8.sharding.spec[0] == "fsdp"
    saved = leaves(r8.state)

    cfg2 = tiny_config(total_steps=6, ckpt_every=100)
    cfg2.mesh.num_devices = 2
    cfg2.mesh.data, cfg2.mesh.fsdp = 1, 2
    mesh2 = loop.make_mesh_from_config(cfg2.mesh)
    task = toy.build(cfg2, mesh2)
    tx, _ = make_optimizer(cfg2.optimizer, cfg2.train.total_steps)
    abstract, sh = state_shardings(task.init_fn, tx, mesh2)
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    state, _, _ = ck.restore(with_shardings(abstract, sh))
    ck.close()
    k2 = state.params["params"]["mlp_in"]["kernel"]
    assert len(k2.sharding.device_set) == 2 and k2.sharding.spec[0] == "fsdp"
    for x, y in zip(saved, leaves(state)):
        np.testing.assert_array_equal(x, y)

    r2 = loop.train(cfg2, str(tmp_path))                    # resumes on the 2-device mesh
    assert r2.start_step == 3 and r2.step == 6
    assert len(r2.state.params["params"]["mlp_in"]["kernel"].sharding.device_set) == 2
    assert all(np.isfinite(x).all() for x in leaves(r2.state))
    assert not np.array_equal(np.asarray(r2.state.params["params"]["mlp_in"]["kernel"]),
                              np.asarray(k8))


def test_nonfinite_batch_is_skipped(tmp_path):
    cfg = tiny_config(total_steps=6, ckpt_every=100)
    cfg.data.poison = (2,)                                   # batch index 2 -> step 3
    res = loop.train(cfg, str(tmp_path))
    assert res.step == 6 and int(res.state.nonfinite_total) == 1
    assert int(res.state.nonfinite_streak) == 0
    assert all(np.isfinite(x).all() for x in leaves(res.state))
    recs = observe.read_jsonl(str(tmp_path / "metrics.jsonl"))
    by_step = {r["step"]: r for r in recs}
    assert by_step[4]["finite"] == pytest.approx(0.5)        # steps 3-4: one skipped
    assert by_step[2]["finite"] == 1.0 and by_step[6]["finite"] == 1.0
    assert by_step[6]["nonfinite_total"] == 1.0


def test_abort_after_k_consecutive_nonfinite_keeps_last_good(tmp_path):
    cfg = tiny_config(total_steps=20, ckpt_every=4, max_consecutive_nonfinite=3)
    cfg.data.poison_from = 5                                 # steps 6, 7, 8 ... are poisoned
    with pytest.raises(loop.NonFiniteError, match="Last good checkpoint: step 4"):
        loop.train(cfg, str(tmp_path))
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    assert ck.all_steps() == [4]
    ck.close()
    params, step = load_params(str(tmp_path), ema=False)
    assert step == 4 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    # the run can be resumed once the data is fixed
    cfg.data.poison_from = -1
    cfg.train.total_steps = 6
    res = loop.train(cfg, str(tmp_path))
    assert res.start_step == 4 and res.step == 6 and int(res.state.nonfinite_total) == 0


def test_logging_sampling_and_overview(tmp_path):
    cfg = tiny_config(total_steps=4, sample_every=2, ckpt_every=100)
    cfg.train.tensorboard = True
    cfg.train.measure_peak = True
    cfg.train.peak_flops_per_device = None
    mesh = loop.make_mesh_from_config(cfg.mesh)
    task = toy.build(cfg, mesh)
    calls = []

    def sample_fn(params, step, out_dir):
        calls.append(step)
        with open(os.path.join(out_dir, "prompt.txt"), "w") as f:
            f.write("a dog barks")
        return {"audio": [np.sin(np.linspace(0, 100, 1600))], "sample_rate": 16000,
                "spectrograms": [np.random.rand(16, 20)], "scalars": {"sample/x": 1.0}}
    task.sample_fn = sample_fn
    res = loop.train(cfg, str(tmp_path), task=task)
    assert calls == [2, 4]
    assert (tmp_path / "samples" / "step_2" / "prompt.txt").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    assert "mlp_in/kernel" in (tmp_path / "param_overview.txt").read_text()
    recs = observe.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in recs] == [2, 4]
    for k in ("loss", "lr", "grad_norm", "perf/steps_per_s", "perf/samples_per_s", "perf/mfu",
              "perf/tflops_per_s_per_device"):
        assert k in recs[-1], k
    assert recs[-1]["perf/mfu"] > 0 and res.flops_per_step > 0
    assert recs[-1]["perf/samples_per_s"] == pytest.approx(8 * recs[-1]["perf/steps_per_s"])
