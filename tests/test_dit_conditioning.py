"""EzAudio-DiT extra conditioning paths (issue #17 item 3): ``style`` (SERST, timestep/AdaLN), ``acoustic``
(DC-LDM extra cross-attention) and ``refs`` (DreamAudio per-out-block reference context, from
``DiT.encode`` of a reference DiT + ``dit_refs_from_encoder_features``).

1. zero-init: a "pretrained" DiT (random params everywhere) with a path added is bit-identical, with the
   condition given or missing;
2. the path carries information: trained on a toy task where only that condition tells the target, the
   loss drops far below the same model trained without the path;
3. shape / config errors name the key;
4. reference DiT -> ``encode`` -> refs -> generation DiT; masked (dropped) references without a retrace.
"""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from tta_jax.denoisers.dit import DiT, DiTConfig, dit_refs_from_encoder_features, ezaudio_tiny
from tta_jax.denoisers.factory import dit_denoiser
from tta_jax.nn.sharding import logical_to_mesh_sharding, make_mesh

# compile time dominates these CPU tests: skip most XLA backend optimisation (the programs are tiny); every
# compared program is compiled with the same options
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

B, T, L = 4, 8, 3
STYLE, ACOUSTIC, LA, LR = 8, 12, 5, 6
# a small EzAudio stack (depth 2: in_blocks_0, mid_block, out_blocks_0): CPU compile time dominates
SMALL = ezaudio_tiny(depth=2, width=32, num_heads=2, in_channels=8, out_channels=8, context_dim=16)
W, C = SMALL.width, SMALL.in_channels

PATHS = {
    "style": dict(style_dim=STYLE),
    "acoustic": dict(acoustic_dim=ACOUSTIC),                 # acoustic_blocks None: every block
    "refs": dict(ref_blocks=(0,)),
    "all": dict(style_dim=STYLE, acoustic_dim=ACOUSTIC, acoustic_blocks=(0, 2), ref_blocks=(0,)),  # in 0, out 0
}
NEW_KEYS = {"style", "acoustic", "acoustic_mask", "refs"}


def _normal(rng, *shape):
    """float32 N(0, 1) from numpy (host-side: no per-op XLA compiles for the test data)."""
    return rng.standard_normal(shape).astype(np.float32)


def _conds(cfg, key=0, batch=B):
    """Text/text_mask plus every condition the config takes (random; some masked entries)."""
    rng = np.random.default_rng(key)
    text_mask = np.ones((batch, L), bool)
    text_mask[0, -1] = False
    cond = {"text": _normal(rng, batch, L, cfg.context_dim), "text_mask": text_mask}
    if cfg.style_dim:
        cond["style"] = _normal(rng, batch, cfg.style_dim)
    if cfg.acoustic_dim:
        cond["acoustic"] = _normal(rng, batch, LA, cfg.acoustic_dim)
        cond["acoustic_mask"] = np.ones((batch, LA), bool)
        cond["acoustic_mask"][1, 3:] = False
    if cfg.ref_blocks:
        refs = [None] * (cfg.depth // 2)
        for i in cfg.ref_blocks:
            m = np.ones((batch, LR), bool)
            m[2, :2] = False
            refs[i] = (_normal(rng, batch, LR, cfg.width), m)
        cond["refs"] = refs
    return cond


def random_params(model, *args, scale=0.2, seed=0):
    """A stand-in "pretrained" checkpoint: the model's param tree (from eval_shape) filled with N(0, scale^2)
    (the EzAudio zero-init layers are non-zero, as after training)."""
    abstract = meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), abstract)


def merge(new, old):
    """``new`` with every leaf that ``old`` also has replaced by ``old``'s (checks shapes match)."""
    if isinstance(new, dict):
        return {k: merge(v, old[k]) if k in old else v for k, v in new.items()}
    assert new.shape == old.shape, (new.shape, old.shape)
    return old


def leaves_not_in(new, old, prefix=""):
    out = []
    for k, v in new.items():
        if k not in old:
            out.append(prefix + k)
        elif isinstance(v, dict):
            out += leaves_not_in(v, old[k], prefix + k + "/")
    return out


