"""UNet: sharding, conditioning hooks (extra contexts, per-scale refs, SERST AdaLN-zero), encode, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_rel_err
from tta_jax.convert.common import flatten_params, unflatten_params
from tta_jax.denoisers.unet import ExtraContext, UNet, refs_from_encoder_features
from tta_jax.nn.sharding import DEFAULT_RULES, logical_to_mesh_sharding, make_mesh

SMALL = dict(in_channels=4, out_channels=4, block_out_channels=(32,), down_block_types=("CrossAttnDownBlock2D",),
             up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1, attention_head_dim=2,
             cross_attention_dim=32, norm_num_groups=8)
BASE = dict(in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=8)
B, H, W, L = 2, 8, 8, 5


def _inputs(seed=0, c_in=4):
    """numpy inputs (eager jnp ops each compile once; numpy keeps the tests fast)."""
    rng = np.random.default_rng(seed)
    k = [rng] * 6
    x = rng.standard_normal((B, H, W, c_in)).astype(np.float32)
    t = np.array([3.0, 700.0], np.float32)
    text = rng.standard_normal((B, L, 32)).astype(np.float32)
    mask = np.array([[True] * L, [True] * 3 + [False] * (L - 3)])
    return x, t, {"text": text, "text_mask": mask}, k


def _set(a, idx, v):
    a = np.array(a)
    a[idx] = v
    return a


def _randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _merge(base, new):
    """Params of `new` with every entry that `base` also has taken from `base` (a "pretrained" load)."""
    fb, fn = flatten_params(base), flatten_params(new)
    shared = [n for n in fn if n in fb]
    assert len(shared) == len(fb), sorted(set(fb) - set(fn))
    return unflatten_params({n: fb.get(n, v) for n, v in fn.items()})


def _perturb(params, pred, seed=3):
    flat = flatten_params(params)
    hit = [n for n in flat if pred(n)]
    assert hit, "no param matched"
    rng = np.random.default_rng(seed)
    for n in hit:  # numpy: no per-shape eager compiles
        flat[n] = np.asarray(flat[n]) + 0.2 * rng.standard_normal(flat[n].shape).astype(np.float32)
    return unflatten_params(flat)


_JIT = {}
_FAST = {"xla_backend_optimization_level": 0}  # these tests are compile-bound on a small CPU


def _apply(model, params, x, t, cond, method=None):
    """Jitted ``model.apply`` (one cache entry per model; jit re-traces per cond structure)."""
    key = (id(model), method)
    if key not in _JIT:
        _JIT[key] = (model, jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c, method=method),
                                    compiler_options=_FAST))
    out = _JIT[key][1](params, x, t, cond)
    return [np.asarray(o) for o in out] if isinstance(out, list) else np.asarray(out)


def _init(model, seed, x, t, cond):
    return jax.jit(lambda k: nn.meta.unbox(model.init(k, x, t, cond)["params"]),
                   compiler_options=_FAST)(jax.random.key(seed))


@pytest.fixture(scope="module")
def base():
    model = UNet(**BASE)
    x, t, cond, _ = _inputs()
    return model, _init(model, 0, x, t, cond)


def test_base_forward_shapes_and_time_dependence(base):
    model, params = base
    x, t, cond, _ = _inputs()
    out = _apply(model, params, x, t, cond)
    assert out.shape == (B, H, W, 4) and bool(np.all(np.isfinite(out)))
    out2 = _apply(model, params, x, t + np.float32(50.0), cond)
    assert max_rel_err(out2, out) > 1e-4
    # odd spatial size is supported (upsampler follows the skip's size); eval_shape: no compile needed
    odd = jax.eval_shape(lambda: model.apply({"params": params}, np.ones((1, 7, 9, 4), np.float32), 5.0,
                                             {"text": cond["text"][:1]}))
    assert odd.shape == (1, 7, 9, 4)


def test_sharding_fsdp_forward_backward():
    """mesh data=2 x fsdp=4: params are sharded ~1/4 per device; jitted forward+backward runs."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    model = UNet(**SMALL)
    x, t, cond, _ = _inputs()
    x = np.concatenate([x] * 4)  # batch 8 over data x fsdp
    t = np.concatenate([t] * 4)
    cond = {k: np.concatenate([v] * 4) for k, v in cond.items()}
    mesh = make_mesh(data=2, fsdp=4)
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, cond)["params"]
        shardings = logical_to_mesh_sharding(abstract, mesh, DEFAULT_RULES)
        # values do not matter here: place random params with their shardings (saves an init compile)
        rng = np.random.default_rng(0)
        params = jax.tree_util.tree_map(
            lambda a, sh: jax.device_put(0.05 * rng.standard_normal(a.shape).astype(np.float32), sh),
            nn.meta.unbox(abstract), shardings)

        def loss(p, x, t, c):
            return jnp.mean(model.apply({"params": p}, x, t, c) ** 2)

        step = jax.jit(jax.value_and_grad(loss), compiler_options=_FAST)
        val, grads = step(params, x, t, cond)
        assert np.isfinite(float(val))
        g = jax.tree_util.tree_leaves(grads)
        assert all(bool(np.all(np.isfinite(np.asarray(a)))) for a in g)

    leaves = jax.tree_util.tree_leaves(params)
    total = sum(a.nbytes for a in leaves)
    per_dev = {}
    for a in leaves:
        for s in a.addressable_shards:
            per_dev[s.device] = per_dev.get(s.device, 0) + s.data.nbytes
    assert len(per_dev) == 8
    fracs = [v / total for v in per_dev.values()]
    print("per-device param fraction:", [f"{f:.3f}" for f in fracs])
    assert all(0.24 <= f <= 0.30 for f in fracs), fracs


