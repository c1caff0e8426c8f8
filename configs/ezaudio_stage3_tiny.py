"""Tiny stage 3 (fine-tune, lower lr), from stage 2 (``--config.extra.init_from=<stage-2 workdir>``).
Command and expected result: configs/ezaudio_tiny.py."""
from configs.ezaudio_tiny import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage3_tiny"
    c.optimizer.lr = 3e-4
    c.train.total_steps = 200
    return c
