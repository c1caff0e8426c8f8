"""Sampler parity against diffusers 0.42 schedulers, step by step (max relative error <= 1e-5).

A toy, time-dependent, non-linear "model" exists in both torch and JAX; both loops start from the same
x_T and share the per-step noise; every intermediate state is compared, and the timestep lists must be
equal.
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tta_jax import diffusion as D
from tta_jax.diffusion import samplers as S

from conftest import max_rel_err

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.parity
TOL = 1e-5
SHAPE = (2, 6, 5)


def jax_model(x, t):
    t = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1)) / 1000.0
    return 0.3 * x + 0.5 * jnp.sin(x) * t + 0.1 * t


def torch_model(x, t):
    t = float(t) / 1000.0
    return 0.3 * x + 0.5 * torch.sin(x) * t + 0.1 * t


def x_T(seed=0):
    return np.random.RandomState(seed).randn(*SHAPE).astype(np.float32)


def run_reference(sched, n_steps, x, noises=None, step_kwargs=None, noise_kw=None):
    sched.set_timesteps(n_steps)
    xt = torch.from_numpy(x.copy())
    traj = []
    for i, t in enumerate(sched.timesteps):
        out = torch_model(xt, t)
        kw = dict(step_kwargs or {})
        if noise_kw and noises is not None:
            kw[noise_kw] = torch.from_numpy(noises[i])
        xt = sched.step(out, t, xt, **kw).prev_sample
        traj.append(xt.numpy().copy())
    return sched.timesteps.numpy(), np.stack(traj)


def assert_traj_close(ours, ref):
    assert ours.shape == ref.shape
    for i in range(ref.shape[0]):
        err = max_rel_err(ours[i], ref[i])
        assert err <= TOL, f"step {i}: max rel err {err:.2e} > {TOL}"


SL = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_ddpm(pred, monkeypatch):
    steps = 20
    noises = np.random.RandomState(1).randn(steps, *SHAPE).astype(np.float32)
    it = iter(noises)
    import diffusers.schedulers.scheduling_ddpm as mod

    monkeypatch.setattr(mod, "randn_tensor", lambda shape, **kw: torch.from_numpy(next(it)))
    ref_sched = diffusers.DDPMScheduler(**SL, prediction_type=pred, clip_sample=False)
    ts_ref, ref = run_reference(ref_sched, steps, x_T())
    sched = D.make_schedule("scaled_linear", prediction_type=pred)
    cfg = D.SamplerConfig("ddpm", steps, spacing="leading")
    ts, *_ = S.ddpm_tables(sched, cfg)
    np.testing.assert_array_equal(ts, ts_ref)
    _, traj = D.sample(jax_model, jnp.asarray(x_T()), sched, cfg, noises=jnp.asarray(noises),
                       return_trajectory=True)
    assert_traj_close(np.asarray(traj), ref)


@pytest.mark.parametrize("eta,steps", [(0.0, 25), (1.0, 100), (0.5, 25)])
def test_ddim_zero_snr_v_trailing(eta, steps):
    noises = np.random.RandomState(2).randn(steps, *SHAPE).astype(np.float32)
    ref_sched = diffusers.DDIMScheduler(**SL, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                        timestep_spacing="trailing", clip_sample=False)
    ts_ref, ref = run_reference(ref_sched, steps, x_T(), noises, step_kwargs={"eta": eta},
                                noise_kw="variance_noise" if eta > 0 else None)
    sched = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")
    cfg = D.SamplerConfig("ddim", steps, spacing="trailing", eta=eta)
    ts, *_ = S.ddim_tables(sched, cfg)
    np.testing.assert_array_equal(ts, ts_ref)
    assert ts[0] == 999
    _, traj = D.sample(jax_model, jnp.asarray(x_T()), sched, cfg, noises=jnp.asarray(noises),
                       return_trajectory=True)
    assert_traj_close(np.asarray(traj), ref)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_pndm_plms(pred):
    steps = 15
    ref_sched = diffusers.PNDMScheduler(**SL, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                                        prediction_type=pred)
    ts_ref, ref = run_reference(ref_sched, steps, x_T(3))
    sched = D.make_schedule("scaled_linear", prediction_type=pred)
    cfg = D.SamplerConfig("pndm", steps, spacing="leading", steps_offset=1, set_alpha_to_one=False)
    np.testing.assert_array_equal(S.pndm_tables(sched, cfg)["ts"], ts_ref)
    _, traj = D.sample(jax_model, jnp.asarray(x_T(3)), sched, cfg, return_trajectory=True)
    assert traj.shape[0] == steps + 1 == D.model_calls(cfg)
    assert_traj_close(np.asarray(traj), ref)


@pytest.mark.parametrize("pred,spacing", [("epsilon", "linspace"), ("v_prediction", "linspace"),
                                          ("epsilon", "leading"), ("v_prediction", "trailing")])
def test_dpmpp_2m(pred, spacing):
    steps = 12
    ref_sched = diffusers.DPMSolverMultistepScheduler(**SL, prediction_type=pred, timestep_spacing=spacing)
    ts_ref, ref = run_reference(ref_sched, steps, x_T(4))
    sched = D.make_schedule("scaled_linear", prediction_type=pred)
    cfg = D.SamplerConfig("dpmpp_2m", steps, spacing=spacing)
    np.testing.assert_array_equal(S.dpmpp_tables(sched, cfg)["ts"], ts_ref)
    _, traj = D.sample(jax_model, jnp.asarray(x_T(4)), sched, cfg, return_trajectory=True)
    assert_traj_close(np.asarray(traj), ref)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler(shift):
    steps = 10
    ref_sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ts_ref, ref = run_reference(ref_sched, steps, x_T(5))
    sched = D.make_schedule(prediction_type="flow")
    cfg = D.SamplerConfig("euler", steps, flow_shift=shift)
    sig = D.flow_sigmas(steps, shift=shift)
    np.testing.assert_allclose(sig[:-1] * 1000, ts_ref, rtol=1e-6)
    np.testing.assert_allclose(sig, ref_sched.sigmas.numpy(), rtol=1e-6)
    _, traj = D.sample(jax_model, jnp.asarray(x_T(5)), sched, cfg, return_trajectory=True)
    assert_traj_close(np.asarray(traj), ref)


def test_rescale_noise_cfg_matches_diffusers():
    from diffusers.guiders.guider_utils import rescale_noise_cfg as ref_fn

    rs = np.random.RandomState(6)
    cfg_out = rs.randn(3, 4, 8, 8).astype(np.float32) * 3
    cond = rs.randn(3, 4, 8, 8).astype(np.float32)
    for phi in (0.0, 0.5, 0.75, 1.0):
        ref = ref_fn(torch.from_numpy(cfg_out), torch.from_numpy(cond), phi).numpy()
        ours = np.asarray(D.rescale_noise_cfg(jnp.asarray(cfg_out), jnp.asarray(cond), phi))
        assert max_rel_err(ours, ref) <= TOL


def test_schedules_match_diffusers_betas():
    for kind, kw in [("linear", dict(beta_start=0.0001, beta_end=0.02)),
                     ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
                     ("squaredcos_cap_v2", {})]:
        for zsnr in (False, True):
            ref = diffusers.DDIMScheduler(beta_schedule=kind, rescale_betas_zero_snr=zsnr, **kw)
            ours = D.make_schedule(kind, zero_terminal_snr=zsnr, **kw)
            np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(),
                                       rtol=1e-5, atol=1e-7)


def test_ddim_eta1_zero_snr_stays_finite_where_diffusers_gives_nan():
    """diffusers computes sqrt(1 - a_prev - std^2) with a slightly negative argument at 25 steps; we clamp."""
    sched = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")
    cfg = D.SamplerConfig("ddim", 25, spacing="trailing", eta=1.0)
    out = D.sample(jax_model, jnp.asarray(x_T()), sched, cfg, jax.random.PRNGKey(0))
    assert np.isfinite(np.asarray(out)).all()
