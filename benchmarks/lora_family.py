"""LoRA on one instrument family of the embedded dataset, on top of a short demo run (issue #22's LoRA check).

    python benchmarks/lora_family.py --out outputs/lora_family [--family brass] [--num_clips 600]
        [--base_minutes 6] [--lora_steps 400] [--lora_lr 2e-3] [--rank 8] [--targets REGEX] [--name lora]
        [--samples 8] [--json benchmarks/results_lora_family.json]

1. ``launch.demo`` (``configs/ezaudio_demo.py``) on ``num_clips`` embedded clips for ``base_minutes``: the base
   run OUT/demo/workdir, its data (OUT/demo/data, with the rendered clips and their labels) and its report.
2. The training clips of one family (single-event clips whose ``family`` label is ``--family``) precomputed
   alone with the same codec and text encoder -> OUT/family_data.
3. ``launch.train`` with ``config.lora`` (rank 8 on the DiT's self- and cross-attention q/k/v/out), only the
   adapters trainable, started from the base run (``train.init_from``, ``init_prefix=net``) -> OUT/lora.
4. ``launch.export --trainable_only``: the adapter file; its size against the base params.
5. Sampling ``--samples`` clips of the family's demo prompt (and of every other family's, as a control) with
   the base, with the LoRA run (adapters applied at every call: unmerged) and with the base + the adapter file
   merged into the kernels (``launch.sample --lora``'s path): max |merged - unmerged| over latents and audio,
   and the in-domain evaluator's family accuracy of each.

Prints a table and writes JSON (``--json``). Every step resumes (existing outputs are reused).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ezaudio_demo.py")
TARGETS = ".*/(attn|cross_attn)/to_(q|k|v|out)"


def run(*args: str) -> None:
    print("$ python -m", " ".join(args), flush=True)
    p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if p.returncode != 0:
        raise SystemExit(f"python -m {args[0]} failed (exit {p.returncode})")


def family_folder(demo_data: str, family: str, out: str) -> int:
    """The train-split single-event clips of ``family`` from the demo's rendered clips -> ``out`` (symlinked WAVs
    + metadata.csv); -> the number of clips."""
    src = os.path.join(demo_data, "embedded_audio")
    with open(os.path.join(src, "metadata.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["family"] == family and r["split"] == "train"
                and r.get("num_events", "1") == "1"]
    if not rows:
        raise SystemExit(f"no single-event train clips of family {family!r} in {src}/metadata.csv")
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    for r in rows:
        link = os.path.join(out, r["path"])
        if not os.path.exists(link):
            os.symlink(os.path.abspath(os.path.join(src, r["path"])), link)
    with open(os.path.join(out, "metadata.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def precompute_family(folder: str, data: str) -> None:
    """``folder`` encoded as the demo encodes the embedded set (whole 4 s clips, levels kept) -> ``data``."""
    from configs.ezaudio_demo import get_config
    from data_pipeline import build, precompute_config

    if os.path.exists(os.path.join(data, "manifest.json")):
        return
    c = precompute_config.get_config()
    c.source, c.source_args.root = "folder", folder
    c.audio.sample_rate, c.audio.crop_seconds, c.audio.normalize = 0, 4.0, None
    os.makedirs(data, exist_ok=True)
    build.run(c, data, system=get_config(), progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/lora_family")
    ap.add_argument("--family", default="brass")
    ap.add_argument("--num_clips", type=int, default=600)
    ap.add_argument("--base_minutes", type=float, default=6.0)
    ap.add_argument("--lora_steps", type=int, default=400)
    ap.add_argument("--lora_lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default=TARGETS, help="regex over the DiT's kernel paths (config.lora.targets)")
    ap.add_argument("--name", default="lora", help="the LoRA run's folder (and adapter file) name under --out")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    demo, fam_dir, fam_data, lora_run = (os.path.join(out, d) for d in ("demo", "family_clips", "family_data",
                                                                         a.name))
    adapter = os.path.join(out, f"{a.name}.safetensors")
    t = {}
    t0 = time.time()
    if not os.path.exists(os.path.join(demo, "report.json")):
        run("launch.demo", "--out", demo, "--num_clips", str(a.num_clips), "--train_minutes", str(a.base_minutes),
            "--samples_per_prompt", "1")
    t["base_s"] = time.time() - t0
    n_clips = family_folder(os.path.join(demo, "data"), a.family, fam_dir)
    t0 = time.time()
    precompute_family(fam_dir, fam_data)
    t["precompute_s"] = time.time() - t0
    t0 = time.time()
    if not os.path.exists(os.path.join(lora_run, "last_run.json")):
        run("launch.train", "--config", CONFIG, "--workdir", lora_run, f"--config.data.precomputed_dir={fam_data}",
            f"--config.lora.targets=('{a.targets}',)", f"--config.lora.rank={a.rank}",
            "--config.optimizer.trainable=('lora/.*',)", f"--config.optimizer.lr={a.lora_lr}",
            "--config.optimizer.warmup_steps=20", f"--config.train.total_steps={a.lora_steps}",
            f"--config.train.init_from={os.path.join(demo, 'workdir')}", "--config.train.init_prefix=net",
            "--config.train.measure_peak=False", "--config.train.progress_bar=False",
            "--config.train.tensorboard=False")
    t["lora_train_s"] = time.time() - t0
    if not os.path.exists(adapter):
        run("launch.export", "--workdir", lora_run, "--out", adapter, "--trainable_only")

    import numpy as np

    from launch.demo import FAMILY_PROMPTS, evaluate
    from launch.runs import load_config
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.lora import apply_lora_files

    base_cfg, lora_cfg = load_config(os.path.join(demo, "workdir")), load_config(lora_run)
    base, _ = load_params(os.path.join(demo, "workdir"))
    run_params, lora_step = load_params(lora_run)
    merged = apply_lora_files(base, [adapter])
    fams = list(FAMILY_PROMPTS)
    prompts = [FAMILY_PROMPTS[a.family]] * a.samples + [FAMILY_PROMPTS[f] for f in fams if f != a.family]
    families = [[a.family]] * a.samples + [[f] for f in fams if f != a.family]
    rows = {}
    outs = {}
    for name, cfg, params, wd in (("base", base_cfg, base, os.path.join(demo, "workdir")),
                                  ("lora unmerged", lora_cfg, run_params, lora_run),
                                  ("lora merged", base_cfg, merged, os.path.join(demo, "workdir"))):
        t0 = time.time()
        lat, audio, codec = generate_audio(cfg, params, prompts, seed=0, workdir=wd)
        outs[name] = (np.asarray(lat), np.asarray(audio))
        m, _ = evaluate(audio, families, codec.sample_rate)
        hits = m["per_prompt_hit"]
        rows[name] = dict(family_accuracy=float(np.mean(hits[:a.samples])),
                          other_families_accuracy=float(np.mean(hits[a.samples:])),
                          predicted_family=m["predicted"][:a.samples], sample_s=time.time() - t0)
    (lu, au), (lm, am) = outs["lora unmerged"], outs["lora merged"]
    base_bytes = sum(int(np.asarray(x).nbytes) for x in __import__("jax").tree.leaves(base))
    result = dict(
        family=a.family, family_train_clips=n_clips, num_clips=a.num_clips, base_minutes=a.base_minutes,
        lora_steps=lora_step, rank=a.rank, targets=a.targets, name=a.name, lr=a.lora_lr, samples=a.samples, times=t,
        merged_vs_unmerged_latent_max=float(np.abs(lu - lm).max()),
        merged_vs_unmerged_audio_max=float(np.abs(au - am).max()),
        adapter_bytes=os.path.getsize(adapter), base_param_bytes=base_bytes,
        adapter_frac=os.path.getsize(adapter) / base_bytes, rows=rows)
    print(f"\nLoRA r{a.rank} on {a.family!r} ({n_clips} clips, {lora_step} steps, {t['lora_train_s']:.0f} s) "
          f"over a {a.base_minutes:g}-minute demo base")
    print(f"{'params':16s} {a.family + ' acc':>12s} {'other acc':>10s}  predicted ({a.family} prompt)")
    for name, r in rows.items():
        top = max(set(r["predicted_family"]), key=r["predicted_family"].count)
        print(f"{name:16s} {r['family_accuracy']:12.2f} {r['other_families_accuracy']:10.2f}  mostly {top}")
    print(f"merged vs unmerged: latents max {result['merged_vs_unmerged_latent_max']:.2e}, audio max "
          f"{result['merged_vs_unmerged_audio_max']:.2e}; adapter {result['adapter_bytes'] / 1e3:.0f} kB = "
          f"{100 * result['adapter_frac']:.2f}% of the base params")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", a.json)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
