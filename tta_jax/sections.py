"""Config sections of the codec / text-encoder registries: defaults, unknown keys, JSON-ready facts.

A registry entry (:mod:`tta_jax.codecs.registry`, :mod:`tta_jax.text.registry`) declares every key its
section may hold, with a default. :func:`resolve` merges a section (``ml_collections.ConfigDict``, dict or
None) over those defaults and refuses a key the entry does not know, naming it by its full path
(``config.codec.weigths``) with the closest known key. :func:`jsonable` turns tuples into lists (what a
manifest stores); :func:`mismatches` compares a config section with a manifest's record of it the way a
reader should: only the keys both hold, tuples equal to lists, ints equal to floats, nested sections and
lists element by element. :func:`random_init` makes the ``init="random"`` weights of an entry.
"""
from __future__ import annotations

import dataclasses

import difflib
import os
from typing import Any, Callable, Iterable, Mapping

from tta_jax.errors import ConfigError, UserError


class MissingWeights(UserError, FileNotFoundError):
    """A weights path named by a config key does not exist (the message names the key and the path)."""


def as_dict(section: Any) -> dict:
    """ConfigDict / mapping / None -> a plain dict (nested sections too; lists and tuples kept)."""
    if section is None:
        return {}
    if hasattr(section, "to_dict"):
        section = section.to_dict()
    if not isinstance(section, Mapping):
        raise ConfigError(f"expected a config section (mapping), got {type(section).__name__}: {section!r}")
    return {str(k): _plain(v) for k, v in section.items()}


def _plain(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        v = v.to_dict()
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def resolve(section: Any, defaults: Mapping[str, Any], where: str) -> dict:
    """``section`` over ``defaults`` -> dict. A key not in ``defaults`` raises :class:`ConfigError` naming
    ``where.key``, the closest known key and every known key."""
    d = as_dict(section)
    for key in d:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {where}.{key}{hint} for {where}.name={d.get('name')!r}; it takes "
                              f"{sorted(defaults)}")
    return {**defaults, **d}


def choice(value: Any, choices: Iterable[str], key: str) -> str:
    """``value`` if it is one of ``choices``, else :class:`ConfigError` naming ``key`` and the choices."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}={value!r} is not one of {choices}{hint}")
    return value


def existing_path(path: str, key: str, what: str) -> str:
    """``path`` when it exists; :class:`ConfigError` when empty, :class:`MissingWeights` when missing, both
    naming ``key`` (``what`` says what the path should hold)."""
    if not path:
        raise ConfigError(f"{key} is empty: set it to {what}, or set init='random' for random weights")
    if not os.path.exists(path):
        raise MissingWeights(f"{key}={path!r}: no such file or directory ({what})")
    return path


def jsonable(x: Any) -> Any:
    """Tuples -> lists and mapping keys -> str, recursively (a manifest's JSON form of a value)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def mismatches(want: Any, have: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Where a config section ``want`` disagrees with a manifest's record ``have`` of it -> [(key path,
    have value, want value)]. Mappings compare on the keys both hold; sequences of equal length element
    by element (else as a whole); numbers by value (1 == 1.0, bools only with bools)."""
    want, have = _plain(want), _plain(have)
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        out = []
        for k in sorted(set(want) & set(have)):
            out += mismatches(want[k], have[k], f"{key}.{k}")
        return out
    if isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)):
        if len(want) != len(have):
            return [(key, have, want)]
        out = []
        for i, (w, h) in enumerate(zip(want, have)):
            out += mismatches(w, h, f"{key}[{i}]")
        return out
    if isinstance(want, bool) or isinstance(have, bool):
        return [] if (isinstance(want, bool) and isinstance(have, bool) and want == have) else [(key, have, want)]
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return [] if float(want) == float(have) else [(key, have, want)]
    return [] if want == have else [(key, have, want)]


def random_init(init_fn: Callable[[Any], Any], seed: int) -> Any:
    """``init_fn(PRNGKey(seed))`` compiled once. On the CPU without LLVM optimisations: an init runs once,
    and flax inits of conv nets otherwise spend most of their time in the optimiser (about 5x longer). The
    random bits (threefry, integer arithmetic) do not depend on the optimisation level."""
    import jax

    key = jax.random.PRNGKey(int(seed))
    lowered = jax.jit(init_fn).lower(key)
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=opts)(key)


__all__ = ["MissingWeights", "random_init", "as_dict", "resolve", "choice", "existing_path", "jsonable", "mismatches"]


class DictConfig:
    """Mixin for frozen dataclass configs: ``to_dict``, ``from_dict`` (unknown keys fail, naming them) and
    ``replace``."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

