"""``mlpi compare``: indexed runs side by side, with speedups against a baseline.

Selection: run ids (or unambiguous prefixes) pick runs; ``KEY=VALUE`` filters narrow them,
or narrow every indexed run when no id is given. Repeating a key means any of its values.

Rows: one per run and scenario, holding that scenario's performance figure, latency
percentiles and, when the run also measured accuracy, its accuracy.

Speedups are only ever computed between rows of the same model, scenario and metric: a
row whose model or scenario the baseline did not measure gets none, and a baseline that
shares no model and scenario with the compared runs is refused. For throughput the speedup
is value / baseline; for latency (lower is better) it is baseline / value; above 1 is better.
No speedup is computed from a result that is INVALID or did not finish (failed, interrupted,
running, abandoned), on either side, unless asked (``include_invalid``): the row's
``speedup_note`` says why it has none (``INVALID``, ``FAILED``, ``baseline INVALID``).

Rows of one model and scenario that differ in batch size or instances (as well as
precision, quick settings, dataset, model file or simulated timing) are warned about: a
speedup between them measures that difference too.

Repeats: rows of the same model, scenario, system, backend, device, precision, batch size
and instances (:func:`config_key`) are runs of one configuration. They are listed next to
each other, oldest first, each numbered (``repeat`` of ``repeats``); ``latest`` keeps only the
newest of each (its ``repeats`` then counts the runs it stands for).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlpi.core.contract.errors import UsageError, suggest
from mlpi.core.results.schema import TestResult
from mlpi.core.results.store import ABANDONED, RunFilter, RunRecord, Store, parse_date

#: ``KEY=VALUE`` filter keys, and the RunFilter list each fills.
FILTER_KEYS = {
    "model": "models", "scenario": "scenarios", "backend": "backends", "device": "devices",
    "system": "systems", "precision": "precisions", "since": "since", "until": "until",
}
#: Units where a smaller figure is the better one.
LOWER_IS_BETTER = frozenset({"ms"})
#: Run statuses of a run that has not recorded its end: its finished tests are shown with it.
UNFINISHED = ("running", ABANDONED)


@dataclass
class Row:
    """One run's figures for one scenario."""

    run: str
    started: str
    model: str
    scenario: str
    system: str
    backend: str
    device: str
    precision: str | None
    dataset: str
    model_file: str | None
    metric: str | None
    value: float | None
    unit: str | None
    latency_ms: dict[str, float]
    #: ``metric``, ``value``, ``unit``, ``higher_is_better``, ``target``, ``passed`` of the
    #: scenario's accuracy test, when the run measured one.
    accuracy: dict[str, Any] | None
    valid: bool | None
    status: str
    quick: bool
    simulated: bool = False
    speedup: float | None = None
    baseline: bool = False
    #: The batch size the scenario's test ran (the performance test's, else the accuracy
    #: test's); ``batch_unit`` is ``"rows"`` where a sample is a group of rows (DLRM).
    batch_size: int | None = None
    batch_unit: str | None = None
    #: The run's ``settings.instances``.
    instances: int | None = None
    #: This row's place among the runs of its configuration (:func:`config_key`), oldest
    #: first, and how many there are (with ``latest`` too: the kept row stands for them all).
    repeat: int = 1
    repeats: int = 1
    #: Why ``speedup`` is None though a baseline was given: ``INVALID``, ``FAILED``,
    #: ``baseline INVALID``...; with ``include_invalid``, what the speedup was computed from.
    speedup_note: str | None = None

    @property
    def group(self) -> tuple[str, str]:
        return (self.model, self.scenario)

    @property
    def usable(self) -> bool:
        """A finished result not judged INVALID: one a speedup may be computed from."""
        return self.status == "ok" and self.valid is not False

    @property
    def verdict(self) -> str:
        """What makes the row unusable for a speedup: ``INVALID``, or its status (``FAILED``)."""
        return "INVALID" if self.status == "ok" else str(self.status).upper()

    def batch_text(self) -> str:
        """``8``; ``700 rows`` where a sample is a group of rows; ``-`` when unknown."""
        if not self.batch_size:
            return "-"
        return f"{self.batch_size} rows" if self.batch_unit == "rows" else str(self.batch_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    baseline: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "rows": [r.to_json() for r in self.rows], "warnings": self.warnings}


