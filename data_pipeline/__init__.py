"""Data pipeline: raw audio + captions -> precomputed latents (ArrayRecord) -> grain batches.

Modules (imported lazily by callers; nothing heavy is imported here):
  embedded   seeded General-MIDI demo set (tinysoundfont), exported as a folder (wav + metadata.csv)
  sources    folder (CSV/JSONL), AudioCaps, Clotho, WavCaps, TFDS layouts; decode/resample/crop
  precompute frozen codec + text encoder -> ArrayRecord shards + manifest.json (resumable, multi-host)
  records    deterministic msgpack record format
  loader     grain pipeline (shuffle, shard by process, crops, caption dropout, masks) + global batch
  masks      EzAudio span masks (pure numpy)
  toy        toy codec / byte tokenizer for tests and CPU smoke runs
CLI: `python -m launch.precompute`, `python -m data_pipeline.embedded OUT`, `python -m launch.bench_data`.
"""
