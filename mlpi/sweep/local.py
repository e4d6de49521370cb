"""The local executor: cells one after another in this process, each an ordinary run.

Every cell's plan is built (and so fully checked: runtime installed, device present, model
file readable) before the first cell runs; a problem there stops the sweep at once. What
fails while a cell runs is recorded for that cell and the sweep goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.planning import RunRequest, build_plan
from mlpi.core.engine.runner import execute
from mlpi.sweep.cellrun import failure, interrupted, summarize
from mlpi.sweep.driver import SweepReporter
from mlpi.sweep.state import CellRecord, SweepState


class LocalExecutor:
    """Runs each cell with :func:`mlpi.core.engine.runner.execute`, exactly as ``mlpi run`` would."""

    def __init__(self, *, debug: bool = False) -> None:
        self.debug = debug
        self._plans: dict[int, Plan] = {}

    def describe(self) -> dict[str, Any]:
        return {"name": "local"}

    def prepare(self, records: list[CellRecord]) -> None:
        for record in records:
            try:
                self._plans[record.index] = build_plan(RunRequest(**record.request))
            except MlpiError as exc:
                raise in_cell(exc, record) from None

    def run(self, state: SweepState, records: list[CellRecord], reporter: SweepReporter) -> bool:
        current: CellRecord | None = None
        try:
            for position, record in enumerate(records, 1):
                current = record
                reporter.cell_started(record, position, len(records))
                state.start(record)
                summary = self._run_one(state, record, reporter)
                state.finish(record, summary)
                current = None
                reporter.cell_finished(record)
                if record.status == "interrupted" or summary.get("stop"):  # stop: Ctrl-C after its last test
                    return True
        except KeyboardInterrupt:
            if current is not None:
                state.finish(current, interrupted(current.run_id))
                reporter.cell_finished(current)
            return True
        return False

    def _run_one(self, state: SweepState, record: CellRecord, reporter: SweepReporter) -> dict[str, Any]:
        plan = self._plans[record.index]
        plan.extra["sweep"] = {"id": state.sweep_id, "cell": record.index}
        try:
            outcome = execute(plan, Path(state.output_root), reporter, keep_child_output=self.debug)
        except MlpiError as exc:
            return failure(exc)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for the cell; the sweep goes on
            if self.debug:
                import traceback

                traceback.print_exc()
            return failure(exc)
        return {**summarize(outcome), "stop": outcome.interruption is not None}


def in_cell(exc: MlpiError, record: CellRecord) -> MlpiError:
    """The same error, its message saying which cell it is about."""
    message = f"cell {record.index + 1} ({record.cell.label}): {exc.message}"
    try:
        named = type(exc)(message, exc.hint)
    except TypeError:  # a subclass with its own constructor
        named = MlpiError(message, exc.hint)
    named.exit_code = exc.exit_code
    return named
