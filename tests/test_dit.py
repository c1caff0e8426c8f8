"""EzAudio-DiT: parameter counts, SOLA zero-init / (1 - gate) residual / LIFO skips, variants, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tta_jax.denoisers.dit import DiT, DiTBlock, DiTConfig, ezaudio_l, ezaudio_tiny, ezaudio_xl
from tta_jax.nn.layers import AdaLNSOLA

B, T, L = 2, 12, 5


def _inputs(c, key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    x = jax.random.normal(k1, (B, T, c.in_channels))
    t = jnp.array([3, 700])
    cond = {"text": jax.random.normal(k2, (B, L, c.context_dim)),
            "text_mask": jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)}
    return x, t, cond


def random_params(model, *args, scale=0.2, seed=0):
    """Param tree with the model's structure (from eval_shape: no compile) filled with N(0, scale^2)."""
    abstract = meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), abstract)


def _count(tree):
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(meta.unbox(tree))))


@pytest.mark.parametrize("cfg,expected", [(ezaudio_l(), 596e6), (ezaudio_xl(), 874e6)])
def test_param_counts_match_paper(cfg, expected):
    cond = {"text": jnp.zeros((1, 3, cfg.context_dim)), "text_mask": jnp.ones((1, 3), bool)}
    abstract = jax.eval_shape(DiT(cfg).init, jax.random.key(0), jnp.zeros((1, 4, 128)), jnp.zeros((1,)), cond)
    n = _count(abstract)
    assert abs(n - expected) / expected < 0.01, n
    assert cfg.num_blocks == cfg.depth + 1


def test_init_zero_terms_and_forward():
    c = ezaudio_tiny()
    x, t, cond = _inputs(c)
    m = DiT(c)
    variables = jax.jit(m.init)(jax.random.key(1, impl="unsafe_rbg"), x, t, cond)  # rbg: faster compile
    p = meta.unbox(variables)["params"]
    zero = [p["mask_embed"], p["time_ada"]["kernel"], p["time_ada"]["bias"], p["time_ada_final"]["kernel"],
            p["time_ada_final"]["bias"]]
    for blk in ["in_blocks_0", "in_blocks_1", "mid_block", "out_blocks_0", "out_blocks_1"]:
        zero += [p[blk]["adaln"]["lora_b"]["kernel"], p[blk]["adaln"]["scale_shift_table"],
                 p[blk]["cross_attn"]["to_out"]["kernel"], p[blk]["cross_attn"]["to_out"]["bias"],
                 p[blk]["attn"]["to_out"]["bias"]]
        nonzero = [p[blk]["adaln"]["lora_a"]["kernel"], p[blk]["attn"]["to_q"]["kernel"],
                   p[blk]["ff"]["net_0"]["proj"]["kernel"]]
        assert all(float(jnp.abs(z).max()) > 0 for z in nonzero)
        assert "skip_linear" in p[blk] if blk.startswith("out") else "skip_linear" not in p[blk]
    assert all(float(jnp.abs(z).max()) == 0 for z in zero)
    assert float(jnp.abs(p["final_block"]["linear"]["kernel"]).max()) > 0  # not zero-init (v-prediction)
    apply = jax.jit(m.apply)
    out = apply(variables, x, t, cond)
    assert out.shape == (B, T, c.out_channels) and bool(jnp.all(jnp.isfinite(out)))
    # the cross-attention output projection is zero at init: the text cannot matter yet
    cond2 = dict(cond, text=cond["text"] + 5.0)
    np.testing.assert_allclose(np.asarray(apply(variables, x, t, cond2)), np.asarray(out), atol=1e-5)


def test_sola_modulation_formula():
    D, r, alpha = 8, 2, 6.0
    mod = AdaLNSOLA(D, r, alpha)
    emb = jax.random.normal(jax.random.key(0), (3, D))
    shared = jax.random.normal(jax.random.key(1), (3, 6 * D))
    v = mod.init(jax.random.key(2), emb, shared)
    # zero init: the per-block terms vanish, only the shared projection remains
    np.testing.assert_allclose(np.asarray(mod.apply(v, emb, shared)), np.asarray(shared.reshape(3, 6, D)), atol=1e-6)
    p = meta.unbox(v)["params"]
    p = {"lora_a": p["lora_a"], "lora_b": {"kernel": jax.random.normal(jax.random.key(3), (6 * r, 6 * D))},
         "scale_shift_table": jax.random.normal(jax.random.key(4), (6, D))}
    got = mod.apply({"params": p}, emb, shared)
    ref = (shared + alpha / r * (emb @ p["lora_a"]["kernel"]) @ p["lora_b"]["kernel"]).reshape(3, 6, D) \
        + p["scale_shift_table"][None]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def _block_with_table(c, table):
    return _block_fn(c)(table)


_BLOCK_FNS = {}


