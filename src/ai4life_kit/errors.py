"""Error hierarchy shared by every module.

The CLI maps :class:`UserInputError` (bad files, bad options, bad specs) to exit code 2
and any other :class:`Ai4LifeKitError` to exit code 1, printing only the message.
Messages name the offending value so that one line is enough to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "Ai4LifeKitError",
    "UserInputError",
    "ConfigError",
    "DataError",
    "OutputExistsError",
    "ModelLoadError",
    "StorageError",
    "Terminated",
]


class Ai4LifeKitError(Exception):
    """Base class of every error ai4life-kit raises on purpose."""

    exit_code = 1


class UserInputError(Ai4LifeKitError):
    """The user gave something we cannot work with (exit code 2)."""

    exit_code = 2


class ConfigError(UserInputError):
    """A training spec is invalid: unknown key, impossible value, wrong combination."""


class DataError(UserInputError):
    """Input images are missing, unreadable, or do not fit the model or each other."""


class OutputExistsError(UserInputError):
    """An output already exists and ``--overwrite`` was not given."""


class ModelLoadError(UserInputError):
    """A run directory or model package cannot be used (missing checkpoint, corrupt zip...)."""


class StorageError(Ai4LifeKitError):
    """Writing an output failed for a reason outside the inputs: a full disk, an I/O error (exit code 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``docker stop``, a scheduler, CI): unwinds like Ctrl-C, so every cleanup runs."""
