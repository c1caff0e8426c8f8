"""SERST prompt adapter on the Tango-style U-Net (and the DiT): zero-init identity, reference-pair data, training
only the adapter on top of a frozen base (bit-identical frozen params, adapter-only export), sampling with
references."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from configs.tango import get_config
from tta_jax.pipelines.tta import denoiser_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 16, 8)          # tiny Tango latent [H, T, C]
TEXT = {"text": np.zeros((1, 8, 32), np.float32), "text_mask": np.ones((1, 8), bool)}


def _cond(b, rng, ref_mask=None):
    k1, k2 = jax.random.split(rng)
    return {"text": jax.random.normal(k1, (b, 8, 32)), "text_mask": jnp.ones((b, 8), bool).at[:, 6:].set(False),
            "reference": jax.random.normal(k2, (b, 2, 201, 80)),
            "reference_mask": jnp.ones((b, 2), bool) if ref_mask is None else ref_mask}


@pytest.fixture(scope="module")
def models():
    base = denoiser_of(get_config("tiny"))
    serst = denoiser_of(get_config("tiny_serst"))
    p_base = meta.unbox(base.init(jax.random.PRNGKey(0), SHAPE, 8, TEXT))
    p_serst = meta.unbox(serst.init(jax.random.PRNGKey(1), SHAPE, 8, TEXT))
    return base, serst, p_base, p_serst


def test_zero_initialised_adapter_leaves_the_base_unet_unchanged(models):
    from tta_jax.train.partial import merge_pretrained

    base, serst, p_base, p_serst = models
    merged, n = merge_pretrained(p_serst, p_base, "net")
    assert n == len(jax.tree.leaves(p_base))
    x = jax.random.normal(jax.random.PRNGKey(3), (2,) + SHAPE)
    t = jnp.array([3, 700])
    cond = _cond(2, jax.random.PRNGKey(4))
    apply_serst = jax.jit(lambda p, c: serst.apply(p, x, t, c))
    want = jax.jit(lambda p, c: base.apply(p, x, t, c))(p_base, {"text": cond["text"], "text_mask": cond["text_mask"]})
    got = apply_serst(merged, cond)   # bit-identical op by op: tests/test_tango_convert.py (converted U-Net)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-6)
    # a non-zero modulation makes the reference matter (and the check above could fail)
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.05 if "ada1" in jax.tree_util.keystr(p) else v, merged)
    assert float(jnp.abs(apply_serst(bumped, cond) - want).max()) > 1e-4


def test_prepared_style_gives_the_same_output(models):
    """``Denoiser.prepare`` computes the style once (what the sampler does before its loop): the net on the
    prepared condition equals the net on the raw one; passing both a style and references is refused."""
    _, serst, _, p = models
    bumped = jax.tree_util.tree_map_with_path(lambda q, v: v + 0.05 if "ada1" in jax.tree_util.keystr(q) else v, p)
    x = jax.random.normal(jax.random.PRNGKey(3), (2,) + SHAPE)
    t = jnp.array([3, 700])
    cond = _cond(2, jax.random.PRNGKey(4), jnp.array([[True, False], [True, True]]))
    prepared = jax.jit(serst.prepare)(bumped, cond, x)
    assert prepared["style"].shape == (2, 32) and "reference" not in prepared
    f = jax.jit(lambda c: serst.apply(bumped, x, t, c))
    np.testing.assert_allclose(np.asarray(f(prepared)), np.asarray(f(cond)), atol=1e-5)   # float32 fusion: ~2e-6
    with pytest.raises(ValueError, match="one or the other"):
        serst.apply(bumped, x, t, dict(cond, style=prepared["style"]))


def test_style_is_zero_without_references_and_any_k_works(models):
    from tta_jax.conditioners.serst import StyleAdapter, encoder_config

    _, _, _, p = models
    enc = encoder_config({"preset": "tiny"})
    ad = StyleAdapter(enc, heads=2)
    cond = _cond(2, jax.random.PRNGKey(5), jnp.array([[True, False], [False, False]]))
    style = ad.apply({"params": p["conditioner"]}, cond["text"], cond["text_mask"], cond["reference"],
                     cond["reference_mask"])
    assert style.shape == (2, 32)
    assert float(jnp.abs(style[0]).max()) > 0 and float(jnp.abs(style[1]).max()) == 0.0
    # a masked-out reference changes nothing: [ref0, junk(masked)] == [ref0] alone
    one = ad.apply({"params": p["conditioner"]}, cond["text"][:1], cond["text_mask"][:1], cond["reference"][:1, :1])
    np.testing.assert_allclose(np.asarray(one), np.asarray(style[:1]), atol=1e-5)


def test_serst_needs_a_style_input_and_text():
    from tta_jax.errors import ConfigError

    c = get_config("tiny_serst")
    c.model.class_embed_type = None
    with pytest.raises(ConfigError, match="class_embed_type"):
        denoiser_of(c)
    c = get_config("tiny_serst")
    c.conditioner.bogus = 1
    with pytest.raises(ConfigError, match="config.conditioner.bogus"):
        denoiser_of(c)


def test_dit_takes_the_serst_adapter_through_the_same_style_path():
    from configs.ezaudio import get_config as ezaudio

    c = ezaudio("tiny")
    c.model.style_dim = int(c.model.get("context_dim") or 32)
    c.conditioner = get_config("tiny_serst").conditioner
    den = denoiser_of(c)
    assert "reference" in den.cond_keys and "style" not in den.cond_keys
    d = c.model.context_dim
    p = meta.unbox(den.init(jax.random.PRNGKey(0), (16, c.model.in_channels), 8,
                            {"text": np.zeros((1, 8, d), np.float32), "text_mask": np.ones((1, 8), bool)}))
    assert "conditioner" in p and "net" in p
    x = jnp.zeros((1, 16, c.model.in_channels))
    cond = {"text": jnp.ones((1, 8, d)), "text_mask": jnp.ones((1, 8), bool),
            "reference": jnp.ones((1, 1, 201, 80))}
    assert den.apply(p, x, jnp.array([5]), cond).shape == x.shape


def test_dit_pooled_style_path_adds_the_adapter_residual_to_the_pooled_text():
    """``style_path="pooled"``: the adapter returns mean(a) only (zero-init output: the base DiT exactly at init);
    the DiT's pooled-text MLP then sees mean(text) + mean(a), which is the paper's style; no new DiT params."""
    from flax import linen as nn

    from configs.ezaudio import get_config as ezaudio
    from tta_jax.denoisers.dit import DiTConfig
    from tta_jax.train.partial import merge_pretrained

    c = ezaudio("tiny")
    c.model.pooled_context = True
    base = denoiser_of(c)
    d, ch = c.model.context_dim, c.model.in_channels
    c.model.style_dim = d
    c.model.style_path = "pooled"
    c.conditioner = get_config("tiny_serst").conditioner
    den = denoiser_of(c)
    init_cond = {"text": np.zeros((1, 8, d), np.float32), "text_mask": np.ones((1, 8), bool)}
    p_base = meta.unbox(base.init(jax.random.PRNGKey(0), (16, ch), 8, init_cond))
    # a "trained" base: the zero-initialised AdaLN tables made non-zero, so the timestep embedding matters
    p_base = jax.tree_util.tree_map_with_path(
        lambda q, v: v + 0.05 if "time_ada" in jax.tree_util.keystr(q) else v, p_base)
    p = meta.unbox(den.init(jax.random.PRNGKey(1), (16, ch), 8, init_cond))
    assert not any("style_embed" in jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(p))
    merged, n = merge_pretrained(p, p_base, "net")
    assert n == len(jax.tree.leaves(p_base))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    cond = {"text": jax.random.normal(k1, (2, 8, d)), "text_mask": jnp.ones((2, 8), bool).at[:, 5:].set(False),
            "reference": jax.random.normal(k2, (2, 1, 201, 80)), "reference_mask": jnp.array([[True], [True]])}
    x = jax.random.normal(k3, (2, 16, ch))
    t = jnp.array([3, 700])
    want = base.apply(p_base, x, t, {"text": cond["text"], "text_mask": cond["text_mask"]})
    np.testing.assert_array_equal(np.asarray(den.apply(merged, x, t, cond)), np.asarray(want))

    # a trained (non-zero) attention output: the pooled-text MLP's input is mean(text) + the adapter's residual
    bumped = jax.tree_util.tree_map_with_path(
        lambda q, v: v + 0.05 if "conditioner" in jax.tree_util.keystr(q) and "out" in jax.tree_util.keystr(q)
        else v, merged)
    seen = {}

    def grab(f, args, kwargs, ctx):
        if ctx.method_name == "__call__" and ctx.module.name == "pooled_text_embed":
            seen["pooled"] = args[0]
        return f(*args, **kwargs)

    with nn.intercept_methods(grab):
        got = den.apply(bumped, x, t, cond)
    prepared = den.prepare(bumped, cond, x)
    style = np.asarray(prepared["style"])
    w = np.asarray(cond["text_mask"], np.float32)[..., None]
    mean_text = (np.asarray(cond["text"]) * w).sum(1) / w.sum(1)
    np.testing.assert_allclose(np.asarray(seen["pooled"]), mean_text + style, rtol=1e-5, atol=1e-6)
    assert np.abs(style).max() > 1e-3 and float(jnp.abs(got - want).max()) > 1e-4
    # a row without reference gets exactly the base
    dropped = dict(cond, reference_mask=jnp.array([[True], [False]]))
    np.testing.assert_array_equal(np.asarray(den.apply(bumped, x, t, dropped))[1], np.asarray(want)[1])
    with pytest.raises(ValueError, match="pooled_context=True"):
        DiTConfig(context_dim=d, style_dim=d, style_path="pooled")
    with pytest.raises(ValueError, match="style_path"):
        DiTConfig(style_path="tokens")


def test_tokens_path_adds_the_adapter_residual_to_the_text_states_of_a_unet_without_style_input(models):
    """``conditioner.path="tokens"``: no style input needed; the denoiser reads text + a (a = the adapter's per-token
    residual, zero at init and on rows without reference), computed once by ``prepare``."""
    from tta_jax.errors import ConfigError
    from tta_jax.train.partial import merge_pretrained

    base, _, p_base, _ = models
    c = get_config("tiny")
    c.conditioner = get_config("tiny_serst").conditioner
    c.conditioner.path = "tokens"
    den = denoiser_of(c)
    assert "reference" in den.cond_keys and "style" not in den.cond_keys
    p = meta.unbox(den.init(jax.random.PRNGKey(1), SHAPE, 8, TEXT))
    merged, n = merge_pretrained(p, p_base, "net")
    assert n == len(jax.tree.leaves(p_base)) and set(p) == {"conditioner", "net"}
    x = jax.random.normal(jax.random.PRNGKey(3), (2,) + SHAPE)
    t = jnp.array([3, 700])
    cond = _cond(2, jax.random.PRNGKey(4), jnp.array([[True, False], [False, False]]))
    text = {"text": cond["text"], "text_mask": cond["text_mask"]}
    want = base.apply(p_base, x, t, text)
    np.testing.assert_array_equal(np.asarray(den.apply(merged, x, t, cond)), np.asarray(want))
    # a trained (non-zero) attention output: the U-Net sees text + residual; row 1 (no reference) is the base
    bumped = jax.tree_util.tree_map_with_path(
        lambda q, v: v + 0.05 if "conditioner" in jax.tree_util.keystr(q) and "out" in jax.tree_util.keystr(q)
        else v, merged)
    prepared = den.prepare(bumped, cond, x)
    res = np.asarray(prepared["text_residual"])
    assert res.shape == (2, 8, 32) and "reference" not in prepared and "reference_mask" not in prepared
    assert np.abs(res[0]).min() > 0 and np.abs(res[1]).max() == 0.0
    got = den.apply(bumped, x, t, cond)
    np.testing.assert_allclose(np.asarray(den.apply(bumped, x, t, prepared)), np.asarray(got), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(base.apply(
        p_base, x, t, dict(text, text=cond["text"] + res))), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[1], np.asarray(want)[1])
    assert float(jnp.abs(got[0] - want[0]).max()) > 1e-4
    with pytest.raises(ValueError, match="one or the other"):
        den.apply(bumped, x, t, dict(cond, text_residual=prepared["text_residual"]))
    c.conditioner.path = "adanorm"
    with pytest.raises(ConfigError, match="config.conditioner.path='adanorm'"):
        denoiser_of(c)
    # a denoiser that also has a style input would build a style projection nothing feeds
    s = get_config("tiny_serst")
    s.conditioner.path = "tokens"
    with pytest.raises(ConfigError, match="config.conditioner.path='tokens'.*style input"):
        denoiser_of(s)


def test_negative_prompt_guides_on_the_reference_alone():
    """``sampler.negative="prompt"``: CFG's unconditioned branch is the same prompt (the sampler then switches the
    references off in it), refused for a system without extra inputs, where it would guide on nothing."""
    from tta_jax.errors import ConfigError
    from tta_jax.pipelines import tta

    cond, uncond = tta.text_conds(lambda texts: {"text": np.arange(len(texts) * 6.0).reshape(len(texts), 2, 3),
                                                 "text_mask": np.ones((len(texts), 2), bool)}, ["a", "b"], "prompt")
    assert set(uncond) == set(cond) and all(np.array_equal(cond[k], uncond[k]) for k in cond)
    c = get_config("tiny")
    c.sampler.negative = "prompt"
    with pytest.raises(ConfigError, match="negative='prompt' guides on the conditioner's extra inputs"):
        tta.sampling_of(c)


# ------------------------------------------------------------------------------------------------ data
def test_pair_references_pairs_other_clips_of_the_same_event():
    from data_pipeline.references import pair_references
    from data_pipeline.sources import Example

    exs = [Example(f"k{i}", f"cap {i}", labels={"family": fam, "register": "low", "pattern": "arpeggio",
                                                "dynamics": "soft", "tempo": "slow"})
           for i, fam in enumerate(["piano", "piano", "piano", "organ", "bass", "organ"])]
    exs.append(Example("k6", "two", labels={"family": "piano", "2_family": "drums"}))
    out, report = pair_references(exs, label="family", count=1, seed=0)
    assert report == {"kept": 5, "no_label": 0, "two_events": 1, "alone": 1}   # bass is alone
    for ex in out:
        (ref,) = ex.refs
        src = ref.key.split("~")[-1]
        assert src != ex.key and exs[int(src[1:])].labels["family"] == ex.labels["family"]
    again, _ = pair_references(list(reversed(exs)), label="family", count=1, seed=0)
    assert {e.key: e.refs[0].key for e in again} == {e.key: e.refs[0].key for e in out}   # order-free
    from tta_jax.data.embedded import neutral_caption

    capped, _ = pair_references(exs, label="family", count=2, caption_fn=neutral_caption, caption_prob=1.0)
    assert [e.caption for e in capped] == ["An arpeggio in a low register, soft and slow."] * 3
    assert all(len(e.refs) == 2 for e in capped)


def test_loader_emits_references_and_drops_them_together(tmp_path):
    from tta_jax.data import records
    from tta_jax.data.loader import LoaderConfig, make_dataset

    recs = []
    for i in range(8):
        recs.append(records.encode_record({"key": f"k{i}", "caption": "c", "split": "train", "labels": {},
                                           "latent": np.zeros((4, 6, 2), np.float32), "latent_frames": 6,
                                           "ref:reference": np.full((2, 5, 3), i, np.float32)}))
    records.write_shard(str(tmp_path / "s.array_record"), recs)
    (tmp_path / "manifest.json").write_text('{"shards": ["s.array_record"], "num_examples": 8}')
    batch = next(iter(make_dataset(str(tmp_path), LoaderConfig(batch_size=8, shuffle=False,
                                                                 reference_dropout=0.5))))
    assert batch["reference"].shape == (8, 2, 5, 3) and batch["reference_mask"].shape == (8, 2)
    m = batch["reference_mask"]
    assert (m.all(1) | ~m.any(1)).all() and 0 < m[:, 0].sum() < 8      # both refs kept or both dropped
    np.testing.assert_array_equal(batch["reference"][:, 0, 0, 0], np.arange(8))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from tests.audio_folders import write_audio_folder

    sr = 16000
    t = np.arange(int(sr * 0.6)) / sr
    clips = []
    for i in range(8):
        fam = ("tone", "noise")[i % 2]
        a = np.sin(2 * np.pi * (200 + 40 * i) * t) if fam == "tone" else np.random.default_rng(i).normal(size=t.size)
        clips.append((0.3 * a, {"caption": f"clip number {i}", "family": fam}))
    return write_audio_folder(tmp_path_factory.mktemp("raw"), clips, sr)


@pytest.mark.slow  # ~1 min: precompute with references, base training, adapter training, sampling
def test_adapter_trains_on_a_frozen_base_and_samples_with_references(labelled, tmp_path):
    from data_pipeline import build, precompute_config
    from tta_jax.config import validate_config
    from tta_jax.data.loader import read_manifest
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.loop import train
    from tta_jax.train.partial import export_subset, read_params

    system = get_config("tiny_serst")
    pc = precompute_config.get_config()
    pc.source, pc.source_args.root = "folder", labelled
    pc.audio.sample_rate, pc.audio.crop_seconds = 0, 0.5
    build.run(pc, str(tmp_path / "data"), system=system, progress=False)
    m = read_manifest(str(tmp_path / "data"))
    assert m["num_records"] == 8 and m["shapes"]["ref:reference"][0] == [1, 201, 80]

    base_cfg = get_config("tiny")
    base_cfg.data.precomputed_dir = str(tmp_path / "data")   # reference fields are ignored by the base
    base_cfg.train.total_steps, base_cfg.train.batch_size = 2, 4
    validate_config(base_cfg)
    train(base_cfg, str(tmp_path / "base"))
    base_params = read_params(str(tmp_path / "base"))

    c = get_config("tiny_serst")
    c.data.precomputed_dir = str(tmp_path / "data")
    c.train.total_steps, c.train.batch_size = 3, 4
    c.train.init_from, c.train.init_prefix = str(tmp_path / "base"), "net"
    validate_config(c)
    res = train(c, str(tmp_path / "serst"))
    assert res.step == 3
    trained, _ = load_params(str(tmp_path / "serst"), ema=False)
    flat_base = jax.tree_util.tree_leaves_with_path(base_params)
    for path, v in flat_base:   # every base parameter is bit-identical after training the adapter
        got = trained["net"]
        for k in path:
            got = got[k.key]
        np.testing.assert_array_equal(np.asarray(got), v, err_msg=jax.tree_util.keystr(path))
    init = meta.unbox(denoiser_of(c).init(jax.random.PRNGKey(c.seed), SHAPE, 8, TEXT))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), trained["conditioner"],
                         init["conditioner"])
    assert any(jax.tree.leaves(moved))
    # launch.export --trainable_only: the adapter alone (the frozen U-Net stays out)
    import subprocess
    import sys

    from safetensors.numpy import load_file

    (tmp_path / "serst" / "config.json").write_text(c.to_json_best_effort())
    out = tmp_path / "adapter.safetensors"
    p = subprocess.run([sys.executable, "-m", "launch.export", "--workdir", str(tmp_path / "serst"), "--out", str(out),
                        "--trainable_only"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    written = load_file(str(out))
    assert written and all(k.startswith("conditioner/") or "/ada" in k or k.startswith("net/class_embedding/")
                           for k in written)
    assert not any(k.startswith("net/conv_in") for k in written)
    full = export_subset(trained, (), str(tmp_path / "all.safetensors"))
    assert len(written) < len(full) and set(written) < set(full)

    ref = np.sin(2 * np.pi * 330 * np.arange(16000) / 16000).astype(np.float32)
    lat, audio, codec = generate_audio(c, trained, ["a clip", "another clip"], references=[ref],
                                       workdir=str(tmp_path / "serst"), steps=2)
    assert lat.shape[0] == 2 and np.isfinite(audio).all()
    # the loss gap (benchmarks/serst_reference.py --data): right vs another row's vs no reference, same noise draws
    from tta_jax.eval.reference_gap import reference_loss_gap

    gap = reference_loss_gap(c, trained, str(tmp_path / "data"), 2)
    assert all(np.isfinite(gap[k]) for k in ("right", "other", "none"))
    assert gap["none_minus_right"][0] != 0.0 and gap["other_minus_right"][0] != 0.0
    from tta_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="--reference"):
        generate_audio(c, trained, ["a clip"], workdir=str(tmp_path / "serst"), steps=2)