def _block_fn(c):
    if c not in _BLOCK_FNS:
        blk = DiTBlock(c, False)
        x = jax.random.normal(jax.random.key(5), (B, T, c.width))
        temb = jax.random.normal(jax.random.key(6), (B, c.width))
        shared = jnp.zeros((B, 6 * c.width))
        v = random_params(blk, x, temb, shared, None, None, None)

        @jax.jit
        def f(table):
            ada = dict(v["params"]["adaln"], scale_shift_table=table,
                       lora_b={"kernel": jnp.zeros_like(v["params"]["adaln"]["lora_b"]["kernel"])})
            p = dict(v["params"], adaln=ada)
            return blk.apply({"params": p}, x, temb, shared, None, None, None), x

        _BLOCK_FNS[c] = f
    return _BLOCK_FNS[c]


def test_one_minus_gate_residual():
    c = ezaudio_tiny()
    D = c.width
    ones_gate = jnp.zeros((6, D)).at[2].set(1.0).at[5].set(1.0)  # gate_msa = gate_mlp = 1
    out, x = _block_with_table(c, ones_gate)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-6)  # (1 - 1) closes both branches
    out0, x = _block_with_table(c, jnp.zeros((6, D)))
    assert float(jnp.abs(out0 - x).max()) > 1e-2  # gate 0: branches fully open
    # the DiT "plain" gate is the opposite
    out_p, x = _block_with_table(c.replace(gate="plain"), jnp.zeros((6, D)))
    np.testing.assert_allclose(np.asarray(out_p), np.asarray(x), atol=1e-6)
    # half gate = half the residual update
    half = jnp.zeros((6, D)).at[2].set(0.5).at[5].set(1.0)
    only_attn, x = _block_with_table(c, jnp.zeros((6, D)).at[5].set(1.0))
    out_h, _ = _block_with_table(c, half)
    np.testing.assert_allclose(np.asarray(out_h - x), np.asarray(0.5 * (only_attn - x)), atol=1e-5)


def test_long_skips_are_lifo():
    import flax.linen as nn

    c = ezaudio_tiny(depth=6)  # 3 in, mid, 3 out: LIFO and FIFO differ
    x, t, cond = _inputs(c)
    m = DiT(c)
    v = random_params(m, x, t, cond)

    @jax.jit
    def run(v):
        outs, skips = {}, {}

        def spy(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if isinstance(context.module, DiTBlock) and context.method_name == "__call__":
                outs[context.module.name] = y
                skips[context.module.name] = args[3]
            return y

        with nn.intercept_methods(spy):
            m.apply(v, x, t, cond)
        return outs, skips

    outs, skips = run(v)
    assert skips["in_blocks_0"] is None and skips["mid_block"] is None
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(skips[f"out_blocks_{i}"]), np.asarray(outs[f"in_blocks_{2 - i}"]))
    assert float(jnp.abs(outs["in_blocks_0"] - outs["in_blocks_2"]).max()) > 1e-3  # FIFO would be caught
    # without long skips the out blocks have no fusion layer
    p = random_params(DiT(c.replace(long_skips=False)), x, t, cond)["params"]
    assert "skip_linear" not in p["out_blocks_0"]


def test_mask_embedding_and_stage1_without_text():
    c = ezaudio_tiny()
    x, t, cond = _inputs(c)
    m = DiT(c)
    v = random_params(m, x, t, cond)
    f = jax.jit(m.apply)
    clean = jax.random.normal(jax.random.key(9), x.shape)
    mask = jnp.zeros((B, T)).at[:, 4:8].set(1.0)
    base = f(v, x, t, dict(cond, masked_latent=clean, mask=mask))
    # masked frames of the clean latent are ignored (replaced by the embedding)
    clean2 = clean.at[:, 4:8].set(123.0)
    np.testing.assert_allclose(np.asarray(f(v, x, t, dict(cond, masked_latent=clean2, mask=mask))),
                               np.asarray(base), atol=1e-5)
    # unmasked frames matter
    clean3 = clean.at[:, 0].set(3.0)
    assert float(jnp.abs(f(v, x, t, dict(cond, masked_latent=clean3, mask=mask)) - base).max()) > 1e-4
    # all-masked with a latent == no latent given at all
    full = f(v, x, t, dict(cond, masked_latent=clean, mask=jnp.ones((B, T))))
    np.testing.assert_allclose(np.asarray(full), np.asarray(f(v, x, t, cond)), atol=1e-5)
    # stage 1: no text -> no cross-attention params and no cross-attention
    p1 = random_params(m, x, t, {})["params"]
    assert "cross_attn" not in p1["mid_block"] and "context_embed" not in p1
    assert f({"params": p1}, x, t, {}).shape == (B, T, c.out_channels)


@pytest.mark.parametrize("kw", [dict(modulation="adaln_zero", gate="plain"), dict(modulation="adaln_single"),
                                dict(rope=False, qk_norm=False, long_skips=False)])
