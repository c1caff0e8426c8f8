"""HTSAT (CLAP audio tower) in linen: pure window helpers, config parsing, converter errors, and
random-weight parity with transformers.ClapAudioModelWithProjection (unfused and fused/AFF)."""
import jax
import numpy as np
import pytest

from tta_jax.convert.common import ConversionError
from tta_jax.eval.htsat import (HTSAT, HTSATConfig, cubic_resize_matrix, get_audio_features, relative_position_index,
                                shifted_window_mask, window_partition, window_reverse)

# Small tower that still has shifted windows in two stages and a last stage equal to one window:
# 16 mels, spec 64 -> image 64x64, patch 4 -> grid 16, 8, 4 with window 4.
SMALL = dict(window_size=4, num_mel_bins=16, spec_size=64, patch_stride=4, patch_embeds_hidden_size=16,
             hidden_size=64, depths=[2, 2, 2], num_attention_heads=[2, 2, 4], projection_dim=24)


def test_window_partition_reverse_roundtrip():
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    w = window_partition(x, 4)
    assert w.shape == (2 * 2 * 3, 16, 3)
    np.testing.assert_array_equal(w[1].reshape(4, 4, 3), x[0, 0:4, 4:8])  # second window of the first row
    np.testing.assert_array_equal(window_reverse(w, 4, 8, 12), x)


def test_relative_position_index_and_shift_mask():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24
    assert np.all(np.diag(idx) == 12)  # zero offset = centre of the 5x5 table
    assert idx[0, 8] == 0 and idx[8, 0] == 24
    m = shifted_window_mask(8, 8, 4, 2)
    assert m.shape == (4, 16, 16)
    assert np.all(m[0] == 0)  # top-left window is one region
    assert set(np.unique(m[3])) == {0.0, -100.0} and np.all(np.diag(m[3]) == 0)
    np.testing.assert_array_equal(m, np.transpose(m, (0, 2, 1)))


def test_cubic_resize_matrix_rows_sum_to_one_and_keep_ends():
    m = cubic_resize_matrix(7, 16)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    assert m[0, 0] == 1.0 and m[-1, -1] == 1.0
    np.testing.assert_array_equal(cubic_resize_matrix(5, 5), np.eye(5, dtype=np.float32))


def test_config_from_hf_and_errors():
    d = {"audio_config": dict(SMALL, projection_dim=7, enable_fusion=True), "projection_dim": 24,
         "text_config": {"hidden_size": 32}}
    cfg = HTSATConfig.from_hf(d)
    assert cfg.projection_dim == 24 and cfg.depths == (2, 2, 2) and cfg.patch_stride == (4, 4)
    assert cfg.enable_fusion and cfg.in_channels == 4 and cfg.freq_ratio == 4 and cfg.num_features == 64
    with pytest.raises(NotImplementedError, match="fusion_type"):
        HTSATConfig(**dict(SMALL, enable_fusion=True, fusion_type="channel_map"))
    import jax

    init = HTSAT(HTSATConfig(**SMALL)).init  # shape errors are raised while tracing
    with pytest.raises(ValueError, match=r"\[B, 1, frames, mel bins\]"):
        jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 4, 100, 16), np.float32))
    with pytest.raises(ValueError, match="exceed"):
        jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 1, 300, 16), np.float32))


def _torch_tower(**kw):
    torch = pytest.importorskip("torch")
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection

    torch.manual_seed(0)
    cfg = ClapAudioConfig(**kw)
    model = ClapAudioModelWithProjection(cfg).eval()
    with torch.no_grad():  # non-trivial everything: bias tables (zero at init), BatchNorm statistics
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(0.3 * torch.randn_like(b))
            elif n.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    return cfg, model


def _convert(cfg, model):
    from tta_jax.convert.clap_audio import convert_clap_audio
    from tta_jax.convert.common import torch_state_dict_to_numpy

    hcfg = HTSATConfig.from_hf(cfg.to_dict())
    variables, report = convert_clap_audio(torch_state_dict_to_numpy(model.state_dict()), hcfg)
    assert report.ok
    return hcfg, variables


@pytest.mark.parity
@pytest.mark.parametrize("window,depths", [(4, [2, 2, 2]), (6, [2, 2])])  # (6: windows padded 16->18, 8->12)
def test_htsat_matches_transformers(window, depths, rel_err):
    import torch

    cfg, model = _torch_tower(**dict(SMALL, window_size=window, depths=depths,
                                     num_attention_heads=SMALL["num_attention_heads"][:len(depths)],
                                     hidden_size=16 * 2 ** (len(depths) - 1)))
    hcfg, variables = _convert(cfg, model)
    x = (10 * np.random.default_rng(1).normal(size=(2, 1, 200, 16))).astype(np.float32)  # 200 -> 256 frames
    out = jax.jit(HTSAT(hcfg).apply)(variables, x)
    with torch.no_grad():
        ref = model(input_features=torch.from_numpy(x))
        pooled = model.audio_model(input_features=torch.from_numpy(x)).pooler_output.numpy()
    errs = rel_err(out.pooler_output, pooled), rel_err(out.audio_embeds, ref.audio_embeds.numpy())
    print(f"HTSAT window={window} depths={depths}: pooler rel err {errs[0]:.2e}, audio_embeds {errs[1]:.2e}")
    assert max(errs) < 1e-4
    feats = get_audio_features(HTSAT(hcfg), variables, x[:1])
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parity
def test_htsat_fused_aff_matches_transformers(rel_err):
    import torch

    cfg, model = _torch_tower(**dict(SMALL, enable_fusion=True))
    hcfg, variables = _convert(cfg, model)
    x = (10 * np.random.default_rng(2).normal(size=(2, 4, 256, 16))).astype(np.float32)
    longer = np.array([True, False])
    out = jax.jit(HTSAT(hcfg).apply)(variables, x, longer)
    with torch.no_grad():
        ref = model(input_features=torch.from_numpy(x), is_longer=torch.from_numpy(longer[:, None])).audio_embeds
        ref0 = model(input_features=torch.from_numpy(x), is_longer=torch.zeros(2, 1, dtype=torch.bool)).audio_embeds
    print(f"HTSAT fused: audio_embeds rel err {rel_err(out.audio_embeds, ref.numpy()):.2e}")
    assert rel_err(out.audio_embeds, ref.numpy()) < 1e-4
    assert rel_err(jax.jit(HTSAT(hcfg).apply)(variables, x).audio_embeds, ref0.numpy()) < 1e-4  # is_longer=None
    assert rel_err(ref.numpy()[0], ref0.numpy()[0]) > 1e-3  # the AFF branch really changed clip 0


