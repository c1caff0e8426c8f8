"""Every repository file that the code or the docs cite exists.

Scans the .py files under the package directories plus README.md and docs/*.md for repository-relative
paths such as ``configs/ezaudio_demo.py``, ``docs/experiments.md`` or ``launch/gpu/slurm.sbatch``, and
bare Markdown names such as ``experiments.md`` (which must exist at the top level or under docs/). A path
that is part of a longer one (``github.com/org/repo/tests/x.py``, ``/data/configs/x.py``, ``$DIR/launch/x.sh``)
is not a citation of this repository and is skipped.
"""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIRS = ("tta_jax", "data_pipeline", "launch", "configs", "benchmarks", "tests")
TOP_DIRS = ("docs", "configs", "launch", "tta_jax", "data_pipeline", "benchmarks", "tests", "notebooks")
EXTS = ("py", "md", "json", "sh", "sbatch", "txt")

# Not preceded by a path character (so not the tail of a URL or of another path), not followed by one.
_BEFORE = r"(?<![\w./~$@:-])"
_AFTER = r"(?![\w/-])"
PATH_RE = re.compile(_BEFORE + r"((?:%s)/[\w./-]*?\.(?:%s))" % ("|".join(TOP_DIRS), "|".join(EXTS)) + _AFTER)
# A bare name directly inside quotes ("report.md") is a file a program writes, not a citation.
BARE_MD_RE = re.compile(_BEFORE + r"(?<![\"'])([\w-]+\.md)" + _AFTER)

# Placeholders that stand for a user's own file, not for a file of this repository.
ALLOWED = {
    "configs/X.py",  # "--config configs/X.py": any config file (launch/train.py, launch/sample.py, tta_jax/config.py)
}
ALLOWED_BARE_MD = {
    "report.md",  # outputs/demo/report.md and launch.evaluate's Markdown twin: written by a run, not shipped
}


def scanned_files() -> list[str]:
    files = []
    for d in CODE_DIRS:
        files += glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True)
    files.append(os.path.join(ROOT, "README.md"))
    files += glob.glob(os.path.join(ROOT, "docs", "*.md"))
    this = os.path.abspath(__file__)  # its examples cite missing files on purpose
    return sorted(f for f in files if os.path.isfile(f) and os.path.abspath(f) != this)


def cited_paths(text: str) -> set[str]:
    """Repository-relative paths (``dir/name.ext``) and bare ``name.md`` names cited in ``text``."""
    paths = {m.group(1).rstrip(".") for m in PATH_RE.finditer(text)}
    return paths | {m.group(1) for m in BARE_MD_RE.finditer(text)}


def missing_in(text: str) -> list[str]:
    out = []
    for p in sorted(cited_paths(text)):
        if "/" in p:
            if p not in ALLOWED and not os.path.exists(os.path.join(ROOT, p)):
                out.append(p)
        elif p not in ALLOWED_BARE_MD and not any(os.path.exists(os.path.join(ROOT, d, p)) for d in ("", "docs")):
            out.append(p)
    return out


def test_scanner_finds_paths_and_skips_urls():
    text = ("see configs/ezaudio_demo.py, docs/not_a_file.md and `launch/gpu/slurm.sbatch`; "
            "github.com/haidog-yaqub/EzAudio/tests/x.py and /data/configs/y.py are not ours; "
            "notes in experiments.md, missing.md.")
    assert cited_paths(text) == {"configs/ezaudio_demo.py", "docs/not_a_file.md", "launch/gpu/slurm.sbatch",
                                 "experiments.md", "missing.md"}
    assert missing_in(text) == ["docs/not_a_file.md", "missing.md"]


def test_there_is_something_to_scan():
    files = scanned_files()
    assert os.path.join(ROOT, "README.md") in files
    assert os.path.join(ROOT, "docs", "experiments.md") in files
    assert len(files) > 50


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_cited_files_exist(path):
    with open(path, encoding="utf-8") as f:
        missing = missing_in(f.read())
    assert not missing, f"{os.path.relpath(path, ROOT)} cites files that do not exist: {missing}"
