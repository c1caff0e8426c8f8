"""EzAudio-XL text-to-audio (paper hyper-parameters): DiT-XL (width 1152, 28 blocks+1, 16 heads x 72,
AdaLN-SOLA rank 36) on the 24 kHz Oobleck VAE's 50 Hz x 128 latents, FLAN-T5-XL text (2048-d).

This is the shared base of the three training stages (configs/ezaudio_stage{1,2,3}.py); on its own it
is the stage-3 setting (AudioCaps fine-tuning, lr 1e-5). Run (accelerator scale; not run here):
          python -m launch.train --config configs/ezaudio_xl.py --workdir /ckpt/ezaudio_xl \
              --config.data.precomputed_dir=/data/audiocaps_ezaudio_vae_t5xl
Expected: AudioCaps test FD ~ 14-15 / CLAP ~ 0.5 after the full 3-stage recipe (paper Table II);
          sampling with DDIM trailing eta=1, 100 steps, CFG 5 rescale 0.75.
"""
from tta_jax.config import base_config


def ezaudio_diffusion(c, *, num_steps: int = 100, guidance_scale: float = 5.0, guidance_rescale: float = 0.75):
    """EzAudio's objective and sampler, in place: scaled_linear 0.00085..0.012 with zero-terminal SNR,
    v-prediction, 10% empty captions; DDIM trailing, eta 1, CFG with rescale (paper defaults)."""
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


def ezaudio_base(preset: str, context_dim: int):
    c = base_config()
    c.name = preset
    c.seed = 0
    c.builder = "tta_jax.pipelines.ezaudio:build_stage_task"
    c.model.preset = preset
    c.model.in_channels = 128
    c.model.out_channels = 128
    c.model.context_dim = context_dim
    c.model.remat = True                     # activation checkpointing per block

    ezaudio_diffusion(c)

    c.data.crop_frames = 500                 # 10 s at 50 Hz
    c.data.patch_frames = 1
    c.data.mask_partial_prob = 0.25          # 25% partial span masks, the rest fully masked

    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-5
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 5000
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01
    c.optimizer.clip_norm = 1.0

    c.train.total_steps = 30_000
    c.train.batch_size = 128
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.ckpt_every = 5000
    c.train.keep_ckpts = 3
    c.train.compute_dtype = "bfloat16"
    c.extra.init_from = ""                   # a stage's workdir to initialise from (see stage configs)
    c.extra.init_from_ema = True
    c.extra.init_strict = True
    return c


def get_config():
    return ezaudio_base("ezaudio_xl", 2048)
