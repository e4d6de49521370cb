"""Start or resume a sweep: check everything first, then hand the cells left to an executor.

Order matters: a new sweep's directory is made only after every cell is checked, so a
misspelt value leaves nothing behind; the state is saved around every cell, so a stop at
any moment loses at most the cell that was running (marked interrupted).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from mlpi.core.engine.runner import signals_interrupt
from mlpi.core.results.schema import TestResult
from mlpi.sweep.matrix import SweepSpec, build_matrix
from mlpi.sweep.state import CellRecord, SweepState


class SweepReporter(Protocol):
    """How a sweep tells its caller what is happening (the CLI shows it live)."""

    def note(self, text: str) -> None: ...

    def cell_started(self, record: CellRecord, position: int, total: int) -> None: ...

    def cell_finished(self, record: CellRecord) -> None: ...

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None: ...

    def test_finished(self, test: TestResult) -> None: ...


class Executor(Protocol):
    """Runs cells somewhere and records each one's outcome in the state as it ends."""

    def describe(self) -> dict[str, Any]:
        """What to save in sweep.json so a resume uses the same executor by default."""
        ...

    def prepare(self, records: list[CellRecord]) -> None:
        """Check what can be checked before any cell runs; raise MlpiError to stop the sweep."""
        ...

    def run(self, state: SweepState, records: list[CellRecord], reporter: SweepReporter) -> bool:
        """Run ``records``; True when stopped by an interrupt (the cells not run stay as they were)."""
        ...


def start(spec: SweepSpec, output_root: Path, executor: Executor, reporter: SweepReporter) -> SweepState:
    """Check every cell of ``spec``, make the sweep directory, run all cells."""
    matrix = build_matrix(spec)
    for note in matrix.notes:
        reporter.note(note)
    records = [CellRecord(i, cell, request) for i, (cell, request) in enumerate(zip(matrix.cells, matrix.requests))]
    executor.prepare(records)
    state = SweepState.create(output_root, _stem(spec), spec.to_json(), records, executor.describe())
    reporter.note(f"sweep {state.sweep_id}: {len(records)} cells; state in {state.directory}")
    with signals_interrupt():
        state.claim()
        try:
            executor.run(state, records, reporter)
        finally:
            state.release()
    return state


def resume(state: SweepState, executor: Executor, reporter: SweepReporter, *, retry_failed: bool) -> SweepState:
    """Run the cells of a recorded sweep that are not done (failed ones only if asked)."""
    with signals_interrupt():
        state.claim()
        try:
            records = state.todo(retry_failed)
            kept = sum(1 for c in state.cells if c.status == "failed") if not retry_failed else 0
            done = sum(1 for c in state.cells if c.status == "done")
            reporter.note(f"sweep {state.sweep_id}: {done} cells done, {len(records)} to run"
                          + (f", {kept} failed kept (--retry-failed runs them again)" if kept else ""))
            if records:
                executor.prepare(records)
                state.executor = executor.describe()
                executor.run(state, records, reporter)
        finally:
            state.release()
    return state


def _stem(spec: SweepSpec) -> str:
    model = spec.run.get("model") or Path(spec.run.get("model_path") or "custom").stem
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model)
    return f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{safe}"


__all__ = ["Executor", "SweepReporter", "resume", "start"]
