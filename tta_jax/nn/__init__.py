"""Shared layers: ``attention`` (self/cross attention, RoPE, QK-norm, masks, AttentionControl hooks),
``embeddings`` (diffusers-exact timestep embedding, TimestepMLP), ``layers`` (GEGLU/MLP feed-forward,
modulate, adaLN-zero, adaLN-single, AdaLN-SOLA, AdaGroupNorm) and ``sharding`` (logical axis names,
default rules, mesh helpers). Import from the submodules."""