def test_extra_context_and_refs_zero_init(base):
    """DC-LDM acoustic cross-attention + DreamAudio per-scale refs: no-ops at init, active once trained."""
    base_model, base_params = base
    ec = ExtraContext("acoustic", 12, ("down_0", "mid", "up_1"))
    model = UNet(**BASE, extra_contexts=(ec,), ref_blocks=(1,))
    x, t, cond, k = _inputs()
    acoustic = _randn(k[2], B, 6, 12)
    ac_mask = np.array([[True] * 6, [True] * 2 + [False] * 4])
    refs = [None, _randn(k[3], B, 16, 32)]  # up block 1 works at channels 32
    full = dict(cond, acoustic=acoustic, acoustic_mask=ac_mask, refs=refs)
    params = _init(model, 1, x, t, cond)  # init without the extras: their params are still created
    flat = flatten_params(params)
    for needle in ("down_blocks_0/attentions_0/transformer_blocks_0/attn_acoustic/to_k/kernel",
                   "mid_block/attentions_0/transformer_blocks_0/attn_acoustic/to_k/kernel",
                   "up_blocks_1/attentions_0/transformer_blocks_0/attn_acoustic/to_k/kernel",
                   "up_blocks_1/attentions_1/transformer_blocks_0/attn_ref/to_k/kernel"):
        assert needle in flat, needle
    assert flat["up_blocks_1/attentions_0/transformer_blocks_0/attn_ref/to_k/kernel"].shape == (32, 32)
    assert flat["down_blocks_0/attentions_0/transformer_blocks_0/attn_acoustic/to_k/kernel"].shape == (12, 32)
    params = _merge(base_params, params)
    ref_out = _apply(base_model, base_params, x, t, cond)
    out = _apply(model, params, x, t, full)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-6, rtol=0)

    # after "training" a zero-init output projection its path changes the output ...
    tr_ac = _perturb(params, lambda n: "/attn_acoustic/to_out" in n)
    tr_ref = _perturb(params, lambda n: "/attn_ref/to_out" in n)
    out_ac = _apply(model, tr_ac, x, t, full)
    out_ref = _apply(model, tr_ref, x, t, full)
    assert max_rel_err(out_ac, ref_out) > 1e-3 and max_rel_err(out_ref, ref_out) > 1e-3
    # ... and the acoustic mask is honoured: masked frames do not matter, unmasked ones do
    out_ac2 = _apply(model, tr_ac, x, t, dict(full, acoustic=_set(acoustic, (1, slice(2, None)), 100.0)))
    np.testing.assert_allclose(np.asarray(out_ac2), np.asarray(out_ac), atol=1e-5)
    out_ac3 = _apply(model, tr_ac, x, t, dict(full, acoustic=_set(acoustic, (1, 1), 100.0)))
    assert max_rel_err(out_ac3[1], out_ac[1]) > 1e-4


