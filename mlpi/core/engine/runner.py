"""Run a checked :class:`Plan`: each LoadGen test in its own child process.

``execute`` makes the run directory and drives the children, writing ``result.json``
(a :class:`~mlpi.core.results.schema.RunResult`) after every test so nothing already
measured is ever lost; a crash or Ctrl-C is recorded as such. While the run goes on,
result.json names its ``owner`` (host, pid, process start), so a run whose process was
killed reads as abandoned later (:func:`mlpi.core.results.rundir.owner_gone`). Ctrl-C stops
a running test at once, and otherwise waits for result.json and the results store to hold
the end, whose error says truly what was measured. A write that fails (a full disk, a
folder made read-only) ends the run as failed, result.json saying why when it still can.
Planning and checks live in :mod:`mlpi.core.engine.planning`.
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
from collections.abc import Callable, Iterator
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
    UsageError,
)
from mlpi.core.contract.model import ModelSpec
from mlpi.core.engine.child import EXIT_UNWRITABLE, OUTCOME
from mlpi.core.engine.loadgen_conf import files_of
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.planning import spec_of_plan
from mlpi.core.engine.progress import read_progress
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
    describe_os_error,
    process_owner,
    run_stem,
    test_dir,
    unwritable_hint,
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

#: Seconds between two looks at a running test's progress.
PROGRESS_PERIOD_S = 2.0


class Reporter(Protocol):
    """How the run tells its caller what is happening (the CLI prints it)."""

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None: ...

    def test_finished(self, test: TestResult) -> None: ...

    def test_progress(self, scenario: str, mode: str, progress: dict[str, Any]) -> None:
        """A test's ``progress.json`` (phase, expected_s, started, done), every few seconds."""


@dataclass
class RunOutcome:
    run_dir: Path
    result: RunResult
    exit_code: int
    error: MlpiError | None = None
    #: Set when Ctrl-C, SIGTERM or SIGHUP stopped the run, or came after its last test: the
    #: ``error:`` to print (exit code 130), saying truly what was measured and kept.
    interruption: MlpiError | None = None


def execute(plan: Plan, output_root: Path, reporter: Reporter, *, keep_child_output: bool = False) -> RunOutcome:
    """Run every test of ``plan`` in its own process under a new run directory.

    result.json records each finished test as it comes, and who writes it (``owner``: host,
    pid, process start) while the run goes on. Ctrl-C (and SIGTERM, SIGHUP) stops a running
    test at once; anywhere else it waits for result.json and the results store to be written,
    so the outcome always says what was measured. A write that fails (a full disk, a folder
    made read-only) ends the run as failed with one error, keeping what was written."""
    with _Interrupts() as interrupts:
        registry = Registry(PluginsConfig.load(plan.plugins_file))
        backend = registry.backend(plan.backend)
        performance_only = _performance_only(plan, backend)  # refused here for accuracy and audits
        spec = spec_of_plan(registry, plan)
        run_dir = create_run_dir(output_root, run_stem(plan.model.name, plan.backend, plan.device))
        result = RunResult(
            run_id=run_dir.name,
            status="running",
            started=_now(),
            backend=BackendInfo(backend.name, backend.version(), dict(plan.backend_options),
                                extra={"plugin": registry.provenance("backends", plan.backend),
                                       **({"performance_only": performance_only} if performance_only else {})}),
            device=plan.device,
            precision=plan.precision,
            model=ModelInfo(
                name=plan.model.name, path=plan.model.path, sha256=plan.model.sha256, rules_key=plan.model.rules_key,
                rules=plan.extra.get("rules"), weights="random" if plan.model.random_weights else "given",
                note=_model_note(plan, spec),
                extra=_model_extra(plan, registry, spec),
            ),
            dataset=DatasetInfo(plan.dataset, plan.dataset_path, plan.dataset_count,
                                extra={"plugin": registry.provenance("datasets", plan.dataset)}),
            settings=RunSettings(
                batch_size=plan.batch_size, instances=plan.instances, target_qps=plan.target_qps, quick=plan.quick,
                duration_s=plan.min_duration_s, batch_timeout_ms=plan.batch_timeout_ms,
                extra={**{role: {"path": conf.path, "sha256": conf.sha256} for role, conf in files_of(plan).items()},
                       **({"shapes": plan.extra["shapes"]} if plan.extra.get("shapes") else {}),
                       **({"batch_axes": plan.extra["batch_axes"]} if plan.extra.get("batch_axes") else {})},
            ),
            submission_valid=not plan.quick and plan.duration_s is None and performance_only is None,
            simulated=False,
            system=system_info(backend.runtime_distributions(), backends=[backend]),  # the devices this run could use
            extra={"plugins_files": list(registry.config.sources), "owner": process_owner()},
        )
        return _Run(plan, output_root, run_dir, result, reporter, interrupts, keep_child_output).run()


