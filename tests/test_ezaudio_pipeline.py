"""EzAudio pipeline pieces: expand_params (stage 1 -> 2), stage-1 text dropping, span masks and the
masked loss, editing (unmasked frames bit-identical) and outpainting (length, source preserved)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.data import masks
from tta_jax import diffusion as D
from tta_jax.codecs.registry import Codec
from tta_jax.denoisers.dit import DiT, ezaudio_tiny
from tta_jax.denoisers.factory import dit_denoiser
from tta_jax.pipelines import ezaudio as EZ
from tta_jax.pipelines import tta

C, T, L, CTX = 8, 16, 5, 32


def _cfg(ctx):
    return ezaudio_tiny(in_channels=C, out_channels=C, width=32, depth=2, num_heads=2, context_dim=ctx)


@functools.lru_cache(maxsize=None)
def _init(ctx, seed=0):
    init = jax.jit(lambda k: dit_denoiser(_cfg(ctx)).init(k, (T, C), L))
    return init(jax.random.PRNGKey(seed))  # boxed


def _plain(p):
    import flax.linen as nn
    return nn.unbox(p)


def test_expand_params_stage1_to_stage2_report_and_function():
    import flax.linen as nn

    old = _plain(_init(None, 0))
    # (numpy: op-by-op jnp here would compile a small program per leaf shape)
    old = jax.tree.map(lambda x: np.asarray(x) + 0.01 * np.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size,
                       old)
    fresh = _init(CTX, 1)
    merged, rep = EZ.expand_params(old, fresh)
    assert isinstance(jax.tree.leaves(merged, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0],
                      nn.meta.AxisMetadata)  # boxes (logical names) kept
    assert "mask_embed" in rep.copied and "in_blocks_0/attn/to_q/kernel" in rep.copied
    assert any(n.startswith("in_blocks_0/cross_attn/") for n in rep.new)
    assert any(n.startswith("context_embed/") for n in rep.new)
    assert any("norm_context" in n for n in rep.new)
    assert not any("cross_attn" in n for n in rep.copied)
    assert rep.dropped == [] and rep.mismatched == []
    assert len(rep.copied) == len(jax.tree.leaves(old))
    m = _plain(merged)
    np.testing.assert_array_equal(m["mask_embed"], old["mask_embed"])
    np.testing.assert_array_equal(m["context_embed"]["linear_1"]["kernel"],
                                  _plain(fresh)["context_embed"]["linear_1"]["kernel"])
    assert "new" in rep.summary() and "copied" in rep.summary()
    # zero-initialised cross-attention output: the expanded model computes the stage-1 function
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(k[0], (2, T, C))
    cond = {"mask": (jax.random.uniform(k[1], (2, T)) > 0.5).astype(jnp.float32),
            "masked_latent": jax.random.normal(k[2], (2, T, C))}
    y1 = jax.jit(DiT(_cfg(None)).apply)({"params": old}, x, jnp.array([10, 500]), cond)
    cond2 = dict(cond, text=jax.random.normal(k[3], (2, L, CTX)), text_mask=jnp.ones((2, L), bool))
    y2 = jax.jit(DiT(_cfg(CTX)).apply)({"params": m}, x, jnp.array([10, 500]), cond2)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y1), rtol=1e-5, atol=1e-5)


def test_expand_params_strict_names_mismatches():
    old = _plain(_init(None, 0))
    old["mask_embed"] = jnp.zeros((C + 1,))
    old["extra_thing"] = {"kernel": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="mask_embed.*|extra_thing"):
        EZ.expand_params(old, _init(CTX, 1))
    merged, rep = EZ.expand_params(old, _init(CTX, 1), strict=False)
    assert rep.dropped == ["extra_thing/kernel"] and rep.mismatched[0].startswith("mask_embed")
    assert "mask_embed" in rep.new or "mask_embed" not in rep.copied


def test_span_masks_follow_the_spec():
    rng = np.random.default_rng(0)
    L_ = 100
    fracs = []
    for _ in range(300):
        m = masks.span_mask(L_, rng)
        assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() >= 10
        # every run of ones is made of whole 10-frame spans: runs are >= 10 long
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, m, 0])))[::2]
        assert runs.min() >= 10
        fracs.append(m.mean())
    assert 0.3 < np.mean(fracs) < 0.65          # ratio U(0.25, 1) of spans, with overlaps
    full = [masks.sample_mask(L_, rng, 0.25).mean() == 1.0 for _ in range(2000)]
    assert 0.70 < np.mean(full) < 0.80          # 25% partial, 75% full


def test_masked_loss_uses_mask_times_valid(monkeypatch):
    from ml_collections import ConfigDict
    from tta_jax.config import base_config

    c = base_config()
    c.model = ConfigDict(_cfg(None).to_dict())
    c.diffusion.prediction_type = "v_prediction"
    model = dit_denoiser(_cfg(None))
    seen = {}
    real = D.diffusion_loss

    def spy(apply_fn, params, batch, rng, schedule, **kw):
        seen.update(batch)
        return real(apply_fn, params, batch, rng, schedule, **kw)

    monkeypatch.setattr(D, "diffusion_loss", spy)
    loss_fn = tta.make_loss_fn(model, c)
    r = np.random.default_rng(0)
    mask = (r.random((2, T)) > 0.5).astype(np.float32)
    valid = np.ones((2, T), np.float32)
    valid[:, -3:] = 0
    batch = {"latent": r.standard_normal((2, T, C)).astype(np.float32), "mask": mask, "latent_valid": valid}
    loss, _ = loss_fn(_plain(_init(None, 0)), batch, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(seen["loss_mask"]), mask * valid)
    assert "text" not in seen["cond"] and np.isfinite(float(loss))


def toy_text(dim, max_len):
    from tta_jax.text.registry import build_text_encoder

    return build_text_encoder({"name": "bytes_embed", "dim": dim, "max_len": max_len}).encode


def _reshape_codec(hop=4):
    """Lossless toy codec: audio [B, T] -> latent [B, T/(hop*C)*... ] by reshaping."""
    def enc(a):
        a = jnp.asarray(a, jnp.float32)
        n = a.shape[1] // (hop * C) * hop * C
        return a[:, :n].reshape(a.shape[0], n // (hop * C), hop * C)[..., ::hop]

    def dec(z):
        return jnp.repeat(z, hop, axis=-1).reshape(z.shape[0], -1)
    return Codec("reshape", enc, dec, 8000, hop * C, "sequence", C, None, {"name": "reshape"})


def _pipeline(window=T):
    model = DiT(_cfg(CTX))
    params = _plain(_init(CTX, 5))
    # non-zero cross-attention output so text matters
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 if "cross_attn" in jax.tree_util.keystr(p) else x, params)
    return EZ.EzAudio(model=model, params=params, codec=_reshape_codec(), text_encode=toy_text(CTX, L),
                      sampler=EZ.default_sampler(4), window_frames=window)


def test_edit_keeps_unmasked_frames_bit_identical():
    ez = _pipeline()
    rng = np.random.default_rng(0)
    hop = ez.codec.hop_length
    audio = rng.standard_normal(T * hop).astype(np.float32)
    out = ez.edit(audio, "a sweeping chirp", 0.25 * T * hop / 8000, 0.75 * T * hop / 8000, jax.random.PRNGKey(1))
    m = out["mask"].astype(bool)
    assert m.sum() == T // 2 and not m[: T // 4].any() and m[T // 4: 3 * T // 4].all()
    z, src = np.asarray(out["latent"]), np.asarray(out["source_latent"])
    np.testing.assert_array_equal(z[0, ~m], src[0, ~m])      # bit-identical
    assert np.abs(z[0, m] - src[0, m]).mean() > 1e-3          # the masked range was regenerated
    assert out["audio"].shape == (1, audio.size)
    assert ez.edit_guidance_scale == 3.5 and ez.edit_guidance_rescale == 0.0
    assert ez.guidance_scale == 5.0 and ez.guidance_rescale == 0.75
    assert ez.sampler.spacing == "trailing" and ez.sampler.eta == 1.0
    assert ez.schedule.prediction_type == "v_prediction"


def test_outpaint_extends_and_keeps_source():
    ez = _pipeline()
    hop, sr = ez.codec.hop_length, ez.codec.sample_rate
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(10 * hop).astype(np.float32)    # 10 frames
    total_s = 40 * hop / sr                                       # 40 frames: 2.5 windows
    out = ez.outpaint(audio, "bursts of filtered noise", total_s, jax.random.PRNGKey(2), overlap_frames=6,
                      paste_source_audio=True)
    assert out["latent"].shape == (1, 40, C)
    assert out["audio"].shape == (1, 40 * hop)
    np.testing.assert_array_equal(np.asarray(out["latent"][:, :10]), np.asarray(out["source_latent"]))
    np.testing.assert_array_equal(np.asarray(out["audio"][0, :audio.size]), audio)
    assert out["windows"] == 3    # 10 -> 20 (context: last 6 frames) -> 30 -> 40 frames
    assert np.all(np.isfinite(np.asarray(out["latent"])))
