"""How the CLI shows things: progress lines, the summary table, plugin listings (rich)."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from mlpi.core.results.schema import TestResult

#: The model ``mlpi run`` and ``mlpi sweep`` measure when none is named.
DEFAULT_MODEL = "resnet50"

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


# -- untrusted text ------------------------------------------------------------------------
#
# Strings read from result files (system name, model name and path, backend, device,
# dataset, run id, units, notes, reasons...) are whatever whoever wrote or copied the file
# put there. Every printer of ``mlpi results list/show`` and ``mlpi compare`` passes them
# through :func:`printable` (terminal lines), :func:`terminal_cell` (rich tables),
# :func:`markdown_cell` or :func:`csv_cell`, so that such a string can neither drive the
# terminal (escape sequences, OSC 8 links, title changes, bidi reordering), nor run rich
# markup, nor break a markdown table, nor become a spreadsheet formula. ``--json`` output is
# left exact: JSON escaping already shows every control character as ``\uXXXX``.

#: C0 controls (ESC, CR, LF, TAB, BEL ...), DEL, C1 controls (CSI 0x9b ...) and the Unicode
#: bidi embeddings/overrides/isolates (U+202A-U+202E, U+2066-U+2069: "Trojan Source").
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: What makes a spreadsheet read a CSV cell as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: Any) -> str:
    """``value`` as text safe to print: each control or bidi character shown escaped
    (``\\x1b``, ``\\n``, ``\\u202e``); everything else, backslashes included, unchanged."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escaped, text)


def terminal_cell(value: Any) -> Text:
    """A rich table cell showing ``value`` literally: :func:`printable`, and never read as
    rich markup (a ``[link=...]`` in a system name stays text)."""
    return Text(printable(value))


def markdown_cell(value: Any) -> str:
    """A markdown table cell: :func:`printable` (so no raw newline ends the row) and ``|``
    escaped."""
    return printable(value).replace("|", "\\|")


def csv_cell(value: Any) -> Any:
    """A CSV cell: numbers and booleans unchanged (a negative figure stays a number); text
    :func:`printable`, with a leading ``'`` when it starts like a formula (``=``, ``+``,
    ``-``, ``@``, tab or CR), as OWASP advises against CSV injection; ``None`` empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if value.startswith(_FORMULA_START) else text


#: Piped, a progress line is printed when a test's phase changes, else at most this often.
PIPED_PROGRESS_S = 30.0


def progress_text(scenario: str, mode: str, progress: dict[str, Any], now: float) -> str | None:
    """One line for a running test's progress (``None``: nothing worth saying yet)."""
    phase = progress.get("phase")
    if phase == "calibrating":
        return f"      {scenario} {mode}: calibrating"
    if phase == "scoring":
        return f"      {scenario} {mode}: scoring the accuracy log"
    if phase != "running" or not isinstance(progress.get("started"), (int, float)):
        return None
    elapsed = max(0.0, now - float(progress["started"]))
    expected = progress.get("expected_s")
    of = f" of about {expected:,.0f} s" if isinstance(expected, (int, float)) and expected > 0 else ""
    done = progress.get("done")
    samples = f", {done:,} samples done" if isinstance(done, int) else ""
    return f"      {scenario} {mode}: {elapsed:,.0f} s{of}{samples}"


