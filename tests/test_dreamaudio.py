"""DreamAudio: the MRC reference path on both backbones, reference masking, the registry/sampling inputs, the
loader's reference augmentation and rectified flow on a Gaussian (closed-form velocity field)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from configs.common import small_unet
from tta_jax import diffusion as D
from tta_jax.conditioners.registry import reference_cond, reference_spec_of, wrap_denoiser
from tta_jax.data.loader import mask_content_span
from tta_jax.denoisers.factory import build_denoiser
from tta_jax.errors import ConfigError

B, K, L, DT = 2, 3, 5, 8
SECTION = {"name": "dreamaudio", "reference": {"count": K, "seconds": 0.25}}


def _unet_fields(**kw):
    m = small_unet((16, 32), in_channels=4, cross_attention_dim=DT, heads=2, groups=8, attention="high")
    m.update(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
             ref_blocks=(0, 1))
    m.update(kw)
    return m


def _dit_fields():
    return {"name": "dit", "preset": "ezaudio_tiny", "in_channels": 4, "out_channels": 4, "context_dim": DT,
            "use_mask_input": False, "ref_blocks": (0,)}


def _random_params(den, shape, seed=0):
    """Random params of ``den``'s structure without compiling its init (eval_shape only traces): norm scales
    near 1, every other leaf (zero-initialised reference layers included) small random values."""
    tree = jax.eval_shape(lambda r: meta.unbox(den.init(r, shape, L)), jax.random.PRNGKey(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    vals = []
    for (path, leaf), k in zip(flat, keys):
        v = jax.random.normal(k, leaf.shape) / np.sqrt(max(np.prod(leaf.shape[:-1]), 1))
        if jax.tree_util.keystr(path).endswith("['scale']"):
            v = 1.0 + 0.1 * jax.random.normal(k, leaf.shape)
        vals.append(v.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, vals)


def _inputs(latent_shape, ref_len):
    k = jax.random.split(jax.random.PRNGKey(2), 5)
    x = jax.random.normal(k[0], (B,) + latent_shape)
    t = jnp.array([3.0, 600.0])
    text = jax.random.normal(k[1], (B, L, DT))
    tmask = jnp.ones((B, L), bool).at[0, 3:].set(False)
    ref_shape = latent_shape[:-2] + (ref_len, latent_shape[-1])
    cond = dict(text=text, text_mask=tmask, ref_latent=jax.random.normal(k[2], (B, K) + ref_shape),
                ref_text=jax.random.normal(k[3], (B, K, L, DT)), ref_text_mask=jnp.ones((B, K, L), bool),
                reference_mask=jnp.zeros((B, K), bool))
    return x, t, cond


@pytest.fixture(scope="module", params=["unet", "dit"])
def system(request):
    fields = _unet_fields() if request.param == "unet" else _dit_fields()
    shape = (8, 12, 4) if request.param == "unet" else (12, 4)
    den = build_denoiser(fields, inner=lambda d: wrap_denoiser(d, SECTION))
    params = _random_params(den, shape)
    return request.param, fields, shape, den, params


def test_all_references_dropped_is_the_plain_model(system):
    """reference_mask all False: the text-only network of the same weights (up to XLA's float32 fusion; the
    perturbed reference layers alone move the output by ~0.5)."""
    family, fields, shape, den, params = system
    assert set(params) == {"net", "conditioner"}
    x, t, cond = _inputs(shape, 6)
    plain = build_denoiser(fields)
    want = jax.jit(plain.apply)(params["net"], x, t, {"text": cond["text"], "text_mask": cond["text_mask"]})
    got = jax.jit(den.apply)(params, x, t, cond)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_zero_to_k_references_one_compile(system):
    """0..K present references run through one compiled function; a masked slot's content is ignored; present
    references change the output."""
    family, _, shape, den, params = system
    x, t, cond = _inputs(shape, 6)
    f = jax.jit(lambda p, c: den.apply(p, x, t, c))
    outs = []
    for k in range(K + 1):
        c = dict(cond, reference_mask=jnp.broadcast_to(jnp.arange(K) < k, (B, K)))
        outs.append(np.asarray(f(params, c)))
        junk = dict(c, ref_latent=c["ref_latent"].at[:, k:].set(5.0), ref_text=c["ref_text"].at[:, k:].set(-3.0))
        np.testing.assert_allclose(np.asarray(f(params, junk)), outs[-1], atol=1e-5)
    assert f._cache_size() == 1
    for k in range(1, K + 1):
        assert np.abs(outs[k] - outs[0]).max() > 1e-3


def _convs(jaxpr, in_loop=False, tally=None):
    """Convolutions of a jaxpr -> {False: outside any loop, True: inside a while/scan body}."""
    tally = {False: 0, True: 0} if tally is None else tally
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            tally[in_loop] += 1
        loop = in_loop or eqn.primitive.name in ("while", "scan")
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _convs(sub, loop, tally)
    return tally


def test_prepared_references_give_the_same_output_and_leave_the_sampling_loop(system):
    """``Denoiser.prepare`` computes the reference features once: applying the net to the prepared condition
    equals applying it to the raw one, and the Generator's sampling loop no longer runs the reference encoder
    (its convolutions move out of the loop body; U-Net)."""
    from tta_jax.denoisers.factory import Denoiser
    from tta_jax.pipelines import tta

    family, _, shape, den, params = system
    x, t, cond = _inputs(shape, 6)
    cond["reference_mask"] = jnp.array([[True, True, False], [True, False, False]])
    prepared = jax.jit(den.prepare)(params, cond, x)
    assert "refs" in prepared and not {"ref_latent", "ref_text", "reference_mask"} & set(prepared)
    want = jax.jit(den.apply)(params, x, t, cond)
    np.testing.assert_allclose(np.asarray(jax.jit(den.apply)(params, x, t, prepared)), np.asarray(want), atol=1e-6)
    # without an x_t to compare with (the sampler's prepare), references of another codec still fail by name
    wrong = dict(cond, ref_latent=jnp.concatenate([cond["ref_latent"]] * 2, axis=-1))
    with pytest.raises(ValueError, match="latent channels"):
        den.prepare(params, wrong)
    if family != "unet":
        return
    gen = tta.Generator(den, D.make_schedule("scaled_linear", prediction_type="flow"), D.SamplerConfig("euler", 3),
                        guidance_scale=2.0)
    uncond = {"text": jnp.zeros((1, L, DT)), "text_mask": jnp.ones((1, L), bool),
              "reference_mask": jnp.zeros((1, K), bool)}
    key = jax.random.PRNGKey(0)
    # a new partial per trace: make_jaxpr caches traces by function
    with_prepare = _convs(jax.make_jaxpr(functools.partial(gen.traceable, shape=shape))(
        params, cond, uncond, key).jaxpr)
    out = np.asarray(gen.generate(params, cond, uncond, key, shape))
    orig = Denoiser.prepare
    try:
        Denoiser.prepare = lambda self, params, cond, x=None: dict(cond)    # the per-step path
        jax.clear_caches()      # equal Generators share jax's trace and compile caches
        without = _convs(jax.make_jaxpr(functools.partial(gen.traceable, shape=shape))(
            params, cond, uncond, key).jaxpr)
        slow = np.asarray(tta.Generator(gen.denoiser, gen.schedule, gen.sampler, guidance_scale=2.0).generate(
            params, cond, uncond, key, shape))
    finally:
        Denoiser.prepare = orig
    np.testing.assert_allclose(out, slow, atol=1e-5)
    assert with_prepare[True] < without[True] and with_prepare[False] > without[False], (with_prepare, without)


def test_fresh_reference_layers_leave_a_pretrained_net_unchanged(system):
    """Zero-initialised reference cross-attention (``to_out`` = 0, as at init): a pretrained generator inside the
    wrapper is unchanged even with every reference present."""
    family, fields, shape, den, params = system
    x, t, cond = _inputs(shape, 6)
    cond["reference_mask"] = jnp.ones((B, K), bool)

    def zero_out(tree, path=()):
        if not isinstance(tree, dict):
            hit = bool({"attn_ref", "ref_attn"} & set(path)) and "to_out" in path
            return jnp.zeros_like(tree) if hit else tree
        return {k: zero_out(v, path + (k,)) for k, v in tree.items()}

    net = zero_out(params["net"])
    zeroed = sum(int(np.all(np.asarray(a) == 0)) for a in jax.tree_util.tree_leaves(net))
    assert zeroed >= 2 * len(fields["ref_blocks"])   # every reference layer's to_out kernel and bias
    want = jax.jit(build_denoiser(fields).apply)(net, x, t, {"text": cond["text"], "text_mask": cond["text_mask"]})
    got = jax.jit(den.apply)({"net": net, "conditioner": params["conditioner"]}, x, t, cond)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_shared_encoder_and_own_encoder_params():
    """SEncoder: no second stack; own encoder: only the encoder half (no up blocks, no reference layers)."""
    shared = build_denoiser(_unet_fields(), inner=lambda d: wrap_denoiser(d, dict(SECTION, shared_encoder=True)))
    p = jax.eval_shape(lambda r: meta.unbox(shared.init(r, (8, 12, 4), L)), jax.random.PRNGKey(0))
    assert set(p) == {"net"}
    own = build_denoiser(_unet_fields(), inner=lambda d: wrap_denoiser(d, SECTION))
    p = jax.eval_shape(lambda r: meta.unbox(own.init(r, (8, 12, 4), L)), jax.random.PRNGKey(0))
    enc = set(p["conditioner"])
    assert {"conv_in", "time_embedding", "down_blocks_0", "down_blocks_1"} <= enc
    assert not any(k.startswith(("up_blocks", "mid_block", "conv_out")) for k in enc)
    flat = jax.tree_util.tree_flatten_with_path(p["conditioner"])[0]
    assert not any("attn_ref" in jax.tree_util.keystr(path) for path, _ in flat)


def test_needs_reference_blocks_and_text():
    with pytest.raises(ConfigError, match="ref_blocks"):
        build_denoiser(_unet_fields(ref_blocks=()), inner=lambda d: wrap_denoiser(d, SECTION))
    with pytest.raises(ConfigError, match="augment.bogus"):
        build_denoiser(_unet_fields(), inner=lambda d: wrap_denoiser(d, dict(SECTION, augment={"bogus": 1})))
    with pytest.raises(ConfigError, match="not a setting"):
        build_denoiser(_unet_fields(), inner=lambda d: wrap_denoiser(d, dict(SECTION, heads=2)))


class _Codec:
    sample_rate = 8000

    @staticmethod
    def encode(audio):
        a = np.asarray(audio)
        return jnp.asarray(a.reshape(a.shape[0], 1, -1, 40)[..., :4])   # [N, 1, frames, 4]


class _Text:
    @staticmethod
    def encode(texts):
        n = len(texts)
        return {"text": np.arange(n * L * DT, dtype=np.float32).reshape(n, L, DT),
                "text_mask": np.ones((n, L), bool)}


def test_reference_cond_pads_to_k_and_checks_captions():
    spec = reference_spec_of(SECTION, sample_rate=8000)
    assert spec["count"] == K and spec["captions"] and spec["fixed_count"] and spec["sample_rate"] == 8000
    clip = np.sin(np.linspace(0, 50, 2000)).astype(np.float32)
    cond, uncond = reference_cond(SECTION, [clip], 2, codec=_Codec, text=_Text, captions=["a bell"])
    assert cond["ref_latent"].shape == (2, K, 1, 50, 4) and cond["ref_text"].shape == (2, K, L, DT)
    np.testing.assert_array_equal(cond["reference_mask"], [[True, False, False]] * 2)
    np.testing.assert_array_equal(uncond["reference_mask"], np.zeros((1, K), bool))
    none, _ = reference_cond(SECTION, [], 2, codec=_Codec, text=_Text)   # zero references: all slots off
    assert not none["reference_mask"].any() and none["ref_latent"].shape == (2, K, 1, 50, 4)
    with pytest.raises(ConfigError, match="one caption per reference"):
        reference_cond(SECTION, [clip, clip], 2, codec=_Codec, text=_Text, captions=["a bell"])
    with pytest.raises(ConfigError, match="at most"):
        reference_cond(SECTION, [clip] * (K + 1), 2, codec=_Codec, text=_Text, captions=["x"] * (K + 1))


def test_content_mask_zeroes_one_span_per_reference():
    feats = np.ones((3, 2, 40, 4), np.float32)
    out = mask_content_span(feats, 0.1, np.random.default_rng(0))
    assert feats.min() == 1.0   # a copy
    for k in range(3):
        frames = (out[k] == 0).all(axis=(0, 2))
        idx = np.flatnonzero(frames)
        assert len(idx) == 4 and idx[-1] - idx[0] == 3   # one contiguous span of 10%


# ------------------------------------------------------------------------------- rectified flow, closed form
MU, S = 1.5, 0.5   # data x0 ~ N(MU, S^2); x_t = (1 - t) x0 + t eps


def _gaussian_velocity(x, t):
    """E[eps - x0 | x_t = x] for Gaussian data: -MU + (t - (1-t) S^2) / ((1-t)^2 S^2 + t^2) (x - (1-t) MU)."""
    var = (1 - t) ** 2 * S ** 2 + t ** 2
    return -MU + (t - (1 - t) * S ** 2) / var * (x - (1 - t) * MU)


def test_flow_loss_minimised_by_the_gaussian_velocity_field():
    """The rectified-flow loss of the exact field is the irreducible variance; any other field scores worse."""
    sched = D.make_schedule(prediction_type="flow")
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (4096, 1, 1))

    def loss(field):
        def apply_fn(params, x_t, t, cond, rng):
            return field(x_t, (t / sched.num_train_timesteps)[:, None, None])
        return float(D.diffusion_loss(apply_fn, None, {"latent": x0}, jax.random.PRNGKey(1), sched)[0])

    exact = loss(_gaussian_velocity)
    assert exact < loss(lambda x, t: _gaussian_velocity(x, t) * 1.1) - 1e-3
    assert exact < loss(lambda x, t: _gaussian_velocity(x, t) + 0.1) - 1e-3
    assert exact < loss(lambda x, t: -MU + 0 * x)


@pytest.mark.parametrize("name,steps,tol", [("euler", 40, 0.03), ("heun", 20, 0.01)])
def test_ode_sampling_transports_noise_to_the_gaussian(name, steps, tol):
    """Euler / Heun on the exact field take N(0, 1) to N(MU, S^2) (mean and std within ``tol``)."""
    sched = D.make_schedule(prediction_type="flow")
    n = sched.num_train_timesteps
    noise = jax.random.normal(jax.random.PRNGKey(3), (20000, 1, 1))
    out = D.sample(lambda x, t: _gaussian_velocity(x, t[:, None, None] / n), noise, sched,
                   D.SamplerConfig(name, steps))
    out = np.asarray(out).ravel()
    assert abs(out.mean() - MU) < tol and abs(out.std() - S) < tol


# ------------------------------------------------------------------------------------------- token space
def _token_pca(c=4, p=2, k=3):
    from tta_jax.codecs import token_pca

    return token_pca.fit([np.random.default_rng(0).normal(size=(64, p * c)) * np.arange(1, p * c + 1)], k, p)


def test_reference_latents_move_to_the_token_space_with_the_target():
    """DreamAudio's spec names ``ref_latent`` a codec latent: ``patch_batch`` patches it and applies the token
    PCA per reference like the target, dropping the frames past the last whole patch."""
    from tta_jax.pipelines.tta import patch_batch, patchify

    assert reference_spec_of(SECTION)["latent_keys"] == ("ref_latent",)
    pca = _token_pca()
    rng = np.random.default_rng(1)
    batch = {"latent": rng.normal(size=(B, 12, 4)).astype(np.float32),
             "ref_latent": rng.normal(size=(B, K, 7, 4)).astype(np.float32)}
    out = patch_batch(batch, 2, pca, ("ref_latent",))
    assert out["latent"].shape == (B, 6, 3) and out["ref_latent"].shape == (B, K, 3, 3)
    for k in range(K):
        want = pca.encode(patchify(jnp.asarray(batch["ref_latent"][:, k, :6]), 2))
        np.testing.assert_allclose(np.asarray(out["ref_latent"][:, k]), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert patch_batch(batch, 2, pca)["ref_latent"] is batch["ref_latent"]        # not named: untouched
    with pytest.raises(ValueError, match="1 frames .* shorter than one 2-frame token"):
        patch_batch(dict(batch, ref_latent=batch["ref_latent"][:, :, :1]), 2, pca, ("ref_latent",))
    image = {"latent": np.zeros((B, 8, 12, 4)), "ref_latent": np.zeros((B, K, 8, 6, 4))}
    assert patch_batch(image, 1, None, ("ref_latent",))["ref_latent"] is image["ref_latent"]


def test_flow_loss_reads_codec_space_references_on_a_patched_dit():
    """The task's loss on a DiT with 2-frame tokens and a token PCA takes references in the codec's space
    (what precompute stores): the same loss as a plain-token loss fed the references tokenised by hand."""
    from configs.dreamaudio import get_config
    from tta_jax.pipelines.tta import denoiser_of, make_loss_fn, patch_batch

    c = get_config("demo_dit")
    c.model = dict(_dit_fields(), in_channels=3, out_channels=3)
    c.conditioner.reference.count = K
    c.data.patch_frames, c.data.token_pca = 2, 3
    den = denoiser_of(c)
    pca = _token_pca()
    rng = np.random.default_rng(2)
    batch = {"latent": rng.normal(size=(B, 12, 4)).astype(np.float32),
             "ref_latent": rng.normal(size=(B, K, 9, 4)).astype(np.float32),
             "ref_text": rng.normal(size=(B, K, L, DT)).astype(np.float32),
             "ref_text_mask": np.ones((B, K, L), bool), "reference_mask": np.ones((B, K), bool),
             "text": rng.normal(size=(B, L, DT)).astype(np.float32), "text_mask": np.ones((B, L), bool)}
    params = _random_params(den, (6, 3))
    got, _ = jax.jit(make_loss_fn(den, c, pca))(params, batch, jax.random.PRNGKey(3))
    tokens = patch_batch(batch, 2, pca, ("ref_latent",))
    c.data.patch_frames, c.data.token_pca = 1, 0
    want, _ = jax.jit(make_loss_fn(den, c, None))(params, tokens, jax.random.PRNGKey(3))
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    off, _ = jax.jit(make_loss_fn(den, c, None))(params, dict(tokens, reference_mask=np.zeros((B, K), bool)),
                                                 jax.random.PRNGKey(3))
    assert abs(float(off) - float(want)) > 1e-4          # the references reach the loss


def test_generate_audio_gives_the_sampler_references_in_the_losss_token_space(monkeypatch):
    """``generate_audio`` on a 4-frame-token DiT: the reference latents the generator receives are the codec
    latents of the ``--reference`` clips moved to tokens exactly as the loss moves precomputed ones
    (``patch_batch``), the last partial token dropped; the unconditioned branch has them switched off."""
    from configs.dreamaudio import get_config
    from tta_jax.pipelines import tta

    c = get_config("demo_dit")
    c.data.token_pca = 0                                     # plain 4-frame tokens: no fitted PCA needed
    c.model.in_channels = c.model.out_channels = 4 * 80
    c.conditioner.reference.seconds = 1.0                    # 86 latent frames: a partial token to drop
    sm = tta.sampling_of(c, steps=1)
    p = int(c.data.patch_frames)
    assert p == 4
    params = _random_params(sm.denoiser, sm.shape)
    seen = {}

    class Captured(Exception):
        pass

    def capture(self, params, cond, uncond, key, shape):
        seen.update(cond=cond, uncond=uncond)
        raise Captured

    monkeypatch.setattr(type(sm.generator), "generate", capture)
    sr = sm.codec.sample_rate
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.55 * sr)) / sr)).astype(np.float32)
    with pytest.raises(Captured):
        tta.generate_audio(c, params, ["a sound", "another"], steps=1, references=[clip, clip[::-1].copy()],
                           reference_captions=["a tone", "a tone again"])
    raw, _ = reference_cond(c.conditioner, [clip, clip[::-1].copy()], 2, codec=sm.codec, text=sm.text,
                            captions=["a tone", "a tone again"])
    frames = raw["ref_latent"].shape[-2]
    assert frames % p, "the clip should leave a partial token to drop"
    want = tta.patch_batch({"latent": np.zeros((2, 8, 80), np.float32), **raw}, p, None, ("ref_latent",))
    got = np.asarray(seen["cond"]["ref_latent"])
    assert got.shape == (2, 2, frames // p, 4 * 80)
    np.testing.assert_allclose(got, np.asarray(want["ref_latent"]), rtol=1e-6, atol=1e-6)
    assert not np.asarray(seen["uncond"]["reference_mask"]).any() and np.asarray(seen["cond"]["reference_mask"]).all()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from tests.audio_folders import write_audio_folder

    sr = 16000
    t = np.arange(sr) / sr
    clips = []
    for i in range(9):
        fam = ("tone", "noise", "chirp")[i % 3]
        a = {"tone": np.sin(2 * np.pi * (200 + 40 * i) * t),
             "noise": np.random.default_rng(i).normal(size=t.size) * 0.5,
             "chirp": np.sin(2 * np.pi * (300 + 900 * t) * t)}[fam]
        clips.append((0.5 * a, {"caption": f"a {fam} number {i}", "family": fam}))
    return write_audio_folder(tmp_path_factory.mktemp("raw"), clips, sr)


@pytest.mark.slow  # ~1.5 min: customised-data precompute, training, sampling with 0..K references, the CLI
def test_concatenated_targets_train_and_sample_with_references(labelled, tmp_path):
    import subprocess
    import sys

    import soundfile as sf

    from configs.dreamaudio import get_config
    from data_pipeline import build, precompute_config
    from tta_jax.config import validate_config
    from tta_jax.data.loader import LoaderConfig, make_dataset, read_manifest
    from tta_jax.pipelines.tta import generate_audio, reference_augment
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.loop import train

    c = get_config("tiny")
    pc = precompute_config.get_config()
    pc.source, pc.source_args.root = "folder", labelled
    pc.audio.sample_rate = 0
    pc.references.mode = "concatenate"
    data = str(tmp_path / "data")
    build.run(pc, data, system=c, progress=False)
    m = read_manifest(data)
    assert m["num_records"] == 9
    lat, ref = m["shapes"]["latent"][0], m["shapes"]["ref:ref_latent"][0]
    assert ref[0] == 2 and ref[1:] == [lat[0], lat[1] // 2, lat[2]]   # K = 2 halves of the target
    assert m["shapes"]["ref:ref_text"][0][:2] == [2, 8] and m["shapes"]["ref:ref_text_mask"][0] == [2, 8]

    # the loader's DreamAudio augmentation: references dropped one by one, a span of each latent zeroed
    spec = reference_spec_of(c.conditioner, sample_rate=16000)
    it = iter(make_dataset(data, LoaderConfig(batch_size=9, shuffle=False, **reference_augment(spec))))
    batch = next(it)
    mask = batch["reference_mask"]
    assert mask.shape == (9, 2) and 0 < mask.sum() < 18 and (mask[:, 0] != mask[:, 1]).any()
    zero_frames = (batch["ref_latent"] == 0).all(axis=(2, 4))   # [B, K, T]
    assert zero_frames.sum(-1).min() >= 1

    c.data.precomputed_dir = data
    c.train.total_steps, c.train.batch_size = 2, 4
    validate_config(c)
    work = str(tmp_path / "run")
    assert train(c, work).step == 2
    params, _ = load_params(work, ema=False)
    clip = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    outs = []
    for refs, caps in (([], []), ([clip, clip[::-1].copy()], ["a tone", "a tone again"])):
        lat_k, audio, _ = generate_audio(c, params, ["a sound", "two sounds"], workdir=work, steps=2,
                                         references=refs, reference_captions=caps)
        assert np.isfinite(audio).all() and lat_k.shape[0] == 2
        outs.append(lat_k)
    assert np.abs(outs[1] - outs[0]).max() > 0
    with pytest.raises(ConfigError, match="one caption per reference"):
        generate_audio(c, params, ["a sound"], workdir=work, steps=2, references=[clip])

    (tmp_path / "run" / "config.json").write_text(c.to_json_best_effort())
    sf.write(str(tmp_path / "ref.wav"), clip, 16000)
    p = subprocess.run([sys.executable, "-m", "launch.sample", "--workdir", work, "--out", str(tmp_path / "s"),
                        "--prompt", "a sound", "--steps", "2", "--reference", str(tmp_path / "ref.wav"),
                        "--reference_caption", "a tone", "--negative", "prompt"], cwd=os.path.dirname(os.path.dirname(__file__)) or ".",
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert any(f.endswith(".wav") for f in os.listdir(tmp_path / "s"))