def test_ablation_variants_run(kw):
    c = ezaudio_tiny(**kw)
    x, t, cond = _inputs(c)
    m = DiT(c)
    v = random_params(m, x, t, cond)
    p = v["params"]
    if kw.get("modulation") == "adaln_zero":
        assert "time_ada" not in p and p["mid_block"]["adaln"]["time_ada"]["kernel"].shape == (64, 6 * 64)
    if kw.get("modulation") == "adaln_single":
        assert set(p["mid_block"]["adaln"]) == {"scale_shift_table"}
    if kw.get("qk_norm") is False:
        assert "q_norm" not in p["mid_block"]["attn"]
    out = jax.jit(m.apply)(v, x, t, cond)
    assert out.shape == (B, T, c.out_channels) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_remat_and_bf16_match():
    c = ezaudio_tiny(depth=2)
    x, t, cond = _inputs(c)
    v = random_params(DiT(c), x, t, cond, scale=0.1)

    def loss(m, params):
        return jnp.mean(m.apply(params, x, t, cond) ** 2)

    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(DiT(c), p)))(v)
    cr = c.replace(remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(DiT(cr), p)))(v)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)
    out16 = jax.jit(DiT(c.replace(dtype="bfloat16")).apply)(v, x, t, cond)
    out32 = jax.jit(DiT(c).apply)(v, x, t, cond)
    assert out16.dtype == jnp.float32
    assert float(jnp.abs(out16 - out32).max() / jnp.abs(out32).max()) < 0.05


def test_config_roundtrip_and_errors():
    c = ezaudio_xl()
    assert DiTConfig.from_dict(c.to_dict()) == c and c.hd == 72
    with pytest.raises(ValueError, match="unknown keys"):
        DiTConfig.from_dict(dict(c.to_dict(), widht=3))
    with pytest.raises(ValueError, match="modulation"):
        ezaudio_tiny(modulation="film")
    c = ezaudio_tiny()
    x, t, cond = _inputs(c)
    with pytest.raises(ValueError, match="text"):
        jax.eval_shape(DiT(c).init, jax.random.key(0), x, t, dict(cond, text=jnp.zeros((B, L, 7))))


def test_cross_attention_capture_through_cond():
    from tta_jax.nn.attention import AttentionControl

    c = ezaudio_tiny()
    x, t, cond = _inputs(c)
    m = DiT(c)
    v = random_params(m, x, t, cond)
    run = jax.jit(lambda v, cond: m.apply(v, x, t, cond, mutable=["intermediates"]))
    out, state = run(v, dict(cond, attn_control=AttentionControl(capture=True)))
    inter = state["intermediates"]
    names = [k for k in inter if "blocks" in k or k == "mid_block"]
    assert len(names) == c.num_blocks
    (probs,) = inter["mid_block"]["cross_attn"]["attn_probs"]
    assert probs.shape == (B, c.num_heads, T, L) and "attn" not in inter["mid_block"]  # cross-attention only
    assert float(jnp.abs(probs[0, ..., 3:]).max()) == 0.0  # masked text tokens
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.jit(m.apply)(v, x, t, cond)), atol=1e-5)
    # re-weighting a token changes the output
    w = jnp.array([1.0, 3.0, 1.0, 1.0, 1.0])
    out_w, _ = run(v, dict(cond, attn_control=AttentionControl(token_weights=w)))
    assert float(jnp.abs(out_w - out).max()) > 1e-4


def test_pooled_context_is_a_masked_global_text_path():
    """``pooled_context``: the masked mean of the text states feeds the timestep embedding, so the
    output depends on the text through it (cross-attention removed here), and padded positions do not
    matter. Off by default (EzAudio has no such path)."""
    x, t, cond = _inputs(ezaudio_tiny())
    assert "pooled_text_embed" not in random_params(DiT(ezaudio_tiny()), x, t, cond)["params"]
    c = ezaudio_tiny(pooled_context=True)
    model = DiT(c)
    params = random_params(model, x, t, cond)["params"]
    assert "pooled_text_embed" in params
    apply = jax.jit(model.apply)  # six calls of one shape: one compiled program (op-by-op is slow on CPU)
    out = apply({"params": params}, x, t, cond)
    garbage = cond["text"].at[0, 3:].set(100.0)  # only masked positions of clip 0 change
    out_g = apply({"params": params}, x, t, dict(cond, text=garbage))
    np.testing.assert_allclose(out_g, out, atol=1e-5)
    # with the cross-attention output zeroed, only the pooled path carries the text
    p0 = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "cross_attn" in jax.tree_util.keystr(path) and
        "to_out" in jax.tree_util.keystr(path) else v, params)
    a = apply({"params": p0}, x, t, cond)
    b = apply({"params": p0}, x, t, dict(cond, text=cond["text"] + 1.0))
    assert float(jnp.abs(a - b).max()) > 1e-3
    p1 = dict(p0, pooled_text_embed=jax.tree.map(jnp.zeros_like, p0["pooled_text_embed"]))
    a1 = apply({"params": p1}, x, t, cond)
    b1 = apply({"params": p1}, x, t, dict(cond, text=cond["text"] + 1.0))
    np.testing.assert_allclose(a1, b1, atol=1e-6)
