"""What a report shows, read from run directories: runs, their tests, and chart series.

Input is a list of run directories (``results/<run-id>``) or results roots that contain
them, so any source of run directories (a folder, a results store) can feed the same list.
A run whose ``result.json`` cannot be read is skipped with a warning, never fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import ResultError, UsageError
from mlpi.core.results.rundir import RESULT_FILE
from mlpi.core.results.schema import RunResult, TestResult, load_result
from mlpi.core.results.store import latency_percentiles

#: Scenarios whose headline figure is a throughput, in the order the report shows them.
THROUGHPUT_SCENARIOS = ("Offline", "Server")
#: The order scenarios are named in (labels, tables).
SCENARIO_ORDER = ("Offline", "Server", "SingleStream", "MultiStream")
#: Scenarios with an MLPerf latency metric. Offline has none: its per-sample "latency" is
#: the time since the single query was issued, so it is not charted.
LATENCY_SCENARIOS = ("Server", "SingleStream", "MultiStream")
PERCENTILES = ("p50", "p90", "p99")
EFFICIENCY_FORMAT = "mlpi-backend-efficiency/1"


@dataclass
class ScenarioResult:
    """One LoadGen test of a run, with its latency percentiles (ms) when the log has them."""

    scenario: str
    mode: str
    status: str
    valid: bool | None
    metric: str | None
    value: float | None
    unit: str | None
    quick: bool
    simulated: bool
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_kind: str | None = None
    #: The batch size this test ran with (None when its record has none), counted in
    #: ``batch_unit``: ``samples``, or ``rows`` where each sample is a group of rows.
    batch_size: int | None = None
    batch_unit: str = "samples"
    #: False for an accuracy test that has no score (no accuracy record: a dataset without
    #: ground truth, say); True for every other test.
    scored: bool = True

    def batch_text(self) -> str:
        """``bs8``, ``bs2048 rows``, or ``-`` when the test did not record its batch."""
        return f"bs{_batch(self.batch_size, self.batch_unit)}" if self.batch_size else "-"


@dataclass
class RunRecord:
    """One run directory as the report needs it."""

    run_id: str
    path: Path
    status: str
    backend: str
    backend_version: str
    device: str
    precision: str
    model: str
    weights: str | None
    quick: bool
    #: Derived from the run's tests (see :func:`submission_reasons`), not only the file's flag.
    submission_valid: bool
    simulated: bool
    started: str | None
    tests: list[ScenarioResult]
    #: Unique among the runs of a report (see :func:`assign_labels`), and ``label_parts`` joined by spaces.
    label: str = ""
    label_parts: list[str] = field(default_factory=list)
    #: Batch sizes as the tests ran them (``bs1 (MultiStream 8)``) and instances: what tells
    #: two runs of one backend/device apart.
    setting: str = ""
    #: The batch size the run asked for (``settings.batch_size``); the tests' own are in ``tests``.
    asked_batch: int | None = None
    #: Why the run is not valid for submission (empty when it is).
    submission_reasons: list[str] = field(default_factory=list)

    def base_label(self) -> str:
        return f"{self.backend}/{self.device}"


@dataclass
class Loaded:
    runs: list[RunRecord]
    warnings: list[str]


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories named directly, or found one level under a results root."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist", "pass run directories (results/<run-id>) or a results root holding them")
        if not path.is_dir():
            raise UsageError(f"{path} is not a directory", "pass run directories (results/<run-id>) or a results root holding them")
        if (path / RESULT_FILE).exists():
            found.append(path)
            continue
        found.extend(child for child in sorted(path.iterdir()) if child.is_dir() and (child / RESULT_FILE).exists())
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return list(unique)


def load_runs(paths: list[Path]) -> Loaded:
    """Every readable run under ``paths``; unreadable ones become warnings."""
    runs: list[RunRecord] = []
    warnings: list[str] = []
    for run_dir in find_run_dirs(paths):
        try:
            runs.append(read_run(run_dir))
        except ResultError as exc:
            warnings.append(f"skipped: {exc.message}")
    runs.sort(key=lambda r: (r.started or "", r.run_id))
    taken: set[str] = set()
    for run in runs:  # copies of one run (a run also imported elsewhere) still get distinct ids
        base, number = run.run_id, 1
        while run.run_id in taken:
            number += 1
            run.run_id = f"{base}-{number}"
        taken.add(run.run_id)
    assign_labels(runs)
    return Loaded(runs, warnings)


def read_run(run_dir: Path) -> RunRecord:
    """One run directory as the report shows it; :class:`~mlpi.core.contract.errors.ResultError` when
    its result.json cannot be read (see :func:`mlpi.core.results.schema.load_result`)."""
    return _run_record(run_dir, load_result(run_dir / RESULT_FILE))


def _run_record(run_dir: Path, result: RunResult) -> RunRecord:
    settings = result.settings
    run_quick = settings.quick or settings.duration_s is not None
    tests = []
    for raw in result.tests:
        test = ScenarioResult(
            scenario=raw.scenario, mode=raw.mode, status=raw.status, valid=raw.valid, metric=raw.metric,
            value=_number(raw.value), unit=raw.unit, quick=raw.quick, simulated=result.simulated or raw.simulated,
            batch_size=raw.batch_size or None, batch_unit="rows" if raw.extra.get("batch_unit") == "rows" else "samples",
            scored=raw.mode != "accuracy" or (raw.accuracy is not None and _number(raw.accuracy.value) is not None),
        )
        if test.mode == "performance" and test.status == "ok" and test.scenario in LATENCY_SCENARIOS:
            _read_latency(test, run_dir, raw)
        tests.append(test)
    reasons = submission_reasons(result, tests)
    return RunRecord(
        run_id=run_dir.name,
        path=run_dir,
        status=result.status,
        backend=result.backend.name,
        backend_version=result.backend.version or "?",
        device=result.device,
        precision=result.precision or "?",
        model=result.model.name,
        weights=result.model.weights,
        quick=run_quick or any(t.quick for t in tests),
        submission_valid=not reasons,
        simulated=result.simulated or any(t.simulated for t in tests),
        started=result.started,
        tests=tests,
        setting=_setting(tests, result.settings.batch_size, result.settings.instances or 1),
        asked_batch=result.settings.batch_size,
        submission_reasons=reasons,
    )


def _batch(size: int | None, unit: str) -> str:
    return f"{size} rows" if unit == "rows" else str(size)


def batch_setting(tests: list[ScenarioResult], asked: int | None = None) -> str:
    """The batch sizes a run's tests ran with, as one label: ``bs1`` when all agree,
    ``bs1 (MultiStream 8)`` when some differ (the size most scenarios used first, then the
    others by scenario), ``bs2048 rows`` where samples are groups of rows. Only when no test
    recorded its batch (files written before tests kept it) is the asked ``asked`` shown."""
    by_test: dict[tuple[str, str], str] = {}
    for test in tests:
        if test.batch_size:
            by_test.setdefault((test.scenario, test.mode), _batch(test.batch_size, test.batch_unit))
    if not by_test:
        return f"bs{asked}" if asked else ""
    entries: list[tuple[str, str]] = []  # (who, batch): one per scenario, or per test where its modes differ
    scenarios = list(dict.fromkeys(scenario for scenario, _ in by_test))
    order = {name: n for n, name in enumerate(SCENARIO_ORDER)}
    scenarios.sort(key=lambda name: order.get(name, len(order)))
    for scenario in scenarios:
        sizes = {mode: size for (name, mode), size in by_test.items() if name == scenario}
        if len(set(sizes.values())) == 1:
            entries.append((scenario, next(iter(sizes.values()))))
        else:
            entries.extend((f"{scenario} {mode}", size) for mode, size in sizes.items())
    counts: dict[str, int] = {}
    for _, size in entries:
        counts[size] = counts.get(size, 0) + 1
    main = max(counts, key=lambda size: counts[size])  # ties: the first scenario's (dicts keep insertion order)
    others = [f"{who} {size}" for who, size in entries if size != main]
    return f"bs{main}" + (f" ({', '.join(others)})" if others else "")


def _setting(tests: list[ScenarioResult], asked: int | None, instances: int) -> str:
    return " ".join(part for part in (batch_setting(tests, asked), f"x{instances}" if instances != 1 else "") if part)


def submission_reasons(result: RunResult, tests: list[ScenarioResult]) -> list[str]:
    """Why a run is not valid for submission, read from its tests (empty when it is): the
    run's own flag (quick or shortened) is one input, never the only one."""
    reasons: list[str] = []
    if result.status != "ok":
        reasons.append(f"run {result.status}")
    if not tests:
        reasons.append("no tests")
    if result.settings.quick or result.settings.duration_s is not None or any(t.quick for t in tests):
        reasons.append("quick or shortened run")
    elif not result.submission_valid:
        reasons.append("recorded as not valid for submission")
    if result.simulated or any(t.simulated for t in tests):
        reasons.append("simulated")
    if result.model.weights == "random":
        reasons.append("random weights")
    if result.model.extra.get("official") is False:
        reasons.append("not the official model")
    for test in tests:
        name = f"{test.scenario} {test.mode}"
        if test.status != "ok":
            reasons.append(f"{name} {test.status}")
        elif not test.scored:
            reasons.append(f"{name} has no score")
        elif test.valid is False:
            reasons.append(f"{name} INVALID")
        elif test.valid is None:
            reasons.append(f"{name} has no verdict")
    return list(dict.fromkeys(reasons))


