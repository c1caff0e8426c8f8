"""Training part of a model (tta_jax.train.partial): trainable patterns, starting from a pretrained tree, exports."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tta_jax.errors import ConfigError
from tta_jax.train import partial
from tta_jax.train.optim import make_optimizer
from tta_jax.train.state import ema_update


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {"conditioner": {"attn": {"kernel": jax.random.normal(k[0], (4, 4))}},
            "net": {"conv_in": {"kernel": jax.random.normal(k[1], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
                    "block": {"ada1": {"kernel": jnp.zeros((4, 8))}, "norm": {"scale": jnp.ones(4)}}}}


def test_only_matching_leaves_move_and_clipping_sees_only_them():
    params = _params()
    cfg = {"name": "adamw", "lr": 0.1, "weight_decay": 0.1, "clip_norm": 1.0,
           "trainable": ("conditioner/.*", "net/.*/ada[12]/.*")}
    tx, _ = make_optimizer(cfg, 10)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), params)   # huge frozen grads must not shrink the rest
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["net"]["conv_in"]["kernel"], params["net"]["conv_in"]["kernel"])
    np.testing.assert_array_equal(new["net"]["block"]["norm"]["scale"], params["net"]["block"]["norm"]["scale"])
    assert float(jnp.abs(new["net"]["block"]["ada1"]["kernel"]).min()) > 0.05   # Adam's first step ~ lr
    assert float(jnp.abs(new["conditioner"]["attn"]["kernel"] - params["conditioner"]["attn"]["kernel"]).min()) > 0.05
    mask = partial.trainable_mask(params, cfg["trainable"])
    assert mask["net"]["block"]["ada1"]["kernel"] and not mask["net"]["conv_in"]["bias"]


def test_a_pattern_that_matches_nothing_or_is_invalid_is_named():
    with pytest.raises(ConfigError, match="'net/adapter/.*' matches no parameter"):
        partial.trainable_mask(_params(), ("conditioner/.*", "net/adapter/.*"))
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        partial.trainable_mask(_params(), ("net/(",))


def test_ema_of_an_unchanged_leaf_is_bit_exact():
    p = {"w": jnp.array([0.1, 1e-3, 3.3], jnp.float32)}
    assert (ema_update(p, p, 0.999)["w"] == p["w"]).all()
    moved = ema_update(p, {"w": p["w"] + 1.0}, 0.5)["w"]
    np.testing.assert_allclose(moved, p["w"] + 0.5, rtol=1e-6)


def test_merge_pretrained_places_the_source_under_the_prefix():
    params = _params()
    src = {"conv_in": {"kernel": np.ones((3, 3, 2, 4), np.float32), "bias": np.full(4, 2.0, np.float32)}}
    merged, n = partial.merge_pretrained(params, src, "net")
    assert n == 2
    np.testing.assert_array_equal(merged["net"]["conv_in"]["bias"], 2.0)
    np.testing.assert_array_equal(merged["conditioner"]["attn"]["kernel"], params["conditioner"]["attn"]["kernel"])
    with pytest.raises(ConfigError, match=r"'conv_in/kernel' has shape \(3, 3, 2, 5\)"):
        partial.merge_pretrained(params, {"conv_in": {"kernel": np.ones((3, 3, 2, 5))}}, "net")
    with pytest.raises(ConfigError, match="'conv_out/kernel' is not in the model"):
        partial.merge_pretrained(params, {"conv_out": {"kernel": np.ones(2)}}, "net")
    with pytest.raises(ConfigError, match="init_prefix='unet'"):
        partial.merge_pretrained(params, src, "unet")


def test_export_subset_and_read_back(tmp_path):
    path = str(tmp_path / "a.safetensors")
    written = partial.export_subset(_params(), ("conditioner/.*",), path)
    assert list(written) == ["conditioner/attn/kernel"]
    back = partial.read_params(path)
    np.testing.assert_array_equal(back["conditioner"]["attn"]["kernel"], _params()["conditioner"]["attn"]["kernel"])
    with pytest.raises(ConfigError, match="does not exist"):
        partial.read_params(str(tmp_path / "missing"))


def test_init_parts_place_a_subtree_of_another_run(tmp_path):
    """``config.train.init_parts`` entries ("SOURCE[#SUBTREE]@PREFIX"): one subtree of a saved params file lands
    at the prefix (a pretrained reference encoder inside an adapter), the rest keeps its initialisation."""
    assert partial.parse_part("runs/enc#encoder@conditioner/encoder") == ("runs/enc", "encoder",
                                                                          "conditioner/encoder")
    assert partial.parse_part("/a/b.safetensors@") == ("/a/b.safetensors", "", "")
    with pytest.raises(ConfigError, match="not 'SOURCE\\[#SUBTREE\\]@PREFIX'"):
        partial.parse_part("runs/enc#encoder")
    path = str(tmp_path / "enc.safetensors")
    src = {"encoder": {"kernel": np.full((4, 4), 3.0, np.float32)}, "prototypes": np.ones((5, 4), np.float32)}
    partial.export_subset(src, (), path)
    sub, prefix = partial.read_part(f"{path}#encoder@conditioner/attn")
    merged, n = partial.merge_pretrained(_params(), sub, prefix, "config.train.init_parts")
    assert n == 1
    np.testing.assert_array_equal(merged["conditioner"]["attn"]["kernel"], 3.0)
    np.testing.assert_array_equal(merged["net"]["conv_in"]["kernel"], _params()["net"]["conv_in"]["kernel"])
    with pytest.raises(ConfigError, match="SUBTREE='head'.*has no 'head'"):
        partial.read_part(f"{path}#head@conditioner")
    with pytest.raises(ConfigError, match="'encoder/kernel' is not in the model.*#SUBTREE"):   # no SUBTREE given
        partial.merge_pretrained(_params(), partial.read_part(f"{path}@conditioner/attn")[0], "conditioner/attn",
                                 "config.train.init_parts")
