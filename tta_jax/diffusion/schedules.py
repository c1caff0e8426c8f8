"""Noise schedules, timestep spacings and flow-matching time samplers (pure functions).

Conventions (those of diffusers, so converted checkpoints and parity tests line up):

- Discrete DDPM time: integer ``t`` in ``[0, N)`` with ``N = num_train_timesteps``; ``alphas_cumprod[t]``
  is the signal fraction: ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.
- Flow matching (rectified flow): continuous ``sigma`` in ``[0, 1]`` with
  ``x_sigma = (1 - sigma) x_0 + sigma * noise`` and velocity target ``noise - x_0``; the model is fed
  ``sigma * N`` as its timestep, as diffusers' ``FlowMatchEulerDiscreteScheduler`` does.

Static tables (betas, timestep lists) are built in numpy at trace time; the schedule arrays used inside
jit live in :class:`DiffusionSchedule`, a pytree.
"""
from __future__ import annotations

import math
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
Spacing = Literal["leading", "trailing", "linspace"]
PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def make_betas(kind: BetaSchedule, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
               beta_end: float = 0.02) -> np.ndarray:
    """Betas [N] (float32) for the named schedule, computed as diffusers computes them."""
    n = num_train_timesteps
    if kind == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float32)
    if kind == "scaled_linear":
        # torch.linspace in float32, then squared in float32.
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float32) ** 2
    if kind == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return np.asarray(betas, dtype=np.float32)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of linear, scaled_linear, squaredcos_cap_v2")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescales betas so the last timestep has exactly zero SNR (Lin et al. 2023, Algorithm 1).

    Keeps ``sqrt(alpha_bar_0)`` and shifts/scales ``sqrt(alpha_bar)`` linearly so its last entry is 0.
    Computed in float32 like diffusers, so ``alphas_cumprod[-1] == 0`` exactly.
    """
    betas = np.asarray(betas, np.float32)
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    sqrt_ab = np.sqrt(alphas_cumprod)
    s0, sT = sqrt_ab[0].copy(), sqrt_ab[-1].copy()
    sqrt_ab = sqrt_ab - sT
    sqrt_ab = sqrt_ab * (s0 / (s0 - sT))
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return (1.0 - alphas).astype(np.float32)


@flax.struct.dataclass
class DiffusionSchedule:
    """A discrete-time diffusion schedule (a pytree: arrays are leaves, the rest is static).

    Attributes:
      betas, alphas_cumprod: [N] float32.
      prediction_type: what the model predicts: "epsilon", "v_prediction", "sample" or "flow".
      num_train_timesteps: N.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")
    num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)

    @property
    def snr(self) -> jax.Array:
        """Signal-to-noise ratio a / (1 - a) per timestep, [N] (0 at a zero-SNR terminal step)."""
        ac = self.alphas_cumprod
        return ac / (1.0 - ac)


def make_schedule(beta_schedule: BetaSchedule = "scaled_linear", *, num_train_timesteps: int = 1000,
                  beta_start: float = 0.00085, beta_end: float = 0.012, zero_terminal_snr: bool = False,
                  prediction_type: PredictionType = "epsilon") -> DiffusionSchedule:
    """Builds a :class:`DiffusionSchedule`. Defaults are Stable Diffusion's (scaled_linear 0.00085..0.012)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} not in {PREDICTION_TYPES}")
    betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    ac = np.cumprod(1.0 - betas, dtype=np.float32)
    return DiffusionSchedule(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(ac),
                             prediction_type=prediction_type, num_train_timesteps=num_train_timesteps)


def schedule_from_config(cfg) -> DiffusionSchedule:
    """Builds a schedule from a config block with keys beta_schedule, num_train_timesteps, beta_start,
    beta_end, zero_terminal_snr, prediction_type."""
    return make_schedule(cfg.beta_schedule, num_train_timesteps=cfg.num_train_timesteps,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                         zero_terminal_snr=cfg.zero_terminal_snr, prediction_type=cfg.prediction_type)


def spaced_timesteps(num_inference_steps: int, spacing: Spacing = "leading", *,
                     num_train_timesteps: int = 1000, steps_offset: int = 0) -> np.ndarray:
    """Descending integer timesteps [S] for DDPM/DDIM sampling (diffusers' DDIM/DDPM rules).

    - leading: ``arange(S) * (N // S) + offset`` (reversed);
    - trailing: ``round(arange(N, 0, -N/S)) - 1`` (includes N-1: needed with zero-terminal SNR);
    - linspace: ``round(linspace(0, N-1, S))`` (reversed).
    """
    n, s = num_train_timesteps, num_inference_steps
    if s < 1 or s > n:
        raise ValueError(f"num_inference_steps must be in [1, {n}], got {s}")
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, s).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, s) * (n // s)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / s)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected leading, trailing or linspace")
    return ts.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Flow matching
# --------------------------------------------------------------------------------------------------
def shift_sigmas(sigmas, shift: float):
    """Timestep shift ``s * t / (1 + (s - 1) t)`` (SD3); identity for shift == 1. Works on np or jnp."""
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_inference_steps: int, *, shift: float = 1.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """Descending sigmas [S + 1] ending in 0 for flow ODE sampling, as FlowMatchEulerDiscreteScheduler.

    The scheduler's training grid is ``shift(linspace(1, N, N)/N)``; inference takes S points linearly
    between its largest and smallest sigma and shifts them once more (diffusers' behaviour).
    """
    n = num_train_timesteps
    sigma_max = float(shift_sigmas(np.float32(1.0), shift))
    sigma_min = float(shift_sigmas(np.float32(1.0 / n), shift))
    t = np.linspace(sigma_max * n, sigma_min * n, num_inference_steps)
    sig = shift_sigmas(t / n, shift).astype(np.float32)
    return np.concatenate([sig, np.zeros(1, np.float32)])


def sample_flow_time(key: jax.Array, shape, *, sampler: str = "uniform", shift: float = 1.0,
                     logit_mean: float = 0.0, logit_std: float = 1.0, eps: float = 1e-5) -> jax.Array:
    """Training times sigma in (0, 1) for flow matching.

    sampler: "uniform" (U(eps, 1)), "logit_normal" (sigmoid(m + s * N(0, 1)), SD3) ; ``shift`` is applied
    afterwards (``shift > 1`` spends more time at high noise).
    """
    if sampler == "uniform":
        t = jax.random.uniform(key, shape, minval=eps, maxval=1.0)
    elif sampler == "logit_normal":
        t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, shape))
    else:
        raise ValueError(f"unknown flow time sampler {sampler!r}; expected uniform or logit_normal")
    return shift_sigmas(t, shift)
