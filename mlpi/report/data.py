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
    submission_valid: bool
    simulated: bool
    started: str | None
    tests: list[ScenarioResult]
    label: str = ""
    #: What tells two runs of one backend/device apart: batch size (as run) and instances.
    setting: str = ""

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
        )
        if test.mode == "performance" and test.status == "ok" and test.scenario in LATENCY_SCENARIOS:
            _read_latency(test, run_dir, raw)
        tests.append(test)
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
        submission_valid=result.submission_valid,
        simulated=result.simulated or any(t.simulated for t in tests),
        started=result.started,
        tests=tests,
        setting=_setting(result),
    )


def _setting(result: RunResult) -> str:
    batches = sorted({t.batch_size for t in result.tests if t.batch_size is not None})
    batch = result.settings.batch_size or (batches[-1] if batches else None)
    instances = result.settings.instances or 1
    return " ".join(part for part in (f"bs{batch}" if batch else "", f"x{instances}" if instances != 1 else "") if part)


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
    """``backend/device``; where runs of one model share that, their settings (``bs8 x2``)
    are added, then ``#1``, ``#2`` in run order (the runs table maps each label to its run id)."""
    counts: dict[tuple[str, str], int] = {}
    for run in runs:
        key = (run.model, run.base_label())
        counts[key] = counts.get(key, 0) + 1
    # Runs that share a backend/device are told apart by their settings where those differ,
    # and by their order otherwise.
    for run in runs:
        run.label = run.base_label() if counts[(run.model, run.base_label())] == 1 else f"{run.base_label()} {run.setting}".strip()
    counts = {}
    for run in runs:
        counts[(run.model, run.label)] = counts.get((run.model, run.label), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for run in runs:
        key = (run.model, run.label)
        seen[key] = seen.get(key, 0) + 1
        if counts[key] > 1:
            run.label = f"{run.label} #{seen[key]}"


def format_ms(value: float) -> str:
    """A latency in ms: three decimals, or three significant digits below 0.1 ms."""
    return f"{value:,.3f}" if value >= 0.1 else f"{value:.3g}"


def validity(test: ScenarioResult) -> str:
    """``VALID``/``INVALID``/status, with the markers a reader must not miss."""
    text = test.status if test.status != "ok" else ("VALID" if test.valid else "INVALID")
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
