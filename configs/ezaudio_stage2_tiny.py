"""Tiny stage 2 (+ cross-attention, zero-init output projections, 10% empty text), from stage 1.
Full recipe: configs/ezaudio_tiny.py.

Run:      python -m launch.train --config configs/ezaudio_stage2_tiny.py --workdir /tmp/ez/s2 \
              --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s1
Expected: starts where stage 1 ended (~0.33; expand_params copies 81 params, initialises 43 new ones)
          -> ~0.275 after 400 steps.
"""
from configs.ezaudio_tiny import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage2_tiny"
    c.diffusion.cond_drop_prob = 0.1
    c.data.mask_partial_prob = 0.25
    c.optimizer.lr = 1e-3
    return c
