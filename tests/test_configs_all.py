"""Every shipped config loads, passes the schema check, names a builder that imports, and (for DiT
systems) builds its model config: a typo in any configs/*.py fails here, not at launch time."""
import glob
import importlib
import os

import pytest

from tta_jax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_is_valid(path):
    cfg = load_config(path)
    doc = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}").__doc__ or ""
    assert "python -m" in doc and "Expected" in doc, f"{path}: docstring must give the command and the expected result"
    if cfg.builder:
        mod, fn = cfg.builder.split(":")
        assert callable(getattr(importlib.import_module(mod), fn)), cfg.builder
    if cfg.model.get("preset"):
        from tta_jax.pipelines.tta import dit_config_from

        dcfg = dit_config_from(cfg)
        assert dcfg.in_channels > 0
