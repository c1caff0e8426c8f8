"""Samplers: each one a single ``lax.scan`` over a ``denoise_fn`` (jit the caller; the loop is inside).

``denoise_fn(x [B, ...], t [B]) -> model output [B, ...]`` in the schedule's parameterisation (epsilon,
v_prediction, sample or flow velocity). ``t`` is the model's timestep: int32 DDPM timesteps for the
DDPM family, ``sigma * N`` (float32) for flow samplers. Guidance is not a sampler concern: wrap the
model with :func:`tta_jax.diffusion.guidance.cfg_denoiser` first.

Step tables (timesteps, alphas, solver coefficients) are computed on the host in numpy from the
concrete schedule; the schedule is static configuration, so close over it when jitting::

    fn = jax.jit(lambda x, key, cond: sample(make_denoiser(cond), x, schedule, cfg, key))

Each sampler reproduces the corresponding diffusers scheduler step for step (see tests/test_samplers_parity.py):
DDPM (``DDPMScheduler``), DDIM (``DDIMScheduler``), PNDM/PLMS (``PNDMScheduler`` with
``skip_prk_steps=True``, the Stable Diffusion setting), DPM-Solver++(2M) (``DPMSolverMultistepScheduler``,
``final_sigmas_type="zero"``), Euler (``FlowMatchEulerDiscreteScheduler``) and Heun for flow ODEs.

Hooks shared by all samplers:
- ``noises`` [S, *x.shape]: per-step noise for stochastic samplers (default: drawn from ``key``);
- ``post_step(x, i, level) -> x``: applied after step i; ``level`` is the noise level x now has
  (the next DDPM timestep, -1 when clean; or the next sigma for flows). Inpainting/repaint uses it.
- ``return_trajectory``: also return the stacked states after every step [S, *x.shape].
- ``start_step`` k (SDEdit / img2img): skip the first k steps of the sampler's own timestep grid and start
  from ``x_T`` already at the noise level of step k (:func:`step_levels` ``[0]``; build it with
  :func:`noise_to_level`); multistep solvers restart at first order there, as diffusers does. The
  trajectory (and ``noises``) then has S - k rows (PNDM: S + 1 - k; its first row restarts PLMS).

Editing helpers: :func:`step_levels` (the noise level of the model input of every scan row, in the
``post_step`` convention), :func:`noise_to_level` (q(x_level | x0) for either convention),
:func:`model_time` (what the model is fed for a level) and :func:`start_step_for_strength`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.diffusion.objectives import x0_eps_from_output
from tta_jax.diffusion.schedules import DiffusionSchedule, flow_sigmas, spaced_timesteps

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
PostStep = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

SAMPLERS = ("ddpm", "ddim", "pndm", "dpmpp_2m", "euler", "heun")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How to sample.

    name: one of SAMPLERS. num_steps: inference steps S. spacing: DDPM-family timestep spacing.
    eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like). steps_offset: diffusers'
    steps_offset. set_alpha_to_one: value of alpha_bar "before" t=0 (DDIM default True, PNDM False).
    clip_sample: clip predicted x0 to [-clip_range, clip_range] (DDPM/DDIM). flow_shift: timestep shift for
    flow samplers.
    """

    name: str = "ddim"
    num_steps: int = 50
    spacing: str = "leading"
    eta: float = 0.0
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_range: float = 1.0
    flow_shift: float = 1.0

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; expected one of {SAMPLERS}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


def _np_ac(schedule: DiffusionSchedule) -> np.ndarray:
    try:
        return np.asarray(schedule.alphas_cumprod, np.float32)
    except jax.errors.TracerArrayConversionError as e:
        raise TypeError("samplers need a concrete schedule: close over it instead of passing it "
                        "through jit as an argument") from e


def _bcast(v, x):
    return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def _full_t(t, x, dtype):
    return jnp.full((x.shape[0],), t, dtype)


def _draw_noises(key, noises, num, x):
    if noises is not None:
        if noises.shape != (num,) + x.shape:
            raise ValueError(f"noises must have shape {(num,) + x.shape}, got {noises.shape}")
        return noises
    if key is None:
        raise ValueError("this sampler is stochastic: pass a PRNG key (or `noises`)")
    return jax.random.normal(key, (num,) + x.shape, x.dtype)


