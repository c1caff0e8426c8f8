r"""Export a run's params: ``python -m launch.export --workdir DIR --out params.safetensors [--trainable_only]``.

Writes the latest (or ``--step``) checkpoint's inference params (EMA when the run kept one; ``--no_ema`` for the
raw ones) as one flat ``.safetensors`` file ('/'-joined keys, what ``config.train.init_from`` and the converters
read). ``--trainable_only``: only the leaves ``config.optimizer.trainable`` selects, e.g. the SERST adapter
trained on a frozen Tango run (a few MB instead of the whole U-Net; for a LoRA run (``config.lora``) the
adapters with their rank, alpha, targets and base-config hash, what ``launch.sample --lora`` reads); ``--only REGEX`` (repeatable) picks any
other subset. A pattern that matches no parameter fails naming it.
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("--workdir and --out are required")
    if not _OUT.value.endswith(".safetensors"):
        raise app.UsageError(f"--out {_OUT.value}: expected a .safetensors file name")
    from launch.runs import check_checkpoint, load_config
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
    if _TRAINABLE.value and config.get("lora") and not _ONLY.value:   # a LoRA run: the adapters + their settings
        from tta_jax.train.lora import config_hash, flat_adapters, lora_section, save_lora

        meta = {**lora_section(config.lora), "base": config_hash(config.model)}
        written = save_lora(_OUT.value, flat_adapters(params["lora"]), meta)
    else:
        written = export_subset(params, patterns, _OUT.value)
    n = sum(int(np.prod(s)) for s in written.values())
    logging.info("step %d: %d tensors, %d values -> %s", step, len(written), n, _OUT.value)
    print(_OUT.value)


if __name__ == "__main__":
    cli.run(main)
