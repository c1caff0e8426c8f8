"""Diffusion core: schedules, objectives, samplers and guidance, as pure functions.

Typical use::

    from tta_jax import diffusion as D
    sched = D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")
    denoise = D.cfg_denoiser(model_fn, cond, uncond, scale=5.0, rescale=0.75)
    x0 = D.sample(denoise, x_T, sched, D.SamplerConfig("ddim", 100, spacing="trailing", eta=1.0), key)
"""
from tta_jax.diffusion.guidance import (GUIDANCE_MODES, cfg_denoiser, combine, concat_conds, effective_scale,
                                        rescale_noise_cfg)
from tta_jax.diffusion.objectives import (add_noise, diffusion_loss, flow_interpolate, flow_velocity,
                                          masked_mean, min_snr_weight, precondition_x0, predict_x0_eps, target,
                                          velocity, wiener_coefficients)
from tta_jax.diffusion.samplers import (SAMPLERS, SamplerConfig, is_stochastic, model_calls, model_time,
                                        noise_to_level, sample, start_step_for_strength, step_levels)
from tta_jax.diffusion.schedules import (DiffusionSchedule, flow_sigmas, make_betas, make_schedule,
                                         rescale_zero_terminal_snr, sample_flow_time, schedule_from_config,
                                         shift_sigmas, spaced_timesteps)
