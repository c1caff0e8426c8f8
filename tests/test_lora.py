"""LoRA adapters (tta_jax.train.lora) on a tiny U-Net and a tiny DiT: a fresh adapter (B = 0) is the base model
bit for bit, only the adapters train under ``trainable = ("lora/.*",)``, per-call merging equals merging once,
the adapter file is small, and diffusers/PEFT/kohya state dicts map onto our param paths."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from configs.common import small_unet
from tta_jax.denoisers.factory import build_denoiser
from tta_jax.errors import ConfigError
from tta_jax.train import lora as L
from tta_jax.train.optim import freeze
from tta_jax.train.partial import export_subset, merge_pretrained

B, LT, DT, RANK, ALPHA = 2, 3, 8, 4, 8.0
UNET = {"name": "unet", "in_channels": 4, "out_channels": 4, "block_out_channels": (8,),
        "down_block_types": ("CrossAttnDownBlock2D",), "up_block_types": ("CrossAttnUpBlock2D",),
        "mid_block_type": None, "layers_per_block": 1, "attention_head_dim": 2, "cross_attention_dim": DT,
        "norm_num_groups": 4}
DIT = {"name": "dit", "preset": "ezaudio_tiny", "in_channels": 4, "out_channels": 4, "context_dim": DT,
       "use_mask_input": False, "width": 32, "depth": 2, "num_heads": 2}
TARGETS = {"unet": [".*/attn[12]/to_(q|k|v|out)", ".*/ff/net_2", ".*/resnets_0/conv1"],
           "dit": [".*/(attn|cross_attn)/to_(q|k|v|out)", ".*/ff/net_2", "patch_embed"]}
SHAPES = {"unet": (4, 6, 4), "dit": (6, 4)}


@functools.lru_cache(maxsize=None)
def _base_of(family):
    """Random base params of the tiny denoiser of ``family`` (built once per session)."""
    return _random_base(build_denoiser(UNET if family == "unet" else DIT), SHAPES[family])


def _random_base(den, shape, seed=0):
    """Random base params of ``den``'s structure (eval_shape only traces the init; nothing is compiled)."""
    tree = jax.eval_shape(lambda r: meta.unbox(den.init(r, shape, LT)), jax.random.PRNGKey(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    rng = np.random.default_rng(seed)
    vals = []
    for path, leaf in flat:
        v = rng.standard_normal(leaf.shape) / np.sqrt(max(np.prod(leaf.shape[:-1]), 1))
        if jax.tree_util.keystr(path).endswith("['scale']"):
            v = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        vals.append(jnp.asarray(v, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, vals)


@pytest.fixture(scope="module")
def unet_base():
    """(random base params of the tiny U-Net, adapters with random B on a few of its kernels)."""
    base = _base_of("unet")
    rng = np.random.default_rng(1)
    shapes = {p: a.shape for p, a in L._kernels(base).items()}
    ads = {p: {"a": rng.uniform(-0.3, 0.3, (int(np.prod(shapes[p][:-1])), RANK)).astype(np.float32),
               "b": (0.3 * rng.standard_normal((RANK, shapes[p][-1]))).astype(np.float32)}
           for p in L.lora_targets(base, TARGETS["unet"])}
    return base, ads


@pytest.fixture(scope="module", params=["unet", "dit"])
def system(request):
    family = request.param
    fields = UNET if family == "unet" else DIT
    den = build_denoiser(fields)
    lden = L.with_lora(den, {"rank": RANK, "alpha": ALPHA, "targets": TARGETS[family]})
    shape = SHAPES[family]
    base = _base_of(family)
    adapters = L.init_lora(base, TARGETS[family], RANK, jax.random.PRNGKey(3))
    params = {"net": base, "lora": L.nest_adapters(adapters)}
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(k[0], (B,) + shape)
    t = jnp.array([3.0, 600.0])
    cond = {"text": jax.random.normal(k[1], (B, LT, DT)), "text_mask": jnp.ones((B, LT), bool).at[0, 2:].set(False)}
    fns = {"base": jax.jit(den.apply), "lora": jax.jit(lden.apply)}
    return family, den, lden, params, (x, t, cond), fns


def test_param_layout_and_structure(system):
    family, den, lden, params, _, _ = system
    want = jax.eval_shape(lambda r: meta.unbox(lden.init(r, SHAPES[family], LT)), jax.random.PRNGKey(0))
    assert set(want) == {"net", "lora"}
    got_shapes = jax.tree.map(lambda a: a.shape, params)
    assert jax.tree.map(lambda a: a.shape, want) == got_shapes
    flat = L.flat_adapters(params["lora"])
    assert set(flat) == set(L.lora_targets(params["net"], TARGETS[family]))
    for p, ab in flat.items():
        assert not np.any(np.asarray(ab["b"])), p       # B = 0 at init
        n_in = ab["a"].shape[0]
        assert np.abs(np.asarray(ab["a"])).max() <= 1 / np.sqrt(n_in)
    if family == "unet":   # conv kernels [3, 3, in, out] flatten to [9 * in, r]
        conv = [p for p in flat if p.endswith("conv1/kernel")][0]
        assert flat[conv]["a"].shape == (9 * 8, RANK)


def test_fresh_adapter_is_the_base_bit_for_bit(system):
    family, den, lden, params, (x, t, cond), fns = system
    got = fns["lora"](params, x, t, cond)
    want = fns["base"](params["net"], x, t, cond)
    assert got.shape == x.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _with_random_b(params, seed=5):
    flat = L.flat_adapters(params["lora"])
    rng = np.random.default_rng(seed)
    flat = {p: {"a": ab["a"], "b": jnp.asarray(0.3 * rng.standard_normal(ab["b"].shape), jnp.float32)}
            for p, ab in flat.items()}
    return dict(params, lora=L.nest_adapters(flat))


def test_merged_once_equals_merged_per_call(system):
    family, den, lden, params, (x, t, cond), fns = system
    params = _with_random_b(params)
    per_call = fns["lora"](params, x, t, cond)
    merged = jax.jit(L.merge_lora)(params["net"], params["lora"], [1.0], [ALPHA])
    once = fns["base"](merged, x, t, cond)
    base = fns["base"](params["net"], x, t, cond)
    assert float(jnp.abs(per_call - base).max()) > 1e-3      # the adapters do something
    np.testing.assert_allclose(np.asarray(per_call), np.asarray(once), atol=1e-5, rtol=0)
    # unmerged_apply is the same thing; merge of a flat adapters dict == merge of the nested param
    again = L.unmerged_apply(fns["base"], params["net"], [L.flat_adapters(params["lora"])], [1.0], [ALPHA])(x, t, cond)
    np.testing.assert_allclose(np.asarray(again), np.asarray(once), atol=1e-5, rtol=0)


def test_only_the_adapters_train(system):
    family, den, lden, params, (x, t, cond), fns = system
    tx = freeze(optax.adam(1e-2), ("lora/.*",))
    state = tx.init(params)
    target = jax.random.normal(jax.random.PRNGKey(9), x.shape)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda q: jnp.mean((lden.apply(q, x, t, cond) - target) ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p = params
    losses = []
    for _ in range(3):
        p, state, loss = step(p, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), params["net"], p["net"])
    assert all(jax.tree.leaves(same))
    for path, ab in L.flat_adapters(p["lora"]).items():
        assert np.any(np.asarray(ab["b"])), path


def test_frozen_base_gets_no_gradient_and_the_adapters_the_same(system):
    """Default (train_base False): the base params are a constant for autodiff (their gradient is exactly 0, so
    XLA drops that part of the backward pass); the adapters' gradient equals the one with the base trainable."""
    family, den, lden, params, (x, t, cond), fns = system
    params = _with_random_b(params)
    both = L.with_lora(den, {"rank": RANK, "alpha": ALPHA, "targets": TARGETS[family], "train_base": True})
    target = jax.random.normal(jax.random.PRNGKey(9), x.shape)

    def grads(d):
        return jax.jit(jax.grad(lambda q: jnp.mean((d.apply(q, x, t, cond) - target) ** 2)))(params)

    frozen, trained = grads(lden), grads(both)
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(frozen["net"]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(trained["net"]))
    for a, b in zip(jax.tree.leaves(frozen["lora"]), jax.tree.leaves(trained["lora"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="config.lora.train_base"):
        L.with_lora(den, {"rank": 4, "targets": [".*"], "train_base": "yes"})


def test_init_from_base_run_with_prefix_net(system, tmp_path):
    """config.train.init_from a base run (its params) + init_prefix "net": the base lands in net, adapters stay."""
    family, den, lden, params, _, _ = system
    fresh = {"net": jax.tree.map(jnp.zeros_like, params["net"]), "lora": params["lora"]}
    merged, n = merge_pretrained(fresh, jax.tree.map(np.asarray, params["net"]), "net")
    assert n == len(jax.tree.leaves(params["net"]))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), merged, params)))
    # the trained adapters alone: export_subset("lora/.*") loads back with load_lora
    path = str(tmp_path / "exported.safetensors")
    export_subset(params, ("lora/.*",), path)
    ads, meta_ = L.load_lora(path)
    assert meta_ == {}
    assert set(ads) == set(L.flat_adapters(params["lora"]))


def test_save_load_and_apply_files(tmp_path, unet_base):
    base, ads = unet_base
    path = str(tmp_path / "a.safetensors")
    h = L.config_hash(UNET)
    L.save_lora(path, ads, {"rank": RANK, "alpha": ALPHA, "targets": TARGETS["unet"], "base": h})
    back, md = L.load_lora(path)
    assert md == {"rank": RANK, "alpha": ALPHA, "targets": TARGETS["unet"], "base": h}
    assert set(back) == set(ads)
    for p in ads:
        np.testing.assert_array_equal(back[p]["a"], np.asarray(ads[p]["a"]))
        np.testing.assert_array_equal(back[p]["b"], np.asarray(ads[p]["b"]))
    k = L.lora_targets(base, [".*/attn1/to_q"])[0]
    keys = k.split("/")
    w = np.asarray(L._get(base, keys, k))
    d = np.asarray(ads[k]["a"]) @ np.asarray(ads[k]["b"])
    got = L.apply_lora_files(base, [f"{path}:0.5"], base_hash=h)
    np.testing.assert_allclose(np.asarray(L._get(got, keys, k)), w + 0.5 * ALPHA / RANK * d, atol=1e-5)
    # stacking two sets = the sum of the two deltas (alpha None: factor 1)
    two = jax.jit(L.merge_lora)(base, [ads, ads], [0.5, 0.25], [ALPHA, None])
    np.testing.assert_allclose(np.asarray(L._get(two, keys, k)), w + (0.5 * ALPHA / RANK + 0.25) * d, atol=1e-5)
    untouched = L.lora_targets(base, ["conv_in"])[0]
    np.testing.assert_array_equal(np.asarray(L._get(two, untouched.split("/"), untouched)),
                                  np.asarray(L._get(base, untouched.split("/"), untouched)))
    wrapped = L.apply_lora_files({"net": base, "lora": {}}, [path])
    assert set(wrapped) == {"net", "lora"}
    assert L.parse_lora_spec("x.safetensors") == ("x.safetensors", 1.0)
    assert L.parse_lora_spec("/a:b/x.safetensors:-0.5") == ("/a:b/x.safetensors", -0.5)
    with pytest.raises(ConfigError, match="SCALE"):
        L.parse_lora_spec("x.safetensors:big")


def test_adapter_file_is_small_at_rank_8(tmp_path):
    """A moderately sized U-Net (two levels, 64/128 channels): rank-8 adapters on every attention projection
    and feed-forward output weigh < 5% of the base (bytes of the file vs bytes of the float32 params)."""
    fields = small_unet((64, 128), in_channels=8, cross_attention_dim=256, heads=8, groups=32, attention="low")
    den = build_denoiser(fields)
    base = jax.eval_shape(lambda r: meta.unbox(den.init(r, (16, 32, 8), 4)), jax.random.PRNGKey(0))
    base_bytes = sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(base))
    ads = L.init_lora(base, [".*/attn[12]/to_(q|k|v|out)", ".*/ff/net_(0/proj|2)"], 8, jax.random.PRNGKey(0))
    assert len(ads) == 4 * (4 + 4 + 2)   # 4 transformer blocks (down, mid, 2 up) x (2 attentions x 4 + ff 2)
    path = str(tmp_path / "r8.safetensors")
    L.save_lora(path, ads, {"rank": 8, "alpha": 8})
    size = os.path.getsize(path)
    assert base_bytes > 4e6
    assert size < 0.05 * base_bytes, (size, base_bytes)


