"""``mlpi sweep``: parse the matrix and shared options, hand them to :mod:`mlpi.sweep`, show progress."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlpi.core.contract.errors import EXIT_INTERRUPTED, MlpiError, UsageError

if TYPE_CHECKING:
    from mlpi.core.results.schema import TestResult

#: CLI parameter -> RunRequest field, for the settings every cell shares.
_SHARED = {
    "model": "model", "model_path": "model_path", "dataset": "dataset", "dataset_path": "dataset_path",
    "count": "dataset_count", "mode": "mode", "precision": "precision", "target_qps": "target_qps",
    "quick": "quick", "duration": "duration_s", "batch_timeout_ms": "batch_timeout_ms", "weights": "weights",
    "seed": "seed", "plugins_file": "plugins_file",
}
_AXES = ("backend", "device", "batch_size", "instances", "scenario")
#: What ``--resume`` may still be given: where to look, and how to run what is left.
_RESUME_OK = {"resume", "output", "retry_failed", "executor", "address", "cpus_per_cell", "debug"}


@click.command("sweep")
@click.option("--matrix", "matrix_file", type=click.Path(dir_okay=False), help="TOML file: [matrix] lists, [run] settings, [options.BACKEND] tables, [[exclude]] combinations. Flags override it.")
@click.option("--backend", "-b", multiple=True, help="Backends, comma-separated (default: each device's configured backend).")
@click.option("--device", "-d", multiple=True, help="Devices, comma-separated: cpu,cuda:0,qaic:0-3 ... (default: cpu).")
@click.option("--batch-size", multiple=True, help="Batch sizes, comma-separated; auto for the backend's preference (default).")
@click.option("--instances", multiple=True, help="Sessions per device unit, comma-separated (default: 1).")
@click.option("--scenario", "-s", multiple=True, help="Scenarios, comma-separated, or all (default: Offline).")
@click.option("--model", "-m", help="A registered model name (default: resnet50, quick).")
@click.option("--model-path", type=click.Path(dir_okay=True), help="The model's ONNX file.")
@click.option("--dataset", help="Dataset plugin name (default: synthetic).")
@click.option("--dataset-path", type=click.Path(), help="The dataset's folder or file.")
@click.option("--count", type=int, help="Use only this many samples of the dataset.")
@click.option("--mode", help="performance (default), accuracy or both.")
@click.option("--precision", help="fp32, fp16, bf16 or int8, where the backend can.")
@click.option("--target-qps", type=float, help="Offline expected QPS / Server target QPS (default: calibrated).")
@click.option("--quick", is_flag=True, help="Short development runs (10 s per test); not valid for submission.")
@click.option("--duration", type=float, help="Minimum test duration in seconds (implies not valid for submission).")
@click.option("--batch-timeout-ms", type=float, help="Server: longest a batch waits to fill.")
@click.option("--weights", type=click.Choice(["official", "random"]), help="For --model: the official file, or seeded random weights.")
@click.option("--seed", type=int, help="Seed for synthetic data and random weights (default: 0).")
@click.option("--option", "-o", "options", multiple=True, help="Backend option KEY=VALUE for every cell, or BACKEND.KEY=VALUE for one backend's cells; repeatable.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
@click.option("--output", default="results", show_default=True, type=click.Path(file_okay=False), help="Results root; the sweep's state goes in OUTPUT/sweeps/<sweep-id>/.")
@click.option("--resume", help="Continue a sweep: its id (under OUTPUT/sweeps), its folder or its sweep.json.")
@click.option("--retry-failed", is_flag=True, help="With --resume: run failed cells again too (default: keep them failed).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where cells run: here, one after another (default), or on a Ray cluster.")
@click.option("--address", help="--executor ray: the cluster's HOST:PORT (default: $RAY_ADDRESS or the cluster on this machine).")
@click.option("--cpus-per-cell", type=float, help="--executor ray: CPUs each cell reserves on its node (default: 1).")
@click.option("--debug", is_flag=True, help="Show tracebacks and child output.")
def sweep(**params: Any) -> int:
    """Run a matrix of backends x devices x batch sizes x instances x scenarios.

    Each cell is one `mlpi run`; a cell that fails is recorded and the sweep goes on.
    The state is kept in OUTPUT/sweeps/<sweep-id>/sweep.json, so a stopped sweep
    continues with --resume. Exit code: 0 when every cell is done, 1 when some failed,
    130 when interrupted.
    """
    from mlpi.sweep import driver
    from mlpi.sweep.state import SweepState

    context = click.get_current_context()
    given = {
        p.name for p in context.command.params
        if p.name and context.get_parameter_source(p.name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    output = Path(params["output"])
    with SweepPrinter() as printer:
        if params["resume"]:
            ignored = sorted(given - _RESUME_OK)
            if ignored:
                flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
                raise UsageError(f"--resume runs the recorded sweep as it is; {flags} would be ignored",
                                 "drop them, or start a new sweep without --resume")
            state = SweepState.load(params["resume"], output)
            executor = _executor(params, given, state.executor)
            driver.resume(state, executor, printer, retry_failed=params["retry_failed"])
        else:
            if params["retry_failed"]:
                raise UsageError("--retry-failed only applies with --resume", "pass --resume SWEEP-ID too")
            spec = _spec(params, given, printer)
            state = driver.start(spec, output, _executor(params, given, {}), printer)
    print_sweep(state)
    return _exit(state)


def _spec(params: dict[str, Any], given: set[str], printer: SweepPrinter) -> Any:
    """The matrix file (if any) with the flags given put over it; the embedded default model
    when none is named, as `mlpi run` does."""
    from mlpi.cli_output import DEFAULT_MODEL
    from mlpi.sweep.matrix import SweepSpec, spec_from_flags, spec_from_toml

    base = spec_from_toml(Path(params["matrix_file"])) if params["matrix_file"] else SweepSpec()
    axes = {axis: params[axis] for axis in _AXES}
    shared = {field: params[name] for name, field in _SHARED.items() if name in given}
    spec = base.overridden_by(spec_from_flags(axes, shared, params["options"]))
    if not spec.run.get("model") and not spec.run.get("model_path"):
        spec.run["model"] = DEFAULT_MODEL
        spec.run["quick"] = spec.run.get("quick") or spec.run.get("duration_s") is None
        printer.note(f"no model given: every cell runs the embedded default ({DEFAULT_MODEL}, quick unless --duration)")
    return spec


def _executor(params: dict[str, Any], given: set[str], recorded: dict[str, Any]) -> Any:
    name = params["executor"] or recorded.get("name") or "local"
    if name == "ray":
        from mlpi.sweep.ray_executor import RayExecutor

        address = params["address"] or recorded.get("address")
        cpus = params["cpus_per_cell"] if params["cpus_per_cell"] is not None else recorded.get("cpus_per_cell", 1.0)
        return RayExecutor(address, cpus_per_cell=cpus, debug=params["debug"])
    for flag in ("address", "cpus_per_cell"):
        if flag in given:
            raise UsageError(f"--{flag.replace('_', '-')} is for --executor ray", "add --executor ray, or drop it")
    from mlpi.sweep.local import LocalExecutor

    return LocalExecutor(debug=params["debug"])


def _exit(state: Any) -> int:
    statuses = [c.status for c in state.cells]
    resume = f"mlpi sweep --resume {state.directory}"
    if any(s in ("interrupted", "pending", "running") for s in statuses):
        error = MlpiError("interrupted", f"what was measured is kept; continue with `{resume}`")
        error.exit_code = EXIT_INTERRUPTED
        raise error
    failed = [c for c in state.cells if c.status == "failed"]
    if failed:
        which = ", ".join(str(c.index + 1) for c in failed)
        raise MlpiError(
            f"{len(failed)} of {len(state.cells)} cells failed (cell {which})",
            f"the list above says why; after fixing it, run them again with `{resume} --retry-failed`",
        )
    return 0


class SweepPrinter:
    """Sweep reporter for the terminal: a live progress bar on stderr, a line per cell."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("done {task.fields[done]}  failed {task.fields[failed]}"), TimeElapsedColumn(),
            console=Console(stderr=True, highlight=False, soft_wrap=True), transient=True,
        )
        self.console = self.progress.console
        self._task: Any = None
        self._done = 0
        self._failed = 0

    def __enter__(self) -> SweepPrinter:
        if self.console.is_terminal:  # piped output gets the per-cell lines only
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(f"mlpi: {text}", markup=False)

    def cell_started(self, record: Any, position: int, total: int) -> None:
        if self._task is None:
            self._task = self.progress.add_task("", total=total, done=0, failed=0)
        self.progress.update(self._task, description=f"cell {record.index + 1}: {record.cell.label}")
        self.console.print(f"[{position}/{total}] cell {record.index + 1}: {record.cell.label} ...", markup=False)

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None:
        pass

    def test_finished(self, test: TestResult) -> None:
        if test.status == "ok":
            validity = _validity({"valid": test.valid, "simulated": test.simulated})
            self.console.print(f"      {test.scenario} {test.mode}: {test.figure()} {validity}", markup=False)

    def cell_finished(self, record: Any) -> None:
        if record.status == "done":
            self._done += 1
            line = f"run {record.run_id}"
        else:
            self._failed += record.status == "failed"
            line = f"{record.status.upper()}: {(record.error or {}).get('message', '')}"
        self.console.print(f"      cell {record.index + 1} {line}", markup=False)
        if self._task is not None:
            self.progress.update(self._task, advance=1, done=self._done, failed=self._failed)


