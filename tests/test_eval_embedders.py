"""Embedders vs PyTorch references with random weights (<= 1e-4 relative).

- PANNs CNN14: audioldm_eval 0.0.3's ``feature_extractors.panns.models.Cnn14`` (16 kHz config of its
  EvaluationHelper). Its constructor downloads/loads ``ckpt/*.pth``; the test stubs the load so the
  model keeps random weights (xavier init + randomised BatchNorm statistics).
- VGGish: a torchvggish-style PyTorch module written below (same layer indices as
  harritaylor/torchvggish, so its state dict has the real checkpoint's key names) fed by a float64
  numpy port of the AudioSet ``mel_features.py`` front end.
"""
import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.convert.common import ConversionError
from tta_jax.convert.panns import convert_cnn14
from tta_jax.convert.vggish import convert_vggish
from tta_jax.eval import frontends, panns, vggish


def _import_ae_cnn14(monkeypatch):
    spec = importlib.util.find_spec("audioldm_eval")
    if spec is None:
        pytest.skip("audioldm-eval==0.0.3 not installed")
    pytest.importorskip("torchlibrosa")
    # the package __init__ pulls torchaudio/ssr_eval; a bare package stub lets the submodule import
    pkg = types.ModuleType("audioldm_eval")
    pkg.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "audioldm_eval", pkg)
    for k in [k for k in sys.modules if k.startswith("audioldm_eval.")]:
        monkeypatch.delitem(sys.modules, k)
    return importlib.import_module("audioldm_eval.feature_extractors.panns.models")


def _randomise_bn(model, torch, seed=0):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parity
@pytest.mark.slow  # ~35 s on 2 shared cores (80M-param model built twice)
def test_cnn14_matches_audioldm_eval(monkeypatch, tmp_path, rel_err):
    import torch

    from tta_jax.convert.common import torch_state_dict_to_numpy

    models = _import_ae_cnn14(monkeypatch)
    monkeypatch.chdir(tmp_path)
    os.makedirs("ckpt")
    open("ckpt/Cnn14_mAP=0.431.pth", "wb").close()  # stops the wget branch
    monkeypatch.setattr(torch, "load", lambda *a, **k: {"model": {}})
    monkeypatch.setattr(models.Cnn14, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    ref = models.Cnn14(features_list=["2048", "logits"], sample_rate=16000, window_size=512, hop_size=160,
                       mel_bins=64, fmin=50, fmax=8000, classes_num=527)
    ref.init_weight()
    for i in range(1, 7):
        getattr(ref, f"conv_block{i}").init_weight()
    with torch.no_grad():
        _randomise_bn(ref, torch)
    ref.eval()
    wav = np.random.default_rng(0).normal(size=(2, 16000)).astype(np.float32) * 0.1
    with torch.no_grad():
        out = ref(torch.from_numpy(wav))
    variables, report = convert_cnn14(torch_state_dict_to_numpy(ref.state_dict()))
    assert report.ok
    ours = jax.jit(panns.Cnn14().apply)(variables, jnp.asarray(wav))
    # front end alone
    with torch.no_grad():
        lm_ref = ref.logmel_extractor(ref.spectrogram_extractor(torch.from_numpy(wav)))[:, 0].numpy()
    lm = np.asarray(panns.Cnn14().apply(variables, jnp.asarray(wav), method=panns.Cnn14.logmel))
    assert rel_err(lm, lm_ref) < 1e-4
    e_emb = rel_err(ours["embedding"], out["2048"].numpy())
    e_log = rel_err(ours["logits"], out["logits"].numpy())
    print(f"CNN14 parity: logmel {rel_err(lm, lm_ref):.2e} embedding {e_emb:.2e} logits {e_log:.2e}")
    assert e_emb < 1e-4 and e_log < 1e-4


def test_cnn14_converter_names_bad_keys():
    sd = {k: np.zeros(s, np.float32) for k, s in {"bn0.weight": (64,)}.items()}
    with pytest.raises(ConversionError, match="source checkpoint has no key 'bn0.bias'"):
        convert_cnn14(sd)


# --------------------------------------------------------------------------------------------------
# VGGish reference (torchvggish layout) + numpy mel_features front end
# --------------------------------------------------------------------------------------------------
def _np_vggish_examples(wav):
    """AudioSet vggish_input.waveform_to_examples for 16 kHz float input, in float64 numpy."""
    win, hop, nfft = 400, 160, 512
    n = 1 + (len(wav) - win) // hop
    frames = np.stack([wav[i * hop: i * hop + win] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))
    mag = np.abs(np.fft.rfft(frames * window, nfft))
    # spectrogram_to_mel_matrix (HTK mel, 125-7500 Hz, DC row zeroed)
    h2m = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = h2m(np.linspace(0, 8000, nfft // 2 + 1))
    edges = np.linspace(h2m(125.0), h2m(7500.0), 66)
    mw = np.zeros((nfft // 2 + 1, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        mw[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    mw[0] = 0
    lm = np.log(mag @ mw + 0.01)
    k = 1 + (len(lm) - 96) // 96
    return np.stack([lm[i * 96:(i + 1) * 96] for i in range(k)])


def _torch_vggish(torch):
    nn = torch.nn

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c_in = [], 1
            for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                    c_in = v
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                            nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))

        def forward(self, x):  # [N, 1, 96, 64]
            x = self.features(x)
            x = torch.transpose(x, 1, 3)
            x = torch.transpose(x, 1, 2).contiguous()
            return self.embeddings(x.view(x.size(0), -1))

    return VGG()


def test_vggish_frontend_matches_numpy_mel_features(rel_err):
    wav = np.random.default_rng(1).uniform(-0.5, 0.5, size=2 * 16000)
    ref = _np_vggish_examples(wav)
    ours = np.asarray(frontends.vggish_examples(jnp.asarray(wav[None], jnp.float32)))[0]
    assert ours.shape == ref.shape == (2, 96, 64)
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parity
def test_vggish_matches_torchvggish_style_reference(rel_err):
    import torch

    from tta_jax.convert.common import torch_state_dict_to_numpy

    torch.manual_seed(0)
    ref = _torch_vggish(torch).eval()
    for p in ref.parameters():  # keep activations O(1) through 9 layers
        torch.nn.init.normal_(p, std=0.02 if p.dim() > 1 else 0.05)
    wav = np.random.default_rng(2).uniform(-0.5, 0.5, size=int(2.5 * 16000))
    ex = _np_vggish_examples(wav)
    with torch.no_grad():
        out_ref = ref(torch.from_numpy(ex[:, None]).float()).numpy()
        pre_ref = ref.embeddings[:-1](  # without the final ReLU (audioldm_eval FAD setting)
            torch.transpose(torch.transpose(ref.features(torch.from_numpy(ex[:, None]).float()), 1, 3), 1, 2)
            .reshape(len(ex), -1)).numpy()
    variables, report = convert_vggish(torch_state_dict_to_numpy(ref.state_dict()))
    assert report.ok
    ours_relu = vggish.make_embed_fn(variables, final_relu=True)(jnp.asarray(wav[None], jnp.float32))[0]
    ours = vggish.make_embed_fn(variables)(jnp.asarray(wav[None], jnp.float32))[0]
    e1, e2 = rel_err(ours_relu, out_ref), rel_err(ours, pre_ref)
    print(f"VGGish parity: final_relu {e1:.2e}, fad-setting {e2:.2e}")
    assert ours.shape == (2, 128)
    assert e1 < 1e-4 and e2 < 1e-4
