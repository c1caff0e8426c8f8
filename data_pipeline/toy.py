"""The toy codec and byte tokenizer, now in the library (``tta_jax`` never imports ``data_pipeline``):
:class:`tta_jax.codecs.frame.FrameCodec` (registry codec ``toy``) and :func:`tta_jax.text.bytes.byte_tokens`
(registry text encoder ``bytes``). Re-exported here for the tests and benchmarks that import them from
``data_pipeline.toy``.
"""
from tta_jax.codecs.frame import FrameCodec  # noqa: F401
from tta_jax.text.bytes import byte_tokens  # noqa: F401

__all__ = ["FrameCodec", "byte_tokens"]