class RunPrinter:
    """Reporter for :func:`mlpi.core.engine.runner.execute` that prints to the terminal."""

    def __init__(self) -> None:
        self._live = False  # a progress line is on the terminal, to be replaced
        self._last_piped = 0.0
        self._last_phase: tuple[str, str, Any] | None = None

    def test_progress(self, scenario: str, mode: str, progress: dict[str, Any]) -> None:
        import sys
        import time

        text = progress_text(scenario, mode, progress, time.time())
        if text is None:
            return
        stream = sys.stderr
        if stream.isatty():
            stream.write("\r\x1b[2K" + text)
            stream.flush()
            self._live = True
        elif (scenario, mode, progress.get("phase")) != self._last_phase or time.monotonic() - self._last_piped >= PIPED_PROGRESS_S:
            self._last_phase = (scenario, mode, progress.get("phase"))
            self._last_piped = time.monotonic()
            stream.write(text + "\n")
            stream.flush()

    def _clear_progress(self) -> None:
        import sys

        if self._live:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._live = False

    def note(self, text: str) -> None:
        _err.print(f"mlpi: {text}")

    def plan(self, plan: Any) -> None:
        quick = " (quick: not valid for submission)" if plan.quick or plan.duration_s is not None else ""
        weights = ""
        if plan.model.random_weights:
            weights = (" (random weights - the accuracy checks the run, not the model)" if "accuracy" in plan.modes
                       else " (random weights - performance only)")
        _err.print(
            f"mlpi: {plan.model.name}{weights} on {plan.backend} {plan.device}, dataset {plan.dataset}, "
            f"{', '.join(plan.scenarios)} x {', '.join(plan.modes)}{quick}"
        )
        line = precision_line(plan.extra.get("precision"))
        if line:
            _err.print(f"mlpi: {printable(line)}", markup=False)

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None:
        _err.print(f"[{index}/{total}] {scenario} {mode} ...")

    def test_finished(self, test: TestResult) -> None:
        from mlpi.core.engine.dispatch import pace_warning

        self._clear_progress()
        if test.status == "ok":
            validity = validity_word(test)
            _err.print(f"      {test.scenario} {test.mode}: {labelled_figure(test)} {validity}")
            for reason in test.invalid_reasons:
                _err.print(f"      - {reason}")
            pace = pace_warning(test.devices or ())
            if pace is not None:  # the host, not the simulated device, was measured
                _err.print(f"      warning: {printable(pace[0])}", markup=False)
                _err.print(f"      hint: {printable(pace[1])}", markup=False)
        else:
            _err.print(f"      {test.scenario} {test.mode}: {test.status.upper()}")

    def audit_finished(self, entry: dict[str, Any]) -> None:
        self._clear_progress()
        _err.print(f"      {entry['scenario']} {entry['test']}: {audit_verdict(entry)}")

    def summary(self, outcome: Any) -> None:
        from mlpi.cli_table import Column, emit

        result = outcome.result
        rows = []
        for test in result.tests:
            if test.status != "ok":
                validity = test.status.upper()
            else:
                validity = validity_word(test) + (" (quick)" if test.quick else "")
            if test.simulated:
                validity += " (simulated)"
            rows.append([test.scenario, test.mode, labelled_figure(test), validity, batch_text(test),
                         str(test.precision or "-")])
        if rows:  # a run of audits alone has none
            self._clear_progress()
            # never a cut word: plain rows when piped, columns folded or left out on a narrow terminal
            columns = [Column("scenario"), Column("mode"), Column("result"), Column("validity", whole=True),
                       Column("batch", drop=2), Column("precision", drop=1)]
            emit(f"mlpi {result.run_id}", columns, rows)
        model = result.model
        note = f" ({model.note})" if model.note else ""
        _out.print(f"backend {result.backend.name} {result.backend.version} on {result.device}; model {model.name}{note}")
        for test in result.tests:
            accuracy = test.accuracy
            if accuracy is not None:
                verdict = "" if accuracy.passed is None else (" PASS" if accuracy.passed else " FAIL")
                target = f" (target {accuracy.target_text()})" if accuracy.target is not None else ""
                _out.print(f"{test.scenario} accuracy: {accuracy.report}{target}{verdict}")
                bad = test.extra.get("nonfinite_batches")
                if bad:
                    _out.print(f"{test.scenario} accuracy: the backend answered NaN or infinite values in {bad} "
                               "batch(es): the score reflects outputs that are not numbers")
        for detail in dict.fromkeys(str(t.extra["precision_detail"]) for t in result.tests if t.extra.get("precision_detail")):
            _out.print(f"precision: {printable(detail)}", markup=False)  # what changed the numbers beyond the label
        for test in result.tests:
            devices = test.devices or ()
            if len(devices) > 1:
                _out.print(f"{test.scenario} {test.mode} per device: " + "; ".join(map(_device_line, devices)))
        for entry in result.extra.get("audits", []):
            _out.print(f"{entry['scenario']} {entry['test']}: {audit_verdict(entry)} "
                       f"(against run {entry.get('reference_run')}; {outcome.run_dir / entry['dir']})")
        if result.simulated:
            _out.print("SIMULATED: timings come from a device model, not from hardware")
        performance_only = result.backend.extra.get("performance_only")
        if performance_only:
            _out.print(f"PERFORMANCE ONLY: {printable(performance_only)}", markup=False)
        if not result.submission_valid:
            _out.print(f"not valid for submission: {submission_reasons(result)}")
        _out.print(f"results: {outcome.run_dir}")


