r"""Train any system: ``python -m launch.train --config configs/X.py --workdir DIR [--config.k=v ...]``.

* Resumes automatically from ``DIR/checkpoints`` (train state, data iterator, RNG).
* SIGTERM (preemption) -> checkpoint at the next step, exit 0. Re-run the same command to continue.
* Non-finite loss/grads: the update is skipped; after ``train.max_consecutive_nonfinite`` in a row the
  run stops with exit code 3 and the last good checkpoint untouched.
* Multi-host: ``jax.distributed.initialize()`` runs when a cluster environment is detected (TPU pod
  slice with several workers, SLURM with several tasks, or JAX_COORDINATOR_ADDRESS set), or always /
  never with ``--distributed=on|off``. See launch/tpu/run.sh and launch/gpu/slurm.sbatch.
  ``--coordinator_address``, ``--num_processes`` and ``--process_id`` are passed on to
  ``jax.distributed.initialize`` (unset: JAX detects them from the cluster; ``JAX_COORDINATOR_ADDRESS`` also
  sets the address), so any machine can run several processes by hand; under ``--distributed=auto``
  ``--num_processes`` > 1 turns it on. ``config.train.batch_size`` is the global batch: each process feeds its
  share. CPU processes exchange collectives through ``--cpu_collectives`` (gloo). Two CPU processes on one
  machine (tests/test_multiprocess.py), each in its own shell, with one CPU device each::

      XLA_FLAGS= JAX_PLATFORMS=cpu python -m launch.train --config tta_jax/train/toy.py --workdir /tmp/mh \
          --distributed=on --coordinator_address=localhost:12355 --num_processes=2 --process_id=0   # and =1

  Every process runs the same command (same workdir); kill all of them and re-run to resume.
* A user error (unknown config key, missing file, invalid value) prints one ``error: ...`` line and exits
  with status 2; the config is validated before ``DIR/config.json`` is written. ``--verbose`` adds the
  traceback (launch/cli.py).

Smoke test (CPU, ~1 min): ``python -m launch.train --config tta_jax/train/toy.py --workdir /tmp/toy``
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, samples).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Call jax.distributed.initialize() (auto: when a cluster is detected).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordinator (jax.distributed.initialize).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (unset: detected).",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).",
                                   lower_bound=0)
_CPU_COLLECTIVES = flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi"],
                                     "Cross-process collectives of CPU devices "
                                     "(jax_cpu_collectives_implementation).")
_ORBAX_INFO = flags.DEFINE_bool("orbax_info_logs", False, "Show Orbax's INFO logs (very verbose).")
_MINUTES = flags.DEFINE_float("train_minutes", 0.0, "Wall-clock budget: checkpoint and stop after this many minutes "
                              "(0: none; single process). Re-running with the same --workdir resumes.")

EXIT_NONFINITE = 3


def cluster_detected(env=os.environ) -> bool:
    """True when the environment describes a multi-process job."""
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env:
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return False


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, cpu_collectives: str = "gloo") -> None:
    """``jax.distributed.initialize`` with the CPU collectives chosen first (unset arguments: detected)."""
    import jax

    if (num_processes is None) != (process_id is None):
        raise app.UsageError("--num_processes and --process_id go together (or leave both unset)")
    if process_id is not None and process_id >= num_processes:
        raise app.UsageError(f"--process_id={process_id}: expected < --num_processes={num_processes}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


class _DropOrbaxInfo(logging.Filter):
    def filter(self, record):  # noqa: D401
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    cli.check_output_dir(_WORKDIR.value, "--workdir")
    import jax
    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and (
            cluster_detected() or (_NUM_PROCESSES.value or 1) > 1)):
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               _CPU_COLLECTIVES.value)
    if not _ORBAX_INFO.value:
        for h in logging.getLogger().handlers:
            h.addFilter(_DropOrbaxInfo())
    logging.getLogger().setLevel(logging.INFO)

    from tta_jax.train.loop import NonFiniteError, train

    config = _CONFIG.value
    workdir = _WORKDIR.value
    # Validate before anything is written: an invalid config leaves no config.json behind.
    if "diffusion" in config:  # experiment configs built on tta_jax.config.base_config(): full schema check
        from tta_jax.config import validate_config

        validate_config(config)
    from tta_jax.train.config import validate_trainer_config

    validate_trainer_config(config, num_processes=jax.process_count())
    logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    guard = None
    if _MINUTES.value > 0:
        if jax.process_count() > 1:
            raise app.UsageError("--train_minutes is for single-process runs (each process reads its own clock)")
        from tta_jax.train.preemption import BudgetGuard

        guard = BudgetGuard(_MINUTES.value * 60)
    try:
        result = train(config, workdir, guard=guard)
    except NonFiniteError as e:
        logging.error("%s", e)
        sys.stdout.flush()
        sys.exit(EXIT_NONFINITE)
    logging.info("finished: step %d (%s)", result.step, result.reason)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "last_run.json"), "w") as f:
            json.dump({"step": result.step, "reason": result.reason, "start_step": result.start_step,
                       "flops_per_step": result.flops_per_step}, f)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