def _identity_post(x, i, level):
    return x


def _check_start(cfg: SamplerConfig, start_step: int) -> int:
    k = int(start_step)
    if not 0 <= k < cfg.num_steps:
        raise ValueError(f"start_step must be in [0, num_steps={cfg.num_steps}), got {start_step}")
    return k


def _finish(x, traj, return_trajectory):
    return (x, traj) if return_trajectory else x


# --------------------------------------------------------------------------------------------------
# DDPM ancestral
# --------------------------------------------------------------------------------------------------
def ddpm_tables(schedule: DiffusionSchedule, cfg: SamplerConfig, start_step: int = 0):
    ac = _np_ac(schedule)
    ts = spaced_timesteps(cfg.num_steps, cfg.spacing, num_train_timesteps=schedule.num_train_timesteps,
                          steps_offset=cfg.steps_offset)
    prev = np.concatenate([ts[1:], [-1]])
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], np.float32(1.0)).astype(np.float32)
    k = _check_start(cfg, start_step)
    return ts[k:], prev[k:], a_t[k:], a_prev[k:]


def ddpm_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                return_trajectory: bool = False, start_step: int = 0):
    """Ancestral DDPM sampling with the "fixed_small" variance (diffusers DDPMScheduler)."""
    ts, prev, a_t, a_prev = ddpm_tables(schedule, cfg, start_step)
    noises = _draw_noises(key, noises, len(ts), x_T)
    post = post_step or _identity_post
    pt = schedule.prediction_type

    def step(x, xs):
        i, t, tp, at, ap, z = xs
        out = denoise_fn(x, _full_t(t, x, jnp.int32))
        x0, _ = x0_eps_from_output(pt, x, out, at)
        if cfg.clip_sample:
            x0 = jnp.clip(x0, -cfg.clip_range, cfg.clip_range)
        bt, bp = 1.0 - at, 1.0 - ap
        cur_alpha = at / ap
        cur_beta = 1.0 - cur_alpha
        mean = (jnp.sqrt(ap) * cur_beta / bt) * x0 + (jnp.sqrt(cur_alpha) * bp / bt) * x
        var = jnp.maximum(bp / bt * cur_beta, 1e-20)
        x_new = mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * z
        x_new = post(x_new, i, tp)
        return x_new, x_new

    xs = (jnp.arange(len(ts)), jnp.asarray(ts, jnp.int32), jnp.asarray(prev, jnp.int32), jnp.asarray(a_t),
          jnp.asarray(a_prev), noises)
    x, traj = jax.lax.scan(step, x_T, xs)
    return _finish(x, traj, return_trajectory)


# --------------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------------
def ddim_tables(schedule: DiffusionSchedule, cfg: SamplerConfig, start_step: int = 0):
    ac = _np_ac(schedule)
    n = schedule.num_train_timesteps
    ts = spaced_timesteps(cfg.num_steps, cfg.spacing, num_train_timesteps=n, steps_offset=cfg.steps_offset)
    prev = ts - n // cfg.num_steps
    final = np.float32(1.0) if cfg.set_alpha_to_one else ac[0]
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    k = _check_start(cfg, start_step)
    return ts[k:], prev[k:], a_t[k:], a_prev[k:]


