"""Codec-token LM (tta_jax.lm): delay pattern, KV cache parity, one-jit generation, sampling filters, CFG, loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.lm import generate as gen
from tta_jax.lm.delay import delay_deinterleave, delay_interleave, delayed_lm_batch
from tta_jax.lm.transformer import CodecLM, CodecLMConfig, decode_step, init_cache, lm_loss, tiny

CFG = tiny()
B, L = 2, 5


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.normal(size=(B, L, CFG.text_dim)), jnp.float32)
    mask = jnp.array([[True] * L, [True, True, True, False, False]])
    tokens = rng.integers(0, CFG.codebook_size, size=(B, 6, CFG.num_codebooks)).astype(np.int32)
    inputs, _, _ = delayed_lm_batch(tokens, CFG.special_id)  # numpy in, numpy out
    params = jax.jit(CodecLM(CFG).init)(jax.random.PRNGKey(0), inputs, text, mask)
    return params, text, mask, jnp.asarray(inputs)


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_delay_roundtrip(K):
    rng = np.random.default_rng(K)
    for T in (1, 7):
        tok = rng.integers(0, 50, size=(2, T, K))
        delayed, valid = delay_interleave(tok, pad_id=99)
        assert delayed.shape == (2, T + K - 1, K) and valid.shape == (T + K - 1, K)
        assert int(valid.sum()) == T * K
        d = np.asarray(delayed)
        for k in range(K):
            np.testing.assert_array_equal(d[:, k:k + T, k], tok[:, :, k])  # codebook k shifted right by k
            assert (d[:, :k, k] == 99).all() and (d[:, k + T:, k] == 99).all()
        np.testing.assert_array_equal(np.asarray(delay_deinterleave(delayed)), tok)
    jd, jv = jax.jit(delay_interleave, static_argnums=1)(jnp.asarray(tok), 99)  # the jnp path, traced
    np.testing.assert_array_equal(np.asarray(jd), d)
    np.testing.assert_array_equal(np.asarray(jax.jit(delay_deinterleave)(jd)), tok)
    with pytest.raises(ValueError, match="delay_interleave"):
        delay_interleave(np.zeros((3, 4)), 0)


def test_delayed_lm_batch():
    tok = jnp.arange(2 * 4 * 3).reshape(2, 4, 3) % 16
    inputs, targets, valid = delayed_lm_batch(tok, 16)
    assert inputs.shape == targets.shape == valid.shape == (2, 6, 3)
    assert (inputs[:, 0] == 16).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    assert (jnp.where(valid, 0, targets) == jnp.where(valid, 0, 16)).all()


def test_kv_cache_matches_full_forward(setup):
    params, text, mask, inputs = setup
    S = inputs.shape[1]
    full = jax.jit(CodecLM(CFG).apply)(params, inputs, text, mask)
    assert full.shape == (B, S, CFG.num_codebooks, CFG.codebook_size)
    # prefill 3 rows, then one row at a time
    cache = init_cache(CFG, B, S)
    step = jax.jit(lambda c, row, i: decode_step(params, CFG, row, text, mask, c, i))
    pre, cache = step(cache, inputs[:, :3], jnp.int32(0))
    outs = [pre]
    for s in range(3, S):
        lg, cache = step(cache, inputs[:, s], jnp.int32(s))
        outs.append(lg[:, None])
    cached = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=0)


def test_greedy_generation_matches_naive_loop_and_compiles_once(setup):
    params, text, mask, _ = setup
    T, K, V = 4, CFG.num_codebooks, CFG.codebook_size
    null = jnp.zeros_like(text)
    null_mask = jnp.zeros(mask.shape, bool)
    before = gen._generate_jit._cache_size()
    out = gen.generate(params, CFG, text, mask, jax.random.PRNGKey(1), steps=T, temperature=0.0, cfg_scale=3.0,
                       null_text=null, null_mask=null_mask)
    assert out.shape == (B, T, K) and out.dtype == jnp.int32
    # naive: no cache, the full causal forward over the whole sequence at every step (rows not generated yet
    # hold the pad id; causality makes them irrelevant to position s), CFG on logits, argmax, delay mask
    S = T + K - 1
    ctx, ctx_mask = jnp.concatenate([text, null]), jnp.concatenate([mask, null_mask])
    full = jax.jit(lambda seq: CodecLM(CFG).apply(params, jnp.concatenate([seq, seq]), ctx, ctx_mask))
    seq = np.full((B, S, K), V, np.int32)        # model inputs: BOS then the generated rows
    rows = []
    for s in range(S):
        lg = full(jnp.asarray(seq))[:, s]
        lg = lg[B:] + 3.0 * (lg[:B] - lg[B:])
        tok = np.asarray(jnp.argmax(lg, -1))
        valid = (np.arange(K) <= s) & (s < np.arange(K) + T)
        rows.append(np.where(valid, tok, V))
        if s + 1 < S:
            seq[:, s + 1] = rows[-1]
    naive = delay_deinterleave(np.stack(rows, axis=1))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(naive))
    # same shapes, another key and another text: no recompilation
    after = gen._generate_jit._cache_size()
    gen.generate(params, CFG, text + 1.0, mask, jax.random.PRNGKey(7), steps=T, temperature=0.5, cfg_scale=2.0,
                 null_text=null, null_mask=null_mask)
    assert after - before <= 1
    assert gen._generate_jit._cache_size() == after


def test_top_k_top_p_stay_in_allowed_set():
    probs = np.array([0.05, 0.4, 0.0, 0.15, 0.3, 0.1, 0.0, 0.0]) + 1e-9
    logits = jnp.log(jnp.asarray(probs / probs.sum(), jnp.float32))
    keys = jax.random.split(jax.random.PRNGKey(3), 2000)
    draw = jax.vmap(lambda k, tk, tp: gen.sample_logits(k, logits, 1.0, tk, tp), in_axes=(0, None, None))
    s = np.asarray(jax.jit(draw, static_argnums=1)(keys, 3, 0.0))
    assert set(s.tolist()) == {1, 4, 3}            # top-3
    s = np.asarray(jax.jit(draw, static_argnums=1)(keys, 0, 0.6))
    assert set(s.tolist()) == {1, 4}               # 0.4 < 0.6, 0.4 + 0.3 >= 0.6
    s = np.asarray(jax.jit(draw, static_argnums=1)(keys, 2, 0.3))
    assert set(s.tolist()) == {1}                  # top-1 always kept
    assert (np.asarray(gen.sample_logits(keys[0], jnp.stack([logits, -logits]), 0.0)) == [1, 2]).all()


def test_cfg_scale_one_equals_conditional(setup):
    params, text, mask, _ = setup
    key = jax.random.PRNGKey(5)
    # same shapes / static options as the test above: the CFG run reuses its compiled program
    cond = gen.generate(params, CFG, text, mask, key, steps=4, temperature=1.0)
    cfg1 = gen.generate(params, CFG, text, mask, key, steps=4, temperature=1.0, cfg_scale=1.0,
                        null_text=jnp.zeros_like(text), null_mask=jnp.zeros(mask.shape, bool))
    np.testing.assert_array_equal(np.asarray(cond), np.asarray(cfg1))
    lg = jax.random.normal(key, (2 * B, 3, 4))
    np.testing.assert_allclose(gen.apply_cfg(lg, 1.0), lg[:B], atol=1e-6)


def test_lm_loss_masks_and_matches_hand_ce():
    logits = jnp.array([[[[1.0, 2.0, 0.5]], [[0.3, -1.0, 2.0]]]])  # [1, 2, 1, 3]
    targets = jnp.array([[[1], [3]]])                                # invalid position holds the pad id V=3
    valid = jnp.array([[True], [False]])                              # [T, K]
    loss_fn = jax.jit(lm_loss)
    loss, m = loss_fn(logits, targets, valid)
    hand = -np.log(np.exp(2.0) / np.exp([1.0, 2.0, 0.5]).sum())
    np.testing.assert_allclose(float(loss), hand, rtol=1e-6)
    assert float(m["num_valid"]) == 1 and float(m["accuracy"]) == 1.0
    loss2, _ = loss_fn(logits.at[0, 1, 0, 1].set(1e9), targets, valid)
    assert float(loss2) == float(loss)
    g = jax.jit(jax.grad(lambda lg: lm_loss(lg, targets, valid)[0]))(logits)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g[0, 1]).sum()) == 0.0


def test_config_roundtrip_and_errors():
    assert CodecLMConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="unknown keys"):
        CodecLMConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="heads"):
        tiny(width=30)
    with pytest.raises(ValueError, match="max_len"):
        gen.generate({}, CFG, jnp.zeros((1, 2, CFG.text_dim)), None, jax.random.PRNGKey(0), steps=CFG.max_len)
