"""One exception family: library code raises it with a sentence naming the file and the fix."""


class FkpError(Exception):
    """Base class; the CLI prints its message on one line and exits with ``exit_code``."""

    exit_code = 2


class UsageError(FkpError):
    """A bad option, path or combination of options."""


class WeightsError(FkpError):
    """A checkpoint that is missing, corrupt or not written by fkpbatch."""


class UnknownModelError(FkpError):
    """An architecture name that is not in the registry."""


class OutputError(FkpError):
    """An output that cannot or must not be written (missing folder, full disk, an input, exists)."""


class PipeClosed(OutputError):
    """The reader of a stream output (standard output, a FIFO) went away: a normal end for a
    command-line tool, like ``yes | head``; the CLI exits 141 (128 + SIGPIPE) without a word."""

    exit_code = 141

    def __init__(self, message: str = "the reader closed the pipe", *, stdout: bool = True):
        super().__init__(message)
        self.stdout = stdout


class DataError(FkpError):
    """A training or evaluation file that cannot be used (names the file and line)."""


class DecodeError(FkpError):
    """One input image cannot be used; becomes an ``error`` row, never ends a run."""


class TrainingDiverged(FkpError):
    """The loss became NaN or infinite."""

    exit_code = 1
