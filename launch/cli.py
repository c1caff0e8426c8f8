"""Shared entry point of the ``launch/*`` command-line tools: user errors as one line, bugs as tracebacks, and
JAX's persistent compilation cache on (``$TTA_JAX_COMPILE_CACHE``, default ``~/.cache/tta_jax/jax_compile``;
``TTA_JAX_COMPILE_CACHE=off`` disables it).

    from launch import cli

    if __name__ == "__main__":
        cli.run(main)          # instead of absl.app.run(main)

:func:`run` parses the flags itself and calls ``main`` like ``absl.app.run`` does, and on top of it:

- a user error prints ``error: <message>`` on stderr (the message names the key, flag or file; with the
  root cause's message when it was chained) and exits with status 2, without a traceback. User errors
  are :class:`tta_jax.errors.UserError` (``tta_jax.config.ConfigError``,
  ``tta_jax.convert.common.ConversionError``, ...), ``absl.app.UsageError``,
  absl flag errors, ``FileNotFoundError``/``NotADirectoryError``/``FileExistsError``/``IsADirectoryError``/
  ``PermissionError``, and config-file problems found while parsing ``--config``/``--config.key=value``
  (a missing file; an unknown key, named by its full path with the closest known key);
- ``--verbose`` adds the traceback and the error's ``details`` (e.g. every mismatched checkpoint key);
- any other exception is a bug: it propagates unchanged, with its traceback;
- ``--help`` (``--helpshort``, ``--helpfull``, ``--helpxml``) prints the usage and exits 0 (absl exits 1).
"""
from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Mapping, Sequence

from absl import app, flags

from tta_jax.errors import UserError

_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the traceback and all details.")
flags.disclaim_key_flags()  # flags defined through define_config_file belong to the calling module

EXIT_USER_ERROR = 2
_HELP = re.compile(r"^--?(help|helpshort|helpfull|helpxml|\?)(=(true|1))?$", re.IGNORECASE)
_VERBOSE_ARG = re.compile(r"^--?verbose(=(true|1))?$", re.IGNORECASE)
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError)


COMPILE_CACHE_ENV = "TTA_JAX_COMPILE_CACHE"
COMPILE_CACHE_MAX_BYTES = 4 << 30


def compile_cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the launch commands keep JAX's persistent compilation cache: ``$TTA_JAX_COMPILE_CACHE`` (a
    directory; ``off``, ``0`` or empty: none), by default ``$XDG_CACHE_HOME/tta_jax/jax_compile``
    (``~/.cache/...``)."""
    env = os.environ if environ is None else environ
    if COMPILE_CACHE_ENV in env:
        v = env[COMPILE_CACHE_ENV].strip()
        return None if v.lower() in ("", "0", "off", "false", "none") else os.path.abspath(os.path.expanduser(v))
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tta_jax", "jax_compile")


def enable_compile_cache(environ: Mapping[str, str] | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in :func:`compile_cache_dir` (programs that took >= 1 s to
    compile, JAX's threshold; least recently used entries evicted past 4 GiB): the second run of a command
    with the same shapes loads its executables instead of compiling them. -> the directory, or None (off)."""
    import jax

    d = compile_cache_dir(environ)
    if d is None:
        return None
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:    # an unwritable cache never stops a run: it only costs the compile time
        logging.warning("compile cache %s unusable (%s); compiling without it", d, e)
        return None
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    return d


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """``absl.app.run(main)`` with one-line user errors (exit 2), ``--verbose`` and ``--help`` exiting 0, and
    the persistent compilation cache on (:func:`enable_compile_cache`)."""
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["verbose"])  # listed by --help
    enable_compile_cache()
    app.run(_guarded(main), argv=None if argv is None else list(argv), flags_parser=_parse_flags)


