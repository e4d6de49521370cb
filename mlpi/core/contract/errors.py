"""The MlpiError family: every failure a user can cause, as one message plus one hint.

The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``;
nothing else in mlpi decides how a failure looks to the user.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_INTERRUPTED = 130


class MlpiError(Exception):
    """A failure the user can act on: ``message`` says what, ``hint`` says how to fix it."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(MlpiError):
    """The command line or a config file asks for something that does not exist or does not fit."""

    exit_code = EXIT_USAGE


class PluginError(MlpiError):
    """A plugin is unknown, disabled, broken, or its runtime is not installed."""


class DeviceError(MlpiError):
    """The backend cannot use the requested device on this machine."""


class ModelError(MlpiError):
    """The model file is missing, unreadable, not ONNX, or does not fit the run."""


class DatasetError(MlpiError):
    """The dataset is missing, unreadable, or does not fit the model."""


class RunFailed(MlpiError):
    """A LoadGen test did not finish: the child crashed or the backend failed mid-run."""


def suggest(name: str, candidates: list[str] | tuple[str, ...], listing: bool = True) -> str:
    """``"did you mean X?"`` for the closest candidates; otherwise the list of what exists
    (or ``""`` when ``listing`` is false because the caller lists them itself)."""
    import difflib

    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=3, cutoff=0.5)
    by_lower = {c.lower(): c for c in candidates}
    if close:
        return "did you mean " + " or ".join(by_lower[c] for c in close) + "?" + (" " if not listing else "")
    if not listing:
        return ""
    return "choose one of: " + ", ".join(sorted(candidates)) if candidates else "none are installed"


class ResultError(MlpiError):
    """A result.json (or a record in it) that cannot be read, or is not shaped the way mlpi
    writes it: the message names the file and the field."""
