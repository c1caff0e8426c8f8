"""launch/bench.py: helpers, the PyTorch EzAudio reference copy, and a --quick smoke run (JSON fields)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_median_time_and_row():
    calls = []
    med, times = bench.median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and med >= 0
    r = bench._row("dit x", "train step", 0.5, 1.0, 1e9, 4e9, [0.5], [1.0])
    assert r["speedup"] == pytest.approx(2.0)
    assert r["jax_flops_per_s"] == pytest.approx(2e9) and r["jax_pct_peak"] == pytest.approx(50.0)
    assert r["torch_pct_peak"] == pytest.approx(25.0)


def test_targets_and_table(capsys):
    rows = [bench._row("dit a", "train step", 1.0, 1.4, 1e9, 1e9, [], []),
            bench._row("dit a", "sample 4x DDIM+CFG B1", 1.0, 2.5, 1e9, 1e9, [], []),
            bench._row("unet b", "train step", 1.0, 2.0, None, 1e9, [], [])]
    t = bench.check_targets(rows)
    assert t["dit train speed-up >= 1.5x"] is False
    assert t["dit sampling speed-up >= 2.0x"] is True
    assert t["dit train >= 50% of matmul peak"] is True
    assert t["unet train speed-up >= 1.5x"] is True
    res = {"machine": {"cpu_model": "cpu", "cores": 2, "loadavg_start": [0, 0, 0]}, "results": rows,
           "targets": t}
    bench.print_table(res)
    out = capsys.readouterr().out
    assert "dit a" in out and "1.40x" in out and "unet b" in out


def test_peak_measures_positive_flops():
    pk = bench.bench_peak(n=64, repeats=1)
    assert pk["jax_flops_per_s"] > 0 and pk["torch_flops_per_s"] > 0 and pk["n"] == 64


@pytest.mark.parity
def test_torch_dit_copy_matches_converter_test_reference():
    """benchmarks/torch_dit.py is a copy of the reference in tests/test_dit_convert.py: same state dict
    (init="test") and same forward."""
    pytest.importorskip("torch")
    import test_dit_convert as ref_mod

    from benchmarks import torch_dit

    c = ref_mod.CFG
    sd = torch_dit.official_state_dict(c, seed=3)
    sd_ref = ref_mod.official_state_dict(c, seed=3)
    assert sorted(sd) == sorted(sd_ref)
    for k in sd:
        np.testing.assert_array_equal(sd[k], sd_ref[k], err_msg=k)
    rng = np.random.default_rng(4)
    B, T, L = 2, 9, 5
    x = rng.standard_normal((B, T, c.in_channels)).astype(np.float32)
    clean = rng.standard_normal((B, T, c.in_channels)).astype(np.float32)
    text = rng.standard_normal((B, L, c.context_dim)).astype(np.float32)
    tmask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    mask = np.zeros((B, T), np.float32)
    mask[0, 2:6] = 1
    mask[1] = 1
    t = np.array([5, 700])
    a = torch_dit.torch_reference(sd, x, t, text, tmask, clean, mask, c)
    b = ref_mod.torch_reference(sd, x, t, text, tmask, clean, mask, c)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="init"):
        torch_dit.official_state_dict(c, init="xavier")


@pytest.mark.slow
def test_quick_dit_bench_writes_json(tmp_path):
    """`python -m launch.bench dit --quick` end to end (tiny DiT; JAX compile dominates the time)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "b.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "launch.bench", "dit", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train step" in proc.stdout and "speed-up" in proc.stdout
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["benchmark"] == "dit"
    assert res["machine"]["cores"] >= 1 and res["machine"]["cpu_model"]
    for k in ("jax", "jaxlib", "flax", "torch", "diffusers"):
        assert res["versions"][k], k
    assert res["config"]["dit"]["model"]["width"] == bench.QUICK_DIT.width
    assert res["peak"]["jax_flops_per_s"] > 0
    rows = res["results"]
    assert [r["task"] for r in rows] == ["train step", f"sample {bench.QUICK_DIT.steps}x DDIM+CFG B1"]
    for r in rows:
        assert r["jax_s"] > 0 and r["torch_s"] > 0 and r["speedup"] > 0
        assert r["flops"] > 0 and r["jax_flops_per_s"] > 0 and r["jax_pct_peak"] > 0
    assert rows[0]["max_rel_err"] < 1e-4          # both sides compute the same function
    assert np.isfinite(rows[0]["jax_loss"]) and np.isfinite(rows[0]["torch_loss"])
    assert rows[1]["finite"] is True
    assert len(res["targets"]) == 3
