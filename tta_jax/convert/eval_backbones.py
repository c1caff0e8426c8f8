"""Weight loaders of the evaluation suite's backbones, for :func:`tta_jax.eval.suite.run_suite`'s ``loaders``.

``LOADERS[name](path)``: ``"cnn14"`` -> CNN14 variables (:func:`tta_jax.convert.panns.load_cnn14`),
``"vggish"`` -> VGGish variables (:func:`tta_jax.convert.vggish.load_vggish`), ``"clap"`` -> a
:class:`tta_jax.eval.clap.ClapEmbedder` (:func:`tta_jax.convert.clap_audio.load_clap_embedder`).
They live here, with the converters, because loaders depend on models and never the reverse: the
``tta_jax.eval`` package does not import ``tta_jax.convert`` (tests/test_import_graph.py).
"""
from __future__ import annotations

from typing import Any, Callable

from tta_jax.convert.clap_audio import load_clap_embedder
from tta_jax.convert.panns import load_cnn14
from tta_jax.convert.vggish import load_vggish

LOADERS: dict[str, Callable[[str], Any]] = {"cnn14": load_cnn14, "vggish": load_vggish, "clap": load_clap_embedder}