def _small_state_dict():
    from tta_jax.eval.htsat import abstract_variables

    cfg = HTSATConfig(**SMALL)
    rng = np.random.default_rng(0)  # random values of the right shapes (cheaper than compiling init)
    v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract_variables(cfg))
    p, s = v["params"], v["batch_stats"]
    e = "audio_model.audio_encoder."
    sd = {f"{e}batch_norm.weight": p["batch_norm"]["scale"], f"{e}batch_norm.bias": p["batch_norm"]["bias"],
          f"{e}batch_norm.running_mean": s["batch_norm"]["mean"], f"{e}batch_norm.running_var": s["batch_norm"]["var"],
          f"{e}patch_embed.proj.weight": np.transpose(p["patch_embed"]["proj"]["kernel"], (3, 2, 0, 1)),
          f"{e}patch_embed.proj.bias": p["patch_embed"]["proj"]["bias"],
          f"{e}patch_embed.norm.weight": p["patch_embed"]["norm"]["scale"],
          f"{e}patch_embed.norm.bias": p["patch_embed"]["norm"]["bias"],
          f"{e}norm.weight": p["norm"]["scale"], f"{e}norm.bias": p["norm"]["bias"]}
    for i, depth in enumerate(cfg.depths):
        st = p[f"layers_{i}"]
        for j in range(depth):
            b, s_ = st[f"blocks_{j}"], f"{e}layers.{i}.blocks.{j}"
            for ours, theirs in (("layernorm_before", "layernorm_before"), ("layernorm_after", "layernorm_after")):
                sd[f"{s_}.{theirs}.weight"], sd[f"{s_}.{theirs}.bias"] = b[ours]["scale"], b[ours]["bias"]
            for ours, theirs in (("query", "attention.self.query"), ("key", "attention.self.key"),
                                 ("value", "attention.self.value"), ("attn_out", "attention.output.dense"),
                                 ("intermediate", "intermediate.dense"), ("output", "output.dense")):
                sd[f"{s_}.{theirs}.weight"], sd[f"{s_}.{theirs}.bias"] = b[ours]["kernel"].T, b[ours]["bias"]
            sd[f"{s_}.attention.self.relative_position_bias_table"] = b["relative_position_bias_table"]
            sd[f"{s_}.attention.self.relative_position_index"] = relative_position_index(4)  # ignored buffer
        if "downsample" in st:
            d = st["downsample"]
            sd[f"{e}layers.{i}.downsample.norm.weight"] = d["norm"]["scale"]
            sd[f"{e}layers.{i}.downsample.norm.bias"] = d["norm"]["bias"]
            sd[f"{e}layers.{i}.downsample.reduction.weight"] = d["reduction"]["kernel"].T
    for n in ("linear1", "linear2"):
        sd[f"audio_projection.{n}.weight"] = p["projection"][n]["kernel"].T
        sd[f"audio_projection.{n}.bias"] = p["projection"][n]["bias"]
    sd["text_model.embeddings.word_embeddings.weight"] = np.zeros((3, 2))  # other tower: ignored
    sd["logit_scale_a"] = np.zeros(())
    return cfg, v, {k: np.asarray(a) for k, a in sd.items()}


def test_converter_roundtrip_and_errors():
    from tta_jax.convert.clap_audio import convert_clap_audio

    cfg, v, sd = _small_state_dict()
    got, report = convert_clap_audio(sd, cfg)
    assert report.ok
    jax.tree.map(np.testing.assert_array_equal, got, v)

    key = "audio_model.audio_encoder.layers.1.blocks.1.attention.self.key.weight"
    bad = dict(sd)
    del bad[key]
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        convert_clap_audio(bad, cfg, what="tiny.safetensors")
    _, rep = convert_clap_audio(bad, cfg, strict=False)
    assert not rep.ok and rep.missing

    key = "audio_model.audio_encoder.layers.0.blocks.0.attention.self.relative_position_bias_table"
    bad = dict(sd, **{key: np.zeros((10, 2), np.float32)})
    with pytest.raises(ConversionError, match=r"relative_position_bias_table.*got \(10, 2\), expected \(49, 2\)"):
        convert_clap_audio(bad, cfg)

    extra = "audio_model.audio_encoder.layers.1.blocks.2.output.dense.weight"  # a deeper checkpoint
    with pytest.raises(ConversionError, match=extra.replace(".", r"\.")):
        convert_clap_audio(dict(sd, **{extra: np.zeros((2, 2))}), cfg)
