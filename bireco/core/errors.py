"""The errors that mean "the user's input is wrong": every entry point reports them in one line (config.cli)."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the override to fix."""


class DataError(ValueError):
    """A bad input record; the message names the file, the line and the field."""

    def __init__(self, file: str | os.PathLike, line: int, field: str, reason: str):
        self.file, self.line, self.field, self.reason = str(file), line, field, reason
        super().__init__(f"{file}:{line}: field {field!r}: {reason}")


class CheckpointNotFound(FileNotFoundError):
    """A path given as a checkpoint that holds no bireco checkpoint: a user's input, reported in one line."""


USER_ERRORS = (ConfigError, DataError, CheckpointNotFound)
