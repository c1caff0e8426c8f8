r"""Sample from a trained run: ``python -m launch.sample --workdir DIR --prompt "a dog barks" --out OUT``.

Loads the run's config (``DIR/config.json`` written by launch/train.py, or ``--config``) and the latest
(or ``--step``) checkpoint's EMA params onto one device (``tta_jax.train.checkpoint.load_params``),
then calls the system's sampling pipeline named by ``config.sample_pipeline`` ("module.path:function")::

    function(config, params, prompts: list[str], out_dir: str, *, seed: int, steps: int | None,
             guidance: float | None, rescale: float | None) -> list[str]   # paths written (wav/png)

The latent text-to-audio systems use ``tta_jax.pipelines.tta:sample_pipeline`` (a WAV and a spectrogram
PNG per prompt, all prompts in one batched, jitted call).
"""
from __future__ import annotations

import importlib
import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: DIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text prompt (repeat for several).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the config's).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: the config's).")
_RESCALE = flags.DEFINE_float("rescale", None, "CFG rescale phi (default: the config's).")
_RAW = flags.DEFINE_bool("no_ema", False, "Use the raw params instead of the EMA.")


def load_config(workdir: str, config=None):
    if config is not None:
        return config
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --config configs/X.py")
    import ml_collections
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def resolve(dotted: str, key: str):
    if not isinstance(dotted, str) or ":" not in dotted:
        raise ValueError(f"config.{key}={dotted!r}: expected 'module.path:function'")
    mod, fn = dotted.split(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value or not _PROMPT.value:
        raise app.UsageError("--workdir, --out and at least one --prompt are required")
    from tta_jax.train.checkpoint import load_params
    config = load_config(_WORKDIR.value, _CONFIG.value)
    pipeline = config.get("sample_pipeline", None)
    if not pipeline:
        raise app.UsageError("config.sample_pipeline is not set: this system has no sampling pipeline "
                             "(expected 'module.path:function')")
    fn = resolve(pipeline, "sample_pipeline")
    params, step = load_params(_WORKDIR.value, step=_STEP.value, ema=not _RAW.value)
    logging.info("loaded %s params from step %d", "raw" if _RAW.value else "EMA", step)
    os.makedirs(_OUT.value, exist_ok=True)
    paths = fn(config, params, list(_PROMPT.value), _OUT.value, seed=_SEED.value,
               steps=_STEPS.value, guidance=_GUIDANCE.value, rescale=_RESCALE.value)
    for p in paths or []:
        print(p)


if __name__ == "__main__":
    app.run(main)
