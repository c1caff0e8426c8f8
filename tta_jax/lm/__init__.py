"""Autoregressive codec-token language model (DC-LDM's AudioGen-style acoustic prior).

``delay`` (MusicGen/AudioGen delay interleaving of K codebooks, the teacher-forcing batch), ``transformer``
(``CodecLMConfig`` + presets, the ``CodecLM`` decoder with T5 cross-attention and an explicit KV cache,
``lm_loss``) and ``generate`` (one-jit ``lax.scan`` sampling with CFG, temperature / top-k / top-p).
Import from the submodules."""