def _xt():
    """x_t [B, T, C], t [B]."""
    return _normal(np.random.default_rng(7), B, T, C), np.array([0.0, 10.0, 500.0, 999.0], np.float32)


_APPLY, _INIT = {}, {}


def _apply(cfg):
    """One jitted apply per config (params are arguments: no retrace when only the values change)."""
    if cfg not in _APPLY:
        _APPLY[cfg] = jit(DiT(cfg).apply)
    return _APPLY[cfg]


def _fresh(cfg):
    """``DiT(cfg).init`` params (jitted; rbg keys compile faster), cached per config."""
    if cfg not in _INIT:
        x, t = _xt()
        _INIT[cfg] = meta.unbox(jit(DiT(cfg).init)(jax.random.key(1, impl="unsafe_rbg"), x, t, _conds(cfg)))
    return _INIT[cfg]


# --------------------------------------------------------------------------------------------------
# 1. zero-init: adding a path to a pretrained model changes nothing
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
def test_added_path_is_bit_identical_at_init(path):
    base = SMALL
    cfg = base.replace(**PATHS[path])
    x, t = _xt()
    cond_full = _conds(cfg)
    cond_text = {k: v for k, v in cond_full.items() if k not in NEW_KEYS}
    pretrained = random_params(DiT(base), x, t, cond_text)
    params = merge(_fresh(cfg), pretrained)
    new = leaves_not_in(params["params"], pretrained["params"])
    expect = {"style": ["style_embed"], "acoustic": ["acoustic_embed"], "refs": [], "all": ["style_embed",
                                                                                            "acoustic_embed"]}
    assert set(expect[path]) <= set(new) and new, new

    ref = _apply(base)(pretrained, x, t, cond_text)
    out = _apply(cfg)(params, x, t, cond_full)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    # missing key(s) at call time: the path contributes nothing
    out_missing = _apply(cfg)(params, x, t, cond_text)
    np.testing.assert_array_equal(np.asarray(out_missing), np.asarray(ref))
    # not vacuous: once the new (zero-init) params move, the condition changes the output
    moved = merge(random_params(DiT(cfg), x, t, cond_full, seed=1), pretrained)
    out_moved = _apply(cfg)(moved, x, t, cond_full)
    assert float(jnp.abs(out_moved - ref).max()) > 1e-3


def test_new_params_are_zero_at_the_output():
    cfg = SMALL.replace(**PATHS["all"])
    p = _fresh(cfg)["params"]
    assert float(jnp.abs(p["style_embed"]["linear_2"]["kernel"]).max()) == 0
    assert float(jnp.abs(p["style_embed"]["linear_1"]["kernel"]).max()) > 0
    assert p["style_embed"]["linear_1"]["kernel"].shape == (STYLE, W)
    assert p["acoustic_embed"]["linear_1"]["kernel"].shape == (ACOUSTIC, W)
    # acoustic_blocks (0, 2) = in_blocks_0 and out_blocks_0 (not the mid block); ref_blocks (0,) = out_blocks_0
    for blk, has_a, has_r in [("in_blocks_0", True, False), ("mid_block", False, False),
                              ("out_blocks_0", True, True)]:
        assert ("acoustic_attn" in p[blk]) == has_a and ("norm_acoustic_context" in p[blk]) == has_a, blk
        assert ("ref_attn" in p[blk]) == has_r and ("norm_ref" in p[blk]) == has_r, blk
        for name in ["acoustic_attn"] * has_a + ["ref_attn"] * has_r:
            assert float(jnp.abs(p[blk][name]["to_out"]["kernel"]).max()) == 0
            assert float(jnp.abs(p[blk][name]["to_out"]["bias"]).max()) == 0
            assert float(jnp.abs(p[blk][name]["to_q"]["kernel"]).max()) > 0
            assert "q_norm" in p[blk][name]  # the same Attention as cross_attn (QK-norm, no RoPE)


def _tree_shapes(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): v.shape
            for path, v in jax.tree_util.tree_flatten_with_path(meta.unbox(tree))[0]}


