"""EzAudio stage 3: fine-tune on AudioCaps, from stage 2 (same architecture: every param is copied).

Run:      python -m launch.train --config configs/ezaudio_stage3.py --workdir /ckpt/ez_s3 \
              --config.extra.init_from=/ckpt/ez_s2 --config.data.precomputed_dir=/data/audiocaps_vae_t5xl
Expected: 30K steps, batch 128, lr 1e-5; AudioCaps FD/CLAP as in paper Table II with 100-step DDIM,
          CFG 5, rescale 0.75.
"""
from configs.ezaudio_xl import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage3"
    c.optimizer.lr = 1e-5
    c.optimizer.warmup_steps = 0
    c.train.total_steps = 30_000
    c.extra.init_from = ""          # REQUIRED on the command line: the stage-2 workdir
    return c
