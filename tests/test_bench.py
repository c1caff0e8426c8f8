"""launch/bench.py: helpers, the PyTorch EzAudio reference copy, a --quick smoke run (JSON fields), the lora suite."""
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
    assert [r["task"] for r in rows] == ["train step", "train step remat",
                                         f"sample {bench.QUICK_DIT.steps}x DDIM+CFG B1"]
    plain, remat, sample = rows
    for r in (plain, sample):
        assert r["jax_s"] > 0 and r["torch_s"] > 0 and r["speedup"] > 0
        assert r["flops"] > 0 and r["jax_flops_per_s"] > 0 and r["jax_pct_peak"] > 0
    for r in rows:
        assert r["compile_s"] > 0 and r["compiled_peak_bytes"] > 0 and r["temp_bytes"] > 0
    assert plain["max_rel_err"] < 1e-4          # both sides compute the same function
    assert np.isfinite(plain["jax_loss"]) and np.isfinite(plain["torch_loss"])
    # the same step recomputing its blocks: same loss (same data and key), JAX only, more FLOPs
    assert remat["torch_s"] is None and remat["remat"] is True
    assert remat["jax_loss"] == pytest.approx(plain["jax_loss"], rel=1e-4)
    assert remat["flops"] > plain["flops"]
    assert sample["finite"] is True
    assert len(res["targets"]) == 3               # the remat row has no target
    assert res["settings"]["compile_cache"] and res["compile_s_total"] > 0


# tinier than QUICK_UNET; the end-to-end test runs the U-Net only (one tiny train-step compile per variant,
# ~12 s each on a loaded 2-core machine; the tiny DiT's takes twice that), the DiT's targets are checked below
TINY_LORA = {"unet": bench.UNetBench(block_out_channels=(8,), heads=(1,), layers_per_block=1, norm_num_groups=4,
                                     channels=4, cross_dim=8, height=8, width=8, context_len=4, batch=2)}