def define_config_file(name: str, default: str | None, help_string: str, **kwargs):
    """``config_flags.DEFINE_config_file`` for a flag with a default file.

    ml_collections loads a default config file, and applies the ``--NAME.key=value`` overrides, while the
    flag is being defined (at import, before :func:`run`) when ``--NAME`` is not on the command line; an
    unknown override key then escapes as a chained KeyError/AttributeError. This reports it as one line.
    """
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except Exception as e:  # noqa: BLE001
        argv = sys.argv
        message = _diagnose_config(name, default, argv)
        if message is None and isinstance(e, flags.Error):
            message = _flag_error_message(e)
        if message is None:
            raise
        fail(message, e, verbose=_verbose(argv))


def check_output_dir(path: str, flag: str) -> None:
    """Raises :class:`UserError` naming ``flag`` when ``path`` cannot be (or become) a directory."""
    if not path:
        raise UserError(f"{flag} is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is an existing file, not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: {parent} is a file, not a directory")


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``exc`` is a bug (or not an error)."""
    if isinstance(exc, UserError):
        return _chain_message(exc)
    if isinstance(exc, app.UsageError):
        return f"{_first_line(exc)} (--help for usage)"
    if isinstance(exc, flags.Error):
        return _flag_error_message(exc)
    if isinstance(exc, _PATH_ERRORS):
        return _os_error_message(exc)
    return None


def fail(message: str, exc: BaseException | None = None, *, verbose: bool | None = None) -> None:
    """Prints ``error: message`` (after the traceback and details with ``--verbose``) and exits 2."""
    sys.stdout.flush()
    if verbose is None:
        verbose = _verbose()
    if verbose and exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        details = getattr(exc, "details", None)
        if details:
            print(details, file=sys.stderr)
    elif getattr(exc, "details", None):
        message += " (--verbose shows all)" if "--verbose" not in message else ""
    print(f"error: {message}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


# --------------------------------------------------------------------------------------------------
# main()
# --------------------------------------------------------------------------------------------------
def _guarded(main):
    def wrapped(argv):
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 - user errors become one line, bugs are re-raised as is
            message = user_error_message(e)
            if message is None:
                raise
            fail(message, e)

    return wrapped


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and not isinstance(exc, UserError):
        return _os_error_message(exc)
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    return text.splitlines()[0] if text else type(exc).__name__


def _chain_message(exc: BaseException) -> str:
    """The first line of ``exc``'s message, plus its root cause's when chained and not already in it."""
    message = _first_line(exc)
    root, seen = exc, {id(exc)}
    while True:
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    if root is not exc:
        cause = _first_line(root)
        if cause and cause not in message:
            message += f" ({cause})"
    return message


def _os_error_message(exc: OSError) -> str:
    if exc.filename and exc.strerror:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{exc.strerror}: {where}"
    return str(exc)


def _flag_error_message(exc: BaseException) -> str:
    text = str(exc).strip()
    m = re.match(r"flag --(\S+)=None: Flag --\1 must have a value other than None\.?$", text)
    if m:
        return f"--{m.group(1)} is required (--help for usage)"
    return text + " (--help for usage)" if "\n" not in text else text


# --------------------------------------------------------------------------------------------------
# Flag parsing (absl's parse_flags_with_usage, with config errors turned into one line)
# --------------------------------------------------------------------------------------------------
def _verbose(argv: Sequence[str] | None = None) -> bool:
    if flags.FLAGS.is_parsed():
        return bool(_VERBOSE.value)
    args = sys.argv if argv is None else argv
    return any(_VERBOSE_ARG.match(a) for a in _flag_args(args))


def _flag_args(argv: Sequence[str]) -> list[str]:
    args = list(argv[1:])
    return args[:args.index("--")] if "--" in args else args


def _parse_flags(argv: Sequence[str]) -> list[str]:
    verbose = _verbose(argv)
    try:
        rest = flags.FLAGS(argv)
    except SystemExit as e:  # absl's --help & co. print the usage, then exit 1
        if e.code == 1 and any(_HELP.match(a) for a in _flag_args(argv)):
            sys.exit(0)
        raise
    except flags.Error as e:
        fail(_diagnose_config_flags(argv) or _flag_error_message(e), e, verbose=verbose)
    except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/AttributeError/IOError here
        message = _diagnose_config_flags(argv)
        if message is None:
            raise
        fail(message, e, verbose=verbose)
    message = _unloaded_config(argv)  # config_flags defers a load failure until the config is used
    if message:
        fail(message, None, verbose=verbose)
    return rest


def _config_flags() -> list[Any]:
    from ml_collections.config_flags import config_flags  # the module: is_config_flag is not re-exported

    out, seen = [], set()
    for flag in flags.FLAGS._flags().values():  # noqa: SLF001 - absl has no public "all flag objects"
        if id(flag) not in seen and config_flags.is_config_flag(flag):
            seen.add(id(flag))
            out.append(flag)
    return out


def _config_path(flag, argv: Sequence[str]) -> str | None:
    """The ``--NAME`` value on the command line (last one wins), else the flag's default path."""
    args = _flag_args(argv)
    path = None
    pattern = re.compile(rf"^--?{re.escape(flag.name)}(=(.*))?$")
    for i, a in enumerate(args):
        m = pattern.match(a)
        if m:
            path = m.group(2) if m.group(1) else (args[i + 1] if i + 1 < len(args) else None)
    if path is None:
        default = getattr(flag, "default_as_str", None)
        if isinstance(default, str) and len(default) >= 2 and default[0] == default[-1] == "'":
            path = default[1:-1]
    return None if path in (None, "None") else path


