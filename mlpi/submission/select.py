"""Which runs fill which (benchmark, scenario) of a submission, and what is missing.

For each benchmark and scenario the selection takes the best performance test that may go
into a submission (highest samples/s in Offline and Server, lowest latency in SingleStream
and MultiStream), then the accuracy test that *matches* it and, in the closed division, each
compliance audit the benchmark needs that matches it. Matching means the same
:class:`~mlpi.submission.runinfo.Setup`: the same model file (sha256) and model options, the
same backend, backend version and backend options, the same device and the same precision;
the accuracy test of the performance test's own run comes first, then the latest one.

A test that may not go into a submission is never chosen, and the reason is kept: an INVALID
performance run; a quick or ``--duration`` run (unless ``allow_short_runs``); an accuracy run
that did not cover the model's whole data set, or a performance run that loaded fewer samples
than the rules' performance sample count (unless ``allow_subset``); timings from a simulated
device; a performance run or audit made with another round's LoadGen seeds (its checker
refuses them); in the closed division, random weights, a model configured away from MLPerf's,
an accuracy below the target, or an audit that failed or was not verified. MLCommons' checker
does not catch an INVALID run, which is why mlpi looks at validity itself.

The rows are the scenarios the category requires (the model's ``Rules.required_scenarios``)
and, in the open division, the other scenarios asked for or found. A row is ``ok``,
``missing`` (nothing to put there) or ``refused`` (only tests that may not be used).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.rounds import SEED_NAMES
from mlpi.core.contract.rules import SCENARIOS
from mlpi.core.engine.scenario import DetailLog
from mlpi.core.results.schema import TestResult
from mlpi.core.results.store import RunRecord
from mlpi.submission.layout import round_key
from mlpi.submission.runinfo import (
    BenchmarkRules,
    Setup,
    official_model,
    open_folder,
    system_identity,
    weights_kind,
)

#: Scenarios whose figure is a rate (higher is better); the others report a latency.
_RATE_SCENARIOS = ("Offline", "Server")
_DETAIL = "mlperf_log_detail.txt"


@dataclass(frozen=True)
class Request:
    """What ``mlpi submission build`` was asked for."""

    division: str
    category: str
    round: str
    scenarios: tuple[str, ...] = ()
    allow_short_runs: bool = False
    allow_subset: bool = False
    #: The round's LoadGen seeds (:data:`mlpi.core.contract.rounds.SEED_NAMES` order); None: not compared.
    seeds: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class TestPick:
    """One test of one run: a performance or accuracy test, or (``audit`` set) a compliance
    audit, whose folder is ``folder``."""

    __test__ = False  # not a pytest test class

    record: RunRecord
    test: TestResult
    setup: Setup
    audit: str | None = None
    reference_run: str | None = None

    @property
    def run_id(self) -> str:
        return self.record.name

    @property
    def folder(self) -> Path:
        return self.record.dir / self.test.dir

    def label(self) -> str:
        kind = self.audit or self.test.mode
        return f"run {self.run_id} {self.test.scenario} {kind}"


@dataclass
class Row:
    """One (benchmark, scenario) of the tree."""

    benchmark: str
    folder: str
    scenario: str
    rules: BenchmarkRules
    performance: TestPick | None = None
    accuracy: TestPick | None = None
    audits: dict[str, TestPick | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.problems:
            return "refused"
        if self.performance is None or self.accuracy is None or any(a is None for a in self.audits.values()):
            return "missing"
        return "ok"

    def missing(self) -> list[str]:
        """What the row still lacks, in words."""
        lacking = []
        if self.performance is None:
            lacking.append("a performance run")
        if self.accuracy is None:
            lacking.append("an accuracy run")
        lacking.extend(f"audit {name}" for name, pick in self.audits.items() if pick is None)
        return lacking

    def picks(self) -> list[TestPick]:
        return [p for p in (self.performance, self.accuracy, *self.audits.values()) if p is not None]


@dataclass
class Selection:
    """The rows, and what keeps the build from going ahead (``problems``: refusals that
    concern no single row, such as runs of several machines)."""

    request: Request
    rows: list[Row]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.rows) and not self.problems and all(row.status == "ok" for row in self.rows)

    def records(self) -> list[RunRecord]:
        seen: dict[str, RunRecord] = {}
        for row in self.rows:
            for pick in row.picks():
                seen.setdefault(pick.run_id, pick.record)
        return list(seen.values())


def canonical_scenario(name: str) -> str | None:
    """``singlestream`` -> ``SingleStream``; None for a name that is no scenario."""
    return next((s for s in SCENARIOS if s.lower() == name.strip().lower()), None)


def select(records: Sequence[RunRecord], request: Request, *, named: Iterable[str] = ()) -> Selection:
    """The rows of the tree from ``records`` (the runs that match the user's selection);
    ``named`` are the runs the user named with ``--run``: a problem with one of them is a
    refusal, never a quiet skip."""
    named = set(named)
    selection = Selection(request, [])
    by_benchmark: dict[str, tuple[BenchmarkRules, list[RunRecord]]] = {}
    other_rounds_only = _other_rounds_only(records, request.round)
    for record in records:
        rules = BenchmarkRules.of(record.result)
        if rules is None or rules.benchmark is None:
            why = (f"run {record.name}: model {record.result.model.name} is not an MLPerf benchmark "
                   "(a model given only as a file has no MLPerf rules)")
            (selection.problems if record.name in named else selection.notes).append(why)
            continue
        problem = _round_problem(rules, request.round)
        if problem:
            (selection.problems if record.name in named or other_rounds_only else
             selection.notes).append(f"run {record.name}: {problem}")
            continue
        folder = _folder(rules, record, request.division)
        by_benchmark.setdefault(folder, (rules, []))[1].append(record)
    for folder, (rules, runs) in sorted(by_benchmark.items()):
        selection.rows.extend(_rows(folder, rules, runs, request, selection.notes))
    if not selection.rows and not selection.problems:
        selection.problems.append("no run in the results store fits the selection" + (
            f" ({'; '.join(selection.notes)})" if selection.notes else ""))
        selection.notes.clear()
    selection.problems.extend(_machine_problems(selection))
    return selection


def _round_problem(rules: BenchmarkRules, round_name: str) -> str | None:
    """Why a tree of ``round_name`` cannot hold this benchmark: mlpi holds the rules of one
    round per model (the current one, or a retired benchmark's last)."""
    if rules.round == round_name:
        return None
    if round_key(rules.round) < round_key(round_name) or rules.retired:
        return (f"{rules.benchmark} is not a benchmark of {round_name}: its last round is {rules.round} "
                f"(a tree of its own, --version {rules.round}, holds runs made with {rules.round}'s LoadGen seeds; "
                f"check it with the checker of {rules.round})")
    return (f"mlpi holds the {rules.round} rules of {rules.benchmark}, not those of {round_name} "
            f"(build with --version {rules.round})")


def _other_rounds_only(records: Sequence[RunRecord], round_name: str) -> bool:
    """Whether no run at all is of ``round_name``: then the round refusals are the problem,
    not notes about runs left out."""
    for record in records:
        rules = BenchmarkRules.of(record.result)
        if rules is not None and rules.round == round_name:
            return False
    return True


def _folder(rules: BenchmarkRules, record: RunRecord, division: str) -> str:
    """The benchmark's folder: MLPerf's name, except in the open division for a model file
    that is not MLPerf's (named after the file, mapped back in ``model_mapping.json``)."""
    assert rules.benchmark is not None
    if division == "open" and weights_kind(record.result) != "official":
        return open_folder(rules.benchmark, record.result)
    return rules.benchmark


def _rows(folder: str, rules: BenchmarkRules, runs: list[RunRecord], request: Request, notes: list[str]) -> list[Row]:
    required = tuple(rules.required_scenarios.get(request.category, ()))
    found = {t.scenario for r in runs for t in r.result.tests}
    if request.division == "closed":
        scenarios = list(required)  # the checker refuses a closed tree with another scenario
        for extra in sorted((set(request.scenarios) or found) - set(required)):
            notes.append(f"{folder} {extra}: not placed; a closed {request.category} submission of "
                         f"{rules.benchmark} holds {', '.join(required) or 'no scenario'}")
    else:
        scenarios = list(request.scenarios) or [s for s in SCENARIOS if s in found]
        for absent in [s for s in required if s not in scenarios]:
            notes.append(f"{folder} {absent}: not in the tree (the open division does not need it; a closed "
                         f"{request.category} submission of {rules.benchmark} would)")
    rows = []
    for scenario in [s for s in SCENARIOS if s in scenarios]:
        row = Row(rules.benchmark or folder, folder, scenario, rules)
        if request.division == "closed":
            row.audits = dict.fromkeys(rules.audits)
        _fill(row, runs, request)
        rows.append(row)
    return rows


def _fill(row: Row, runs: list[RunRecord], request: Request) -> None:
    perf = [TestPick(r, t, Setup.of(r.result, t.precision)) for r in runs for t in r.result.tests
            if t.scenario == row.scenario and t.mode == "performance"]
    usable = []
    for pick in perf:
        reasons = performance_refusals(pick, row.rules, request)
        if reasons:
            row.unused.append(f"{pick.label()}: {'; '.join(reasons)}")
        else:
            usable.append(pick)
    if not usable:
        if perf:
            row.problems.append(f"no performance run can be used ({len(perf)} found, listed below)")
        return
    rate = row.scenario in _RATE_SCENARIOS
    ranked = sorted(usable, key=lambda p: (p.test.value is None, (p.test.value or 0.0) * (-1 if rate else 1)))
    # the best run that has a matching accuracy run (and audits) wins; else the best alone
    for candidate in ranked:
        accuracy = _match_accuracy(candidate, runs, row, request)
        audits = {name: _match_audit(candidate, runs, row, name, request) for name in row.audits}
        if accuracy is not None and all(a is not None for a in audits.values()):
            row.performance, row.accuracy, row.audits = candidate, accuracy, audits
            return
    best = ranked[0]
    row.performance = best
    row.accuracy = _match_accuracy(best, runs, row, request, note=True)
    row.audits = {name: _match_audit(best, runs, row, name, request, note=True) for name in row.audits}


def performance_refusals(pick: TestPick, rules: BenchmarkRules, request: Request) -> list[str]:
    """Why a performance test may not go into this submission (empty: it may)."""
    test, result = pick.test, pick.record.result
    if test.status != "ok":
        return [f"did not finish ({test.status})"]
    reasons = []
    if test.valid is not True:
        why = ", ".join(test.invalid_reasons) or "LoadGen judged it INVALID"
        reasons.append(f"INVALID ({why})")
    if (test.quick or result.quick) and not request.allow_short_runs:
        reasons.append("a quick or shortened run (--quick or --duration): not MLPerf's durations; "
                       "--allow-short-runs builds a development tree from it")
    if test.simulated or result.simulated:
        reasons.append("its timings come from a simulated device")
    reasons.extend(conf_refusals(test))
    reasons.extend(_closed_model_refusals(pick, request))
    log = DetailLog.read(pick.folder / _DETAIL)
    if not log.values:
        reasons.append(f"its LoadGen log {pick.folder / _DETAIL} is missing")
        return reasons
    loaded = log.values.get("effective_performance_sample_count")
    if (rules.performance_sample_count and isinstance(loaded, int) and loaded < rules.performance_sample_count
            and not request.allow_subset):
        reasons.append(f"it kept {loaded} samples loaded; {rules.benchmark} needs a performance sample count of "
                       f"{rules.performance_sample_count} (a data set of at least that many samples); "
                       "--allow-subset builds a development tree from it")
    reasons.extend(seed_refusals(log, request))
    per_query = log.values.get("effective_samples_per_query")
    if (request.division == "closed" and test.scenario == "Offline" and rules.offline_min_samples
            and isinstance(per_query, int) and per_query < rules.offline_min_samples and not request.allow_short_runs):
        reasons.append(f"its Offline query held {per_query} samples; the closed division needs at least "
                       f"{rules.offline_min_samples}")
    return reasons


def seed_refusals(log: DetailLog, request: Request) -> list[str]:
    """A run whose LoadGen seeds are not the round's: its checker refuses it."""
    if request.seeds is None:
        return []
    for name, wanted in zip(SEED_NAMES, request.seeds):
        used = log.values.get(f"effective_{name}")
        if isinstance(used, int) and used != wanted:
            return [(f"LoadGen ran it with other random seeds than {request.round}'s ({name} {used}, not {wanted}), "
                    f"which the {request.round} checker refuses: mlpi runs a model with the seeds of its rules' "
                    f"round (run it with --mlperf-conf and {request.round}'s mlperf.conf for this tree)")]
    return []


def accuracy_refusals(pick: TestPick, rules: BenchmarkRules, request: Request) -> list[str]:
    """Why an accuracy test may not go into this submission (empty: it may)."""
    test = pick.test
    if test.status != "ok":
        return [f"did not finish ({test.status})"]
    if test.accuracy is None:
        return ["it was not scored (no ground truth)"]
    reasons = [*conf_refusals(test), *_closed_model_refusals(pick, request)]
    for name in ("accuracy.txt", "mlperf_log_accuracy.json", _DETAIL):
        if not (pick.folder / name).is_file():
            reasons.append(f"{pick.folder / name} is missing")
    if reasons:
        return reasons
    log = DetailLog.read(pick.folder / _DETAIL)
    covered = log.values.get("effective_accuracy_sample_count") or log.values.get("qsl_reported_total_count")
    if rules.dataset_size and isinstance(covered, int) and covered < rules.dataset_size and not request.allow_subset:
        reasons.append(f"it covered {covered} of the {rules.dataset_size} samples of {rules.benchmark}'s data set; "
                       "an accuracy run must cover them all (--allow-subset builds a development tree from it)")
    if request.division == "closed" and test.accuracy.passed is False:
        reasons.append(test.accuracy.failure() or "its accuracy misses the target")
    return reasons


def conf_refusals(test: TestResult) -> list[str]:
    """A test whose ``--user-conf`` or ``--mlperf-conf`` loosened an MLPerf rule (the runner
    recorded where): the checker catches some of these, never all, and never first."""
    departed = test.extra.get("conf_departures")
    if not isinstance(departed, list) or not departed:
        return []
    return [f"its LoadGen settings depart from the rules ({'; '.join(str(d) for d in departed)})"]


def audit_refusals(pick: TestPick, request: Request) -> list[str]:
    """Why a compliance audit may not go into this submission (empty: it may)."""
    entry = pick.test
    if entry.status != "ok":
        return [f"did not finish ({entry.status})"]
    reasons = []
    passed = entry.extra.get("passed")
    if passed is not True:
        verification = entry.extra.get("verification")
        failed = [key.removesuffix("_passed") for key, value in verification.items()
                  if key.endswith("_passed") and value is False] if isinstance(verification, dict) else []
        reasons.append(("it failed its verification" + (f" ({', '.join(failed)})" if failed else ""))
                       if passed is False else "it was not verified")
    if entry.quick and not request.allow_short_runs:
        reasons.append("a quick or shortened run (--quick or --duration)")
    needed = ["verify_performance.txt", "performance/run_1/mlperf_log_summary.txt", "performance/run_1/mlperf_log_detail.txt"]
    if pick.audit == "TEST01":
        needed.append("verify_accuracy.txt")
    for name in needed:
        if not (pick.folder / name).is_file():
            reasons.append(f"{pick.folder / name} is missing")
    links = [p for p in pick.folder.rglob("*") if p.is_symlink()] if pick.folder.is_dir() else []
    if links:
        reasons.append(f"{links[0]} is a symbolic link: the tree takes the audit's own files only")
    if not reasons:
        reasons.extend(seed_refusals(DetailLog.read(pick.folder / "performance" / "run_1" / _DETAIL), request))
    return reasons


def _closed_model_refusals(pick: TestPick, request: Request) -> list[str]:
    if request.division != "closed":
        return []
    result = pick.record.result
    reasons = []
    if weights_kind(result) == "random":
        reasons.append("random weights (the closed division measures the model's own weights)")
    if not official_model(result):
        reasons.append(f"not the official model ({result.model.note or 'configured away from MLPerf'})")
    derived = result.model.extra.get("precision")
    if isinstance(derived, dict) and derived.get("closed_division") is False:
        reasons.append(f"its {derived.get('requested')} precision: {derived.get('closed_reason')}")
    return reasons


def _match_accuracy(perf: TestPick, runs: list[RunRecord], row: Row, request: Request,
                    note: bool = False) -> TestPick | None:
    candidates = [TestPick(r, t, Setup.of(r.result, t.precision)) for r in runs for t in r.result.tests
                  if t.scenario == row.scenario and t.mode == "accuracy"]
    matching = [c for c in candidates if c.setup == perf.setup]
    if note and candidates and not matching:
        row.unused.append(f"accuracy runs of {row.scenario} found, none with the performance run's setup "
                          f"({perf.setup.describe()})")
    usable = _without_refused(matching, lambda pick: accuracy_refusals(pick, row.rules, request), row, note)
    usable.sort(key=lambda p: (p.run_id == perf.run_id, p.record.started), reverse=True)
    return usable[0] if usable else None


def _without_refused(picks: list[TestPick], refusals: Any, row: Row, note: bool) -> list[TestPick]:
    """The picks ``refusals`` finds nothing against; with ``note``, the others' reasons go to
    ``row.unused``."""
    usable = []
    for pick in picks:
        reasons = refusals(pick)
        if reasons:
            if note:
                row.unused.append(f"{pick.label()}: {'; '.join(reasons)}")
        else:
            usable.append(pick)
    return usable


def _match_audit(perf: TestPick, runs: list[RunRecord], row: Row, name: str, request: Request,
                 note: bool = False) -> TestPick | None:
    candidates = []
    for record in runs:
        for entry in record.result.extra.get("audits") or []:
            pick = _audit_pick(record, entry)
            if pick is not None and pick.audit == name and pick.test.scenario == row.scenario:
                candidates.append(pick)
    matching = [c for c in candidates if c.setup == perf.setup]
    usable = _without_refused(matching, lambda pick: audit_refusals(pick, request), row, note)
    usable.sort(key=lambda p: (p.reference_run == perf.run_id, p.record.started), reverse=True)
    return usable[0] if usable else None


def _audit_pick(record: RunRecord, entry: Any) -> TestPick | None:
    """An audit recorded in result.json's ``audits`` (an entry it cannot read is skipped)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("test"), str):
        return None
    try:
        test = TestResult.from_json(entry, str(record.dir / "result.json"), "audits[]")
    except Exception:  # noqa: BLE001 - a damaged entry is no audit to use
        return None
    reference = entry.get("reference_run")
    return TestPick(record, test, Setup.of(record.result, test.precision), audit=entry["test"],
                    reference_run=reference if isinstance(reference, str) else None)


def _machine_problems(selection: Selection) -> list[str]:
    """A system description describes one machine: runs of several cannot share it."""
    machines: dict[tuple[str, str, str], list[str]] = {}
    for record in selection.records():
        machines.setdefault(system_identity(record.result), []).append(record.name)
    if len(machines) <= 1:
        return []
    described = "; ".join(f"{', '.join(names)} on {host or '?'} ({cpu or '?'}{', ' + acc if acc else ''})"
                          for (host, cpu, acc), names in machines.items())
    return [(f"the chosen runs come from {len(machines)} machines ({described}); one system description "
            "describes one machine: build a tree per machine with --run")]
