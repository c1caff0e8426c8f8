"""Tiny stage 2 (+ cross-attention, zero-init output projections, 10% empty text), from stage 1
(``--config.extra.init_from=<stage-1 workdir>``). Command and expected result: configs/ezaudio_tiny.py."""
from configs.ezaudio_tiny import get_config as base


def get_config():
    c = base()
    c.name = "ezaudio_stage2_tiny"
    c.diffusion.cond_drop_prob = 0.1
    c.data.mask_partial_prob = 0.25
    c.optimizer.lr = 1e-3
    return c
