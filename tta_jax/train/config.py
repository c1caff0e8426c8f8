"""Trainer config: defaults (:func:`trainer_config`) and validation (:func:`validate_trainer_config`).

A system config (``configs/<system>.py``) starts from ``trainer_config()`` and adds ``model``/``data``::

    config.seed          int
    config.builder       "module.path:function" -- ``function(config, mesh) -> tta_jax.train.loop.Task``
    config.mesh          data / fsdp / tensor sizes (-1 = the remaining devices), num_devices (None=all)
    config.sharding_rules  None (tta_jax.nn.sharding.DEFAULT_RULES) or a tuple of (logical, mesh axes)
    config.optimizer     see tta_jax.train.optim
    config.train         loop settings (below)

Validation errors name the offending key (``config.train.batch_size=...``).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from tta_jax.errors import ConfigError
from tta_jax.train.optim import OPTIMIZERS, SCHEDULES




def trainer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.builder = ""
    c.sample_pipeline = ""          # "module:function" used by launch/sample.py
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                         num_devices=ml_collections.config_dict.placeholder(int)))
    c.sharding_rules = ml_collections.config_dict.placeholder(tuple)
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-4, schedule="constant", warmup_steps=0,
        decay_steps=ml_collections.config_dict.placeholder(int), end_lr_factor=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0, grad_accum=1,
        multiply_by_parameter_scale=False,
        clipping_threshold=ml_collections.config_dict.placeholder(float),
        trainable=()))               # regexes of the parameter paths that train (empty: all; train/partial.py)
    c.train = ml_collections.ConfigDict(dict(
        total_steps=1000,
        batch_size=8,                 # global batch (all processes)
        microbatches=1,               # >1: gradient accumulation by scan inside one step
        compute_dtype="",             # "" (params as stored) | "bfloat16" | "float16"
        ema_decay=0.999,              # <= 0 disables EMA
        ema_warmup=True,
        log_every=50,
        ckpt_every=1000,
        keep_ckpts=3,
        async_ckpt=True,
        sample_every=0,               # 0: never (needs Task.sample_fn)
        max_consecutive_nonfinite=10, # abort after this many skipped updates in a row (0: never)
        peak_flops_per_device=ml_collections.config_dict.placeholder(float),  # None: measured
        measure_peak=True,
        progress_bar=True,
        tensorboard=True,
        init_from="",                 # a workdir / .safetensors whose params start a fresh run (train/partial.py)
        init_prefix="",               # where they go in the model's params ("net": the model wraps the old one)
        init_parts=(),                # more pretrained parts: "SOURCE[#SUBTREE]@PREFIX" each (train/partial.py)
    ))
    return c


def _need(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"config.{dotted} is missing") from None
    return node


def _int(cfg, key, lo=None) -> int:
    v = _need(cfg, key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"config.{key}={v!r}: expected an integer")
    if lo is not None and v < lo:
        raise ConfigError(f"config.{key}={v}: expected >= {lo}")
    return v


def validate_trainer_config(cfg, *, num_processes: int = 1) -> None:
    """Raise ConfigError (naming the key) on any invalid trainer setting."""
    _int(cfg, "seed")
    b = _need(cfg, "builder")
    if not isinstance(b, str) or ":" not in b:
        raise ConfigError(f"config.builder={b!r}: expected 'module.path:function'")
    for ax in ("data", "fsdp", "tensor"):
        v = _int(cfg, f"mesh.{ax}")
        if v == 0 or v < -1:
            raise ConfigError(f"config.mesh.{ax}={v}: expected a positive size or -1")
    if sum(_need(cfg, f"mesh.{ax}") == -1 for ax in ("data", "fsdp", "tensor")) > 1:
        raise ConfigError("config.mesh: at most one of data/fsdp/tensor may be -1")
    name = _need(cfg, "optimizer.name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"config.optimizer.name={name!r}: expected one of {OPTIMIZERS}")
    sched = _need(cfg, "optimizer.schedule")
    if sched not in SCHEDULES:
        raise ConfigError(f"config.optimizer.schedule={sched!r}: expected one of {SCHEDULES}")
    lr = _need(cfg, "optimizer.lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"config.optimizer.lr={lr!r}: expected a positive number")
    _int(cfg, "optimizer.warmup_steps", 0)
    _int(cfg, "optimizer.grad_accum", 1)
    total = _int(cfg, "train.total_steps", 1)
    bs = _int(cfg, "train.batch_size", 1)
    mb = _int(cfg, "train.microbatches", 1)
    if bs % mb:
        raise ConfigError(f"config.train.batch_size={bs} is not divisible by "
                          f"config.train.microbatches={mb}")
    if bs % num_processes:
        raise ConfigError(f"config.train.batch_size={bs} is not divisible by the {num_processes} "
                          "processes")
    for k in ("log_every", "ckpt_every"):
        _int(cfg, f"train.{k}", 1)
    for k in ("sample_every", "max_consecutive_nonfinite", "keep_ckpts"):
        _int(cfg, f"train.{k}", 0)
    cd = _need(cfg, "train.compute_dtype")
    if cd not in ("", None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"config.train.compute_dtype={cd!r}: expected '', 'float32', 'bfloat16' "
                          "or 'float16'")
    ema = _need(cfg, "train.ema_decay")
    if not isinstance(ema, (int, float)) or ema >= 1:
        raise ConfigError(f"config.train.ema_decay={ema!r}: expected a number < 1 (<= 0 disables)")
    del total


def check_batch_vs_mesh(cfg, mesh) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    bs = cfg.train.batch_size // cfg.train.microbatches
    if bs % n:
        raise ConfigError(f"config.train.batch_size={cfg.train.batch_size} (/ microbatches="
                          f"{cfg.train.microbatches}) must be divisible by mesh data*fsdp={n}")
