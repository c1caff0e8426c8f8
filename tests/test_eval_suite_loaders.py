"""The evaluation suite gets its backbone loaders from tta_jax.convert (the eval package never imports it)."""
import numpy as np
import pytest

from tta_jax.convert import clap_audio, panns as panns_conv, vggish as vggish_conv
from tta_jax.convert.eval_backbones import LOADERS
from tta_jax.eval import suite


def _clips(names, seed):
    rng = np.random.default_rng(seed)
    return suite.ClipSet(list(names), [(0.1 * rng.normal(size=16000)).astype(np.float32) for _ in names],
                         [16000] * len(names), f"mem{seed}")


def test_loaders_are_the_converters_loaders():
    assert set(LOADERS) == set(suite.BACKBONES) == {"cnn14", "vggish", "clap"}
    assert LOADERS["cnn14"] is panns_conv.load_cnn14 and LOADERS["vggish"] is vggish_conv.load_vggish
    assert LOADERS["clap"] is clap_audio.load_clap_embedder


def test_weights_without_a_loader_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    w = tmp_path / "vggish.safetensors"
    w.write_bytes(b"x")
    gen, ref = _clips(["a", "b"], 0), _clips(["a", "b"], 1)
    cfg = suite.SuiteConfig(vggish=str(w), indomain=False)
    with pytest.raises(ValueError, match=r"weights found for vggish but loaders= has no entry.*eval_backbones"):
        suite.run_suite(gen, ref, cfg, log=lambda m: None)
    with pytest.raises(ValueError, match="vggish"):
        suite.run_suite(gen, ref, cfg, log=lambda m: None, loaders={"cnn14": LOADERS["cnn14"]})


def test_injected_loader_is_called_with_the_weights_path(tmp_path, monkeypatch):
    monkeypatch.setenv(suite.WEIGHTS_ENV, str(tmp_path / "none"))
    w = tmp_path / "vggish.safetensors"
    w.write_bytes(b"x")
    seen = []

    def fake_vggish(path):  # real VGGish architecture, random weights: no checkpoint needed
        from tta_jax.eval.vggish import init_variables

        seen.append(path)
        return init_variables()

    gen, ref = _clips([f"c{i}" for i in range(3)], 0), _clips([f"c{i}" for i in range(3)], 1)
    rep = suite.run_suite(gen, ref, suite.SuiteConfig(vggish=str(w), indomain=False), log=lambda m: None,
                          loaders={"vggish": fake_vggish})
    assert seen == [str(w)]
    assert np.isfinite(rep["metrics"]["fad_vggish"]) and rep["metrics"]["fad_vggish"] > 0
    assert {"fd_panns", "clap"} <= set(rep["skipped"])
