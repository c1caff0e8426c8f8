"""Train a 2-D KL-VAE on mel "images" (Auffusion's mapping) through the one training loop.

Auffusion fine-tunes Stable Diffusion's pixel VAE; its users ask how to train one for their own mels. This
task does it from scratch at any size (``configs/auffusion_vae.py``): clips -> log-mel (``config.codec``'s
mel front end) -> image ([-1, 1], :func:`tta_jax.codecs.mel_image.mel_to_vae_image`) -> random crops of
``data.crop_frames`` mel frames -> KLVAE. Loss per example: mean |x - D(z)| over the image + ``kl_weight`` *
KL(q(z|x) || N(0, I)) / (pixels), z = mean + std * eps (the diffusers/LDM recipe without the perceptual and
adversarial terms; for CPU sizes the L1 term alone already gives usable reconstructions).

The run's workdir is what the ``kl_mel_image`` codec reads (``config.codec.vae_workdir``): the params of the
latest checkpoint, the architecture from ``config.json`` (``model.vae_config`` + ``model`` overrides) and
``assets/latent_stats.json`` (the latent std over the training clips, whose inverse becomes the codec's
``scaling_factor`` so the diffusion model sees unit-variance latents).

Audio sources (``extra.audio_source``): ``"embedded"`` (the package's General-MIDI dataset,
``extra.num_clips`` clips, those of split ``data.split``) or ``"wav_glob"`` (``extra.wav_glob``, any rate,
resampled).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.data.crops import MelCropIterator
from tta_jax.errors import ConfigError

LATENT_STATS = "latent_stats.json"


def vae_config_of(config):
    """``config.model`` (``vae_config`` preset + KLVAEConfig field overrides) -> KLVAEConfig."""
    from tta_jax.codecs import kl_vae

    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    name = fields.pop("vae_config", "sd_tiny")
    if name not in kl_vae.CONFIGS:
        raise ConfigError(f"config.model.vae_config={name!r}; expected one of {sorted(kl_vae.CONFIGS)}")
    known = {f.name for f in dataclasses.fields(kl_vae.KLVAEConfig)}
    bad = sorted(set(fields) - known)
    if bad:
        raise ConfigError(f"config.model.{bad[0]} is not a KLVAEConfig field")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return dataclasses.replace(kl_vae.CONFIGS[name], **fields)


def mel_config_of(config):
    """``config.codec.mel`` (a :data:`tta_jax.audio.mel.PRESETS` name) with ``codec.n_mels`` -> MelConfig."""
    from tta_jax.audio.mel import PRESETS

    name = config.codec.get("mel", "auffusion")
    if name not in PRESETS:
        raise ConfigError(f"config.codec.mel={name!r}; expected one of {sorted(PRESETS)}")
    mel = PRESETS[name]
    n = int(config.codec.get("n_mels", 0) or 0)
    return mel.replace(n_mels=n) if n else mel


def training_audio(config, sample_rate: int) -> list[np.ndarray]:
    """The clips of ``config.data.source`` at ``sample_rate``: list of float32 [N]."""
    e = config.extra
    source = e.get("audio_source", "embedded")
    if source == "embedded":
        from tta_jax.data.embedded import EmbeddedConfig, iter_embedded

        cfg = EmbeddedConfig(num_clips=int(e.get("num_clips", 200)), seed=int(config.seed), sample_rate=sample_rate)
        split = config.data.get("split", "") or "train"
        return [a.astype(np.float32) for row, a in iter_embedded(cfg, num_workers=2) if row["split"] == split]
    if source == "wav_glob":
        from tta_jax.train.gan import wav_waveforms

        return wav_waveforms(e.wav_glob, sample_rate)
    raise ConfigError(f"config.extra.audio_source={source!r}: expected 'embedded' or 'wav_glob'")


def log_mels(clips: list[np.ndarray], mel, batch: int = 16) -> list[np.ndarray]:
    """Clips -> log-mels [frames, M] each (jitted, in batches of equal length)."""
    from tta_jax.audio.mel import log_mel_spectrogram

    fn = jax.jit(lambda a: log_mel_spectrogram(a, mel))
    out = []
    for i in range(0, len(clips), batch):
        group = clips[i:i + batch]
        n = max(c.size for c in group)
        a = np.stack([np.pad(c, (0, n - c.size)) for c in group])
        lm = np.asarray(fn(jnp.asarray(a)))
        out += [lm[j, :mel.num_frames(c.size)] for j, c in enumerate(group)]
    return out


def make_loss_fn(vae_cfg, image: str, kl_weight: float):
    """-> ``loss_fn(params, log_mel [B, T, M], rng) -> (loss, metrics)``."""
    from tta_jax.codecs.kl_vae import KLVAE, kl_loss, sample_latent
    from tta_jax.codecs.mel_image import mel_to_vae_image

    vae = KLVAE(vae_cfg)

    def loss_fn(params, batch, rng):
        x = mel_to_vae_image(batch, image)
        mean, std = vae.apply({"params": params}, x, method="encode")
        z = sample_latent(rng, mean, std)
        y = vae.apply({"params": params}, z, method="decode")
        rec = jnp.mean(jnp.abs(y - x))
        kl = jnp.mean(kl_loss(mean, std)) / float(np.prod(x.shape[1:]))
        return rec + kl_weight * kl, {"l1": rec, "kl": kl, "latent_std": jnp.std(mean)}

    return loss_fn


def latent_std(vae_cfg, params, image: str, mels: list[np.ndarray], crop: int) -> float:
    """Std of the posterior means over (at most 64) crops of the training mels."""
    from tta_jax.codecs.kl_vae import KLVAE
    from tta_jax.codecs.mel_image import mel_to_vae_image

    batch = next(MelCropIterator(mels, min(64, max(len(mels), 1)), crop, seed=12345))
    mean, _ = KLVAE(vae_cfg).apply({"params": params}, mel_to_vae_image(jnp.asarray(batch), image), method="encode")
    return float(jnp.std(mean))


def build_task(config, mesh=None):  # noqa: ARG001 - the loop shards the batch over the mesh
    """``config.builder`` entry (``configs/auffusion_vae.py``): a :class:`tta_jax.train.loop.Task` whose
    ``save_assets`` writes ``assets/latent_stats.json``."""
    from tta_jax.codecs.kl_vae import init_params
    from tta_jax.train.loop import Task

    vae_cfg = vae_config_of(config)
    mel = mel_config_of(config)
    image = config.codec.get("image", "auffusion")
    crop = int(config.data.crop_frames)
    f = vae_cfg.downsample_factor
    if crop <= 0 or crop % f or mel.n_mels % f:
        raise ConfigError(f"config.data.crop_frames={crop} and the {mel.n_mels} mels must be positive multiples "
                          f"of the VAE's downsampling factor {f}")
    mels = log_mels(training_audio(config, mel.sample_rate), mel)
    it = MelCropIterator(mels, config.train.batch_size // jax.process_count(), crop,
                         seed=config.seed + 1000 * jax.process_index())
    loss_fn = make_loss_fn(vae_cfg, image, float(config.extra.get("kl_weight", 1e-6)))

    def save_assets(workdir):
        from tta_jax.train.checkpoint import load_params

        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            return []
        params, step = load_params(workdir, ema=False)
        stats = {"latent_std": latent_std(vae_cfg, params, image, mels, crop), "step": int(step)}
        path = os.path.join(workdir, "assets", LATENT_STATS)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(stats, fh)
        return [path]

    return Task(init_fn=lambda rng: init_params(vae_cfg, rng), loss_fn=loss_fn, train_iter=it,
                save_assets=save_assets)


def load_trained_vae(workdir: str, where: str = "config.codec.vae_workdir") -> tuple[Any, dict, float]:
    """A run of this task -> (KLVAEConfig, params of its latest checkpoint, latent std)."""
    import ml_collections

    from tta_jax.train.checkpoint import load_params

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise ConfigError(f"{where}={workdir!r} has no config.json: not a KL-VAE training run "
                          f"(python -m launch.train --config configs/auffusion_vae.py:tiny --workdir ...)")
    with open(cfg_path) as fh:
        vae_cfg = vae_config_of(ml_collections.ConfigDict(json.load(fh)))
    params, _ = load_params(workdir, ema=False)
    stats_path = os.path.join(workdir, "assets", LATENT_STATS)
    std = 1.0
    if os.path.exists(stats_path):
        with open(stats_path) as fh:
            std = float(json.load(fh)["latent_std"])
    return vae_cfg, params, std


__all__ = ["build_task", "vae_config_of", "mel_config_of", "make_loss_fn", "load_trained_vae",
           "LATENT_STATS"]