def _fake_peft(ads, prefix="unet."):
    """Our adapters -> a diffusers/PEFT state dict, written out independently of the module's mapping."""
    sd = {}
    for path, ab in ads.items():
        mod = path[: -len("/kernel")]
        mod = mod.replace("/to_out", "/to_out/0").replace("ff/net_0/proj", "ff/net/0/proj")
        mod = mod.replace("ff/net_2", "ff/net/2")
        for blk in ("down_blocks", "up_blocks", "attentions", "resnets", "transformer_blocks"):
            mod = mod.replace(f"{blk}_", f"{blk}/")
        mod = prefix + mod.replace("/", ".")
        a = np.asarray(ab["a"])
        if "conv" in mod:   # conv: [9*in, r] -> [r, in, 3, 3]
            r = a.shape[1]
            a = a.reshape(3, 3, -1, r).transpose(3, 2, 0, 1)
            sd[f"{mod}.lora_A.weight"] = a
            sd[f"{mod}.lora_B.weight"] = np.asarray(ab["b"]).T[:, :, None, None]
        else:
            sd[f"{mod}.lora_A.weight"] = a.T      # [r, in]
            sd[f"{mod}.lora_B.weight"] = np.asarray(ab["b"]).T   # [out, r]
    return sd


def test_peft_round_trip_and_kohya(unet_base):
    base, ads = unet_base
    sd = _fake_peft(ads)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight" in sd
    back, alpha = L.from_peft_state_dict(sd, base, alpha=ALPHA)
    assert alpha == ALPHA and set(back) == set(ads)
    for p in ads:
        np.testing.assert_array_equal(back[p]["a"], np.asarray(ads[p]["a"]))
        np.testing.assert_array_equal(back[p]["b"], np.asarray(ads[p]["b"]))
    # our exporter writes what we read (Dense kernels)
    dense = {p: v for p, v in ads.items() if "conv" not in p}
    back2, _ = L.from_peft_state_dict(L.to_peft_state_dict(dense, "base_model.model."), base)
    assert all(np.array_equal(back2[p]["b"], np.asarray(dense[p]["b"])) for p in dense)
    # kohya: separators squashed to "_", lora_down/lora_up + per-module alpha
    kohya = {}
    for k, v in sd.items():
        mod, _, tail = k[len("unet."):].partition(".lora_")
        name = "lora_unet_" + mod.replace(".", "_")
        kohya[f"{name}.lora_{'down' if tail.startswith('A') else 'up'}.weight"] = v
        kohya[f"{name}.alpha"] = np.float32(2.0)
    back3, alpha3 = L.from_peft_state_dict(kohya, base)
    assert alpha3 == 2.0 and set(back3) == set(ads)
    kohya[next(k for k in kohya if k.endswith(".alpha"))] = np.float32(8.0)   # mixed alphas fold into b
    back4, alpha4 = L.from_peft_state_dict(kohya, base)
    assert alpha4 is None
    changed = [p for p in ads if not np.allclose(back4[p]["b"], back3[p]["b"] * 2.0 / RANK)]
    assert len(changed) == 1 and np.allclose(back4[changed[0]]["b"], back3[changed[0]]["b"] * 8.0 / RANK)
    # unknown / unmatched keys name themselves
    with pytest.raises(ValueError, match="lora_te_text_model"):
        L.from_peft_state_dict({"lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight": np.zeros((4, 8))}, base)
    with pytest.raises(ValueError, match="magnitude"):
        L.from_peft_state_dict({"unet.conv_in.lora_magnitude_vector": np.zeros(8)}, base)
    bad = dict(sd)
    bad.pop(next(k for k in bad if k.endswith("lora_B.weight")))
    with pytest.raises(ValueError, match="no lora_B"):
        L.from_peft_state_dict(bad, base)