def _read_latency(test: ScenarioResult, run_dir: Path, raw: TestResult) -> None:
    found = latency_percentiles(run_dir, raw)
    if all(p in found for p in PERCENTILES):
        test.latency_ms = {p: found[p] for p in PERCENTILES}
        test.latency_kind = "per query" if test.scenario == "MultiStream" else "per sample"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def assign_labels(runs: list[RunRecord]) -> None:
    """A label per run, unique among ``runs``: ``backend/device``, then, only among runs whose
    label so far is the same and only where it differs between them: the model, the settings
    (``bs1 (MultiStream 8) x2``), the start time (to the day, minute or second that tells them
    apart), and last the run id (``[20250601-120000-...-2]``), which always differs."""
    parts = {run.run_id: [run.base_label()] for run in runs}
    refinements = (
        lambda group: [run.model for run in group],
        lambda group: [run.setting for run in group],
        _start_times,
        lambda group: [f"[{run.run_id}]" for run in group],
    )
    for refine in refinements:
        groups: dict[str, list[RunRecord]] = {}
        for run in runs:
            groups.setdefault(" ".join(parts[run.run_id]), []).append(run)
        for group in groups.values():
            values = refine(group) if len(group) > 1 else []
            if len(set(values)) > 1:
                for run, value in zip(group, values):
                    if value:
                        parts[run.run_id].append(value)
    seen: dict[str, int] = {}
    for run in runs:  # run ids are unique (see load_runs), so this only guards odd names
        label = " ".join(parts[run.run_id])
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            parts[run.run_id].append(f"#{seen[label]}")
        run.label_parts = parts[run.run_id]
        run.label = " ".join(run.label_parts)


