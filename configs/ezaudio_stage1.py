"""EzAudio stage 1: masked diffusion pretraining WITHOUT text (AudioSet), EzAudio-XL.

model.context_dim = None: the DiT has no cross-attention / context parameters at all.
Masks (data_pipeline/masks.py): ratio U(0.25, 1), 0.2 s spans; here 75% of samples get partial masks
(the paper raises the full-mask probability only in stage 2); loss on masked frames only.
Run:      python -m launch.train --config configs/ezaudio_stage1.py --workdir /ckpt/ez_s1 \
              --config.data.precomputed_dir=/data/audioset_ezaudio_vae
Expected: 100K steps, batch 128, lr 1e-4 (paper III-C); masked v-MSE falls steadily; next stage:
          configs/ezaudio_stage2.py with --config.extra.init_from=/ckpt/ez_s1.
"""
from configs.ezaudio_xl import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage1"
    c.model.context_dim = None
    c.diffusion.cond_drop_prob = 0.0
    c.data.mask_partial_prob = 0.75
    c.optimizer.lr = 1e-4
    c.train.total_steps = 100_000
    return c
