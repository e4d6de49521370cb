"""``mlpi tune``: find, for a model x backend x device, the settings that give each scenario's
best VALID result, confirm them at full length, and write them as a tuned profile.

What it does, in order (each trial an ordinary run, see :mod:`mlpi.tune.trials`):

1. **measure** (when Offline or Server is tuned): one short Offline trial per batch size x
   instances of the grid. LoadGen's samples/s is the Offline figure; the test's calibration
   also gives the Server target ``mlpi run`` would start from, where the Server search starts.
2. **search** (Server): per grid cell, the highest VALID target QPS by bracket and bisection
   (:mod:`mlpi.tune.search`; an INVALID target is run twice before it counts), every trial at
   least ``trial_duration_s`` long and long enough for :data:`SERVER_TRIAL_MIN_QUERIES`
   queries (LoadGen's early stopping judges the 99th percentile on fewer only when none is
   late).
3. **latency** (SingleStream, MultiStream): one short trial; the expected latency is the
   median LoadGen measured (it generates queries for twice the min duration at the expected
   latency, so a full-length run up to twice as fast still lasts the min duration).
4. **confirm**: the best settings of each scenario in ONE run at full-length settings (the
   official duration, or ``confirm_duration_s`` for development: the profile then says it is
   not official). A confirming run that LoadGen judges INVALID is tried once more, lower.

Offline's expected QPS is :data:`OFFLINE_EXPECTED_FRACTION` of the best measured throughput:
LoadGen issues 1.1 x expected QPS x min duration samples (``kSlack`` in MLCommons'
``loadgen/test_settings_internal.cc``), so the run lasts 1.1 x 0.95 = 1.045 x the min duration
at the measured speed, and stays VALID while the full-length run is up to 4.5% faster than the
trial. (Exactly 10% below would issue 0.99 x: INVALID at the measured speed.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi import __version__
from mlpi.core.contract.errors import MlpiError, UsageError
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.scenario_settings import ScenarioSettings
from mlpi.tune.profile import ProfileEntry, TunedProfile
from mlpi.tune.search import HighestValidSearch, rounded
from mlpi.tune.state import TrialRecord, TuneState, now
from mlpi.tune.trials import TrialRunner, TrialSpec

#: A Server trial lasts long enough for this many queries at its target (at 1% late, early
#: stopping's 99th-percentile estimate needs a few hundred queries to be met at all, and is
#: closer to the true percentile the more there are).
SERVER_TRIAL_MIN_QUERIES = 2048
#: Offline's expected QPS, as a fraction of the best measured throughput (see above).
OFFLINE_EXPECTED_FRACTION = 0.95
#: Where the Server search starts when the measuring trial's calibration gave no Server
#: target: this fraction of its measured throughput.
SERVER_START_FRACTION = 0.4
#: A confirming run LoadGen judges INVALID is run at most this many times in all.
CONFIRM_ATTEMPTS = 2
#: The second Server confirmation runs this many tolerances lower than the first.
SERVER_CONFIRM_BACKOFF = 2.0
DEFAULT_TOLERANCE = 0.05
DEFAULT_TRIAL_DURATION_S = 10.0
#: What LoadGen names a run that ended too soon (the expectation was too low or too long).
_TOO_SHORT = "min duration not satisfied"


@dataclass(frozen=True)
class TuneSettings:
    """What the search covers and how finely: scenarios, the grid, the tolerance, durations."""

    scenarios: list[str]
    batch_sizes: list[int | None] = field(default_factory=lambda: [None])
    instances: list[int] = field(default_factory=lambda: [1])
    tolerance: float = DEFAULT_TOLERANCE
    trial_duration_s: float = DEFAULT_TRIAL_DURATION_S
    confirm_duration_s: float | None = None
    #: The Server target is the highest VALID one found, lowered by this fraction: room for
    #: run-to-run noise (a run right at the edge is VALID or not by chance).
    margin: float = 0.0

    @property
    def cells(self) -> list[tuple[int | None, int]]:
        return list(itertools.product(self.batch_sizes, self.instances))

    def to_json(self) -> dict[str, Any]:
        return {"scenarios": self.scenarios, "batch_sizes": self.batch_sizes, "instances": self.instances,
                "tolerance": self.tolerance, "trial_duration_s": self.trial_duration_s,
                "confirm_duration_s": self.confirm_duration_s, "margin": self.margin}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TuneSettings:
        return cls(**data)


@dataclass
class TuneOutcome:
    """What a tune found: the profile (written at ``profile_path``) and what it could not do."""

    profile: TunedProfile
    profile_path: Path
    #: Per scenario that has no confirmed VALID settings, why.
    problems: dict[str, str]
    trials_run: int
    trials_recorded: int


class Tuner:
    """Runs the tune's phases in order through a :class:`TrialRunner`."""

    def __init__(self, settings: TuneSettings, plans: dict[tuple[int | None, int], Plan]) -> None:
        self.settings = settings
        self.plans = plans
        self.runner: TrialRunner | None = None
        self.searches: dict[tuple[int | None, int], HighestValidSearch] = {}
        self._phases: list[tuple[str, Callable[[], int]]] = []

    # -- how many trials: "trial k of ~n" --------------------------------------------------

    def plan_phases(self) -> None:
        """The phases in order, each with a guess of its trials (refined as the search goes)."""
        s = self.settings
        throughput = bool({"Offline", "Server"} & set(s.scenarios))
        phases: list[tuple[str, Callable[[], int]]] = []
        if throughput:
            phases += [(f"measure {cell}", lambda: 1) for cell in s.cells]
        if "Server" in s.scenarios:
            for cell in s.cells:
                phases.append((f"search {cell}", lambda cell=cell: self._search_left(cell)))
        phases += [(f"latency {sc}", lambda: 1) for sc in s.scenarios if sc in ("SingleStream", "MultiStream")]
        phases += [(f"confirm {sc}", lambda: 1) for sc in s.scenarios]
        self._phases = phases

    def _search_left(self, cell: tuple[int | None, int]) -> int:
        search = self.searches.get(cell)
        return search.remaining() if search is not None else HighestValidSearch.expected_trials(self.settings.tolerance)

    def _later(self, phase: str, left_here: int = 0) -> int:
        """Trials guessed to come after the one about to run: ``left_here`` more in ``phase``,
        then every later phase's."""
        names = [name for name, _ in self._phases]
        at = names.index(phase) if phase in names else len(names)
        return left_here + sum(guess() for _, guess in self._phases[at + 1:])

    def _run(self, spec: TrialSpec, phase: str, left_here: int = 0) -> TrialRecord:
        assert self.runner is not None
        return self.runner.run(spec, self._later(phase, left_here))

    # -- the phases ----------------------------------------------------------------------

    def run(self, runner: TrialRunner) -> tuple[dict[str, ProfileEntry], dict[str, str]]:
        """Every phase through ``runner``: each tuned scenario's entry (confirmed or not), and
        per scenario without confirmed VALID settings, why."""
        self.runner = runner
        self.plan_phases()
        s = self.settings
        entries: dict[str, ProfileEntry] = {}
        problems: dict[str, str] = {}
        measured: dict[tuple[int | None, int], TrialRecord] = {}
        if {"Offline", "Server"} & set(s.scenarios):
            for cell in s.cells:
                measured[cell] = self._run(TrialSpec("measure", "Offline", *cell, s.trial_duration_s), f"measure {cell}")
        drafts: dict[str, tuple[ScenarioSettings, dict[str, Any]]] = {}
        if "Server" in s.scenarios:
            for cell in s.cells:
                self._search(cell, measured[cell])
            choice = self._server_choice()
            if isinstance(choice, str):
                problems["Server"] = choice
            else:
                drafts["Server"] = choice
        if "Offline" in s.scenarios:
            drafts["Offline"] = self._offline_choice(measured)
        for scenario in s.scenarios:
            if scenario in ("SingleStream", "MultiStream"):
                drafts[scenario] = self._latency(scenario)
        for scenario in s.scenarios:
            if scenario in drafts:
                entry = self._confirm(scenario, *drafts[scenario])
                entries[scenario] = entry
                if not entry.confirmed:
                    problems[scenario] = (f"the confirming run was INVALID ({'; '.join(entry.result.get('reasons') or []) or 'see its run'})")
        return entries, problems

    def _search(self, cell: tuple[int | None, int], measure: TrialRecord) -> None:
        s = self.settings
        start = measure.measured.get("server_target_qps") or SERVER_START_FRACTION * float(measure.value or 0)
        if not start or start <= 0:
            raise MlpiError(f"the measuring trial of batch {cell[0] or 'auto'} x {cell[1]} measured no throughput "
                            "to start the Server search from", f"see its run {measure.run_dir}")
        search = self.searches[cell] = HighestValidSearch(start, s.tolerance)
        while (target := search.next_target()) is not None:
            duration = max(s.trial_duration_s, math.ceil(SERVER_TRIAL_MIN_QUERIES / target * 10) / 10)
            spec = TrialSpec("search", "Server", *cell, duration, target=target, attempt=2 if search.rechecking else 1)
            record = self._run(spec, f"search {cell}", max(0, search.remaining() - 1))
            search.record(target, record.valid is True)
            if not record.valid and _beyond_the_bound(record):
                search.stop(f"at {target:,.4g} QPS, with the device busy {record.measured['busy_fraction']:.0%} of the "
                            f"time, even the fastest query took {record.measured['min_latency_ms']:,.4g} ms, above the "
                            f"{record.measured['latency_bound_ms']:g} ms latency bound")

    def _server_choice(self) -> tuple[ScenarioSettings, dict[str, Any]] | str:
        found = {cell: search for cell, search in self.searches.items() if search.lo is not None}
        if not found:
            stopped = next((search.stopped for search in self.searches.values() if search.stopped), None)
            if stopped:
                return f"no Server target was VALID: {stopped} (try a smaller batch size, or a faster backend or device)"
            lowest = min(t for search in self.searches.values() for t, _ in search.tried)
            return (f"no Server target was VALID, down to {lowest:,.4g} QPS: the model's latency bound is beyond this "
                    "system at these settings (try a smaller batch size, or longer trials with --trial-duration)")
        cell, search = max(found.items(), key=lambda item: item[1].lo or 0)
        base = self.plans[cell]
        target = search.lo if not self.settings.margin else rounded(float(search.lo or 0) * (1 - self.settings.margin))
        settings = ScenarioSettings(batch_size=cell[0], instances=cell[1], target_qps=target,
                                    batch_timeout_ms=base.batch_timeout_ms)
        how = {
            "method": "bracket (x2 steps) then geometric bisection of the Server target QPS, each trial VALID or "
                      "INVALID as LoadGen judged it, an INVALID target run twice" + (f"; the target {self.settings.margin:g} below the highest VALID"
                                                         if self.settings.margin else ""),
            "tolerance": self.settings.tolerance, "margin": self.settings.margin,
            "highest_valid_trial_qps": search.lo, "lowest_invalid_trial_qps": search.hi,
            "upper_bound_found": search.hi is not None,
            "per_cell": {_cell_text(c): {"highest_valid_qps": sr.lo, "lowest_invalid_qps": sr.hi, "trials": len(sr.tried)}
                         for c, sr in self.searches.items()},
        }
        return settings, how

    def _offline_choice(self, measured: dict[tuple[int | None, int], TrialRecord]) -> tuple[ScenarioSettings, dict[str, Any]]:
        usable = {cell: r for cell, r in measured.items() if isinstance(r.value, (int, float)) and r.value > 0}
        if not usable:
            raise MlpiError("no Offline trial measured a throughput", "see the trials' runs listed above")
        cell, record = max(usable.items(), key=lambda item: float(item[1].value or 0))
        expected = rounded(float(record.value or 0) * OFFLINE_EXPECTED_FRACTION)
        settings = ScenarioSettings(batch_size=cell[0], instances=cell[1], expected_qps=expected)
        how = {
            "method": f"the best Offline throughput of the grid, expected QPS {OFFLINE_EXPECTED_FRACTION:g} x it "
                      "(LoadGen issues 1.1 x expected QPS x min duration samples)",
            "measured_samples_per_s": record.value,
            "per_cell": {_cell_text(c): r.value for c, r in measured.items()},
        }
        return settings, how

    def _latency(self, scenario: str) -> tuple[ScenarioSettings, dict[str, Any]]:
        cell = self.settings.cells[0]
        record = self._run(TrialSpec("latency", scenario, *cell, self.settings.trial_duration_s), f"latency {scenario}")
        median = record.measured.get("p50_latency_ms")
        if not isinstance(median, (int, float)) or median <= 0:
            raise MlpiError(f"the {scenario} trial measured no latency", f"see its run {record.run_dir}")
        settings = ScenarioSettings(batch_size=cell[0], instances=cell[1], expected_latency_ms=rounded(median))
        per = "query" if scenario == "MultiStream" else "sample"
        how = {"method": f"the median latency per {per} LoadGen measured in a trial (LoadGen generates queries for "
                         "twice the min duration at the expected latency, so a run up to twice as fast still lasts "
                         "the min duration)",
               "measured_p50_latency_ms": median, "measured_mean_latency_ms": record.measured.get("mean_latency_ms")}
        return settings, how

    def _confirm(self, scenario: str, settings: ScenarioSettings, how: dict[str, Any]) -> ProfileEntry:
        s = self.settings
        cell = (settings.batch_size, settings.instances or 1)
        attempts: list[TrialRecord] = []
        current = settings
        for attempt in range(1, CONFIRM_ATTEMPTS + 1):
            spec = TrialSpec("confirm", scenario, *cell, s.confirm_duration_s, settings=current, attempt=attempt)
            record = self._run(spec, f"confirm {scenario}")
            attempts.append(record)
            if record.valid or attempt == CONFIRM_ATTEMPTS:
                break
            lower = self._lower(scenario, current, record)
            if lower is None:
                break
            current = lower
        final = attempts[-1]
        base = self.plans[cell]
        trials = [_trial_summary(t) for t in self._trials_of(scenario, cell)]
        found_by = {
            **how, "trial_duration_s": s.trial_duration_s, "trials": trials,
            "confirm": {"run_id": final.run_id, "run_dir": final.run_dir, "duration_s": s.confirm_duration_s,
                        "full_length": s.confirm_duration_s is None, "valid": final.valid, "attempts": len(attempts),
                        "earlier_runs": [a.run_id for a in attempts[:-1]]},
        }
        result = {"metric": final.metric, "value": final.value, "unit": final.unit, "valid": final.valid,
                  "reasons": final.reasons}
        return ProfileEntry(scenario, current, dict(base.backend_options), result, final.valid is True, found_by)

    def _lower(self, scenario: str, settings: ScenarioSettings, record: TrialRecord) -> ScenarioSettings | None:
        """The settings to confirm next after an INVALID confirming run; None when lowering
        the expectation cannot help."""
        import dataclasses

        too_short = any(_TOO_SHORT in reason for reason in record.reasons)
        if scenario == "Server" and settings.target_qps is not None:
            factor = 1 - SERVER_CONFIRM_BACKOFF * self.settings.tolerance
            return dataclasses.replace(settings, target_qps=rounded(settings.target_qps * factor))
        if scenario == "Offline" and too_short and isinstance(record.value, (int, float)) and record.value > 0:
            return dataclasses.replace(settings, expected_qps=rounded(record.value * OFFLINE_EXPECTED_FRACTION))
        median = record.measured.get("p50_latency_ms")
        if scenario in ("SingleStream", "MultiStream") and too_short and isinstance(median, (int, float)) and median > 0:
            return dataclasses.replace(settings, expected_latency_ms=rounded(median))
        return None

    def _trials_of(self, scenario: str, cell: tuple[int | None, int]) -> list[TrialRecord]:
        """The trials that chose a scenario's settings: its own, and the measuring ones."""
        assert self.runner is not None
        roles = {"Offline": ("measure", "confirm"), "Server": ("measure", "search", "confirm")}.get(scenario, ("latency", "confirm"))
        return [t for t in self.runner.asked if t.spec.get("role") in roles and (
            t.spec.get("scenario") == scenario or t.spec.get("role") == "measure")]


