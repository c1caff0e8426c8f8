"""CLAP backend (transformers.ClapModel, tiny random config saved to a local directory): loading
offline, 48 kHz resampling / 10 s crop, unit-norm embeddings equal to calling ClapModel directly, and
CLAP / CLAP_A scores on top."""
import json

import numpy as np
import pytest

from tta_jax.eval import metrics as M


def _tiny_clap_dir(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig, RobertaTokenizer

    torch.manual_seed(0)
    audio = ClapAudioConfig(window_size=8, num_mel_bins=64, spec_size=256, patch_stride=4, patch_embeds_hidden_size=16,
                            hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=2,
                            projection_dim=24, enable_fusion=False)
    text = ClapTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=37, max_position_embeddings=40, projection_dim=24)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24)).eval()
    d = tmp_path / "clap"
    model.save_pretrained(d)
    ClapFeatureExtractor(feature_size=64, truncation="rand_trunc", padding="repeatpad").save_pretrained(d)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list("abcdefghijklmnopqrstuvwxyz")
                                          + ["Ġ" + c for c in "abcdefghijklmnopqrstuvwxyz"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    return d, model


@pytest.mark.parity
@pytest.mark.slow  # ~50 s on the shared 2-core machine (HTSAT at its real 256x256 input)
def test_clap_embedder_matches_clapmodel(tmp_path, rel_err):
    import torch
    from transformers import ClapFeatureExtractor

    from tta_jax.audio.io import resample
    from tta_jax.eval.clap import ClapEmbedder

    d, model = _tiny_clap_dir(tmp_path)
    emb = ClapEmbedder.from_pretrained(str(d))
    rng = np.random.default_rng(0)
    wavs = [rng.uniform(-0.3, 0.3, 16000 * 3).astype(np.float32), rng.uniform(-0.3, 0.3, 16000 * 12).astype(np.float32)]
    ours = emb.embed_audio(wavs, 16000)
    fe = ClapFeatureExtractor.from_pretrained(str(d))
    x48 = [resample(w, 16000, 48000)[: 480000] for w in wavs]
    with torch.no_grad():
        ref = model.get_audio_features(**fe(x48, sampling_rate=48000, return_tensors="pt")).pooler_output.numpy()
    assert ours.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, rtol=1e-5)
    assert rel_err(ours, ref) < 1e-4
    te = emb.embed_text(["a dog", "a cat barks"])
    with torch.no_grad():
        tref = model.get_text_features(**emb.tokenizer(["a dog", "a cat barks"], padding=True,
                                                         return_tensors="pt")).pooler_output.numpy()
    assert rel_err(te, tref) < 1e-4
    assert M.clap_score(te, ours) == pytest.approx(float(np.mean(np.sum(tref * ref, -1))), rel=1e-4, abs=1e-6)
    assert M.clap_audio_score(ours, ours) == pytest.approx(1.0, rel=1e-6)
