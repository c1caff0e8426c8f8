"""Every shipped config and each of its variants (``configs/X.py:variant``) loads, passes the schema check,
names a builder that imports, and builds its denoiser through the factory: a typo in any configs/*.py fails
here, not at launch time. An unknown variant fails naming the choices."""
import glob
import importlib
import os

import pytest

from tta_jax.config import load_config
from tta_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_CONFIGS = ("__init__.py", "common.py")
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in NOT_CONFIGS)


def _module(path):
    return importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")


CASES = [(p, v) for p in CONFIGS for v in getattr(_module(p), "VARIANTS", (None,))]


def test_there_are_configs():
    assert len(CONFIGS) >= 6 and len(CASES) >= 12


@pytest.mark.parametrize("path,variant", CASES, ids=[f"{os.path.basename(p)}:{v}" for p, v in CASES])
def test_config_is_valid(path, variant):
    cfg = load_config(path if variant is None else f"{path}:{variant}")
    doc = _module(path).__doc__ or ""
    assert "python -m" in doc and "Expected" in doc, f"{path}: docstring must give the command and the expected result"
    if cfg.builder:
        mod, fn = cfg.builder.split(":")
        assert callable(getattr(importlib.import_module(mod), fn)), cfg.builder
    if cfg.model.get("name") or cfg.model.get("preset"):
        from tta_jax.denoisers.factory import build_denoiser

        den = build_denoiser(cfg.model)
        assert den.in_channels > 0 and den.layout in ("sequence", "image")


def test_unknown_variant_names_the_choices():
    with pytest.raises(ConfigError, match=r"ezaudio\.py:huge.*'xl', 'l', 'tiny'"):
        load_config(os.path.join(ROOT, "configs", "ezaudio.py") + ":huge")
