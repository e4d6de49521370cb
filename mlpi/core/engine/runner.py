"""Run a checked :class:`Plan`: each LoadGen test in its own child process.

``execute`` makes the run directory and drives the children, writing ``result.json``
(a :class:`~mlpi.core.results.schema.RunResult`) after every test so nothing already
measured is ever lost; a crash or Ctrl-C is recorded as such. Planning and checks live in
:mod:`mlpi.core.engine.planning`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from mlpi.core.contract.accuracy import read_accuracy_log
from mlpi.core.contract.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    MlpiError,
    ResultError,
    RunFailed,
)
from mlpi.core.engine.child import OUTCOME
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.scenario import (
    DetailLog,
    latency_percentiles_ms,
    performance_metric,
)
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.registry import Registry
from mlpi.core.results.rundir import (
    RESULT_FILE,
    create_run_dir,
    run_stem,
    test_dir,
    write_json_atomic,
)
from mlpi.core.results.schema import (
    AccuracyRecord,
    BackendInfo,
    DatasetInfo,
    ErrorRecord,
    ModelInfo,
    RunResult,
    RunSettings,
    TestResult,
)
from mlpi.core.results.store import record_run
from mlpi.core.results.sysinfo import system_info


class Reporter(Protocol):
    """How the run tells its caller what is happening (the CLI prints it)."""

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None: ...

    def test_finished(self, test: TestResult) -> None: ...


@dataclass
class RunOutcome:
    run_dir: Path
    result: RunResult
    exit_code: int
    error: MlpiError | None = None


def execute(plan: Plan, output_root: Path, reporter: Reporter, *, keep_child_output: bool = False) -> RunOutcome:
    """Run every test of ``plan`` in its own process under a new run directory."""
    registry = Registry(PluginsConfig.load(plan.plugins_file))
    backend = registry.backend(plan.backend)
    run_dir = create_run_dir(output_root, run_stem(plan.model.name, plan.backend, plan.device))
    plan_path = run_dir / "plan.json"
    write_json_atomic(plan_path, plan.to_json())
    result = RunResult(
        run_id=run_dir.name,
        status="running",
        started=_now(),
        backend=BackendInfo(backend.name, backend.version(), dict(plan.backend_options),
                            extra={"plugin": registry.provenance("backends", plan.backend)}),
        device=plan.device,
        precision=plan.precision,
        model=ModelInfo(
            name=plan.model.name, path=plan.model.path, sha256=plan.model.sha256, rules_key=plan.model.rules_key,
            rules=plan.extra.get("rules"), weights="random" if plan.model.random_weights else "given",
            note="random weights - performance only" if plan.model.random_weights else None,
            extra={"plugin": registry.provenance("models", plan.model.name)} if plan.extra.get("registered_model") else {},
        ),
        dataset=DatasetInfo(plan.dataset, plan.dataset_path, plan.dataset_count,
                            extra={"plugin": registry.provenance("datasets", plan.dataset)}),
        settings=RunSettings(
            batch_size=plan.batch_size, instances=plan.instances, target_qps=plan.target_qps, quick=plan.quick,
            duration_s=plan.min_duration_s, batch_timeout_ms=plan.batch_timeout_ms,
        ),
        submission_valid=not plan.quick and plan.duration_s is None,
        simulated=False,
        system=system_info(backend.runtime_distributions(), backends=[backend]),  # the devices this run could use
        extra={"plugins_files": list(registry.config.sources)},
    )
    result_path = run_dir / RESULT_FILE
    write_json_atomic(result_path, result.to_json())

    tests = [(s, m) for s in plan.scenarios for m in plan.modes]
    error: MlpiError | None = None
    status = "ok"
    for number, (scenario, mode) in enumerate(tests, 1):
        reporter.test_started(scenario, mode, number, len(tests))
        out = test_dir(run_dir, scenario, mode)
        try:
            code = _run_child(plan_path, out, scenario, mode, keep_child_output)
        except KeyboardInterrupt:
            code = None
        if code is None:
            test = _test_entry(plan, scenario, mode, status="interrupted")
            status = "interrupted"
        else:
            test = _readable(_collect(plan, out, scenario, mode, code), out / OUTCOME)
        result = result.with_test(test)
        write_json_atomic(result_path, result.to_json())
        reporter.test_finished(test)
        if status == "interrupted":
            break
        if test.status != "ok":
            status = "failed"
            err = test.error or ErrorRecord("RunFailed", "test failed")
            error = MlpiError(err.message, err.hint)
            error.exit_code = err.exit_code or EXIT_FAILURE
            break
    result = replace(result, status=status, finished=_now())
    write_json_atomic(result_path, result.to_json())
    record_run(run_dir, output_root)  # the results store; a failure there only warns
    if status == "interrupted":
        code = EXIT_INTERRUPTED
    elif status == "failed":
        code = EXIT_FAILURE
    elif any(t.valid is False for t in result.tests):
        code = EXIT_INVALID
    else:
        code = EXIT_OK
    return RunOutcome(run_dir, result, code, error)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_child(plan_path: Path, out: Path, scenario: str, mode: str, echo: bool) -> int:
    """Run one test's child process to its end; its exit code (KeyboardInterrupt on Ctrl-C,
    SIGTERM or SIGHUP, after stopping the child)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlpi.core.engine.child", str(plan_path), scenario, mode, str(out)]
    with (out / "harness.log").open("wb") as log:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=_child_env(),
        )
        copier = threading.Thread(target=_tee, args=(child.stdout, log), daemon=True) if echo else None
        if copier is not None:
            copier.start()
        try:
            with signals_interrupt():
                code = child.wait()
        except KeyboardInterrupt:
            _stop(child)
            raise
        finally:
            if copier is not None:
                copier.join(timeout=5)
    return code


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, while the block runs: a
    child test is then stopped, not orphaned, and the run (or sweep cell) is recorded as
    interrupted."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _tee(source: Any, log: Any) -> None:
    """--debug: the child's output goes live to the terminal and into harness.log."""
    for line in iter(source.readline, b""):
        log.write(line)
        log.flush()
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop a child on Ctrl-C: SIGINT first (it may already have it), then kill."""
    for sig, grace in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        if child.poll() is not None:
            return
        try:
            child.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def _collect(plan: Plan, out: Path, scenario: str, mode: str, code: int) -> TestResult:
    outcome_path = out / OUTCOME
    outcome: dict[str, Any] = {}
    if outcome_path.exists():
        try:
            outcome = json.loads(outcome_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            outcome = {}
        if not isinstance(outcome, dict):
            outcome = {}
    if outcome.get("status") == "failed":
        return _test_entry(plan, scenario, mode, status="failed", error=_error_record(outcome.get("error"), outcome_path))
    if code != 0 or outcome.get("status") != "ok":
        how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.Signals._value2member_map_ else f"exit code {code}"
        error = ErrorRecord(
            "RunFailed", f"the {scenario} {mode} test process crashed ({how})",
            f"its log is kept in {out / 'harness.log'}; re-run with --debug to see it live",
        )
        return _test_entry(plan, scenario, mode, status="failed", error=error)
    log = DetailLog.read(out / "mlperf_log_detail.txt")
    devices = outcome.get("devices")
    test = replace(
        _test_entry(plan, scenario, mode, status="ok"),
        batch_size=outcome.get("batch_size"),
        sessions=outcome.get("sessions"),
        slots=outcome.get("slots"),
        precision=outcome.get("precision"),
        simulated=bool(outcome.get("simulated")),
        devices=tuple(devices) if isinstance(devices, list) else None,
        expectations=outcome.get("expectations"),
    )
    if mode == "accuracy":
        if outcome.get("accuracy") is not None:
            try:
                accuracy = AccuracyRecord.from_json(outcome["accuracy"], str(outcome_path))
            except ResultError as exc:
                return replace(test, status="failed", error=ErrorRecord("RunFailed", exc.message, _BUG_HINT))
            reason = accuracy.failure()
            return replace(test, metric=accuracy.metric, value=accuracy.value, unit=accuracy.unit, accuracy=accuracy,
                           valid=True if accuracy.passed is None else accuracy.passed,
                           invalid_reasons=(reason,) if reason else ())
        logged = _accuracy_sample_count(out / "mlperf_log_accuracy.json")
        return replace(test, metric="accuracy_log_samples", value=logged, unit="samples", valid=logged is not None and logged > 0)
    metric = performance_metric(scenario, log)
    valid = log.valid if log.complete else False
    return replace(
        test, metric=metric.name, value=metric.value, unit=metric.unit, valid=valid,
        latency_ms=latency_percentiles_ms(log, scenario) or None,
        invalid_reasons=() if valid else tuple(log.invalid_reasons() or ["LoadGen wrote no result"]),
    )


_BUG_HINT = "report this as a bug in mlpi or in the plugin that ran the test"


def _readable(test: TestResult, source: Path) -> TestResult:
    """``test`` if result.json readers can read it back; else the test failed, saying why
    (a plugin may have reported a figure of the wrong type). What is written is always
    readable, so one bad value never makes the whole run unreadable."""
    try:
        TestResult.from_json(json.loads(json.dumps(test.to_json(), default=str)), str(source), where="")
    except ResultError as exc:
        return _test_entry_like(test, ErrorRecord("RunFailed", exc.message, _BUG_HINT))
    return test


def _test_entry_like(test: TestResult, error: ErrorRecord) -> TestResult:
    return TestResult(scenario=test.scenario, mode=test.mode, status="failed", quick=test.quick, dir=test.dir, error=error)


def _error_record(raw: Any, source: Path) -> ErrorRecord:
    """The error a failed child wrote; a generic one when it wrote none that can be read."""
    try:
        return ErrorRecord.from_json(raw, str(source))
    except ResultError:
        return ErrorRecord("RunFailed", "the test failed without saying why", f"see {source.parent / 'harness.log'}")


def _test_entry(plan: Plan, scenario: str, mode: str, *, status: str, error: ErrorRecord | None = None) -> TestResult:
    return TestResult(
        scenario=scenario, mode=mode, status=status, quick=plan.quick or plan.duration_s is not None,
        dir=f"{scenario}/{mode}", error=error,
    )


def _accuracy_sample_count(path: Path) -> int | None:
    """Distinct samples in the accuracy log (None when it cannot be read)."""
    try:
        return len(read_accuracy_log(path))
    except RunFailed:
        return None


__all__ = ["Reporter", "RunOutcome", "execute"]