def test_init_creates_every_path_from_factory_dummies_or_missing_keys():
    """``init`` creates the same params whether it sees real conditions, the factory's dummy conditions
    (``[B, 1, width]`` refs at ``ref_blocks``, ``[B, 1, acoustic_dim]`` + mask, ``[B, style_dim]``) or none of
    the new keys; every new param is logically partitioned (FSDP-shardable like the rest)."""
    cfg = SMALL.replace(style_dim=STYLE, acoustic_dim=ACOUSTIC, acoustic_blocks=(0, 2), depth=4, ref_blocks=(1,))
    x, t = _xt()
    key = jax.random.key(0)
    full = jax.eval_shape(DiT(cfg).init, key, x, t, _conds(cfg))
    text_only = {k: v for k, v in _conds(cfg).items() if k not in NEW_KEYS}
    missing = jax.eval_shape(DiT(cfg).init, key, x, t, text_only)
    den = dit_denoiser(cfg)
    assert set(den.cond_keys) >= NEW_KEYS
    from_factory = jax.eval_shape(functools.partial(den.init, latent_shape=(T, C), context_len=2), key)
    shapes = _tree_shapes(full)
    assert _tree_shapes(missing) == shapes
    assert {"params/" + k: v for k, v in _tree_shapes(from_factory).items()} == shapes
    new = [k for k in shapes if any(s in k for s in ("style_embed", "acoustic", "ref_"))]
    assert any("out_blocks_1/ref_attn" in k for k in new) and not any("out_blocks_0/ref_" in k for k in new)
    assert any("mid_block/acoustic_attn" in k for k in new)  # block 2 = mid for depth 4
    boxed = jax.tree_util.tree_flatten_with_path(full["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned))[0]
    unnamed = ["/".join(str(getattr(k, "key", k)) for k in path) for path, v in boxed
               if not isinstance(v, nn.LogicallyPartitioned)]
    assert not unnamed, unnamed
    if jax.device_count() >= 2:  # conftest simulates 8 CPU devices
        mesh = make_mesh(data=1, fsdp=2, tensor=1, devices=jax.devices()[:2])
        shard = jax.tree_util.tree_flatten_with_path(logical_to_mesh_sharding(full, mesh))[0]
        kernels = {"/".join(str(getattr(k, "key", k)) for k in path): sh.spec for path, sh in shard
                   if path[-1].key == "kernel"}
        new_kernels = {k: v for k, v in kernels.items() if k in new}
        assert len(new_kernels) >= 8 and all("fsdp" in v for v in new_kernels.values()), new_kernels


# --------------------------------------------------------------------------------------------------
# 2. the path carries the condition (toy x0-prediction task; only the condition tells the target)
# --------------------------------------------------------------------------------------------------
NB, STEPS, LRATE = 8, 60, 1e-2
TRAIN_CFG = SMALL.replace(**PATHS["all"])


def _toy_data():
    """A code z [NB, 4] per example decides x0 [NB, T, C] (constant over time); each condition is a fixed
    linear function of z (``style`` [NB, STYLE], ``acoustic`` [NB, LA, ACOUSTIC], ``refs`` [NB, LR, W]); the
    text is the same for every example. x_t is fresh pure noise each step (t = 999), so without an
    informative condition the best x0 prediction is the batch mean (loss ~ var of x0 over the batch)."""
    rng = np.random.default_rng(42)
    z = _normal(rng, NB, 4)
    x0 = np.ascontiguousarray(np.broadcast_to((z @ _normal(rng, 4, C) / 2.0)[:, None], (NB, T, C)))
    text = np.repeat(_normal(rng, 1, L, SMALL.context_dim), NB, axis=0)
    info = {"style": z @ _normal(rng, 4, STYLE),
            "acoustic": np.einsum("bz,zlc->blc", z, _normal(rng, 4, LA, ACOUSTIC)),
            "refs": np.einsum("bz,zlc->blc", z, _normal(rng, 4, LR, W))}
    return x0, text, info


def ravel(tree):
    """(flat float32 numpy vector of ``tree``'s leaves, ``unravel(flat [N]) -> tree`` (traceable))."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [tuple(v.shape) for v in leaves]
    cuts = np.cumsum([int(np.prod(sh)) for sh in shapes])[:-1]
    flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in leaves])

    def unravel(f):
        return jax.tree.unflatten(treedef, [p.reshape(sh) for p, sh in zip(jnp.split(f, cuts), shapes)])

    return flat, unravel


@functools.cache
def _trainer():
    """(step, flat0 [N], trainable_new [N], trainable_old [N]) for TRAIN_CFG (every path), compiled once.

    ``step(flat [N], opt_state, i, conds, trainable [N]) -> (flat, opt_state, loss)``: one Adam step of
    x0-prediction from pure noise (key ``i``) at t = 999, updating only where ``trainable`` is 1. The params
    travel as one flat vector (a handful of optimizer ops instead of a few per leaf: a shorter compile).
    ``flat0`` = ``_fresh(TRAIN_CFG)``. ``trainable_old`` freezes the new paths' params at their zero init:
    the function and the gradients of every other param are then exactly those of the model without the
    paths (SMALL; see ``test_added_path_is_bit_identical_at_init[all]`` and the check in ``toy``), so that
    run is the unconditioned baseline, with the same init, noise and steps, from the same compile."""
    x0, text, _ = _toy_data()
    model, opt, t = DiT(TRAIN_CFG), optax.adam(LRATE), jnp.full((NB,), 999.0)
    params = _fresh(TRAIN_CFG)["params"]
    flat0, unravel = ravel(params)
    x, tt = _xt()
    old = meta.unbox(jax.eval_shape(DiT(SMALL).init, jax.random.key(0), x, tt, _conds(SMALL)))["params"]
    is_old = jax.tree_util.tree_map_with_path(
        lambda path, v: np.full(v.shape, _has_path(old, path), np.float32), params)
    trainable_old, _ = ravel(is_old)
    assert 0 < trainable_old.sum() < trainable_old.size

    @jit
    def step(flat, opt_state, i, conds, trainable):
        cond = {"text": text, "style": conds["style"], "acoustic": conds["acoustic"],
                "refs": [conds["refs"] if j in TRAIN_CFG.ref_blocks else None for j in range(TRAIN_CFG.depth // 2)]}
        xt = jax.random.normal(jax.random.fold_in(jax.random.key(0), i), x0.shape)

        def loss_fn(f):
            return jnp.mean((model.apply({"params": unravel(f)}, xt, t, cond) - x0) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(flat)
        u, opt_state = opt.update(g, opt_state, flat)
        return flat + trainable * u, opt_state, loss

    return step, opt.init, flat0, np.ones_like(flat0), trainable_old


def _has_path(tree, path):
    for k in path:
        if not isinstance(tree, dict) or k.key not in tree:
            return False
        tree = tree[k.key]
    return True


def _train(conds, *, baseline=False):
    """STEPS Adam steps of TRAIN_CFG from ``_fresh(TRAIN_CFG)`` (``baseline``: the new paths frozen, i.e. the
    model without them). Returns (per-step losses [STEPS], mean loss of the last 10 steps); each loss is on
    fresh noise, before its update."""
    step, opt_init, flat, trainable, trainable_old = _trainer()
    opt_state, mask = opt_init(flat), (trainable_old if baseline else trainable)
    losses = []
    for i in range(STEPS):
        flat, opt_state, loss = step(flat, opt_state, i, conds, mask)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses))
    assert np.all(np.isfinite(losses)), losses
    return losses, float(losses[-10:].mean())


@pytest.fixture(scope="module")
def toy():
    x0, text, info = _toy_data()
    var = float(np.mean(np.var(x0, axis=0)))
    const = {k: np.zeros_like(v) for k, v in info.items()}
    # the unconditioned model: the paths frozen at zero init, though fed the informative conditions
    losses, baseline = _train(info, baseline=True)
    # ... is the model without the paths: its first loss is SMALL's on the same weights and noise
    small = restrict(_fresh(TRAIN_CFG)["params"], meta.unbox(jax.eval_shape(
        DiT(SMALL).init, jax.random.key(0), x0, np.zeros(NB, np.float32), {"text": text}))["params"])
    xt = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), x0.shape)
    out = _apply(SMALL)({"params": small}, xt, np.full((NB,), 999.0, np.float32), {"text": text})
    np.testing.assert_allclose(losses[0], float(np.mean((np.asarray(out) - x0) ** 2)), rtol=1e-6)
    return var, info, const, baseline


def restrict(full, like):
    """The sub-tree of ``full`` with the keys of ``like`` (a param tree of a model without some paths)."""
    if isinstance(like, dict):
        return {k: restrict(full[k], v) for k, v in like.items()}
    assert full.shape == like.shape, (full.shape, like.shape)
    return full


def test_baseline_cannot_see_the_condition(toy):
    var, info, const, baseline = toy
    assert baseline > 0.8 * var, (baseline, var)
    # the model with the paths trained, but uninformative (constant) conditions, is no better: the drop
    # below comes from the condition, not from the extra parameters
    assert _train(const)[1] > 0.8 * var


@pytest.mark.parametrize("path", ["style", "acoustic", "refs"])
def test_path_learns_the_condition(path, toy):
    """Only ``path`` carries z (the other two are constant): after STEPS steps its loss must be far below the
    unconditioned model's. Disconnecting the path (e.g. multiplying its output by 0 in dit.py) makes this
    fail."""
    var, info, const, baseline = toy
    final = _train(dict(const, **{path: info[path]}))[1]
    assert final < 0.4 * baseline, (path, final, baseline, var)


# --------------------------------------------------------------------------------------------------
# 3. errors name the key
# --------------------------------------------------------------------------------------------------
def _shape_check(cfg, cond):
    x, t = _xt()
    jax.eval_shape(DiT(cfg).init, jax.random.key(0), x, t, cond)  # traces only: no compile


@pytest.mark.parametrize("path,bad,match", [
    ("style", {"style": np.zeros((B, STYLE + 1))}, r"cond\['style'\]"),
    ("style", {"style": np.zeros((B, 2, STYLE))}, r"cond\['style'\]"),
    ("acoustic", {"acoustic": np.zeros((B, LA, ACOUSTIC + 1))}, r"cond\['acoustic'\]"),
    ("acoustic", {"acoustic": np.zeros((B, ACOUSTIC))}, r"cond\['acoustic'\]"),
    ("acoustic", {"acoustic": np.zeros((B + 1, LA, ACOUSTIC))}, r"cond\['acoustic'\]"),
    ("acoustic", {"acoustic_mask": np.ones((B, LA + 1), bool)}, r"cond\['acoustic_mask'\]"),
    ("refs", {"refs": []}, r"cond\['refs'\]"),
    ("refs", {"refs": np.zeros((1, B, LR, W))}, r"cond\['refs'\]"),
    ("refs", {"refs": [np.zeros((B, LR, W - 1))]}, r"cond\['refs'\]\[0\]"),
    ("refs", {"refs": [(np.zeros((B, LR, W)), np.ones((B, LR - 1), bool))]}, r"cond\['refs'\]\[0\]"),
])
def test_shape_errors_name_the_key(path, bad, match):
    cfg = SMALL.replace(**PATHS[path])
    cond = dict(_conds(cfg), **bad)
    with pytest.raises(ValueError, match=match):
        _shape_check(cfg, cond)


def test_refs_for_a_block_without_a_ref_context_is_refused():
    cfg = SMALL.replace(depth=4, ref_blocks=(1,))
    with pytest.raises(ValueError, match=r"cond\['refs'\]\[0\].*ref_blocks"):
        _shape_check(cfg, dict(_conds(SMALL), refs=[np.zeros((B, LR, W)), None]))


@pytest.mark.parametrize("key,value", [("style", np.zeros((B, STYLE))),
                                       ("acoustic", np.zeros((B, LA, ACOUSTIC))),
                                       ("acoustic_mask", np.ones((B, LA), bool)),
                                       ("refs", [np.zeros((B, LR, W))])])
def test_condition_without_the_path_is_refused(key, value):
    with pytest.raises(ValueError, match=rf"cond\['{key}'\]"):
        _shape_check(SMALL, dict(_conds(SMALL), **{key: value}))


def test_config_fields_roundtrip_and_validate():
    c = SMALL.replace(**PATHS["all"])
    d = c.to_dict()
    assert d["style_dim"] == STYLE and d["acoustic_blocks"] == (0, 2) and d["ref_blocks"] == (0,)
    as_lists = dict(d, acoustic_blocks=[0, 2], ref_blocks=[0])  # ConfigDict / JSON give lists
    assert DiTConfig.from_dict(as_lists) == c and hash(DiTConfig.from_dict(as_lists)) == hash(c)
    assert DiTConfig.from_dict(json.loads(json.dumps(d))) == c
    assert DiTConfig.from_dict(dict(d, ref_blocks=np.array([0]))).ref_blocks == (0,)
    defaults = DiTConfig()
    assert (defaults.style_dim, defaults.acoustic_dim, defaults.acoustic_blocks, defaults.ref_blocks) == \
        (None, None, None, ())
    assert [c.has_acoustic(i) for i in range(c.num_blocks)] == [True, False, True]
    assert all(SMALL.replace(acoustic_dim=4).has_acoustic(i) for i in range(3))
    assert not any(SMALL.has_acoustic(i) for i in range(3))
    with pytest.raises(ValueError, match="ref_blocks"):
        SMALL.replace(ref_blocks=(1,))  # depth 2: one out block
    with pytest.raises(ValueError, match="ref_blocks"):
        SMALL.replace(depth=4, ref_blocks=(0, 0))
    with pytest.raises(ValueError, match="acoustic_blocks"):
        SMALL.replace(acoustic_blocks=(0,))  # no acoustic_dim
    with pytest.raises(ValueError, match="acoustic_blocks"):
        SMALL.replace(acoustic_dim=4, acoustic_blocks=(3,))
    with pytest.raises(ValueError, match="acoustic_blocks"):
        SMALL.replace(acoustic_dim=4, acoustic_blocks=())  # None = every block; () would host nothing
    with pytest.raises(ValueError, match="acoustic_blocks"):
        SMALL.replace(acoustic_dim=4, acoustic_blocks=2)
    with pytest.raises(ValueError, match="ref_blocks"):
        SMALL.replace(ref_blocks=["0"])
    with pytest.raises(ValueError, match="ref_blocks"):
        SMALL.replace(ref_blocks=(0.0,))
    with pytest.raises(ValueError, match="style_dim"):
        SMALL.replace(style_dim=0)
    with pytest.raises(ValueError, match="acoustic_dim"):
        SMALL.replace(acoustic_dim=4.0)


# --------------------------------------------------------------------------------------------------
# 4. reference DiT -> encode -> refs -> generation DiT
# --------------------------------------------------------------------------------------------------
def test_refs_from_encoder_features_lifo_and_masks():
    f = [jnp.full((2, 3, 4), float(i)) for i in range(3)]
    r = dit_refs_from_encoder_features(f)
    assert [float(x[0, 0, 0]) for x in r] == [2.0, 1.0, 0.0]  # out block i <- in block n-1-i
    r = dit_refs_from_encoder_features(f, (1,))
    assert r[0] is None and r[2] is None and float(r[1][0, 0, 0]) == 1.0
    r = dit_refs_from_encoder_features(f, mask=np.ones((2, 3), bool))
    assert isinstance(r[0], tuple) and r[0][1].shape == (2, 3)
    # K = 2 references [B, K, T_ref, D] -> [B, K * T_ref, D]; a [B, K] mask -> [B, K * T_ref]
    fk = [jnp.stack([jnp.full((2, 3, 4), 10.0 * i + k) for k in range(2)], axis=1) for i in range(3)]
    feats, m = dit_refs_from_encoder_features(fk, mask=jnp.array([[1, 1], [1, 0]], bool))[0]
    assert feats.shape == (2, 6, 4) and m.shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(feats[0, :, 0]), [20, 20, 20, 21, 21, 21])
    np.testing.assert_array_equal(np.asarray(m), [[1] * 6, [1, 1, 1, 0, 0, 0]])
    frame_mask = np.ones((2, 2, 3), bool)
    frame_mask[1, 1, 2] = False
    feats, m = dit_refs_from_encoder_features(fk, mask=frame_mask)[2]
    np.testing.assert_array_equal(np.asarray(m), [[1] * 6, [1, 1, 1, 1, 1, 0]])
    assert dit_refs_from_encoder_features(fk)[1].shape == (2, 6, 4)
    with pytest.raises(ValueError, match="mask"):
        dit_refs_from_encoder_features(fk, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="mask"):
        dit_refs_from_encoder_features(f, mask=np.ones((2, 2), bool))


def test_reference_dit_feeds_generation_dit_without_retrace():
    gen_cfg = SMALL.replace(depth=4, ref_blocks=(0, 1))  # 2 out blocks, both take references
    ref_cfg = SMALL.replace(depth=4)  # the reference encoder: an independent stack (DreamAudio MRC)
    n_half, Bg, K, Tr, Dc = 2, 2, 3, 5, SMALL.context_dim
    rng = np.random.default_rng(11)
    x = _normal(rng, Bg, T, C)
    t = np.array([100.0, 800.0], np.float32)
    text = _normal(rng, Bg, L, Dc)
    ref_lat = _normal(rng, Bg, K, Tr, C)   # K clean reference latents per example
    ref_text = _normal(rng, Bg, K, L, Dc)  # their captions

    gen, ref = DiT(gen_cfg), DiT(ref_cfg)
    gen_p = random_params(gen, x, t, {"text": text}, seed=3)  # ref_attn params non-zero ("trained")
    ref_p = random_params(ref, x, t, {"text": text}, seed=4)
    traces = []

    @jit
    def generate(gen_p, ref_p, ref_lat, ref_text, ref_mask):
        traces.append(ref_lat.shape)
        k = ref_lat.shape[1]
        feats = ref.apply(ref_p, ref_lat.reshape(Bg * k, Tr, C), np.zeros((Bg * k,)),
                          {"text": ref_text.reshape(Bg * k, L, Dc)}, method=DiT.encode)
        assert len(feats) == n_half and all(f.shape == (Bg * k, Tr, gen_cfg.width) for f in feats)
        feats = [f.reshape(Bg, k, Tr, -1) for f in feats]
        refs = dit_refs_from_encoder_features(feats, gen_cfg.ref_blocks, mask=ref_mask)
        return gen.apply(gen_p, x, t, {"text": text, "refs": refs})

    ones = np.ones((Bg, K), bool)
    full = generate(gen_p, ref_p, ref_lat, ref_text, ones)
    assert full.shape == (Bg, T, C) and bool(jnp.all(jnp.isfinite(full)))
    # fewer references by mask, same trace: every reference dropped in row 1 -> no reference contribution
    none_row1 = generate(gen_p, ref_p, ref_lat, ref_text, jnp.array([[1, 1, 1], [0, 0, 0]], bool))
    # the same model with the ref cross-attention outputs zeroed (= the model without the refs path)
    zp = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if {"ref_attn", "to_out"} <= {getattr(p, "key", None) for p in path}
        else v, gen_p)
    without = generate(zp, ref_p, ref_lat, ref_text, ones)
    assert len(traces) == 1, traces
    assert float(jnp.abs(full - without).max()) > 1e-3  # the references matter
    np.testing.assert_array_equal(np.asarray(none_row1[1]), np.asarray(without[1]))
    np.testing.assert_array_equal(np.asarray(none_row1[0]), np.asarray(full[0]))
    # and the encoder features really are the reference DiT's: another reference DiT changes the output
    other = generate(gen_p, random_params(ref, x, t, {"text": text}, seed=5), ref_lat, ref_text, ones)
    assert float(jnp.abs(other - full).max()) > 1e-3 and len(traces) == 1

    # a masked reference equals an absent one: row 0 keeps references 0, 1 and row 1 keeps 1, 2, which
    # two K=2 runs reproduce (one more trace, for K=2)
    dropped = generate(gen_p, ref_p, ref_lat, ref_text, jnp.array([[1, 1, 0], [0, 1, 1]], bool))
    first = generate(gen_p, ref_p, ref_lat[:, :2], ref_text[:, :2], np.ones((Bg, 2), bool))
    last = generate(gen_p, ref_p, ref_lat[:, 1:], ref_text[:, 1:], np.ones((Bg, 2), bool))
    assert len(traces) == 2, traces  # one trace per K, none per mask
    np.testing.assert_allclose(np.asarray(dropped[0]), np.asarray(first[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dropped[1]), np.asarray(last[1]), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(dropped - full).max()) > 1e-4