def _model_note(plan: Plan, spec: ModelSpec) -> str | None:
    """What a reader of the result must know about the model: random weights, a configuration
    that is not the official model."""
    weights = "random weights - the accuracy checks the run, not the model" if "accuracy" in plan.modes else (
        "random weights - performance only")
    notes = ([weights] if plan.model.random_weights else []) + (
        [f"not the official model: {spec.unofficial}"] if spec.unofficial else [])
    return "; ".join(notes) or None


def _performance_only(plan: Plan, backend: Any) -> str | None:
    """Why the backend's outputs are not the model's with the plan's options (its
    performance-only mode), or None. Such a run times the device and nothing else, so an
    accuracy test or a compliance audit of it is refused before anything starts."""
    from mlpi.core.plugins.options import build_options

    options = build_options(backend.Options, [("plan", plan.backend_options)], backend.name)
    reason = backend.performance_only(options)
    if reason is None:
        return None
    needing = (["an accuracy test"] if "accuracy" in plan.modes else []) + [
        f"a {audit} audit" for audit in plan.extra.get("audits", [])]
    if needing:
        raise UsageError(f"{reason}: {' and '.join(needing)} {'needs' if len(needing) == 1 else 'need'} the model's "
                         "real outputs",
                         "run it with --mode performance and no --audit, and the accuracy test and audits without "
                         "the performance-only option")
    return reason


def _model_extra(plan: Plan, registry: Registry, spec: ModelSpec) -> dict[str, Any]:
    from mlpi.core.engine.precision_plan import EXTRA_KEY as PRECISION_KEY

    derived = {"precision": plan.extra[PRECISION_KEY]} if plan.extra.get(PRECISION_KEY) else {}
    if not plan.extra.get("registered_model"):
        return derived
    extra: dict[str, Any] = {"plugin": registry.provenance("models", plan.model.name), **derived}
    if plan.extra.get("model_options") is not None:
        extra["options"] = plan.extra["model_options"]
    if spec.unofficial:
        extra["official"] = False
    return extra


