"""Orbax checkpointing of the train state and the data iterator state.

One ``CheckpointManager`` under ``<workdir>/checkpoints`` with two items per step:
  ``state``  the TrainState (params, EMA, optimizer state, step, RNG, counters) -- Standard{Save,Restore}
  ``data``   every process's data iterator ``get_state()`` -- Json{Save,Restore} (bytes states are
             base64-wrapped; with several hosts the states are all-gathered, each host restores its own)

Saves are asynchronous (``enable_async_checkpointing``); only finalised steps are visible to
``latest_step`` (Orbax writes to a temporary directory and renames), so a process killed mid-save
resumes from the previous finished checkpoint. Restoring takes a target tree of ShapeDtypeStructs
with the *new* mesh's shardings, so a checkpoint written on one mesh restores onto another.
"""
from __future__ import annotations

import base64
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def encode_iter_state(state: Any) -> Any:
    """JSON-able form of a data iterator state (grain gives dicts or bytes)."""
    if state is None:
        return {"kind": "none"}
    if isinstance(state, (bytes, bytearray)):
        return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode("ascii")}
    return {"kind": "json", "value": state}


def decode_iter_state(blob: Any) -> Any:
    if not isinstance(blob, dict) or "kind" not in blob:
        raise ValueError(f"data iterator checkpoint: expected a dict with 'kind', got {type(blob)}")
    if blob["kind"] == "none":
        return None
    if blob["kind"] == "bytes":
        return base64.b64decode(blob["value"])
    return blob["value"]


def gather_iter_states(state: Any) -> dict:
    """Every process's encoded iterator state, as ``{"per_process": [s_0, s_1, ...]}``.

    Orbax's JSON handler writes from the primary process only, so with several processes each host's
    state is gathered (as padded uint8 arrays through ``process_allgather``) before saving.
    """
    enc = encode_iter_state(state)
    if jax.process_count() == 1:
        return {"per_process": [enc]}
    import json

    import numpy as np
    from jax.experimental import multihost_utils
    raw = np.frombuffer(json.dumps(enc).encode("utf-8"), np.uint8)
    lens = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))).reshape(-1)
    buf = np.zeros((int(lens.max()) + 1,), np.uint8)
    buf[:raw.size] = raw
    allb = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(lens), -1)
    return {"per_process": [json.loads(bytes(allb[i, :lens[i]]).decode("utf-8"))
                            for i in range(len(lens))]}


def select_iter_state(blob: Any) -> Any:
    """This process's iterator state from :func:`gather_iter_states`' output."""
    if not isinstance(blob, dict) or "per_process" not in blob:
        raise ValueError("data iterator checkpoint: expected {'per_process': [...]}, got "
                         f"{type(blob).__name__}")
    states = blob["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(f"data iterator checkpoint holds {len(states)} process states but this run "
                         f"has {jax.process_count()} processes; restore the data state manually")
    return decode_iter_state(states[jax.process_index()])


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` (see module docstring)."""

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True,
                 save_interval_steps: int = 1):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                            save_interval_steps=save_interval_steps,
                                            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: Any = None, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(gather_iter_states(data_state)))
        saved = self.manager.save(int(step), args=args, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, target, step: int | None = None) -> tuple[Any, Any, int]:
        """(state, data iterator state, step). ``target``: abstract state with target shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint under {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return out["state"], select_iter_state(out["data"]), step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(workdir: str, *, step: int | None = None, ema: bool = True, device=None):
    """Inference params from ``<workdir>/checkpoints`` onto one device (EMA if present and ``ema``).

    Uses the checkpoint's own metadata for shapes/dtypes, so it needs neither the model nor the mesh
    the checkpoint was written on. Returns (params, step).
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    mngr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint under {directory}")
        meta = mngr.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
        want = "ema_params" if ema and meta.get("ema_params") is not None else "params"
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                              meta[want])
        # Partial restore of one subtree: the other top-level items are skipped.
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={want: target},
                restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=sharding),
                                          {want: target}),
                partial_restore=True)))
        return out["state"][want], step
    finally:
        mngr.close()
