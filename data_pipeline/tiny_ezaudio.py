"""Toy captioned data for the tiny EzAudio recipe (configs/ezaudio_stage1.py:tiny) and its tests.

Three kinds of synthetic clip (:func:`tta_jax.train.gan.toy_waveforms`: harmonic tone with vibrato,
chirp, filtered noise bursts) captioned by their kind, encoded by a trained tiny waveform VAE (sampled
latents, as the DiT trains on) and by the toy byte-embedding text encoder. CLI::

    python -m data_pipeline.tiny_ezaudio --vae_workdir /tmp/ez/vae --out /tmp/ez/data [--num_clips 48]
"""
from __future__ import annotations

import numpy as np

TOY_CAPTIONS = ("a harmonic tone with vibrato", "a sweeping chirp", "bursts of filtered noise")


def toy_captioned_examples(num: int, seconds: float, sample_rate: int, seed: int = 0):
    """``num`` :class:`data_pipeline.sources.Example` of toy waveforms, captioned by their kind."""
    from data_pipeline.sources import Example
    from tta_jax.train.gan import toy_waveforms

    waves = toy_waveforms(num, seconds, sample_rate, seed)
    return [Example(key=f"toy{i:04d}", caption=TOY_CAPTIONS[i % 3], audio=w, sample_rate=sample_rate,
                    split="train") for i, w in enumerate(waves)]


def prepare_tiny_data(vae_params, vae_config, out_dir: str, *, num_clips: int = 48, seconds: float = 0.5,
                      seed: int = 0, text_dim: int = 32, text_len: int = 16) -> dict:
    """Toy captioned clips -> sampled tiny-VAE latents [F, C] + toy text states [L, text_dim] -> precomputed
    ArrayRecords in ``out_dir``. -> the manifest."""
    from data_pipeline.precompute import PrecomputeConfig, run_precompute
    from data_pipeline.sources import AudioConfig
    from tta_jax.codecs.registry import oobleck_codec
    from tta_jax.text.registry import build_text_encoder

    codec = oobleck_codec(vae_config, vae_params, sample=True, sample_seed=seed)
    text = build_text_encoder({"name": "bytes_embed", "dim": text_dim, "max_len": text_len})
    exs = toy_captioned_examples(num_clips, seconds, vae_config.sample_rate, seed)
    cfg = PrecomputeConfig(audio=AudioConfig(sample_rate=vae_config.sample_rate, crop_seconds=seconds,
                                             normalize=None), shard_size=max(num_clips, 1), batch_size=8,
                           codec_id=codec.ident, text_id=text.ident, codec=codec.info, text=text.info)
    return run_precompute(exs, out_dir, lambda a: np.asarray(codec.encode(a)), text.encode, cfg, progress=False)


def main(argv=None):
    import argparse

    from tta_jax.config import load_config
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.gan import vae_config_of

    ap = argparse.ArgumentParser(prog="python -m data_pipeline.tiny_ezaudio",
                                 description="precompute toy captioned data with a trained tiny VAE")
    ap.add_argument("--vae_workdir", required=True)
    ap.add_argument("--vae_config", default="configs/ezaudio_vae.py:tiny")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num_clips", type=int, default=48)
    a = ap.parse_args(argv)
    params, step = load_params(a.vae_workdir, ema=False)
    m = prepare_tiny_data(params, vae_config_of(load_config(a.vae_config)), a.out, num_clips=a.num_clips)
    print(f"VAE step {step}: {m['num_records']} records, latent shape {m['shapes']['latent']}")


if __name__ == "__main__":
    main()
