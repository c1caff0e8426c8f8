"""Data the library reads at train / evaluation time (the *consuming* side of the data flow).

Modules (import the submodules; nothing heavy is imported here):
  records   deterministic msgpack record format of the precomputed ArrayRecord shards
  loader    grain pipeline over those shards (shuffle, shard by process, time crops, caption dropout,
            EzAudio masks) + global batch assembly; sequence [T, C] and image [H, T, C] latents
  masks     EzAudio span masks (pure numpy)
  crops     random log-mel crops as a checkpointable batch iterator (mel VAE, reference-encoder training)
  embedded  seeded General-MIDI demo dataset (tinysoundfont); the in-domain evaluator renders it
            (CLI: `python -m tta_jax.data.embedded OUT`)

The *preparing* side (sources, precompute, CLI configs) is the top-level `data_pipeline` package, which
imports this one; `tta_jax` never imports `data_pipeline` (tests/test_import_graph.py).
"""
