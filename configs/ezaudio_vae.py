"""EzAudio waveform VAE (Oobleck, 24 kHz mono, 50 Hz x 128 latent) trained with MRSTFT + KL + GAN.

Variants: ``full`` (default; the paper's VAE), ``tiny`` (CPU smoke runs: 8 kHz, hop 32 -> 250 Hz, 8-d
latent), ``micro`` (tiny with one stride stage, 2 STFT scales and 1 discriminator: what the tests compile).

Run:      python -m tta_jax.train.gan --config configs/ezaudio_vae.py --workdir /ckpt/ezaudio_vae \
              --config.extra.audio_source=wav_glob --config.extra.wav_glob='/data/audioset/**/*.wav'
Expected: (GPU/TPU scale, ~1M steps on AudioSet in the paper's setup) eval/mrstft falls below ~1.0,
          eval/si_sdr rises above ~10 dB, eval/log_mel_l1 below ~0.5; the DiT then trains on sampled
          latents of this VAE without scaling. Not run here (CPU only).
Tiny:     python -m tta_jax.train.gan --config configs/ezaudio_vae.py:tiny --workdir /tmp/ezaudio_vae_tiny
Expected (tiny; measured, 2 shared CPU cores, ~4 min incl. ~2 min compile): train MRSTFT (7 scales) 22.5
          over steps 1-10 -> 4.6 at step 50 -> 3.3 at step 300 (SC 15.6 -> 0.93, log-mag 6.9 -> 2.4);
          held-out eval/mrstft 3.87 (step 50) -> 3.54, eval/log_mel_l1 4.51 -> 3.77; eval/si_sdr stays
          around -40 dB (the phase is not learned in 300 steps at this size); disc_loss ~1.1-1.6 (hinge).

Recipe (docs/reference-architectures.md section 1): MRSTFT over 7 scales (FFT 1280..20, hop n/4),
EnCodec multi-scale STFT discriminator (hinge), adversarial 0.1, feature matching 5.0, KL 1e-4;
AdamW generator lr 1.5e-4 betas (0.8, 0.99), discriminator lr 3e-4; InverseLR schedule; 0.5 s segments.
"""
from configs.common import variant
from tta_jax.config import base_config

VARIANTS = ("full", "tiny", "micro")


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/ezaudio_vae.py")
    c = base_config()
    c.name = "ezaudio_vae"
    c.seed = 0
    c.builder = "tta_jax.train.gan:build_vae_training"   # tta_jax.train.gan or launch.train (one loop)
    c.codec.preset = "ezaudio_24k"
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1.5e-4
    c.optimizer.b1 = 0.8
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 1e-3
    c.optimizer.clip_norm = 0.0
    c.extra.disc_ffts = (2048, 1024, 512, 256, 128)
    c.extra.disc_filters = 32
    c.extra.disc_lr = 3e-4
    c.extra.disc_b1 = 0.8
    c.extra.disc_b2 = 0.99
    c.extra.disc_weight_decay = 1e-3
    c.extra.inv_gamma = 200000.0
    c.extra.inv_power = 0.5
    c.extra.lr_warmup = 0.999
    c.extra.stft_fft_sizes = (1280, 640, 320, 160, 80, 40, 20)
    c.extra.adv_kind = "hinge"
    c.extra.w_stft = 1.0
    c.extra.w_kl = 1e-4
    c.extra.w_adv = 0.1
    c.extra.w_fm = 5.0
    c.extra.adv_start_step = 0
    c.extra.segment_seconds = 0.5
    c.extra.eval_every = 2000
    c.extra.audio_source = "wav_glob"
    c.extra.wav_glob = ""
    c.train.total_steps = 1_000_000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.ckpt_every = 10000
    c.train.keep_ckpts = 3
    c.train.ema_decay = 0.0
    if size in ("tiny", "micro"):
        c.name = "ezaudio_vae_tiny"
        c.codec.preset = "tiny"
        c.codec.sample_rate = 8000
        c.codec.encoder_channels = 8
        c.codec.decoder_channels = 8
        c.codec.channel_multiples = (1, 2)
        c.codec.strides = (4, 8)
        c.codec.latent_dim = 8
        c.optimizer.lr = 1e-3           # tiny model, few steps: larger than the paper's 1.5e-4
        c.extra.disc_lr = 1e-3
        c.extra.lr_warmup = 0.0         # no exponential warm-up in a 300-step run
        c.extra.disc_ffts = (256, 128, 64)
        c.extra.disc_filters = 8
        c.extra.stft_fft_sizes = (512, 256, 128, 64, 32, 16, 8)
        c.extra.audio_source = "toy"
        c.extra.num_clips = 32
        c.extra.clip_seconds = 1.0
        c.extra.eval_every = 50
        c.train.total_steps = 300
        c.train.batch_size = 4
        c.train.log_every = 10
        c.train.ckpt_every = 100
        c.train.keep_ckpts = 1
    if size == "micro":  # compile-time-light: what tests/test_ezaudio_vae.py and test_ezaudio_e2e.py train
        c.name = "ezaudio_vae_micro"
        c.codec.channel_multiples = (1,)
        c.codec.strides = (32,)
        c.extra.stft_fft_sizes = (128, 32)
        c.extra.disc_ffts = (64,)
        c.extra.segment_seconds = 0.128
        c.train.batch_size = 2
    return c
