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
weights are missing are listed as skipped, with the reason, and the others still run. When no metric
at all could run (e.g. your own audio and no weights), the report is still written, what to pass is
printed, and the exit status is 3.

Writes ``--out`` (JSON: metrics, skipped, protocol with backbones + sha256, versions) and a Markdown
twin with the same stem.
"""
from __future__ import annotations

import argparse
import os
import sys


NO_METRIC_EXIT = 3  # exit status when every metric was skipped


def build_parser() -> argparse.ArgumentParser:
    env = "under $TTA_JAX_EVAL_WEIGHTS (~/.cache/tta_jax/eval_weights if unset)"
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", required=True, metavar="DIR", help="folder of generated audio")
    p.add_argument("--reference", required=True, metavar="DIR|embedded[:N[:SEED]]",
                   help="folder of reference audio, or embedded[:N[:SEED]] for the embedded demo dataset's test "
                        "split (rendered on the fly)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="report .json path (a .md is written next to it)")
    p.add_argument("--captions", default=None, metavar="FILE",
                   help="CSV/JSON/JSONL captions by file name (for the CLAP score); default: the folders' "
                        "metadata.csv")
    p.add_argument("--cnn14", default=None, metavar="FILE",
                   help="PANNs CNN14 16 kHz checkpoint (Cnn14_16k_mAP=0.438.pth, or a .safetensors of it) for FD, "
                        f"KID, KL and IS; default: Cnn14_16k_mAP=0.438.pth {env}")
    p.add_argument("--vggish", default=None, metavar="FILE",
                   help=f"torchvggish checkpoint (vggish-10086976.pth) for FAD; default: vggish-10086976.pth {env}")
    p.add_argument("--clap", default=None, metavar="DIR",
                   help="HF-format laion/larger_clap_general folder for the CLAP score (text-audio) and CLAP_A "
                        f"(generated-vs-reference audio); default: the folder larger_clap_general {env}")
    p.add_argument("--indomain", choices=("auto", "on", "off"), default="auto",
                   help="the in-domain evaluator (accuracy against the prompted labels and an FD on its embedding, "
                        "with a real-vs-real baseline); it knows only General-MIDI renders of the embedded dataset, "
                        "so its numbers mean nothing on other audio. auto: on when --reference is embedded "
                        "(default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N files of each set")
    p.add_argument("--kid_subsets", type=int, default=100, metavar="N",
                   help="KID: number of random subsets averaged (default: %(default)s)")
    p.add_argument("--kid_subset_size", type=int, default=1000, metavar="N",
                   help="KID: clips per subset, capped at the smaller set's size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="clips per embedder call (equal-length clips are batched; default: %(default)s)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> dict:
    """Runs the suite and writes the report; -> the report. Raises ``SystemExit(3)`` (after writing the report
    and printing which weights to pass) when no metric could run."""
    a = parse_args(argv)
    from tta_jax.convert.eval_backbones import LOADERS
    from tta_jax.eval import suite

    gen = suite.load_folder(a.generated, a.limit)
    if a.reference.split(":")[0] == "embedded" and not os.path.isdir(a.reference):
        ref = suite.load_embedded(a.reference, "test", a.limit)
    else:
        ref = suite.load_folder(a.reference, a.limit)
    cfg = suite.SuiteConfig(cnn14=a.cnn14, vggish=a.vggish, clap=a.clap, captions=a.captions,
                            indomain={"auto": None, "on": True, "off": False}[a.indomain],
                            kid_subsets=a.kid_subsets, kid_subset_size=a.kid_subset_size, batch=a.batch)
    report = suite.run_suite(gen, ref, cfg, log=lambda m: print(m, file=sys.stderr, flush=True), loaders=LOADERS)
    js, md = suite.write_report(report, a.out)
    for k, v in report["metrics"].items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    if report["skipped"]:
        print("skipped (see report):", file=sys.stderr)
        for k, v in report["skipped"].items():
            print(f"  {k}: {v}", file=sys.stderr)
    print(f"wrote {js} and {md}", file=sys.stderr)
    if not report["metrics"]:
        print("error: " + suite.no_metric_message(report), file=sys.stderr)
        raise SystemExit(NO_METRIC_EXIT)
    return report


if __name__ == "__main__":
    main()