#: Below this busy fraction a Server run has no queue to speak of: its latency is the model's own.
LIGHT_LOAD = 0.5


def _beyond_the_bound(record: TrialRecord) -> bool:
    """An INVALID Server trial at light load whose fastest query already missed the latency
    bound: the model's own latency is beyond it, and lower targets cannot help."""
    m = record.measured
    fastest, bound, busy = m.get("min_latency_ms"), m.get("latency_bound_ms"), m.get("busy_fraction")
    return (isinstance(fastest, float) and isinstance(bound, float) and isinstance(busy, float)
            and busy < LIGHT_LOAD and fastest > bound)


def _cell_text(cell: tuple[int | None, int]) -> str:
    return f"batch {cell[0] if cell[0] is not None else 'auto'} x {cell[1]} instance(s)"


def _trial_summary(record: TrialRecord) -> dict[str, Any]:
    spec = record.spec
    return {"trial": record.number, "role": spec.get("role"), "scenario": spec.get("scenario"),
            "batch_size": spec.get("batch_size"), "instances": spec.get("instances"),
            "target": record.measured.get("target", spec.get("target")), "duration_s": spec.get("duration_s"),
            "value": record.value, "unit": record.unit, "valid": record.valid, "run_id": record.run_id}


def profile_of(state: TuneState, settings: TuneSettings, plans: dict[tuple[int | None, int], Plan],
               request: dict[str, Any], entries: dict[str, ProfileEntry]) -> TunedProfile:
    """The tuned profile of a finished tune."""
    plan = next(iter(plans.values()))
    registered = bool(plan.extra.get("registered_model"))
    run = {
        "model": plan.model.name if registered else None,
        "model_path": request.get("model_path"),
        "weights": ("random" if plan.model.random_weights else request.get("weights") or (
            "official" if registered and not request.get("model_path") else None)),
        "model_options": request.get("model_options") or {},
        "dataset": plan.dataset, "dataset_path": plan.dataset_path, "dataset_count": plan.dataset_count,
        "seed": plan.seed,
    }
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    backend = Registry(PluginsConfig.load(plan.plugins_file)).backend(plan.backend)
    return TunedProfile(
        model={"name": plan.model.name, "sha256": plan.model.sha256, "path": plan.model.path,
               "random_weights": plan.model.random_weights},
        backend={"name": plan.backend, "version": backend.version()},
        device=plan.device, precision=plan.precision, run=run, scenarios=entries,
        tune={"id": state.tune_id, "dir": str(state.directory), "tolerance": settings.tolerance,
              "trial_duration_s": settings.trial_duration_s, "confirm_duration_s": settings.confirm_duration_s,
              "official": settings.confirm_duration_s is None,
              "batch_sizes": settings.batch_sizes, "instances": settings.instances,
              "trials": len([t for t in state.trials if t.status == "done"])},
        created=now(), mlpi_version=__version__, system=_system_of(entries),
    )