@pytest.mark.parametrize("family", ["dit", "unet"])
def test_lora_targets_cover_self_and_cross_attention(family):
    """LORA_TARGETS adapt q/k/v/out of self- and cross-attention of the bench models (eval_shape only)."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from tta_jax.train.lora import lora_targets

    b = bench._lora_sizes(True)[family]
    model, _, x0, cond, _ = bench._lora_base(family, b)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.asarray(x0[:1]), jnp.zeros((1,), jnp.int32),
                                                 jax.tree.map(lambda a: a[:1], cond)), jax.random.PRNGKey(0))
    hit = lora_targets(meta.unbox(shapes["params"]), bench.LORA_TARGETS[family])
    kinds = {"/".join(k.split("/")[-3:-1]) for k in hit}
    attn = ("attn", "cross_attn") if family == "dit" else ("attn1", "attn2")
    assert kinds == {f"{a}/to_{p}" for a in attn for p in ("q", "k", "v", "out")}


def test_lora_suite_full_vs_lora(tmp_path, monkeypatch, capsys):
    """`python -m launch.bench lora` (main) at a tiny size, repeats 1: each variant in its own subprocess; LoRA
    trains fewer params with a smaller optimizer state; JSON fields present; the table prints."""
    monkeypatch.setattr(bench, "_lora_sizes", lambda quick: TINY_LORA)
    out = tmp_path / "lora.json"
    bench.main(["lora", "--quick", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "train step LoRA r8" in printed and "XLA peak" in printed and "RSS peak" in printed
    res = json.loads(out.read_text())
    assert res["benchmark"] == "lora" and res["results"] == [] and res["targets"] == {}
    cfg = res["config"]["lora"]
    assert cfg["rank"] == 8 and set(cfg["memory"]) >= {"compiled_peak_bytes", "rss_peak_bytes"}
    assert cfg["bench"]["unet"]["block_out_channels"] == [8]
    full, lora = res["lora"]
    assert (full["variant"], lora["variant"]) == ("full", "lora") and full["model"] == lora["model"]
    for r in (full, lora):
        assert r["jax_s"] > 0 and len(r["jax_times"]) == 1 and np.isfinite(r["jax_loss"])
        assert r["isolated"] is True
        for k in ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "compiled_peak_bytes",
                  "rss_before_compile_bytes", "rss_peak_bytes", "opt_state_bytes", "flops"):
            assert r[k] > 0, (r["task"], k)
        assert r["compiled_peak_bytes"] == (r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
                                            - r["alias_bytes"])
        assert r["rss_peak_bytes"] >= r["rss_before_compile_bytes"]
    assert full["trained_params"] == full["total_params"] == full["base_params"] and full["trained_frac"] == 1
    assert lora["base_params"] == full["base_params"]
    assert lora["total_params"] == lora["base_params"] + lora["trained_params"]
    assert 0 < lora["trained_params"] < full["trained_params"] and lora["trained_frac"] < 1
    assert lora["opt_state_bytes"] < full["opt_state_bytes"]
    # q/k/v/out x (self + cross) x 4 transformer blocks (down, mid, 2 up)
    assert lora["adapted_kernels"] == 8 * 4 and lora["targets"] == list(bench.LORA_TARGETS["unet"])


def test_scaling_suite_writes_rows_json_and_plot(tmp_path, monkeypatch, capsys):
    """`python -m launch.bench scaling` at a tiny U-Net, two clip lengths: a train and a sampler row per point
    with tokens, batch, FLOP/s, compile seconds and XLA peak memory; the PNG is written next to the JSON."""
    monkeypatch.setattr(bench, "QUICK_SCALE_BASE", {"unet": TINY_LORA["unet"]})
    monkeypatch.setattr(bench, "SCALE_TOKENS", (1, 2))
    monkeypatch.setattr(bench, "SCALE_BATCH", (2,))
    out = tmp_path / "scaling.json"
    bench.main(["scaling", "--quick", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "sample step (CFG)" in printed and "XLA peak" in printed
    res = json.loads(out.read_text())
    rows = res["scaling"]
    assert [(r["tokens"], r["task"]) for r in rows] == [(64, "train step"), (64, "sample step (CFG)"),
                                                        (128, "train step"), (128, "sample step (CFG)")]
    for r in rows:
        assert r["family"] == "unet" and r["batch"] == 2 and r["jax_s"] > 0 and r["flops"] > 0
        assert r["compile_s"] > 0 and r["compiled_peak_bytes"] > 0
    assert rows[2]["flops"] > 1.5 * rows[0]["flops"]          # twice the clip, about twice the work
    png = tmp_path / "scaling.png"
    assert res["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rss_of_a_fresh_subprocess_is_its_own():
    """ru_maxrss survives fork + exec on Linux: a child of a big parent would report the parent's peak. The
    bench reads VmHWM, the child's own high-water mark."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc")
    big = np.ones(400 * 2**20 // 8)        # the parent holds 400 MiB
    big[::4096] += 1
    code = "from launch.bench import _max_rss_bytes; print(_max_rss_bytes())"
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                               check=True).stdout.split()[-1])
    assert bench._max_rss_bytes() > 400 * 2**20 > 4 * child, (bench._max_rss_bytes(), child)
    del big


def test_profile_suite_attributes_the_unet_step_to_its_parts(monkeypatch):
    """`launch.bench profile` at a tiny U-Net: op time per model part, forward and backward of the U-Net and the
    optimizer update all present, shares summing to one."""
    monkeypatch.setattr(bench, "_lora_sizes", lambda quick: TINY_LORA)
    prof = bench.bench_profile(quick=True, calls=1, families=("unet",))["unet"]
    layers = {p["layer"].split()[0] for p in prof["layers"]}
    assert {"fwd", "bwd", "update"} <= layers, layers
    assert any("resnets_*" in p["layer"] for p in prof["layers"])
    assert sum(p["frac"] for p in prof["parts"]) == pytest.approx(1.0)
    assert prof["model"].startswith("unet 8") and prof["total_ms"] > 0
