"""SERST reference-audio encoder (tta_jax.conditioners.reference_encoder): shapes, unit norm, exact padding/mask
invariance, determinism, gradients, the ResNet-34 parameter count, the log-mel front end, and a toy learning run."""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tta_jax.audio.mel import log_mel_spectrogram
from tta_jax.conditioners.reference_encoder import (REFERENCE_MEL, ReferenceEncoder, ReferenceEncoderConfig,
                                                    attentive_stats, get_config, masked_time_normalize,
                                                    param_count, reference_frame_mask, reference_log_mel)

SR = 16000
TINY = get_config("tiny")
MODEL = ReferenceEncoder(TINY)
APPLY = jax.jit(MODEL.apply)     # compiled once per input shape; the tests reuse (2, 37), (2, 24), (2, 56)
INIT = jax.jit(MODEL.init)
# Init keys use the "unsafe_rbg" PRNG: compiling threefry for every parameter leaf costs ~3x more CPU time here.
KEY = lambda seed: jax.random.key(seed, impl="unsafe_rbg")  # noqa: E731
PADDED_T = 56


def _mel(t, seed=1, b=2):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, t, TINY.n_mels))


@pytest.fixture(scope="module")
def params():
    return INIT(KEY(0), _mel(37))


def _pad_with(x, t, value_fn):
    junk = value_fn((x.shape[0], t - x.shape[1], x.shape[2]))
    mask = jnp.broadcast_to(jnp.arange(t)[None] < x.shape[1], (x.shape[0], t))
    return jnp.concatenate([x, junk], axis=1), mask


def test_shape_dtype_and_unit_norm(params):
    y = APPLY(params, _mel(37))
    assert y.shape == (2, TINY.out_dim) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 1.0, atol=1e-5)
    assert float(jnp.max(jnp.abs(y[0] - y[1]))) > 1e-3      # not a constant map


@pytest.mark.parametrize("length", [37, 24])
def test_padding_with_masked_junk_does_not_change_output(params, length):
    """Append junk frames marked False: same embedding as the unpadded clip (odd and even lengths exercise the
    stride-2 alignment). Without the mask the junk must change it (the test can fail)."""
    x = _mel(length)
    ref = APPLY(params, x)
    xp, mask = _pad_with(x, PADDED_T, lambda s: 30.0 * jax.random.normal(jax.random.PRNGKey(7), s) + 5.0)
    err = float(jnp.max(jnp.abs(APPLY(params, xp, mask) - ref)))
    print(f"\nlength {length} padded to {PADDED_T}: max |diff| {err:.2e}")
    assert err < 1e-5, err
    assert float(jnp.max(jnp.abs(APPLY(params, xp, jnp.ones_like(mask)) - ref))) > 1e-2


def test_variable_lengths_in_one_batch_match_single_clips(params):
    """Rows of lengths 37 and 24 padded together to 56 give the embeddings of the unpadded clips (rows are
    independent, so each reference comes from its own unpadded batch)."""
    a, b = _mel(37, seed=11), _mel(24, seed=12)
    batch = jnp.full((2, PADDED_T, TINY.n_mels), -7.0).at[0, :37].set(a[0]).at[1, :24].set(b[0])
    mask = jnp.arange(PADDED_T)[None] < jnp.array([[37], [24]])
    got = APPLY(params, batch, mask)
    errs = [float(jnp.max(jnp.abs(got[0] - APPLY(params, a)[0]))),
            float(jnp.max(jnp.abs(got[1] - APPLY(params, b)[0])))]
    assert max(errs) < 1e-5, errs


def test_nan_in_masked_frames_does_not_leak(params):
    x = _mel(37)
    xp, mask = _pad_with(x, PADDED_T, lambda s: jnp.full(s, jnp.nan))
    got = APPLY(params, xp, mask)
    assert bool(jnp.all(jnp.isfinite(got)))
    assert float(jnp.max(jnp.abs(got - APPLY(params, x)))) < 1e-5


