"""Helpers shared by the experiment configs (``configs/*.py``): size variants, objectives, CPU settings.

A config file exposes ``get_config(arg=None)``; ``arg`` is the variant after the colon on the command line
(``--config configs/ezaudio.py:tiny``, big_vision's config argument) and is checked by :func:`variant`.
"""
from __future__ import annotations

from tta_jax.config import base_config
from tta_jax.errors import ConfigError


def variant(arg: str | None, choices, default: str, path: str) -> str:
    """The variant named by the config argument (``default`` when none), or a ConfigError naming the choices."""
    name = default if arg in (None, "") else str(arg)
    if name not in choices:
        raise ConfigError(f"{path}:{name}: unknown variant; expected one of {list(choices)} "
                          f"(e.g. --config {path}:{list(choices)[0]})")
    return name


def latent_system(name: str, *, codec: dict, text: dict, model: dict,
                  builder: str = "tta_jax.pipelines.tta:build_task"):
    """A latent text-to-audio system's config on :func:`tta_jax.config.base_config`: the shared task and sampling
    pipeline (``tta_jax.pipelines.tta``), seed 0 and its codec / text / model sections (what ``launch.precompute
    --system`` encodes with and ``launch.sample`` decodes with)."""
    import ml_collections

    c = base_config()
    c.name = name
    c.seed = 0
    c.builder = builder
    c.sample_pipeline = "tta_jax.pipelines.tta:sample_pipeline"
    c.codec = ml_collections.ConfigDict(dict(codec))
    c.text = ml_collections.ConfigDict(dict(text))
    c.model = ml_collections.ConfigDict(dict(model))
    return c


def sd_schedule(c, prediction_type: str, *, zero_terminal_snr: bool = False, cond_drop_prob: float = 0.1):
    """Stable Diffusion's training schedule, in place: DDPM scaled_linear betas 0.00085..0.012 (SD-1.5 / 2.1,
    used by EzAudio, Auffusion and Tango), ``prediction_type``, optional zero-terminal SNR, caption dropout."""
    c.diffusion.beta_schedule = "scaled_linear"
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012
    c.diffusion.zero_terminal_snr = zero_terminal_snr
    c.diffusion.prediction_type = prediction_type
    c.diffusion.cond_drop_prob = cond_drop_prob
    return c


def ezaudio_diffusion(c, *, num_steps: int = 100, guidance_scale: float = 5.0, guidance_rescale: float = 0.75):
    """EzAudio's objective and sampler, in place: scaled_linear 0.00085..0.012 with zero-terminal SNR,
    v-prediction, 10% empty captions; DDIM trailing, eta 1, CFG with rescale (arXiv:2409.10819, III-C)."""
    sd_schedule(c, "v_prediction", zero_terminal_snr=True)
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


def small_unet(channels, *, in_channels: int, cross_attention_dim: int, heads: int, groups: int,
               attention: str = "low") -> dict:
    """``config.model`` of a two-level CPU-size U-Net (the ``:tiny`` / ``:demo`` variants of the U-Net systems):
    one layer per block, cross-attention at the ``"low"``-resolution level (second down / first up block) or at
    the ``"high"`` one (first down / last up block), and in the mid block."""
    cross = {"low": (("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")),
             "high": (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"))}
    if attention not in cross:
        raise ConfigError(f"small_unet: attention={attention!r}; expected 'low' or 'high'")
    down, up = cross[attention]
    return {"name": "unet", "in_channels": in_channels, "out_channels": in_channels,
            "block_out_channels": tuple(channels), "down_block_types": down, "up_block_types": up,
            "layers_per_block": 1, "attention_head_dim": heads, "cross_attention_dim": cross_attention_dim,
            "norm_num_groups": groups}
