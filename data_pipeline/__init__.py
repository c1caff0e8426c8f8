"""Data preparation: raw audio + captions -> precomputed latents (ArrayRecord shards + manifest.json).

Modules (imported lazily by callers; nothing heavy is imported here):
  sources          folder (CSV/JSONL), AudioCaps, Clotho, WavCaps, TFDS layouts; decode/resample/crop
  precompute       frozen codec + text encoder -> ArrayRecord shards + manifest.json (resumable, multi-host)
  precompute_config / build   the CLI's default config and its codec / text / example builders
  toy              toy codec / byte tokenizer for tests and CPU smoke runs
  tiny_ezaudio     toy-size EzAudio data (VAE latents + toy text states)
The reading side lives in the library: `tta_jax.data.records` (record format), `tta_jax.data.loader`
(grain batches), `tta_jax.data.masks`, `tta_jax.data.embedded` (demo dataset). This package may import
`tta_jax`; never the reverse.
CLI: `python -m launch.precompute`, `python -m tta_jax.data.embedded OUT`, `python -m launch.bench_data`.
"""
