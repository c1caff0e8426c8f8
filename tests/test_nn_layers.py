"""FeedForward (GEGLU) and AdaGroupNorm vs diffusers; modulate / AdaLN helpers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.nn.layers import AdaGroupNorm, AdaLNSingle, AdaLNZero, FeedForward, modulate, split_mod


def _np(t):
    return t.detach().numpy()


@pytest.mark.parity
@pytest.mark.parametrize("act", ["geglu", "gelu"])
def test_feedforward_matches_diffusers(act, rel_err):
    torch = pytest.importorskip("torch")
    from diffusers.models.attention import FeedForward as TorchFF

    torch.manual_seed(0)
    ref = TorchFF(12, mult=4, activation_fn=act).eval()
    x = torch.randn(2, 5, 12)
    p = {"net_0": {"proj": {"kernel": _np(ref.net[0].proj.weight).T, "bias": _np(ref.net[0].proj.bias)}},
         "net_2": {"kernel": _np(ref.net[2].weight).T, "bias": _np(ref.net[2].bias)}}
    ours = FeedForward(mult=4, activation=act).apply({"params": p}, jnp.asarray(_np(x)))
    with torch.no_grad():
        want = _np(ref(x))
    assert rel_err(np.asarray(ours), want) < 1e-5


@pytest.mark.parity
def test_ada_group_norm_matches_diffusers(rel_err):
    torch = pytest.importorskip("torch")
    from diffusers.models.normalization import AdaGroupNorm as TorchAGN

    torch.manual_seed(1)
    ref = TorchAGN(embedding_dim=6, out_dim=8, num_groups=2, act_fn="silu", eps=1e-5).eval()
    x = torch.randn(2, 8, 3, 4)  # NCHW
    emb = torch.randn(2, 6)
    p = {"linear": {"kernel": _np(ref.linear.weight).T, "bias": _np(ref.linear.bias)}}
    ours = AdaGroupNorm(out_dim=8, num_groups=2, act="silu").apply(
        {"params": p}, jnp.asarray(_np(x).transpose(0, 2, 3, 1)), jnp.asarray(_np(emb)))
    with torch.no_grad():
        want = _np(ref(x, emb)).transpose(0, 2, 3, 1)
    assert rel_err(np.asarray(ours), want) < 1e-5


def test_modulate_and_split():
    x = jnp.ones((2, 3, 4))
    shift = jnp.array([[1.0, 2, 3, 4], [0, 0, 0, 0]])
    scale = jnp.array([[1.0, 1, 1, 1], [-1, -1, -1, -1]])
    y = modulate(x, shift, scale)
    np.testing.assert_allclose(np.asarray(y[0, 1]), [3, 4, 5, 6])
    np.testing.assert_allclose(np.asarray(y[1]), 0.0)
    mod = jnp.arange(2 * 6 * 4, dtype=jnp.float32).reshape(2, 6, 4)
    parts = split_mod(mod)
    assert len(parts) == 6 and parts[2].shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(parts[2]), np.asarray(mod[:, 2]))
    with pytest.raises(ValueError, match=r"\[B, 6, D\]"):
        split_mod(mod[:, :5])


def test_adaln_zero_and_single_init():
    emb = jnp.ones((2, 4))
    v = AdaLNZero(dim=4).init(jax.random.key(0), emb)
    assert float(jnp.abs(AdaLNZero(dim=4).apply(v, emb)).max()) == 0.0
    shared = jnp.arange(2 * 24, dtype=jnp.float32).reshape(2, 24)
    v = AdaLNSingle(dim=4).init(jax.random.key(0), shared)
    np.testing.assert_array_equal(np.asarray(AdaLNSingle(dim=4).apply(v, shared)), np.asarray(shared.reshape(2, 6, 4)))