def test_attentive_stats_matches_numpy():
    rng = np.random.default_rng(0)
    x, logits = rng.normal(size=(2, 6, 3)).astype(np.float32), rng.normal(size=(2, 6, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    got = np.asarray(attentive_stats(jnp.asarray(x), jnp.asarray(logits), jnp.asarray(mask)))
    for b in range(2):
        xs, ls = x[b, mask[b]].astype(np.float64), logits[b, mask[b]].astype(np.float64)
        w = np.exp(ls - ls.max(0)) / np.exp(ls - ls.max(0)).sum(0)
        mu = (w * xs).sum(0)
        sg = np.sqrt(np.maximum((w * xs ** 2).sum(0) - mu ** 2, 1e-5))
        np.testing.assert_allclose(got[b], np.concatenate([mu, sg]), atol=1e-5)


@pytest.mark.parametrize("per_bin", [True, False])
def test_masked_time_normalize_matches_numpy(per_bin):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 4)).astype(np.float32) * 3 + 1
    mask = np.array([[1] * 5 + [0] * 2, [1] * 7], bool)
    x[0, 5:] = 1e6                                                      # junk in masked frames
    got = np.asarray(masked_time_normalize(jnp.asarray(x), jnp.asarray(mask), per_bin=per_bin))
    for b in range(2):
        v = x[b, mask[b]].astype(np.float64)
        axis = 0 if per_bin else None
        want = (v - v.mean(axis)) / np.sqrt(v.var(axis) + 1e-5)
        np.testing.assert_allclose(got[b, mask[b]], want, atol=1e-5)
        assert np.all(got[b, ~mask[b]] == 0.0)


def test_determinism(params):
    again = INIT(KEY(0), _mel(37))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = INIT(KEY(5), _mel(37))
    k = params["params"]["fc"]["kernel"].value
    assert float(jnp.max(jnp.abs(k - other["params"]["fc"]["kernel"].value))) > 0.0
    x = _mel(37)
    np.testing.assert_array_equal(np.asarray(APPLY(params, x)), np.asarray(APPLY(again, x)))


def test_params_carry_logical_axis_names(params):
    boxed = jax.tree_util.tree_leaves(params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert boxed and all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
    conv = params["params"]["layer2_0"]["conv1"]["kernel"]
    assert conv.names == (None, None, "conv_in", "conv_out") and conv.value.shape == (3, 3, 8, 16)


def _expected_count(cfg: ReferenceEncoderConfig) -> int:
    """Independent count of the SE-ResNet + ASP head (per-channel norm = scale + bias, as BatchNorm)."""
    c0 = cfg.channels[0]
    n = 9 * c0 + c0 + 2 * c0                      # stem conv (with bias) + norm
    cin = c0
    for s, (layers, c) in enumerate(zip(cfg.layers, cfg.channels)):
        stride = 1 if s == 0 else 2
        for i in range(layers):
            h = max(1, c // cfg.se_reduction)
            n += 9 * cin * c + 2 * c + 9 * c * c + 2 * c          # conv1 + norm1 + conv2 + norm2
            n += c * h + h + h * c + c                          # SE
            if (stride if i == 0 else 1) != 1 or cin != c:
                n += cin * c + 2 * c                            # 1x1 shortcut + norm
            cin = c
    f = cfg.n_mels
    for _ in range(len(cfg.layers) - 1):
        f = (f + 1) // 2
    d, a = cfg.channels[-1] * f, cfg.attention_dim
    n += d * a + a + 2 * a + a * d + d + 2 * d * cfg.out_dim + cfg.out_dim
    return n


def test_param_count_of_resnet34_default():
    cfg = get_config("serst")
    assert cfg.layers == (3, 4, 6, 3) and cfg.channels == (32, 64, 128, 256) and cfg.out_dim == 1024
    assert cfg.out_freq == 10 and cfg.pooled_dim == 2560
    got = param_count(cfg)
    print(f"\nReferenceEncoder serst params: {got:,}")
    assert got == _expected_count(cfg) == 11_306_316
    assert param_count(TINY) == _expected_count(TINY)


def test_config_from_lists_is_normalised():
    cfg = get_config("tiny", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64])
    assert cfg == TINY and hash(cfg) == hash(TINY)


def test_config_errors():
    with pytest.raises(ValueError, match="equal length"):
        ReferenceEncoderConfig(layers=(1, 1), channels=(8, 16, 32))
    with pytest.raises(ValueError, match="norm_groups"):
        ReferenceEncoderConfig(channels=(12, 16, 32, 64), norm_groups=8)
    with pytest.raises(ValueError, match="input_norm"):
        ReferenceEncoderConfig(input_norm="batch")
    with pytest.raises(KeyError, match="unknown reference-encoder config"):
        get_config("resnet99")
    with pytest.raises(ValueError, match=r"\[B, T, 80\]"):
        MODEL.apply({"params": {}}, _mel(37)[..., :40])
    with pytest.raises(ValueError, match="mask shape"):
        MODEL.apply({"params": {}}, _mel(37), jnp.ones((2, 36), bool))


# ------------------------------------------------------------------------------------------ front end
def test_reference_log_mel_shape_and_tone_bin():
    n = 8000
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(n) / SR).astype(np.float32)[None]
    mel = reference_log_mel(jnp.asarray(np.concatenate([tone, 0.5 * tone])), SR)
    assert mel.shape == (2, n // 160 + 1, 80) and mel.dtype == jnp.float32
    centers = np.asarray(_mel_centers())
    peak = int(np.argmax(np.asarray(mel[0, 10:-10]).mean(0)))
    assert abs(centers[peak] - 1000.0) < 60.0, (peak, centers[peak])
    # same machinery as tta_jax.audio.mel (pre-emphasis off -> identical)
    plain = reference_log_mel(jnp.asarray(tone), SR, preemph=None)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(log_mel_spectrogram(jnp.asarray(tone),
                                                                                     REFERENCE_MEL)))
    with pytest.raises(ValueError, match="resample"):
        reference_log_mel(jnp.asarray(tone), 22050)


