"""EzAudio stage 3: fine-tune on AudioCaps, from stage 2 (same architecture: every param is copied).
Variants as configs/ezaudio.py.

Run:      python -m launch.train --config configs/ezaudio_stage3.py:xl --workdir /ckpt/ez_s3 \\
              --config.extra.init_from=/ckpt/ez_s2 --config.data.precomputed_dir=/data/audiocaps_vae_t5xl
Expected: xl: 30K steps, batch 128, lr 1e-5; AudioCaps FD/CLAP as in paper Table II with 100-step DDIM,
          CFG 5, rescale 0.75. tiny: copies all 124 params (0 new); ~0.30 -> ~0.27 after 200 steps.
"""
from configs.ezaudio import VARIANTS, get_config as ezaudio  # noqa: F401  (VARIANTS: the same)


def get_config(arg=None):
    c = ezaudio(arg)
    c.name = c.name.replace("ezaudio", "ezaudio_stage3")
    if c.model.preset == "ezaudio_tiny":
        c.optimizer.lr = 3e-4
        c.train.total_steps = 200
    else:
        c.optimizer.lr = 1e-5
        c.optimizer.warmup_steps = 0
        c.train.total_steps = 30_000
    c.extra.init_from = ""          # REQUIRED on the command line: the stage-2 workdir
    return c