class _Unwritable(Exception):
    """A file of the run could not be written (``path``, the OS error)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{path}: {error}")
        self.path, self.error = path, error


class _Run:
    """One run from its run directory on: the tests, result.json after each, the end."""

    def __init__(self, plan: Plan, output_root: Path, run_dir: Path, result: RunResult, reporter: Reporter,
                 interrupts: _Interrupts, echo: bool) -> None:
        self.plan, self.output_root, self.run_dir, self.result = plan, output_root, run_dir, result
        self.reporter, self.interrupts, self.echo = reporter, interrupts, echo
        # the audits last: they compare with the run's own tests, or only audits where they
        # compare with an earlier run's
        own = [] if plan.extra.get("audit_reference") else [(s, m) for s in plan.scenarios for m in plan.modes]
        self.tests = own + [(s, a) for s in plan.scenarios for a in plan.extra.get("audits", [])]
        self.saved = False  # result.json exists
        self.final = False  # result.json holds the run's end

    def run(self) -> RunOutcome:
        try:
            return self._run()
        except KeyboardInterrupt:  # interrupted three times: stop writing, keep what is written
            where = f"what was written is kept in {self.run_dir}"
            if not self.final:
                where += "; 'mlpi results list' shows the run as abandoned once this process has ended"
            return self._outcome(EXIT_INTERRUPTED, None,
                                 _interrupted("interrupted again while the results were being written", where))

    def _run(self) -> RunOutcome:
        plan, interrupts = self.plan, self.interrupts
        plan_path = self.run_dir / "plan.json"
        status = "ok"
        error: MlpiError | None = None
        run_error = False  # the run failed outside any test (a write): result.json says why
        stop: tuple[Any, ...] | None = None  # where an interrupt stopped the run
        try:
            self._write(plan_path, plan.to_json())
            self._save()
            for number, (scenario, mode) in enumerate(self.tests, 1):
                if interrupts.pending:
                    status, stop = "interrupted", ("between", number)
                    break
                self._tell(self.reporter.test_started, scenario, mode, number, len(self.tests))
                audit = mode not in plan.modes
                out = test_dir(self.run_dir, scenario, mode) / ("run" if audit else "")
                try:
                    code = _run_child(plan_path, out, scenario, mode, self.echo, interrupts,
                                      on_wait=lambda out=out, scenario=scenario, mode=mode: self._progress(out, scenario, mode))
                except KeyboardInterrupt:
                    code = None
                if code is not None and code != 0 and (interrupts.pending or code == -signal.SIGINT):
                    code = None  # Ctrl-C reaches the child too: it ended of it, not of a fault
                if code is None:
                    test = _test_entry(plan, scenario, mode, status="interrupted")
                    status, stop = "interrupted", ("during", scenario, mode, number)
                else:
                    test = _collect(plan, out, scenario, mode, code)
                    test = test if audit else _readable(test, out / OUTCOME)  # an audit is no test of result.json's
                if audit:
                    self._audited(test, out)
                else:
                    self.result = self.result.with_test(test)
                    if test.mode == "accuracy" and test.status == "ok" and test.accuracy is None:
                        self.result = replace(self.result, submission_valid=False)  # an accuracy run without a score
                    if test.extra.get("conf_departures"):
                        self.result = replace(self.result, submission_valid=False)  # a user's conf broke a rule
                    self._save()
                    self._tell(self.reporter.test_finished, test)
                if status == "interrupted":
                    break
                if test.status != "ok":
                    status = "failed"
                    err = test.error or ErrorRecord("RunFailed", "test failed")
                    error = MlpiError(err.message, err.hint)
                    error.exit_code = err.exit_code or EXIT_FAILURE
                    break
        except _Unwritable as exc:
            status, stop, run_error = "failed", None, True
            error = self._unwritable(exc)
        # The end, whatever came meanwhile: result.json says how the run ended, then the
        # results store indexes it (an interrupt now waits for both).
        self.result = replace(self.result, status=status, finished=_now())
        if run_error and error is not None:
            record = ErrorRecord(type(error).__name__, error.message, error.hint, error.exit_code)
            self.result = replace(self.result, extra={**self.result.extra, "error": record.to_json()})
        try:
            self._save()
            self.final = True
        except _Unwritable as exc:
            if error is None:  # every measurement is in; only the end could not be written
                error = self._unwritable(exc)
            error.hint = (f"{error.hint}; " if error.hint else "") + (
                f"{exc.path.name} could not record the end of the run: 'mlpi results list' shows it as abandoned "
                "once this process has ended")
        indexed = self.saved and record_run(self.run_dir, self.output_root)
        if stop is None and interrupts.pending:  # it came as the run ended: after every test, or the failed one
            stop = ("after",) if error is None else ("ended",)
        interruption = None if stop is None else self._interruption(stop, indexed)
        if error is not None:
            code = EXIT_FAILURE
        elif stop is not None:
            code = EXIT_INTERRUPTED
        elif any(t.valid is False for t in self.result.tests) or any(
                a.get("passed") is False for a in self.result.extra.get("audits", [])):
            code = EXIT_INVALID
        else:
            code = EXIT_OK
        return self._outcome(code, error, interruption)

    def _audited(self, test: TestResult, out: Path) -> None:
        """Record an audit test under result.json's ``audits``: its LoadGen figure, and what
        its verification found (``passed``, per check, the TEST01 score fallback)."""
        verification = _read_outcome(out / OUTCOME).get("audit") if test.status == "ok" else None
        reference = self.plan.extra.get("audit_reference")
        entry = {
            **test.to_json(), "mode": "performance", "test": test.mode, "dir": f"{test.scenario}/{test.mode}",
            "passed": verification.get("passed") if isinstance(verification, dict) else None,
            "verification": verification, "reference_run": Path(reference).name if reference else self.run_dir.name,
        }
        audits = [*self.result.extra.get("audits", []), entry]
        self.result = replace(self.result, extra={**self.result.extra, "audits": audits})
        self._save()
        self._tell(getattr(self.reporter, "audit_finished", lambda _entry: None), entry)

    def _outcome(self, code: int, error: MlpiError | None, interruption: MlpiError | None) -> RunOutcome:
        return RunOutcome(self.run_dir, self.result, code, error, interruption)

    def _write(self, path: Path, data: Any) -> None:
        try:
            write_json_atomic(path, data)
        except OSError as exc:
            raise _Unwritable(path, exc) from None

    def _save(self) -> None:
        self._write(self.run_dir / RESULT_FILE, self.result.to_json())
        self.saved = True

    def _tell(self, call: Any, *args: Any) -> None:
        """A reporter call. Ctrl-C while it prints counts as an interrupt like any other; a
        terminal that is gone (SIGHUP, a closed pipe) never stops the run."""
        try:
            call(*args)
        except KeyboardInterrupt:
            if self.interrupts.forced:
                raise
            self.interrupts.note(signal.SIGINT)
        except OSError:
            pass

    # -- what the error says ---------------------------------------------------------------

    def _progress(self, out: Path, scenario: str, mode: str) -> None:
        """Hand the reporter the test's progress, where it has a way to show it."""
        show = getattr(self.reporter, "test_progress", None)
        progress = read_progress(out)
        if show is not None and progress is not None:
            self._tell(show, scenario, mode, progress)

    def _interruption(self, stop: tuple[Any, ...], indexed: bool) -> MlpiError:
        """The interrupt's ``error:`` and ``hint:``: where it stopped the run, and what is kept."""
        total = len(self.tests)
        done = sum(1 for t in self.result.tests if t.status != "interrupted")
        kept = f"kept in {self.run_dir}" + (" and indexed" if indexed else "")
        if not self.final:
            kept += "; result.json could not record the end of the run"
        if stop[0] == "during":
            _, scenario, mode, number = stop
            what = f"the interrupted test's logs and the {done} finished test(s) are" if done else "the interrupted test's logs are"
            return _interrupted(f"interrupted during the {scenario} {mode} test ({number} of {total})", f"{what} {kept}")
        if stop[0] == "between":
            number = stop[1]
            if number == 1:
                return _interrupted("interrupted before the first test started", f"nothing was measured; the run's plan is {kept}")
            scenario, mode = self.tests[number - 1]
            return _interrupted(f"interrupted after {done} of {total} tests; the {scenario} {mode} test was not started",
                                f"the {done} finished test(s) are {kept}")
        if stop[0] == "ended":
            return _interrupted("interrupted as the run ended", f"what it measured is {kept}")
        return _interrupted(f"interrupted after every test had finished ({total} of {total})",
                            f"the run is complete: its results are {kept}")

    def _unwritable(self, exc: _Unwritable) -> MlpiError:
        done = len(self.result.tests)
        if done:
            kept = f"the {done} finished test(s) are kept in {self.run_dir}"
        elif (self.run_dir / "plan.json").is_file():
            kept = f"nothing was measured; the run's plan is kept in {self.run_dir}"
        else:
            kept = "nothing was measured"
        return RunFailed(f"cannot write {exc.path}: {describe_os_error(exc.error)}", f"{unwritable_hint(exc.error)}; {kept}")