def _start_times(group: list[RunRecord]) -> list[str]:
    """Start times as short as still tells ``group`` apart: the day, the minute or the second."""
    started = [run.started or "" for run in group]
    distinct = len(set(started))
    for cut in (10, 16, 19):
        shown = [s[:cut].replace("T", " ") if s else "start unknown" for s in started]
        if len(set(shown)) == distinct:
            return shown
    return [s.replace("T", " ") if s else "start unknown" for s in started]


def format_ms(value: float) -> str:
    """A latency in ms: three decimals, or three significant digits below 0.1 ms."""
    return f"{value:,.3f}" if value >= 0.1 else f"{value:.3g}"


def validity(test: ScenarioResult) -> str:
    """``VALID``/``INVALID``/``NOT SCORED``/status, with the markers a reader must not miss."""
    if test.status != "ok":
        text = test.status
    elif not test.scored:
        text = "NOT SCORED (no accuracy figure)"
    else:
        text = "VALID" if test.valid else ("INVALID" if test.valid is False else "no verdict")
    marks = [m for m, on in (("quick", test.quick), ("simulated", test.simulated)) if on]
    return f"{text} ({', '.join(marks)})" if marks else text


@dataclass(frozen=True)
class Bar:
    """One bar of the throughput chart: a run's figure for one model x scenario."""

    run: RunRecord
    test: ScenarioResult


