"""Several text encoders at once (``config.text.name = "multi"``, Auffusion): per-encoder adapters in the
model, concatenation along the sequence, per-encoder caption dropout in the loader."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.core import meta

from tta_jax.data import loader
from tta_jax.denoisers.factory import build_denoiser, with_text_adapters
from tta_jax.errors import ConfigError
from tta_jax.pipelines import tta
from tta_jax.text.conditioner import TextAdapters

UNET = {"name": "unet", "in_channels": 4, "out_channels": 4, "block_out_channels": (8, 16),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "layers_per_block": 1,
        "attention_head_dim": 2, "cross_attention_dim": 16, "norm_num_groups": 4}
DIT = {"name": "dit", "in_channels": 4, "out_channels": 4, "width": 16, "depth": 2, "num_heads": 2,
       "context_dim": 16, "sola_rank": 2, "time_freq_dim": 16, "use_mask_input": False}


def _example(b=1, widths=(12, 20), lens=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    cond = {}
    for i, (d, n) in enumerate(zip(widths, lens)):
        cond[f"text:{i}"] = rng.standard_normal((b, n, d)).astype(np.float32)
        cond[f"text_mask:{i}"] = np.arange(n)[None].repeat(b, 0) < n - i  # encoder 1 has a padded token
    return cond


def _random_like(tree, seed=0, scale=0.2):
    """``scale`` x standard-normal float32 numpy arrays of the shapes of ``tree``'s leaves."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(np.float32), tree)


@pytest.mark.parametrize("model,shape", [(UNET, (8, 8, 4)), (DIT, (8, 4))])
def test_adapters_concatenate_each_encoder_into_the_denoisers_context(model, shape):
    inner = build_denoiser(model)
    den = with_text_adapters(inner, 2)
    assert {"text:0", "text_mask:0", "text:1", "text_mask:1"} <= set(den.cond_keys)
    assert "text" not in den.cond_keys
    ex = _example()
    # the structure of init traced without running it; random values everywhere (compiling the initialisers
    # cost more than the rest of the test, and the DiT's zero-initialised output would make the check trivial)
    params = _random_like(meta.unbox(jax.eval_shape(lambda k: den.init(k, shape, 1, ex), jax.random.PRNGKey(0))))
    assert set(params) == {"text_adapters", "net"}
    assert params["text_adapters"]["adapter_0"]["kernel"].shape == (12, 16)
    assert params["text_adapters"]["adapter_1"]["kernel"].shape == (20, 16)

    cond = _example(b=2, seed=1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
    t = jnp.array([10, 500])
    # one compiled program per network, reused for every call below (op-by-op dispatch is slow on CPU)
    apply, apply_inner = jax.jit(den.apply), jax.jit(inner.apply)
    got = apply(params, x, t, cond)
    # by hand: adapt each encoder with its own Linear + LayerNorm, concatenate, call the bare denoiser
    adapted = TextAdapters({"0": 12, "1": 20}, 16).apply({"params": params["text_adapters"]},
                                                        {"0": cond["text:0"], "1": cond["text:1"]})
    ctx = jnp.concatenate([adapted["0"], adapted["1"]], axis=1)
    msk = jnp.concatenate([cond["text_mask:0"], cond["text_mask:1"]], axis=1)
    want = apply_inner(params["net"], x, t, {"text": ctx, "text_mask": msk})
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # each encoder matters (weights perturbed)
    noisy = jax.tree.map(lambda p, n: p + n, params, _random_like(params, seed=2))
    base = apply(noisy, x, t, cond)
    for i in (0, 1):
        cond2 = dict(cond, **{f"text:{i}": cond[f"text:{i}"] * -2.0})
        assert float(jnp.abs(apply(noisy, x, t, cond2) - base).max()) > 1e-4, i


def test_init_needs_the_encoders_widths_and_a_text_denoiser():
    den = with_text_adapters(build_denoiser(UNET), 2)
    with pytest.raises(ConfigError, match=r"cond\['text:0'\]"):
        den.init(jax.random.PRNGKey(0), (8, 8, 4), 1)
    with pytest.raises(ConfigError, match="no text context"):
        with_text_adapters(build_denoiser(dict(DIT, context_dim=0)), 2)


def test_config_text_multi_wraps_the_denoiser():
    c = ml_collections.ConfigDict({"model": UNET, "text": {"name": "multi", "encoders": [{"name": "t5"},
                                                                                          {"name": "clip"}]}})
    assert "text:1" in tta.denoiser_of(c).cond_keys
    c.text = {"name": "clip"}
    assert "text" in tta.denoiser_of(c).cond_keys


def test_example_text_cond_from_manifest_shapes():
    ex = tta.example_text_cond({"latent": [[8, 8, 4]], "txt:text:0": [[3, 12]], "txt:text_mask:0": [[3]]})
    assert ex["text:0"].shape == (1, 3, 12) and ex["text_mask:0"].dtype == bool and "latent" not in ex


def test_loader_drops_each_encoder_independently():
    aug = loader._Augment(loader.LoaderConfig(caption_dropout=0.5),
                          {"text:0": np.zeros((3, 2)), "text_mask:0": np.zeros(3, bool),
                           "text:1": np.zeros((4, 2)), "text_mask:1": np.zeros(4, bool)})
    rec = {"latent": np.zeros((4, 2), np.float32), "txt:text:0": np.ones((3, 2)), "txt:text_mask:0": np.ones(3, bool),
           "txt:text:1": np.ones((4, 2)), "txt:text_mask:1": np.ones(4, bool)}
    seen = set()
    for i in range(64):
        out = aug(rec, np.random.default_rng(i))
        d0, d1 = bool(out["text:0"].sum() == 0), bool(out["text:1"].sum() == 0)
        assert d0 == bool(out["text_mask:0"].sum() == 0) and d1 == bool(out["text_mask:1"].sum() == 0)
        assert bool(out["caption_dropped"]) == (d0 and d1)   # all dropped = unconditional
        seen.add((d0, d1))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}
    assert loader.text_group("txt:text_mask:1") == "1" and loader.text_group("txt:text") == ""
