"""Codec and text-encoder registries (tta_jax/codecs/registry.py, tta_jax/text/registry.py): round trips,
layout facts, deterministic random init, errors that name the key / path, manifest comparison."""
import numpy as np
import pytest

from tta_jax import sections
from tta_jax.codecs.registry import CODECS, IMAGE, SEQUENCE, build_codec, resolve_codec_section
from tta_jax.errors import ConfigError
from tta_jax.sections import MissingWeights
from tta_jax.text.registry import TEXT_ENCODERS, build_text_encoder, resolve_text_section

OOBLECK_TINY = {"name": "oobleck", "preset": "tiny", "init": "random", "seed": 3}
# Auffusion mechanism at test size: 32 mels (not 256), SD-VAE with 2 levels (/2), 16 kHz tiny HiFi-GAN
KL_TINY = {"name": "kl_mel_image", "init": "random", "n_mels": 32, "vae_config": "sd_tiny", "vocoder_config": "tiny"}
LDM_TINY = {"name": "audioldm_mel_vae", "init": "random", "n_mels": 32, "vae_config": "audioldm_tiny",
            "vocoder_config": "tiny"}


def _audio(n, b=2, seed=0):
    t = np.arange(n) / 8000.0
    rs = np.random.RandomState(seed)
    return np.stack([0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rs.randn(n) for i in range(b)]
                    ).astype(np.float32)


# ------------------------------------------------------------------------------------------------ codecs
def test_toy_codec_facts_and_round_trip():
    c = build_codec({"name": "toy", "sample_rate": 8000, "hop": 100, "bands": 5})
    assert (c.layout, c.latent_channels, c.latent_height, c.hop_length, c.latent_rate) == (SEQUENCE, 6, None, 100, 80.0)
    assert c.info == {"name": "toy", "sample_rate": 8000, "hop": 100, "bands": 5}
    assert c.ident == "toy-frame-codec(sr=8000,hop=100,bands=5)"  # the id older precomputes hashed
    a = _audio(1050)
    z = np.asarray(c.encode(a))
    assert z.shape == (2, 10, 6) == (2, *c.latent_shape(1050))
    y = np.asarray(c.decode(z))
    assert y.shape == (2, 1000) and y.dtype == np.float32
    z2 = np.asarray(c.encode(y))
    np.testing.assert_allclose(z2[..., 0], z[..., 0], atol=1e-3)  # decode keeps every frame's RMS
    assert np.corrcoef(z2[..., 1:].ravel(), z[..., 1:].ravel())[0, 1] > 0.9  # and its band shape


@pytest.fixture(scope="module")
def oobleck():
    return build_codec(OOBLECK_TINY)


def test_oobleck_shapes_and_deterministic_random_init(oobleck):
    c = oobleck
    assert (c.layout, c.sample_rate, c.hop_length, c.latent_channels, c.latent_height) == (SEQUENCE, 8000, 6, 2, None)
    assert c.info["strides"] == [2, 3] and c.info["seed"] == 3 and c.info["init"] == "random"
    a = _audio(600)
    z = np.asarray(c.encode(a))
    assert z.shape == (2, 100, 2) == (2, *c.latent_shape(600))
    y = np.asarray(c.decode(z))
    assert y.shape[0] == 2 and 600 - 6 < y.shape[1] <= 600  # odd strides lose a sample per stage (as PyTorch)
    again = build_codec(dict(OOBLECK_TINY))  # same section -> same weights (precompute == sampling)
    np.testing.assert_array_equal(np.asarray(again.encode(a)), z)
    other = build_codec({**OOBLECK_TINY, "seed": 4})
    assert not np.allclose(np.asarray(other.encode(a)), z)


def test_oobleck_sampled_latents_are_keyed_by_the_clip(oobleck):
    s = build_codec({**OOBLECK_TINY, "sample": True})
    a = _audio(600, b=3)
    mean = np.asarray(oobleck.encode(a))
    z = np.asarray(s.encode(a))
    assert not np.allclose(z, mean) and np.abs(z - mean).max() < 10
    # the same clip gets the same noise in another batch position / batch; different clips differ
    np.testing.assert_allclose(np.asarray(s.encode(a[::-1]))[::-1], z, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.encode(a[1:2]))[0], z[1], atol=1e-6)
    assert not np.allclose(z[0] - mean[0], z[1] - mean[1])


