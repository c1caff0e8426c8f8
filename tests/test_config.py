"""Config schema, overrides (programmatic and absl config_flags) and validation errors that name the key."""
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from tta_jax.config import ConfigError, apply_overrides, base_config, load_config, validate_config

CONFIG_FILE = textwrap.dedent('''
    """Toy experiment. Run: python -m launch.train --config THIS --workdir /tmp/x. Expected: runs."""
    from tta_jax.config import base_config

    def get_config():
        c = base_config()
        c.name = "toy"
        c.model.width = 64
        c.diffusion.prediction_type = "v_prediction"
        return c
''')


@pytest.fixture
def cfg_path(tmp_path):
    p = tmp_path / "toy.py"
    p.write_text(CONFIG_FILE)
    return str(p)


def test_base_config_is_valid():
    validate_config(base_config())


def test_load_with_overrides(cfg_path):
    cfg = load_config(cfg_path, ["optimizer.lr=3e-4", "train.batch_size=8", "sampler.name=dpmpp_2m",
                                 "model.depth=2", "diffusion.zero_terminal_snr=True"])
    assert cfg.optimizer.lr == 3e-4 and cfg.train.batch_size == 8 and cfg.sampler.name == "dpmpp_2m"
    assert cfg.model.depth == 2 and cfg.diffusion.zero_terminal_snr is True


@pytest.mark.parametrize("override,match", [
    ("optimizer.lrr=1.0", r"unknown config key 'optimizer.lrr'"),
    ("train.batch_size=eight", r"'train.batch_size' = 'eight' has type str, expected int"),
    ("sampler.name=lms", r"'sampler.name' = 'lms' is not one of"),
    ("diffusion.prediction_type=noise", r"'diffusion.prediction_type'"),
    ("nosuch.key=1", r"unknown config key 'nosuch.key'"),
])
def test_bad_overrides_name_the_key(cfg_path, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cfg_path, [override])


def test_unknown_key_in_file_is_rejected_with_hint():
    cfg = base_config()
    with cfg.unlocked():
        cfg.train.bach_size = 4
    with pytest.raises(ConfigError, match=r"'train.bach_size'.*did you mean 'train.batch_size'"):
        validate_config(cfg)


def test_absl_config_flags_overrides(cfg_path):
    argv = ["prog", f"--config={cfg_path}", "--config.optimizer.lr=0.5", "--config.train.total_steps=7"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, sys_argv=argv)
    fv(argv)
    cfg = validate_config(fv.config)
    assert cfg.optimizer.lr == 0.5 and cfg.train.total_steps == 7 and cfg.name == "toy"
    argv2 = ["prog", f"--config={cfg_path}", "--config.train.nope=1"]
    fv2 = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv2, sys_argv=argv2)
    with pytest.raises(Exception, match="nope"):
        fv2(argv2)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.py")
