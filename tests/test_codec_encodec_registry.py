"""EnCodec in the codec registry (``encodec``: continuous latents, ``encodec_tokens``: integer codes as float32)
and in the convert registry (``--family encodec``): shapes, hop, decode length, tokens vs latents, a
transformers EncodecModel folder through ``weights``, errors naming config.codec.<key>."""
import dataclasses

import jax
import numpy as np
import pytest

from tta_jax.codecs import encodec as ec
from tta_jax.codecs.registry import build_codec
from tta_jax.errors import ConfigError, InvalidArgument
from tta_jax.sections import MissingWeights, random_init

TINY = {"init": "random", "preset": "tiny", "bandwidth": 0.8}   # hop 4, 100 Hz at 400 Hz, 2 x 16 codes at 0.8 kbps


def _audio(n, b=2, seed=0):
    return (0.5 * np.random.default_rng(seed).standard_normal((b, n))).astype(np.float32)


@pytest.fixture(scope="module")
def random_pair():
    return build_codec({"name": "encodec", **TINY}), build_codec({"name": "encodec_tokens", **TINY})


def test_random_latents_and_tokens(random_pair):
    lat, tok = random_pair
    cfg = ec.get_config("tiny")
    for c in (lat, tok):
        assert (c.sample_rate, c.hop_length, c.layout, c.latent_height) == (400, 4, "sequence", None)
        assert c.info["num_codebooks"] == 2 and c.info["sample_rate"] == 400
    assert (lat.latent_channels, tok.latent_channels) == (cfg.dim, 2)
    audio = _audio(41)                                                   # not a multiple of the hop
    t = np.asarray(tok.encode(audio))
    z = np.asarray(lat.encode(audio))
    assert t.shape == (2, 11, 2) == (2, *tok.latent_shape(41)) and t.dtype == np.float32
    assert z.shape == (2, 11, cfg.dim) == (2, *lat.latent_shape(41))
    assert np.all(t == np.round(t)) and t.min() >= 0 and t.max() < cfg.codebook_size
    assert len(np.unique(t)) > 2                                         # codes vary (random N(0, 1) codebooks)
    # same section -> same weights: the latents are codes_to_latents of the tokens
    params = random_init(lambda k: ec.init_params(cfg, k), 0)
    want = ec.EncodecModel(cfg).apply({"params": params}, t.astype(np.int32), method="codes_to_latents")
    np.testing.assert_allclose(z, np.asarray(want), atol=1e-6)
    y_lat, y_tok = np.asarray(lat.decode(z)), np.asarray(tok.decode(t))
    assert y_lat.shape == y_tok.shape == (2, 11 * 4) and y_lat.dtype == np.float32 and np.all(np.isfinite(y_lat))
    np.testing.assert_allclose(y_tok, y_lat, atol=1e-5)                  # decode(codes) = decode_latents(latents)
    assert lat.info != tok.info and lat.ident.startswith("encodec{") and tok.ident.startswith("encodec_tokens{")


def test_bad_bandwidth_and_preset_name_the_key():
    with pytest.raises(ConfigError, match=r"config\.codec\.bandwidth=0\.5.*\[0\.4, 0\.8, 1\.6\]"):
        build_codec({"name": "encodec", "init": "random", "preset": "tiny", "bandwidth": 0.5})
    with pytest.raises(ConfigError, match=r"config\.codec\.preset='tinny'"):
        build_codec({"name": "encodec", "init": "random", "preset": "tinny"})


def test_missing_weights_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.codec\.weights is empty"):
        build_codec({"name": "encodec"})
    with pytest.raises(MissingWeights, match=r"config\.codec\.weights='.*nowhere'"):
        build_codec({"name": "encodec_tokens", "weights": str(tmp_path / "nowhere")})
    with pytest.raises(MissingWeights, match=r"config\.codec\.weights=.*config\.json"):
        build_codec({"name": "encodec", "weights": str(tmp_path)})      # a folder without config.json


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random transformers EncodecModel (the ``tiny`` preset's architecture) saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = ec.get_config("tiny")
    hc = transformers.EncodecConfig(**{k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in dataclasses.asdict(cfg).items()})
    torch.manual_seed(0)
    model = transformers.EncodecModel(hc).eval()
    with torch.no_grad():   # transformers inits codebooks to zero: the first from encoder frames, then noise
        frames = model.encoder(0.5 * torch.randn(4, 1, 80)).permute(0, 2, 1).reshape(-1, cfg.hidden_size)
        std = float(frames.std(0).mean())   # across frames (the channel means dominate the overall std)
        picks = frames[torch.randperm(len(frames))[:cfg.codebook_size]]
        for q, layer in enumerate(model.quantizer.layers):
            noise = std * 0.6 ** q * torch.randn_like(layer.codebook.embed)
            layer.codebook.embed.copy_(picks + 0.3 * noise if q == 0 else noise)
    path = tmp_path_factory.mktemp("encodec_hf")
    model.save_pretrained(path)
    return str(path), model


@pytest.mark.parametrize("bandwidth", [1.6, 0])   # 0 (the default): the smallest, as transformers' None
def test_transformers_folder_tokens_match(hf_folder, bandwidth):
    import torch

    path, model = hf_folder
    section = {"name": "encodec_tokens", "weights": path, "preset": "tiny"}
    c = build_codec({**section, "bandwidth": bandwidth} if bandwidth else section)
    k = 4 if bandwidth else 1
    assert (c.sample_rate, c.hop_length, c.latent_channels) == (400, 4, k) and c.info["weights"] == path
    audio = _audio(41, seed=1)
    with torch.no_grad():
        enc = model.encode(torch.from_numpy(audio)[:, None], bandwidth=bandwidth or None)
    ref = enc.audio_codes[0].permute(0, 2, 1).numpy()   # [1, B, K, T] -> [B, T, K]
    t = np.asarray(c.encode(audio))
    assert ref.shape == (2, 11, k) and len(np.unique(ref)) > 2
    np.testing.assert_array_equal(t.astype(np.int64), ref)
    with pytest.raises(ConfigError, match=r"config\.codec\.preset='encodec_24khz' differs.*config\.codec\.weights"):
        build_codec({"name": "encodec", "weights": path, "preset": "encodec_24khz"})


def test_convert_family_encodec(hf_folder, tmp_path):
    from safetensors.numpy import load_file

    from tta_jax.convert.common import flatten_params
    from tta_jax.convert.registry import FAMILIES, convert

    path, _ = hf_folder
    assert "encodec" in FAMILIES
    out = convert("encodec", path, None, str(tmp_path / "out"))
    flat = load_file(out)
    want = {k: v.shape for k, v in flatten_params(ec.abstract_params("tiny")).items()}
    assert {k: v.shape for k, v in flat.items()} == want
    with pytest.raises(InvalidArgument, match="--config is not used for encodec"):
        convert("encodec", path, "tiny", str(tmp_path / "out2"))
    with pytest.raises(InvalidArgument, match="EncodecModel folder"):
        convert("encodec", str(tmp_path / "out" / "params.safetensors"), None, str(tmp_path / "out3"))
