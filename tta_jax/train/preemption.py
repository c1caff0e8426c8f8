"""Preemption: SIGTERM (and SIGINT, optionally) -> save a checkpoint at the next step and exit cleanly.

Single process: a signal handler sets a flag that the loop polls once per step.
Multi-host (``jax.process_count() > 1``): every host must stop at the *same* step, so the loop asks
``jax.experimental.multihost_utils.reached_preemption_sync_point(step)`` (JAX's coordination service
catches SIGTERM once ``jax.distributed.initialize`` has run), falling back to the local flag if the
preemption service is unavailable.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Context manager installing the handlers; ``should_stop(step)`` is polled by the loop."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self._flag = threading.Event()
        self._old = {}
        self._sync_ok = jax.process_count() > 1

    def _handler(self, signum, frame):  # noqa: ARG002
        log.warning("received signal %d: will checkpoint and stop at the next step", signum)
        self._flag.set()

    def __enter__(self):
        # Multi-host: JAX's preemption notifier owns SIGTERM; a Python handler would shadow it.
        if not self._sync_ok and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        return False

    def request(self) -> None:
        """Ask for a stop (tests / external callers)."""
        self._flag.set()

    @property
    def requested(self) -> bool:
        return self._flag.is_set()

    def should_stop(self, step: int) -> bool:
        if self._sync_ok:
            try:
                from jax.experimental import multihost_utils
                if multihost_utils.reached_preemption_sync_point(int(step)):
                    self._flag.set()
                    return True
                # The local flag alone must not stop one host early; only the sync point decides.
                return False
            except Exception as e:  # noqa: BLE001 - service not initialised
                log.warning("preemption sync point unavailable (%s); using the local flag", e)
                self._sync_ok = False
        return self._flag.is_set()


class BudgetGuard:
    """A :class:`PreemptionGuard` that also stops (and checkpoints) after ``seconds`` of wall-clock time
    (``launch.train --train_minutes``, ``launch.demo``). Single process: each process would read its own clock."""

    def __init__(self, seconds: float):
        import time

        self._time = time.time
        self._inner = PreemptionGuard()
        self._deadline = time.time() + float(seconds)

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)

    def should_stop(self, step: int) -> bool:
        return self._inner.should_stop(step) or self._time() > self._deadline
