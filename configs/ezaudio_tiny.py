"""Tiny EzAudio (CPU): EzAudio-DiT at toy size on the tiny waveform VAE's latents (8 kHz, 250 Hz x 8),
toy text states (hashed byte embeddings, 32-d). Base of configs/ezaudio_stage{1,2,3}_tiny.py.

Full tiny recipe, end to end (~10 min on 2 shared CPU cores; tests/test_ezaudio_e2e.py runs a shorter one):
  python -m tta_jax.train.gan --config configs/ezaudio_vae_tiny.py --workdir /tmp/ez/vae
  python -m tta_jax.pipelines.ezaudio prepare_tiny --vae_workdir /tmp/ez/vae --out /tmp/ez/data
  python -m launch.train --config configs/ezaudio_stage1_tiny.py --workdir /tmp/ez/s1 \
      --config.data.precomputed_dir=/tmp/ez/data
  python -m launch.train --config configs/ezaudio_stage2_tiny.py --workdir /tmp/ez/s2 \
      --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s1
  python -m launch.train --config configs/ezaudio_stage3_tiny.py --workdir /tmp/ez/s3 \
      --config.data.precomputed_dir=/tmp/ez/data --config.extra.init_from=/tmp/ez/s2
Expected (measured with the 300-step tiny VAE, 48 toy clips; each stage ~1-2 min on 2 shared CPU cores,
          mostly compile): masked v-MSE (mean of 5 steps) stage 1 (400 steps) 0.85 at the start ->
          0.30 (mean of the last 50 steps); stage 2 (400 steps) starts at 0.33, i.e. where stage 1
          ended (expand_params: copied 81, new 43 = cross-attention, norm_context, context_embed), ->
          0.275; stage 3 (200 steps, copied 124, new 0) 0.30 -> 0.27.
"""
from configs.ezaudio_xl import ezaudio_base


def get_config():
    c = ezaudio_base("ezaudio_tiny", 32)
    c.name = "ezaudio_tiny"
    c.model.in_channels = 8
    c.model.out_channels = 8
    c.model.width = 32
    c.model.depth = 2
    c.model.num_heads = 2
    c.model.sola_rank = 4
    c.model.time_freq_dim = 32
    c.model.remat = False
    c.data.crop_frames = 32
    c.sampler.num_steps = 10
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 0
    c.train.compute_dtype = ""
    c.train.total_steps = 400
    c.train.batch_size = 8
    c.train.ema_decay = 0.0
    c.train.log_every = 5
    c.train.ckpt_every = 1000
    c.train.keep_ckpts = 1
    c.train.measure_peak = False
    c.train.progress_bar = False
    c.train.tensorboard = False
    c.train.async_ckpt = False
    c.mesh.data = 1
    c.mesh.num_devices = 1
    return c
