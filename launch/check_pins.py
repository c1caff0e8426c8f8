"""Check that every dependency pin resolves on a fresh machine (stdlib only; runs before any venv).

A pin is `name==version` (or a comment / blank line). Local paths, URLs, `name @ ...`, `-e` lines and
options that point pip at another index would install only where they were written, and a CI venv
cached by the pins' hash hides that. Usage:

    python launch/check_pins.py constraints.txt requirements-nodeps.txt [...]

Prints one line per bad pin (`FILE:LINE: ...`) and exits 1; prints nothing and exits 0 when all are
good. `pyproject.toml` is checked too when named (its dependency strings must be `name==version`).
"""
from __future__ import annotations

import re
import sys

_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
_BAD_HINT = re.compile(r"(@|://|^-e\b|^--?(index-url|extra-index-url|find-links|editable)\b|^-[fi]\b|/tmp/)")


def check_requirement_line(line: str, exact: bool = True) -> str | None:
    """Return why `line` is not a portable pin, or None when it is one (or a comment / blank).

    exact=False accepts a bare registry name too (an unpinned optional extra in pyproject.toml).
    """
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    if _BAD_HINT.search(text):
        return f"not a registry pin (local path, URL, editable or index option): {text!r}"
    if not exact and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        return None
    if "+" in text.split("==", 1)[-1]:
        return f"local version label (e.g. '+cpu') that the registry does not serve: {text!r}"
    if not _PIN.match(text):
        return f"not of the form name==version: {text!r}"
    return None


def check_requirements_file(path: str) -> list[str]:
    """All problems of one requirements/constraints file, as `PATH:LINE: reason` strings."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            why = check_requirement_line(line)
            if why:
                out.append(f"{path}:{n}: {why}")
    return out


def check_pyproject(path: str) -> list[str]:
    """pyproject.toml's dependencies must be name==version; optional extras may also be a bare name."""
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    proj = data.get("project", {})
    groups = {"dependencies": proj.get("dependencies", [])}
    groups.update({f"optional-dependencies.{k}": v
                   for k, v in proj.get("optional-dependencies", {}).items()})
    lines = open(path, encoding="utf-8").read().splitlines()
    out = []
    for group, deps in groups.items():
        for dep in deps:
            if dep.startswith("tta_jax"):  # self-reference to another extra
                continue
            why = check_requirement_line(dep, exact=(group == "dependencies"))
            if why:
                n = next((i for i, l in enumerate(lines, 1) if f'"{dep}"' in l), 0)
                out.append(f"{path}:{n}: [{group}] {why}")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    problems = []
    for path in argv:
        try:
            problems += check_pyproject(path) if path.endswith(".toml") else check_requirements_file(path)
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror})")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print("Pins must be 'name==version' from the package registry; 'make lock' writes them so.",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
