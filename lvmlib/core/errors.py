"""The kit's exceptions, all in one catalogue, so a caller (the CLI, a notebook, a test) catches `LvmError` once.

Every exception class the kit raises on purpose is defined here (ConfigError, the params schema's, lives
beside the schema in `lvmlib.core.config` and subclasses `RequestError`). Each also keeps the builtin base
it had (`ValueError`, `RuntimeError`, ...) so code that caught that keeps working. The class attribute
`exit_code` is the CLI's exit status for it: 2 for a bad request found before anything runs (params,
`--set`, a run directory, a backend), 1 for a problem a stage found (data, checkpoint, sanity check,
divergence). `python -m lvmlib` prints `cli_line()`: one line starting `error:`, never a traceback.
Builtin exceptions the kit still raises are internal (impossible states): tests/test_errors.py lists them.
"""

from __future__ import annotations


class LvmError(Exception):
    """Base of every error the kit raises on purpose; the message is one line naming what is at fault.
    Exit status 1 unless a subclass says otherwise."""

    exit_code = 1  # a stage found a problem

    def cli_line(self) -> str:
        """The one line the CLI prints: the class name tells bad data from a bad checkpoint."""
        return f"error: {type(self).__name__}: {self}"


class RequestError(LvmError):
    """A bad request (params, overrides, run directory, backend): the message alone says it, exit status 2."""

    exit_code = 2

    def cli_line(self) -> str:
        return f"error: {self}"


# --------------------------------------------------------------------------- requests (exit status 2)
class RunError(RequestError, RuntimeError):
    """A run directory is wrong for what was asked: missing, not a run, a missing input file, a live or
    finished run, a bad run id (`run`, `status`, `eval`, `compare`, `select`, `export`). Exit status 2."""


class CompareFailed(RunError):
    """`compare` / `study`: the comparison (or a run of the pair study) failed; the message is the one-line
    reason. Exit status 2."""


class ScalingFailed(RunError):
    """`scaling`: a size's run or the scaling page failed; the message is the one-line reason. Exit status 2."""


class ProtocolError(RequestError, RuntimeError):
    """A read of the confirmatory test set that its protocol does not allow: no committed protocol, or a
    second read under the same protocol without `eval.force_read` (lvmlib.core.confirm). Exit status 2."""


class BackendError(RequestError, RuntimeError):
    """A backend setting (data.encoder_backend, model.scan, eval.search_backend, train.device) names no
    backend, or one that cannot run here (package not importable, no CUDA); raised by
    `lvmlib.core.backends.resolve_backend`, the message names the key, the value and the allowed values.
    Exit status 2."""


# --------------------------------------------------------------------------- stages (exit status 1)
class DataError(LvmError, ValueError):
    """The data stage cannot go on, or a later stage misses what it should have written; the message names
    the file, line, key or value at fault. Exit status 1."""


class CorpusError(DataError):
    """A corpus file is missing or malformed; the message names the file and the line or key. Exit status 1."""


class LeakageError(DataError):
    """The leakage audit found evaluation data that also appears in training (or mismatched vectors).
    Exit status 1."""


class IntegrityError(DataError):
    """A run's file differs from the sha256 and size recorded in its manifest when it was written (changed on
    disk since: a flipped byte, a copy gone wrong, an edit); raised by `lvmlib.core.runs.check_digests` before
    any stage uses the file. The message names the file and the stage to re-run. Exit status 1."""


class CheckpointError(LvmError, ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not fit the model; names the file.
    Exit status 1."""


class ModelError(LvmError, ValueError):
    """A model cannot be built for, or run on, what it was given: model.residual with a tower of another
    width, a context longer than the model covers (data.context_len), a context of another vector width.
    Exit status 1."""


class MetricsError(LvmError, ValueError):
    """The retrieval metrics got inputs that would give meaningless ranks: non-finite queries (a model that
    output NaN), target rows outside the bank, a bank that does not hold a query's target. Exit status 1."""


class SanityError(LvmError, RuntimeError):
    """An evaluation sanity check failed: the numbers would be meaningless, so the evaluation stops.
    Exit status 1."""


class TrainingDiverged(LvmError, FloatingPointError):
    """The loss became NaN/inf; the message names the epoch, step and the last good checkpoint. Exit status 1."""


class TrainingFailed(LvmError, RuntimeError):
    """Distributed training (torchrun) exited non-zero without diverging; the message names its exit status,
    its error and the log file. Exit status 1."""


class StudyFailed(LvmError, RuntimeError):
    """`run` / `eval`: a stage (notebook) failed; the message is the one-line reason shown to the user.
    Exit status 1."""


class KernelDied(StudyFailed):
    """A notebook's kernel died while it ran a cell (killed by a signal — SIGKILL is what the out-of-memory
    killer sends — or exited); the message says how, `exec_count` is the cell it ran. Exit status 1."""

    def __init__(self, line: str, exec_count: int | None = None):
        super().__init__(line)
        self.exec_count = exec_count


class StudyInterrupted(StudyFailed):
    """Ctrl-C or SIGTERM stopped the run; `signum` gives the exit status 128 + signum."""

    def __init__(self, line: str, signum: int):
        super().__init__(line)
        self.signum = signum
