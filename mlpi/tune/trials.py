"""A tune's trials: each one an ordinary run (its own run directory, in the results store),
made from one of the tune's checked plans, and labelled as a tune trial.

The label (``tune``: the tune's id and folder, the trial's number, role and settings) is in
the run's ``plan.json`` (``extra.tune``) and in its ``result.json``, which the results store
indexes, so ``mlpi results show --json`` and anything reading result.json can tell a trial
from a run of its own. A trial recorded in the tune's state is answered from there instead of
being run again (:class:`TrialRunner`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlpi.core.contract.errors import EXIT_INTERRUPTED, MlpiError
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.runner import Reporter, execute
from mlpi.core.engine.scenario import DetailLog
from mlpi.core.engine.scenario_settings import EXTRA_KEY, ScenarioSettings
from mlpi.core.results.rundir import RESULT_FILE, write_json_atomic
from mlpi.core.results.schema import RunResult, TestResult
from mlpi.core.results.store import record_run
from mlpi.tune.state import TrialRecord, TuneState, now

#: What a trial is for: ``measure`` (Offline throughput of a batch size x instances, which
#: also starts the Server search there), ``search`` (a Server target), ``latency`` (a
#: SingleStream/MultiStream expected latency), ``confirm`` (the chosen settings at full length).
ROLES = ("measure", "search", "latency", "confirm")


@dataclass(frozen=True)
class TrialSpec:
    """One trial: scenario, batch size and instances (the plan it starts from), its target
    (Server QPS; None: calibrated), its duration (None: the official one), and for a
    confirming run the settings it confirms."""

    role: str
    scenario: str
    batch_size: int | None
    instances: int
    duration_s: float | None
    target: float | None = None
    settings: ScenarioSettings | None = None
    attempt: int = 1

    @property
    def key(self) -> str:
        """What identifies the trial in the tune's state, whatever its number."""
        return json.dumps(self.to_json(), sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["settings"] = self.settings.to_json() if self.settings is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialSpec:
        raw = dict(data)
        settings = raw.pop("settings", None)
        return cls(**raw, settings=ScenarioSettings.from_json(settings, "a recorded trial") if settings else None)

    def describe(self) -> str:
        """``Server, batch 8, 1 instance, target 1,200 QPS, 10 s`` (``official duration``)."""
        batch = "batch auto" if self.batch_size is None else f"batch {self.batch_size}"
        parts = [self.scenario, batch, f"{self.instances} instance{'s' if self.instances != 1 else ''}"]
        if self.settings is not None:
            value = self.settings.expectation(self.scenario)
            if value is not None:
                unit = " ms" if self.scenario in ("SingleStream", "MultiStream") else " QPS"
                word = {"Offline": "expected", "Server": "target"}.get(self.scenario, "expected latency")
                parts.append(f"{word} {_figure(value)}{unit}")
        elif self.target is not None:
            parts.append(f"target {_figure(self.target)} QPS")
        else:
            parts.append("calibrated")
        parts.append("official duration" if self.duration_s is None else f"{self.duration_s:g} s")
        return ", ".join(parts)


class TrialReporter(Protocol):
    """How the trials tell the caller what happens (the CLI prints it)."""

    def trial_started(self, spec: TrialSpec, number: int, estimate: int) -> None: ...

    def trial_finished(self, record: TrialRecord, number: int, estimate: int, recorded: bool) -> None: ...

    def run_reporter(self, spec: TrialSpec) -> Reporter:
        """The reporter of the trial's run (progress while it runs)."""
        ...


class TuneInterrupted(MlpiError):
    """Ctrl-C (or SIGTERM, SIGHUP) stopped the tune; what it measured is kept."""

    exit_code = EXIT_INTERRUPTED


class TrialRunner:
    """Runs trials as ordinary runs from the tune's checked plans (one per batch size x
    instances), answering recorded ones from the state."""

    def __init__(self, state: TuneState, output_root: Path, plans: dict[tuple[int | None, int], Plan],
                 reporter: TrialReporter, *, debug: bool = False) -> None:
        self.state, self.output_root, self.plans, self.reporter = state, output_root, plans, reporter
        self.debug = debug
        self.count = 0  # trials asked for so far, recorded ones included
        #: Their records, in order.
        self.asked: list[TrialRecord] = []
        self.ran = 0  # of them, run by this process (not answered from the state)

    def run(self, spec: TrialSpec, later: int = 0) -> TrialRecord:
        """The trial's record: from the state when it ran before, else from running it now.
        ``later``: about how many trials the tune runs after this one."""
        self.count += 1
        estimate = self.count + later
        recorded = self.state.finished(spec.key)
        if recorded is not None:
            self.asked.append(recorded)
            self.reporter.trial_finished(recorded, self.count, estimate, True)
            return recorded
        self.reporter.trial_started(spec, self.count, estimate)
        self.ran += 1
        plan = self.plan_for(spec)
        began = time.monotonic()
        outcome = execute(plan, self.output_root, self.reporter.run_reporter(spec), keep_child_output=self.debug)
        record = self._record(spec, outcome, time.monotonic() - began)
        if outcome.run_dir is not None and outcome.interruption is None:
            _label(outcome.run_dir, self.output_root, outcome.result, plan.extra["tune"])
        self.state.add(record)
        self.asked.append(record)
        self.reporter.trial_finished(record, self.count, estimate, False)
        if outcome.interruption is not None or record.status == "interrupted":
            done = sum(1 for t in self.state.trials if t.status == "done")
            raise TuneInterrupted(
                f"interrupted during trial {self.count} ({spec.describe()})",
                f"{done} finished trial(s) are kept in {self.state.path}; run the same command again (or "
                f"`mlpi tune --resume {self.state.directory}`) to go on from there",
            )
        if record.status == "failed":
            error = outcome.error or MlpiError("the trial's run failed", f"see {outcome.run_dir}")
            raise MlpiError(f"trial {self.count} ({spec.describe()}) failed: {error.message}",
                            f"{error.hint + '; ' if error.hint else ''}after fixing it, run the same command again: "
                            "finished trials are not run twice")
        return record

    def plan_for(self, spec: TrialSpec) -> Plan:
        """The trial's plan: the tune's plan for its batch size and instances, for one scenario,
        at its duration and target, labelled with the trial."""
        base = self.plans[(spec.batch_size, spec.instances)]
        extra = {key: value for key, value in base.extra.items() if key not in (EXTRA_KEY, "tune")}
        if spec.settings is not None:
            extra[EXTRA_KEY] = {spec.scenario: spec.settings.to_json()}
        extra["tune"] = {"id": self.state.tune_id, "dir": str(self.state.directory), "trial": self.count,
                         "role": spec.role, **{k: v for k, v in spec.to_json().items() if k != "role"}}
        return dataclasses.replace(
            base, scenarios=[spec.scenario], modes=["performance"], quick=False, duration_s=spec.duration_s,
            target_qps=spec.target if spec.role == "search" else None, extra=extra,
        )

    def _record(self, spec: TrialSpec, outcome: Any, elapsed: float) -> TrialRecord:
        result: RunResult = outcome.result
        test = next((t for t in result.tests if t.mode == "performance"), None)
        if outcome.interruption is not None or result.status == "interrupted":
            status = "interrupted"
        elif test is None or test.status != "ok":
            status = "failed"
        else:
            status = "done"
        error = outcome.error
        return TrialRecord(
            number=self.count, key=spec.key, spec=spec.to_json(), status=status, run_id=result.run_id,
            run_dir=str(outcome.run_dir), valid=test.valid if test is not None else None,
            metric=test.metric if test is not None else None, value=test.value if test is not None else None,
            unit=test.unit if test is not None else None,
            reasons=list(test.invalid_reasons) if test is not None else [],
            measured=_measured(spec, test, Path(outcome.run_dir)), elapsed_s=round(elapsed, 3), finished=now(),
            error={"message": error.message, "hint": error.hint} if error is not None else None,
        )


def _measured(spec: TrialSpec, test: TestResult | None, run_dir: Path) -> dict[str, Any]:
    """What the search needs from a trial besides its figure: the calibrated rates, the
    latencies, how busy the device was; for Server, the fastest query and the latency bound
    (LoadGen's detail log)."""
    if test is None:
        return {}
    expect = test.expectations or {}
    out: dict[str, Any] = {}
    for key in ("throughput_qps", "server_target_qps"):
        if isinstance(expect.get(key), (int, float)) and expect[key] > 0:
            out[key] = float(expect[key])
    if spec.scenario == "Server":
        out["target"] = spec.target if spec.target is not None else out.get("server_target_qps")
    for key in ("mean", "p50"):
        value = (test.latency_ms or {}).get(key)
        if isinstance(value, (int, float)):
            out[f"{key}_latency_ms"] = float(value)
    busy = [d.get("busy_fraction") for d in test.devices or () if isinstance(d.get("busy_fraction"), (int, float))]
    if busy:
        out["busy_fraction"] = float(max(busy))
    if spec.scenario == "Server" and test.dir:
        log = DetailLog.read(run_dir / test.dir / "mlperf_log_detail.txt").values
        for key, name in (("result_min_latency_ns", "min_latency_ms"), ("effective_target_latency_ns", "latency_bound_ms")):
            if isinstance(log.get(key), (int, float)) and not isinstance(log.get(key), bool):
                out[name] = float(log[key]) / 1e6
    return out


def _label(run_dir: Path, output_root: Path, result: RunResult, label: dict[str, Any]) -> None:
    """Put the trial's label into its result.json (the runner wrote it from the plan, which
    holds the label in plan.json) and index the run again, so the store has it."""
    if result.extra.get("tune") == label:
        return
    labelled = dataclasses.replace(result, extra={**result.extra, "tune": label})
    try:
        write_json_atomic(run_dir / RESULT_FILE, labelled.to_json())
    except OSError:
        return  # plan.json still says it; the run is complete and indexed as it is
    record_run(run_dir, output_root)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


__all__ = ["ROLES", "TrialReporter", "TrialRunner", "TrialSpec", "TuneInterrupted"]
