"""Tiny stage 3 (fine-tune, lower lr), from stage 2. Full recipe: configs/ezaudio_tiny.py.

Run:      python -m launch.train --config configs/ezaudio_stage3_tiny.py --workdir /tmp/ez/s3 \
              --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s2
Expected: copies all 124 params (0 new); ~0.30 -> ~0.27 after 200 steps.
"""
from configs.ezaudio_tiny import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage3_tiny"
    c.optimizer.lr = 3e-4
    c.train.total_steps = 200
    return c
