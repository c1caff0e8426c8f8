"""Evaluate generated audio against references with a pinned protocol.

    python -m launch.evaluate --generated out/samples --reference data/audiocaps_test --out eval/report.json
    python -m launch.evaluate --generated out/samples --reference embedded --out eval/report.json

``--reference`` is a folder of audio files (or an export with ``audio/`` + ``metadata.csv``), or
``embedded[:NUM_CLIPS[:SEED]]`` for the embedded demo dataset's test split (rendered on the fly; this
also turns on the in-domain evaluator). Clips are paired by file stem (``clip_00012.wav`` <->
``clip_00012.flac``) for KL and CLAP_A, and each backbone gets the audio resampled to its own rate.

Weights (nothing is downloaded): ``--cnn14 Cnn14_16k_mAP=0.438.pth``, ``--vggish vggish-10086976.pth``,
``--clap DIR`` (HF-format ``laion/larger_clap_general``), or put them under
``$TTA_JAX_EVAL_WEIGHTS`` (default ``~/.cache/tta_jax/eval_weights``) with those names. Metrics whose
weights are missing are listed as skipped, with the reason, and the others still run.

Writes ``--out`` (JSON: metrics, skipped, protocol with backbones + sha256, versions) and a Markdown
twin with the same stem.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generated", required=True, help="folder of generated audio")
    p.add_argument("--reference", required=True, help="folder of reference audio, or embedded[:N[:SEED]]")
    p.add_argument("--out", required=True, help="report .json path (a .md is written next to it)")
    p.add_argument("--captions", default=None, help="CSV/JSON/JSONL captions by file name (for CLAP)")
    p.add_argument("--cnn14", default=None)
    p.add_argument("--vggish", default=None)
    p.add_argument("--clap", default=None)
    p.add_argument("--indomain", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--limit", type=int, default=None, help="use only the first N files of each set")
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--kid_subset_size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    from tta_jax.eval import suite

    gen = suite.load_folder(a.generated, a.limit)
    if a.reference.split(":")[0] == "embedded" and not os.path.isdir(a.reference):
        ref = suite.load_embedded(a.reference, "test", a.limit)
    else:
        ref = suite.load_folder(a.reference, a.limit)
    cfg = suite.SuiteConfig(cnn14=a.cnn14, vggish=a.vggish, clap=a.clap, captions=a.captions,
                            indomain={"auto": None, "on": True, "off": False}[a.indomain],
                            kid_subsets=a.kid_subsets, kid_subset_size=a.kid_subset_size, batch=a.batch)
    report = suite.run_suite(gen, ref, cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    js, md = suite.write_report(report, a.out)
    for k, v in report["metrics"].items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    if report["skipped"]:
        print("skipped (see report):", file=sys.stderr)
        for k, v in report["skipped"].items():
            print(f"  {k}: {v}", file=sys.stderr)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