def parse_selection(tokens: Iterable[str]) -> tuple[list[str], RunFilter]:
    """Split compare arguments into run references and one filter."""
    refs: list[str] = []
    selection = RunFilter()
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            refs.append(token)
            continue
        key, value = key.strip().lower(), value.strip()
        if key not in FILTER_KEYS:
            raise UsageError(f"unknown filter '{key}' in '{token}'",
                             suggest(key, list(FILTER_KEYS), listing=False) + "filters are " + ", ".join(FILTER_KEYS))
        if not value:
            raise UsageError(f"filter '{token}' has no value", f"write {key}=VALUE")
        if key in ("since", "until"):
            setattr(selection, key, parse_date(value, end_of_day=key == "until"))
        else:
            getattr(selection, FILTER_KEYS[key]).append(value)
    return refs, selection


def select_runs(store: Store, tokens: Iterable[str]) -> tuple[list[RunRecord], RunFilter]:
    """The runs the arguments name, oldest first; the filter also narrows scenarios later."""
    refs, selection = parse_selection(tokens)
    matching = store.runs(selection)
    if refs:
        named = {store.find(ref).identity for ref in refs}
        matching = [r for r in matching if r.identity in named]
    return matching, selection


def build_rows(runs: Iterable[RunRecord], scenarios: Iterable[str] = ()) -> list[Row]:
    """One row per run and scenario (limited to ``scenarios`` when given)."""
    wanted = {s.lower() for s in scenarios}
    rows = []
    for run in runs:
        by_scenario: dict[str, dict[str, TestResult]] = defaultdict(dict)
        for test in run.result.tests:
            by_scenario[test.scenario][test.mode] = test
        for scenario, tests in by_scenario.items():
            if wanted and scenario.lower() not in wanted:
                continue
            rows.append(_row(run, scenario, tests.get("performance"), tests.get("accuracy")))
    return rows


def config_key(row: Row) -> tuple[Any, ...]:
    """What makes rows runs of one configuration: two rows with the same key differ only by
    run (and whatever the warnings name: dataset, model file, quick settings)."""
    return (row.model, row.scenario, row.system, row.backend, row.device, row.precision, row.batch_size,
            row.batch_unit, row.instances)


def compare(store: Store, tokens: list[str], baseline: str | None = None, *, latest: bool = False,
            include_invalid: bool = False) -> Comparison:
    """Select, build rows, apply the baseline, and collect the warnings a reader needs."""
    runs, selection = select_runs(store, tokens)
    base_run: RunRecord | None = None
    base_filter: RunFilter | None = None
    if baseline:
        if "=" in baseline:
            base_filter = parse_selection(baseline.split(","))[1]
        else:
            base_run = store.find(baseline)
            if base_run.identity not in {r.identity for r in runs}:
                runs = sorted([*runs, base_run], key=lambda r: (r.started, r.name))
    if not runs:
        raise UsageError("no indexed run matches " + (" ".join(tokens) or "(nothing indexed yet)"),
                         _what_there_is(store))
    rows = build_rows(runs, selection.scenarios)
    rows = _number_repeats(rows, latest=latest, keep=base_run.name if base_run is not None else None)
    comparison = Comparison(rows, baseline=baseline)
    if baseline:
        comparison.warnings.extend(_apply_baseline(rows, baseline, base_run, base_filter, include_invalid=include_invalid))
    comparison.warnings.extend(_differences(rows))
    return comparison


_SCENARIO_ORDER = {"Offline": 0, "Server": 1, "SingleStream": 2, "MultiStream": 3}


