"""Oobleck waveform VAE: parity with diffusers.AutoencoderOobleck, converters, bottleneck math."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from tta_jax.codecs import oobleck as ob
from tta_jax.convert.common import ConversionError
from tta_jax.convert.oobleck import convert_oobleck

TOL = 1e-4

# diffusers ties the encoder output width to encoder_hidden_size (= 2 * latent), so the tiny parity
# config uses encoder_channels == 2 * latent_dim.
TINY = ob.OobleckConfig(sample_rate=8000, audio_channels=1, encoder_channels=4, decoder_channels=6,
                        channel_multiples=(1, 2), strides=(2, 4), latent_dim=2)


def _diffusers_model(cfg, seed=0):
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderOobleck

    torch.manual_seed(seed)
    model = AutoencoderOobleck(encoder_hidden_size=cfg.encoder_channels,
                               downsampling_ratios=list(cfg.strides),
                               channel_multiples=list(cfg.channel_multiples),
                               decoder_channels=cfg.decoder_channels,
                               decoder_input_channels=cfg.latent_dim,
                               audio_channels=cfg.audio_channels, sampling_rate=cfg.sample_rate).eval()
    # Random (non-zero) snake parameters and weight-norm gains so that every parameter matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") or name.endswith("beta"):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("weight_g"):
                p.mul_(0.5 + torch.rand_like(p))
    return model


def _sd(model):
    from tta_jax.convert.common import torch_state_dict_to_numpy
    return torch_state_dict_to_numpy(model.state_dict())


# Independent re-statement of stable-audio-tools' module nesting (from its autoencoders.py), used to
# build a SAT-layout checkpoint from the diffusers model.
def _diffusers_to_sat(sd, n, prefix="autoencoder."):
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        mod, rest = parts[0], parts[1:]
        if rest[0] == "block":
            i, sub, tail = int(rest[1]), rest[2], rest[3:]
            if sub.startswith("res_unit"):
                r = int(sub[-1])
                inner = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}[tail[0]]
                j = r - 1 if mod == "encoder" else r + 1
                new = [mod, "layers", str(1 + i), "layers", str(j), "layers", str(inner)] + tail[1:]
            else:
                j = {"encoder": {"snake1": 3, "conv1": 4}, "decoder": {"snake1": 0, "conv_t1": 1}}[mod][sub]
                new = [mod, "layers", str(1 + i), "layers", str(j)] + tail
        else:
            j = {"conv1": 0, "snake1": n + 1, "conv2": n + 2}[rest[0]]
            new = [mod, "layers", str(j)] + rest[1:]
        if new[-1] in ("alpha", "beta"):
            v = v.reshape(-1)
        out[prefix + ".".join(new)] = v
    out["discriminator.conv.weight"] = np.zeros((3, 3), np.float32)  # other modules are ignored
    return out


def _jit(module, method):
    return jax.jit(functools.partial(module.apply, method=method))


def _run_both(cfg, model, params, T=60, seed=1):
    import torch

    x = np.random.RandomState(seed).randn(2, T, cfg.audio_channels).astype(np.float32) * 0.5
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x.transpose(0, 2, 1))).latent_dist
        ref_mean = post.mean.numpy().transpose(0, 2, 1)
        ref_std = post.std.numpy().transpose(0, 2, 1)
        z = np.random.RandomState(seed + 1).randn(*ref_mean.shape).astype(np.float32)
        ref_dec = model.decode(torch.from_numpy(z.transpose(0, 2, 1))).sample.numpy().transpose(0, 2, 1)
    vae = ob.OobleckVAE(cfg)
    mean, std = _jit(vae, "encode")({"params": params}, jnp.asarray(x))
    dec = _jit(vae, "decode")({"params": params}, jnp.asarray(z))
    return (mean, ref_mean), (std, ref_std), (dec, ref_dec)


@pytest.mark.parity
def test_oobleck_matches_diffusers():
    model = _diffusers_model(TINY)
    params, report = convert_oobleck(_sd(model), TINY)
    assert report.ok, report.summary()
    (m, rm), (s, rs), (d, rd) = _run_both(TINY, model, params)
    errs = [max_rel_err(m, rm), max_rel_err(s, rs), max_rel_err(d, rd)]
    print("oobleck max rel err (mean, std, decode):", errs)
    assert m.shape == (2, 60 // TINY.hop_length, TINY.latent_dim)
    assert d.shape == rd.shape  # odd strides give (L-1)s + 2s - 2ceil(s/2) samples, as in PyTorch
    assert max(errs) <= TOL, errs


@pytest.mark.parity
def test_oobleck_stereo_three_stages_matches_diffusers():
    cfg = dataclasses.replace(TINY, audio_channels=2, channel_multiples=(1, 2, 2), strides=(2, 2, 3))
    model = _diffusers_model(cfg, seed=3)
    params, _ = convert_oobleck(_sd(model), cfg)
    (m, rm), _, (d, rd) = _run_both(cfg, model, params, T=72)
    assert max(max_rel_err(m, rm), max_rel_err(d, rd)) <= TOL


@pytest.mark.parity
def test_oobleck_stable_audio_tools_layout():
    model = _diffusers_model(TINY, seed=5)
    sat = _diffusers_to_sat(_sd(model), len(TINY.strides))
    params, report = convert_oobleck(sat, TINY)  # auto-detects layout "sat" and prefix "autoencoder."
    assert report.ok
    (m, rm), _, (d, rd) = _run_both(TINY, model, params)
    assert max(max_rel_err(m, rm), max_rel_err(d, rd)) <= TOL


@pytest.mark.parity
def test_oobleck_converter_errors_name_the_key():
    model = _diffusers_model(TINY)
    sd = _sd(model)
    bad = dict(sd)
    bad["decoder.block.1.res_unit2.conv1.bias_renamed"] = bad.pop("decoder.block.1.res_unit2.conv1.bias")
    with pytest.raises(ConversionError, match=r"decoder\.block\.1\.res_unit2\.conv1\.bias"):
        convert_oobleck(bad, TINY)
    bad = dict(sd)
    bad["encoder.snake1.alpha"] = np.zeros((1, 3, 1), np.float32)  # wrong channel count
    with pytest.raises(ConversionError, match=r"encoder/snake1/alpha"):
        convert_oobleck(bad, TINY)
    bad = dict(sd)
    bad["encoder.block.0.conv1.weight_v"] = bad["encoder.block.0.conv1.weight_v"].reshape(-1)
    with pytest.raises(ConversionError, match=r"encoder\.block\.0\.conv1"):
        convert_oobleck(bad, TINY)
    # strict=False reports instead of raising
    bad = dict(sd)
    bad.pop("encoder.conv2.bias")
    _, report = convert_oobleck(bad, TINY, strict=False)
    assert "encoder/conv2/bias" in report.missing


def test_named_configs_facts():
    ez = ob.get_config("ezaudio_24k")
    assert (ez.sample_rate, ez.hop_length, ez.latent_dim, ez.audio_channels) == (24000, 480, 128, 1)
    assert ez.latent_rate == 50
    sao = ob.get_config("stable_audio_open")
    assert (sao.sample_rate, sao.hop_length, sao.latent_dim, sao.audio_channels) == (44100, 2048, 64, 2)
    vae = ob.OobleckVAE(ez)
    assert (vae.sample_rate, vae.hop, vae.latent_dim, vae.latent_rate) == (24000, 480, 128, 50)
    shapes = ob.abstract_params(ez)
    assert shapes["encoder"]["conv2"]["kernel"].shape == (3, 1024, 256)  # emits mean + scale
    assert shapes["decoder"]["conv1"]["kernel"].shape == (7, 128, 1024)
    assert "bias" not in shapes["decoder"]["conv2"]


def test_shapes_sampling_and_kl():
    cfg = TINY
    # numpy-random params from the abstract tree (XLA compiles flax's RNG initialisers slowly on CPU)
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rs.randn(*a.shape), jnp.float32),
                          ob.abstract_params(cfg))
    vae = ob.OobleckVAE(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5 * cfg.hop_length, 1))
    mean, std = _jit(vae, "encode")({"params": params}, x)
    assert mean.shape == std.shape == (3, 5, cfg.latent_dim)
    assert bool(jnp.all(std > 1e-4 - 1e-9))
    recon, m2, _ = jax.jit(vae.apply)({"params": params}, x, jax.random.PRNGKey(2))
    assert recon.shape == x.shape and np.allclose(m2, mean)
    # sampling: mean + std * eps; statistics over many draws
    mu, sd = jnp.full((4000, 1, 2), 1.5), jnp.full((4000, 1, 2), 0.5)
    z = ob.sample_latent(jax.random.PRNGKey(3), mu, sd)
    assert abs(float(z.mean()) - 1.5) < 0.05 and abs(float(z.std()) - 0.5) < 0.05
    # KL: zero only for the standard normal, matches the closed form otherwise
    assert abs(float(ob.kl_loss(jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 4))))) < 1e-6
    m = jnp.asarray(np.random.RandomState(0).randn(2, 3, 4), jnp.float32)
    s = jnp.asarray(np.random.RandomState(1).rand(2, 3, 4) + 0.2, jnp.float32)
    expected = np.mean(np.sum(np.square(m) + np.square(s) - 2 * np.log(s) - 1, axis=-1))
    assert np.isclose(float(ob.kl_loss(m, s)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="expects audio"):
        vae.apply({"params": params}, jnp.zeros((1, 24, 2)), method="encode")


@pytest.mark.parity
def test_stable_audio_open_config_is_diffusers_default():
    import inspect

    from diffusers import AutoencoderOobleck

    d = {k: v.default for k, v in inspect.signature(AutoencoderOobleck.__init__).parameters.items()
         if v.default is not inspect.Parameter.empty}
    sao = ob.get_config("stable_audio_open")
    assert (d["encoder_hidden_size"], d["decoder_channels"]) == (sao.encoder_channels, sao.decoder_channels)
    assert tuple(d["downsampling_ratios"]) == sao.strides
    assert tuple(d["channel_multiples"]) == sao.channel_multiples
    assert (d["decoder_input_channels"], d["audio_channels"], d["sampling_rate"]) == (
        sao.latent_dim, sao.audio_channels, sao.sample_rate)
    assert d["encoder_hidden_size"] == 2 * sao.latent_dim
