r"""Run a Jupyter notebook top to bottom without Jupyter (no nbclient / ipykernel needed)::

    python tests/notebook_runner.py notebooks/01_sample.ipynb [--param NAME=PYTHON_LITERAL ...] [--cwd DIR]

The code cells run in order in one namespace, each compiled with the filename ``NB.ipynb:cell<N>`` (cells
numbered from 1 in notebook order, Markdown cells included) so a traceback names the cell. ``--param``
overrides are assigned right after the cell tagged ``parameters`` (papermill-style; the value is a Python
literal: ``--param STEPS=3 --param WORKDIR='"/tmp/run"'``; only names that cell assigns are accepted).
A cell whose last statement is an expression displays its value, as in Jupyter. Open matplotlib figures are
drawn at the end of each cell (Agg backend, forced) and closed.

``IPython.display`` is the real one when IPython is installed; otherwise a minimal stand-in (``Audio``,
``Image``, ``Markdown``, ``HTML``, ``display``) that checks its inputs (``Audio``: a finite, non-empty array
with a positive ``rate``, or an existing file) so a notebook stays idiomatic. Notebooks with IPython magics or
shell escapes (``%time``, ``!pip``) are refused before anything runs.

Exit status: 0 when every cell ran; 1 when a cell raised (its number and traceback on stderr); 2 for a bad
notebook or bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import json
import linecache
import os
import sys
import time
import traceback
import types
import warnings
from typing import Any, Sequence


class NotebookError(Exception):
    """A notebook that cannot be run (bad JSON / structure, magics, syntax errors, bad parameters)."""


# ---------------------------------------------------------------------------------------------- reading
def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def load_notebook(path: str) -> dict:
    """``path`` -> the notebook dict; raises :class:`NotebookError` naming the file unless it is nbformat 4
    JSON whose cells each have a known ``cell_type`` and a ``source``."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise NotebookError(f"{path}: not a readable notebook ({e})") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path}: expected nbformat 4 JSON with a 'cells' list")
    for i, cell in enumerate(nb["cells"], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") \
                or "source" not in cell:
            raise NotebookError(f"{path}: cell {i} is not a code, markdown or raw cell with a 'source'")
    return nb


def parameter_cells(nb: dict) -> list[int]:
    """Numbers (from 1) of the code cells tagged ``parameters``."""
    return [i for i, c in enumerate(nb["cells"], 1)
            if c["cell_type"] == "code" and "parameters" in (c.get("metadata", {}).get("tags") or ())]


def find_magics(source: str) -> list[tuple[int, str]]:
    """(line number, line) of each line that is an IPython magic or shell escape (starts with ``%`` or ``!``
    and is not inside a bracket or a string; when the cell parses as Python there are none)."""
    try:
        ast.parse(source)
        return []
    except SyntaxError:
        pass
    return [(n, line.strip()) for n, line in enumerate(source.splitlines(), 1)
            if line.lstrip().startswith(("%", "!"))]


def assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of a parameters cell (``X = ...``, ``X: int = ...``)."""
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def compile_cells(nb: dict, name: str) -> list[tuple[int, list]]:
    """Every code cell -> (its number, [code objects]): the body, and its last statement separately when that
    is an expression whose value is displayed (not ending in ``;``). Raises :class:`NotebookError` for magics
    and syntax errors before anything runs."""
    out = []
    for i, cell in enumerate(nb["cells"], 1):
        if cell["cell_type"] != "code":
            continue
        src = cell_source(cell)
        where = f"{name}:cell{i}"
        magics = find_magics(src)
        if magics:
            n, line = magics[0]
            raise NotebookError(f"{name}: cell {i} line {n} is an IPython magic or shell command ({line!r}); "
                                "notebooks here must be plain Python (use subprocess / Python calls instead)")
        try:
            tree = ast.parse(src, filename=where)
        except SyntaxError as e:
            raise NotebookError(f"{name}: cell {i} line {e.lineno}: syntax error: {e.msg}") from None
        linecache.cache[where] = (len(src), None, src.splitlines(True), where)
        codes = []
        body, last = tree.body, None
        if body and isinstance(body[-1], ast.Expr) and not src.rstrip().endswith(";"):
            body, last = body[:-1], ast.Expression(body[-1].value)
        codes.append(compile(ast.Module(body=body, type_ignores=[]), where, "exec", dont_inherit=True))
        if last is not None:
            codes.append(compile(last, where, "eval", dont_inherit=True))
        out.append((i, codes))
    return out


def parse_params(items: Sequence[str], allowed: Sequence[str], name: str) -> dict[str, Any]:
    """``["NAME=LITERAL", ...]`` -> {NAME: value}; each NAME must be one the parameters cell assigns."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise NotebookError(f"--param {item!r}: expected NAME=PYTHON_LITERAL")
        if key not in allowed:
            raise NotebookError(f"--param {key}: {name}'s parameters cell has no {key} (it sets {list(allowed)})")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise NotebookError(f"--param {key}={text}: not a Python literal (quote strings: "
                                f"{key}='\"{text}\"')") from None
    return out


# ---------------------------------------------------------------------------------------------- display
def _check_audio(data, rate, filename) -> None:
    import numpy as np

    if data is None:
        if not filename or not os.path.isfile(filename):
            raise ValueError(f"Audio: no data and no existing file (filename={filename!r})")
        return
    if isinstance(data, (str, os.PathLike)):
        if not os.path.isfile(data):
            raise ValueError(f"Audio: {data} is not a file")
        return
    a = np.asarray(data, dtype=np.float64)
    if a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"Audio: expected a non-empty [S] or [channels, S] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("Audio: the array has NaN or infinite samples")
    if rate is None or not float(rate) > 0:
        raise ValueError(f"Audio: an array needs a positive rate, got rate={rate!r}")


def display_shim() -> types.ModuleType:
    """A minimal ``IPython.display`` for running without IPython: the objects check their inputs and
    ``display`` prints a one-line summary of each."""
    mod = types.ModuleType("IPython.display")

    class Audio:
        def __init__(self, data=None, filename=None, url=None, embed=None, rate=None, autoplay=False,
                     normalize=True, element_id=None):
            _check_audio(data, rate, filename)
            self.data, self.rate, self.filename = data, rate, filename

        def __repr__(self):
            shape = getattr(self.data, "shape", None)
            if shape is not None and self.rate:
                return f"<Audio {shape[-1] / float(self.rate):.2f} s at {self.rate} Hz>"
            return f"<Audio {self.filename or self.data}>"

    class Image:
        def __init__(self, data=None, url=None, filename=None, format=None, embed=None, width=None,
                     height=None, **kw):
            if filename is None and isinstance(data, (str, os.PathLike)) and not str(data).startswith("http"):
                filename, data = data, None
            if filename is not None and not os.path.isfile(filename):
                raise ValueError(f"Image: {filename} is not a file")
            if filename is None and url is None and not data:
                raise ValueError("Image: no data, filename or url")
            self.filename = filename

        def __repr__(self):
            return f"<Image {self.filename or '(bytes)'}>"

    class Markdown:
        def __init__(self, data=None, url=None, filename=None):
            self.data = data

        def __repr__(self):
            return str(self.data)

    class HTML(Markdown):
        pass

    def display(*objs, **kw):
        for o in objs:
            print(repr(o))

    def clear_output(wait=False):
        pass

    mod.Audio, mod.Image, mod.Markdown, mod.HTML = Audio, Image, Markdown, HTML
    mod.display, mod.clear_output = display, clear_output
    return mod


def install_ipython_shim() -> bool:
    """Installs :func:`display_shim` as ``IPython.display`` unless IPython imports. -> whether it did."""
    try:
        import IPython.display  # noqa: F401
        return False
    except ImportError:
        pkg = types.ModuleType("IPython")
        pkg.__path__ = []
        # what matplotlib reads from a loaded IPython: no shell, and a version it needs no GUI fix-up for
        pkg.get_ipython, pkg.version_info, pkg.__version__ = (lambda: None), (8, 24, 0), "8.24.0+shim"
        pkg.display = display_shim()
        sys.modules["IPython"], sys.modules["IPython.display"] = pkg, pkg.display
        return True


def force_agg() -> None:
    os.environ["MPLBACKEND"] = "Agg"
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg", force=True)
    warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")   # plt.show() under Agg


def _finish_figures() -> None:
    """Draws and closes the open figures, as the inline backend does at the end of a cell."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        plt.figure(num).canvas.draw()
    plt.close("all")


# ---------------------------------------------------------------------------------------------- running
def run_notebook(path: str, params: Sequence[str] = (), cwd: str | None = None, *, log=sys.stderr) -> int:
    """Runs the notebook at ``path`` (in ``cwd``, default its folder) -> exit status (0 ok, 1 a cell raised,
    2 a bad notebook or parameter); progress and errors go to ``log``."""
    name = os.path.basename(path)
    try:
        nb = load_notebook(path)
        tagged = parameter_cells(nb)
        if len(tagged) > 1:
            raise NotebookError(f"{name}: cells {tagged} are all tagged 'parameters'; tag one")
        if params and not tagged:
            raise NotebookError(f"{name}: --param given but no code cell is tagged 'parameters'")
        allowed = assigned_names(cell_source(nb["cells"][tagged[0] - 1])) if tagged else []
        overrides = parse_params(params, allowed, name)
        cells = compile_cells(nb, name)
    except NotebookError as e:
        print(f"error: {e}", file=log)
        return 2
    cwd = os.path.abspath(cwd or os.path.dirname(os.path.abspath(path)))
    force_agg()
    install_ipython_shim()
    from IPython.display import display

    os.chdir(cwd)
    sys.path.insert(0, cwd)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    start = time.time()
    for number, codes in cells:
        t0 = time.time()
        try:
            exec(codes[0], ns)
            if len(codes) > 1:
                value = eval(codes[1], ns)
                if value is not None:
                    display(value)
            _finish_figures()
        except BaseException as e:   # noqa: BLE001 (SystemExit / KeyboardInterrupt in a cell fail it too)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None   # drop this frame
            print(f"\n{name}: cell {number} raised {type(e).__name__}:", file=log)
            print("".join(traceback.format_exception(type(e), e, tb)), file=log, end="")
            return 1
        print(f"[notebook_runner] {name}: cell {number} ok ({time.time() - t0:.1f} s)", file=log)
        if number in tagged and overrides:
            ns.update(overrides)
            print(f"[notebook_runner] {name}: parameters {overrides}", file=log)
    print(f"[notebook_runner] {name}: all cells ran ({time.time() - start:.1f} s)", file=log)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="notebook_runner.py")
    ap.add_argument("notebook")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=PYTHON_LITERAL",
                    help="override a name of the 'parameters' cell (repeat)")
    ap.add_argument("--cwd", default=None, help="working directory (default: the notebook's folder)")
    args = ap.parse_args(argv)
    return run_notebook(args.notebook, args.param, args.cwd)


if __name__ == "__main__":
    sys.exit(main())