def ddim_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                return_trajectory: bool = False, start_step: int = 0):
    """DDIM (Song et al.) with stochasticity ``eta`` (diffusers DDIMScheduler; eta=1 is EzAudio's default)."""
    ts, prev, a_t, a_prev = ddim_tables(schedule, cfg, start_step)
    if cfg.eta > 0:
        noises = _draw_noises(key, noises, len(ts), x_T)
    else:
        noises = jnp.zeros((len(ts),) + (1,) * x_T.ndim, x_T.dtype)  # unused, keeps one scan body
    post = post_step or _identity_post
    pt = schedule.prediction_type
    eta = cfg.eta

    def step(x, xs):
        i, t, tp, at, ap, z = xs
        out = denoise_fn(x, _full_t(t, x, jnp.int32))
        x0, eps = x0_eps_from_output(pt, x, out, at)
        if cfg.clip_sample:
            x0 = jnp.clip(x0, -cfg.clip_range, cfg.clip_range)
            eps = (x - jnp.sqrt(at) * x0) / jnp.sqrt(1.0 - at)
        var = (1.0 - ap) / (1.0 - at) * (1.0 - at / ap)
        std = eta * jnp.sqrt(var)
        # Clamped: with zero-terminal SNR and eta=1 the first step has 1 - ap - std^2 = 0 up to rounding,
        # which gives NaN in diffusers for some step counts (e.g. 25, 50); it is exactly 0 in theory.
        x_new = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1.0 - ap - std**2, 0.0)) * eps
        if eta > 0:
            x_new = x_new + std * z
        x_new = post(x_new, i, tp)
        return x_new, x_new

    xs = (jnp.arange(len(ts)), jnp.asarray(ts, jnp.int32), jnp.asarray(prev, jnp.int32), jnp.asarray(a_t),
          jnp.asarray(a_prev), noises)
    x, traj = jax.lax.scan(step, x_T, xs)
    return _finish(x, traj, return_trajectory)