@pytest.mark.parametrize("section,h,f", [(KL_TINY, 16, 2), (LDM_TINY, 8, 4)], ids=["kl_mel_image", "audioldm"])
def test_mel_image_codecs_give_image_latents_with_time_on_axis_minus_2(section, h, f):
    c = build_codec(section)
    assert (c.layout, c.sample_rate, c.latent_height, c.hop_length) == (IMAGE, 16000, h, 160 * f)
    assert c.latent_channels == {"kl_mel_image": 4, "audioldm_mel_vae": 8}[section["name"]]
    n = 160 * 48  # 48 mel frames
    z = np.asarray(c.encode(_audio(n, 1)))
    t = 48 // f  # != h: the shape pins the orientation (frequency rows H, time on axis -2)
    assert z.shape == (1, h, t, c.latent_channels) == (1, *c.latent_shape(n)) and t != h
    assert np.all(np.isfinite(z)) and z.std() > 0
    y = np.asarray(c.decode(z))
    assert y.shape == (1, t * c.hop_length) and np.all(np.isfinite(y))
    assert c.info["sample_rate"] == 16000 and c.info["n_mels"] == 32 and "scaling_factor" in c.info


def test_mel_codec_keeps_the_demo_latents_and_ids():
    from tta_jax.convert.hifigan import load_pretrained_mel_codec

    c = build_codec({"name": "mel"})
    ref = load_pretrained_mel_codec("universal", mean=-5.0, std=2.5)
    a = np.asarray(_audio(22050 // 4), np.float32)
    np.testing.assert_array_equal(np.asarray(c.encode(a)), np.asarray(ref.encode(ref.params, a)))
    assert c.info == {"name": "mel", "sample_rate": 22050, "model": "universal", "mean": -5.0, "std": 2.5}
    assert c.ident == f"mel(model=universal,mean=-5.0,std=2.5,{ref.mel})"
    assert (c.layout, c.latent_channels, c.hop_length) == (SEQUENCE, 80, 256)


def test_codec_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.codec\.name='oobleak'.*'oobleck'"):
        build_codec({"name": "oobleak"})
    with pytest.raises(ConfigError, match=r"config\.codec\.name is not set"):
        build_codec({})
    with pytest.raises(ConfigError, match=r"unknown key config\.codec\.weigths \(did you mean config\.codec\.weights"):
        build_codec({"name": "oobleck", "weigths": "x.pt"})
    with pytest.raises(ConfigError, match=r"config\.codec\.weights is empty"):
        build_codec({"name": "oobleck"})
    missing = str(tmp_path / "1m.pt")
    with pytest.raises(MissingWeights, match=rf"config\.codec\.weights='{missing}': no such file"):
        build_codec({"name": "oobleck", "weights": missing})
    with pytest.raises(MissingWeights, match=r"system\.codec\.vae='/no/vae'"):
        build_codec({"name": "kl_mel_image", "vae": "/no/vae"}, "system.codec")
    with pytest.raises(ConfigError, match=r"config\.codec\.preset='huge' is not one of"):
        build_codec({"name": "oobleck", "preset": "huge", "init": "random"})
    with pytest.raises(ConfigError, match=r"config\.codec\.init='randon'.*'random'"):
        build_codec({"name": "oobleck", "preset": "tiny", "init": "randon"})
    with pytest.raises(ConfigError, match=r"config\.codec\.vocoder_config='nope'"):
        build_codec({**KL_TINY, "vocoder_config": "nope"})
    assert resolve_codec_section({"name": "toy", "hop": 128}) == {"name": "toy", "sample_rate": 22050, "hop": 128,
                                                                  "bands": 7}
    assert set(CODECS) == {"toy", "mel", "oobleck", "kl_mel_image", "audioldm_mel_vae", "encodec", "encodec_tokens"}


def test_oobleck_from_a_gan_workdir_takes_its_architecture(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"codec": {"preset": "tiny", "latent_dim": 3}}))
    with pytest.raises(ConfigError, match=r"config\.codec\.latent_dim is set, but config\.codec\.workdir"):
        build_codec({"name": "oobleck", "workdir": str(tmp_path), "latent_dim": 3})
    with pytest.raises(MissingWeights, match=r"config\.codec\.workdir=.*no finished checkpoint"):
        build_codec({"name": "oobleck", "workdir": str(tmp_path)})
    with pytest.raises(MissingWeights, match=r"config\.codec\.workdir='/no/run': no config\.json"):
        build_codec({"name": "oobleck", "workdir": "/no/run"})