def _missing_file_message(path: str) -> str | None:
    file = path.split(":", 1)[0]
    if not os.path.exists(file):
        return f"config file not found: {file}"
    if not os.path.isfile(file):
        return f"config file is not a file: {file}"
    return None


def _unloaded_config(argv: Sequence[str]) -> str | None:
    for flag in _config_flags():
        value = flag.value
        if type(value).__name__ != "_ErrorConfig":
            continue
        path = _config_path(flag, argv) or "?"
        error = getattr(value, "_error", None)
        return _missing_file_message(path) or f"could not load config file {path}: {_first_line(error)}"
    return None


def _diagnose_config_flags(argv: Sequence[str]) -> str | None:
    """After a config flag failed to parse: the config file that is missing or the override key that
    does not exist (full path, closest known key). None when neither explains the failure."""
    for flag in _config_flags():
        message = _diagnose_config(flag.name, _config_path(flag, argv), argv)
        if message:
            return message
    return None


def _diagnose_config(name: str, path: str | None, argv: Sequence[str]) -> str | None:
    if path is None:
        return None
    missing = _missing_file_message(path)
    if missing:
        return missing
    overrides = _overrides(name, argv)
    if not overrides:
        return None
    try:
        config = _load_config_file(path)
    except Exception:  # noqa: BLE001 - a broken config file: let the original error speak
        return None
    for key in overrides:
        message = _unknown_key(config, key)
        if message:
            return message
    return None


def _overrides(name: str, argv: Sequence[str]) -> list[str]:
    pattern = re.compile(rf"^--?(no)?{re.escape(name)}\.([^=]+)")
    keys = []
    for a in _flag_args(argv):
        m = pattern.match(a)
        if m and m.group(2) not in keys:
            keys.append(m.group(2))
    return keys


def _load_config_file(path: str):
    file, *arg = path.split(":", 1)
    spec = importlib.util.spec_from_file_location("_cli_config_check", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*arg)


def _unknown_key(config, key: str) -> str | None:
    """``unknown config key 'a.bb' (did you mean 'a.b'?)`` when ``key`` does not exist in ``config``."""
    node, done = config, []
    for part in key.split("."):
        if "[" in part:  # indexing syntax: not checked here
            return None
        keys = _keys(node)
        if keys is None:
            return (f"config key {'.'.join(done)!r} is a {type(node).__name__}, not a section: "
                    f"cannot set {key!r}")
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {'.'.join(done + [close[0]])!r}?)" if close else ""
            return f"unknown config key {key!r}{hint}"
        node = node[part]
        done.append(part)
    return None


def _keys(node) -> list[str] | None:
    if hasattr(node, "keys") and hasattr(node, "__getitem__"):
        return [str(k) for k in node.keys()]
    return None
