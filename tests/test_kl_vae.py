"""2-D KL VAE: parity with diffusers.AutoencoderKL (SD-tiny and AudioLDM-tiny), converter errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from tta_jax.codecs import kl_vae as kv
from tta_jax.convert.common import ConversionError, torch_state_dict_to_numpy
from tta_jax.convert.kl_vae import convert_kl_vae

TOL = 1e-4


def _diffusers_model(cfg, seed=0):
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    torch.manual_seed(seed)
    model = AutoencoderKL(in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                          down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                          block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                          latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
                          scaling_factor=cfg.scaling_factor).eval()
    with torch.no_grad():  # non-trivial norm affine params
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _compare(cfg, hw, seed=0):
    import torch

    model = _diffusers_model(cfg, seed)
    params, report = convert_kl_vae(torch_state_dict_to_numpy(model.state_dict()), cfg)
    assert report.ok, report.summary()
    rs = np.random.RandomState(seed + 1)
    x = rs.randn(2, *hw, cfg.in_channels).astype(np.float32)
    f = cfg.downsample_factor
    z = rs.randn(2, hw[0] // f, hw[1] // f, cfg.latent_channels).astype(np.float32)
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
        ref_mean = post.mean.numpy().transpose(0, 2, 3, 1)
        ref_std = post.std.numpy().transpose(0, 2, 3, 1)
        ref_dec = model.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample.numpy().transpose(0, 2, 3, 1)
    vae = kv.KLVAE(cfg)
    enc = jax.jit(functools.partial(vae.apply, method="encode"))
    dec = jax.jit(functools.partial(vae.apply, method="decode"))
    mean, std = enc({"params": params}, jnp.asarray(x))
    out = dec({"params": params}, jnp.asarray(z))
    errs = (max_rel_err(mean, ref_mean), max_rel_err(std, ref_std), max_rel_err(out, ref_dec))
    return errs, model


@pytest.mark.parity
def test_kl_vae_sd_tiny_matches_diffusers():
    errs, _ = _compare(kv.get_config("sd_tiny"), (16, 24))
    print("KL-VAE sd_tiny max rel err (mean, std, decode):", errs)
    assert max(errs) <= TOL, errs


@pytest.mark.parity
def test_kl_vae_audioldm_tiny_matches_diffusers():
    errs, _ = _compare(kv.get_config("audioldm_tiny"), (32, 16))  # [T, mel] image, 1 channel
    print("KL-VAE audioldm_tiny max rel err (mean, std, decode):", errs)
    assert max(errs) <= TOL, errs


@pytest.mark.parity
def test_kl_vae_converter_errors_name_the_key():
    cfg = kv.get_config("sd_tiny")
    sd = torch_state_dict_to_numpy(_diffusers_model(cfg).state_dict())
    bad = dict(sd)
    bad["decoder.up_blocks.1.resnets.0.conv1.weigth"] = bad.pop("decoder.up_blocks.1.resnets.0.conv1.weight")
    with pytest.raises(ConversionError, match=r"decoder\.up_blocks\.1\.resnets\.0\.conv1\.weight"):
        convert_kl_vae(bad, cfg)
    bad = dict(sd)
    bad["encoder.mid_block.attentions.0.to_k.weight"] = bad["encoder.mid_block.attentions.0.to_k.weight"][:, :8]
    with pytest.raises(ConversionError, match=r"encoder/mid_block/attentions_0/to_k/kernel"):
        convert_kl_vae(bad, cfg)
    bad = dict(sd)
    bad["quant_conv.weight"] = bad["quant_conv.weight"].reshape(8, 8)
    with pytest.raises(ConversionError, match=r"quant_conv\.weight"):
        convert_kl_vae(bad, cfg)
    bad = dict(sd)
    bad["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"encoder\.extra\.weight"):
        convert_kl_vae(bad, cfg)
    # legacy attention names (query/key/value/proj_attn) as in older hub VAEs
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in sd.items():
        for new, old in names.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[k] = v
    p_new, _ = convert_kl_vae(sd, cfg)
    p_old, _ = convert_kl_vae(legacy, cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, p_new, p_old))


def test_named_configs_and_shapes():
    sd15 = kv.get_config("sd_v1_5")
    assert (sd15.downsample_factor, sd15.latent_channels, sd15.scaling_factor) == (8, 4, 0.18215)
    aldm = kv.get_config("audioldm")
    assert (aldm.downsample_factor, aldm.latent_channels, aldm.in_channels) == (4, 8, 1)
    assert abs(aldm.scaling_factor - 0.9227914214134216) < 1e-12
    shapes = kv.abstract_params(aldm)
    assert shapes["encoder"]["conv_out"]["kernel"].shape == (3, 3, 512, 16)
    assert shapes["decoder"]["up_blocks_2"]["resnets_2"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    cfg = kv.get_config("audioldm_tiny")
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: jnp.asarray(0.2 * rs.randn(*a.shape), jnp.float32), kv.abstract_params(cfg))
    vae = kv.KLVAE(cfg)
    x = jnp.asarray(rs.randn(1, 16, 8, 1), jnp.float32)
    recon, mean, std = jax.jit(vae.apply)({"params": params}, x, jax.random.PRNGKey(0))
    assert recon.shape == x.shape and mean.shape == std.shape == (1, 4, 2, 8)
    kl = kv.kl_loss(mean, std)
    assert kl.shape == (1,) and bool(jnp.all(kl >= 0))
    assert np.allclose(vae.unscale_latents(vae.scale_latents(mean)), mean, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.apply({"params": params}, jnp.zeros((1, 10, 8, 1)), method="encode")