# ------------------------------------------------------------------------------------------------ text
def test_byte_encoders_keep_their_formats():
    from tta_jax.text.bytes import byte_table

    b = build_text_encoder({"name": "bytes", "max_len": 6})
    out = b.encode(["ab", ""])
    assert out["input_ids"].tolist() == [[98, 99, 0, 0, 0, 0], [0] * 6] and out["attention_mask"].dtype == np.int32
    assert b.info == {"name": "bytes", "max_len": 6} and b.ident == "bytes(max_len=6)" and b.dims == {}
    e = build_text_encoder({"name": "bytes_embed", "dim": 8, "max_len": 5, "seed": 1})
    out = e.encode(["ab", ""])
    assert out["text"].shape == (2, 5, 8) and out["text"].dtype == np.float32 and e.dims == {"text": 8}
    assert out["text_mask"].tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4]  # BOS keeps "" attendable
    table = byte_table(8, 1)
    np.testing.assert_array_equal(out["text"][0, :3], table[[257, 98, 99]])
    assert np.all(out["text"][0, 3:] == 0)
    assert build_text_encoder({"name": "none"}) is None


def test_minilm_encoders_keep_the_demo_features_and_ids():
    from tta_jax.convert.bert import minilm_text_encoder

    t = build_text_encoder({"name": "minilm", "max_len": 16})
    out = t.encode(["a dog barks", ""])
    states, mask = minilm_text_encoder(16)(["a dog barks", ""])
    np.testing.assert_array_equal(out["text"], np.asarray(states))
    assert out["text_mask"].tolist() == np.asarray(mask).tolist() and out["text"].shape == (2, 16, 384)
    assert t.info == {"name": "minilm", "max_len": 16, "model": "all-MiniLM-L6-v2"} and t.dims == {"text": 384}
    assert t.ident == "minilm(all-MiniLM-L6-v2,max_len=16)"  # the id older precomputes hashed
    tok = build_text_encoder({"name": "minilm_tokens", "max_len": 16})
    ids = tok.encode(["a dog barks"])
    assert ids["input_ids"].dtype == np.int32 and ids["input_ids"][0, 0] == 101  # [CLS]
    assert ids["attention_mask"].sum() == 6  # [CLS] a dog bark ##s [SEP]
    assert tok.ident == "minilm-tokens(max_len=16)" and tok.info["name"] == "minilm_tokens"


@pytest.mark.parametrize("kind,preset,max_len", [("t5", "tiny", 12), ("clip", "tiny", 16), ("clap", "tiny", 20)])
def test_random_towers_are_deterministic_and_fixed_length(kind, preset, max_len):
    sec = {"name": kind, "init": "random", "preset": preset, "seed": 5, "max_len": max_len}
    t = build_text_encoder(sec)
    out = t.encode(["a dog barks", "", "rain"])
    d = t.dims["text"]
    assert out["text"].shape == (3, max_len, d) and out["text_mask"].shape == (3, max_len)
    assert out["text"].dtype == np.float32 and out["text_mask"].dtype == bool
    assert out["text_mask"].sum(1).tolist() == [12, 1, 5]  # BOS + UTF-8 bytes (random towers: byte tokens)
    texts = ["a dog barks", "", "rain"]  # same batch: XLA's CPU matmuls may differ by an ulp across batch sizes
    np.testing.assert_array_equal(build_text_encoder(dict(sec)).encode(texts)["text"], out["text"])
    assert not np.allclose(build_text_encoder({**sec, "seed": 6}).encode(texts)["text"], out["text"])
    assert t.info["preset"] == preset and t.info["seed"] == 5 and t.info["max_len"] == max_len


def test_text_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.text\.name='t6'.*'t5'"):
        build_text_encoder({"name": "t6"})
    with pytest.raises(ConfigError, match=r"config\.text\.path is empty"):
        build_text_encoder({"name": "t5"})
    with pytest.raises(MissingWeights, match=r"config\.text\.path='/models/flan-t5-xl'"):
        build_text_encoder({"name": "t5", "path": "/models/flan-t5-xl"})
    with pytest.raises(ConfigError, match=r"config\.text\.preset is empty"):
        build_text_encoder({"name": "clip", "init": "random"})
    with pytest.raises(ConfigError, match=r"config\.text\.max_len=77: this clip encoder takes 1 to 16"):
        build_text_encoder({"name": "clip", "init": "random", "preset": "tiny"})
    with pytest.raises(ConfigError, match=r"config\.text\.encoders\[1\]\.name='bytes' gives no text states"):
        build_text_encoder({"name": "multi", "encoders": [{"name": "bytes_embed"}, {"name": "bytes"}]})
    with pytest.raises(ConfigError, match=r"unknown key config\.text\.encoders\[0\]\.max_length"):
        build_text_encoder({"name": "multi", "encoders": [{"name": "bytes_embed", "max_length": 3}]})
    with pytest.raises(ConfigError, match=r"config\.text\.encoders is empty"):
        build_text_encoder({"name": "multi"})
    assert set(TEXT_ENCODERS) == {"none", "bytes", "bytes_embed", "minilm", "minilm_tokens", "t5", "clip", "clap",
                                  "multi"}


