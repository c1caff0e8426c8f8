"""Conditioning encoders trained with (or for) a generator, other than the text encoders in ``tta_jax.text``.

``reference_encoder``: the SERST reference-audio encoder (a masked ResNet-34 with squeeze-and-excitation
blocks and attentive statistics pooling over 80-bin log-mels, giving an L2-normalised embedding [B, out_dim])
and its log-mel front end :func:`~tta_jax.conditioners.reference_encoder.reference_log_mel`.
``serst``: the SERST prompt adapter (text x reference cross-attention -> style embedding) and the denoiser
wrapper that feeds it to the ``style`` input of either backbone. ``registry``: ``config.conditioner`` -> the
wrapper and the reference features precompute and sampling compute. Import from the submodules.
"""
