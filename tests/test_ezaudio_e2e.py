"""EzAudio end to end at toy size: waveform VAE (GAN) -> precomputed sampled latents -> stage 1 (masked
pretraining, no text) -> stage 2 (cross-attention added, from stage 1) -> stage 3 (fine-tune) -> editing
and outpainting with the trained DiT + VAE. A longer run of the same recipe: configs/ezaudio_stage1.py (tiny)."""
import json
import os
import time

import jax
import numpy as np
import pytest

from data_pipeline import tiny_ezaudio
from tta_jax.config import load_config
from tta_jax.pipelines import ezaudio as EZ
from tta_jax.train import gan, loop
from tta_jax.train.checkpoint import load_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_tiny_ezaudio_vae_and_three_stages(tmp_path):
    t0 = time.time()
    # ---- 0. waveform VAE (GAN) ----
    vcfg = load_config(f"{ROOT}/configs/ezaudio_vae.py:micro", [
        "mesh.data=1", "train.total_steps=30", "train.log_every=10", "extra.eval_every=30", "extra.num_clips=12",
        "extra.clip_seconds=0.5"])
    vae_dir = str(tmp_path / "vae")
    res = gan.train_vae(vcfg, vae_dir)
    h = res["history"]
    assert h[-1]["mrstft"] < h[0]["mrstft"], h
    assert set(res["eval"][-1]) >= {"eval/mrstft", "eval/si_sdr", "eval/log_mel_l1"}
    vparams, vstep = load_params(vae_dir, ema=False)
    assert vstep == 30
    vae_cfg = gan.vae_config_of(vcfg)

    # ---- data: sampled latents of the trained VAE + toy text states ----
    data = str(tmp_path / "data")
    m = tiny_ezaudio.prepare_tiny_data(vparams, vae_cfg, data, num_clips=16, seconds=0.5)
    assert m["shapes"]["latent"][0] == [125, 8] and m["shapes"]["txt:text"][0] == [16, 32]
    t_vae = time.time() - t0

    # ---- stages 1 -> 2 -> 3 ----
    dirs, curves, reports = {}, {}, {}
    steps = {1: 40, 2: 20, 3: 20}
    for k in (1, 2, 3):
        over = [f"data.precomputed_dir={data}", f"train.total_steps={steps[k]}"]
        if k > 1:
            over.append(f"extra.init_from={dirs[k - 1]}")
        cfg = load_config(f"{ROOT}/configs/ezaudio_stage{k}.py:tiny", over)
        task = EZ.build_stage_task(cfg, None)
        reports[k] = task.expand_report
        dirs[k] = str(tmp_path / f"s{k}")
        loop.train(cfg, dirs[k], task)
        curves[k] = _losses(dirs[k])
    print("VAE+data %.0fs, total %.0fs" % (t_vae, time.time() - t0))
    print({k: [round(v, 3) for v in c] for k, c in curves.items()})
    c1, c2, c3 = curves[1], curves[2], curves[3]
    assert np.mean(c1[-2:]) < 0.8 * c1[0], c1                       # stage 1 learns
    assert reports[1] is None
    assert any("cross_attn" in n for n in reports[2].new) and "mask_embed" in reports[2].copied
    assert not any("cross_attn" in n for n in reports[2].copied)
    assert reports[3].new == [] and len(reports[3].copied) > len(reports[2].copied)
    assert c2[0] < 0.9 * c1[0]                                      # stage 2 starts from stage 1, not scratch
    assert np.mean(c2[-2:] + c3[-2:]) < c1[0]
    assert min(c3) <= c2[0]

    # ---- inference with the stage-3 DiT and the trained VAE ----
    p3, _ = load_params(dirs[3], ema=False)
    from tta_jax.codecs.registry import oobleck_codec
    from tta_jax.denoisers.dit import DiT
    from tta_jax.text.registry import build_text_encoder
    from tta_jax.pipelines.tta import dit_config_from
    cfg3 = load_config(f"{ROOT}/configs/ezaudio_stage3.py:tiny")
    ez = EZ.EzAudio(model=DiT(dit_config_from(cfg3)), params=p3,
                    codec=oobleck_codec(vae_cfg, vparams),
                    text_encode=build_text_encoder({"name": "bytes_embed", "dim": 32, "max_len": 16}).encode, sampler=EZ.default_sampler(8), window_frames=32)
    sr, hop = vae_cfg.sample_rate, vae_cfg.hop_length
    src = gan.toy_waveforms(3, 0.5, sr, seed=7)[1][: 32 * hop]
    ed = ez.edit(src, "bursts of filtered noise", 8 * hop / sr, 20 * hop / sr, jax.random.PRNGKey(0))
    keep = ed["mask"] < 0.5
    np.testing.assert_array_equal(np.asarray(ed["latent"])[0, keep], np.asarray(ed["source_latent"])[0, keep])
    assert ed["audio"].shape == (1, src.size) and np.isfinite(np.asarray(ed["audio"])).all()
    op = ez.outpaint(src[: 16 * hop], "a sweeping chirp", 80 * hop / sr, jax.random.PRNGKey(1),
                     guidance_scale=3.5, guidance_rescale=0.0)
    assert op["audio"].shape == (1, 80 * hop) and op["latent"].shape == (1, 80, 8)
    np.testing.assert_array_equal(np.asarray(op["latent"])[:, :16], np.asarray(op["source_latent"]))
    print("total %.0fs" % (time.time() - t0))