def test_multi_gives_one_fixed_length_feature_per_encoder():
    sec = {"name": "multi", "encoders": [{"name": "t5", "init": "random", "preset": "tiny", "max_len": 10},
                                         {"name": "bytes_embed", "dim": 6, "max_len": 4}]}
    m = build_text_encoder(sec)
    out = m.encode(["a dog barks loudly", ""])
    assert m.dims == {"text:0": 32, "text:1": 6}
    assert {k: v.shape for k, v in out.items()} == {"text:0": (2, 10, 32), "text_mask:0": (2, 10),
                                                     "text:1": (2, 4, 6), "text_mask:1": (2, 4)}
    alone = build_text_encoder(sec["encoders"][1]).encode(["a dog barks loudly", ""])
    np.testing.assert_array_equal(out["text:1"], alone["text"])  # each encoder's own features, in order
    assert out["text_mask:1"][0].all() and out["text_mask:1"][1].tolist() == [True, False, False, False]
    assert [e["name"] for e in m.info["encoders"]] == ["t5", "bytes_embed"] and m.info["name"] == "multi"
    # the manifest's record of it matches the config section it came from (partial sections, tuples)
    assert sections.mismatches(sec, m.info, "config.text") == []
    r = resolve_text_section(sec)
    assert r["encoders"][1] == {"name": "bytes_embed", "dim": 6, "max_len": 4, "seed": 0}


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["t5", "clip", "clap"])
def test_pretrained_folders_load_through_the_converters(kind, tmp_path):
    """A released-layout folder (config.json, model.safetensors, tokenizer) -> the same states as
    transformers on the same tokens (reference: transformers' {T5EncoderModel, CLIPTextModel,
    ClapTextModelWithProjection}.last_hidden_state; tolerance 1e-4 relative)."""
    torch = pytest.importorskip("torch")
    from tests.conftest import max_rel_err
    from tests.tiny_text_folders import save_text_model
    from tta_jax.text.tokenizer import TextTokenizer

    folder = str(tmp_path / kind)
    model = save_text_model(kind, folder)
    t = build_text_encoder({"name": kind, "path": folder, "max_len": 8})
    texts = ["a dog barks in the rain", "piano", ""]
    out = t.encode(texts)
    tok = TextTokenizer(folder, max_length=8)(texts)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(tok["input_ids"]).long(),
                    attention_mask=torch.from_numpy(tok["attention_mask"]).long()).last_hidden_state.numpy()
    m = tok["attention_mask"].astype(bool)
    assert out["text"].shape == (3, 8, t.dims["text"]) and np.array_equal(out["text_mask"], m)
    assert max_rel_err(out["text"][m], ref[m]) < 1e-4
    assert t.info["path"] == folder


# ------------------------------------------------------------------------------------------------ sections
def test_mismatches_compare_like_a_manifest_reader():
    have = {"name": "oobleck", "strides": [2, 3], "seed": 0, "encoders": [{"name": "t5", "max_len": 8, "seed": 0}]}
    assert sections.mismatches({"name": "oobleck", "strides": (2, 3), "seed": 0.0}, have, "c") == []
    assert sections.mismatches({"encoders": ({"name": "t5"},)}, have, "c") == []
    assert sections.mismatches({"encoders": [{"max_len": 9}]}, have, "c") == [("c.encoders[0].max_len", 8, 9)]
    assert sections.mismatches({"strides": [2]}, have, "c") == [("c.strides", [2, 3], [2])]
    assert sections.mismatches({"sample": True}, {"sample": 1}, "c") == [("c.sample", 1, True)]
    import ml_collections

    assert sections.as_dict(ml_collections.ConfigDict({"a": {"b": (1, 2)}})) == {"a": {"b": (1, 2)}}
