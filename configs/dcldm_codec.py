"""A small EnCodec trained from scratch (tta_jax.train.encodec; L1 + multi-resolution STFT + commitment, EMA
codebooks seeded from the first batch, no GAN): DC-LDM's token source at CPU size.

Variants: ``tiny`` (default: 16 kHz, 50 Hz frames (upsampling_ratios (8, 5, 4, 2), hop 320), hidden_size 32,
num_filters 8, 4 codebooks x 64 codes = 1.2 kbps (4 x log2(64) x 50 / 1000), 1 s crops of the embedded
General-MIDI dataset; 1000 steps, ~10-15 min on 2 CPU cores) and ``micro`` (shrunk to 2 x 16 codes at 2 kHz,
hop 4, no LSTM, on synthetic tones: what tests/test_encodec_train.py trains).

Run:      python -m launch.train --config configs/dcldm_codec.py:tiny --workdir runs/dcldm_codec_tiny
Then:     the codec registry reads the run: ``{"name": "encodec_tokens", "workdir": "runs/dcldm_codec_tiny"}``
          (or ``"encodec"`` for continuous latents); for configs/dcldm_lm.py: ``--config.codec.workdir=runs/
          dcldm_codec_tiny --config.codec.weights= --config.codec.preset= --config.codec.bandwidth=0``. The
          architecture comes from the run's config.json (``model``: an ``encodec_preset`` + EncodecConfig
          fields), the params (codebooks included) from its latest checkpoint; ``bandwidth`` 0 = the smallest
          target bandwidth = 1.2 kbps = all 4 codebooks.
Expected (tiny; measured on a shared 2-core CPU, 2026-12-02: 500 steps then resumed to 1000, ~12 min in all with
          ~1 min of data synthesis + compile, 1-2 steps/s): train loss 3.59 (steps 1-10) -> 2.61 (100) -> ~2.1
          (1000) (MRSTFT 3.56 -> ~2.05, spectral convergence 0.99 -> ~0.8); held-out eval/log_mel_l1 2.63 (step
          100) -> 1.54 (1000), eval/mrstft 2.91 -> 2.14, eval/si_sdr -36 -> -29 dB (magnitudes are learned, the
          phase is not at this size without a GAN); per-batch codebook perplexity ~20-30 of 64, usage ~0.7-0.85.
          With the log-mel term (``--config.extra.w_mel=1``, the DC-LDM experiment's codec, docs/experiments.md):
          937 steps in 12 min, held-out log-mel L1 1.87 (step 100) -> 1.14 (900), SI-SDR ~ -40 dB.
"""
from configs.common import cpu_tiny_trainer, variant
from tta_jax.config import base_config

VARIANTS = ("tiny", "micro")


def get_config(arg=None):
    size = variant(arg, VARIANTS, "tiny", "configs/dcldm_codec.py")
    c = base_config()
    c.name = f"dcldm_codec_{size}"
    c.seed = 0
    c.builder = "tta_jax.train.encodec:build_task"
    # config.model: a tta_jax.codecs.encodec.CONFIGS preset (``encodec_preset``; not ``preset``, which names a
    # diffusion denoiser to the config checks) + EncodecConfig field overrides
    c.model.encodec_preset = "audiogen_16khz"
    c.model.sampling_rate = 16000
    c.model.upsampling_ratios = (8, 5, 4, 2)      # hop 320 -> 50 Hz
    c.model.hidden_size = 32
    c.model.codebook_dim = 32
    c.model.num_filters = 8
    c.model.num_lstm_layers = 1
    c.model.codebook_size = 64
    c.model.target_bandwidths = (1.2,)            # 4 codebooks x 6 bits x 50 Hz
    c.extra.audio_source = "embedded"
    c.extra.num_clips = 200
    c.extra.crop_seconds = 1.0
    c.extra.w_l1 = 1.0
    c.extra.w_stft = 1.0
    c.extra.w_mel = 0.0
    c.extra.commitment_weight = 1.0
    c.extra.ema_decay = 0.99
    c.extra.stft_fft_sizes = (2048, 1024, 512, 256, 128, 64)
    c.extra.eval_every = 100
    c.optimizer.name = "adamw"
    c.optimizer.schedule = "constant"
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.9
    cpu_tiny_trainer(c, total_steps=1000, batch_size=8, lr=1e-3)   # ~0.6-0.9 s a step on 2 CPU cores
    c.optimizer.clip_norm = 1.0
    c.train.log_every = 10
    if size == "micro":
        c.model.sampling_rate = 2000                # the toy tones need >= 640 Hz
        c.model.upsampling_ratios = (2, 2)        # hop 4 -> 500 Hz
        c.model.hidden_size = 8
        c.model.codebook_dim = 8
        c.model.num_filters = 4
        c.model.num_lstm_layers = 0               # no LSTM: compiles in half the time
        c.model.codebook_size = 16
        c.model.target_bandwidths = (4.0,)        # 2 codebooks x 4 bits x 500 Hz
        c.extra.audio_source = "toy"
        c.extra.num_clips = 12
        c.extra.clip_seconds = 1.0
        c.extra.crop_seconds = 0.032              # 64 samples = 16 frames
        c.extra.stft_fft_sizes = (32, 16, 8)
        c.extra.eval_every = 0
        c.train.total_steps = 4
        c.train.batch_size = 4
    return c