def _interrupted(message: str, hint: str) -> MlpiError:
    error = MlpiError(message, hint)
    error.exit_code = EXIT_INTERRUPTED
    return error


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_child(plan_path: Path, out: Path, scenario: str, mode: str, echo: bool,
               interrupts: _Interrupts | None = None, on_wait: Callable[[], None] | None = None) -> int:
    """Run one test's child process to its end; its exit code (KeyboardInterrupt on Ctrl-C,
    SIGTERM or SIGHUP, after stopping the child). :class:`_Unwritable` when its folder or
    log cannot be made."""
    log_path = out / "harness.log"
    try:
        out.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
    except OSError as exc:
        raise _Unwritable(log_path if out.is_dir() else out, exc) from None
    command = [sys.executable, "-m", "mlpi.core.engine.child", str(plan_path), scenario, mode, str(out)]
    with log:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=_child_env(),
        )
        copier = threading.Thread(target=_tee, args=(child.stdout, log), daemon=True) if echo else None
        if copier is not None:
            copier.start()
        try:
            with interrupts.immediate() if interrupts is not None else signals_interrupt():
                while True:
                    try:
                        code = child.wait(timeout=PROGRESS_PERIOD_S)
                        break
                    except subprocess.TimeoutExpired:
                        if on_wait is not None:
                            on_wait()
        except KeyboardInterrupt:
            _stop(child)
            raise
        finally:
            if copier is not None:
                copier.join(timeout=5)
    return code


