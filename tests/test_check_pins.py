"""The pins in this repository resolve on a fresh machine: registry `name==version` only.

Reproduces issue 16 defect 1 (constraints.txt pinned `pretty_midi @ file:///tmp/dl/...`): the check
must refuse such a line naming FILE:LINE, and the repository's own pin files must pass it.
"""
import subprocess
import sys
from pathlib import Path

from launch import check_pins

ROOT = Path(__file__).resolve().parents[1]
PIN_FILES = ["pyproject.toml", "constraints.txt", "requirements-nodeps.txt",
             "requirements-test-nodeps.txt"]


def test_repository_pins_are_registry_pins():
    problems = []
    for name in PIN_FILES:
        path = str(ROOT / name)
        problems += (check_pins.check_pyproject(path) if name.endswith(".toml")
                     else check_pins.check_requirements_file(path))
    assert problems == []


def test_local_path_pin_fails_naming_the_line(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("# pins\nnumpy==2.1.0\n"
                   "pretty_midi @ file:///tmp/dl/pretty_midi-0.2.11.post0-py3-none-any.whl\n")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "check_pins.py"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{bad}:3:" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_other_non_portable_lines_are_refused():
    for line in ["-e .", "torch==2.13.0+cpu", "foo @ https://x/y.whl", "--find-links /tmp/dl",
                 "numpy>=1.0"]:
        assert check_pins.check_requirement_line(line) is not None, line
    assert check_pins.check_requirement_line("numpy==2.1.0  # ok") is None
    assert check_pins.check_requirement_line("   ") is None