# --------------------------------------------------------------------------------------------------
# PNDM (PLMS, skip_prk_steps=True)
# --------------------------------------------------------------------------------------------------
_PLMS_WEIGHTS = {1: (1.0, 0.0, 0.0, 0.0), 2: (1.5, -0.5, 0.0, 0.0),
                 3: (23 / 12, -16 / 12, 5 / 12, 0.0), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def pndm_tables(schedule: DiffusionSchedule, cfg: SamplerConfig, start_step: int = 0):
    """Per model call: (t_model, t_from, t_to, weights[4], use_cur, store, set_cur); S + 1 calls (S + 1 - k
    from ``start_step`` k: PLMS restarts on the grid below the k largest timesteps)."""
    ac = _np_ac(schedule)
    n, s = schedule.num_train_timesteps, cfg.num_steps
    if cfg.spacing == "leading":
        base = (np.arange(0, s) * (n // s)).round() + cfg.steps_offset
    else:  # diffusers' PNDM builds ascending lists for the other spacings
        base = spaced_timesteps(s, cfg.spacing, num_train_timesteps=n, steps_offset=cfg.steps_offset)[::-1]
    base = base.astype(np.int64)[:s - _check_start(cfg, start_step)]
    ts = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
    r = n // s
    rows = []
    for i, t in enumerate(ts):
        if i == 0:
            rows.append((t, t, t - r, _PLMS_WEIGHTS[1], 0, 1, 1))
        elif i == 1:
            rows.append((t, t + r, t, (0.5, 0.5, 0.0, 0.0), 1, 0, 0))
        else:
            rows.append((t, t, t - r, _PLMS_WEIGHTS[min(i, 4)], 0, 1, 0))
    t_model, t_from, t_to, w, use_cur, store, set_cur = (np.asarray(c) for c in zip(*rows))
    final = np.float32(1.0) if cfg.set_alpha_to_one else ac[0]
    a_from = ac[t_from]
    a_to = np.where(t_to >= 0, ac[np.maximum(t_to, 0)], final).astype(np.float32)
    return dict(ts=ts, t_model=t_model, t_to=t_to, a_from=a_from, a_to=a_to, w=w.astype(np.float32),
                use_cur=use_cur.astype(bool), store=store.astype(bool), set_cur=set_cur.astype(bool))


def pndm_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                return_trajectory: bool = False, start_step: int = 0):
    """PLMS (pseudo linear multistep) as diffusers' PNDMScheduler with skip_prk_steps=True.

    Uses S + 1 model calls for S steps (the second call redoes the first step with an averaged
    derivative, as the reference does). Supports epsilon and v_prediction.
    """
    tb = pndm_tables(schedule, cfg, start_step)
    pt = schedule.prediction_type
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"PNDM supports epsilon and v_prediction, not {pt!r}")
    post = post_step or _identity_post

    def step(carry, xs):
        x, cur, e1, e2, e3 = carry
        i, t, t_to, a_from, a_to, w, use_cur, store, set_cur = xs
        mo = denoise_fn(x, _full_t(t, x, jnp.int32))
        combined = w[0] * mo + w[1] * e1 + w[2] * e2 + w[3] * e3
        sample_in = jnp.where(use_cur, cur, x)
        if pt == "v_prediction":
            combined = jnp.sqrt(a_from) * combined + jnp.sqrt(1.0 - a_from) * sample_in
        denom = a_from * jnp.sqrt(1.0 - a_to) + jnp.sqrt(a_from * (1.0 - a_from) * a_to)
        x_new = jnp.sqrt(a_to / a_from) * sample_in - (a_to - a_from) * combined / denom
        x_new = post(x_new, i, t_to)
        cur = jnp.where(set_cur, x, cur)
        e1, e2, e3 = (jnp.where(store, mo, e1), jnp.where(store, e1, e2), jnp.where(store, e2, e3))
        return (x_new, cur, e1, e2, e3), x_new

    z = jnp.zeros_like(x_T)
    xs = (jnp.arange(len(tb["ts"])), jnp.asarray(tb["t_model"], jnp.int32), jnp.asarray(tb["t_to"], jnp.int32),
          jnp.asarray(tb["a_from"]), jnp.asarray(tb["a_to"]), jnp.asarray(tb["w"]), jnp.asarray(tb["use_cur"]),
          jnp.asarray(tb["store"]), jnp.asarray(tb["set_cur"]))
    (x, *_), traj = jax.lax.scan(step, (x_T, z, z, z, z), xs)
    return _finish(x, traj, return_trajectory)


# --------------------------------------------------------------------------------------------------
# DPM-Solver++ (2M)
# --------------------------------------------------------------------------------------------------
def dpmpp_tables(schedule: DiffusionSchedule, cfg: SamplerConfig, start_step: int = 0):
    """Timesteps [S] and per-step coefficients for x_{i+1} = cx x + c0 D0 + c1 (D0 - D_prev). From
    ``start_step`` k: rows k.., the first of them first order (no previous D0)."""
    ac = _np_ac(schedule)
    n, s = schedule.num_train_timesteps, cfg.num_steps
    if cfg.spacing == "linspace":
        ts = np.linspace(0, n - 1, s + 1).round()[::-1][:-1]
    elif cfg.spacing == "leading":
        ratio = n // (s + 1)
        ts = (np.arange(0, s + 1) * ratio).round()[::-1][:-1] + cfg.steps_offset
    elif cfg.spacing == "trailing":
        ts = np.arange(n, 0, -n / s).round() - 1
    else:
        raise ValueError(f"unknown spacing {cfg.spacing!r}")
    ts = ts.astype(np.int64)
    all_sig = np.array(((1 - ac) / ac) ** 0.5)
    sig = np.interp(ts, np.arange(0, len(all_sig)), all_sig)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32).astype(np.float64)
    alpha = 1.0 / np.sqrt(sig**2 + 1.0)
    sigma = sig * alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(alpha) - np.log(sigma)
        cx, c0, c1 = np.zeros(s), np.zeros(s), np.zeros(s)
        for i in range(s):
            h = lam[i + 1] - lam[i]
            em1 = np.expm1(-h) if np.isfinite(h) else -1.0  # exp(-h) - 1
            cx[i] = sigma[i + 1] / sigma[i]
            c0[i] = -alpha[i + 1] * em1
            first_order = i == 0 or i == s - 1
            if not first_order:
                r0 = (lam[i] - lam[i - 1]) / h
                c1[i] = -0.5 * alpha[i + 1] * em1 / r0
    k = _check_start(cfg, start_step)
    c1[k] = 0.0  # a restart has no previous D0 (a no-op for k = 0)
    out = dict(ts=ts, alpha=alpha[:-1].astype(np.float32), sigma=sigma[:-1].astype(np.float32),
               cx=cx.astype(np.float32), c0=c0.astype(np.float32), c1=c1.astype(np.float32))
    return {name: v[k:] for name, v in out.items()}


