"""Attention vs a plain numpy reference (masks, fully masked rows, qk-norm, RoPE) and the control hooks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tta_jax.nn.attention import (Attention, AttentionControl, apply_rope, deferred_attention, einsum_attention,
                                  rope_tables, rotate_half)


def np_layernorm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_rope(x, pos):  # x [B, L, H, d]
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (np.arange(0, d, 2) / d))
    f = pos[:, None] * inv[None]
    emb = np.concatenate([f, f], -1)
    cos, sin = np.cos(emb)[None, :, None], np.sin(emb)[None, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def np_attention(p, x, ctx, mask, H, qk_norm=False, rope=False):
    p = meta.unbox(p)["params"]
    x = np.asarray(x, np.float64)
    ctx = x if ctx is None else np.asarray(ctx, np.float64)
    B, Lq, _ = x.shape
    Lk = ctx.shape[1]
    q = x @ np.asarray(p["to_q"]["kernel"])
    k = ctx @ np.asarray(p["to_k"]["kernel"])
    v = ctx @ np.asarray(p["to_v"]["kernel"])
    hd = q.shape[-1] // H
    q, k, v = q.reshape(B, Lq, H, hd), k.reshape(B, Lk, H, hd), v.reshape(B, Lk, H, hd)
    if qk_norm:
        q = np_layernorm(q, np.asarray(p["q_norm"]["scale"]), np.asarray(p["q_norm"]["bias"]))
        k = np_layernorm(k, np.asarray(p["k_norm"]["scale"]), np.asarray(p["k_norm"]["bias"]))
    if rope:
        q, k = np_rope(q, np.arange(Lq, dtype=np.float64)), np_rope(k, np.arange(Lk, dtype=np.float64))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    out = np.zeros((B, H, Lq, hd))
    for b in range(B):
        m = np.ones(Lk, bool) if mask is None else np.asarray(mask[b], bool)
        if not m.any():
            continue  # fully masked row -> zero attention output
        sb = np.where(m[None, None], s[b], -np.inf)
        pr = np.exp(sb - sb.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        out[b] = np.einsum("hqk,khd->hqd", pr, v[b])
    out = out.transpose(0, 2, 1, 3).reshape(B, Lq, H * hd)
    return out @ np.asarray(p["to_out"]["kernel"]) + np.asarray(p["to_out"]["bias"])


def _perturb(params, key):
    leaves, tree = jax.tree.flatten(meta.unbox(params))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("backend", ["xla", "einsum", "deferred"])
def test_cross_attention_matches_numpy_with_masks(backend):
    B, Lq, Lk, D, Dc, H, hd = 3, 5, 6, 16, 12, 2, 8
    kx, kc, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (B, Lq, D))
    ctx = jax.random.normal(kc, (B, Lk, Dc))
    mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)  # row 2 fully masked
    m = Attention(num_heads=H, head_dim=hd, qk_norm=True, backend=backend)
    params = _perturb(m.init(jax.random.key(1), x, ctx, mask), kp)
    out = m.apply(params, x, ctx, mask)
    assert out.shape == (B, Lq, D)
    assert np.all(np.isfinite(np.asarray(out)))
    ref = np_attention(params, x, ctx, mask, H, qk_norm=True)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-4)
    # fully masked row: only the output bias remains
    bias = np.asarray(meta.unbox(params)["params"]["to_out"]["bias"])
    np.testing.assert_allclose(np.asarray(out[2]), np.broadcast_to(bias, (Lq, D)), atol=1e-6)
    # masked keys are really ignored: changing them does not change the output
    ctx2 = ctx.at[0, 3:].set(100.0)
    np.testing.assert_allclose(np.asarray(m.apply(params, x, ctx2, mask))[0], np.asarray(out)[0], atol=1e-5)


def test_self_attention_rope_matches_numpy():
    B, L, D, H, hd = 2, 7, 16, 2, 8
    x = jax.random.normal(jax.random.key(2), (B, L, D))
    m = Attention(num_heads=H, head_dim=hd, rope=True, qk_norm=True)
    params = _perturb(m.init(jax.random.key(3), x), jax.random.key(4))
    out = m.apply(params, x)
    ref = np_attention(params, x, None, None, H, qk_norm=True, rope=True)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-4)
    # without rope the answer differs (the test can fail)
    ref_norope = np_attention(params, x, None, None, H, qk_norm=True, rope=False)
    assert np.abs(np.asarray(out) - ref_norope).max() > 1e-3


def test_rope_rotate_half_layout_and_relative_invariance():
    d = 8
    x = jnp.arange(d, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(rotate_half(x)), [-4, -5, -6, -7, 0, 1, 2, 3])
    cos, sin = rope_tables(jnp.arange(3), d)
    assert cos.shape == (3, d)
    # [freqs, freqs] layout: the two halves of the table are equal; position 0 is the identity
    np.testing.assert_allclose(np.asarray(cos[:, : d // 2]), np.asarray(cos[:, d // 2:]))
    np.testing.assert_allclose(np.asarray(cos[0]), 1.0)
    np.testing.assert_allclose(np.asarray(sin[1, 0]), np.sin(1.0), rtol=1e-6)  # freq 1 first
    # q(m) . k(n) depends only on m - n
    q = jax.random.normal(jax.random.key(5), (1, 1, 1, d))
    k = jax.random.normal(jax.random.key(6), (1, 1, 1, d))

    def dot(m, n):
        cq, sq = rope_tables(jnp.array([m]), d)
        ck, sk = rope_tables(jnp.array([n]), d)
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    assert abs(dot(3, 1) - dot(10, 8)) < 1e-4
    assert abs(dot(5, 5) - dot(0, 0)) < 1e-4
    assert abs(dot(3, 1) - dot(3, 2)) > 1e-3


def test_rope_refuses_cross_attention():
    m = Attention(num_heads=2, head_dim=4, rope=True)
    with pytest.raises(ValueError, match="self-attention"):
        m.init(jax.random.key(0), jnp.ones((1, 3, 8)), jnp.ones((1, 2, 8)))


def test_control_capture_weights_and_replace():
    B, Lq, Lk, D, H, hd = 2, 4, 5, 8, 2, 4
    x = jax.random.normal(jax.random.key(7), (B, Lq, D))
    ctx = jax.random.normal(jax.random.key(8), (B, Lk, D))
    mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    m = Attention(num_heads=H, head_dim=hd)
    params = _perturb(m.init(jax.random.key(9), x, ctx, mask), jax.random.key(10))
    base = m.apply(params, x, ctx, mask)

    out, state = m.apply(params, x, ctx, mask, control=AttentionControl(capture=True), mutable=["intermediates"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), atol=1e-5)  # capture alone changes nothing
    (probs,) = state["intermediates"]["attn_probs"]
    assert probs.shape == (B, H, Lq, Lk)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
    assert float(jnp.abs(probs[0, :, :, 4]).max()) == 0.0  # masked key gets no probability

    # re-weighting token 2 by 0 equals removing it without renormalisation
    w = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])
    ctrl = AttentionControl(capture=True, token_weights=w)
    _, st = m.apply(params, x, ctx, mask, control=ctrl, mutable=["intermediates"])
    (pw,) = st["intermediates"]["attn_probs"]
    np.testing.assert_allclose(np.asarray(pw), np.asarray(probs * w[None, None, None]), atol=1e-6)

    # replace_probs sees the layer name and can swap in other maps (here: uniform over valid keys)
    seen = []

    def uniform(p, name):
        seen.append(name)
        return jnp.broadcast_to(mask[:, None, None, :] / mask.sum(-1)[:, None, None, None], p.shape)

    out_r = m.apply(params, x, ctx, mask, control=AttentionControl(replace_probs=uniform))
    assert seen and isinstance(seen[0], str)
    p = meta.unbox(params)["params"]
    v = (ctx @ p["to_v"]["kernel"]).reshape(B, Lk, H, hd)
    mean_v = jnp.einsum("bk,bkhd->bhd", mask / mask.sum(-1, keepdims=True), v).reshape(B, 1, H * hd)
    expect = jnp.broadcast_to(mean_v @ p["to_out"]["kernel"] + p["to_out"]["bias"], (B, Lq, D))
    np.testing.assert_allclose(np.asarray(out_r), np.asarray(expect), atol=1e-5)

    # the control is a pytree: it goes through jit
    f = jax.jit(lambda c: m.apply(params, x, ctx, mask, control=c))
    np.testing.assert_allclose(np.asarray(f(AttentionControl(token_weights=w))),
                               np.asarray(m.apply(params, x, ctx, mask, control=AttentionControl(token_weights=w))),
                               atol=1e-5)
    with pytest.raises(ValueError, match="einsum"):
        Attention(num_heads=H, head_dim=hd, backend="xla").apply(params, x, ctx, mask,
                                                                 control=AttentionControl(capture=True))


def test_deferred_attention_gradients_equal_the_softmax_ones():
    """Normalising after the value product (and a constant max shift) is the same function: values and
    gradients w.r.t. q, k, v match the materialised-softmax core, masked keys and a fully masked row included;
    bfloat16 inputs give bfloat16 outputs close to float32."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(3 * rng.standard_normal((3, 7, 2, 8)).astype(np.float32)) for _ in range(3))
    mask = jnp.asarray(np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0] * 7], bool))

    def loss(fn):
        return jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask))), argnums=(0, 1, 2))(q, k, v)

    (l0, g0), (l1, g1) = loss(einsum_attention), loss(deferred_attention)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(deferred_attention(q, k, v, mask)[2]).max()) == 0.0
    half = deferred_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
    assert half.dtype == jnp.bfloat16
    ref = einsum_attention(q, k, v, mask)
    assert float(jnp.abs(half.astype(jnp.float32) - ref).max()) < 0.1 * float(jnp.abs(ref).max())
    with pytest.raises(ValueError, match="einsum"):
        m = Attention(num_heads=2, head_dim=4, backend="deferred")
        x = jnp.ones((1, 3, 8))
        m.apply(m.init(jax.random.key(0), x), x, control=AttentionControl(capture=True))
