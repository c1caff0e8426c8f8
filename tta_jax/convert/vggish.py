"""torchvggish checkpoint (``vggish-10086976.pth``) -> :class:`tta_jax.eval.vggish.VGGish` variables;
:func:`load_vggish` is the evaluation suite's VGGish loader.

Source layout: ``features.{0,3,6,8,11,13}`` (3x3 convs) and ``embeddings.{0,2,4}`` (fc 4096, 4096, 128)
(harritaylor/torchvggish, ``torchvggish/vggish.py``); the PCA params (``pproc.*``) are ignored.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from tta_jax.convert.common import KeyMapper, load_state_dict, shapes_of
from tta_jax.eval.vggish import init_variables

_TORCH_CONV_IDX = (0, 3, 6, 8, 11, 13)  # conv layers of torchvggish's ``features`` Sequential


def convert_vggish(state_dict: Mapping[str, np.ndarray], *, strict: bool = True, what: str = "VGGish checkpoint"):
    """torchvggish state dict -> flax variables {"params": ...}. PCA params (``pproc``) are ignored."""
    m = KeyMapper(state_dict)
    for k, i in enumerate(_TORCH_CONV_IDX):
        m.conv(f"features.{i}", f"params/conv{k}")
    for k, i in enumerate((0, 2, 4)):
        m.dense(f"embeddings.{i}", f"params/fc{k + 1}")
    target = shapes_of(jax.eval_shape(init_variables))
    return m.finish(target, strict=strict, what=what, ignore=lambda key: key.startswith("pproc."))


def load_vggish(path: str):
    variables, _ = convert_vggish(load_state_dict(path), what=str(path))
    return variables
