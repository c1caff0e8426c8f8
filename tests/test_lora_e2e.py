"""LoRA through the shared loop (config.lora, tta_jax/train/lora.py): a base run, adapters trained on it with the
base frozen, exported alone by launch.export, merged at sampling time (launch.sample --lora's function)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = [".*/attn[12]/to_(q|k|v|out)"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.audio_folders import write_audio_folder

    sr = 16000
    t = np.arange(sr // 2) / sr
    clips = [(0.3 * np.sin(2 * np.pi * (200 + 70 * i) * t), {"caption": f"a tone number {i}"}) for i in range(6)]
    return write_audio_folder(tmp_path_factory.mktemp("raw"), clips, sr)


@pytest.mark.slow  # ~1 min: precompute, base training, LoRA training, export, sampling merged and unmerged
def test_lora_run_freezes_the_base_exports_the_adapter_and_merges(folder, tmp_path):
    from configs.tango import get_config
    from data_pipeline import build, precompute_config
    from tta_jax.config import validate_config
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.lora import apply_lora_files, load_lora
    from tta_jax.train.loop import train
    from tta_jax.train.partial import read_params

    pc = precompute_config.get_config()
    pc.source, pc.source_args.root = "folder", folder
    pc.audio.sample_rate, pc.audio.crop_seconds = 0, 0.5
    data = str(tmp_path / "data")
    build.run(pc, data, system=get_config("tiny"), progress=False)

    base_cfg = get_config("tiny")
    base_cfg.data.precomputed_dir = data
    base_cfg.train.total_steps, base_cfg.train.batch_size = 2, 4
    validate_config(base_cfg)
    train(base_cfg, str(tmp_path / "base"))
    base = read_params(str(tmp_path / "base"))

    c = get_config("tiny")
    c.data.precomputed_dir = data
    c.train.total_steps, c.train.batch_size = 3, 4
    c.lora = {"rank": 4, "alpha": 8.0, "targets": TARGETS}
    c.optimizer.trainable = ("lora/.*",)
    c.train.init_from, c.train.init_prefix = str(tmp_path / "base"), "net"
    c.train.ema_decay = 0.9   # params and EMA get the base each, the adapters stay their own buffers (donated)
    validate_config(c)
    work = tmp_path / "lora"
    assert train(c, str(work)).step == 3
    trained, _ = load_params(str(work), ema=False)
    for path, v in jax.tree_util.tree_leaves_with_path(base):   # the base is bit-identical after training
        got = trained["net"]
        for k in path:
            got = got[k.key]
        np.testing.assert_array_equal(np.asarray(got), v, err_msg=jax.tree_util.keystr(path))
    assert any(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(trained["lora"]))   # B moved off zero

    (work / "config.json").write_text(c.to_json_best_effort())
    out = tmp_path / "adapter.safetensors"
    p = subprocess.run([sys.executable, "-m", "launch.export", "--workdir", str(work), "--out", str(out),
                        "--trainable_only"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    adapters, meta = load_lora(str(out))
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and list(meta["targets"]) == TARGETS and meta["base"]
    assert adapters and all(k.endswith("/kernel") for k in adapters)

    prompts = ["a tone", "a low tone"]
    ema, _ = load_params(str(work))     # what launch.export wrote (the EMA adapters)
    lat_run, _, _ = generate_audio(c, ema, prompts, workdir=str(work), steps=3, seed=1)   # unmerged
    merged = apply_lora_files(ema["net"], [str(out)])
    lat_merged, _, _ = generate_audio(base_cfg, merged, prompts, workdir=str(work), steps=3, seed=1)
    np.testing.assert_allclose(lat_merged, lat_run, atol=1e-5)
    lat_base, _, _ = generate_audio(base_cfg, ema["net"], prompts, workdir=str(work), steps=3, seed=1)
    assert np.abs(lat_base - lat_run).max() > 1e-5      # the adapter changes the samples
    half = apply_lora_files(trained["net"], [f"{out}:0.0"])     # scale 0: the base exactly
    np.testing.assert_array_equal(jax.tree.leaves(half)[0], jax.tree.leaves(trained["net"])[0])
