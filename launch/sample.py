r"""Sample from a trained run: ``python -m launch.sample --workdir DIR --prompt "a dog barks" --out OUT``.

Loads the run's config (``DIR/config.json`` written by launch/train.py, or ``--config``) and the latest
(or ``--step``) checkpoint's EMA params onto one device (``tta_jax.train.checkpoint.load_params``),
then calls the system's sampling pipeline named by ``config.sample_pipeline`` ("module.path:function")::

    function(config, params, prompts: list[str], out_dir: str, *, seed: int, steps: int | None,
             guidance: float | None, rescale: float | None, workdir: str[, references: list[str],
             reference_captions: list[str]])
        -> list[str]   # paths written (``references`` / ``reference_captions`` only when given)

An exported sampler (``python -m launch.export --workdir DIR --out EXPORT``): ``--export EXPORT`` instead of
``--workdir`` runs it through :mod:`tta_jax.serving` (no model source imported; fixed batch, length and steps
as exported; ``--guidance`` / ``--rescale`` / ``--seed`` still apply).

Reference-conditioned systems: ``--reference clip.wav`` (repeat; SERST, DreamAudio) and, for DreamAudio,
``--reference_caption "..."`` once per reference, in the same order; DreamAudio also samples with none.

The latent text-to-audio systems (any denoiser, codec and text encoder) use
``tta_jax.pipelines.tta:sample_pipeline``: a WAV and a spectrogram PNG per prompt, all prompts in one batched,
jitted call. A workdir is self-contained: the run's statistics (token PCA) are read from ``DIR/assets/``, so
the training data may be gone; params that do not fit the config fail naming the first mismatching parameter.
"""
from __future__ import annotations

import importlib
import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

from launch import cli
from launch.runs import check_checkpoint, checkpoint_steps, load_config  # noqa: F401 (re-exported)
from tta_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: DIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_EXPORT = flags.DEFINE_string("export", None, "An export folder from launch.export (instead of --workdir).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text prompt (repeat for several).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the config's).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: the config's).")
_RESCALE = flags.DEFINE_float("rescale", None, "CFG rescale phi (default: the config's).")
_NEGATIVE = flags.DEFINE_enum("negative", None, ["empty", "zeros", "prompt"],
                              "CFG's unconditioned branch (default: the config's sampler.negative); 'prompt' keeps "
                              "the prompt and drops the references: guidance on the references alone.")
_RAW = flags.DEFINE_bool("no_ema", False, "Use the raw params instead of the EMA.")
_LORA = flags.DEFINE_multi_string("lora", None, "LoRA adapter FILE.safetensors[:SCALE] merged into the params before "
                                  "sampling (repeat to stack several; tta_jax.train.lora).")
_REFERENCE = flags.DEFINE_multi_string("reference", None, "Reference audio file for a reference-conditioned "
                                       "system (SERST, DreamAudio; repeat for several): the same references for "
                                       "every prompt.")
_REFERENCE_CAPTION = flags.DEFINE_multi_string("reference_caption", None, "Caption of each --reference, in the "
                                               "same order (DreamAudio).")


def resolve(dotted: str, key: str):
    if not isinstance(dotted, str) or ":" not in dotted:
        raise UserError(f"config.{key}={dotted!r}: expected 'module.path:function'")
    mod, fn = dotted.split(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not (_WORKDIR.value or _EXPORT.value) or not _OUT.value or not _PROMPT.value:
        raise app.UsageError("--workdir (or --export), --out and at least one --prompt are required")
    cli.check_output_dir(_OUT.value, "--out")
    if _EXPORT.value:
        return sample_export()
    config = load_config(_WORKDIR.value, _CONFIG.value)
    check_checkpoint(_WORKDIR.value, _STEP.value)
    if _NEGATIVE.value:
        config.sampler.negative = _NEGATIVE.value
    from tta_jax.train.checkpoint import load_params
    pipeline = config.get("sample_pipeline", None)
    if not pipeline:
        raise UserError("config.sample_pipeline is not set: this system has no sampling pipeline "
                        "(expected 'module.path:function')")
    fn = resolve(pipeline, "sample_pipeline")
    params, step = load_params(_WORKDIR.value, step=_STEP.value, ema=not _RAW.value)
    logging.info("loaded %s params from step %d", "raw" if _RAW.value else "EMA", step)
    if _LORA.value:
        from tta_jax.train.lora import apply_lora_files, config_hash

        params = apply_lora_files(params, _LORA.value, base_hash=config_hash(config.model))
    os.makedirs(_OUT.value, exist_ok=True)
    extra = {"references": list(_REFERENCE.value)} if _REFERENCE.value else {}
    if _REFERENCE_CAPTION.value:
        extra["reference_captions"] = list(_REFERENCE_CAPTION.value)
    paths = fn(config, params, list(_PROMPT.value), _OUT.value, seed=_SEED.value,
               steps=_STEPS.value, guidance=_GUIDANCE.value, rescale=_RESCALE.value, workdir=_WORKDIR.value,
               **extra)
    for p in paths or []:
        print(p)


def sample_export():
    """``--export``: the serialised sampler; a WAV and a PNG per prompt."""
    ignored = [f for f, v in (("--workdir", _WORKDIR.value), ("--step", _STEP.value), ("--steps", _STEPS.value),
                              ("--lora", _LORA.value), ("--reference", _REFERENCE.value),
                              ("--negative", _NEGATIVE.value)) if v]
    if ignored:
        raise app.UsageError(f"{ignored[0]} does not apply to --export (an export is fixed; re-export instead)")
    from tta_jax.audio.io import write_samples
    from tta_jax.serving import load_exported

    sampler = load_exported(_EXPORT.value)
    prompts = list(_PROMPT.value)
    audio, lat = sampler(prompts, seed=_SEED.value, guidance=_GUIDANCE.value, rescale=_RESCALE.value)
    os.makedirs(_OUT.value, exist_ok=True)
    for p in write_samples(_OUT.value, prompts, audio, lat, sampler.sample_rate):
        print(p)


if __name__ == "__main__":
    cli.run(main)
