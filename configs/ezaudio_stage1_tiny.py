"""Tiny stage 1 (masked pretraining, no text; model.context_dim=None). Command and expected result:
see configs/ezaudio_tiny.py."""
from configs.ezaudio_tiny import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage1_tiny"
    c.model.context_dim = None
    c.diffusion.cond_drop_prob = 0.0
    c.data.mask_partial_prob = 0.75
    c.optimizer.lr = 2e-3
    return c
