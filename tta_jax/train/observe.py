"""Observability: metric averaging (clu.metrics), JSONL + TensorBoard (tensorboardX) writers,
spectrogram/audio summaries, parameter overview, FLOP counting and MFU.

Only the primary process (``jax.process_index() == 0``) writes files. clu's metric_writers are not
used (they need TensorFlow) and neither is ``clu.metrics.Std`` (broken on jax 0.10).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from clu import parameter_overview

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- metric averaging
class MetricAverager:
    """Averages scalar metric dicts over a logging interval.

    ``update`` only keeps the device arrays (no host sync, no eager ops); ``compute`` fetches them once
    and reduces each metric with ``clu.metrics.Average`` (merging clu metrics every step costs
    ~0.15 s of eager dispatch per step on CPU, so they are built once per interval).
    """

    def __init__(self):
        self._items: list[dict] = []

    def update(self, metrics: Mapping[str, Any]) -> None:
        self._items.append({k: v for k, v in metrics.items() if jnp.ndim(v) == 0})

    def compute(self) -> dict[str, float]:
        if not self._items:
            return {}
        host = jax.device_get(self._items)
        self._items = []
        keys = sorted(set().union(*host))
        out = {}
        for k in keys:
            vals = np.asarray([h[k] for h in host if k in h], np.float32)
            out[k] = float(clu_metrics.Average.from_model_output(values=vals).compute())
        return out


# ----------------------------------------------------------------------------- writers
class JsonlWriter:
    """Appends one JSON object per line (``{"step": s, ...}``)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "a", buffering=1)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
                    for k, v in values.items()})
        self._f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def spectrogram_image(spec, *, flip: bool = True) -> np.ndarray:
    """[F, T] (e.g. log-mel) -> uint8 [F, T, 3] image (viridis if matplotlib is present, else grey).

    Low frequencies are at the bottom (``flip``). Values are min-max normalised.
    """
    s = np.asarray(spec, np.float32)
    if s.ndim != 2:
        raise ValueError(f"spectrogram_image: expected [F, T], got shape {s.shape}")
    lo, hi = np.nanmin(s), np.nanmax(s)
    s = (s - lo) / max(hi - lo, 1e-8)
    if flip:
        s = s[::-1]
    try:
        from matplotlib import colormaps
        rgb = colormaps["viridis"](s)[..., :3]
    except Exception:  # pragma: no cover
        rgb = np.repeat(s[..., None], 3, axis=-1)
    return (rgb * 255).astype(np.uint8)


class TensorBoardWriter:
    """tensorboardX ``SummaryWriter`` with scalar / spectrogram / audio helpers."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(logdir)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), int(step))

    def spectrogram(self, step: int, tag: str, spec) -> None:
        """``spec`` [F, T] -> colour image summary."""
        self.writer.add_image(tag, spectrogram_image(spec), int(step), dataformats="HWC")

    def audio(self, step: int, tag: str, wav, sample_rate: int) -> None:
        """``wav`` [T] float in [-1, 1] -> audio summary."""
        w = np.clip(np.asarray(wav, np.float32).reshape(-1), -1.0, 1.0)
        self.writer.add_audio(tag, w, int(step), sample_rate=int(sample_rate))

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, int(step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def param_overview(params) -> str:
    """clu's table of parameter names, shapes, sizes (+ totals).

    Built from shapes/dtypes only, so it works for params sharded across hosts (no device_get).
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return parameter_overview.get_parameter_overview(abstract, include_stats=False)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- FLOPs / MFU
def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (``jit(...).lower(...).compile()``) function, per XLA's
    ``cost_analysis`` (per device program under SPMD). None if unavailable."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # pragma: no cover - backend without cost analysis
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def measure_peak_flops(n: int = 1024, dtype=jnp.float32, repeats: int = 5, device=None) -> float:
    """Achieved FLOP/s of an ``n x n`` matmul on one device (a practical 'peak' when none is given)."""
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


class Throughput:
    """steps/s, samples/s, FLOP/s and MFU over the interval since the last ``measure``."""

    def __init__(self, batch_size: int, flops_per_step: float | None, peak_flops: float | None,
                 num_devices: int = 1):
        self.batch_size = batch_size
        self.flops_per_step = flops_per_step      # per device (SPMD program)
        self.peak = peak_flops                    # per device
        self.num_devices = num_devices
        self._t = time.perf_counter()
        self._n = 0

    def tick(self, n: int = 1) -> None:
        self._n += n

    def measure(self) -> dict[str, float]:
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        sps = self._n / dt
        out = {"perf/steps_per_s": sps, "perf/samples_per_s": sps * self.batch_size}
        if self.flops_per_step:
            out["perf/tflops_per_s_per_device"] = sps * self.flops_per_step / 1e12
            if self.peak:
                out["perf/mfu"] = sps * self.flops_per_step / self.peak
        self._t, self._n = now, 0
        return out
