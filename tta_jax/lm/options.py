"""The codec LM's configuration readers: ``config.model`` -> :class:`CodecLMConfig` (:func:`lm_config_of`) and the
sampling options in ``config.extra`` (:func:`sampling_options_of`). Shared by the LM pipeline
(:mod:`tta_jax.pipelines.codec_lm`) and DC-LDM's acoustic conditioner, which must not import pipelines."""
from __future__ import annotations

import dataclasses
import difflib

from tta_jax.errors import ConfigError
from tta_jax.lm import transformer as lm_t
from tta_jax.lm.transformer import CodecLMConfig

PRESETS = {"tiny": lm_t.tiny, "audiogen_base": lm_t.audiogen_base}
# config.extra keys of the sampler (audiocraft's AudioGen defaults: sampling with top-k 250 at temperature 1)
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 250, "top_p": 0.0}


# ------------------------------------------------------------------------------ config
def lm_config_of(config) -> CodecLMConfig:
    """``config.model`` (CodecLMConfig fields and/or ``preset``) -> :class:`CodecLMConfig`; an unknown key or a
    bad value raises :class:`ConfigError` naming ``config.model.<key>``."""
    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else (config.model or {}))
    preset = fields.pop("preset", None)
    known = [f.name for f in dataclasses.fields(CodecLMConfig)]
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, known + ["preset"], n=1)
            hint = f" (did you mean config.model.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key config.model.{key}{hint} for the codec LM; it takes {sorted(known)} "
                              f"and preset ({sorted(PRESETS)})")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"config.model.preset={preset!r} is not one of {sorted(PRESETS)}")
    try:
        return PRESETS[preset](**fields) if preset else CodecLMConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from None


def sampling_options_of(config) -> dict:
    """``config.extra``'s ``temperature`` (>= 0; 0 = greedy), ``top_k`` (int >= 0; 0 = off) and ``top_p``
    (in [0, 1]; 0 = off), defaults :data:`SAMPLING_DEFAULTS`; a bad value raises ConfigError naming the key."""
    extra = config.get("extra") or {}
    out = {k: extra.get(k, v) for k, v in SAMPLING_DEFAULTS.items()}
    return check_sampling(**out, where="config.extra")


def check_sampling(temperature, top_k, top_p, where: str) -> dict:
    """The sampling options checked (``where``: how to name them in an error) -> dict."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"{where}.temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"{where}.top_k={top_k!r}: expected an int >= 0 (0 = off)")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0:
        raise ConfigError(f"{where}.top_p={top_p!r}: expected a number in [0, 1] (0 = off)")
    return {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}
