"""Flag-free helpers shared by the ``launch`` tools that read a training workdir (sample, export, benchmarks):
its ``config.json`` and its checkpoint steps, with one-line :class:`~tta_jax.errors.UserError` messages."""
from __future__ import annotations

import json
import os

from tta_jax.errors import UserError


def checkpoint_steps(workdir: str) -> list[int]:
    """Finished checkpoint steps under ``workdir/checkpoints`` (numbered step folders), ascending."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def load_config(workdir: str, config=None):
    """``workdir/config.json`` as a ConfigDict (``config`` instead when given)."""
    if config is not None:
        return config
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if not checkpoint_steps(workdir):
            raise UserError(f"no training run in {workdir} (no config.json / checkpoints)")
        raise UserError(f"{path} not found: pass --config configs/X.py (the run's config file)")
    import ml_collections
    with open(path) as f:
        try:
            return ml_collections.ConfigDict(json.load(f))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from e


def check_checkpoint(workdir: str, step: int | None) -> None:
    """Raises :class:`UserError` naming the checkpoints folder when the (requested) step is not there."""
    steps = checkpoint_steps(workdir)
    where = os.path.join(workdir, "checkpoints")
    if not steps:
        raise UserError(f"no checkpoints in {where}: train first (python -m launch.train --workdir {workdir})")
    if step is not None and step not in steps:
        raise UserError(f"no checkpoint for --step {step} in {where} (have {steps[:10]}"
                        f"{' ...' if len(steps) > 10 else ''})")
