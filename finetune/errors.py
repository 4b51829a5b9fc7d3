"""Exceptions for mistakes a user can fix. The CLI prints them without a traceback."""


class FinetuneError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(FinetuneError):
    """The run configuration (file, overrides or values) is invalid."""

    exit_code = 2

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = errors or [message]
        super().__init__(message)


class PreflightError(FinetuneError):
    """The configuration is valid, but this machine or environment cannot run it."""

    exit_code = 2


class DataError(FinetuneError):
    """A data source or row cannot be used."""

    exit_code = 2


class OutputDirError(FinetuneError):
    """The output directory cannot be used as asked (it exists, or holds no checkpoint)."""

    exit_code = 2


class TrainingDiverged(FinetuneError):
    """The loss or gradient norm became NaN or infinite: the run stopped before saving it."""

    exit_code = 4


class Interrupted(FinetuneError):
    """SIGTERM or SIGINT stopped the run after a checkpoint; exit code 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        self.exit_code = 128 + signum
        super().__init__(message)
