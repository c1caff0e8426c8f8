"""BigVGAN: anti-aliased SnakeBeta generator vs NVIDIA's pip ``bigvgan`` (random tiny config, no CUDA kernel)."""
import importlib.util

import jax
import numpy as np
import pytest

from tta_jax.convert.bigvgan import convert_bigvgan, load_bigvgan
from tta_jax.convert.common import ConversionError
from tta_jax.vocoders import bigvgan as BV

needs_bigvgan = pytest.mark.skipif(importlib.util.find_spec("bigvgan") is None,
                                   reason="pip install --no-deps bigvgan==2.4.1")

TINY = dict(num_mels=8, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4], upsample_initial_channel=16,
            resblock="1", resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 2]],
            activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False,
            sampling_rate=16000)


def _reference(h, seed=0):
    import torch
    from bigvgan.bigvgan import BigVGAN as TorchBigVGAN
    from bigvgan.env import AttrDict

    torch.manual_seed(seed)
    m = TorchBigVGAN(AttrDict(dict(h)), use_cuda_kernel=False).eval()
    with torch.no_grad():  # O(1) random weights everywhere so every path matters
        for name, p in m.named_parameters():
            if name.endswith("weight_v") or name.endswith("original1") or name.endswith(".weight"):
                p.copy_(torch.randn_like(p))
            elif name.endswith("weight_g") or name.endswith("original0"):
                p.copy_(torch.rand_like(p) + 0.5)
            elif "alpha" in name or "beta" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parity
@needs_bigvgan
@pytest.mark.parametrize("variant", [
    {},
    {"resblock": "2", "activation": "snake", "snake_logscale": False, "use_tanh_at_final": True,
     "use_bias_at_final": True},
])
def test_bigvgan_matches_nvidia_reference(variant):
    import torch

    from conftest import max_rel_err

    h = dict(TINY, **variant)
    ref = _reference(h)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    assert any(k.endswith("upsample.filter") for k in sd)
    cfg = BV.BigVGANConfig.from_json_dict(h)
    params, report = convert_bigvgan(sd, cfg)
    assert report.ok, report.summary()
    mel = np.random.default_rng(0).standard_normal((2, 9, 8)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel).transpose(1, 2)).squeeze(1).numpy()
    ours = np.asarray(jax.jit(BV.BigVGAN(cfg).apply)({"params": params}, mel))
    assert ours.shape == theirs.shape == (2, 9 * 8)
    err = max_rel_err(ours, theirs)
    assert err <= 1e-4, err
    assert 0.01 < np.std(theirs) and np.mean(np.abs(theirs) >= 1.0) < 0.5  # not saturated


@pytest.mark.parity
@needs_bigvgan
def test_resampling_filters_match():
    import torch
    from bigvgan.alias_free_activation.torch.filter import kaiser_sinc_filter1d
    from bigvgan.alias_free_activation.torch.resample import DownSample1d, UpSample1d

    np.testing.assert_allclose(BV.kaiser_sinc_filter(0.25, 0.3, 12),
                               kaiser_sinc_filter1d(0.25, 0.3, 12).reshape(-1).numpy(), atol=1e-7)
    x = np.random.default_rng(0).standard_normal((1, 3, 20)).astype(np.float32)
    with torch.no_grad():
        up = UpSample1d(2, 12)(torch.from_numpy(x)).numpy()
        down = DownSample1d(2, 12)(torch.from_numpy(x)).numpy()
    xt = np.transpose(x, (0, 2, 1))
    np.testing.assert_allclose(np.asarray(BV.upsample2x(xt)).transpose(0, 2, 1), up, atol=1e-5)
    np.testing.assert_allclose(np.asarray(BV.downsample2x(xt)).transpose(0, 2, 1), down, atol=1e-5)


def test_converter_errors_and_load(tmp_path):
    cfg = BV.BigVGANConfig.from_json_dict(TINY)
    with pytest.raises(ConversionError, match="no key 'conv_pre.weight'"):
        convert_bigvgan({}, cfg)
    bad = {"activation_post.upsample.filter": np.ones((1, 1, 12))}
    with pytest.raises(ConversionError, match="activation_post.upsample.filter"):
        convert_bigvgan(bad, cfg)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_bigvgan(tmp_path)
    with pytest.raises(ValueError, match=r"mel \[B, frames, 8\]"):
        m = BV.BigVGAN(cfg)
        m.init(jax.random.PRNGKey(0), np.zeros((1, 4, 7), np.float32))


@needs_bigvgan
def test_load_bigvgan_directory_torch_free(tmp_path):
    import json

    import torch

    ref = _reference(TINY, seed=2)
    torch.save({"generator": ref.state_dict()}, tmp_path / "bigvgan_generator.pt")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    module, params, cfg = load_bigvgan(tmp_path)
    mel = np.random.default_rng(1).standard_normal((1, 5, 8)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel).transpose(1, 2)).squeeze(1).numpy()
    ours = np.asarray(module.apply({"params": params}, mel))
    from conftest import max_rel_err

    assert max_rel_err(ours, theirs) <= 1e-4