def _row(run: RunRecord, scenario: str, perf: TestResult | None, acc: TestResult | None) -> Row:
    result = run.result
    count = result.dataset.count
    accuracy = acc.accuracy if acc else None
    valid: bool | None = None
    if perf is not None and perf.status == "ok":
        valid = perf.valid
    if acc is not None and acc.status == "ok" and acc.valid is not None:
        valid = acc.valid and valid is not False
    tests = [t for t in (perf, acc) if t is not None]
    sized = next((t for t in tests if t.batch_size), None)
    status = next((t.status for t in tests if t.status != "ok"), "ok")
    if status == "ok" and run.status in UNFINISHED:  # measured, in a run that never ended (yet)
        status = str(run.status)
    return Row(
        run=run.name, started=run.started, model=run.model, scenario=scenario, system=run.system,
        backend=run.backend, device=run.device,
        precision=(perf.precision if perf else None) or (acc.precision if acc else None) or run.precision,
        dataset=(result.dataset.name or "-") + (f" ({count} samples)" if count else ""),
        model_file=result.model.sha256,
        metric=perf.metric if perf else None,
        value=perf.value if perf else None,
        unit=perf.unit if perf else None,
        latency_ms=run.latency.get(perf.dir, {}) if perf else {},
        accuracy=None if accuracy is None else {
            "metric": accuracy.metric, "value": accuracy.value, "unit": accuracy.unit,
            "higher_is_better": accuracy.higher_is_better, "target": accuracy.target, "passed": accuracy.passed,
        },
        valid=valid, status=status,
        quick=any(t.quick for t in tests) or result.settings.quick,
        simulated=result.simulated or any(t.simulated for t in tests),
        batch_size=sized.batch_size if sized else None,
        batch_unit=_text(sized.extra.get("batch_unit")) if sized else None,
        instances=result.settings.instances,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number_repeats(rows: list[Row], *, latest: bool, keep: str | None) -> list[Row]:
    """Number the runs of each configuration (:func:`config_key`), oldest first, and order
    the rows: by model and scenario, then configuration (in the order each was first run),
    then start. With ``latest``, only the newest of each configuration stays (the named
    baseline run ``keep`` instead, when it is one of them)."""
    by_config: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r.started, r.run)):
        by_config[config_key(row)].append(row)
    kept = []
    for members in by_config.values():
        for index, row in enumerate(members, 1):
            row.repeat, row.repeats = index, len(members)
        kept.extend([next((r for r in members if r.run == keep), members[-1])] if latest else members)
    first = {key: (members[0].started, members[0].run) for key, members in by_config.items()}
    return sorted(kept, key=lambda r: (r.model, _SCENARIO_ORDER.get(r.scenario, 9), r.scenario,
                                       first[config_key(r)], r.started, r.run))


def _matches(row: Row, selection: RunFilter) -> bool:
    def any_of(values: list[str], actual: str | None) -> bool:
        return not values or (actual or "").lower() in {v.lower() for v in values}

    device_ok = not selection.devices or any(
        row.device.lower() == d.lower() or row.device.lower().startswith(d.lower() + ":") for d in selection.devices
    )
    system_ok = not selection.systems or any(s.lower() in row.system.lower() for s in selection.systems)
    return (any_of(selection.models, row.model) and any_of(selection.scenarios, row.scenario)
            and any_of(selection.backends, row.backend) and any_of(selection.precisions, row.precision)
            and device_ok and system_ok)


