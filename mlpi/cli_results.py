"""``mlpi results``, ``mlpi sysinfo`` and ``mlpi compare``: parse, call the core, print."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mlpi.cli_table import Column as _Column
from mlpi.cli_table import emit as _emit
from mlpi.core.contract.errors import MlpiError
from mlpi.core.results.rundir import format_figure

_results_option = click.option(
    "--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
    help="Results root, as given to 'mlpi run --output'.",
)
_store_option = click.option(
    "--store", "store_file", type=click.Path(dir_okay=False), envvar="MLPI_STORE", show_envvar=True,
    help="The results store file [default: RESULTS/mlpi.sqlite].",
)


@contextmanager
def _open_store(results_root: str, store_file: str | None, *, reading: bool = True) -> Iterator[Any]:
    """The store. For reading, it is first brought up to date with the run directories under
    the results root when it is that root's own store (or the root was named explicitly);
    reading never creates a store where there are no results."""
    from mlpi.core.contract.errors import UsageError
    from mlpi.core.results.store import STORE_FILE, Store, store_path

    root = Path(results_root)
    path = store_path(root, store_file)
    explicit_root = click.get_current_context().get_parameter_source("results_root") is not click.core.ParameterSource.DEFAULT
    sync = reading and root.is_dir() and (explicit_root or path.resolve() == (root / STORE_FILE).resolve())
    if reading and not sync and not path.is_file():
        raise UsageError(f"no results store at {path}", "run 'mlpi run' first, or pass --results DIR or --store FILE")
    with Store(path) as store:
        if sync:
            for warning in store.sync(root):
                _warn(warning)
        yield store


def _warn(text: str) -> None:
    _echo(f"warning: {text}", err=True)


def _echo(text: str, err: bool = False) -> None:
    """One line that may hold strings from result files, printed with their control and bidi
    characters escaped (:func:`mlpi.cli_output.printable`)."""
    from mlpi.cli_output import printable

    click.echo(printable(text), err=err)


@click.group()
def results() -> None:
    """The results store: list, show and import runs (see 'mlpi compare')."""


@results.command("list")
@click.option("--model", "models", multiple=True, help="Only this model; repeatable.")
@click.option("--scenario", "scenarios", multiple=True, help="Only runs with this scenario; repeatable.")
@click.option("--backend", "backends", multiple=True, help="Only this backend; repeatable.")
@click.option("--device", "devices", multiple=True, help="Only this device (cuda matches cuda:1); repeatable.")
@click.option("--system", "systems", multiple=True, help="Systems whose name, host, CPU or accelerator contains this.")
@click.option("--precision", "precisions", multiple=True, help="Only this precision; repeatable.")
@click.option("--since", help="Runs started on or after this date (YYYY-MM-DD[THH:MM]).")
@click.option("--until", help="Runs started on or before this date (a bare date includes that day).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_results_option
@_store_option
def list_runs(since: str | None, until: str | None, as_json: bool, results_root: str, store_file: str | None,
              **lists: tuple[str, ...]) -> None:
    """List indexed runs, one line per test, oldest first.

    Run ids and names are never cut. A terminal too narrow for every column first gets the
    columns the same in every row on an 'every row:' line, then loses date, precision and
    system (a line says which), then gets one block per test; piped, the output is plain
    rows, two spaces between columns, nothing cut.
    """
    from mlpi.core.results.compare import UNFINISHED
    from mlpi.core.results.store import RunFilter, parse_date

    selection = RunFilter(
        **{key: list(values) for key, values in lists.items()},
        since=parse_date(since) if since else None,
        until=parse_date(until, end_of_day=True) if until else None,
    )
    with _open_store(results_root, store_file) as store:
        runs = store.runs(selection)
    lines = []
    rows = []
    wanted = {s.lower() for s in selection.scenarios}
    for run in runs:
        tests = [t for t in run.result.tests if not wanted or t.scenario.lower() in wanted]
        for test in tests or [None]:  # a run without tests still has its line
            shown = {k: getattr(test, k, None) for k in ("scenario", "mode", "metric", "value", "unit", "valid", "quick")}
            status = getattr(test, "status", None) or run.status
            if status == "ok" and run.status in UNFINISHED:  # a finished test of a run that never ended
                status = run.status
            lines.append({
                "run": run.name, "run_id": run.run_id, "date": run.date, "started": run.started, "system": run.system,
                "model": run.model, "scenario": shown["scenario"], "mode": shown["mode"], "backend": run.backend,
                "device": run.device, "precision": getattr(test, "precision", None) or run.precision,
                "metric": shown["metric"], "value": shown["value"], "unit": shown["unit"], "valid": shown["valid"],
                "quick": shown["quick"], "status": status, "run_status": run.status, "dir": str(run.dir),
            })
            rows.append(test)
    if as_json:
        click.echo(json.dumps(lines, indent=2))
        return
    _emit(f"mlpi results ({len(runs)} runs)", _LIST_COLUMNS, [
        [line["run"], line["date"], line["system"], line["model"],
         (line["scenario"] or "-") + (" accuracy" if line["mode"] == "accuracy" else ""), line["backend"], line["device"],
         line["precision"] or "-", test.figure() if test else "-", _validity(line["valid"], line["quick"], line["status"])]
        for line, test in zip(lines, rows)
    ])


#: ``results list``: run ids and names always shown; date, precision, then system left out
#: first on a narrow terminal.
_LIST_COLUMNS = [
    _Column("run id"), _Column("date", drop=1), _Column("system", drop=3), _Column("model"), _Column("scenario"),
    _Column("backend"), _Column("device"), _Column("precision", drop=2), _Column("metric"), _Column("valid"),
]


@results.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result.json as indexed.")
@_results_option
@_store_option
def show_run(run: str, as_json: bool, results_root: str, store_file: str | None) -> None:
    """Show one run: RUN is its id or an unambiguous prefix of it."""
    from mlpi.cli_output import audit_verdict, labelled_figure, submission_reasons

    with _open_store(results_root, store_file) as store:
        record = store.find(run)
    result = record.result
    if as_json:  # an abandoned run: its status says so, and "abandoned" why (its file still says running)
        shown = result.to_json() | ({"abandoned": record.abandoned} if record.abandoned else {})
        click.echo(json.dumps(shown, indent=2))
        return
    system, model = result.system, result.model
    where = str(record.dir) + ("" if record.dir.exists() else " (directory no longer there)")
    status = result.status
    if record.abandoned:
        finished = sum(1 for t in result.tests if t.status == "ok")
        status = (f"abandoned: {record.abandoned} and the run never recorded its end "
                  f"({finished} finished test(s) kept; result.json still says running)")
    facts = [
        ("run", record.name), ("directory", where), ("started", record.date), ("status", status),
        ("system", record.system), ("cpu", _cpu(system)), ("memory", system.get("host_memory_capacity")),
        ("accelerators", _accelerators(system)), ("os", system.get("operating_system")),
        ("backend", f"{result.backend.name} {result.backend.version or ''}".strip()), ("device", result.device),
        ("precision", result.precision),
        ("model", model.name + (f" ({model.note})" if model.note else "")),
        ("model sha256", model.sha256), ("dataset", result.dataset.name),
        ("valid for submission", "yes" if result.submission_valid else f"no ({submission_reasons(result)})"),
    ]
    for key, value in facts:
        _echo(f"{key + ':':<22}{value if value not in (None, '') else '-'}")
    columns = [_Column("scenario"), _Column("mode"), _Column("result"), _Column("p50 ms", drop=1, right=True),
               _Column("p90 ms", drop=2, right=True), _Column("p99 ms", drop=3, right=True), _Column("validity")]
    _emit("tests", columns, [
        [test.scenario, test.mode, labelled_figure(test, measured_beside=False),
         *(_ms(record.latency.get(test.dir, {}).get(p)) for p in ("p50", "p90", "p99")),
         _validity(test.valid, test.quick, test.status)]
        for test in result.tests
    ])
    for test in result.tests:
        accuracy = test.accuracy
        if accuracy is not None:  # the metric, and which way is better: WER is an error rate
            target = accuracy.target_text()
            verdict = "" if accuracy.passed is None else " PASS" if accuracy.passed else " FAIL"
            _echo(f"{test.scenario} accuracy: {accuracy.metric} {accuracy.figure()}"
                  + (f" (target {target}){verdict}" if target else ""))
    for test in result.tests:
        for reason in test.invalid_reasons:
            _echo(f"{test.scenario} {test.mode}: {reason}")
    for audit in result.extra.get("audits", []):
        _echo(f"{audit.get('scenario')} {audit.get('test')}: {audit_verdict(audit)} "
              f"(against run {audit.get('reference_run')}; {audit.get('dir')})")


@results.command("import")
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@_results_option
@_store_option
def import_runs(dirs: tuple[str, ...], results_root: str, store_file: str | None) -> None:
    """Copy run directories from other machines under the results root and index them.

    Each DIR is a run directory or a folder of them. Nothing is overwritten: a name already
    taken gets a -2 suffix. A run already in the store is skipped; a damaged result.json is
    reported and skipped, the rest are still imported, and the exit code is then 1.
    """
    from mlpi.core.results.store import store_path

    root = Path(results_root)
    with _open_store(results_root, store_file, reading=False) as store:
        outcomes = store.import_dirs([Path(d) for d in dirs], root)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "imported":
            _echo(f"imported {outcome.source} as {root / str(outcome.name)}")
        elif outcome.status == "indexed":
            _echo(f"indexed {outcome.source}")
        elif outcome.status == "duplicate":  # not a "skipped" one: the summary counts it apart
            _echo(f"already in the store: {outcome.message}")
        else:
            _warn(f"skipped: {outcome.message}")
    added = counts.get("imported", 0) + counts.get("indexed", 0)
    bad = counts.get("damaged", 0) + counts.get("empty", 0)
    click.echo(f"{added} imported, {counts.get('duplicate', 0)} already in the store, {bad} skipped "
               f"(store {store_path(root, store_file)})")
    if bad:
        raise MlpiError(f"{bad} of {len(outcomes)} result directories could not be imported",
                        "fix or copy again the directories named above; the others were imported")


# -- mlpi sysinfo ----------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="MLPerf system-description JSON (fill the empty fields).")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
def sysinfo(as_json: bool, plugins_file: str | None) -> None:
    """Describe this machine with MLPerf's system-description fields.

    What cannot be detected is left empty for you to fill; nothing is guessed.
    Set MLPI_SYSTEM_NAME to name the system in every run's result.
    """
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.results.sysinfo import (
        MLPERF_FIELDS,
        runtime_distributions,
        system_info,
    )

    config = PluginsConfig.load(plugins_file)
    info = system_info(runtime_distributions(config), config=config)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [[key, str(info.get(key)) if info.get(key) not in (None, "") else "(not detected: fill in)"]
            for key in MLPERF_FIELDS]
    _emit("mlpi sysinfo (MLPerf system description)", [_Column("field"), _Column("value")], rows)
    click.echo(f"hostname {info['hostname']}, {info['machine']}, Python {info['python']}")
    for accelerator in info["accelerators"]:
        click.echo(f"accelerator: {accelerator['name']}, {accelerator['memory']}, driver {accelerator['driver']}")


# -- mlpi compare ----------------------------------------------------------------------------


@click.command()
@click.argument("selection", nargs=-1)
@click.option("--baseline", help="RUN, or KEY=VALUE[,KEY=VALUE] naming the rows others are compared to.")
@click.option("--format", "fmt", type=click.Choice(["terminal", "markdown", "csv", "json"]), default="terminal",
              show_default=True, help="Output format.")
@click.option("--latest", is_flag=True,
              help="Keep only the newest run per model, scenario, system, backend, device, precision, batch size and instances.")
@click.option("--include-invalid", is_flag=True,
              help="Compute speedups from INVALID or unfinished results too (marked so).")
@_results_option
@_store_option
def compare(selection: tuple[str, ...], baseline: str | None, fmt: str, latest: bool, include_invalid: bool,
            results_root: str, store_file: str | None) -> None:
    """Compare indexed runs side by side, with speedups against a baseline.

    SELECTION is run ids (or unambiguous prefixes) and KEY=VALUE filters; filters narrow
    the named runs, or all indexed runs when none is named. Keys: model, scenario, backend,
    device, system, precision, since, until. Repeating a key means any of its values.

    \b
      mlpi compare model=resnet50 scenario=Offline --baseline backend=onnxruntime
      mlpi compare 20250101-1200 20250102-0900 --format markdown

    Speedups (above 1 is better) are computed only between rows of the same model, scenario
    and metric; a baseline sharing none with the compared runs is refused. No speedup is
    computed from an INVALID or unfinished result (the cell says why, e.g. '- (INVALID)')
    unless --include-invalid. Warnings name rows that differ in precision, batch size,
    instances, quick versus full-length settings, dataset or model file.

    Runs of the same model, scenario, system, backend, device, precision, batch size and
    instances are repeats: listed together, oldest first, numbered in the 'repeat' column
    ('2/3'); --latest keeps the newest of each ('newest of 3').

    On a terminal too narrow for every column, columns the same in every row move to an
    'every row:' line, then p50, p90, p99, accuracy, precision and system are left out, then
    rows are printed as blocks; piped, the output is plain rows, nothing cut.
    """
    from mlpi.core.results.compare import compare as build

    with _open_store(results_root, store_file) as store:
        comparison = build(store, list(selection), baseline, latest=latest, include_invalid=include_invalid)
    for warning in comparison.warnings:
        _warn(warning)
    if fmt == "json":
        click.echo(json.dumps(comparison.to_json(), indent=2))
    elif fmt == "csv":
        click.echo(_csv(comparison.rows), nl=False)
    else:
        columns, lines = _display(comparison.rows, baseline is not None, latest)
        if fmt == "markdown":
            click.echo(_markdown([c.name for c in columns], lines))
        else:
            rows = comparison.rows
            _emit("mlpi compare" + (f" (baseline {baseline})" if baseline else ""), columns, lines,
                  sections=[i > 0 and row.group != rows[i - 1].group for i, row in enumerate(rows)])


#: CSV columns: new ones are added at the end, so that a reader by position keeps working.
_CSV_COLUMNS = (
    "run", "started", "model", "scenario", "system", "backend", "device", "precision", "dataset", "metric", "value",
    "unit", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "accuracy_metric", "accuracy", "accuracy_unit",
    "accuracy_higher_is_better", "valid", "quick",
    "simulated", "status", "speedup", "baseline", "batch_size", "batch_unit", "instances", "repeat", "repeats",
    "speedup_note",
)


def _csv(rows: list[Any]) -> str:
    from mlpi.cli_output import csv_cell

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for row in rows:
        data = row.to_json()
        accuracy = row.accuracy or {}
        data.update({f"{p}_ms": row.latency_ms.get(p) for p in ("p50", "p90", "p95", "p99")},
                    accuracy_metric=accuracy.get("metric"), accuracy=accuracy.get("value"), accuracy_unit=accuracy.get("unit"),
                    accuracy_higher_is_better=accuracy.get("higher_is_better"))
        writer.writerow([csv_cell(data.get(c)) for c in _CSV_COLUMNS])
    return buffer.getvalue()


def _display(rows: list[Any], with_speedup: bool, latest: bool = False) -> tuple[list[_Column], list[list[str]]]:
    """The columns and cells of the terminal and markdown tables. ``repeat`` is shown when
    some configuration was run more than once."""
    columns = [
        _Column("model"), _Column("scenario"), _Column("system", drop=6), _Column("backend"), _Column("device"),
        _Column("precision", drop=5), _Column("result"), _Column("p50 ms", drop=1, right=True),
        _Column("p90 ms", drop=2, right=True), _Column("p99 ms", drop=3, right=True), _Column("accuracy", drop=4),
        _Column("valid"), _Column("batch", right=True), _Column("instances", right=True), _Column("run"),
    ]
    repeats = any(row.repeats > 1 for row in rows)
    if repeats:
        columns.append(_Column("repeat"))
    if with_speedup:
        columns.append(_Column("speedup", right=True, whole=True))
    lines = []
    for row in rows:
        accuracy = row.accuracy or {}
        line = [
            row.model, row.scenario, row.system, row.backend, row.device, row.precision or "-",
            format_figure(row.value, row.unit), *(_ms(row.latency_ms.get(p)) for p in ("p50", "p90", "p99")),
            _accuracy(accuracy),
            _validity(row.valid, row.quick, row.status) + (" (simulated)" if row.simulated else ""),
            row.batch_text(), str(row.instances) if row.instances is not None else "-", row.run,
        ]
        if repeats:
            line.append(_repeat(row, latest))
        if with_speedup:
            line.append(_speedup(row))
        lines.append(line)
    return columns, lines


def _repeat(row: Any, latest: bool) -> str:
    """``2/3``: the second of three runs of one configuration; ``newest of 3`` with --latest."""
    if row.repeats <= 1:
        return "-"
    return f"newest of {row.repeats}" if latest and row.repeat == row.repeats else f"{row.repeat}/{row.repeats}"


def _speedup(row: Any) -> str:
    """``baseline``; ``1.23x``; ``- (INVALID)`` when none was computed and why; ``0.52x (INVALID)``
    when --include-invalid computed one anyway."""
    if row.baseline:
        return "baseline"
    if row.speedup is not None:
        return f"{row.speedup:.2f}x" + (f" ({row.speedup_note})" if row.speedup_note else "")
    return f"- ({row.speedup_note})" if row.speedup_note else "-"


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    from mlpi.cli_output import markdown_cell

    def cells(values: list[str]) -> str:
        return "| " + " | ".join(map(markdown_cell, values)) + " |"

    align = ["---:" if h.endswith(("ms", "speedup")) else "---" for h in header]
    return "\n".join([cells(header), "| " + " | ".join(align) + " |", *(cells(line) for line in lines)])


def _accuracy(accuracy: dict[str, Any]) -> str:
    """``70.000% top-1``; ``0.86170 mean DICE``; ``7.452% WER (lower is better)``: a compare
    row's accuracy, in its own unit, an error rate marked as such."""
    if accuracy.get("value") is None:
        return "-"
    from mlpi.core.contract.accuracy import format_value

    text = f"{format_value(accuracy['value'], accuracy.get('unit', '%'))} {accuracy.get('metric') or ''}".strip()
    return text + (" (lower is better)" if accuracy.get("higher_is_better") is False else "")


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _validity(valid: Any, quick: Any, status: Any) -> str:
    if status not in (None, "ok"):
        return str(status).upper()
    if valid is None:
        return "-"
    return ("VALID" if valid else "INVALID") + (" (quick)" if quick else "")


def _cpu(system: dict[str, Any]) -> str:
    parts = [str(system.get("host_processor_model_name") or "-")]
    if system.get("host_processors_per_node"):
        parts.append(f"{system['host_processors_per_node']} socket(s)")
    if system.get("host_processor_core_count"):
        parts.append(f"{system['host_processor_core_count']} cores")
    if system.get("host_processor_vcpu_count"):
        parts.append(f"{system['host_processor_vcpu_count']} threads")
    return ", ".join(parts)


def _accelerators(system: dict[str, Any]) -> str:
    found = system.get("accelerators") or []
    return "; ".join(f"{a.get('name')} ({a.get('memory')}, driver {a.get('driver')})" for a in found) or "-"


__all__ = ["compare", "results", "sysinfo"]
