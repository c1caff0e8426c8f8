"""SERST's reference encoder pretrained as a sound-event classifier (tta_jax/train/reference_encoder.py).

The reference encoder of ``configs/tango.py:demo_serst`` / ``demo_serst_dit`` (ResNet-SE with attentive statistics
pooling over 2 s 80-bin 16 kHz log-mels, tiny preset, 128-d, global input normalisation) with a normalised-softmax
head over the embedded dataset's ``family`` labels (17 sources), trained on the single-event clips of the train
split. A SERST run loads it with
``--config.train.init_parts='("RUN#encoder@conditioner/encoder",)'`` (``configs/tango.py:demo_serst_dit_pre``
does, keeping it frozen).

Run:      python -m launch.train --config configs/serst_encoder.py --workdir runs/serst_encoder
Expected (measured, 2-core CPU, docs/experiments.md 2026-12-03): 600 steps in ~7 min; batch accuracy 0.11 (step 25)
          -> 0.50 (200) -> 0.88 (600); 0.46-0.49 (31-33/68, two runs) on 68 held-out single-event clips (17 families;
          PYTHONPATH=. python -m benchmarks.reference_encoder --workdir runs/serst_encoder --out runs/enc_eval).
Longer (docs/experiments.md 2026-12-05; the encoder of the 2026-12-05 SERST runs):
          python -m launch.train --config configs/serst_encoder.py --workdir runs/serst_encoder2 --config.seed=1 \
              --config.extra.num_clips=6000 --config.train.total_steps=2000
Expected: 2000 steps in ~14 min; batch accuracy 0.70 (750) -> 0.93 (2000); 0.59 (40/68, p 1e-31) held out.
"""
from configs.common import cpu_tiny_trainer
from tta_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "serst_encoder"
    c.seed = 0
    c.builder = "tta_jax.train.reference_encoder:build_task"
    # the encoder fields of configs/tango.py:demo_serst (tta_jax.conditioners.serst.encoder_config)
    c.model.encoder = {"preset": "tiny", "out_dim": 128, "input_norm": "global"}
    c.extra.audio_source = "embedded"
    c.extra.num_clips = 2000
    c.extra.label = "family"
    c.extra.crop_seconds = 2.0
    c.extra.logit_scale = 16.0
    c.optimizer.name = "adamw"
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay = 1e-4
    cpu_tiny_trainer(c, total_steps=600, batch_size=32, lr=2e-3)
    c.optimizer.warmup_steps = 30
    c.train.log_every = 25
    return c
