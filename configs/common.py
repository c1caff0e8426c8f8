"""Helpers shared by the experiment configs (``configs/*.py``): size variants, objectives, CPU settings.

A config file exposes ``get_config(arg=None)``; ``arg`` is the variant after the colon on the command line
(``--config configs/ezaudio.py:tiny``, big_vision's config argument) and is checked by :func:`variant`.
"""
from __future__ import annotations

from tta_jax.errors import ConfigError


def variant(arg: str | None, choices, default: str, path: str) -> str:
    """The variant named by the config argument (``default`` when none), or a ConfigError naming the choices."""
    name = default if arg in (None, "") else str(arg)
    if name not in choices:
        raise ConfigError(f"{path}:{name}: unknown variant; expected one of {list(choices)} "
                          f"(e.g. --config {path}:{list(choices)[0]})")
    return name


def ezaudio_diffusion(c, *, num_steps: int = 100, guidance_scale: float = 5.0, guidance_rescale: float = 0.75):
    """EzAudio's objective and sampler, in place: scaled_linear 0.00085..0.012 with zero-terminal SNR,
    v-prediction, 10% empty captions; DDIM trailing, eta 1, CFG with rescale (arXiv:2409.10819, III-C)."""
    c.diffusion.beta_schedule = "scaled_linear"
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012
    c.diffusion.zero_terminal_snr = True
    c.diffusion.prediction_type = "v_prediction"
    c.diffusion.cond_drop_prob = 0.1
    c.sampler.name = "ddim"
    c.sampler.spacing = "trailing"
    c.sampler.eta = 1.0
    c.sampler.num_steps = num_steps
    c.sampler.guidance_scale = guidance_scale
    c.sampler.guidance_rescale = guidance_rescale
    return c


def cpu_tiny_trainer(c, *, total_steps: int, batch_size: int, lr: float):
    """Trainer settings of the ``:tiny`` variants (CPU tests and smoke runs), in place: float32, one device,
    synchronous checkpoints, no TensorBoard / progress bar, no EMA, no warm-up."""
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = 0
    c.train.compute_dtype = ""
    c.train.total_steps = total_steps
    c.train.batch_size = batch_size
    c.train.ema_decay = 0.0
    c.train.log_every = 5
    c.train.ckpt_every = 1000
    c.train.keep_ckpts = 1
    c.train.measure_peak = False
    c.train.progress_bar = False
    c.train.tensorboard = False
    c.train.async_ckpt = False
    c.mesh.data = 1
    c.mesh.num_devices = 1
    return c
