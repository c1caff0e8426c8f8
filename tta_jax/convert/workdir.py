"""A converted system -> a sampling workdir (what ``python -m launch.sample --workdir OUT`` loads), shared by
the released-folder families of :mod:`tta_jax.convert.registry` (``auffusion``, ``tango``).

:func:`write_workdir` writes ``OUT/config.json``, ``OUT/checkpoints/0`` (``{"params": ...}``) and
``OUT/assets/latent.json`` (one example's latent shape [H, T, C], from ``config.data.crop_frames`` latent
frames and the codec section: ``n_mels`` 0 means the mel preset's, divided by the VAE's downsampling).
:func:`check_components` loads the codec and text encoder the config names, so a bad file fails at conversion
(naming it) rather than at sampling.
"""
from __future__ import annotations

import os

from tta_jax.convert.common import ConversionError, collect_reports


def image_latent_shape(codec_section, frames: int) -> tuple[int, int, int] | None:
    """[H, T, C] of one example of ``frames`` latent frames for a mel-image codec section (``kl_mel_image``,
    ``audioldm_mel_vae``: defaults of its registry entry filled in), None for other codecs. Loads nothing."""
    from tta_jax.audio.mel import PRESETS
    from tta_jax.codecs.kl_vae import CONFIGS
    from tta_jax.codecs.registry import resolve_codec_section

    s = resolve_codec_section(codec_section)
    if "vae_config" not in s or "mel" not in s:
        return None
    n_mels = int(s.get("n_mels") or 0) or PRESETS[s["mel"]].n_mels
    vae = CONFIGS[s["vae_config"]]
    return n_mels // vae.downsample_factor, int(frames), vae.latent_channels


def check_components(config, *, text: bool = True) -> None:
    """Loads the codec (VAE + vocoder) and, with ``text``, the text encoder(s) ``config`` names; a converter
    error keeps its own message (it names the file)."""
    from tta_jax.codecs.registry import build_codec
    from tta_jax.text.registry import build_text_encoder

    parts = [(build_codec, config.codec)] + ([(build_text_encoder, config.text)] if text else [])
    for build, section in parts:
        with collect_reports():
            try:
                build(section)
            except ConversionError as e:
                if e.report is None:
                    raise
                raise ConversionError(str(e), details=e.report.details()) from None


def write_workdir(out: str, config, params) -> str:
    """``out/config.json`` + ``out/checkpoints/0`` ({"params": ...}) + ``out/assets/latent.json`` (when
    ``config.data.crop_frames`` is set and the codec is a mel-image one). -> the checkpoint directory."""
    import jax
    import jax.numpy as jnp

    from tta_jax.pipelines.tta import save_assets
    from tta_jax.train.checkpoint import Checkpointer

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), max_to_keep=1, async_save=False)
    try:
        ckpt.save(0, {"params": jax.tree_util.tree_map(jnp.asarray, params)}, None, force=True)
    finally:
        ckpt.close()
    frames = int(config.data.crop_frames or 0)
    shape = image_latent_shape(config.codec, frames) if frames else None
    if shape is not None:
        save_assets(config, out, shape)
    return os.path.join(out, "checkpoints")


__all__ = ["image_latent_shape", "check_components", "write_workdir"]