def _validity(test: dict[str, Any]) -> str:
    """A cell's test summary (sweep.json) as VALID/INVALID, marked when simulated."""
    if test.get("valid") is None:
        return "-"
    return ("VALID" if test["valid"] else "INVALID") + (" (simulated)" if test.get("simulated") else "")


def _figure(test: dict[str, Any]) -> str:
    from mlpi.core.results.rundir import format_figure

    return format_figure(test.get("value"), test.get("unit"))


def print_sweep(state: Any) -> None:
    """The final table: one row per cell, then why each failed cell failed."""
    from rich.console import Console

    from mlpi.cli_table import Column, emit

    out = Console(highlight=False, soft_wrap=True)
    rows = []
    for record in state.cells:
        cell = record.cell
        tests = record.tests
        shown = next((t for t in tests if t.get("mode") == "performance"), tests[0] if tests else None)
        rows.append([
            str(record.index + 1), cell.backend, cell.device, "auto" if cell.batch_size is None else str(cell.batch_size),
            str(cell.instances), cell.scenario, record.status.upper() if record.status != "done" else "done",
            _figure(shown) if shown else "-", _validity(shown) if shown else "-", record.run_id or "-",
        ])
    # never a cut run id: plain rows when piped, columns folded or left out on a narrow terminal
    columns = [Column("#", right=True), Column("backend"), Column("device"), Column("batch", right=True),
               Column("inst", right=True), Column("scenario"), Column("status", drop=1), Column("result"),
               Column("validity", whole=True), Column("run")]
    emit(f"mlpi sweep {state.sweep_id}", columns, rows)
    for record in state.cells:
        if record.status == "failed" and record.error:
            hint = f" (hint: {record.error['hint']})" if record.error.get("hint") else ""
            out.print(f"cell {record.index + 1} ({record.cell.label}) failed: {record.error['message']}{hint}", markup=False)
    out.print(f"sweep: {state.directory}", markup=False)
