"""Registry of checkpoint families for ``python -m launch.convert`` (see that module for usage).

``convert(family, src, config, out)`` loads an official checkpoint with the family's strict converter
and writes ``params.safetensors`` (flat, '/'-joined keys) or an Orbax tree, plus ``conversion.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable

import numpy as np

from tta_jax.errors import InvalidArgument


def _dit(src, cfg, strict):
    from tta_jax.convert.ezaudio_dit import load_ezaudio_dit
    from tta_jax.denoisers.dit import PRESETS, DiTConfig

    if cfg is not None and not isinstance(cfg, dict):
        raise InvalidArgument(f"--config for ezaudio_dit must be a JSON object, got {cfg!r}")
    cfg = dict(cfg or {})
    preset = cfg.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise InvalidArgument(f"--config: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    try:
        dcfg = PRESETS[preset](**cfg) if preset else DiTConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"--config: {e}") from e
    out, _ = load_ezaudio_dit(src, dcfg, strict=strict)
    return out["params"], dcfg.to_dict()


def _unet(src, cfg, strict):
    from tta_jax.convert.diffusers_unet import load_diffusers_unet

    _, params, _ = load_diffusers_unet(src, strict=strict, **dict(cfg or {}))
    with open(os.path.join(src, "config.json")) as f:
        return params, json.load(f)


def _oobleck(src, cfg, strict):
    from tta_jax.convert.oobleck import load_oobleck

    return load_oobleck(src, cfg or "ezaudio_24k", strict=strict), cfg or "ezaudio_24k"


def _kl_vae(src, cfg, strict):
    from tta_jax.convert.kl_vae import load_kl_vae

    return load_kl_vae(src, cfg or "sd_v1_5", strict=strict), cfg or "sd_v1_5"


def _hifigan(src, cfg, strict):
    import dataclasses

    from tta_jax.convert.hifigan import load_hifigan

    _, params, hcfg = load_hifigan(src, strict=strict)
    return params, dataclasses.asdict(hcfg) if dataclasses.is_dataclass(hcfg) else str(hcfg)


def _bigvgan(src, cfg, strict):
    import dataclasses

    from tta_jax.convert.bigvgan import load_bigvgan

    _, params, bcfg = load_bigvgan(src, strict=strict)
    return params, dataclasses.asdict(bcfg) if dataclasses.is_dataclass(bcfg) else str(bcfg)


def _encodec(src, cfg, strict):
    """A transformers EncodecModel folder (config.json + model.safetensors / pytorch_model.bin) -> (params, the
    :class:`~tta_jax.codecs.encodec.EncodecConfig` as a dict). The folder's config.json is the architecture:
    ``--config`` is refused."""
    import dataclasses

    from tta_jax.convert.encodec import load_encodec

    if cfg:
        raise InvalidArgument(f"--config is not used for encodec (the architecture comes from {src}/config.json), "
                              f"got {cfg!r}")
    if not os.path.isdir(src):
        raise InvalidArgument(f"--src {src} must be a transformers EncodecModel folder (config.json + "
                              "model.safetensors or pytorch_model.bin)")
    from tta_jax.convert.common import ConversionError

    try:
        ecfg, params = load_encodec(src, strict=strict)
    except ConversionError:
        raise
    except ValueError as e:   # not an EnCodec config.json
        raise InvalidArgument(f"--src {src}: {e}") from None
    return params, dataclasses.asdict(ecfg)


def _bert(src, cfg, strict):
    from tta_jax.convert.bert import load_bert

    _, params = load_bert(src, strict=strict)
    with open(os.path.join(src, "config.json")) as f:
        return params, json.load(f)


def _text(loader_name):
    def fn(src, cfg, strict):
        import dataclasses

        from tta_jax.convert import text_encoders as T

        tcfg, params = getattr(T, loader_name)(src)
        return params, dataclasses.asdict(tcfg) if dataclasses.is_dataclass(tcfg) else str(tcfg)

    return fn


def _clap_audio(src, cfg, strict):
    from tta_jax.convert.clap_audio import load_clap_audio_dir

    hcfg, variables = load_clap_audio_dir(src, strict=strict)
    return variables, hcfg.to_dict()


def _system_args(family: str, src: str, cfg, layout: str, system_file: str, *, pre_apply: bool = False):
    """``--config`` of a released-folder family: ``{"system": "configs/<x>.py[:variant]", "overrides": [...]}``
    -> (the system config, with the overrides when ``pre_apply``; the overrides). Refused before any weight
    is read."""
    from tta_jax import config as C

    if cfg is not None and not isinstance(cfg, dict):
        raise InvalidArgument(f"--config for {family} must be a JSON object, got {cfg!r}")
    cfg = dict(cfg or {})
    bad = sorted(set(cfg) - {"system", "overrides"})
    if bad:
        raise InvalidArgument(f"--config: unknown key {bad[0]!r} for {family} (system, overrides)")
    system = cfg.get("system") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "configs", system_file)
    if not os.path.isdir(src):
        raise InvalidArgument(f"--src {src} must be a released {layout}")
    overrides = list(cfg.get("overrides") or ())
    return C.load_config(system, overrides if pre_apply else ()), overrides


def _filled(config, overrides):
    from tta_jax import config as C

    C.apply_overrides(config, overrides)   # the user's word wins over what the folder says
    C.validate_config(config)
    return config


def _auffusion(src, cfg, strict):
    """A released Auffusion folder -> (params, the filled ``configs/auffusion.py`` config as a dict).
    ``--config`` (optional): ``{"system": "configs/auffusion.py[:variant]", "overrides": ["key=value", ...]}``;
    the default system is this checkout's ``configs/auffusion.py`` (variant ``full``: the objective and
    sampler; model, text and codec come from the folder)."""
    from tta_jax.convert import auffusion as A

    base, overrides = _system_args("auffusion", src, cfg, "Auffusion folder (condition_config.json, unet/, ...)",
                                   "auffusion.py")
    config = _filled(A.auffusion_config(src, base), overrides)
    params = A.load_auffusion(src, config, strict=strict)
    A.check_components(config)
    return params, config


def _tango(src, cfg, strict):
    """A released Tango folder (main_config.json, pytorch_model_{main,vae,stft}.bin, ...) -> (U-Net params, the
    filled ``configs/tango.py`` config). ``--config`` as for auffusion; the overrides apply before the folder's
    facts are checked against the presets (e.g. ``codec.vae_config``) and again after filling (e.g.
    ``text.path=/ckpt/flan-t5-large``, which the folder does not carry). The codec is loaded as a check; the
    text encoder too when the config names its weights."""
    from tta_jax.convert import tango as T
    from tta_jax.convert.workdir import check_components

    base, overrides = _system_args("tango", src, cfg, "Tango folder (main_config.json, pytorch_model_main.bin, "
                                   "pytorch_model_vae.bin, ...)", "tango.py", pre_apply=True)
    config = _filled(T.tango_config(src, base), overrides)
    params = T.load_tango(src, config, strict=strict)
    text = config.text
    check_components(config, text=bool(text.get("path")) or text.get("init") == "random")
    return params, config


def _system_workdir(params, config, out):
    from tta_jax.convert.workdir import write_workdir

    return write_workdir(out, config, params)


FAMILIES: dict[str, Callable[[str, Any, bool], tuple[Any, Any]]] = {
    "ezaudio_dit": _dit, "diffusers_unet": _unet, "oobleck": _oobleck, "kl_vae": _kl_vae,
    "hifigan": _hifigan, "bigvgan": _bigvgan, "bert": _bert, "t5": _text("load_t5_dir"),
    "clip_text": _text("load_clip_text_dir"), "clap_text": _text("load_clap_text_dir"),
    "clap_audio": _clap_audio, "auffusion": _auffusion, "tango": _tango, "encodec": _encodec,
}
# families that write a sampling workdir (config.json + checkpoints/ + assets/, what ``launch.sample
# --workdir`` loads) instead of a params file; their converter returns the system config as the second item
WORKDIRS: dict[str, Callable[[Any, Any, str], str]] = {"auffusion": _system_workdir, "tango": _system_workdir}


def parse_config(text: str) -> Any:
    if not text:
        return None
    if os.path.exists(text):
        with open(text) as f:
            return json.load(f)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"--config is neither a file nor valid JSON: {e}") from e


def _last_bad(reports):
    """The last report with problems (None when every report is clean)."""
    bad = [r for r in reports if not r.ok]
    return bad[-1] if bad else None


def _sha256(path: str) -> str:
    if os.path.isdir(path):
        return "folder"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(family: str, src: str, config: Any, out: str, *, fmt: str = "safetensors",
            strict: bool = True) -> str:
    """Converts and writes; returns the path of the written params.

    A checkpoint that does not match raises :class:`~tta_jax.convert.common.ConversionError` with a
    one-line summary (counts, an architecture hint, the first problems; ``details`` lists them all).
    """
    from tta_jax.convert.common import ConversionError, collect_reports, flatten_params, unbox

    if family not in FAMILIES:
        raise InvalidArgument(f"unknown --family {family!r}; expected one of {sorted(FAMILIES)}")
    if not os.path.exists(src):
        raise FileNotFoundError(f"--src {src} does not exist")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgument(f"--out {out} is an existing file, not a directory")
    with collect_reports() as reports:
        try:
            params, used_cfg = FAMILIES[family](src, config, strict)
        except ConversionError as e:
            report = e.report if e.report is not None and not e.report.ok else _last_bad(reports)
            if report is None:
                raise
            details = report.details() + f"\n\nconverter's message:\n{e}"
            raise ConversionError(report.headline(src), report=report, details=details) from None
    report = None if strict else _last_bad(reports)
    if report is not None:  # --allow_partial: the partial tree is written; say what is missing
        logging.warning("partial conversion: %s", report.headline(src))
    params = unbox(params)
    os.makedirs(out, exist_ok=True)
    if family in WORKDIRS:
        path = WORKDIRS[family](params, used_cfg, out)
        used_cfg = used_cfg.to_dict() if hasattr(used_cfg, "to_dict") else used_cfg
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(params).items()}
        path = os.path.join(out, "params.safetensors")
        save_file(flat, path)
    else:
        import orbax.checkpoint as ocp

        path = os.path.join(os.path.abspath(out), "params")
        ocp.PyTreeCheckpointer().save(path, params, force=True)
    meta = dict(family=family, source=os.path.abspath(src), source_sha256=_sha256(src), config=used_cfg,
                format=fmt)
    with open(os.path.join(out, "conversion.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return path