def dpmpp_2m_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                    key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                    return_trajectory: bool = False, start_step: int = 0):
    """DPM-Solver++(2M), midpoint form, first order on the first and last step (diffusers defaults)."""
    tb = dpmpp_tables(schedule, cfg, start_step)
    pt = schedule.prediction_type
    post = post_step or _identity_post
    t_next = np.concatenate([tb["ts"][1:], [-1]])

    def step(carry, xs):
        x, d_prev = carry
        i, t, tn, al, sg, cx, c0, c1 = xs
        out = denoise_fn(x, _full_t(t, x, jnp.int32))
        if pt == "epsilon":
            d0 = (x - sg * out) / al
        elif pt == "v_prediction":
            d0 = al * x - sg * out
        elif pt == "sample":
            d0 = out
        else:
            raise ValueError(f"DPM-Solver++ does not support prediction_type {pt!r}")
        x_new = cx * x + c0 * d0 + c1 * (d0 - d_prev)
        x_new = post(x_new, i, tn)
        return (x_new, d0), x_new

    xs = (jnp.arange(len(tb["ts"])), jnp.asarray(tb["ts"], jnp.int32), jnp.asarray(t_next, jnp.int32),
          *(jnp.asarray(tb[k]) for k in ("alpha", "sigma", "cx", "c0", "c1")))
    (x, _), traj = jax.lax.scan(step, (x_T, jnp.zeros_like(x_T)), xs)
    return _finish(x, traj, return_trajectory)


# --------------------------------------------------------------------------------------------------
# Flow ODE: Euler and Heun
# --------------------------------------------------------------------------------------------------
def _check_flow(schedule: DiffusionSchedule):
    if schedule.prediction_type != "flow":
        raise ValueError(f"flow samplers need prediction_type 'flow', got {schedule.prediction_type!r}")


def euler_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                 key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                 return_trajectory: bool = False, start_step: int = 0):
    """Euler integration of the flow ODE from sigma=1 to 0 (FlowMatchEulerDiscreteScheduler)."""
    _check_flow(schedule)
    n = schedule.num_train_timesteps
    sig = flow_sigmas(cfg.num_steps, shift=cfg.flow_shift, num_train_timesteps=n)[_check_start(cfg, start_step):]
    post = post_step or _identity_post

    def step(x, xs):
        i, s, s_next = xs
        v = denoise_fn(x, _full_t(s * n, x, jnp.float32))
        x_new = post(x + (s_next - s) * v, i, s_next)
        return x_new, x_new

    xs = (jnp.arange(len(sig) - 1), jnp.asarray(sig[:-1]), jnp.asarray(sig[1:]))
    x, traj = jax.lax.scan(step, x_T, xs)
    return _finish(x, traj, return_trajectory)


def heun_sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
                key: jax.Array | None = None, *, noises=None, post_step: PostStep | None = None,
                return_trajectory: bool = False, start_step: int = 0):
    """Heun (trapezoidal predictor-corrector) on the flow ODE; the final step to sigma=0 is Euler.

    Uses 2S - 1 model calls for S steps. Second-order accurate.
    """
    _check_flow(schedule)
    n = schedule.num_train_timesteps
    sig = flow_sigmas(cfg.num_steps, shift=cfg.flow_shift, num_train_timesteps=n)[_check_start(cfg, start_step):]
    post = post_step or _identity_post

    def f(x, s):
        return denoise_fn(x, _full_t(s * n, x, jnp.float32))

    def step(x, xs):
        i, s, s_next = xs
        v1 = f(x, s)
        x_e = x + (s_next - s) * v1
        v2 = f(x_e, s_next)
        x_new = post(x + (s_next - s) * 0.5 * (v1 + v2), i, s_next)
        return x_new, x_new

    k = len(sig) - 2
    xs = (jnp.arange(k), jnp.asarray(sig[:k]), jnp.asarray(sig[1:k + 1]))
    x, traj = jax.lax.scan(step, x_T, xs)
    s_last = jnp.asarray(sig[k])
    x = post(x + (0.0 - s_last) * f(x, s_last), jnp.asarray(k), jnp.asarray(0.0, jnp.float32))
    traj = jnp.concatenate([traj, x[None]], axis=0)
    return _finish(x, traj, return_trajectory)


