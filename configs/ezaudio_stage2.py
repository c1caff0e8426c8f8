"""EzAudio stage 2: add text (synthetic captions), from stage 1. Variants as configs/ezaudio.py.

Cross-attention is added to every block with zero-initialised output projections (so step 0 computes
exactly the stage-1 function); 10% of captions are replaced by the empty caption (CFG); full masks
are more likely (75%). ``extra.init_from`` = the stage-1 workdir: params present in both are copied
(EMA), the new ones (cross_attn, norm2, norm_context, context_embed) keep their init; the report is
logged ("expand_params: copied N, new M [...]").
Run:      python -m launch.train --config configs/ezaudio_stage2.py:xl --workdir /ckpt/ez_s2 \\
              --config.extra.init_from=/ckpt/ez_s1 --config.data.precomputed_dir=/data/synthcaps_vae_t5xl
Expected: xl: 50K steps, batch 128, lr 5e-5; the loss starts at stage 1's level (not from scratch).
          tiny: starts where stage 1 ended (~0.33; copies 81 params, initialises 43) -> ~0.275 after 400
          steps (recipe in configs/ezaudio_stage1.py).
"""
from configs.ezaudio import VARIANTS, get_config as ezaudio  # noqa: F401  (VARIANTS: the same)


def get_config(arg=None):
    c = ezaudio(arg)
    c.name = c.name.replace("ezaudio", "ezaudio_stage2")
    c.diffusion.cond_drop_prob = 0.1
    c.data.mask_partial_prob = 0.25
    if c.model.preset == "ezaudio_tiny":
        c.optimizer.lr = 1e-3
    else:
        c.optimizer.lr = 5e-5
        c.optimizer.warmup_steps = 0
        c.train.total_steps = 50_000
    c.extra.init_from = ""          # REQUIRED on the command line: the stage-1 workdir
    return c
