"""EzAudio-L text-to-audio (paper hyper-parameters): DiT-L (width 1024, 24 blocks+1, 16 heads x 64,
AdaLN-SOLA rank 32), FLAN-T5-large text (1024-d), 24 kHz Oobleck VAE latents (50 Hz x 128).

Same recipe and stages as configs/ezaudio_xl.py (use ``--config.model.preset=ezaudio_l
--config.model.context_dim=1024`` on the stage configs, or this file for stage 3). Not run here.
Run:      python -m launch.train --config configs/ezaudio_l.py --workdir /ckpt/ezaudio_l \
              --config.data.precomputed_dir=/data/audiocaps_ezaudio_vae_t5large
Expected: slightly behind EzAudio-XL on AudioCaps (paper Table II).
"""
from configs.ezaudio_xl import ezaudio_base


def get_config():
    return ezaudio_base("ezaudio_l", 1024)
