"""BigVGAN as the mel-image codecs' vocoder (``codec.vocoder_type="bigvgan"``, tta_jax/codecs/registry.py):
random init and a released-layout folder (config.json + bigvgan_generator.pt) decode through the one
MelImageCodec; a vocoder that does not fit the mel front end fails naming the key; the default (HiFi-GAN)
codec keeps its manifest info and ident (precompute folds the ident into its config hash)."""
import json
import re

import jax
import numpy as np
import pytest

from tta_jax.codecs.registry import build_codec, resolve_codec_section
from tta_jax.errors import ConfigError
from tta_jax.sections import MissingWeights, random_init

# AudioLDM mechanism at test size: 32 mels, hop 160, VAE /4
LDM_TINY = {"name": "audioldm_mel_vae", "init": "random", "n_mels": 32, "vae_config": "audioldm_tiny",
            "vocoder_config": "tiny"}
BIG_TINY = {**LDM_TINY, "vocoder_type": "bigvgan"}
# the tiny BigVGAN of bigvgan_presets(), as a released config.json (num_mels set per test)
TINY_JSON = dict(upsample_rates=[10, 4, 4], upsample_kernel_sizes=[20, 8, 8], upsample_initial_channel=16,
                 resblock="1", resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], activation="snakebeta",
                 snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False, sampling_rate=16000)
# audioldm_mel_vae's info / ident before vocoder_type existed (LDM_TINY): precomputed data keeps its hash
LDM_TINY_INFO = {"image": "audioldm", "init": "random", "mel": "audioldm", "n_mels": 32, "name": "audioldm_mel_vae",
                 "sample": False, "sample_rate": 16000, "sample_seed": 0, "scaling_factor": 0.9227914214134216,
                 "seed": 0, "vae": "", "vae_config": "audioldm_tiny", "vae_workdir": "", "vocoder": "",
                 "vocoder_config": "tiny"}


def _audio(n, b=1):
    t = np.arange(n) / 16000.0
    return np.stack([0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) for i in range(b)]).astype(np.float32)


def _round_trip(c, frames=48):
    n = 160 * frames
    z = np.asarray(c.encode(_audio(n)))
    t = frames // 4
    assert z.shape == (1, 8, t, 8) == (1, *c.latent_shape(n))
    y = np.asarray(c.decode(z))
    assert y.shape == (1, t * c.hop_length) and y.dtype == np.float32 and np.all(np.isfinite(y))
    return y


def test_random_bigvgan_decodes_latent_frames_times_hop():
    c = build_codec(BIG_TINY)
    assert (c.sample_rate, c.hop_length, c.latent_height) == (16000, 640, 8)
    y = _round_trip(c)
    assert 0 < np.std(y) and np.max(np.abs(y)) <= 1.0   # BigVGAN v2 clamps to [-1, 1]
    assert c.info["vocoder_type"] == "bigvgan" and "bigvgan" in c.ident


def test_default_hifigan_codec_info_and_ident_are_unchanged():
    assert resolve_codec_section({"name": "audioldm_mel_vae"})["vocoder_type"] == "hifigan"
    c = build_codec(LDM_TINY)
    assert c.info == LDM_TINY_INFO
    assert c.ident == "audioldm_mel_vae" + json.dumps(LDM_TINY_INFO, sort_keys=True)


def test_vocoder_type_and_mismatched_presets_name_the_key():
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder_type='bigvgn' is not one of"):
        build_codec({**BIG_TINY, "vocoder_type": "bigvgn"})
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder_config='nope' is not one of .*'tiny'"):
        build_codec({**BIG_TINY, "vocoder_config": "nope"})
    # a 22.05 kHz / hop-256 BigVGAN under the 16 kHz / hop-160 audioldm mel (refused before any init)
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder_config='v2_22k_80band': a bigvgan vocoder taking "
                                          r"num_mels=32 at hop_length=256 .* config\.codec\.mel='audioldm'.*"
                                          r"hop_length=160"):
        build_codec({**BIG_TINY, "vocoder_config": "v2_22k_80band"})


# ------------------------------------------------------------------------------------------ released folder
def _torch_name(path: str) -> str:
    """BigVGAN param path -> NVIDIA state-dict key (inverse of tta_jax.convert.bigvgan's mapping)."""
    name = path.replace("/", ".").replace(".kernel", ".weight")
    name = re.sub(r"^ups_(\d+)\.", r"ups.\1.0.", name)
    name = re.sub(r"^resblocks_(\d+)\.", r"resblocks.\1.", name)
    name = re.sub(r"\.(convs[12]?)_(\d+)\.", r".\1.\2.", name)
    name = re.sub(r"\.act_(\d+)\.", r".activations.\1.", name)
    return name.replace("act_post.", "activation_post.")


