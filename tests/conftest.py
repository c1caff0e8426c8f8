"""Shared pytest setup.

Tests run on the CPU. Eight host devices are simulated so that sharding tests can build real meshes;
everything else sees them as ordinary devices and uses the first one.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# launch.* subprocesses share one persistent compilation cache per test run (both xdist workers), not ~/.cache
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("TTA_JAX_COMPILE_CACHE", os.path.join(tempfile.gettempdir(), f"tta_jax_test_jit_cache_{_RUN}"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