def _apply_baseline(rows: list[Row], spec: str, run: RunRecord | None, selection: RunFilter | None, *,
                    include_invalid: bool = False) -> list[str]:
    """Mark baseline rows and fill speedups; never across models, scenarios or metrics, and
    never from an INVALID or unfinished result unless ``include_invalid``."""
    warnings = []
    candidates = [r for r in rows if (r.run == run.name if run is not None else selection is not None and _matches(r, selection))]
    candidates = [r for r in candidates if r.value]
    if not candidates:
        raise UsageError(f"the baseline {spec} has no performance result among the compared rows",
                         "pick a baseline run that measured the compared model and scenario")
    by_group: dict[tuple[str, str, str | None], list[Row]] = defaultdict(list)
    for row in candidates:
        by_group[(row.model, row.scenario, row.metric)].append(row)
    bases = {}
    for key, found in by_group.items():
        newest = max(found, key=lambda r: (r.started, r.run))
        usable = [r for r in found if r.usable]
        bases[key] = newest if include_invalid or newest.usable or not usable else max(usable, key=lambda r: (r.started, r.run))
        if len(found) > 1:
            which = "newest" if bases[key] is newest else "newest valid one"
            warnings.append(f"{key[0]} {key[1]}: the baseline {spec} matches {len(found)} rows; using the {which} ({bases[key].run})")
    compared = False
    missing: set[tuple[str, str]] = set()
    unusable: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        base = bases.get((row.model, row.scenario, row.metric))
        if base is row:
            row.baseline, row.speedup = True, 1.0
            if not row.usable:
                row.speedup_note = row.verdict
        elif base is not None:
            compared = True
            if not row.usable:
                row.speedup_note = row.verdict
            elif not base.usable:
                row.speedup_note = f"baseline {base.verdict}"
            if row.speedup_note and not include_invalid:
                unusable[row.group].append(row.run)
            elif row.value:
                row.speedup = base.value / row.value if row.unit in LOWER_IS_BETTER else row.value / base.value  # type: ignore[operator]
        elif row.value:
            missing.add(row.group)
    if not compared and missing:
        measured = ", ".join(sorted({f"{m} {s}" for m, s, _ in bases}))
        wanted = ", ".join(sorted(f"{m} {s}" for m, s in missing))
        raise UsageError(
            f"the baseline {spec} measured {measured}; the compared runs measured {wanted}: "
            "speedups across different models or scenarios mean nothing",
            "pick a baseline of the same model and scenario, or compare without --baseline",
        )
    for model, scenario in sorted(missing):
        warnings.append(f"{model} {scenario}: the baseline {spec} did not measure it; no speedup shown")
    for (model, scenario), names in unusable.items():
        base = next(b for (m, s, _), b in bases.items() if (m, s) == (model, scenario))
        why = (f"the baseline ({base.run}) is {base.verdict}; no speedup computed against it" if not base.usable
               else f"{len(names)} row(s) are INVALID or unfinished ({', '.join(names)}); no speedup computed for them")
        warnings.append(f"{model} {scenario}: {why} (--include-invalid computes them anyway)")
    return warnings


def _differences(rows: list[Row]) -> list[str]:
    """What makes rows of one model and scenario less comparable than they look."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.group].append(row)
    warnings = []
    for (model, scenario), members in groups.items():
        if len(members) < 2:
            continue
        where = f"{model} {scenario}"
        precisions = sorted({r.precision or "unknown" for r in members})
        if len(precisions) > 1:
            warnings.append(f"{where}: rows differ in precision ({', '.join(precisions)})")
        batches = sorted({(r.batch_unit or "", r.batch_size) for r in members if r.batch_size}, key=lambda b: (b[0], b[1]))
        if len(batches) > 1:
            shown = ", ".join(f"{size} {unit}".strip() for unit, size in batches)
            warnings.append(f"{where}: rows differ in batch size ({shown}); a speedup between them measures batching too")
        instances = sorted({r.instances for r in members if r.instances is not None})
        if len(instances) > 1:
            shown = ", ".join(map(str, instances))
            warnings.append(f"{where}: rows differ in instances ({shown}); a speedup between them measures that too")
        if len({r.quick for r in members}) > 1:
            quick = ", ".join(r.run for r in members if r.quick)
            warnings.append(f"{where}: quick runs ({quick}) are compared with full-length ones; quick results are not valid for submission")
        if len({r.simulated for r in members}) > 1:
            simulated = ", ".join(r.run for r in members if r.simulated)
            warnings.append(f"{where}: simulated runs ({simulated}) take their timings from a device model, not hardware")
        datasets = sorted({r.dataset for r in members})
        if len(datasets) > 1:
            warnings.append(f"{where}: rows used different datasets ({', '.join(datasets)})")
        files = sorted({r.model_file or "unknown" for r in members})
        if len(files) > 1:
            warnings.append(f"{where}: rows ran different model files (sha256 {', '.join(f[:12] for f in files)})")
        metrics = sorted({r.metric for r in members if r.metric})
        if len(metrics) > 1:
            warnings.append(f"{where}: rows report different metrics ({', '.join(metrics)}); no speedup between them")
    return warnings


def _what_there_is(store: Store) -> str:
    models = store.distinct("model")
    if not models:
        return "run 'mlpi run' or 'mlpi results import DIR' first"
    return f"the store holds models {', '.join(models)} on backends {', '.join(store.distinct('backend'))}; see 'mlpi results list'"


__all__ = ["FILTER_KEYS", "Comparison", "Row", "build_rows", "compare", "config_key", "parse_selection", "select_runs"]
