"""transformers ``EncodecModel`` checkpoints -> :class:`tta_jax.codecs.encodec.EncodecModel` params.

Source layout (a folder with ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, as
``save_pretrained`` writes it; ``n`` = len(upsampling_ratios), ``R`` = num_residual_layers, ``S = R + 2``)::

  encoder.layers.0                               -> encoder/conv_in
  encoder.layers.{1 + i S + j}                   -> encoder/block_{i}_res_{j}  (j < R; ELU at 1 + i S + R)
      .block.1 / .block.3 / .shortcut            ->   conv1 / conv2 / shortcut
  encoder.layers.{1 + i S + R + 1}               -> encoder/block_{i}_down
  encoder.layers.{1 + n S}.lstm                  -> encoder/lstm            (ELU at 2 + n S)
  encoder.layers.{3 + n S}                       -> encoder/conv_out
  decoder.layers.0 / 1.lstm                      -> decoder/conv_in / decoder/lstm
  decoder.layers.{3 + i S}                       -> decoder/block_{i}_up     (ConvTranspose1d; ELU at 2 + i S)
  decoder.layers.{4 + i S + j}                   -> decoder/block_{i}_res_{j}
  decoder.layers.{3 + n S}                       -> decoder/conv_out        (ELU at 2 + n S)
  quantizer.layers.{q}.codebook.embed            -> quantizer/codebooks[q]

Each conv module holds ``conv.weight`` (weight norm: ``conv.weight_g``/``conv.weight_v`` or
``conv.parametrizations.weight.original0/1``, folded here) and ``conv.bias``, plus ``norm.weight``/``norm.bias``
for ``time_group_norm``. LSTM layer ``l``: ``lstm.weight_ih_l{l}`` [4H, H] / ``weight_hh_l{l}`` -> kernels
[H, 4H], ``bias_ih_l{l} + bias_hh_l{l}`` -> bias. The codebooks' EMA buffers (``cluster_size``,
``embed_avg``, ``inited``) are not params: :func:`ema_state_from_state_dict` reads the first two for
fine-tuning with :func:`tta_jax.codecs.encodec.rvq_ema_update`.

A missing source key fails naming the key, the target param and the expected source shape; a mis-shaped
tensor names the key and both shapes; a leftover key is reported as unexpected.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping

import numpy as np

from tta_jax.codecs.encodec import EncodecConfig, abstract_params, from_hf_config, get_config
from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, fold_weight_norms_checked,
                                    load_hf_state_dict, read_hf_config, shapes_of, torch_conv_to_flax,
                                    torch_conv_transpose_to_flax)

_EMA_BUFFERS = (".codebook.inited", ".codebook.cluster_size", ".codebook.embed_avg")


def _module_names(cfg: EncodecConfig) -> Iterator[tuple[str, str, str]]:
    """(source module, target module, kind) with kind in {conv, convt, lstm}."""
    n, r = len(cfg.upsampling_ratios), cfg.num_residual_layers
    s = r + 2

    def res(src, dst):
        yield f"{src}.block.1", f"{dst}/conv1", "conv"
        yield f"{src}.block.3", f"{dst}/conv2", "conv"
        if cfg.use_conv_shortcut:
            yield f"{src}.shortcut", f"{dst}/shortcut", "conv"

    e, d = "encoder.layers", "decoder.layers"
    yield f"{e}.0", "encoder/conv_in", "conv"
    for i in range(n):
        for j in range(r):
            yield from res(f"{e}.{1 + i * s + j}", f"encoder/block_{i}_res_{j}")
        yield f"{e}.{1 + i * s + r + 1}", f"encoder/block_{i}_down", "conv"
    if cfg.num_lstm_layers:
        yield f"{e}.{1 + n * s}", "encoder/lstm", "lstm"
    yield f"{e}.{3 + n * s}", "encoder/conv_out", "conv"
    yield f"{d}.0", "decoder/conv_in", "conv"
    if cfg.num_lstm_layers:
        yield f"{d}.1", "decoder/lstm", "lstm"
    for i in range(n):
        yield f"{d}.{3 + i * s}", f"decoder/block_{i}_up", "convt"
        for j in range(r):
            yield from res(f"{d}.{4 + i * s + j}", f"decoder/block_{i}_res_{j}")
    yield f"{d}.{3 + n * s}", "decoder/conv_out", "conv"


class _Mapper(KeyMapper):
    """KeyMapper that records missing source keys with the source shape it expected."""

    def __init__(self, sd, target: Mapping[str, tuple]):
        super().__init__(sd)
        self.target = target
        self.absent: list[str] = []

    def map(self, src: str, dst: str, fn: Callable | None, expected_src: Callable[[tuple], tuple]) -> None:
        shape = self.target.get(dst)
        if not self.has(src):
            want = "?" if shape is None else tuple(expected_src(tuple(shape)))
            self.absent.append(f"{src!r} (for {dst}, expected shape {want})")
            return
        self.raw(src, dst, fn)


def _conv_shape(k_in_out):  # flax [k, in, out] -> torch Conv1d [out, in, k]
    k, i, o = k_in_out
    return (o, i, k)


def _convt_shape(k_in_out):  # flax [k, in, out] -> torch ConvTranspose1d [in, out, k]
    k, i, o = k_in_out
    return (i, o, k)


def convert_encodec(state_dict: Mapping[str, np.ndarray], config: EncodecConfig | str | Mapping, *,
                    strict: bool = True, what: str = "EnCodec checkpoint") -> tuple[dict, ConversionReport]:
    """Flat transformers ``EncodecModel`` state dict -> (EncodecModel params, report).

    Args:
      state_dict: ``{name: array}`` (numpy or anything ``np.asarray`` accepts).
      config: :class:`EncodecConfig`, a ``CONFIGS`` name or a transformers config dict.
      strict: raise :class:`ConversionError` on any missing/unexpected/mis-shaped key.
    """
    if isinstance(config, str):
        cfg = get_config(config)
    elif isinstance(config, Mapping):
        cfg = from_hf_config(config)
    else:
        cfg = config
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(_EMA_BUFFERS)}
    sd = fold_weight_norms_checked(sd, what)
    target = shapes_of(abstract_params(cfg))
    m = _Mapper(sd, target)
    ident = lambda s: s  # noqa: E731
    for src, dst, kind in _module_names(cfg):
        if kind == "lstm":
            for layer in range(cfg.num_lstm_layers):
                base = f"{src}.lstm"
                for name in ("ih", "hh"):
                    m.map(f"{base}.weight_{name}_l{layer}", f"{dst}/layer_{layer}_kernel_{name}",
                          lambda w: np.ascontiguousarray(np.asarray(w).T), lambda s: s[::-1])
                b_ih, b_hh = f"{base}.bias_ih_l{layer}", f"{base}.bias_hh_l{layer}"
                if m.has(b_ih) and m.has(b_hh):
                    m.put(f"{dst}/layer_{layer}_bias", m.take(b_ih) + m.take(b_hh), f"{b_ih} + {b_hh}")
                else:
                    for b in (b_ih, b_hh):
                        if not m.has(b):
                            m.absent.append(f"{b!r} (for {dst}/layer_{layer}_bias, expected shape "
                                            f"{tuple(target.get(f'{dst}/layer_{layer}_bias', ('?',)))})")
            continue
        w_fn, w_shape = ((torch_conv_to_flax, _conv_shape) if kind == "conv"
                         else (torch_conv_transpose_to_flax, _convt_shape))
        w = m.src.get(f"{src}.conv.weight")
        if w is not None and np.ndim(w) != 3:
            m.take(f"{src}.conv.weight")
            m.absent.append(f"{src + '.conv.weight'!r} has shape {np.shape(w)}, expected a 3-D "
                            f"{'Conv1d' if kind == 'conv' else 'ConvTranspose1d'} weight "
                            f"{w_shape(tuple(target.get(f'{dst}/conv/kernel', (0, 0, 0))))}")
        else:
            m.map(f"{src}.conv.weight", f"{dst}/conv/kernel", w_fn, w_shape)
        m.map(f"{src}.conv.bias", f"{dst}/conv/bias", None, ident)
        if cfg.norm_type == "time_group_norm":
            m.map(f"{src}.norm.weight", f"{dst}/norm/scale", None, ident)
            m.map(f"{src}.norm.bias", f"{dst}/norm/bias", None, ident)
    books = []
    for q in range(cfg.num_quantizers):
        key = f"quantizer.layers.{q}.codebook.embed"
        if not m.has(key):
            m.absent.append(f"{key!r} (for quantizer/codebooks[{q}], expected shape "
                            f"{(cfg.codebook_size, cfg.dim)})")
            continue
        v = m.take(key)
        if tuple(v.shape) != (cfg.codebook_size, cfg.dim):
            m.absent.append(f"{key!r} has shape {tuple(v.shape)}, expected {(cfg.codebook_size, cfg.dim)}")
            continue
        books.append(v.astype(np.float32))
    if len(books) == cfg.num_quantizers:
        m.put("quantizer/codebooks", np.stack(books), "quantizer.layers.*.codebook.embed")
    if m.absent and strict:
        left = sorted(m.src)
        raise ConversionError(
            f"{what}: missing or malformed source keys: {', '.join(m.absent[:20])}"
            + (f", ... (+{len(m.absent) - 20})" if len(m.absent) > 20 else "")
            + (f"; unused source keys: {left[:20]}" if left else ""))
    return m.finish(target, strict=strict, what=what)


def ema_state_from_state_dict(state_dict: Mapping[str, np.ndarray], config: EncodecConfig) -> dict[str, np.ndarray]:
    """The codebooks' EMA buffers -> ``{"ema_counts": [Nq, K], "ema_sums": [Nq, K, D]}`` (for
    :func:`tta_jax.codecs.encodec.rvq_ema_update`); raises naming a missing buffer."""
    counts, sums = [], []
    for q in range(config.num_quantizers):
        for key, out in ((f"quantizer.layers.{q}.codebook.cluster_size", counts),
                         (f"quantizer.layers.{q}.codebook.embed_avg", sums)):
            if key not in state_dict:
                raise ConversionError(f"EnCodec checkpoint: no key {key!r} (EMA state of codebook {q})")
            out.append(np.asarray(state_dict[key], np.float32))
    return {"ema_counts": np.stack(counts), "ema_sums": np.stack(sums)}


def load_encodec(path: str | os.PathLike, *, strict: bool = True) -> tuple[EncodecConfig, dict]:
    """A transformers EnCodec folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)
    -> (config, params); read without torch."""
    cfg = from_hf_config(read_hf_config(path))
    sd = load_hf_state_dict(path)
    params, _ = convert_encodec(sd, cfg, strict=strict, what=os.fspath(path))
    return cfg, params


__all__ = ["convert_encodec", "load_encodec", "ema_state_from_state_dict"]
