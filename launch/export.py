r"""Export a trained run, two ways:

* **A sampler** (``--out EXPORT``, a folder): ``python -m launch.export --workdir DIR --out EXPORT [--batch 4]
  [--steps 50] [--seconds 5] [--dtype bf16] [--platforms cpu,cuda,tpu]``: the whole text -> audio sampler
  serialised with ``jax.export`` (StableHLO: text encoders, CFG with guidance and rescale as inputs, the sampler
  loop, codec decoder) for a fixed batch, length and step count, the inference params (EMA unless
  ``--no_ema``; ``--dtype bf16`` halves them), tokenizers, the resolved config and ``export.json`` (platforms it
  was lowered for, defaults). ``launch.sample --export EXPORT`` and :func:`tta_jax.serving.load_exported` run
  it without the model source (:mod:`tta_jax.pipelines.export`). ``--lora FILE[:SCALE]`` merges adapters first.
* **Params** (``--out params.safetensors``): the latest (or ``--step``) checkpoint's inference params as one flat
  ``.safetensors`` file ('/'-joined keys, what ``config.train.init_from`` and the converters read).
  ``--trainable_only``: only the leaves ``config.optimizer.trainable`` selects, e.g. the SERST adapter trained on
  a frozen Tango run (a few MB instead of the whole U-Net; for a LoRA run (``config.lora``) the adapters with
  their rank, alpha, targets and base-config hash, what ``launch.sample --lora`` reads); ``--only REGEX``
  (repeatable) picks any other subset. A pattern that matches no parameter fails naming it.
"""
from __future__ import annotations

import logging

import numpy as np
from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (config.json + checkpoints/)")
_OUT = flags.DEFINE_string("out", None, "output .safetensors file")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_RAW = flags.DEFINE_bool("no_ema", False, "export the raw params instead of the EMA")
_TRAINABLE = flags.DEFINE_bool("trainable_only", False, "only the leaves config.optimizer.trainable selects")
_ONLY = flags.DEFINE_multi_string("only", None, "regex over parameter paths to keep (repeatable)")
_BATCH = flags.DEFINE_integer("batch", 1, "sampler export: prompts per call")
_STEPS = flags.DEFINE_integer("steps", None, "sampler export: sampler steps (default: the config's)")
_SECONDS = flags.DEFINE_float("seconds", None, "sampler export: clip length (default: the trained length)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bf16"], "sampler export: stored params dtype")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "sampler export: platforms to lower for")
_LORA = flags.DEFINE_multi_string("lora", None, "sampler export: LoRA FILE.safetensors[:SCALE] merged first")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("--workdir and --out are required")
    from launch.runs import check_checkpoint, load_config
    if not _OUT.value.endswith(".safetensors"):
        return export_sampler_dir()
    from tta_jax.errors import UserError
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.partial import export_subset

    config = load_config(_WORKDIR.value)
    check_checkpoint(_WORKDIR.value, _STEP.value)
    patterns = list(_ONLY.value or ())
    if _TRAINABLE.value:
        trainable = list(config.optimizer.get("trainable", ()) or ())
        if not trainable:
            raise UserError(f"{_WORKDIR.value}/config.json: config.optimizer.trainable is empty (every parameter "
                            f"trained); drop --trainable_only")
        patterns += trainable
    params, step = load_params(_WORKDIR.value, step=_STEP.value, ema=not _RAW.value)
    from tta_jax.train.lora import lora_enabled

    if _TRAINABLE.value and lora_enabled(config.get("lora")) and not _ONLY.value:   # a LoRA run: adapters + settings
        from tta_jax.train.lora import config_hash, flat_adapters, lora_section, save_lora

        meta = {**lora_section(config.lora), "base": config_hash(config.model)}
        written = save_lora(_OUT.value, flat_adapters(params["lora"]), meta)
    else:
        written = export_subset(params, patterns, _OUT.value)
    n = sum(int(np.prod(s)) for s in written.values())
    logging.info("step %d: %d tensors, %d values -> %s", step, len(written), n, _OUT.value)
    print(_OUT.value)


def export_sampler_dir():
    """``--out`` is a folder: the serialised sampler (:func:`tta_jax.pipelines.export.export_sampler`)."""
    from launch.runs import check_checkpoint, load_config
    from tta_jax.pipelines.export import export_sampler
    from tta_jax.pipelines.tta import frames_for_seconds
    from tta_jax.train.checkpoint import load_params

    if _TRAINABLE.value or _ONLY.value:
        raise app.UsageError(f"--trainable_only / --only export params to a .safetensors file; --out "
                             f"{_OUT.value} names a folder (a sampler export)")
    cli.check_output_dir(_OUT.value, "--out")
    config = load_config(_WORKDIR.value)
    check_checkpoint(_WORKDIR.value, _STEP.value)
    params, step = load_params(_WORKDIR.value, step=_STEP.value, ema=not _RAW.value)
    if _LORA.value:
        from tta_jax.train.lora import apply_lora_files, config_hash

        params = apply_lora_files(params, _LORA.value, base_hash=config_hash(config.model))
    frames = frames_for_seconds(config, _SECONDS.value) if _SECONDS.value else None
    info = export_sampler(config, params, _OUT.value, batch=_BATCH.value, num_frames=frames, steps=_STEPS.value,
                          dtype=_DTYPE.value, platforms=_PLATFORMS.value, workdir=_WORKDIR.value)
    logging.info("step %d -> %s: batch %d, %.2f s, %d steps, %s params, platforms %s", step, _OUT.value,
                 info["batch"], info["seconds"], info["steps"], info["dtype"], ",".join(info["platforms"]))
    print(_OUT.value)


if __name__ == "__main__":
    cli.run(main)
