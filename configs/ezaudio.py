"""EzAudio text-to-audio (arXiv:2409.10819): EzAudio-DiT on the Oobleck waveform VAE's latents, FLAN-T5 text.

Variants (``--config configs/ezaudio.py:<variant>``):

- ``xl`` (default; paper hyper-parameters): DiT-XL (width 1152, 28 blocks + 1, 16 heads x 72, AdaLN-SOLA rank
  36) on the 24 kHz Oobleck VAE's 50 Hz x 128 latents, FLAN-T5-XL text (2048-d). Not run here.
- ``l``: DiT-L (width 1024, 24 blocks + 1, 16 heads x 64, rank 32), FLAN-T5-large (1024-d). Not run here.
- ``tiny`` (CPU): the DiT at toy size on the tiny waveform VAE's latents (8 kHz, 250 Hz x 8) and toy text
  states (32-d); what the tests train.

On its own this is the stage-3 setting (AudioCaps fine-tuning, lr 1e-5); configs/ezaudio_stage{1,2,3}.py
derive the three training stages from it (same variants). Run (accelerator scale):
          python -m launch.train --config configs/ezaudio.py:xl --workdir /ckpt/ezaudio_xl \\
              --config.data.precomputed_dir=/data/audiocaps_ezaudio_vae_t5xl
Expected: AudioCaps test FD ~ 14-15 / CLAP ~ 0.5 after the full 3-stage recipe (paper Table II) for xl,
          slightly behind for l; sampling with DDIM trailing eta=1, 100 steps, CFG 5 rescale 0.75.
Tiny recipe (CPU, ~10 min): see configs/ezaudio_stage1.py.
"""
import ml_collections

from configs.common import cpu_tiny_trainer, ezaudio_diffusion, variant
from tta_jax.config import base_config

# variant -> (DiT preset, text width)
SIZES = {"xl": ("ezaudio_xl", 2048), "l": ("ezaudio_l", 1024), "tiny": ("ezaudio_tiny", 32)}
VARIANTS = tuple(SIZES)


def get_config(arg=None):
    size = variant(arg, SIZES, "xl", "configs/ezaudio.py")
    preset, context_dim = SIZES[size]
    c = base_config()
    c.name = f"ezaudio_{size}"
    c.seed = 0
    c.builder = "tta_jax.pipelines.ezaudio:build_stage_task"
    c.sample_pipeline = "tta_jax.pipelines.tta:sample_pipeline"
    # codec / text sections: what `launch.precompute --system configs/ezaudio.py:<variant>` encodes with and
    # what launch.sample decodes with (tta_jax/codecs/registry.py, tta_jax/text/registry.py)
    c.codec.name = "oobleck"
    c.codec.preset = "ezaudio_24k"
    c.codec.weights = ""                     # the released vae/1m.pt (or --config.codec.workdir=<GAN run>)
    c.codec.workdir = ""
    c.codec.sample = True                    # the DiT trains on sampled VAE latents
    c.text.name = "t5"
    c.text.path = ""                         # google/flan-t5-xl (xl) / flan-t5-large (l) transformers folder
    c.text.max_len = 64
    c.model.name = "dit"
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
    if size == "tiny":
        c.codec.preset = ""                  # the architecture comes from the GAN run's config.json
        c.codec.workdir = ""                 # --config.codec.workdir=<python -m tta_jax.train.gan run>
        c.text = ml_collections.ConfigDict({"name": "bytes_embed", "dim": 32, "max_len": 16})
        c.model.in_channels = c.model.out_channels = 8
        c.model.width = 32
        c.model.depth = 2
        c.model.num_heads = 2
        c.model.sola_rank = 4
        c.model.time_freq_dim = 32
        c.model.remat = False
        c.data.crop_frames = 32
        c.sampler.num_steps = 10
        cpu_tiny_trainer(c, total_steps=400, batch_size=8, lr=1e-3)
    return c