def _system_of(entries: dict[str, ProfileEntry]) -> dict[str, Any]:
    """The system the confirming runs ran on, as their result.json names it."""
    from mlpi.core.results.schema import load_result

    for entry in entries.values():
        run_dir = (entry.found_by.get("confirm") or {}).get("run_dir")
        if run_dir:
            try:
                system = load_result(Path(run_dir)).system
            except MlpiError:
                continue
            return {k: system.get(k) for k in ("system_name", "hostname", "host_processor_model_name",
                                               "host_processor_core_count", "accelerators") if system.get(k)}
    return {}


def check_settings(settings: TuneSettings) -> None:
    """Refuse settings no search can use, naming the flag."""
    if not settings.scenarios:
        raise UsageError("no scenario to tune", "pass -s Offline, -s Server, ... or --category edge|datacenter")
    if not (0.005 <= settings.tolerance <= 0.5):
        raise UsageError(f"--tolerance {settings.tolerance} is outside 0.005 to 0.5",
                         "pass a relative tolerance such as 0.05 (5%)")
    if not (0 <= settings.margin < 0.9):
        raise UsageError(f"--margin {settings.margin} is outside 0 to 0.9", "pass a fraction such as 0.1 (10% lower)")
    for name, value in (("--trial-duration", settings.trial_duration_s), ("--confirm-duration", settings.confirm_duration_s)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UsageError(f"{name} must be a positive number of seconds, not {value}", f"pass {name} 10")
    for value in settings.batch_sizes:
        if value is not None and value < 1:
            raise UsageError(f"--batch-sizes holds {value}", "batch sizes are 1 or more (or auto)")
    for value in settings.instances:
        if value < 1:
            raise UsageError(f"--instances holds {value}", "instances are 1 or more")


__all__ = ["CONFIRM_ATTEMPTS", "OFFLINE_EXPECTED_FRACTION", "SERVER_TRIAL_MIN_QUERIES", "TuneOutcome", "TuneSettings",
           "Tuner", "check_settings", "profile_of"]
