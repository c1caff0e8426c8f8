"""User errors of the launch/* tools come as one ``error: ...`` line naming the key / file, exit status 2 and
no traceback (launch/cli.py); ``--verbose`` adds the traceback and details; real bugs keep their traceback;
``--help`` exits 0. Each case runs the real command in a subprocess (a few seconds at most)."""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "ezaudio.py") + ":tiny"
TOY = os.path.join(ROOT, "tta_jax", "train", "toy.py")


def _run(module, *args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", f"launch.{module}", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(res, expected=None):
    """Exit 2, no traceback, stderr is the single ``error: ...`` line; returns its text."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err and "Traceback" not in res.stdout, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    if expected is not None:
        assert lines[0] == f"error: {expected}"
    return lines[0]


# --- a. misspelt config keys ------------------------------------------------------------------------
def test_misspelt_override_key_is_one_line(tmp_path):
    res = _run("train", "--config", TINY, "--workdir", tmp_path / "w", "--config.optimizer.lrr=1")
    _one_line_error(res, "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)")
    assert not (tmp_path / "w").exists()


def test_misspelt_override_of_a_default_config_file(tmp_path):
    # precompute's --config has a default: ml_collections applies the overrides while defining the flag
    res = _run("precompute", "--out", tmp_path / "o", "--config.sourcee=folder")
    _one_line_error(res, "unknown config key 'sourcee' (did you mean 'source'?)")


def test_override_below_a_leaf_and_unknown_section(tmp_path):
    res = _run("train", "--config", TINY, "--workdir", tmp_path / "w", "--config.optimizer.lr.x=1")
    assert "'optimizer.lr' is a float, not a section" in _one_line_error(res)
    res = _run("train", "--config", TINY, "--workdir", tmp_path / "w", "--config.nosuch.key=1")
    _one_line_error(res, "unknown config key 'nosuch.key'")


def test_misspelt_key_in_a_config_file_reaches_validate_config(tmp_path):
    cfg = tmp_path / "typo.py"
    cfg.write_text("from configs.ezaudio import get_config as _base\n\n\n"
                   "def get_config():\n    c = _base()\n    c.optimizer.lrr = 1.0\n    return c\n")
    res = _run("train", "--config", cfg, "--workdir", tmp_path / "w")
    _one_line_error(res, "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)")
    assert not (tmp_path / "w" / "config.json").exists()


def test_verbose_adds_the_traceback(tmp_path):
    res = _run("train", "--config", TINY, "--workdir", tmp_path / "w", "--config.optimizer.lrr=1", "--verbose")
    assert res.returncode == 2 and "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        "error: unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"


# --- b. missing config file -------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--config.optimizer.lr=1"]])
def test_missing_config_file(tmp_path, extra):
    missing = tmp_path / "nope.py"
    res = _run("train", "--config", missing, "--workdir", tmp_path / "w", *extra)
    _one_line_error(res, f"config file not found: {missing}")


# --- c. workdir that is a file ----------------------------------------------------------------------
def test_workdir_is_an_existing_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    res = _run("train", "--config", TOY, "--workdir", f)
    _one_line_error(res, f"--workdir {f} is an existing file, not a directory")
    res = _run("train", "--config", TOY, "--workdir", f / "sub")
    assert f"{f} is a file, not a directory" in _one_line_error(res)


# --- d. sampling without a training run -------------------------------------------------------------
def test_sample_without_a_training_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for d in (empty, tmp_path / "nonexistent"):
        res = _run("sample", "--workdir", d, "--prompt", "x", "--out", tmp_path / "out")
        _one_line_error(res, f"no training run in {d} (no config.json / checkpoints)")
    res = _run("sample", "--workdir", empty, "--config", TINY, "--prompt", "x", "--out", tmp_path / "out")
    assert f"no checkpoints in {empty / 'checkpoints'}" in _one_line_error(res)


# --- e. validate before writing config.json ---------------------------------------------------------
def test_invalid_config_leaves_no_config_json(tmp_path):
    w = tmp_path / "w"
    res = _run("train", "--config", TOY, "--workdir", w, "--config.optimizer.lr=-1",
               "--config.mesh.num_devices=1")
    assert "config.optimizer.lr=-1.0" in _one_line_error(res)
    assert not (w / "config.json").exists()
    res = _run("train", "--config", TINY, "--workdir", w, "--config.sampler.name=bogus")
    assert "'sampler.name' = 'bogus' is not one of" in _one_line_error(res)
    assert not (w / "config.json").exists()


# --- f. --help --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["train", "sample", "precompute", "convert", "edit"])
def test_help_exits_zero(module):
    res = _run(module, "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"python -m launch.{module}" in res.stdout and "--[no]verbose" in res.stdout and "flags:" in res.stdout


# --- flag errors and real bugs ----------------------------------------------------------------------
def test_edit_errors_are_one_line(tmp_path):
    err = _one_line_error(_run("edit", "--workdir", tmp_path / "nothing", "--out", tmp_path / "o", "attnmap",
                               "--prompt", "x"))
    assert err.startswith("error: no training run in "), err


def test_flag_errors_are_one_line(tmp_path):
    _one_line_error(_run("train", "--config", TOY), "--workdir is required (--help for usage)")
    assert "'wrokdir'" in _one_line_error(_run("train", "--config", TOY, "--wrokdir", tmp_path))
    res = _run("train", "--config", TINY, "--workdir", tmp_path / "w", "--config.optimizer.lr=abc")
    assert "--config.optimizer.lr=abc" in _one_line_error(res)


def test_a_real_bug_keeps_its_traceback(tmp_path):
    cfg = tmp_path / "bug.py"
    cfg.write_text("def get_config():\n    return undefined_name\n")
    res = _run("train", "--config", cfg, "--workdir", tmp_path / "w")
    assert res.returncode not in (0, 2) and "Traceback" in res.stderr and "NameError" in res.stderr


# --- g. checkpoint of another size ------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dit(tmp_path_factory):
    """An EzAudio-DiT checkpoint (official names, numpy) of width 32 / depth 2 (ezaudio_tiny: 64 / 4)."""
    from safetensors.numpy import save_file

    from benchmarks.torch_dit import official_state_dict
    from tta_jax.denoisers.dit import ezaudio_tiny

    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_file(official_state_dict(ezaudio_tiny(width=32, depth=2)), str(path))
    return path


def test_convert_size_mismatch_is_summarised(small_dit, tmp_path):
    res = _run("convert", "--family", "ezaudio_dit", "--src", small_dit, "--config", '{"preset": "ezaudio_tiny"}',
               "--out", tmp_path / "out")
    line = _one_line_error(res)
    assert len(line) < 1500, len(line)
    assert f"error: {small_dit}: checkpoint does not match the model: 190 problems (70 missing, 120 shape " \
           "mismatches)" in line
    assert "the checkpoint looks like 1 in_blocks / width 32 while the config expects 2 in_blocks / width 64" in line
    assert "; first 10: missing in_blocks_1/" in line and line.endswith("; 180 more (--verbose lists all)")
    assert not (tmp_path / "out" / "params.safetensors").exists()
    res = _run("convert", "--family", "ezaudio_dit", "--src", small_dit, "--config", '{"preset": "ezaudio_tiny"}',
               "--out", tmp_path / "out", "--verbose")
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and "Traceback" in res.stderr and lines[-1].startswith("error: ")
    assert sum(ln.startswith(("missing ", "unexpected ", "shape ")) for ln in lines) == 190


def test_convert_bigger_checkpoint_names_unexpected_keys(small_dit, tmp_path):
    from tta_jax.convert.common import ConversionError
    from tta_jax.convert.registry import convert

    with pytest.raises(ConversionError) as e:  # the small checkpoint against a smaller config
        convert("ezaudio_dit", str(small_dit), {"preset": "ezaudio_tiny", "width": 16, "depth": 0},
                str(tmp_path / "out"))
    msg = str(e.value)
    assert "unexpected model.in_blocks.0." in msg and "(--verbose lists all)" in msg
    assert "the checkpoint looks like width 32 while the config expects width 16" in msg
    assert len(e.value.details.splitlines()) > 10


def test_report_headline_and_hint():
    from tta_jax.convert.common import ConversionReport, architecture_hint, shape_profile

    src = {f"enc.layer.{i}.w": (8, 8) for i in range(3)} | {"enc.mlp.0.w": (8, 8), "enc.mlp.2.w": (8, 8)}
    tgt = {f"enc/layer_{i}/w": (16, 16) for i in range(4)}
    assert shape_profile(src) == ({"layer": 3}, 8)  # mlp.0 / mlp.2 is not a stack
    assert architecture_hint(src, tgt) == \
        "the checkpoint looks like 3 layer / width 8 while the config expects 4 layer / width 16"
    assert architecture_hint(src, src) == "" and architecture_hint(None, tgt) == ""
    r = ConversionReport(missing=[f"m{i}" for i in range(12)], unexpected=["u0"], mismatched=["s0: got (1,)"])
    h = r.headline("ck")
    assert h.startswith("ck: checkpoint does not match the model: 14 problems (12 missing, 1 unexpected, "
                        "1 shape mismatches); first 10: missing m0; unexpected u0; shape s0: got (1,); missing m1")
    assert h.endswith("; 4 more (--verbose lists all)") and len(r.details().splitlines()) == 14
    assert ConversionReport(missing=["a"]).headline("ck") == \
        "ck: checkpoint does not match the model: 1 problem (1 missing): missing a"
    np.testing.assert_equal(ConversionReport().ok, True)
