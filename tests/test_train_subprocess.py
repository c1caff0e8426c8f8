"""End-to-end trainer tests through ``python -m launch.train`` in a real subprocess:
kill -9 mid-run then resume is bit-exact; SIGTERM exits 0 leaving a restorable checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tta_jax.train import loop, toy
from tta_jax.train.checkpoint import Checkpointer
from tta_jax.train.optim import make_optimizer
from tta_jax.train.state import state_shardings, with_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config.mesh.num_devices=1", "--config.train.progress_bar=False",
          "--config.train.tensorboard=False", "--config.train.measure_peak=False",
          "--config.train.log_every=2"]


def _env(cache):
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=ROOT)
    return env


def _launch(workdir, cache, *extra):
    cmd = [sys.executable, "-m", "launch.train", "--config", os.path.join(ROOT, "tta_jax/train/toy.py"),
           "--workdir", str(workdir), *COMMON, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finished_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _wait_for(pred, proc, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _restore(workdir, cfg):
    mesh = loop.make_mesh_from_config(cfg.mesh)
    task = toy.build(cfg, mesh)
    tx, _ = make_optimizer(cfg.optimizer, cfg.train.total_steps)
    abstract, sh = state_shardings(task.init_fn, tx, mesh)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return ck.restore(with_shardings(abstract, sh))
    finally:
        ck.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Persistent compilation cache shared by the subprocesses (same programs in every run)."""
    return tmp_path_factory.mktemp("jax_cache_sub")


def _cfg(total, ckpt_every):
    c = toy.get_config()
    c.mesh.num_devices = 1
    c.train.total_steps, c.train.ckpt_every = total, ckpt_every
    c.train.progress_bar = c.train.tensorboard = c.train.measure_peak = False
    c.train.log_every = 2
    return c


@pytest.mark.slow
def test_kill9_then_resume_is_bit_exact(tmp_path, cache):
    steps = ["--config.train.total_steps=12", "--config.train.ckpt_every=4"]
    # Reference: 12 steps straight.
    ref = _launch(tmp_path / "ref", cache, *steps)
    out, _ = ref.communicate(timeout=240)
    assert ref.returncode == 0, out[-3000:]
    # Slow data (0.6 s/batch) so the run is still going when the first checkpoint lands; kill -9.
    victim = _launch(tmp_path / "run", cache, *steps, "--config.data.delay_s=0.6")
    assert _wait_for(lambda: _finished_steps(tmp_path / "run"), victim, 240), \
        (victim.communicate()[0] or "")[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    done = _finished_steps(tmp_path / "run")
    assert done and max(done) < 12, done
    print(f"killed -9 with checkpoints {done}")
    # Resume in a new process.
    resumed = _launch(tmp_path / "run", cache, *steps)
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out[-3000:]
    last = json.loads((tmp_path / "run" / "last_run.json").read_text())
    assert last["start_step"] == max(done) and last["step"] == 12

    cfg = _cfg(12, 4)
    a, a_data, a_step = _restore(str(tmp_path / "ref"), cfg)
    b, b_data, b_step = _restore(str(tmp_path / "run"), cfg)
    assert a_step == b_step == 12 and a_data == b_data == {"index": 12}
    la = jax.tree.leaves((a.params, a.ema_params, a.opt_state, a.rng, a.step))
    lb = jax.tree.leaves((b.params, b.ema_params, b.opt_state, b.rng, b.step))
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigterm_exits_cleanly_with_checkpoint(tmp_path, cache):
    proc = _launch(tmp_path / "run", cache, "--config.train.total_steps=500",
                   "--config.train.ckpt_every=1000", "--config.data.delay_s=0.3")
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and metrics.read_text().strip(), proc, 240), \
        (proc.communicate()[0] or "")[-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    last = json.loads((tmp_path / "run" / "last_run.json").read_text())
    assert last["reason"] == "preempted" and 2 <= last["step"] < 500
    assert _finished_steps(tmp_path / "run") == [last["step"]]
    state, data, step = _restore(str(tmp_path / "run"), _cfg(500, 1000))
    assert step == last["step"] == int(state.step) and data == {"index": step}
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    # launch/sample.py loads the run (config.json + EMA params) and calls config.sample_pipeline
    out_dir = tmp_path / "samples"
    res = subprocess.run([sys.executable, "-m", "launch.sample", "--workdir", str(tmp_path / "run"),
                          "--prompt", "a dog barks", "--prompt", "rain", "--out", str(out_dir)],
                         cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(os.listdir(out_dir))
    assert files == ["00_a_dog_barks.npy", "01_rain.npy"]
    x = np.load(out_dir / files[0])
    assert x.shape == (16, 4) and np.isfinite(x).all()


@pytest.mark.slow
def test_bad_override_names_the_key(tmp_path, cache):
    proc = _launch(tmp_path / "run", cache, "--config.train.batch_size=0")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "config.train.batch_size=0" in out
    proc = _launch(tmp_path / "run", cache, "--config.train.no_such_key=1")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "no_such_key" in out
