"""launch.evaluate end to end on two small folders (random-weight checkpoints written by the test)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import optimised_env

from launch import evaluate
from tta_jax.eval import suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    with pytest.raises(SystemExit) as exc:  # nothing could run: a failure, not a silent empty report
        evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                       "--out", str(out)])
    assert exc.value.code == evaluate.NO_METRIC_EXIT == 3
    rep = json.loads(out.read_text())  # the report is still written
    assert rep["metrics"] == {}
    assert set(rep["missing_weights"]) == {"cnn14", "vggish", "clap"}
    for k in ("fd_panns", "kl_softmax", "is_panns", "fad_vggish", "clap", "clap_a"):
        assert "not found" in rep["skipped"][k], k
    assert "Cnn14_16k_mAP=0.438.pth" in rep["skipped"]["fd_panns"]
    on_disk = json.loads(out.read_text())
    assert on_disk["protocol"]["pairing"]["pairs"] == 4
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Skipped" in md and "fad_vggish" in md and "No metric could run" in md
    err = capsys.readouterr().err
    assert "skipped" in err and "no metric could run" in err
    # what to pass: each flag, the file names under $TTA_JAX_EVAL_WEIGHTS and where that is now
    for frag in ("--cnn14 FILE", "--vggish FILE", "--clap DIR", "$TTA_JAX_EVAL_WEIGHTS",
                 str(tmp_path / "no_weights_here"), "Cnn14_16k_mAP=0.438.pth", "vggish-10086976.pth",
                 "larger_clap_general/"):
        assert frag in err, frag


def test_evaluate_help_documents_every_flag(capsys):
    parser = evaluate.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.option_strings
    with pytest.raises(SystemExit) as exc:
        evaluate.parse_args(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for frag in ("--cnn14 FILE PANNs CNN14", "--vggish FILE torchvggish", "--clap DIR HF-format",
                 "--indomain {auto,on,off}", "General-MIDI", "--batch N clips per embedder call",
                 "exit status is 3"):
        assert frag in text, frag


class _FakeEvaluator:
    """Stands in for the trained in-domain net: a 6-d embedding from the log-mel (no training)."""

    info = {"dataset": "fake"}

    def predict(self, mels):
        m = np.asarray(mels, np.float64)
        emb = np.concatenate([m.mean(1)[:, ::16], m.std(1)[:, :1]], 1)
        return {"embedding": emb}


def _clipset(names, seed, source):
    rng = np.random.default_rng(seed)
    audio = [(0.1 * rng.normal(size=22050)).astype(np.float32) for _ in names]
    return suite.ClipSet(list(names), audio, [22050] * len(names), source)


def test_indomain_report_states_baseline_clips_and_domain(tmp_path, monkeypatch):
    """--indomain on over a folder: the baseline says which clips it uses (two disjoint parts of the
    reference, with their sizes), a size-matched FD is given next to it, and the report says the
    evaluator knows only General-MIDI renders."""
    from tta_jax.eval import indomain as I

    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    monkeypatch.setattr(I, "get_or_train", lambda *a, **k: _FakeEvaluator())
    gen = _clipset([f"g{i:02d}" for i in range(24)], 0, str(tmp_path / "gen"))
    ref = _clipset([f"r{i:02d}" for i in range(12)], 1, str(tmp_path / "ref"))
    rep = suite.run_suite(gen, ref, suite.SuiteConfig(indomain=True), log=lambda m: None)
    m, ind = rep["metrics"], rep["protocol"]["indomain"]
    assert {"indomain_fd", "indomain_fd_real_vs_real", "indomain_fd_matched"} <= set(m)
    assert ind["comparison_clips"] == [24, 12] and ind["baseline_clips"] == [6, 6] == ind["matched_clips"]
    assert "two disjoint parts of the reference set" in ind["baseline"] and "6 and 6 clips" in ind["baseline"]
    assert "General-MIDI" in ind["note"] and "mean nothing on other audio" in ind["note"]
    assert "not the embedded dataset" in ind["warning"]
    md = suite.to_markdown(rep)
    assert "## In-domain evaluator" in md and "General-MIDI" in md and "6 and 6 clips" in md
    assert "real-vs-real baseline (6 vs 6 clips)" in md and "(24 vs 12 clips)" in md
    # the same distribution on both sides: at equal sizes the comparison is on the baseline's scale
    assert m["indomain_fd_matched"] < 3 * m["indomain_fd_real_vs_real"]


def test_indomain_baseline_on_embedded_uses_held_out_split_at_comparison_sizes(tmp_path, monkeypatch):
    """An embedded reference: the baseline takes as many real clips as there are generated ones from the
    other held-out split (never the evaluator's training data), so it has the comparison's own sizes."""
    from tta_jax.eval import indomain as I

    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    monkeypatch.setattr(I, "get_or_train", lambda *a, **k: _FakeEvaluator())
    asked = {}

    def fake_load(spec, split, limit):
        asked.update(spec=spec, split=split, limit=limit)
        return _clipset([f"v{i:02d}" for i in range(min(limit, 30))], 2,
                        f"tta_jax.data.embedded(num_clips=600, seed=3, split={split})")

    monkeypatch.setattr(suite, "load_embedded", fake_load)
    src = "tta_jax.data.embedded(num_clips=600, seed=3, split=test)"
    gen = _clipset([f"g{i:02d}" for i in range(20)], 0, str(tmp_path / "gen"))
    ref = _clipset([f"r{i:02d}" for i in range(10)], 1, src)
    rep = suite.run_suite(gen, ref, suite.SuiteConfig(), log=lambda m: None)  # auto: on for embedded
    ind = rep["protocol"]["indomain"]
    assert asked == {"spec": "embedded:600:3", "split": "valid", "limit": 20}
    assert ind["baseline_clips"] == [20, 10] == ind["comparison_clips"]
    assert "valid split" in ind["baseline"] and "indomain_fd_matched" not in rep["metrics"]
    assert "warning" not in ind and "General-MIDI" in ind["note"]


@pytest.mark.slow
def test_evaluate_two_folders_with_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    names = [f"clip_{i:03d}" for i in range(12)]
    # 1 s clips (VGGish needs >= 0.975 s), all 12 of a set in one --batch: no padded rows to embed; the
    # random full-size CNN14 on the CPU costs about a second per clip, so clips are what this test pays for
    _write_clips(tmp_path / "gen", names, 16000, 0, seconds=1.0)
    _write_clips(tmp_path / "ref", names[2:] + ["other_a", "other_b"], 22050, 1, seconds=1.0)
    _fake_cnn14(str(tmp_path / "cnn14.safetensors"))
    _fake_vggish(str(tmp_path / "vggish.safetensors"))
    # full-size random networks: run time dominates, so launch.evaluate runs as a command at full XLA optimisation
    p = subprocess.run([sys.executable, "-m", "launch.evaluate", "--generated", str(tmp_path / "gen"),
                        "--reference", str(tmp_path / "ref"), "--out", str(tmp_path / "report.json"),
                        "--cnn14", str(tmp_path / "cnn14.safetensors"), "--vggish", str(tmp_path / "vggish.safetensors"),
                        "--kid_subsets", "5", "--batch", "12"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=optimised_env(**{suite.WEIGHTS_ENV: str(tmp_path / "none")}))
    assert p.returncode == 0, p.stderr[-3000:]
    with open(tmp_path / "report.json") as f:
        rep = json.load(f)
    m = rep["metrics"]
    for k in ("fd_panns", "kid_panns_mean", "kl_softmax", "kl_sigmoid", "is_panns_mean", "fad_vggish"):
        assert k in m and np.isfinite(m[k]), k
    assert m["fd_panns"] > 0 and m["fad_vggish"] > 0
    assert rep["protocol"]["pairing"]["pairs"] == 10
    assert rep["protocol"]["backbones"]["panns_cnn14"]["sha256"] == suite.sha256_of(str(tmp_path / "cnn14.safetensors"))
    assert set(rep["skipped"]) == {"clap", "clap_a"}
    # identical folders give FD ~ 0 (their first 4 clips: --limit)
    rep2 = evaluate.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen"),
                          "--out", str(tmp_path / "same.json"), "--cnn14", str(tmp_path / "cnn14.safetensors"),
                          "--kid_subsets", "2", "--limit", "4"])   # 4 clips: in process (-O0) is cheaper
    assert rep2["protocol"]["pairing"]["pairs"] == 4
    assert abs(rep2["metrics"]["fd_panns"]) < 1e-3 * m["fd_panns"]
    assert rep2["metrics"]["kl_softmax"] < 1e-4