def labelled_figure(test: TestResult, measured_beside: bool = True) -> str:
    """A performance test's figure with what it is: a latency says whether it is LoadGen's
    early-stopping estimate (what MLPerf reports), and shows the percentile it measured beside
    unless the table has a column for it."""
    from mlpi.core.engine.scenario import MEASURED_BESIDE, METRIC_LABELS

    figure = test.figure()
    if test.mode != "performance" or test.unit != "ms" or test.metric not in METRIC_LABELS:
        return figure
    text = f"{figure} {METRIC_LABELS[test.metric]}"
    measured = (test.latency_ms or {}).get(MEASURED_BESIDE.get(test.metric, "")) if measured_beside else None
    return text + (f" (measured {MEASURED_BESIDE[test.metric]} {measured:,.3f} ms)" if measured is not None else "")


def audit_verdict(entry: dict[str, Any]) -> str:
    """``PASS``/``FAIL`` of an audit, with each check's as MLCommons' verification says it."""
    check = entry.get("verification")
    if entry.get("status") != "ok" or not isinstance(check, dict):
        return str(entry.get("status", "failed")).upper()
    parts = [f"performance {'TEST PASS' if check.get('performance_passed') else 'TEST FAIL'}"]
    if check.get("accuracy_passed") is not None:
        fallback = check.get("fallback")
        if fallback is None:
            parts.append("accuracy TEST PASS" if check["accuracy_passed"] else "accuracy TEST FAIL")
        elif "delta_percent" in fallback:
            parts.append(f"responses differ, scores within {fallback['delta_percent']:.4f}% "
                         f"(allowed {fallback['allowed_percent']:g}%)")
        else:
            parts.append(f"responses differ: {fallback.get('reason')}")
    return f"{'PASS' if entry.get('passed') else 'FAIL'} ({'; '.join(parts)})"


def _device_line(unit: dict[str, Any]) -> str:
    busy = unit.get("busy_fraction")
    rows, batches = ("rows", "pieces") if unit.get("work") == "pieces" else ("samples", "batches")
    if unit.get("rows") is not None:  # samples that are groups of rows
        rows = f"samples ({unit['rows']:,} rows)"
    pace = unit.get("host_bound_batches")
    modelled = unit.get("modelled_batches")
    return f"{unit['device']} {unit['samples']:,} {rows} in {unit['batches']:,} {batches}" + (
        f", busy {busy:.0%}" if busy is not None else ""
    ) + (f", host-bound {pace:,} of {modelled:,} device-model batches"
         if isinstance(pace, int) and isinstance(modelled, int) and modelled else "")


def print_backends(rows: list[dict[str, Any]]) -> None:
    from mlpi.cli_table import Column, emit

    lines = []
    for row in rows:
        name = row["name"] + (f" ({', '.join(row['aliases'])})" if row.get("aliases") else "")
        status = row["status"]
        if row.get("error"):
            status += f": {row['error']}"
        if row.get("hint"):
            status += f" — {row['hint']}"
        lines.append([name, row.get("version") or "-", row["origin"], ", ".join(row.get("device_kinds") or []) or "-",
                      ", ".join(row.get("device_groups") or row.get("devices") or []) or "-", status])
    columns = [Column("name"), Column("version"), Column("origin", drop=1), Column("device kinds"),
               Column("devices here"), Column("status")]
    emit("mlpi backends", columns, lines)


def print_plain_plugins(rows: list[dict[str, Any]], group: str) -> None:
    from mlpi.cli_table import Column, emit

    lines = [[row["name"], row["origin"], row["status"] + (f": {row['error']}" if row.get("error") else ""),
              row.get("description") or ""] for row in rows]
    emit(f"mlpi {group}", [Column("name"), Column("origin", drop=1), Column("status"), Column("description")], lines)


