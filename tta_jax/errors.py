"""User errors: mistakes the user can fix (a bad config key, a missing file, a checkpoint of another size).

The command-line tools (``launch/cli.py``) print a :class:`UserError` as one ``error: <message>`` line and
exit with status 2, without a traceback (``--verbose`` adds the traceback and :attr:`UserError.details`);
any other exception is a bug and keeps its traceback. Library code raises a subclass (``ConfigError`` in
:mod:`tta_jax.config`, ``ConversionError`` in :mod:`tta_jax.convert.common`) or :class:`InvalidArgument`
with a message that names the key, flag or file; this module imports nothing so any layer can use it.
"""
from __future__ import annotations


class UserError(Exception):
    """An error in what the user asked for; the message names the key, flag or file.

    ``details``: optional longer text (e.g. every mismatched key of a checkpoint) that the command-line
    tools print only with ``--verbose``.
    """

    def __init__(self, *args, details: str | None = None):
        super().__init__(*args)
        self.details = details


class ConfigError(UserError, ValueError):
    """An invalid config (experiment schema, trainer settings, model fields); the message names the key.
    The one config error of the project: :mod:`tta_jax.config` and :mod:`tta_jax.train.config` raise it."""


class InvalidArgument(UserError, ValueError):
    """A bad command-line / function argument value (unknown family, malformed JSON, ...)."""
