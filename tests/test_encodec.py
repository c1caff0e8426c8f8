"""EnCodec: parity with transformers.EncodecModel (codes, decode, latents), converter errors, RVQ math."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.codecs import encodec as ec
from tta_jax.convert.common import ConversionError, torch_state_dict_to_numpy
from tta_jax.convert.encodec import convert_encodec, ema_state_from_state_dict, load_encodec

# Two tiny transformers configs covering both code paths: causal + weight norm + reflect padding + conv
# shortcut + 2 residual layers + 2 LSTM layers; non-causal + time_group_norm + normalize + constant padding +
# identity shortcut + odd stride.
HF_CONFIGS = {
    "causal": dict(sampling_rate=400, target_bandwidths=[0.4, 0.8, 1.6], hidden_size=8, num_filters=4,
                   num_residual_layers=2, upsampling_ratios=[2, 2], codebook_size=16, num_lstm_layers=2),
    "noncausal": dict(sampling_rate=600, target_bandwidths=[0.4, 1.6], hidden_size=6, num_filters=4,
                      upsampling_ratios=[3, 2], codebook_size=16, num_lstm_layers=1, use_causal_conv=False,
                      norm_type="time_group_norm", normalize=True, pad_mode="constant", use_conv_shortcut=False),
}


def _hf_model(kind, seed=0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = transformers.EncodecModel(transformers.EncodecConfig(**HF_CONFIGS[kind])).eval()
    cfg = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm." in name:  # GroupNorm affine: make it matter
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
        audio = torch.randn(2, cfg.audio_channels, 50)
        std = float(model.encoder(audio).std())
        for q, layer in enumerate(model.quantizer.layers):  # transformers inits codebooks to zero
            layer.codebook.embed.copy_(std * 0.6 ** q * torch.randn_like(layer.codebook.embed))
    return model


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_pair(request, tmp_path_factory):
    model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(f"encodec_{request.param}")
    model.save_pretrained(path)
    cfg, params = load_encodec(path)
    return request.param, model, cfg, params


def test_config_from_hf_and_bandwidth(hf_pair):
    _, model, cfg, _ = hf_pair
    hc = model.config
    assert (cfg.hop_length, cfg.frame_rate, cfg.num_quantizers) == (hc.hop_length, hc.frame_rate,
                                                                   hc.num_quantizers)
    for bw in hc.target_bandwidths:
        assert cfg.quantizers_for_bandwidth(bw) == model.quantizer.get_num_quantizers_for_bandwidth(bw)
    assert ec.get_config("encodec_24khz").num_quantizers == 32
    assert ec.get_config("audiogen_16khz").num_quantizers == 4


def test_parity_encode_decode_latents(hf_pair):
    import torch

    kind, model, cfg, params = hf_pair
    length = {"causal": 41, "noncausal": 40}[kind]  # neither a multiple of the hop: extra right padding
    m = ec.EncodecModel(cfg)
    rng = np.random.default_rng(length)
    audio = (0.5 * rng.standard_normal((2, length))).astype(np.float32)
    bw = cfg.target_bandwidths[-1]
    with torch.no_grad():
        enc = model.encode(torch.from_numpy(audio)[:, None], bandwidth=bw)
        ref_codes = enc.audio_codes[0].permute(0, 2, 1).numpy()  # [1, B, K, T] -> [B, T, K]
        ref_audio = model.decode(enc.audio_codes, enc.audio_scales).audio_values[:, 0].numpy()
        ref_lat = model.quantizer.decode(enc.audio_codes[0].transpose(0, 1)).permute(0, 2, 1).numpy()
    codes, scale = jax.jit(lambda p, a: m.apply({"params": p}, a, bw, method="encode_with_scale"))(
        params, jnp.asarray(audio))
    assert codes.shape == ref_codes.shape and codes.shape[-1] == cfg.num_quantizers
    assert len(np.unique(ref_codes)) > 4  # the codebooks are exercised, not a constant code
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    if cfg.normalize:
        np.testing.assert_allclose(np.asarray(scale), enc.audio_scales[0][:, 0].numpy(), rtol=1e-5)
    else:
        assert scale is None
        codes_small = m.apply({"params": params}, jnp.asarray(audio), method="encode")  # smallest bandwidth
        np.testing.assert_array_equal(np.asarray(codes_small), ref_codes[..., :cfg.quantizers_for_bandwidth(
            cfg.target_bandwidths[0])])
    lat = m.apply({"params": params}, codes, method="codes_to_latents")
    np.testing.assert_allclose(np.asarray(lat), ref_lat, atol=1e-5)
    y = jax.jit(lambda p, c, s: m.apply({"params": p}, c, s, method="decode"))(params, codes, scale)
    assert y.shape == ref_audio.shape
    np.testing.assert_allclose(np.asarray(y), ref_audio, atol=1e-4)


def test_short_input_reflect_padding(hf_pair):
    """3 samples: every reflect pad is longer than its input (transformers zero-extends first)."""
    import torch

    kind, model, cfg, params = hf_pair
    audio = np.array([[0.3, -0.5, 0.8], [0.1, 0.2, -0.4]], np.float32)
    with torch.no_grad():
        ref = model.encode(torch.from_numpy(audio)[:, None], bandwidth=cfg.target_bandwidths[-1]).audio_codes
    codes = ec.EncodecModel(cfg).apply({"params": params}, jnp.asarray(audio), cfg.target_bandwidths[-1],
                                       method="encode")
    np.testing.assert_array_equal(np.asarray(codes), ref[0].permute(0, 2, 1).numpy())


@pytest.mark.parametrize("preset", ["encodec_24khz", "audiogen_16khz"])
def test_presets_convert_from_transformers_layout(preset):
    """Full-size layouts: a random transformers model built from the preset converts strictly."""
    import dataclasses

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = ec.get_config(preset)
    torch.manual_seed(0)
    hc = transformers.EncodecConfig(**{k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in dataclasses.asdict(cfg).items()})
    model = transformers.EncodecModel(hc)
    assert ec.from_hf_config(hc.to_dict()) == cfg
    assert model.quantizer.num_quantizers == cfg.num_quantizers
    params, report = convert_encodec(torch_state_dict_to_numpy(model.state_dict()), cfg)
    assert report.ok and params["quantizer"]["codebooks"].shape == (cfg.num_quantizers, cfg.codebook_size, cfg.dim)


def test_weight_g_v_layout_and_bin(tmp_path):
    torch = pytest.importorskip("torch")
    model = _hf_model("causal", seed=1)
    sd = torch_state_dict_to_numpy(model.state_dict())
    old = {k.replace(".parametrizations.weight.original0", ".weight_g")
           .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in sd.items()}
    assert any(k.endswith(".weight_g") for k in old)
    torch.save({k: torch.from_numpy(v) for k, v in old.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    cfg, p_old = load_encodec(tmp_path)
    p_new, report = convert_encodec(sd, cfg)
    assert report.ok
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p_old, p_new)
    ema = ema_state_from_state_dict(sd, cfg)
    assert ema["ema_counts"].shape == (cfg.num_quantizers, cfg.codebook_size)
    assert ema["ema_sums"].shape == (cfg.num_quantizers, cfg.codebook_size, cfg.dim)


def test_renamed_and_mismatched_tensors_fail_naming_them():
    model = _hf_model("causal")
    sd = torch_state_dict_to_numpy(model.state_dict())
    cfg = ec.from_hf_config(model.config.to_dict())
    bad = dict(sd)
    bad["encoder.layers.0.conv.bias_renamed"] = bad.pop("encoder.layers.0.conv.bias")
    with pytest.raises(ConversionError, match=r"'encoder\.layers\.0\.conv\.bias'.*expected shape \(4,\)"):
        convert_encodec(bad, cfg)
    bad = dict(sd)
    bad["quantizer.layers.1.codebook.embed"] = np.zeros((16, 5), np.float32)
    with pytest.raises(ConversionError, match=r"quantizer\.layers\.1\.codebook\.embed.*expected \(16, 8\)"):
        convert_encodec(bad, cfg)
    bad = dict(sd)
    key = next(k for k in sd if k.endswith("lstm.weight_ih_l0") and k.startswith("encoder"))
    bad[key] = np.zeros((10, 16), np.float32)
    with pytest.raises(ConversionError, match=r"encoder/lstm/layer_0_kernel_ih.*weight_ih_l0.*expected \(16, 64\)"):
        convert_encodec(bad, cfg)


# --------------------------------------------------------------------------------------------------
# RVQ pure functions
# --------------------------------------------------------------------------------------------------
def test_vq_nearest_and_rvq_roundtrip():
    book = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    x = jnp.array([[[0.9, 0.1], [0.1, 1.6], [-0.2, 0.1]]])
    np.testing.assert_array_equal(np.asarray(ec.vq_nearest(x, book)), [[1, 2, 0]])
    books = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 4)) * jnp.array([1.0, 0.5, 0.25])[:, None, None]
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
    errs = [float(jnp.mean((x - ec.rvq_decode(ec.rvq_encode(x, books, n), books)) ** 2)) for n in (1, 2, 3)]
    assert errs[0] >= errs[1] >= errs[2]
    q = ec.rvq_quantize(x, books)
    np.testing.assert_array_equal(np.asarray(q["codes"]), np.asarray(ec.rvq_encode(x, books)))
    np.testing.assert_allclose(np.asarray(q["quantized"]), np.asarray(ec.rvq_decode(q["codes"], books)), atol=1e-6)


def test_straight_through_gradient_is_identity():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
    qv = jnp.round(x)
    np.testing.assert_allclose(np.asarray(ec.straight_through(x, qv)), np.asarray(qv))
    g = jax.grad(lambda a: jnp.sum(ec.straight_through(a, qv) * w))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w))
    books = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 4))
    g = jax.grad(lambda a: jnp.sum(ec.rvq_quantize(a, books)["quantized"] * w))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6)
    gb = jax.grad(lambda b: jnp.sum(ec.rvq_quantize(x, b)["quantized"] * w))(books)
    assert float(jnp.abs(gb).max()) == 0.0  # codebooks are EMA-updated, not trained


def test_commitment_loss_value_and_gradient():
    x = jnp.array([[[1.0, 2.0], [0.0, -1.0]]])
    qv = jnp.array([[[0.0, 2.0], [1.0, 1.0]]])
    assert float(ec.commitment_loss(x, qv)) == pytest.approx((1 + 0 + 1 + 4) / 4)
    g = jax.grad(ec.commitment_loss, argnums=(0, 1))(x, qv)
    np.testing.assert_allclose(np.asarray(g[0]), np.asarray(2 * (x - qv) / 4))
    assert float(jnp.abs(g[1]).max()) == 0.0
    # single-stage RVQ: the commitment is the distance to the nearest code
    books = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])
    out = ec.rvq_quantize(x, books)
    assert float(out["commitment"]) == pytest.approx(float(jnp.mean((x - jnp.array([[[1.0, 1.0], [0.0, 0.0]]])) ** 2)))


def test_ema_update_crafted():
    # K=3 codes, D=1; one stage. Batch x = [0, 2, 10] -> codes [0, 0, 1]; code 2 unused.
    counts = jnp.array([[1.0, 1.0, 0.0]])
    sums = jnp.array([[[0.0], [5.0], [0.0]]])
    x = jnp.array([[[0.0], [2.0], [10.0]]])[None]  # [n=1, B=1, T=3, D=1]
    codes = jnp.array([[[0], [0], [1]]])  # [B, T, n]
    books, c2, s2 = ec.rvq_ema_update(counts, sums, x, codes, decay=0.5, epsilon=1e-5)
    np.testing.assert_allclose(np.asarray(c2), [[1.5, 1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(s2), [[[1.0], [7.5], [0.0]]])
    n, eps = 2.5, 1e-5
    smooth = (np.array([1.5, 1.0, 0.0]) + eps) / (n + 3 * eps) * n
    np.testing.assert_allclose(np.asarray(books[0, :, 0]), np.array([1.0, 7.5, 0.0]) / smooth, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(books)))
    # stages past codes.shape[-1] keep their statistics
    books2, c3, _ = ec.rvq_ema_update(jnp.concatenate([counts, counts]), jnp.concatenate([sums, sums]), x, codes,
                                      decay=0.5)
    np.testing.assert_allclose(np.asarray(c3[1]), np.asarray(counts[0]))


def _numpy_params(cfg, seed=0):
    """Random params from the abstract tree (flax init compiles threefry per param: slow on a busy CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(max(1, np.prod(s.shape[:-1]))), s.dtype),
        ec.abstract_params(cfg))


def test_training_pass_shapes_and_grad():
    cfg = ec.get_config("tiny")
    params = _numpy_params(cfg)
    m = ec.EncodecModel(cfg)
    audio = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (2, 24))

    def loss(p):
        out = m.apply({"params": p}, audio, 2)
        return jnp.mean((out["audio"] - audio) ** 2) + out["commitment"], out

    (val, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert out["codes"].shape == (2, 6, 2) and out["stage_inputs"].shape == (2, 2, 6, cfg.dim)
    assert np.isfinite(float(val))
    assert float(jnp.abs(g["encoder"]["conv_in"]["conv"]["kernel"]).max()) > 0
    books, _, _ = ec.rvq_ema_update(jnp.ones((cfg.num_quantizers, cfg.codebook_size)),
                                    params["quantizer"]["codebooks"], out["stage_inputs"], out["codes"])
    assert books.shape == params["quantizer"]["codebooks"].shape
    with pytest.raises(ValueError, match="audio"):
        m.apply({"params": params}, jnp.zeros((2, 24, 2)), method="encode")
