"""CLAP embedder in JAX (tiny random transformers.ClapModel saved to a local directory): the numpy front
end equals ClapFeatureExtractor, embeddings equal ClapModel.get_{audio,text}_features, CLAP / CLAP_A
scores on top, fused towers, and loading + embedding with torch blocked (safetensors and .bin)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tta_jax.eval import metrics as M

# torch looks uninstalled: `import torch` raises ModuleNotFoundError and importlib.util.find_spec("torch") is
# None (transformers probes with find_spec, so a finder that raises, as in test_packaging.py, breaks it).
BLOCK = ("import sys\n"
         "for _m in ('torch', 'tensorflow', 'diffusers'):\n"
         "    sys.modules[_m] = None\n")


def _tiny_clap_dir(tmp_path, fusion: bool = False, name: str = "clap"):
    torch = pytest.importorskip("torch")
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig,
                              RobertaTokenizer)

    torch.manual_seed(0)
    # Real front end / input size (64 mels, spec 256 -> 64x64 patch grid), tiny widths; depth 2 per stage so
    # both stages have a shifted-window block.
    audio = ClapAudioConfig(window_size=8, num_mel_bins=64, spec_size=256, patch_stride=4, patch_embeds_hidden_size=16,
                            hidden_size=32, depths=[2, 2], num_attention_heads=[2, 2], num_hidden_layers=2,
                            projection_dim=24, enable_fusion=fusion)
    text = ClapTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=37, max_position_embeddings=40, projection_dim=24)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24)).eval()
    with torch.no_grad():  # non-trivial audio tower: bias tables start at zero, BatchNorm stats at 0 / 1
        for n, p in model.audio_model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
        for n, b in model.audio_model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn_like(b))
            elif n.endswith("running_var"):
                b.copy_(0.5 + 2 * torch.rand_like(b))
    d = tmp_path / name
    model.save_pretrained(d)
    ClapFeatureExtractor(feature_size=64, frequency_min=50, truncation="fusion" if fusion else "rand_trunc",
                         padding="repeatpad").save_pretrained(d)  # as laion/larger_clap_general's
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list("abcdefghijklmnopqrstuvwxyz")
                                          + ["Ġ" + c for c in "abcdefghijklmnopqrstuvwxyz"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    return d, model


def _wavs():
    rng = np.random.default_rng(0)
    return [rng.uniform(-0.3, 0.3, 16000 * 3).astype(np.float32), rng.uniform(-0.3, 0.3, 16000 * 12).astype(np.float32)]


@pytest.mark.parametrize("fmin", [0.0, 50.0])
def test_mel_filters_match_transformers(fmin):
    from transformers.audio_utils import mel_filter_bank

    from tta_jax.eval.clap import mel_filters

    for htk, kw in ((True, dict(norm=None, mel_scale="htk")), (False, dict(norm="slaney", mel_scale="slaney"))):
        ref = mel_filter_bank(num_frequency_bins=513, num_mel_filters=64, min_frequency=fmin, max_frequency=14000,
                              sampling_rate=48000, **kw)
        np.testing.assert_allclose(mel_filters(513, 64, fmin, 14000.0, 48000, htk), ref, rtol=1e-9, atol=1e-12)


def test_fit_length_padding_modes():
    from tta_jax.eval.clap import ClapFrontendConfig, fit_length

    x = np.arange(1, 4, dtype=np.float32)  # 3 samples into 8
    cfg = dict(sampling_rate=8, max_length_s=1)
    np.testing.assert_array_equal(fit_length(x, ClapFrontendConfig(padding="repeatpad", **cfg)),
                                  [1, 2, 3, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(x, ClapFrontendConfig(padding="repeat", **cfg)), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fit_length(x, ClapFrontendConfig(padding="pad", **cfg)), [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(fit_length(np.arange(20.0), ClapFrontendConfig(**cfg)), np.arange(8.0))
    with pytest.raises(ValueError, match="empty"):
        fit_length(np.zeros(0), ClapFrontendConfig(**cfg))
    with pytest.raises(ValueError, match="padding"):
        ClapFrontendConfig(padding="mirror")


@pytest.mark.parity
@pytest.mark.parametrize("truncation", ["rand_trunc", "fusion"])
def test_frontend_matches_feature_extractor(truncation, rel_err):
    pytest.importorskip("torch")
    from transformers import ClapFeatureExtractor

    from tta_jax.eval.clap import ClapFrontendConfig, clap_features

    rng = np.random.default_rng(1)
    w3 = rng.uniform(-0.3, 0.3, 48000 * 3).astype(np.float32)
    w12 = (rng.normal(size=48000 * 12) * np.linspace(0.01, 0.5, 48000 * 12)).astype(np.float32)
    fe = ClapFeatureExtractor(feature_size=64, truncation=truncation, padding="repeatpad")
    cfg = ClapFrontendConfig.from_dict(fe.to_dict())
    ours = clap_features([w3, w12], cfg)  # the 12 s clip: its first 10 s
    ref = fe([w3, w12[:480000]], sampling_rate=48000, return_tensors="np")["input_features"]
    assert ours.shape == ref.shape == (2, 4 if truncation == "fusion" else 1, 1001, 64)
    for i, clip in enumerate(("3 s", "12 s")):
        err = rel_err(ours[i], ref[i])
        print(f"front end {truncation} {clip}: rel err {err:.2e}")
        assert err < 1e-4
    fe_db = ClapFeatureExtractor(feature_size=64, truncation=truncation, top_db=60)  # top_db: unused by both
    ref_db = fe_db([w3], sampling_rate=48000, return_tensors="np")["input_features"]
    assert rel_err(clap_features([w3], ClapFrontendConfig.from_dict(fe_db.to_dict())), ref_db) < 1e-4
    assert ref_db.min() < -90  # (it would clip at max - 60 dB otherwise)


@pytest.mark.parity
def test_clap_embedder_matches_clapmodel(tmp_path, rel_err):
    import torch
    from transformers import ClapFeatureExtractor

    from tta_jax.audio.io import resample
    from tta_jax.convert.clap_audio import load_clap_embedder

    d, model = _tiny_clap_dir(tmp_path)
    emb = load_clap_embedder(str(d))
    wavs = _wavs()
    ours = emb.embed_audio(wavs, 16000)
    fe = ClapFeatureExtractor.from_pretrained(str(d))
    x48 = [resample(w, 16000, 48000)[: 480000] for w in wavs]
    with torch.no_grad():
        ref = model.get_audio_features(**fe(x48, sampling_rate=48000, return_tensors="pt")).pooler_output.numpy()
    assert ours.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb.embed_audio(wavs, 16000, batch=1), ours, rtol=0, atol=1e-6)  # batching
    texts = ["a dog", "a cat barks", "birds"]
    te = emb.embed_text(texts, batch=2)
    with torch.no_grad():
        tref = model.get_text_features(**emb.tokenizer(texts, padding=True, return_tensors="pt")).pooler_output.numpy()
    ea, et = rel_err(ours, ref), rel_err(te, tref)
    print(f"ClapEmbedder vs ClapModel: audio rel err {ea:.2e}, text rel err {et:.2e}")
    assert ea < 1e-4 and et < 1e-4
    assert M.clap_score(te[:2], ours) == pytest.approx(float(np.mean(np.sum(tref[:2] * ref, -1))), rel=1e-4, abs=1e-6)
    assert M.clap_audio_score(ours, ours) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parity
def test_clap_embedder_fused_tower(tmp_path, rel_err):
    import torch
    from transformers import ClapFeatureExtractor

    from tta_jax.convert.clap_audio import load_clap_embedder

    d, model = _tiny_clap_dir(tmp_path, fusion=True)
    emb = load_clap_embedder(str(d))
    wavs = [w[: 48000 * 3] for w in _wavs()]  # at 48 kHz: 3 s and 3 s
    ours = emb.embed_audio(wavs, 48000)
    feats = ClapFeatureExtractor.from_pretrained(str(d))(wavs, sampling_rate=48000, return_tensors="pt")
    assert tuple(feats["input_features"].shape) == (2, 4, 1001, 64)
    with torch.no_grad():  # no clip is longer than 10 s (the extractor would flag a random one)
        ref = model.get_audio_features(input_features=feats["input_features"],
                                       is_longer=torch.zeros(2, 1, dtype=torch.bool)).pooler_output.numpy()
    print(f"ClapEmbedder fused vs ClapModel: audio rel err {rel_err(ours, ref):.2e}")
    assert rel_err(ours, ref) < 1e-4


def test_clap_embedder_missing_dir(tmp_path):
    from tta_jax.convert.clap_audio import load_clap_embedder

    with pytest.raises(FileNotFoundError, match="nope"):
        load_clap_embedder(str(tmp_path / "nope"))


def test_clap_embedder_runs_without_torch(tmp_path):
    from tta_jax.convert.clap_audio import load_clap_embedder

    d, model = _tiny_clap_dir(tmp_path)  # (torch builds the reference folder; skipped without it)
    import torch

    dbin = tmp_path / "clap_bin"  # same model as a pickled pytorch_model.bin
    dbin.mkdir()
    for f in d.iterdir():
        if f.name != "model.safetensors":
            (dbin / f.name).write_bytes(f.read_bytes())
    torch.save(model.state_dict(), dbin / "pytorch_model.bin")

    wav = _wavs()[0]
    np.save(tmp_path / "wav.npy", wav)
    code = BLOCK + (
        "import numpy as np\n"
        "from tta_jax.convert.clap_audio import load_clap_embedder\n"
        f"e = load_clap_embedder({str(d)!r})\n"
        f"a = e.embed_audio([np.load({str(tmp_path / 'wav.npy')!r})], 16000)\n"
        "t = e.embed_text(['a dog'])\n"
        f"b = load_clap_embedder({str(dbin)!r})\n"
        "np.testing.assert_array_equal(b.embed_text(['a dog']), t)\n"
        "assert sys.modules['torch'] is None and not [m for m in sys.modules if m.startswith('torch.')]\n"
        "import importlib.util; assert importlib.util.find_spec('torch') is None\n"
        f"np.save({str(tmp_path / 'a.npy')!r}, a); np.save({str(tmp_path / 't.npy')!r}, t)\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    emb = load_clap_embedder(str(d))
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), emb.embed_audio([wav], 16000), atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), emb.embed_text(["a dog"]), atol=1e-6)
