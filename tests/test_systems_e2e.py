"""One task, one generator, any denoiser: a tiny DiT system (Oobleck latents [T, C] + T5 text, as EzAudio; token
PCA) and the shipped tiny Auffusion system (a U-Net over KL-VAE mel-image latents [H, T, C], two text encoders
through per-encoder adapters) go through the same command lines:

    launch.precompute --system SYS --out DATA     (the system's codec + text sections)
    launch.train --config SYS:tiny --workdir W --config.data.precomputed_dir=DATA
    rm -rf DATA                                   (the workdir is self-contained)
    launch.sample --workdir W --prompt ...        (WAV + PNG per prompt)
    launch.export --workdir W --out EXPORT; launch.sample --export EXPORT ...   (the same WAVs)

and a workdir whose config does not match its params fails naming the first mismatching parameter.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIT_SYSTEM = '''
from configs.ezaudio import get_config as ezaudio


def get_config(arg=None):
    c = ezaudio("tiny")
    c.builder = "tta_jax.pipelines.tta:build_task"
    c.codec = {"name": "oobleck", "preset": "tiny", "init": "random", "seed": 1}   # 8 kHz, [T, 2] latents
    c.text = {"name": "t5", "init": "random", "preset": "tiny", "max_len": 8}   # FLAN-T5 architecture, 32-d
    c.data.patch_frames = 2
    c.data.token_pca = 2                      # 4-value tokens -> 2 PCA directions, saved in workdir/assets
    c.data.crop_frames = 32
    c.model.in_channels = c.model.out_channels = 2
    c.model.context_dim = 32
    c.data.mask_partial_prob = -1.0
    c.sampler.num_steps = 3
    c.train.total_steps = 3
    c.train.batch_size = 2
    return c
'''


def _run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("raw")
    sr = 16000
    t = np.arange(int(sr * 0.5)) / sr
    rows = ["path,caption"]
    for i in range(4):
        sf.write(str(d / f"c{i}.wav"), (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), sr)
        rows.append(f"c{i}.wav,tone number {i}")
    (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    return str(d)


FAST = ("--config.train.total_steps=3", "--config.train.batch_size=2", "--config.sampler.num_steps=3")


@pytest.mark.slow  # ~4 min on 2 shared cores: 10 subprocesses (precompute, train, sample, export, sample)
@pytest.mark.parametrize("name,system,layout", [("dit", DIT_SYSTEM, 2), ("unet", "configs/auffusion.py", 3)])
def test_system_trains_and_samples_without_its_data(raw, tmp_path, name, system, layout):
    if system.endswith(".py"):
        sys_file = os.path.join(ROOT, system)
    else:
        sys_file = tmp_path / f"{name}_system.py"
        sys_file.write_text(system)
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "samples"
    p = _run("launch.precompute", "--system", f"{sys_file}:tiny", "--out", data, "--noprogress",
             "--config.source=folder", f"--config.source_args.root={raw}", "--config.audio.crop_seconds=0.4")
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads((data / "manifest.json").read_text())
    assert len(manifest["shapes"]["latent"][0]) == layout
    p = _run("launch.train", "--config", f"{sys_file}:tiny", "--workdir", work,
             f"--config.data.precomputed_dir={data}", *FAST)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((work / "last_run.json").read_text())["step"] == 3
    assert (work / "assets" / "token_pca.npz").exists() == (name == "dit")
    if name == "unet":  # two text encoders, each through its own adapter into the U-Net's context
        assert sorted(k for k in manifest["shapes"] if k.startswith("txt:text:")) == ["txt:text:0", "txt:text:1"]
    shutil.rmtree(data)
    p = _run("launch.sample", "--workdir", work, "--prompt", "tone number 1", "--prompt", "tone", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    import soundfile as sf

    wav, sr = sf.read(str(out / "00_tone_number_1.wav"))
    assert sr == manifest["codec"]["sample_rate"] and wav.ndim == 1 and wav.size > 0 and np.isfinite(wav).all()
    assert (out / "01_tone.png").exists()
    # the same run exported (jax.export, CPU) and sampled through tta_jax.serving: the same WAVs
    export, out2 = tmp_path / "export", tmp_path / "samples_export"
    p = _run("launch.export", "--workdir", work, "--out", export, "--batch", 2, "--platforms", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run("launch.sample", "--export", export, "--prompt", "tone number 1", "--prompt", "tone", "--out", out2)
    assert p.returncode == 0, p.stderr[-3000:]
    for f in ("00_tone_number_1.wav", "01_tone.wav"):
        got, sr2 = sf.read(str(out2 / f))
        want, _ = sf.read(str(out / f))
        assert sr2 == sr and got.shape == want.shape, f
        np.testing.assert_allclose(got, want, rtol=0, atol=2 / 32768, err_msg=f)


def test_params_that_do_not_fit_the_config_name_the_parameter():
    import jax
    import ml_collections
    from flax.core import meta

    from configs.ezaudio import get_config
    from tta_jax.errors import ConfigError
    from tta_jax.pipelines import tta

    c = get_config("tiny")
    den = tta.denoiser_of(c)
    params = meta.unbox(den.init(jax.random.PRNGKey(0), (8, 8), 4))
    tta.check_params(den, params, (8, 8), 4, "W")  # fits
    wider = ml_collections.ConfigDict(c.to_dict())
    wider.model.width = 64
    with pytest.raises(ConfigError, match=r"W: parameter '[^']+' has shape \(.*\) in the checkpoint, but has shape"):
        tta.check_params(tta.denoiser_of(wider), params, (8, 8), 4, "W")
