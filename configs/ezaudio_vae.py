"""EzAudio waveform VAE (Oobleck, 24 kHz mono, 50 Hz x 128 latent) trained with MRSTFT + KL + GAN.

Run:      python -m tta_jax.train.gan --config configs/ezaudio_vae.py --workdir /ckpt/ezaudio_vae \
              --config.extra.audio_source=wav_glob --config.extra.wav_glob='/data/audioset/**/*.wav'
Expected: (GPU/TPU scale, ~1M steps on AudioSet in the paper's setup) eval/mrstft falls below ~1.0,
          eval/si_sdr rises above ~10 dB, eval/log_mel_l1 below ~0.5; the DiT then trains on sampled
          latents of this VAE without scaling. Not run here (CPU only); see ezaudio_vae_tiny.py.

Recipe (docs/reference-architectures.md section 1): MRSTFT over 7 scales (FFT 1280..20, hop n/4),
EnCodec multi-scale STFT discriminator (hinge), adversarial 0.1, feature matching 5.0, KL 1e-4;
AdamW generator lr 1.5e-4 betas (0.8, 0.99), discriminator lr 3e-4; InverseLR schedule; 0.5 s segments.
"""
from tta_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "ezaudio_vae"
    c.seed = 0
    c.builder = "tta_jax.train.gan:build_vae_training"   # trained by tta_jax.train.gan, not launch.train
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
    return c
