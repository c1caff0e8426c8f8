"""Multi-host training on one machine: ``python -m launch.train --distributed=on`` as two CPU processes
(one CPU device each, gloo collectives, coordinator on a free localhost port) against one process.

* the 2-process run and a 1-process run with the same global batch end with the same state: the toy task
  draws the global batch on every process and keeps its rows (``loop.process_batch_rows``), so the data
  do not depend on the number of processes; only the gradient reduction order differs (max |diff| ~3e-8);
* SIGKILL one process after a checkpoint exists, then the other, restart both: the resumed run ends with
  the state of an uninterrupted 2-process run (per-process data iterator states restored).

Every wait has a timeout, after which all processes of the group are killed (a hung collective cannot
hang the suite). Both runs share a persistent compilation cache.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
TIMEOUT = 150
COMMON = ["--config", os.path.join(ROOT, "tta_jax/train/toy.py"), "--config.train.progress_bar=False",
          "--config.train.tensorboard=False", "--config.train.measure_peak=False",
          "--config.train.log_every=1", f"--config.train.total_steps={STEPS}",
          "--config.train.ckpt_every=1", "--config.train.batch_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(cache):
    env = dict(os.environ)
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,  # one CPU device per process
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _launch(workdir, cache, num_processes, *extra, tag="run"):
    """Start ``num_processes`` launch.train processes on ``workdir`` (logs: <tag>_<i>.log beside it)."""
    dist = []
    if num_processes > 1:
        dist = ["--distributed=on", f"--coordinator_address=localhost:{_free_port()}",
                f"--num_processes={num_processes}"]
    procs = []
    for i in range(num_processes):
        log = open(os.path.join(os.path.dirname(str(workdir)), f"{tag}_{i}.log"), "w")
        cmd = [sys.executable, "-m", "launch.train", "--workdir", str(workdir), *COMMON, *dist, *extra]
        if num_processes > 1:
            cmd.append(f"--process_id={i}")
        p = subprocess.Popen(cmd, cwd=ROOT, env=_env(cache), stdout=log, stderr=subprocess.STDOUT)
        p.log_path = log.name
        log.close()
        procs.append(p)
    return procs


def _tail(procs, n=2500) -> str:
    out = []
    for p in procs:
        with open(p.log_path) as f:
            out.append(f"--- {p.log_path} (rc={p.poll()}):\n{f.read()[-n:]}")
    return "\n".join(out)


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(timeout=30)


def _wait_all(procs, timeout=TIMEOUT) -> None:
    """Wait for every process to exit 0; on a timeout or a failure kill the group and fail with the logs."""
    t0 = time.time()
    try:
        while any(p.poll() is None for p in procs):
            if time.time() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout} s")
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(2)  # let the others report, then stop them
                raise AssertionError("a process failed")
            time.sleep(0.1)
    except AssertionError as e:
        _kill(procs)
        raise AssertionError(f"{e}\n{_tail(procs)}") from None
    assert all(p.returncode == 0 for p in procs), _tail(procs)


def _finished_steps(workdir):
    d = os.path.join(str(workdir), "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _read_checkpoint(workdir):
    """(step, full train state as numpy, per-process data iterator states) of the latest checkpoint,
    read onto this process's first device whatever mesh wrote it."""
    d = os.path.join(str(workdir), "checkpoints")
    mngr = ocp.CheckpointManager(d, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                   "data": ocp.JsonCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        step = mngr.latest_step()
        meta = mngr.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=jax.tree.map(
                lambda _: ocp.ArrayRestoreArgs(sharding=sh), meta)),
            data=ocp.args.JsonRestore()))
    finally:
        mngr.close()
    data = [s["value"] for s in out["data"]["per_process"]]
    return step, jax.tree.map(np.asarray, out["state"]), data


def _max_diff(a, b) -> dict[str, float]:
    """max |a - b| per top-level field of two train states (same tree)."""
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    out = {}
    for (path, x), y in zip(la, lb):
        assert x.shape == y.shape, (jax.tree_util.keystr(path), x.shape, y.shape)
        k = str(getattr(path[0], "key", path[0]))
        d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        out[k] = max(out.get(k, 0.0), d)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache_multiprocess")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, cache):
    """An uninterrupted 2-process run of STEPS steps (the reference of both tests)."""
    workdir = tmp_path_factory.mktemp("mp_ref") / "run"
    procs = _launch(workdir, cache, 2, tag="ref")
    _wait_all(procs)
    logs = _tail(procs, n=100000)
    assert "process 1/2" in logs and "process 0/2" in logs, logs[-3000:]
    return workdir


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, cache, two_process_run):
    procs = _launch(tmp_path / "run", cache, 1, tag="single")
    _wait_all(procs)
    s2, state2, data2 = _read_checkpoint(two_process_run)
    s1, state1, data1 = _read_checkpoint(tmp_path / "run")
    assert s1 == s2 == STEPS
    assert data2 == [{"index": STEPS}] * 2 and data1 == [{"index": STEPS}]
    diff = _max_diff(state2, state1)
    print(f"2 processes vs 1: max |diff| {diff}")
    assert diff["step"] == diff["rng"] == 0.0, diff
    assert max(diff.values()) < 1e-6, diff


@pytest.mark.slow
def test_kill9_one_process_then_resume(tmp_path, cache, two_process_run):
    workdir = tmp_path / "run"
    # Slow data (0.5 s/batch) so the run is still going when the first checkpoint lands.
    procs = _launch(workdir, cache, 2, "--config.data.delay_s=0.5", tag="victim")
    t0 = time.time()
    try:
        while not _finished_steps(workdir):
            assert time.time() - t0 < TIMEOUT, "no checkpoint in time"
            assert all(p.poll() is None for p in procs), "a process exited before the first checkpoint"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        time.sleep(0.5)
        survivor_rc = procs[0].poll()  # None: still running (or stuck in a collective)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
    except AssertionError as e:
        _kill(procs)
        raise AssertionError(f"{e}\n{_tail(procs)}") from None
    finally:
        _kill(procs)
    assert procs[1].returncode == -signal.SIGKILL
    done = _finished_steps(workdir)
    assert done and max(done) < STEPS, done
    print(f"killed -9 process 1 then process 0 (rc before its kill: {survivor_rc}); checkpoints {done}")

    resumed = _launch(workdir, cache, 2, tag="resumed")
    _wait_all(resumed)
    last = json.loads((workdir / "last_run.json").read_text())
    assert last["start_step"] == max(done) and last["step"] == STEPS, last
    s_ref, ref, data_ref = _read_checkpoint(two_process_run)
    s_res, res, data_res = _read_checkpoint(workdir)
    assert s_ref == s_res == STEPS and data_ref == data_res == [{"index": STEPS}] * 2
    diff = _max_diff(res, ref)
    print(f"resumed vs uninterrupted (2 processes): max |diff| {diff}")
    assert max(diff.values()) < 1e-6, diff
