"""Tiny EzAudio-style waveform VAE for CPU tests and smoke runs (8 kHz, hop 32 -> 250 Hz, 8-d latent).

Run:      python -m tta_jax.train.gan --config configs/ezaudio_vae_tiny.py --workdir /tmp/ezaudio_vae_tiny
Expected (measured, 2 shared CPU cores, ~4 min incl. ~2 min compile): train MRSTFT (7 scales) 22.5 over
          steps 1-10 -> 4.6 at step 50 -> 3.3 at step 300 (SC 15.6 -> 0.93, log-mag 6.9 -> 2.4);
          held-out eval/mrstft 3.87 (step 50) -> 3.54, eval/log_mel_l1 4.51 -> 3.77; eval/si_sdr stays
          around -40 dB (the waveform phase is not learned in 300 steps at this size); both networks
          update every step (disc_loss ~1.1-1.6, hinge).
tests/test_ezaudio_vae.py and test_ezaudio_e2e.py use a lighter variant (one stride stage, 2 STFT scales,
1 discriminator: MICRO_OVERRIDES below) to keep compile times down.
"""
from configs.ezaudio_vae import get_config as full_config

# Compile-time-light variant for tests: load_config("configs/ezaudio_vae_tiny.py", MICRO_OVERRIDES).
MICRO_OVERRIDES = ("codec.channel_multiples=(1,)", "codec.strides=(32,)", "extra.stft_fft_sizes=(128,32)",
                   "extra.disc_ffts=(64,)", "extra.segment_seconds=0.128", "train.batch_size=2")


def get_config():
    c = full_config()
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
    return c
