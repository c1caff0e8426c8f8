"""NVIDIA BigVGAN (pip ``bigvgan`` / ``bigvgan_generator.pt``) state dict -> :class:`BigVGAN` params.

Weight norm (old ``weight_g``/``weight_v`` or new parametrizations) is folded. The fixed anti-aliasing
filter buffers (``*.upsample.filter``, ``*.downsample.lowpass.filter``) are not params here: they are
checked against the filters the module computes (a mismatch, e.g. a different kernel size, is reported
by name) and dropped. ``.pt`` files load torch-free via :func:`tta_jax.convert.common.load_torch_state_dict`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from tta_jax.convert.common import (ConversionError, LenientMapper, fold_all_weight_norms, load_torch_state_dict,
                                    shapes_of)
from tta_jax.vocoders.bigvgan import BigVGAN, BigVGANConfig, kaiser_sinc_filter


def _target_shapes(cfg: BigVGANConfig):
    import jax

    abstract = jax.eval_shape(lambda: BigVGAN(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 4, cfg.num_mels), np.float32)))
    return shapes_of(abstract["params"])


def _check_filters(sd: dict, what: str, strict: bool) -> list[str]:
    expected = kaiser_sinc_filter(0.25, 0.3, 12)
    bad = []
    for k in [k for k in sd if k.endswith(".upsample.filter") or k.endswith(".downsample.lowpass.filter")]:
        f = np.asarray(sd.pop(k)).reshape(-1)
        if f.shape != expected.shape or np.max(np.abs(f - expected)) > 1e-6:
            bad.append(f"{k}: filter {f.shape} differs from the kaiser-sinc(12) filter the module uses")
    if bad and strict:
        raise ConversionError(f"{what}: " + "; ".join(bad))
    return bad


def convert_bigvgan(state_dict: Mapping[str, np.ndarray], cfg: BigVGANConfig, *, strict: bool = True,
                    what: str = "BigVGAN checkpoint"):
    """BigVGAN state dict -> (params, ConversionReport)."""
    sd = fold_all_weight_norms({k: np.asarray(v) for k, v in state_dict.items()})
    bad_filters = _check_filters(sd, what, strict)
    m = LenientMapper(sd, strict, what)
    nk = len(cfg.resblock_kernel_sizes)
    beta = cfg.activation == "snakebeta"

    def act(src, dst):
        m.raw(f"{src}.act.alpha", f"{dst}/act/alpha")
        if beta:
            m.raw(f"{src}.act.beta", f"{dst}/act/beta")

    m.conv("conv_pre", "conv_pre")
    for i in range(len(cfg.upsample_rates)):
        m.conv_transpose(f"ups.{i}.0", f"ups_{i}")
        for j, dil in enumerate(cfg.resblock_dilation_sizes):
            n = i * nk + j
            for q in range(len(dil)):
                if cfg.resblock == "1":
                    m.conv(f"resblocks.{n}.convs1.{q}", f"resblocks_{n}/convs1_{q}")
                    m.conv(f"resblocks.{n}.convs2.{q}", f"resblocks_{n}/convs2_{q}")
                    act(f"resblocks.{n}.activations.{2 * q}", f"resblocks_{n}/act_{2 * q}")
                    act(f"resblocks.{n}.activations.{2 * q + 1}", f"resblocks_{n}/act_{2 * q + 1}")
                else:
                    m.conv(f"resblocks.{n}.convs.{q}", f"resblocks_{n}/convs_{q}")
                    act(f"resblocks.{n}.activations.{q}", f"resblocks_{n}/act_{q}")
    act("activation_post", "act_post")
    m.conv("conv_post", "conv_post")
    params, report = m.finish(_target_shapes(cfg), strict=strict, what=what)
    report.mismatched.extend(bad_filters)
    return params, report


def load_bigvgan(model_dir: str | os.PathLike, *, strict: bool = True):
    """A BigVGAN directory (config.json + bigvgan_generator.pt) -> (BigVGAN module, params, config), torch-free."""
    model_dir = os.fspath(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    ckpt = os.path.join(model_dir, "bigvgan_generator.pt")
    for p in (cfg_path, ckpt):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: missing (a BigVGAN directory needs config.json and bigvgan_generator.pt)")
    with open(cfg_path) as f:
        cfg = BigVGANConfig.from_json_dict(json.load(f))
    params, _ = convert_bigvgan(load_torch_state_dict(ckpt, key="generator"), cfg, strict=strict, what=ckpt)
    return BigVGAN(cfg), params, cfg
