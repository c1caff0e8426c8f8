"""tta-jax: one JAX/Flax stack for text-to-audio diffusion (EzAudio, Auffusion, DreamAudio, SERST, DC-LDM).

Importing the package is cheap and never needs torch or TensorFlow. Subpackages:

- ``tta_jax.diffusion``: schedules, objectives, samplers and guidance as pure functions.
- ``tta_jax.nn``: shared linen layers (attention, RoPE, AdaLN variants, embeddings, sharding rules).
- ``tta_jax.denoisers``: EzAudio-DiT and the SD/Tango U-Net.
- ``tta_jax.audio`` / ``codecs`` / ``vocoders`` / ``text``: front ends, VAEs, vocoders, text encoders.
- ``tta_jax.train``: train state, optimizers, checkpointing and the loop.
- ``tta_jax.eval``: FD/FAD/KL/IS/CLAP metrics and embedders.
- ``tta_jax.convert``: PyTorch -> Flax checkpoint converters.
"""

__version__ = "0.1.0"
