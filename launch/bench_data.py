"""Data pipeline benchmark: embedded render clips/s, precompute clips/s, loader records/s and MB/s.

  python -m launch.bench_data [--data_dir PRECOMPUTED] [--num_clips 200] [--json out.json]

Without --data_dir it renders `num_clips` embedded demo clips, precomputes them with the toy codec
(data_pipeline/toy.py) + byte tokens into a temp dir, then times the grain loader. MB/s counts the
bytes of the numpy arrays the loader hands out. Prints a table and writes JSON with the machine,
versions and config. `bench(...)` returns the same dict (for launch/bench.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("jax", "grain", "array_record", "numpy", "tinysoundfont", "soundfile"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def _time_loader(data_dir: str, batch_size: int, num_workers: int, steps: int, **kw) -> dict:
    from tta_jax.data.loader import LoaderConfig, make_dataset

    cfg = LoaderConfig(batch_size=batch_size, num_workers=num_workers, **kw)
    it = iter(make_dataset(data_dir, cfg, 0, 1))
    next(it)  # warm-up (worker start, first reads)
    t, nbytes = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        nbytes += sum(v.nbytes for v in b.values() if hasattr(v, "nbytes"))
    dt = time.perf_counter() - t
    if hasattr(it, "close"):
        it.close()
    return {"name": f"loader bs={batch_size} workers={num_workers}" + (" +aug" if kw else ""),
            "records_per_s": steps * batch_size / dt, "mb_per_s": nbytes / dt / 1e6,
            "seconds": dt, "steps": steps}


def bench(data_dir: str | None = None, num_clips: int = 200, duration: float = 4.0,
          sample_rate: int = 22050, batch_size: int = 32, steps: int = 50,
          workers: tuple[int, ...] = (0, 1), render_workers: int = 1) -> dict:
    import jax

    rows = []
    tmp = None
    if data_dir is None:
        from tta_jax.data import embedded
        from data_pipeline.precompute import PrecomputeConfig, run_precompute
        from data_pipeline.sources import AudioConfig, folder_source
        from data_pipeline.toy import FrameCodec, byte_tokens

        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        raw, data_dir = os.path.join(tmp.name, "raw"), os.path.join(tmp.name, "pre")
        ecfg = embedded.EmbeddedConfig(num_clips=num_clips, duration=duration, sample_rate=sample_rate)
        t = time.perf_counter()
        embedded.export_embedded(raw, ecfg, num_workers=render_workers)
        dt = time.perf_counter() - t
        rows.append({"name": f"embedded render+wav ({duration:g} s clips, {render_workers} proc)",
                     "records_per_s": num_clips / dt,
                     "mb_per_s": num_clips * duration * sample_rate * 4 / dt / 1e6, "seconds": dt})
        codec = FrameCodec(sample_rate=sample_rate)
        pcfg = PrecomputeConfig(audio=AudioConfig(sample_rate=sample_rate, crop_seconds=duration,
                                                  normalize=None), shard_size=64, batch_size=16)
        t = time.perf_counter()
        run_precompute(folder_source(raw), data_dir, jax.jit(codec.encode), byte_tokens, pcfg,
                       progress=False)
        dt = time.perf_counter() - t
        rows.append({"name": "precompute (toy codec, byte tokens)", "records_per_s": num_clips / dt,
                     "mb_per_s": num_clips * duration * sample_rate * 4 / dt / 1e6, "seconds": dt})
    for w in workers:
        rows.append(_time_loader(data_dir, batch_size, w, steps))
    rows.append(_time_loader(data_dir, batch_size, 0, steps, crop_frames=64, caption_dropout=0.1,
                             mask_partial_prob=0.25))
    result = {
        "benchmark": "data", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                         "python": platform.python_version()},
        "versions": _versions(),
        "config": {"data_dir": None if tmp else data_dir, "num_clips": num_clips,
                   "duration": duration, "sample_rate": sample_rate, "batch_size": batch_size,
                   "steps": steps, "workers": list(workers)},
        "results": rows,
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def print_table(result: dict) -> None:
    print(f"{'stage':<52} {'records/s':>10} {'MB/s':>9} {'seconds':>8}")
    for r in result["results"]:
        print(f"{r['name']:<52} {r['records_per_s']:>10.1f} {r['mb_per_s']:>9.2f} {r['seconds']:>8.2f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_clips", type=int, default=200)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--workers", default="0,1", help="comma list of grain worker counts")
    p.add_argument("--render_workers", type=int, default=1)
    p.add_argument("--json", default="bench_data.json")
    a = p.parse_args(argv)
    res = bench(a.data_dir, a.num_clips, a.duration, batch_size=a.batch_size, steps=a.steps,
                workers=tuple(int(x) for x in a.workers.split(",") if x != ""),
                render_workers=a.render_workers)
    print_table(res)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.json}")
    return res


if __name__ == "__main__":
    main()
