"""Experiment configs: one schema, ml_collections files, loud validation.

Every ``configs/<name>.py`` exposes ``get_config()`` returning a :class:`ml_collections.ConfigDict` built
on :func:`base_config` (big_vision style: the docstring gives the run command and the expected result).
Command-line overrides use absl ``config_flags`` (``--config.optimizer.lr=1e-4``); programmatic ones use
:func:`apply_overrides`. :func:`validate_config` then checks the whole tree against the schema:

- a key that the schema does not know fails, naming its full path and the closest known key;
- a value of the wrong type fails, naming the key, the value and the expected type (ints are
  accepted where floats are expected);
- enumerated values (prediction type, sampler, beta schedule, ...) must be one of their choices.

Free-form sections (``model``: checked by the model's own config class; ``data.source_kwargs``, ...)
are listed in ``FREE_FORM`` and skipped here.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

from tta_jax.diffusion.guidance import GUIDANCE_MODES
from tta_jax.diffusion.samplers import SAMPLERS
from tta_jax.diffusion.schedules import PREDICTION_TYPES
from tta_jax.errors import ConfigError  # noqa: F401  (re-exported: the one config error)

CHOICES = {
    "diffusion.prediction_type": PREDICTION_TYPES,
    "diffusion.beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "diffusion.min_snr_variant": ("standard", "tango"),
    "diffusion.flow_time_sampler": ("uniform", "logit_normal"),
    "diffusion.precondition": ("none", "wiener"),
    "sampler.name": SAMPLERS,
    "sampler.spacing": ("leading", "trailing", "linspace"),
    "sampler.guidance_mode": GUIDANCE_MODES,
    "sampler.negative": ("empty", "zeros", "prompt"),
}

# Sections whose contents are validated elsewhere (model config classes, data sources, codecs).
FREE_FORM = ("model", "data.source_kwargs", "codec", "text", "conditioner", "lora", "extra")


def base_config() -> ml_collections.ConfigDict:
    """The schema and defaults shared by every experiment config.

    The trainer's sections (``seed``, ``builder``, ``mesh``, ``optimizer``, ``train``) come from
    :func:`tta_jax.train.config.trainer_config`; the diffusion, sampler and data sections are here.
    """
    from tta_jax.train.config import trainer_config

    c = trainer_config()
    c.name = "experiment"
    c.model = ml_collections.ConfigDict()  # free-form: checked by the model's config class
    c.codec = ml_collections.ConfigDict()
    c.text = ml_collections.ConfigDict()
    c.conditioner = ml_collections.ConfigDict()
    # LoRA adapters (tta_jax.train.lora): on when `targets` (regexes over kernel paths) is non-empty, e.g.
    # --config.lora.targets='(".*/attn[12]/to_(q|k|v|out)",)'; alpha None = rank
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=config_dict.placeholder(float), targets=(),
                                            train_base=False))
    c.extra = ml_collections.ConfigDict()

    c.diffusion = ml_collections.ConfigDict(dict(
        beta_schedule="scaled_linear", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        zero_terminal_snr=False, prediction_type="epsilon", min_snr_gamma=0.0, min_snr_variant="standard",
        flow_time_sampler="uniform", flow_shift=1.0, cond_drop_prob=0.1, ref_drop_prob=0.1, precondition="none",
        sigma_data=0.5,
        precondition_loss_power=0.0,
        train_t_min=0))                   # DDPM training timesteps drawn from [train_t_min, N) (0: all)

    c.sampler = ml_collections.ConfigDict(dict(
        name="ddim", num_steps=50, spacing="leading", eta=0.0, steps_offset=0, set_alpha_to_one=True,
        clip_sample=False, flow_shift=1.0, guidance_scale=3.0, guidance_rescale=0.0, guidance_mode="cfg",
        # CFG's unconditioned branch: "empty" = the empty prompt's encoding; "zeros" = an all-zero context
        # after the text adapters (Auffusion's default negative embedding; needs adapters, config.model);
        # "prompt" = the same prompt with the conditioner's extra inputs (references) off: guidance on them alone
        negative="empty"))

    c.data = ml_collections.ConfigDict(dict(
        precomputed_dir="", split="train", num_workers=0, crop_frames=0, mask_partial_prob=-1.0, patch_frames=1,
        token_pca=0, token_pca_whiten_below=0.0, cond_keys=(),
        source_kwargs=ml_collections.ConfigDict()))
    return c


def _path_join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_free(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE_FORM)


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is None or value is None or isinstance(expected, ml_collections.FieldReference):
        return True
    if isinstance(expected, bool):
        return isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(expected, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))


def validate_config(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict | None = None,
                    _prefix: str = "") -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` naming the first bad key; returns ``cfg`` unchanged when valid."""
    schema = base_config() if schema is None else schema
    for key in cfg.keys():
        path = _path_join(_prefix, key)
        if _is_free(path):
            continue
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema.keys()), n=1)
            hint = f" (did you mean {_path_join(_prefix, close[0])!r}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}")
        value, expected = cfg[key], schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key {path!r} must be a section (ConfigDict), got {value!r}")
            validate_config(value, expected, path)
            continue
        if not _type_ok(value, expected):
            raise ConfigError(f"config key {path!r} = {value!r} has type {type(value).__name__}, "
                              f"expected {type(expected).__name__}")
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"config key {path!r} = {value!r} is not one of {list(CHOICES[path])}")
    return cfg


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Applies ``"a.b=value"`` overrides (as on the command line, without ``--config.``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        path, text = item.split("=", 1)
        path = path.removeprefix("--").removeprefix("config.")
        node = cfg
        parts = path.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ConfigError(f"unknown config key {path!r} (no section {p!r})")
            node = node[p]
        leaf = parts[-1]
        current = node[leaf] if leaf in node else None
        if current is None and not _is_free(path):
            raise ConfigError(f"unknown config key {path!r}")
        value = _parse_value(text, current)
        try:
            with node.unlocked() if hasattr(node, "unlocked") else _null():
                node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config key {path!r} = {value!r} has type {type(value).__name__}, "
                              f"expected {type(current).__name__}") from e
    return cfg


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def split_config_arg(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"configs/ezaudio.py:tiny"`` -> ``("configs/ezaudio.py", "tiny")`` (big_vision's config argument, as
    ``config_flags`` parses it); a plain path -> ``(path, None)``."""
    spec = os.fspath(spec)
    path, sep, arg = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return path, arg
    return spec, None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Imports ``configs/X.py``, calls its ``get_config()`` (``get_config(arg)`` for ``configs/X.py:arg``, e.g.
    a size variant ``:tiny``), applies overrides and validates."""
    path, arg = split_config_arg(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_tta_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    try:
        cfg = module.get_config() if arg is None else module.get_config(arg)
    except TypeError as e:
        raise ConfigError(f"{path}: get_config({arg!r}) failed: {e}") from e
    apply_overrides(cfg, overrides)
    return validate_config(cfg)
