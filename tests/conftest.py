"""Shared pytest setup.

Tests run on the CPU. Eight host devices are simulated so that sharding tests can build real meshes;
everything else sees them as ordinary devices and uses the first one.
"""
import os
import shutil
import tempfile

# XLA's LLVM back end at -O0: the tests' programs are tiny and mostly compiled once, so compile time, not run
# time, dominates. Results differ from -O3 only in float32 rounding (measured max 1.2e-7 relative on a GELU/tanh/
# exp/matmul program), far inside every parity tolerance; launch.* subprocesses inherit the flags, so in-process
# vs subprocess comparisons stay exact.
_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + [
    f for f in _TEST_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]).strip()
_O0 = "--xla_backend_optimization_level=0"


def optimised_env(**extra) -> dict:
    """The environment for a subprocess whose run time, not compile time, dominates (full-size networks,
    the in-domain evaluator's training): the tests' flags without the -O0 back end."""
    env = dict(os.environ, **extra)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f != _O0)
    return env


os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# launch.* subprocesses share one persistent compilation cache per test run (both xdist workers), not ~/.cache
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
_OWN_COMPILE_CACHE = "TTA_JAX_COMPILE_CACHE" not in os.environ   # xdist workers inherit the controller's
os.environ.setdefault("TTA_JAX_COMPILE_CACHE", os.path.join(tempfile.gettempdir(), f"tta_jax_test_jit_cache_{_RUN}"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("TTA_JAX_TEST_INPROCESS_CACHE", "1") != "0":
    # the tests' own processes use that cache too: many tests build the same tiny model afresh (a new jitted
    # closure each time), which misses jax's in-memory cache but hits the persistent one (keyed by the program)
    jax.config.update("jax_compilation_cache_dir", os.environ["TTA_JAX_COMPILE_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    """The run's compilation cache goes with the run (removed by the process that made it, after every xdist
    worker is done); a directory the user named in TTA_JAX_COMPILE_CACHE is kept."""
    if _OWN_COMPILE_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["TTA_JAX_COMPILE_CACHE"], ignore_errors=True)


def max_rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error used by the parity tests."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape mismatch {a.shape} vs {b.shape}"
    denom = max(np.max(np.abs(b)), 1e-12)
    return float(np.max(np.abs(a - b)) / denom)


@pytest.fixture
def rel_err():
    return max_rel_err


def pytest_collection_modifyitems(config, items):
    """Skip `parity` tests cleanly when the references (torch, diffusers) are not installed."""
    try:
        import torch  # noqa: F401
        have_torch = True
    except Exception:
        have_torch = False
    if have_torch:
        return
    skip = pytest.mark.skip(reason="parity references not installed: pip install -e '.[parity]'")
    for item in items:
        if "parity" in item.keywords:
            item.add_marker(skip)
