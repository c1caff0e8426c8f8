"""Benchmarks: each prints a table and writes JSON (+ Markdown) under its --out directory."""
from __future__ import annotations

import json
import os


def write_report(out_dir: str, report: dict, lines: list[str]) -> None:
    """``report.json`` (``report``) and ``report.md`` (the table ``lines``) in ``out_dir``; prints the table."""
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print("\n".join(lines))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
