"""Training objectives as pure functions: forward process, targets, min-SNR weights, masked losses.

Shapes: ``x0``, ``noise``, ``x_t``: [B, ...] (any trailing layout); ``t``: [B] integer DDPM timesteps or,
for flow matching, [B] float sigmas in [0, 1]. ``mask``: broadcastable to [B, ...] (e.g. [B, T] for
latents [B, T, C] is expanded on the right), 1 where the loss counts.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from tta_jax.diffusion.schedules import DiffusionSchedule, sample_flow_time


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """[B] -> [B, 1, ..., 1] matching x's rank."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _coeffs(schedule: DiffusionSchedule, t: jax.Array, x: jax.Array):
    ac = schedule.alphas_cumprod[t]
    return _bcast(jnp.sqrt(ac), x), _bcast(jnp.sqrt(1.0 - ac), x)


def add_noise(schedule: DiffusionSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """q(x_t | x_0): ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``. x0, noise [B, ...]; t [B] int."""
    a, s = _coeffs(schedule, t, x0)
    return a * x0 + s * noise


def velocity(schedule: DiffusionSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v-prediction target ``sqrt(a_t) noise - sqrt(1 - a_t) x0`` (Salimans & Ho)."""
    a, s = _coeffs(schedule, t, x0)
    return a * noise - s * x0


def flow_interpolate(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """Rectified-flow path ``(1 - sigma) x0 + sigma noise``; sigma [B] in [0, 1]."""
    s = _bcast(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def flow_velocity(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """Rectified-flow velocity target ``d x_sigma / d sigma = noise - x0`` (constant along the path)."""
    return noise - x0


def target(schedule: DiffusionSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """The regression target for ``schedule.prediction_type``."""
    p = schedule.prediction_type
    if p == "epsilon":
        return noise
    if p == "v_prediction":
        return velocity(schedule, x0, noise, t)
    if p == "sample":
        return x0
    if p == "flow":
        return flow_velocity(x0, noise)
    raise ValueError(f"unknown prediction_type {p!r}")


def x0_eps_from_output(prediction_type: str, x_t: jax.Array, out: jax.Array, alpha_bar) -> tuple:
    """Model output -> (x0_hat, eps_hat) given alpha_bar (scalar, or broadcastable to x_t)."""
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x_t - s * out) / a, out
    if prediction_type == "v_prediction":
        return a * x_t - s * out, a * out + s * x_t
    if prediction_type == "sample":
        return out, (x_t - a * out) / s
    raise ValueError(f"prediction_type {prediction_type!r} has no (x0, eps) form (use a flow sampler)")


def predict_x0_eps(schedule: DiffusionSchedule, x_t: jax.Array, out: jax.Array, t: jax.Array):
    """Model output -> (x0_hat, eps_hat) for the DDPM parameterisations. t [B] int."""
    return x0_eps_from_output(schedule.prediction_type, x_t, out, _bcast(schedule.alphas_cumprod[t], x_t))


def wiener_coefficients(alpha_bar: jax.Array, data_var: jax.Array):
    """Per-dimension preconditioning of an x0-predicting denoiser -> ``(c_in, c_skip, c_out)``.

    EDM's c_in / c_skip / c_out (Karras et al. 2022, with sigma_data^2 per dimension) for the VP process
    ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` and zero-mean data of variance ``data_var`` per dimension:
    ``c_skip x_t`` is the linear least-squares (Wiener) estimate of x0 from x_t, ``c_out^2`` its error
    variance, ``c_in`` scales x_t to unit variance. So ``x0_hat = c_skip x_t + c_out F(c_in x_t)`` is the
    Wiener estimate when the network F outputs 0 and F's target has unit variance in every dimension at every
    t, however faint the dimension. At a zero-SNR step (a = 0): c_in = 1, c_skip = 0, c_out = sqrt(data_var).

    alpha_bar: scalar or [B, 1, ..., 1]; data_var: scalar or [C] (the last axis). Shapes broadcast.
    """
    data_var = jnp.asarray(data_var, jnp.float32)
    s = alpha_bar * data_var + (1.0 - alpha_bar)
    c_in = jax.lax.rsqrt(s)
    c_skip = jnp.sqrt(alpha_bar) * data_var / s
    c_out = jnp.sqrt(data_var * (1.0 - alpha_bar) / s)
    return c_in, c_skip, c_out


def precondition_x0(schedule: DiffusionSchedule, data_var: jax.Array, x_t: jax.Array, t: jax.Array,
                    net_fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """``x0_hat = c_skip x_t + c_out net_fn(c_in x_t)`` (:func:`wiener_coefficients`). x_t [B, ..., C];
    t [B] int DDPM timesteps; data_var scalar or [C]; net_fn [B, ..., C] -> [B, ..., C]. The result is an
    x0 prediction (``prediction_type = "sample"``)."""
    c_in, c_skip, c_out = wiener_coefficients(_bcast(schedule.alphas_cumprod[t], x_t), data_var)
    out = net_fn(c_in * x_t)
    return c_skip * x_t + c_out * out.astype(jnp.float32)


def min_snr_weight(schedule: DiffusionSchedule, t: jax.Array, gamma: float, *, variant: str = "standard"):
    """Min-SNR-gamma loss weights [B] (Hang et al. 2023).

    standard: epsilon -> min(snr, g)/snr; v -> min(snr, g)/(snr + 1); sample -> min(snr, g).
    tango:    min(snr, g)/snr whatever the prediction type (Tango's training code does this for v too).
    At a zero-SNR step min(snr, g)/snr is taken at its limit, 1.
    """
    snr = schedule.snr[t]
    clipped = jnp.minimum(snr, gamma)
    safe_ratio = jnp.where(snr > 0, clipped / jnp.where(snr > 0, snr, 1.0), 1.0)
    if variant == "tango":
        return safe_ratio
    if variant != "standard":
        raise ValueError(f"unknown min-SNR variant {variant!r}; expected standard or tango")
    p = schedule.prediction_type
    if p == "epsilon":
        return safe_ratio
    if p == "v_prediction":
        return clipped / (snr + 1.0)
    if p == "sample":
        return clipped
    raise ValueError(f"min-SNR weighting is not defined for prediction_type {p!r}")


def masked_mean(err: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-sample mean of ``err`` [B, ...] over positions where mask is 1 -> [B].

    mask [B, d1, ..., dk] is broadcast on the right to err's shape, so a frame mask [B, T] weights
    latents [B, T, C]. A sample with an empty mask contributes 0 (never NaN).
    """
    axes = tuple(range(1, err.ndim))
    if mask is None:
        return jnp.mean(err, axis=axes)
    m = mask.astype(err.dtype)
    m = m.reshape(m.shape + (1,) * (err.ndim - m.ndim))
    m = jnp.broadcast_to(m, err.shape)
    return jnp.sum(err * m, axis=axes) / jnp.maximum(jnp.sum(m, axis=axes), 1.0)


def diffusion_loss(apply_fn: Callable[..., jax.Array], params: Any, batch: Mapping[str, Any], rng: jax.Array,
                   schedule: DiffusionSchedule, *, min_snr_gamma: float | None = None,
                   min_snr_variant: str = "standard", flow_time: Mapping[str, Any] | None = None,
                   apply_kwargs: Mapping[str, Any] | None = None,
                   error_weight: Callable[[jax.Array, jax.Array], jax.Array] | None = None, t_min: int = 0):
    """Denoising loss for one batch: ``(scalar, metrics)``. Pure.

    Args:
      apply_fn: ``apply_fn(params, x_t [B, ...], t [B], cond, rng) -> model output [B, ...]``.
      batch: ``latent`` x0 [B, ...]; ``cond`` dict (may be empty); optional ``loss_mask`` (1 = counts,
        e.g. EzAudio's masked frames [B, T]).
      rng: PRNG key; split here into timestep, noise and model (dropout) keys.
      schedule: its ``prediction_type`` picks the target; "flow" switches to rectified flow with times
        from ``flow_time`` (kwargs of :func:`sample_flow_time`) and model timestep ``sigma * N``.
      min_snr_gamma: if set, min-SNR weighting (``min_snr_variant``: standard or tango). DDPM only.
      error_weight: optional ``(t [B], x0) -> weights`` broadcastable to x0, multiplying the squared error
        element-wise before the masked mean (e.g. per-channel weights of a preconditioned denoiser).
      t_min: DDPM timesteps are drawn uniformly from [t_min, N) (0: all); e.g. an adapter trained only where the
        noise is high enough that the condition decides what is generated.
    """
    x0 = batch["latent"]
    cond = batch.get("cond", {})
    mask = batch.get("loss_mask")
    b = x0.shape[0]
    k_t, k_n, k_model = jax.random.split(rng, 3)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    if schedule.prediction_type == "flow":
        sigma = sample_flow_time(k_t, (b,), **dict(flow_time or {}))
        x_t = flow_interpolate(x0, noise, sigma)
        model_t = sigma * schedule.num_train_timesteps
        tgt = flow_velocity(x0, noise)
        weight = jnp.ones((b,), x0.dtype)
    else:
        if not 0 <= t_min < schedule.num_train_timesteps:
            raise ValueError(f"t_min={t_min} must be in [0, {schedule.num_train_timesteps})")
        t = jax.random.randint(k_t, (b,), t_min, schedule.num_train_timesteps)
        x_t = add_noise(schedule, x0, noise, t)
        model_t = t
        tgt = target(schedule, x0, noise, t)
        weight = (min_snr_weight(schedule, t, min_snr_gamma, variant=min_snr_variant)
                  if min_snr_gamma else jnp.ones((b,), x0.dtype))
    out = apply_fn(params, x_t, model_t, cond, k_model, **dict(apply_kwargs or {}))
    err = jnp.square(out.astype(jnp.float32) - tgt.astype(jnp.float32))
    if error_weight is not None:
        err = err * error_weight(model_t, x0)
    per_sample = masked_mean(err, mask)
    loss = jnp.mean(per_sample * weight)
    metrics = {"loss": loss, "mse": jnp.mean(per_sample)}
    return loss, metrics
