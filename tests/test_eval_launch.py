"""launch.evaluate end to end on two small folders (random-weight checkpoints written by the test)."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from launch import evaluate
from tta_jax.eval import suite


def _write_clips(d, names, sr, seed, seconds=1.2):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    for i, n in enumerate(names):
        f0 = 220.0 * (1 + (i % 5))
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.normal(size=t.shape)
        sf.write(os.path.join(d, n + ".wav"), x.astype(np.float32), sr, subtype="PCM_16")


def _fake_cnn14(path, seed=0):
    """A torch-keyed CNN14 state dict with random weights, as safetensors (no torch needed)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    sd, c_in = {}, 1

    def bn(name, c):
        sd.update({f"{name}.weight": 1 + 0.1 * rng.normal(size=c), f"{name}.bias": 0.1 * rng.normal(size=c),
                   f"{name}.running_mean": 0.1 * rng.normal(size=c), f"{name}.running_var": 1 + rng.random(c)})

    bn("bn0", 64)
    for i, w in enumerate((64, 128, 256, 512, 1024, 2048), 1):
        for j, ci in ((1, c_in), (2, w)):
            sd[f"conv_block{i}.conv{j}.weight"] = rng.normal(size=(w, ci, 3, 3)) * np.sqrt(2.0 / (9 * ci))
            bn(f"conv_block{i}.bn{j}", w)
        c_in = w
    sd["fc1.weight"] = rng.normal(size=(2048, 2048)) / np.sqrt(2048)
    sd["fc1.bias"] = np.zeros(2048)
    sd["fc_audioset.weight"] = rng.normal(size=(527, 2048)) / np.sqrt(2048)
    sd["fc_audioset.bias"] = np.zeros(527)
    save_file({k: np.asarray(v, np.float32) for k, v in sd.items()}, path)


def _fake_vggish(path, seed=1):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    sd, c_in = {}, 1
    for i, c in zip((0, 3, 6, 8, 11, 13), (64, 128, 256, 256, 512, 512)):
        sd[f"features.{i}.weight"] = rng.normal(size=(c, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
        sd[f"features.{i}.bias"] = np.zeros(c)
        c_in = c
    for i, (o, n) in zip((0, 2, 4), ((4096, 12288), (4096, 4096), (128, 4096))):
        sd[f"embeddings.{i}.weight"] = rng.normal(size=(o, n)) * np.sqrt(2.0 / n)
        sd[f"embeddings.{i}.bias"] = np.zeros(o)
    save_file({k: np.asarray(v, np.float32) for k, v in sd.items()}, path)


def test_evaluate_without_weights_reports_skips(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "no_weights_here"))
    names = [f"clip_{i:03d}" for i in range(4)]
    _write_clips(tmp_path / "gen", names, 16000, 0)
    _write_clips(tmp_path / "ref", names, 22050, 1)
    out = tmp_path / "r" / "report.json"
    rep = evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                         "--out", str(out)])
    assert rep["metrics"] == {}
    for k in ("fd_panns", "kl_softmax", "is_panns", "fad_vggish", "clap", "clap_a"):
        assert "not found" in rep["skipped"][k], k
    assert "Cnn14_16k_mAP=0.438.pth" in rep["skipped"]["fd_panns"]
    on_disk = json.loads(out.read_text())
    assert on_disk["protocol"]["pairing"]["pairs"] == 4
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Skipped" in md and "fad_vggish" in md
    assert "skipped" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_two_folders_with_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    names = [f"clip_{i:03d}" for i in range(12)]
    _write_clips(tmp_path / "gen", names, 16000, 0)
    _write_clips(tmp_path / "ref", names[2:] + ["other_a", "other_b"], 22050, 1)
    _fake_cnn14(str(tmp_path / "cnn14.safetensors"))
    _fake_vggish(str(tmp_path / "vggish.safetensors"))
    rep = evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                         "--out", str(tmp_path / "report.json"), "--cnn14", str(tmp_path / "cnn14.safetensors"),
                         "--vggish", str(tmp_path / "vggish.safetensors"), "--kid_subsets", "5"])
    m = rep["metrics"]
    for k in ("fd_panns", "kid_panns_mean", "kl_softmax", "kl_sigmoid", "is_panns_mean", "fad_vggish"):
        assert k in m and np.isfinite(m[k]), k
    assert m["fd_panns"] > 0 and m["fad_vggish"] > 0
    assert rep["protocol"]["pairing"]["pairs"] == 10
    assert rep["protocol"]["backbones"]["panns_cnn14"]["sha256"] == suite.sha256_of(str(tmp_path / "cnn14.safetensors"))
    assert set(rep["skipped"]) == {"clap", "clap_a"}
    # identical folders give FD ~ 0
    rep2 = evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen"),
                          "--out", str(tmp_path / "same.json"), "--cnn14", str(tmp_path / "cnn14.safetensors"),
                          "--kid_subsets", "2"])
    assert abs(rep2["metrics"]["fd_panns"]) < 1e-3 * m["fd_panns"]
    assert rep2["metrics"]["kl_softmax"] < 1e-4
