"""DC-LDM (dual-conditioned LDM; ../shared/papers/dc_ldm.txt, reference-architectures.md section 5): a Tango-style
U-Net conditioned on FLAN-T5 text *and* the acoustic encoding of a codec-token LM's tokens
(tta_jax/conditioners/dcldm.py; the LM: configs/dcldm_lm.py).

Variants (``--config configs/dcldm.py:<variant>``):

- ``full`` (default): the Tango U-Net (configs/tango.py:full: SD U-Net 320/640/1280/1280 over AudioLDM mel-VAE
  latents, FLAN-T5-large, AudioLDM's 16 kHz HiFi-GAN) with one extra cross-attention (128-d acoustic context,
  zero-initialised output, i.e. the paper's skip) in every transformer block of the first down block and the
  last up block (CA-DOWN-#1 + CA-UP-#1: the paper's best placement). Acoustic encoding (a): the LM's EnCodec
  tokens -> the codec's continuous latents (AudioGen's 16 kHz EnCodec: 128-d, 50 Hz). Training as the paper:
  DDPM epsilon prediction, AdamW 3e-5 with a linear decay, only the U-Net trains (the LM, codec, T5 and VAE are
  outside the params), 10% caption and 10% acoustic dropout (independent); teacher-forced ground-truth tokens
  (``conditioner.source = "teacher"``; ``"lm"`` caches LM generations at precompute instead). Sampling: the LM
  writes the tokens, DDPM 200 steps, CFG w = 4 with the empty prompt and no acoustic condition in the null
  branch. Not run here.
- ``tiny`` (CPU tests): configs/tango.py:tiny's two-level U-Net (attention at the first down / last up level)
  with the acoustic path there; random tiny VAE, vocoder and T5; the LM run comes from the test.
- ``demo`` / ``demo_text`` (CPU, the embedded dataset; docs/experiments.md): the configs/tango.py:demo U-Net,
  codec and MiniLM text; its only cross-attention blocks are down_1 and up_0, i.e. the first CA-down and the
  last CA-up block, which host the acoustic path as in the paper (moving the attention to the full-resolution
  level instead made a step ~8x slower on CPU); ``demo_text`` is the same U-Net without the acoustic path
  (the experiment's text-only baseline). The LM: configs/dcldm_lm.py:demo over configs/dcldm_codec.py:tiny.

Run (accelerator scale; LM trained first, converted weights beforehand):
          python -m launch.precompute --system configs/dcldm.py --out /data/audiocaps_dcldm \\
              --system.conditioner.lm_workdir=/runs/dcldm_lm --config.source=audiocaps ...
          python -m launch.train --config configs/dcldm.py --workdir /runs/dcldm \\
              --config.train.init_from=/runs/tango --config.data.precomputed_dir=/data/audiocaps_dcldm \\
              --config.conditioner.lm_workdir=/runs/dcldm_lm
          python -m launch.sample --workdir /runs/dcldm --prompt "a dog barks" --out /tmp/samples
(``init_from`` a Tango run: the acoustic layers are new and zero-initialised, every other parameter loads.)
Expected (paper, AudioCaps): KL 1.22, FAD 2.24, FD 21.86 for CA-DOWN-#1 + CA-UP-#1 at w = 4.
Demo (measured, docs/experiments.md "DC-LDM at CPU size"; 12 min each, benchmarks/dcldm_acoustic.py):
          prompted-family accuracy 0.103 (7/68) text-only vs 0.044 (3/68) with the acoustic path, difference
          -0.059 [-0.158, +0.035]; the LM's own audio 0.015 (chance 0.059): no gain at this scale.
"""
import ml_collections

from configs.common import cpu_tiny_trainer, variant
from configs.tango import get_config as tango_config

VARIANTS = ("full", "tiny", "demo", "demo_text")


def acoustic_path(c, *, dim: int, blocks: tuple[str, ...], lm_workdir: str = ""):
    """The DC-LDM conditioner section and the U-Net's extra cross-attention, in place."""
    c.model.extra_contexts = [{"key": "acoustic", "dim": dim, "blocks": tuple(blocks)}]
    c.conditioner = ml_collections.ConfigDict({"name": "dcldm", "lm_workdir": lm_workdir, "source": "teacher",
                                               "representation": "codec"})
    c.diffusion.ref_drop_prob = 0.1     # the acoustic condition off (CFG's null branch), independent of the text
    return c


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/dcldm.py")
    c = tango_config({"full": "full", "tiny": "tiny"}.get(size, "demo"))
    c.name = f"dcldm_{size}"
    c.sampler.guidance_scale = 4.0
    if size == "full":
        c.diffusion.prediction_type = "epsilon"
        c.diffusion.min_snr_gamma = 0.0
        c.optimizer.schedule = "linear"
        acoustic_path(c, dim=128, blocks=("down_0", "up_3"))
    if size == "tiny":                   # tango tiny: attention at the first down / last up level
        acoustic_path(c, dim=8, blocks=("down_0", "up_1"))
        cpu_tiny_trainer(c, total_steps=20, batch_size=4, lr=1e-3)
    if size in ("demo", "demo_text"):
        if size == "demo":   # tango demo's U-Net: cross-attention only at the low level (down_1 / up_0)
            acoustic_path(c, dim=32, blocks=("down_1", "up_0"))
    return c
