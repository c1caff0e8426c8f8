"""Properties of the diffusion core (no reference library needed)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tta_jax import diffusion as D
from tta_jax.diffusion import objectives as O


def test_zero_terminal_snr_last_alpha_bar_exactly_zero_and_first_kept():
    base = D.make_schedule("scaled_linear")
    z = D.make_schedule("scaled_linear", zero_terminal_snr=True)
    assert float(z.alphas_cumprod[-1]) == 0.0
    assert float(base.alphas_cumprod[-1]) > 0.0
    np.testing.assert_allclose(float(z.alphas_cumprod[0]), float(base.alphas_cumprod[0]), rtol=1e-6)
    assert np.all(np.diff(np.asarray(z.alphas_cumprod)) <= 0)


def test_beta_schedules_shapes_and_ranges():
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        b = D.make_betas(kind, 1000, 0.00085, 0.012)
        assert b.shape == (1000,) and b.dtype == np.float32
        assert (b > 0).all() and (b < 1).all()
    with pytest.raises(ValueError, match="unknown beta schedule"):
        D.make_betas("cosine", 10)


def test_spacings_known_values():
    np.testing.assert_array_equal(D.spaced_timesteps(4, "leading", num_train_timesteps=1000, steps_offset=1),
                                  [751, 501, 251, 1])
    np.testing.assert_array_equal(D.spaced_timesteps(4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(D.spaced_timesteps(4, "linspace"), [999, 666, 333, 0])
    with pytest.raises(ValueError, match="spacing"):
        D.spaced_timesteps(4, "uniform")


def test_flow_euler_exact_on_linear_path():
    """With the true (constant) velocity of a straight path, Euler lands exactly on x0."""
    rs = np.random.RandomState(0)
    x0 = jnp.asarray(rs.randn(3, 7, 4).astype(np.float32))
    noise = jnp.asarray(rs.randn(3, 7, 4).astype(np.float32))
    sched = D.make_schedule(prediction_type="flow")
    v = D.flow_velocity(x0, noise)
    for shift in (1.0, 3.0):
        out = D.sample(lambda x, t: v, noise, sched, D.SamplerConfig("euler", 7, flow_shift=shift))
        np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)


def test_heun_second_order_on_curved_flow():
    """For dx/ds = x (solution x(0) = x(1)/e), Heun's error falls ~4x per step doubling, Euler's ~2x."""
    sched = D.make_schedule(prediction_type="flow")
    x1 = jnp.ones((1, 3))
    exact = np.exp(-1.0)

    def err(name, n):
        out = D.sample(lambda x, t: x, x1, sched, D.SamplerConfig(name, n))
        return abs(float(out[0, 0]) - exact)

    e_h = [err("heun", n) for n in (8, 16, 32)]
    e_e = [err("euler", n) for n in (8, 16, 32)]
    assert e_h[0] / e_h[1] > 3.0 and e_h[1] / e_h[2] > 3.0  # second order (last step is Euler)
    assert 1.6 < e_e[0] / e_e[1] < 2.5
    assert e_h[2] < e_e[2] / 10


def test_prediction_conversions_invert():
    sched = D.make_schedule("scaled_linear")
    rs = np.random.RandomState(1)
    x0 = jnp.asarray(rs.randn(4, 5).astype(np.float32))
    eps = jnp.asarray(rs.randn(4, 5).astype(np.float32))
    t = jnp.array([0, 10, 500, 999])
    xt = D.add_noise(sched, x0, eps, t)
    for pt, out in (("epsilon", eps), ("v_prediction", D.velocity(sched, x0, eps, t)), ("sample", x0)):
        s = sched.replace(prediction_type=pt)
        x0_hat, eps_hat = D.predict_x0_eps(s, xt, out, t)
        np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=2e-3)
        np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(eps), atol=2e-3)
        np.testing.assert_allclose(np.asarray(D.target(s, x0, eps, t)), np.asarray(out))


def test_min_snr_weights_standard_and_tango():
    s_eps = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="epsilon")
    s_v = s_eps.replace(prediction_type="v_prediction")
    t = jnp.array([0, 400, 999])
    snr = np.asarray(s_eps.snr[t])
    g = 5.0
    w_eps = np.asarray(D.min_snr_weight(s_eps, t, g))
    w_v = np.asarray(D.min_snr_weight(s_v, t, g))
    w_tango = np.asarray(D.min_snr_weight(s_v, t, g, variant="tango"))
    np.testing.assert_allclose(w_eps[:2], np.minimum(snr[:2], g) / snr[:2], rtol=1e-6)
    np.testing.assert_allclose(w_v, np.minimum(snr, g) / (snr + 1), rtol=1e-6)
    np.testing.assert_allclose(w_tango, w_eps, rtol=1e-6)  # tango divides by snr even for v
    assert w_eps[2] == 1.0 and np.isfinite(w_tango).all()  # zero-SNR step: limit 1, never NaN
    assert w_v[2] == 0.0


def test_masked_mean_per_sample_over_frames():
    err = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.array([[1, 0, 0, 1], [0, 0, 0, 0]], jnp.float32)
    out = np.asarray(D.masked_mean(err, mask))
    expected0 = np.concatenate([np.arange(0, 3), np.arange(9, 12)]).mean()
    np.testing.assert_allclose(out, [expected0, 0.0])
    np.testing.assert_allclose(np.asarray(D.masked_mean(err)), np.asarray(err).reshape(2, -1).mean(1))


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction", "sample", "flow"])
def test_diffusion_loss_zero_for_oracle_model(pt):
    """An oracle that knows x0 predicts the exact target: the loss must vanish for every objective."""
    sched = D.make_schedule("scaled_linear", prediction_type=pt)
    x0 = jnp.asarray(np.random.RandomState(2).randn(4, 6, 3).astype(np.float32))

    def oracle(params, x_t, t, cond, rng):
        if pt == "flow":
            s = (t / 1000.0)[:, None, None]
            return (x_t - x0) / s
        a = jnp.sqrt(sched.alphas_cumprod[t])[:, None, None]
        b = jnp.sqrt(1 - sched.alphas_cumprod[t])[:, None, None]
        eps = (x_t - a * x0) / b
        return {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[pt]

    loss, metrics = D.diffusion_loss(oracle, None, {"latent": x0, "cond": {}}, jax.random.PRNGKey(0), sched)
    assert float(loss) < 1e-6
    wrong = lambda *a: jnp.zeros_like(x0)  # noqa: E731
    loss_bad, _ = D.diffusion_loss(wrong, None, {"latent": x0}, jax.random.PRNGKey(0), sched)
    assert float(loss_bad) > 0.1


def test_wiener_coefficients_are_the_least_squares_estimate():
    """c_skip is the regression slope of x0 on x_t, c_out^2 its residual variance, c_in x_t has unit variance
    (Monte Carlo on Gaussian data with per-channel variances spanning 4 decades); zero-SNR limits exact."""
    sched = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="sample")
    var = np.array([300.0, 4.0, 0.27, 0.03], np.float32)
    rs = np.random.RandomState(0)
    n = 200_000
    x0 = rs.randn(n, 4).astype(np.float32) * np.sqrt(var)
    eps = rs.randn(n, 4).astype(np.float32)
    for t in (10, 200, 600):
        a = float(sched.alphas_cumprod[t])
        x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
        c_in, c_skip, c_out = (np.asarray(c) for c in D.wiener_coefficients(jnp.float32(a), jnp.asarray(var)))
        slope = (x0 * x_t).mean(0) / (x_t * x_t).mean(0)
        se = np.sqrt(c_out ** 2 / (n * (x_t * x_t).mean(0)))   # the slope estimate's standard error
        np.testing.assert_array_less(np.abs(c_skip - slope), 5 * se)
        np.testing.assert_allclose(c_out ** 2, ((x0 - c_skip * x_t) ** 2).mean(0), rtol=0.02)
        np.testing.assert_allclose((c_in * x_t).std(0), 1.0, rtol=0.01)
    c_in, c_skip, c_out = D.wiener_coefficients(jnp.float32(0.0), jnp.asarray(var))
    np.testing.assert_array_equal(np.asarray(c_in), 1.0)
    np.testing.assert_array_equal(np.asarray(c_skip), 0.0)
    np.testing.assert_allclose(np.asarray(c_out), np.sqrt(var), rtol=1e-6)


def test_precondition_x0_skip_and_oracle():
    """A zero network gives the Wiener estimate; the network that outputs (x0 - c_skip x_t) / c_out of its
    (scaled) input gives x0 exactly, so the diffusion loss of that oracle vanishes."""
    sched = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="sample")
    var = jnp.asarray([50.0, 1.0, 0.1])
    rs = np.random.RandomState(3)
    x0 = jnp.asarray(rs.randn(4, 6, 3) * np.sqrt([50.0, 1.0, 0.1]), jnp.float32)
    t = jnp.array([0, 100, 500, 999])
    x_t = D.add_noise(sched, x0, jnp.asarray(rs.randn(4, 6, 3), jnp.float32), t)
    a = sched.alphas_cumprod[t][:, None, None]
    c_in, c_skip, c_out = D.wiener_coefficients(a, var)
    wiener = D.precondition_x0(sched, var, x_t, t, jnp.zeros_like)
    np.testing.assert_allclose(np.asarray(wiener), np.asarray(c_skip * x_t), rtol=1e-6)

    def oracle_net(x_in):  # recovers x_t from its scaled input, then the normalised residual
        np.testing.assert_allclose(np.asarray(x_in), np.asarray(c_in * x_t), rtol=1e-6)
        return (x0 - c_skip * (x_in / c_in)) / c_out

    np.testing.assert_allclose(np.asarray(D.precondition_x0(sched, var, x_t, t, oracle_net)), np.asarray(x0),
                               rtol=1e-4, atol=1e-4)


def test_diffusion_loss_respects_loss_mask():
    sched = D.make_schedule("scaled_linear", prediction_type="v_prediction")
    x0 = jnp.zeros((2, 8, 3))
    mask = jnp.zeros((2, 8)).at[:, :2].set(1.0)

    def model(params, x_t, t, cond, rng):  # error only on unmasked frames 2..7
        return D.velocity(sched, x0, (x_t - jnp.sqrt(sched.alphas_cumprod[t])[:, None, None] * x0)
                          / jnp.sqrt(1 - sched.alphas_cumprod[t])[:, None, None], t).at[:, 2:].add(5.0)

    loss, _ = D.diffusion_loss(model, None, {"latent": x0, "loss_mask": mask}, jax.random.PRNGKey(1), sched)
    assert float(loss) < 1e-6
    loss_all, _ = D.diffusion_loss(model, None, {"latent": x0}, jax.random.PRNGKey(1), sched)
    assert float(loss_all) > 10


def test_flow_time_samplers():
    k = jax.random.PRNGKey(0)
    u = np.asarray(D.sample_flow_time(k, (4000,)))
    ln = np.asarray(D.sample_flow_time(k, (4000,), sampler="logit_normal"))
    sh = np.asarray(D.sample_flow_time(k, (4000,), shift=3.0))
    for a in (u, ln, sh):
        assert (a > 0).all() and (a <= 1).all()
    assert abs(u.mean() - 0.5) < 0.03 and abs(ln.mean() - 0.5) < 0.03
    assert sh.mean() > 0.6  # shift > 1 moves mass to high noise
    assert ln.std() < u.std()  # logit-normal concentrates mid-path


def _toy_model(x, t, cond):
    return x * cond["text"].mean(axis=(1, 2)).reshape(-1, *([1] * (x.ndim - 1))) + t[:, None, None] * 1e-3


def test_cfg_single_batched_call_equals_two_calls():
    rs = np.random.RandomState(3)
    x = jnp.asarray(rs.randn(2, 5, 4).astype(np.float32))
    t = jnp.array([10, 20])
    cond = {"text": jnp.asarray(rs.randn(2, 3, 8).astype(np.float32))}
    uncond = {"text": jnp.zeros((2, 3, 8))}
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return _toy_model(x, t, c)

    den = D.cfg_denoiser(model, cond, uncond, scale=4.0)
    out = den(x, t)
    assert calls == [4]  # one batched call with cond and uncond concatenated
    c, u = _toy_model(x, t, cond), _toy_model(x, t, uncond)
    np.testing.assert_allclose(np.asarray(out), np.asarray(u + 4.0 * (c - u)), rtol=1e-6)
    # the named forms
    np.testing.assert_allclose(np.asarray(D.combine(c, u, 4.0, mode="dcldm")),
                               np.asarray(4.0 * c + (1 - 4.0) * u), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(D.combine(c, u, 4.0, mode="auffusion")),
                               np.asarray(u + 5.0 * (c - u)), rtol=1e-5)
    # negative prompt: just another uncond
    neg = {"text": jnp.ones((2, 3, 8))}
    out_neg = D.cfg_denoiser(_toy_model, cond, neg, scale=4.0)(x, t)
    assert not np.allclose(np.asarray(out_neg), np.asarray(out))


def test_cfg_rescale_and_interval():
    rs = np.random.RandomState(4)
    x = jnp.asarray(rs.randn(2, 5, 4).astype(np.float32))
    t = jnp.array([100, 900])
    cond = {"text": jnp.asarray(rs.randn(2, 3, 8).astype(np.float32))}
    uncond = {"text": jnp.asarray(rs.randn(2, 3, 8).astype(np.float32))}
    c = _toy_model(x, t, cond)
    full = D.cfg_denoiser(_toy_model, cond, uncond, scale=5.0, rescale=1.0)(x, t)
    # rescale=1 gives exactly the conditional std per sample
    np.testing.assert_allclose(np.asarray(jnp.std(full, axis=(1, 2), ddof=1)),
                               np.asarray(jnp.std(c, axis=(1, 2), ddof=1)), rtol=1e-5)
    inter = D.cfg_denoiser(_toy_model, cond, uncond, scale=5.0, interval=(500, 1000))(x, t)
    np.testing.assert_allclose(np.asarray(inter[0]), np.asarray(c[0]), rtol=1e-6)  # t=100: outside
    assert not np.allclose(np.asarray(inter[1]), np.asarray(c[1]))


def test_cfg_shape_mismatch_names_key():
    cond = {"text": jnp.zeros((1, 4, 8))}
    uncond = {"text": jnp.zeros((1, 3, 8))}
    with pytest.raises(ValueError, match=r"\['text'\].*pad"):
        D.concat_conds(cond, uncond)
    with pytest.raises(ValueError, match="guidance mode"):
        D.cfg_denoiser(_toy_model, cond, cond, scale=2.0, mode="bogus")


def test_samplers_jit_single_loop_and_post_step_hook():
    """The whole sampler jits into one computation; the post-step hook sees every step."""
    sched = D.make_schedule("scaled_linear", prediction_type="epsilon")
    x = jnp.ones((1, 4, 2))
    known = jnp.zeros((1, 4, 2))
    region = jnp.zeros((1, 4, 1)).at[:, :2].set(1.0)

    def paste(x, i, level):  # keep frames 0..1 pinned to the known value
        return region * known + (1 - region) * x

    for name in ("ddpm", "ddim", "pndm", "dpmpp_2m"):
        cfg = D.SamplerConfig(name, 8, eta=0.3)
        f = jax.jit(lambda x, k: D.sample(lambda x, t: 0.1 * x, x, sched, cfg, k, post_step=paste))
        out = np.asarray(f(x, jax.random.PRNGKey(0)))
        assert np.all(out[:, :2] == 0.0) and np.isfinite(out).all()
        jaxpr = jax.make_jaxpr(lambda x, k: D.sample(lambda x, t: 0.1 * x, x, sched, cfg, k))(
            x, jax.random.PRNGKey(0))
        assert "scan" in str(jaxpr)


def test_sampler_config_validation():
    with pytest.raises(ValueError, match="unknown sampler"):
        D.SamplerConfig("lms")
    with pytest.raises(ValueError, match="eta"):
        D.SamplerConfig("ddim", eta=2.0)
    sched = D.make_schedule(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="flow"):
        D.sample(lambda x, t: x, jnp.ones((1, 2)), sched, D.SamplerConfig("euler", 4))
    with pytest.raises(ValueError, match="stochastic"):
        D.sample(lambda x, t: x, jnp.ones((1, 2)), sched, D.SamplerConfig("ddpm", 4))


def test_diffusion_loss_draws_timesteps_from_t_min():
    """``t_min`` (``config.diffusion.train_t_min``): every training timestep is in [t_min, N)."""
    sched = D.make_schedule("scaled_linear", prediction_type="epsilon")
    seen = []

    def model(params, x_t, t, cond, rng):
        seen.append(t)
        return jnp.zeros_like(x_t)

    x0 = jnp.ones((256, 2))
    D.diffusion_loss(model, None, {"latent": x0}, jax.random.PRNGKey(3), sched, t_min=700)
    D.diffusion_loss(model, None, {"latent": x0}, jax.random.PRNGKey(3), sched)
    high, full = np.asarray(seen[0]), np.asarray(seen[1])
    assert high.min() >= 700 and high.max() <= 999 and full.min() < 100
    with pytest.raises(ValueError, match="t_min=1000"):
        D.diffusion_loss(model, None, {"latent": x0}, jax.random.PRNGKey(3), sched, t_min=1000)
