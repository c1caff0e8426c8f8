"""Official PANNs CNN14 checkpoint (``Cnn14_16k_mAP=0.438.pth``, PyTorch) -> :class:`tta_jax.eval.panns.Cnn14`
variables {params, batch_stats}; :func:`load_cnn14` is the evaluation suite's CNN14 loader.

Source layout: ``bn0``, ``conv_block{1..6}.{conv1,conv2}`` (no bias) + ``.{bn1,bn2}``, ``fc1``,
``fc_audioset`` (qiuqiangkong/audioset_tagging_cnn, ``pytorch/models.py``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tta_jax.convert.common import KeyMapper, load_state_dict, shapes_of
from tta_jax.eval.panns import CNN14_16K, Cnn14Config, abstract_variables


def convert_cnn14(state_dict: Mapping[str, np.ndarray], config: Cnn14Config = CNN14_16K, *,
                  strict: bool = True, what: str = "Cnn14 checkpoint"):
    """PyTorch CNN14 state dict (``checkpoint["model"]``) -> flax variables {params, batch_stats}.

    The frozen STFT / mel buffers (``spectrogram_extractor.*``, ``logmel_extractor.*``) are recomputed,
    not loaded; ``num_batches_tracked`` is ignored. Returns (variables, ConversionReport).
    """
    m = KeyMapper(state_dict)

    def bn(src, dst):
        m.raw(f"{src}.weight", f"params/{dst}/scale")
        m.raw(f"{src}.bias", f"params/{dst}/bias")
        m.raw(f"{src}.running_mean", f"batch_stats/{dst}/mean")
        m.raw(f"{src}.running_var", f"batch_stats/{dst}/var")

    bn("bn0", "bn0")
    for i in range(1, len(config.widths) + 1):
        for j in (1, 2):
            m.conv(f"conv_block{i}.conv{j}", f"params/conv_block{i}/conv{j}", bias=False)
            bn(f"conv_block{i}.bn{j}", f"conv_block{i}/bn{j}")
    m.dense("fc1", "params/fc1")
    m.dense("fc_audioset", "params/fc_audioset")
    ignore = (lambda k: k.startswith(("spectrogram_extractor.", "logmel_extractor."))
              or k.endswith("num_batches_tracked"))
    return m.finish(shapes_of(abstract_variables(config)), strict=strict, what=what, ignore=ignore)


def load_cnn14(path: str, config: Cnn14Config = CNN14_16K):
    """Loads the official ``Cnn14_16k_mAP=0.438.pth`` (or a safetensors export) -> flax variables."""
    sd = load_state_dict(path, key="model") if not str(path).endswith(".safetensors") else load_state_dict(path)
    variables, _ = convert_cnn14(sd, config, what=str(path))
    return variables
