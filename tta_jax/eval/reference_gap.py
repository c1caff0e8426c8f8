"""How much a reference-conditioned run's loss depends on *its own* references.

    gap = reference_loss_gap(config, params, "/data/serst_refs", batches=40)

The training loss on ``batches`` batches of precomputed reference pairs (no caption or reference dropout), with the
right references, with the next row's (``roll`` by one: another clip, mostly another event) and with none
(``reference_mask`` all False), the same noise draws for all three. ``none - right`` is what the references are worth
to the model at all; ``other - right`` the part that is specific to the reference's own sound (a style adapter that
only learns a constant shift has ``other - right`` = 0). Any conditioner of the registry: its feature keys (spec
``features``) and ``reference_mask`` move together.
"""
from __future__ import annotations

import numpy as np


def reference_loss_gap(config, params, data_dir: str, batches: int, seed: int = 123) -> dict:
    """-> {"right" | "other" | "none": mean loss, "other_minus_right" | "none_minus_right": (mean, standard error)}."""
    import jax
    import jax.numpy as jnp

    from tta_jax.conditioners.registry import reference_spec_of
    from tta_jax.errors import ConfigError
    from tta_jax.pipelines.tta import build_task

    spec = reference_spec_of(config.get("conditioner"))
    if spec is None or spec["target"]:
        raise ConfigError("reference_loss_gap needs a system conditioned on reference audio (config.conditioner)")
    config = config.copy_and_resolve_references()
    config.data.precomputed_dir = data_dir
    config.diffusion.cond_drop_prob = 0.0
    config.diffusion.ref_drop_prob = 0.0
    config.seed = seed
    task = build_task(config, None)
    loss = jax.jit(lambda b, r: task.loss_fn(params, b, r)[0])
    keys = tuple(spec["features"]) + ("reference_mask",)
    got = {"right": [], "other": [], "none": []}
    for i in range(batches):
        b = {k: jnp.asarray(v) for k, v in next(task.train_iter).items()}
        r = jax.random.PRNGKey(i)
        got["right"].append(float(loss(b, r)))
        got["other"].append(float(loss(dict(b, **{k: jnp.roll(b[k], 1, 0) for k in keys if k in b}), r)))
        got["none"].append(float(loss(dict(b, reference_mask=jnp.zeros_like(b["reference_mask"])), r)))
    out = {k: float(np.mean(v)) for k, v in got.items()}
    for k in ("other", "none"):
        d = np.asarray(got[k]) - np.asarray(got["right"])
        out[f"{k}_minus_right"] = (float(d.mean()), float(d.std() / np.sqrt(len(d))))
    return out


__all__ = ["reference_loss_gap"]
