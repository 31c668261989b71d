"""The kit's one exception base, so a caller (the CLI, a notebook, a test) catches `LvmError` once.

Every exception class defined in lvmlib subclasses `LvmError`; each also keeps the builtin base it had
(`ValueError`, `RuntimeError`, ...) so code that caught that keeps working. The class attribute
`exit_code` is the CLI's exit status for it: 2 for a bad request found before anything runs (params,
`--set`, a run directory), 1 for a problem a stage found (data, checkpoint, sanity check, divergence).
"""

from __future__ import annotations


class LvmError(Exception):
    """Base of every error the kit raises on purpose; the message is one line naming what is at fault."""

    exit_code = 1  # a stage found a problem

    def cli_line(self) -> str:
        """The one line the CLI prints: the class name tells bad data from a bad checkpoint."""
        return f"error: {type(self).__name__}: {self}"


class RequestError(LvmError):
    """A bad request (params, overrides, run directory): the message alone says it, exit status 2."""

    exit_code = 2

    def cli_line(self) -> str:
        return f"error: {self}"


class TrainingDiverged(LvmError, FloatingPointError):
    """The loss became NaN/inf; the message names the epoch, step and the last good checkpoint."""


class DataError(LvmError, ValueError):
    """The data stage cannot go on; the message names the file, line, key or value at fault."""