_DISPATCH = {"ddpm": ddpm_sample, "ddim": ddim_sample, "pndm": pndm_sample, "dpmpp_2m": dpmpp_2m_sample,
             "euler": euler_sample, "heun": heun_sample}


def sample(denoise_fn: DenoiseFn, x_T: jax.Array, schedule: DiffusionSchedule, cfg: SamplerConfig,
           key: jax.Array | None = None, **kwargs: Any):
    """Runs the sampler named by ``cfg.name``. x_T [B, ...] -> x_0 [B, ...] (see module docstring)."""
    return _DISPATCH[cfg.name](denoise_fn, x_T, schedule, cfg, key, **kwargs)


def model_calls(cfg: SamplerConfig) -> int:
    """Number of denoiser evaluations the sampler makes (for latency/FLOP accounting)."""
    return {"pndm": cfg.num_steps + 1, "heun": 2 * cfg.num_steps - 1}.get(cfg.name, cfg.num_steps)


# --------------------------------------------------------------------------------------------------
# Editing helpers (SDEdit, RePaint-style inpainting, attention maps on the trajectory)
# --------------------------------------------------------------------------------------------------
def start_step_for_strength(num_steps: int, strength: float) -> int:
    """SDEdit ``strength`` in [0, 1] -> the first step k to run: the last ``floor(S * strength)`` steps of
    the S-step grid are run (diffusers img2img); k = S (nothing to run) for strength 0."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return int(num_steps) - min(int(np.floor(num_steps * float(strength) + 1e-9)), int(num_steps))


def step_levels(schedule: DiffusionSchedule, cfg: SamplerConfig, start_step: int = 0) -> np.ndarray:
    """The noise level of the sampler's state entering each scan row (the trajectory's rows, from
    ``start_step``), in the ``post_step`` convention: DDPM timesteps (int) or flow sigmas (float32). Row 0 is
    the level ``x_T`` must have; row i > 0 is the level of ``trajectory[i - 1]``."""
    k = _check_start(cfg, start_step)
    if cfg.name in ("euler", "heun"):
        _check_flow(schedule)
        sig = flow_sigmas(cfg.num_steps, shift=cfg.flow_shift, num_train_timesteps=schedule.num_train_timesteps)
        return sig[k:cfg.num_steps]
    if cfg.name == "pndm":
        return np.asarray(pndm_tables(schedule, cfg, k)["t_model"], np.int64)
    if cfg.name == "dpmpp_2m":
        return np.asarray(dpmpp_tables(schedule, cfg, k)["ts"], np.int64)
    tables = ddpm_tables if cfg.name == "ddpm" else ddim_tables
    return np.asarray(tables(schedule, cfg, k)[0], np.int64)


def model_time(schedule: DiffusionSchedule, level) -> jax.Array:
    """A level of :func:`step_levels` -> the timestep the samplers feed the model (int32 DDPM timestep, or
    ``sigma * N`` float32 for flows)."""
    if schedule.prediction_type == "flow":
        return jnp.asarray(level, jnp.float32) * schedule.num_train_timesteps
    return jnp.asarray(level, jnp.int32)


def noise_to_level(schedule: DiffusionSchedule, x0: jax.Array, noise: jax.Array, level) -> jax.Array:
    """q(x_level | x0) with the given ``noise``: ``sqrt(a) x0 + sqrt(1 - a) noise`` at DDPM timestep ``level``
    (a negative level is clean: x0), or ``(1 - sigma) x0 + sigma noise`` for flows. ``level``: a scalar
    (traced or not) in the :func:`step_levels` / ``post_step`` convention."""
    if schedule.prediction_type == "flow":
        s = jnp.asarray(level, jnp.float32)
        return (1.0 - s) * x0 + s * noise
    t = jnp.asarray(level, jnp.int32)
    a = jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def is_stochastic(cfg: SamplerConfig) -> bool:
    """Whether the sampler draws per-step noise (``noises`` has one row per scan row)."""
    return cfg.name == "ddpm" or (cfg.name == "ddim" and cfg.eta > 0)