def test_dit_names_map():
    assert L.torch_module_to_path("transformer.in_blocks.1.attn.proj") == "in_blocks_1/attn/to_out"
    assert L.torch_module_to_path("out_blocks.0.mlp.net.0.proj") == "out_blocks_0/ff/net_0/proj"
    assert L.torch_module_to_path("down_blocks.1.downsamplers.0.conv") == "down_blocks_1/downsamplers_0"
    assert (L.torch_module_to_path("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora")
            == "down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_out")


def test_config_errors(unet_base):
    base, _ = unet_base
    den = build_denoiser(UNET)
    with pytest.raises(ConfigError, match=r"'\.\*/to_z' matches no"):
        L.lora_targets(base, [".*/attn1/to_q", ".*/to_z"])
    with pytest.raises(ConfigError, match="config.lora.rnak"):
        L.with_lora(den, {"rnak": 4, "targets": [".*"]})
    with pytest.raises(ConfigError, match="config.lora.targets"):
        L.with_lora(den, {"rank": 4})
    with pytest.raises(ValueError, match="do not fit"):
        k = L.lora_targets(base, [".*/attn1/to_q"])[0]
        L.merge_lora(base, {k: {"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 8))}})
    with pytest.raises(ValueError, match="no 'nope'"):
        L.merge_lora(base, {"nope/kernel": {"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 8))}})
