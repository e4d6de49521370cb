"""One cell's outcome as the sweep records it, the same whichever executor ran it."""

from __future__ import annotations

from typing import Any

from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine.runner import RunOutcome
from mlpi.core.results.schema import TestResult

_CELL_STATUS = {"ok": "done", "failed": "failed", "interrupted": "interrupted"}
#: The fields of each :class:`~mlpi.core.results.schema.TestResult` a cell keeps in sweep.json.
TEST_KEYS = ("scenario", "mode", "status", "metric", "value", "unit", "valid", "quick", "simulated")


def summarize(outcome: RunOutcome) -> dict[str, Any]:
    """``{status, run_id, error, tests}`` of a finished run; a run that measured an INVALID
    result is still done (its validity is in ``tests``)."""
    result = outcome.result
    error = None
    if outcome.error is not None:
        error = error_json(outcome.error)
    elif result.status == "failed":
        error = {"type": "RunFailed", "message": "the run failed", "hint": f"see {outcome.run_dir}"}
    elif result.status == "interrupted":
        error = interrupted()["error"]
    return {
        "status": _CELL_STATUS.get(result.status, "failed"),
        "run_id": outcome.run_dir.name,
        "error": error,
        "tests": [test_summary(test) for test in result.tests],
    }


def test_summary(test: TestResult) -> dict[str, Any]:
    """What a sweep keeps of one test: enough to print its figure and validity."""
    return {key: getattr(test, key) for key in TEST_KEYS}


def failure(exc: BaseException, run_id: str | None = None) -> dict[str, Any]:
    """The summary of a cell that raised instead of finishing."""
    return {"status": "failed", "run_id": run_id, "error": error_json(exc), "tests": []}


def interrupted(run_id: str | None = None) -> dict[str, Any]:
    return {
        "status": "interrupted", "run_id": run_id, "tests": [],
        "error": {"type": "Interrupted", "message": "interrupted", "hint": "resume the sweep to run this cell again"},
    }


def error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MlpiError):
        return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    return {
        "type": type(exc).__name__,
        "message": f"internal error: {type(exc).__name__}: {exc}",
        "hint": "re-run the sweep with --debug and report the traceback",
    }