def print_models(rows: list[dict[str, Any]]) -> None:
    from mlpi.cli_table import Column, emit

    lines = []
    for row in rows:
        datasets = ", ".join(d["name"] + ("" if d["installed"] else " (not installed)") for d in row.get("datasets", []))
        status = row["status"] + (f": {row['error']}" if row.get("error") else "")
        lines.append([row["name"], row["origin"], row.get("artifact_cached") or "no",
                      row.get("random_weights_cached") or "no", datasets or "-", status])
    columns = [Column("name"), Column("origin", drop=1), Column("official file here"), Column("random weights here"),
               Column("datasets", drop=2), Column("status")]
    emit("mlpi models", columns, lines)
    for row in rows:
        if row.get("quality") or row.get("performance_sample_count"):
            _out.print(f"{escape(row['name'])}: " + escape(rules_line(row)))
    for row in rows:
        for option in row.get("options") or []:
            _out.print(escape(f"{row['name']}: -M {option['name']}={option['default']}  {option['help']}"))
        if row.get("unofficial"):
            _out.print(escape(f"{row['name']}: not the official model as configured: {row['unofficial']}"))


def precision_line(record: Any) -> str | None:
    """How ``--precision`` was made, in one line (None when no precision was asked for)."""
    if not isinstance(record, dict) or not record.get("requested"):
        return None
    wanted, method = record["requested"], record.get("method")
    if method == "transform":
        transform = record.get("transform") or {}
        made = f"{wanted} model derived from the fp32 file by {transform.get('tool', '?')}"
        calibration = transform.get("calibration")
        if isinstance(calibration, dict):
            made += f", calibrated on {calibration.get('count')} samples ({calibration.get('kind')})"
    elif method == "backend":
        made = f"{wanted} derived by the backend: {record.get('backend_method')}"
    else:
        made = f"{wanted}: the model file's own precision"
    if record.get("closed_division") is False:
        made += f"; not valid for the closed division: {record.get('closed_reason')}"
    return f"precision: {made}"


def submission_reasons(result: Any) -> str:
    """Why a run is not valid for submission, in words."""
    reasons = []
    if result.settings.quick or result.settings.duration_s is not None or any(t.quick for t in result.tests):
        reasons.append("a quick or shortened run")
    if any(t.mode == "accuracy" and t.status == "ok" and t.accuracy is None for t in result.tests):
        reasons.append("an accuracy test has no score (no ground truth)")
    if result.backend.extra.get("performance_only"):
        reasons.append("outputs were not computed (a performance-only mode)")
    departed = [d for t in result.tests for d in t.extra.get("conf_departures") or ()]
    if departed:
        reasons.append(f"a conf file departs from the rules: {'; '.join(dict.fromkeys(departed))}")
    return "; ".join(reasons) or "see result.json"


def validity_word(test: Any) -> str:
    """VALID, INVALID, or NOT SCORED (an accuracy test with no score has no verdict)."""
    if test.valid is None:
        return "NOT SCORED" if test.mode == "accuracy" else "NO VERDICT"
    return "VALID" if test.valid else "INVALID"


def batch_text(test: Any) -> str:
    """A test's batch size, with "rows" where its samples are groups of rows."""
    if not test.batch_size:
        return "-"
    return f"{test.batch_size} rows" if test.extra.get("batch_unit") == "rows" else str(test.batch_size)


def rules_line(row: dict[str, Any]) -> str:
    """A model's MLPerf rules in one line, as ``mlpi models`` prints them."""
    parts = [row.get("quality") or "no quality target"]
    if row.get("server_latency_ms"):
        parts.append(f"Server p99 <= {row['server_latency_ms']:g} ms")
    if row.get("multistream_latency_ms"):
        parts.append(f"MultiStream p99 <= {row['multistream_latency_ms']:g} ms")
    if row.get("performance_sample_count"):
        parts.append(f"performance samples {row['performance_sample_count']}")
    if row.get("offline_min_samples"):
        parts.append(f"Offline min samples {row['offline_min_samples']}")
    if row.get("dataset_size"):
        parts.append(f"accuracy over {row['dataset_size']} samples")
    for category, scenarios in (row.get("required_scenarios") or {}).items():
        parts.append(f"{category}: {', '.join(scenarios)}")
    if row.get("audits"):
        parts.append(f"audits {', '.join(row['audits'])}")
    if row.get("round"):
        parts.append(f"retired after round {row['round']}" if row.get("retired") else f"round {row['round']}")
    if row.get("rules_key"):
        parts.append(f"LoadGen name {row['rules_key']}")  # what a --user-conf line starts with
    return "; ".join(parts)