class _Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP while a run is written: while a test runs
    (:meth:`immediate`) they raise KeyboardInterrupt at once, so the test is stopped; anywhere
    else they are only noted (``pending``) and the run stops at the next point where what it
    measured is all written: before the next test, or once result.json and the results store
    hold the end. A third one raises at once wherever it comes. A signal the process ignores
    (``nohup``) stays ignored. Only the main thread can have handlers: elsewhere nothing changes."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.pending: int | None = None
        self.count = 0
        self._live = False
        self._previous: dict[int, Any] = {}

    @property
    def forced(self) -> bool:
        return self.count >= 3

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                current = signal.getsignal(sig)
                if current is not signal.SIG_IGN and current is not None:  # None: set outside Python, cannot be put back
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def note(self, signum: int) -> None:
        self.count += 1
        if self.pending is None:
            self.pending = signum

    def _handle(self, signum: int, frame: Any) -> None:
        self.note(signum)
        if self._live or self.forced:
            raise KeyboardInterrupt
        if self.count == 1:
            with contextlib.suppress(OSError):  # not print(): the run may be printing (a reentrant call)
                os.write(2, b"mlpi: interrupted: stopping once what was measured is written (interrupt twice more "
                            b"to stop at once)\n")

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """While a test's child runs: an interrupt stops it at once (one already noted, too)."""
        self._live = True
        try:
            if self.pending:
                raise KeyboardInterrupt
            yield
        finally:
            self._live = False


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
    """--debug: the child's output goes live to the terminal and into harness.log. A log
    that can no longer be written (a full disk) is left as it is, and the copy to the terminal
    goes on: the child must never block on a pipe nobody reads."""
    logging = True
    for line in iter(source.readline, b""):
        if logging:
            try:
                log.write(line)
                log.flush()
            except OSError:
                logging = False
        with contextlib.suppress(OSError, ValueError):
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


def _read_outcome(path: Path) -> dict[str, Any]:
    try:
        outcome = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return outcome if isinstance(outcome, dict) else {}


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
    if code == EXIT_UNWRITABLE and outcome.get("status") != "ok":
        said = _last_words(out / "harness.log")
        error = ErrorRecord(
            "RunFailed", f"the {scenario} {mode} test " + (said or f"could not write its outcome in {out}"),
            "free some disk space, or pass --output DIR on another disk",
        )
        return _test_entry(plan, scenario, mode, status="failed", error=error)
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
        extra={**({"batch_unit": "rows"} if outcome.get("batch_unit") == "rows" else {}),
               **({"peak_rss_mb": outcome["peak_rss_mb"]} if isinstance(outcome.get("peak_rss_mb"), (int, float)) else {}),
               **({"precision_detail": outcome["precision_detail"]} if isinstance(outcome.get("precision_detail"), str)
                  else {}),
               **({"nonfinite_batches": outcome["nonfinite_batches"]}
                  if isinstance(outcome.get("nonfinite_batches"), int) and outcome["nonfinite_batches"] > 0 else {}),
               **_conf_record(outcome, log)},
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
        if not logged:
            return replace(test, metric="accuracy_log_samples", value=logged, unit="samples", valid=False,
                           invalid_reasons=("the accuracy log holds no sample",))
        # Logged but not scored (no ground truth): no verdict, and never a valid accuracy result.
        return replace(test, metric="accuracy_log_samples", value=logged, unit="samples", valid=None,
                       invalid_reasons=("not scored: the data has no ground truth to score against",))
    metric = performance_metric(scenario, log)
    valid = log.valid if log.complete else False
    return replace(
        test, metric=metric.name, value=metric.value, unit=metric.unit, valid=valid,
        latency_ms=latency_percentiles_ms(log, scenario) or None,
        invalid_reasons=() if valid else tuple(log.invalid_reasons() or ["LoadGen wrote no result"]),
    )


_BUG_HINT = "report this as a bug in mlpi or in the plugin that ran the test"


def _conf_record(outcome: dict[str, Any], log: DetailLog) -> dict[str, Any]:
    """What the test's result keeps of its LoadGen configuration: the settings LoadGen ran
    with, as its detail log states them (``effective_<name>``, under ``<name>``), and where
    the user's conf files departed from the MLPerf rules."""
    record: dict[str, Any] = {}
    ran = {key.removeprefix("effective_"): value for key, value in log.values.items() if key.startswith("effective_")}
    if ran:
        record["loadgen_settings"] = ran
    departed = outcome.get("conf_departures")
    if isinstance(departed, list) and departed and all(isinstance(d, str) for d in departed):
        record["conf_departures"] = departed
    return record


def _last_words(log: Path) -> str | None:
    """``cannot write FILE: REASON``: what a child that could not write its outcome said last
    in its log (None when the log could not hold it either)."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line[len("mlpi: "):] for line in tail.splitlines() if line.startswith("mlpi: cannot write ")]
    return lines[-1] if lines else None


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