def throughput_groups(runs: list[RunRecord]) -> dict[tuple[str, str], list[Bar]]:
    """Offline samples/s and Server QPS, grouped by (model, scenario)."""
    groups: dict[tuple[str, str], list[Bar]] = {}
    models = list(dict.fromkeys(run.model for run in runs))
    for model in models:
        for scenario in THROUGHPUT_SCENARIOS:
            for run in runs:
                for test in run.tests:
                    if (run.model == model and test.scenario == scenario and test.mode == "performance"
                            and test.status == "ok" and test.value is not None):
                        groups.setdefault((model, scenario), []).append(Bar(run, test))
    return groups


def latency_groups(runs: list[RunRecord]) -> dict[str, list[Bar]]:
    """Runs with p50/p90/p99 per latency scenario (scenarios without data are absent)."""
    groups: dict[str, list[Bar]] = {}
    for scenario in LATENCY_SCENARIOS:
        for run in runs:
            for test in run.tests:
                if test.scenario == scenario and test.latency_ms:
                    groups.setdefault(scenario, []).append(Bar(run, test))
    return groups


@dataclass(frozen=True)
class EfficiencyRow:
    backend: str
    own_loop: float
    mlpi_offline: float
    valid: bool | None

    @property
    def ratio(self) -> float:
        return self.mlpi_offline / self.own_loop


@dataclass
class Efficiency:
    """``benchmarks/backend_efficiency.py --json`` output: mlpi Offline vs the runtime's own loop."""

    model: str
    batch_size: int | None
    duration_s: float | None
    threads: int | None
    rows: list[EfficiencyRow]
    source: Path


def load_efficiency(path: Path) -> Efficiency:
    hint = "write it with: python benchmarks/backend_efficiency.py --json FILE"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"efficiency file {path} does not exist", hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read efficiency file {path}: {exc}", hint) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"efficiency file {path} is not valid JSON ({exc.msg}, line {exc.lineno})", hint) from None
    if not isinstance(data, dict) or data.get("format") != EFFICIENCY_FORMAT:
        raise UsageError(f"efficiency file {path} is not {EFFICIENCY_FORMAT} output", hint)
    rows = []
    try:
        for raw in data["rows"]:
            loop, mine = _number(raw["own_loop_samples_per_s"]), _number(raw["mlpi_offline_samples_per_s"])
            if loop is None or mine is None or loop <= 0:
                raise ValueError(f"row {raw.get('backend')!r} has no positive throughput figures")
            rows.append(EfficiencyRow(str(raw["backend"]), loop, mine, raw.get("valid")))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"efficiency file {path} has a malformed row ({exc})", hint) from None
    if not rows:
        raise UsageError(f"efficiency file {path} has no measurements", hint)
    return Efficiency(str(data.get("model") or "?"), data.get("batch_size"), data.get("duration_s"), data.get("threads"), rows, path)