def _write_folder(folder, num_mels: int, seed: int = 0):
    """A released-layout BigVGAN folder (config.json + bigvgan_generator.pt = {"generator": state dict with
    weight_g / weight_v pairs and the fixed filter buffers}) of the tiny architecture with random weights ->
    its flax params (flattened)."""
    torch = pytest.importorskip("torch")
    from tta_jax.convert.common import flatten_params
    from tta_jax.vocoders.bigvgan import BigVGAN, BigVGANConfig, kaiser_sinc_filter

    h = dict(TINY_JSON, num_mels=num_mels)
    module = BigVGAN(BigVGANConfig.from_json_dict(h))
    shapes = flatten_params(jax.eval_shape(module.init_params, jax.random.PRNGKey(0)))  # nothing compiled
    rng = np.random.default_rng(seed)
    params = {k: (0.3 * rng.standard_normal(s.shape)).astype(np.float32) for k, s in shapes.items()}
    sd = {}
    for path, v in params.items():
        key = _torch_name(path)
        if key.endswith(".weight"):
            w = np.flip(np.transpose(v, (1, 2, 0)), axis=2) if key.startswith("ups.") else np.transpose(v, (2, 1, 0))
            sd[key[:-len("weight")] + "weight_v"] = w
            sd[key[:-len("weight")] + "weight_g"] = np.sqrt(np.sum(w * w, axis=(1, 2), keepdims=True))
        else:
            sd[key] = v
    sd["activation_post.upsample.filter"] = kaiser_sinc_filter(0.25, 0.3, 12).reshape(1, 1, 12)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(h))
    torch.save({"generator": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}},
               folder / "bigvgan_generator.pt")
    return params


@pytest.fixture(scope="module")
def vae_params():
    from tta_jax.codecs import kl_vae

    return random_init(lambda k: kl_vae.init_params(kl_vae.CONFIGS["audioldm_tiny"], k), 1)


@pytest.fixture()
def fake_vae(monkeypatch, tmp_path, vae_params):
    """``codec.vae``: an existing path whose 'loading' gives random tiny-VAE params (the VAE is not under test)."""
    from tta_jax.convert import kl_vae as convert_kl_vae

    monkeypatch.setattr(convert_kl_vae, "load_kl_vae", lambda path, cfg: vae_params)
    (tmp_path / "vae").mkdir()
    return str(tmp_path / "vae")


def test_released_layout_folder_loads_and_decodes(tmp_path, fake_vae):
    params = _write_folder(tmp_path / "bigvgan", num_mels=32)
    section = {**BIG_TINY, "init": "pretrained", "vae": fake_vae, "vocoder": str(tmp_path / "bigvgan")}
    c = build_codec(section)
    assert c.info["vocoder"] == str(tmp_path / "bigvgan") and c.info["vocoder_type"] == "bigvgan"
    from tta_jax.convert.common import flatten_params

    loaded = flatten_params(c.decode.__self__.params["vocoder"])   # the MelImageCodec behind the Codec
    assert sorted(loaded) == sorted(params)
    for k, v in params.items():
        np.testing.assert_allclose(np.asarray(loaded[k]), v, rtol=1e-5, atol=1e-6, err_msg=k)
    h, t, ch = c.latent_shape(160 * 48)   # decode only (encoding is the random test's)
    z = np.random.default_rng(0).standard_normal((1, h, t, ch)).astype(np.float32)
    y = np.asarray(c.decode(z))
    assert y.shape == (1, t * c.hop_length) == (1, 12 * 640) and np.all(np.isfinite(y)) and np.std(y) > 0


def test_released_folder_errors_name_the_key(tmp_path, fake_vae):
    _write_folder(tmp_path / "bigvgan8", num_mels=8)   # 8 mels: not the front end's 32
    section = {**BIG_TINY, "init": "pretrained", "vae": fake_vae, "vocoder": str(tmp_path / "bigvgan8")}
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder='.*bigvgan8': a bigvgan vocoder taking "
                                          r"num_mels=8 at hop_length=160 .* gives n_mels=32"):
        build_codec(section)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeights, match=r"config\.codec\.vocoder='.*empty'.*config\.json"):
        build_codec({**section, "vocoder": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder is empty"):
        build_codec({**section, "vocoder": ""})
