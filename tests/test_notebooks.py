"""The notebooks (notebooks/*.ipynb) are stripped nbformat-4 JSON with one parameters cell, and each runs top to
bottom through tests/notebook_runner.py (no Jupyter): 04 trains a tiny run from a folder of audio (once, a
module fixture), 01-03 sample and edit with that run."""
import ast
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "notebook_runner.py")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
NAMES = ["01_sample.ipynb", "02_editing.ipynb", "03_attention_maps.ipynb", "04_train_own_folder.ipynb"]


def _env(tmp):
    """The test process's environment for a notebook, without the 8 simulated devices; temp files in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", TMPDIR=str(tmp))
    return env


def run_notebook(path, tmp, *params, timeout=600):
    args = [sys.executable, RUNNER, str(path)] + [a for p in params for a in ("--param", p)]
    t0 = time.time()
    p = subprocess.run(args, cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=timeout)
    return p, time.time() - t0


def write_notebook(path, *sources, params=None):
    """A notebook of code cells (``params``: the source of a parameters cell put first)."""
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
              "source": params}] if params is not None else []
    cells += [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s}
              for s in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


# ------------------------------------------------------------------------------------------- structure
def test_the_four_notebooks_are_there():
    assert set(NAMES) <= {os.path.basename(p) for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped_nbformat4_with_one_parameters_cell(path):
    import notebook_runner as runner

    nb = runner.load_notebook(path)     # nbformat 4 JSON, known cell types
    assert nb["nbformat"] == 4
    code = [(i, c) for i, c in enumerate(nb["cells"], 1) if c["cell_type"] == "code"]
    for i, c in code:
        assert c.get("outputs") == [] and c.get("execution_count") is None, f"cell {i} keeps outputs"
    assert runner.parameter_cells(nb) == [code[0][0]], "one parameters cell, the first code cell"
    params = ast.parse(runner.cell_source(code[0][1]))
    assert params.body and all(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in params.body)
    assert nb["cells"][0]["cell_type"] == "markdown"        # says what the notebook does
    runner.compile_cells(nb, os.path.basename(path))        # no magics, no syntax errors


# ------------------------------------------------------------------------------------------- the runner
def test_runner_stops_at_the_failing_cell_and_names_it(tmp_path):
    marker = tmp_path / "ran_cell_3"
    nb = write_notebook(tmp_path / "bad.ipynb", "x = 1\n", "y = x + 1\nraise ValueError('boom')\n",
                        f"open({str(marker)!r}, 'w').close()\n")
    p, _ = run_notebook(nb, tmp_path, timeout=120)
    assert p.returncode == 1
    assert "bad.ipynb: cell 2 raised ValueError" in p.stderr and 'File "bad.ipynb:cell2", line 2' in p.stderr
    assert "ValueError: boom" in p.stderr and not marker.exists()


def test_runner_injects_parameters_after_the_parameters_cell(tmp_path):
    nb = write_notebook(tmp_path / "p.ipynb", "assert (N, NAME) == (5, 'x'), (N, NAME)\n", "N + 1\n",
                        params="N = 1\nNAME = None\n")
    p, _ = run_notebook(nb, tmp_path, "N=5", "NAME='x'", timeout=120)
    assert p.returncode == 0, p.stderr
    p, _ = run_notebook(nb, tmp_path, "M=5", timeout=120)
    assert p.returncode == 2 and "has no M" in p.stderr
    p, _ = run_notebook(nb, tmp_path, "N=abc", timeout=120)
    assert p.returncode == 2 and "not a Python literal" in p.stderr


def test_runner_refuses_magics_before_running(tmp_path):
    marker = tmp_path / "ran"
    nb = write_notebook(tmp_path / "m.ipynb", f"open({str(marker)!r}, 'w').close()\n", "x = 1\n!pip list\n")
    p, _ = run_notebook(nb, tmp_path, timeout=120)
    assert p.returncode == 2 and "cell 2 line 2 is an IPython magic" in p.stderr and not marker.exists()


def test_display_shim_checks_audio():
    import notebook_runner as runner

    shim = runner.display_shim()
    assert "0.50 s at 8 Hz" in repr(shim.Audio(np.zeros(4), rate=8))
    for bad in (dict(data=np.array([0.0, np.nan]), rate=8), dict(data=np.zeros(4), rate=0),
                dict(data=np.zeros(4)), dict(data=np.zeros(0), rate=8), dict(filename="/nonexistent.wav")):
        with pytest.raises(ValueError, match="Audio"):
            shim.Audio(**bad)


# ------------------------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def own_folder_run(tmp_path_factory):
    """04_train_own_folder.ipynb at toy size -> (its runner process, seconds, the trained workdir)."""
    tmp = tmp_path_factory.mktemp("nb04")
    p, seconds = run_notebook(os.path.join(ROOT, "notebooks", "04_train_own_folder.ipynb"), tmp,
                              f"WORK_ROOT={str(tmp / 'root')!r}", "NUM_CLIPS=4", "TRAIN_STEPS=2", "BATCH_SIZE=2",
                              "CROP_FRAMES=32", "STEPS=2")
    return p, seconds, tmp / "root" / "run"


def _check(p, seconds, name):
    assert p.returncode == 0, f"{name} failed:\n{p.stderr[-6000:]}"
    print(f"{name}: {seconds:.0f} s")


@pytest.mark.slow  # ~1 min: precompute, 2 training steps, sampling, all as subprocesses
def test_notebook_04_trains_on_a_folder_and_samples(own_folder_run):
    p, seconds, workdir = own_folder_run
    _check(p, seconds, "04_train_own_folder.ipynb")
    assert json.loads((workdir / "last_run.json").read_text())["step"] == 2
    assert len(glob.glob(str(workdir.parent / "samples" / "*.wav"))) == 2


@pytest.mark.slow  # ~25-40 s each on the run of notebook 04
@pytest.mark.parametrize("name", NAMES[:3])
def test_notebook_runs_on_a_trained_run(own_folder_run, name, tmp_path):
    assert own_folder_run[0].returncode == 0, "notebook 04 (the shared run) failed"
    params = [f"WORKDIR={str(own_folder_run[2])!r}", "STEPS=2"]
    if name == "01_sample.ipynb":
        params.append(f"OUT_DIR={str(tmp_path / 'samples')!r}")
    p, seconds = run_notebook(os.path.join(ROOT, "notebooks", name), tmp_path, *params)
    _check(p, seconds, name)
    if name == "01_sample.ipynb":
        assert len(glob.glob(str(tmp_path / "samples" / "*.wav"))) == 2