def _mel_centers():
    from tta_jax.audio.mel import mel_basis
    fb = mel_basis(REFERENCE_MEL)
    freqs = np.linspace(0, SR / 2, fb.shape[1])
    return (fb * freqs).sum(1) / fb.sum(1)


def test_reference_frame_mask():
    m = reference_frame_mask(jnp.array([8000, 3200]), 51)
    assert m.shape == (2, 51)
    assert int(m[0].sum()) == 51 and int(m[1].sum()) == 3200 // 160 + 1


# ------------------------------------------------------------------------------------------ learning
def _family_audio(rng, family: int, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    if family == 0:                                    # tone
        return 0.5 * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(300, 3000) * t + rng.uniform(0, 6))
    if family == 1:                                    # white noise
        return rng.uniform(0.05, 0.3) * rng.normal(size=n)
    x = np.zeros(n)                                    # click train
    period = int(SR / rng.uniform(15, 40))             # >= 3 clicks in the shortest (0.25 s) clip
    x[rng.integers(0, period)::period] = rng.uniform(0.5, 1.0)
    return x


_LOG_MEL = jax.jit(reference_log_mel, static_argnums=1)


def _dataset(seed: int, per_class: int, n: int = 8000):
    """Tone / white-noise / click-train clips of random length in [n/2, n] samples, zero-padded to n:
    log-mel [3 per_class, n // 160 + 1, 80], frame mask, labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    lengths = rng.integers(n // 2, n + 1, size=labels.size)
    audio = np.zeros((labels.size, n), np.float32)
    for i, (y, ln) in enumerate(zip(labels, lengths)):
        audio[i, :ln] = _family_audio(rng, int(y), int(ln))
    mel = _LOG_MEL(jnp.asarray(audio), SR)
    mask = reference_frame_mask(jnp.asarray(lengths), mel.shape[1])
    return mel, mask, jnp.asarray(labels)


def _toy_train(seed: int, per_class: int, steps: int) -> dict:
    """Tiny encoder + linear head trained with Adam on ``3 per_class`` masked clips; returns first-step grads,
    first/last loss and held-out accuracy on 30 fresh clips."""
    start = time.time()
    mel, mask, labels = _dataset(0, per_class=per_class)
    tmel, tmask, tlabels = _dataset(1, per_class=10)
    head = nn.Dense(3)
    params = {"enc": INIT(KEY(seed), _mel(37)),
              "head": head.init(jax.random.PRNGKey(seed + 1), jnp.zeros((1, TINY.out_dim)))}

    def logits_fn(p, m, k):
        return head.apply(p["head"], 10.0 * MODEL.apply(p["enc"], m, k))   # fixed scale on the unit-norm embedding

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, mel, mask), labels).mean()

    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss, g

    state = opt.init(params)
    params, state, first_loss, first_grads = step(params, state)
    for _ in range(steps - 1):
        params, state, loss, _ = step(params, state)
    pred = jnp.argmax(jax.jit(logits_fn)(params, tmel, tmask), -1)
    acc = float(jnp.mean(pred == tlabels))
    out = {"grads": first_grads, "first": float(first_loss), "last": float(loss), "acc": acc, "pred": pred,
           "seconds": time.time() - start}
    print(f"\ntoy learning ({steps} Adam steps, {3 * per_class} clips): loss {out['first']:.3f} -> "
          f"{out['last']:.4f}, held-out acc {acc:.3f}, {out['seconds']:.1f} s")
    return out


@pytest.fixture(scope="module")
def toy_run():
    return _toy_train(seed=0, per_class=16, steps=60)


def test_gradients_finite_and_nonzero_for_every_leaf(toy_run):
    """First training step (masked, variable-length batch): every encoder and head leaf has a finite, non-zero
    gradient."""
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(toy_run["grads"]))[0]
    assert len(flat) > 40
    for path, g in flat:
        g = np.asarray(g)
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), name
        assert np.max(np.abs(g)) > 0.0, name


def test_tiny_encoder_learns_three_event_families(toy_run):
    assert toy_run["last"] < 0.05 * toy_run["first"]
    assert toy_run["acc"] == 1.0