def test_encode_feeds_refs(base):
    """DreamAudio MRC: a reference U-Net's encoder features become the main U-Net's per-scale refs."""
    base_model, base_params = base
    x, t, cond, k = _inputs()
    feats = _apply(base_model, base_params, x, t, cond, method=UNet.encode)
    assert [f.shape for f in feats] == [(B, H, W, 32), (B, H // 2, W // 2, 64)]
    refs = refs_from_encoder_features(feats, ref_blocks=(1,))
    assert refs[0] is None and refs[1].shape == (B, H * W, 32)
    model = UNet(**BASE, ref_blocks=(1,))
    params = _merge(base_params, _init(model, 2, x, t, cond))
    params = _perturb(params, lambda n: "/attn_ref/to_out" in n)
    out = _apply(model, params, x, t, dict(cond, refs=refs))
    assert out.shape == (B, H, W, 4)
    out_b = _apply(model, params, x, t, dict(cond, refs=[None, refs[1][::-1]]))
    assert max_rel_err(out_b[0], out[0]) > 1e-4  # each sample attends to its own reference


def test_serst_default_ada_zero_init_keeps_pretrained(base):
    """SERST: style fused with the time embedding drives zero-init AdaLN in every ResNet; a pretrained
    (default) U-Net loaded into it is unchanged at init and changes once the modulation trains."""
    base_model, base_params = base
    model = UNet(**BASE, resnet_time_scale_shift="default_ada", class_embed_type="simple_projection",
                 projection_class_embeddings_input_dim=16, class_embeddings_concat=True)
    x, t, cond, k = _inputs()
    style = _randn(k[4], B, 16)
    params = _init(model, 5, x, t, dict(cond, style=style))
    flat = flatten_params(params)
    ada = [n for n in flat if "/ada1/" in n or "/ada2/" in n]
    n_resnets = sum(1 for n in flat if n.endswith("/conv1/kernel"))
    assert len(ada) == 4 * n_resnets and all(not np.any(np.asarray(flat[n])) for n in ada)
    assert flat["down_blocks_0/resnets_0/ada1/kernel"].shape == (2 * 128, 2 * 32)  # concat(time, style)
    params = _merge(base_params, params)
    ref_out = _apply(base_model, base_params, x, t, cond)
    out = _apply(model, params, x, t, dict(cond, style=style))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-6, rtol=0)
    trained = _perturb(params, lambda n: "/ada1/kernel" in n or "/ada2/kernel" in n)
    o1 = _apply(model, trained, x, t, dict(cond, style=style))
    o2 = _apply(model, trained, x, t, dict(cond, style=style[::-1]))
    assert max_rel_err(o1, ref_out) > 1e-3 and max_rel_err(o2[0], o1[0]) > 1e-4


def test_ada_group_mode_runs_and_uses_style():
    model = UNet(**BASE, resnet_time_scale_shift="ada_group", class_embed_type="simple_projection",
                 projection_class_embeddings_input_dim=16, class_embeddings_concat=True)
    x, t, cond, k = _inputs()
    style = _randn(k[4], B, 16)
    params = _init(model, 0, x, t, dict(cond, class_labels=style))
    o1 = _apply(model, params, x, t, dict(cond, class_labels=style))
    o2 = _apply(model, params, x, t, dict(cond, class_labels=style[::-1]))
    assert o1.shape == (B, H, W, 4) and max_rel_err(o2[0], o1[0]) > 1e-4


def test_errors_are_named(base):
    model, params = base
    x, t, cond, _ = _inputs()
    ev = lambda m, *a: jax.eval_shape(lambda: m.apply({"params": params}, *a))  # noqa: E731
    with pytest.raises(ValueError, match=r"x_t must be \[B, H, W, 4\]"):
        ev(model, np.zeros((B, 4, H, W), np.float32), t, cond)
    with pytest.raises(ValueError, match=r"cond\['text'\]"):
        ev(model, x, t, {})
    with pytest.raises(ValueError, match=r"text_mask"):
        ev(model, x, t, dict(cond, text_mask=np.ones((B, L + 1), bool)))
    with pytest.raises(ValueError, match=r"refs"):
        ev(model, x, t, dict(cond, refs=[None, np.zeros((B, 3, 32), np.float32)]))
    init = lambda m: jax.eval_shape(m.init, jax.random.key(0), x, t, cond)  # noqa: E731
    with pytest.raises(ValueError, match="unknown block 'up_7'"):
        init(UNet(**BASE, extra_contexts=(ExtraContext("acoustic", 8, ("up_7",)),)))
    with pytest.raises(ValueError, match="no attention"):
        init(UNet(**BASE, ref_blocks=(0,)))


def test_cross_attention_capture(base):
    """cond['control'] reaches every text cross-attention: probabilities are captured per layer."""
    from tta_jax.nn.attention import AttentionControl

    model, params = base
    x, t, cond, _ = _inputs()
    f = jax.jit(lambda p, c: model.apply({"params": p}, x, t, c, mutable=["intermediates"]),
                compiler_options=_FAST)
    out, state = f(params, dict(cond, control=AttentionControl(capture=True)))
    flat = flatten_params(state["intermediates"])
    probs = {k: v for k, v in flat.items() if "/attn2/" in k}
    assert len(probs) == 4 and not any("/attn1/" in k for k in flat)  # down_0, mid, up_1 x2
    p = np.asarray(probs["down_blocks_0/attentions_0/transformer_blocks_0/attn2/attn_probs"][0])
    assert p.shape == (B, 2, H * W, L)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.all(p[1, ..., 3:] == 0)  # masked caption tokens get no attention
    np.testing.assert_allclose(np.asarray(out), _apply(model, params, x, t, cond), atol=1e-5)


def test_remat_gives_the_same_params_loss_and_gradients(base):
    """``remat=True`` recomputes each resnet / transformer in the backward: same parameter tree (a checkpoint loads
    either way), same loss and gradients; attention control is refused under remat, a bad policy by name."""
    model, params = base
    x, t, cond, _ = _inputs()
    rm = UNet(**BASE, remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    shapes = jax.eval_shape(lambda k: nn.meta.unbox(rm.init(k, x, t, cond)["params"]), jax.random.key(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, x, t, cond) ** 2)),
                       compiler_options=_FAST)(params)

    (l0, g0), (l1, g1) = loss(model), loss(rm)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
    from tta_jax.nn.attention import AttentionControl

    with pytest.raises(ValueError, match="remat"):
        jax.eval_shape(lambda: rm.apply({"params": params}, x, t, dict(cond, attn_control=AttentionControl())))
    with pytest.raises(ValueError, match="remat_policy"):
        jax.eval_shape(lambda k: UNet(**BASE, remat=True, remat_policy="nope").init(k, x, t, cond),
                       jax.random.key(0))
