"""EzAudio stage 1: masked diffusion pretraining WITHOUT text (AudioSet). Variants as configs/ezaudio.py.

model.context_dim = None: the DiT has no cross-attention / context parameters at all.
Masks (tta_jax/data/masks.py): ratio U(0.25, 1), 0.2 s spans; here 75% of samples get partial masks
(the paper raises the full-mask probability only in stage 2); loss on masked frames only.
Run:      python -m launch.train --config configs/ezaudio_stage1.py:xl --workdir /ckpt/ez_s1 \\
              --config.data.precomputed_dir=/data/audioset_ezaudio_vae
Expected: xl: 100K steps, batch 128, lr 1e-4 (paper III-C); masked v-MSE falls steadily; next stage:
          configs/ezaudio_stage2.py with --config.extra.init_from=/ckpt/ez_s1.

Tiny recipe, end to end (CPU; tests/test_ezaudio_e2e.py runs a shorter one):
  python -m tta_jax.train.gan --config configs/ezaudio_vae.py:tiny --workdir /tmp/ez/vae
  python -m data_pipeline.tiny_ezaudio --vae_workdir /tmp/ez/vae --out /tmp/ez/data
  python -m launch.train --config configs/ezaudio_stage1.py:tiny --workdir /tmp/ez/s1 \\
      --config.data.precomputed_dir=/tmp/ez/data
  python -m launch.train --config configs/ezaudio_stage2.py:tiny --workdir /tmp/ez/s2 \\
      --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s1
  python -m launch.train --config configs/ezaudio_stage3.py:tiny --workdir /tmp/ez/s3 \\
      --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s2
Expected (tiny; measured with the 300-step tiny VAE, 48 toy clips, each stage ~1-2 min on 2 CPU cores):
          masked v-MSE 0.85 at the start -> 0.30 after 400 steps; stage 2 starts at 0.33 (expand_params:
          copied 81, new 43) -> 0.275; stage 3 (200 steps, copied 124, new 0) 0.30 -> 0.27.
"""
from configs.ezaudio import VARIANTS, get_config as ezaudio  # noqa: F401  (VARIANTS: the same)


def get_config(arg=None):
    c = ezaudio(arg)
    c.name = c.name.replace("ezaudio", "ezaudio_stage1")
    c.model.context_dim = None
    c.diffusion.cond_drop_prob = 0.0
    c.data.mask_partial_prob = 0.75
    if c.model.preset == "ezaudio_tiny":
        c.optimizer.lr = 2e-3
    else:
        c.optimizer.lr = 1e-4
        c.train.total_steps = 100_000
    return c
