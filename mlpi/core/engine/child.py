"""One LoadGen test in its own process: ``python -m mlpi.core.engine.child PLAN SCENARIO MODE DIR``.

LoadGen applies mlperf.conf once per process, and a vendor runtime that crashes must not
take the parent down, so every test runs here. The outcome (ok, or the error with its
hint) goes to ``DIR/outcome.json``; LoadGen's logs go to ``DIR``. No ``chdir``: the audit
config path is passed explicitly.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import EXIT_FAILURE, MlpiError, ModelError, UsageError
from mlpi.core.engine.compliance import AUDITS, audit_config_text
from mlpi.core.engine.loadgen_conf import departures, loadgen_model_key
from mlpi.core.engine.scenario_settings import (
    exact_conf,
    for_scenario,
    tuned_expectations,
)
from mlpi.core.results.rundir import describe_os_error

OUTCOME = "outcome.json"
#: The audit config an audit test passes to LoadGen, in the test's own folder.
AUDIT_CONFIG = "audit.config"


#: The exit code of a child that could not write its outcome (a full disk, a folder made
#: read-only): sysexits' EX_IOERR. Its last words (``mlpi: cannot write ...``) are the last
#: line of harness.log when that could still be written.
EXIT_UNWRITABLE = 74


def main(argv: list[str]) -> int:
    import faulthandler
    import signal

    faulthandler.enable()  # a runtime that crashes the process leaves its stack in harness.log
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # LoadGen blocks the main thread: die at once
    _die_with_parent()
    plan_path, scenario, mode, outdir = argv
    out = Path(outdir)
    started = time.time()
    try:
        print(f"mlpi: {scenario} {mode} test, pid {os.getpid()}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        details = run_test(Path(plan_path), scenario, mode, out)
    except MlpiError as exc:
        return _finish(out, {"status": "failed", "error": _error(exc), "seconds": time.time() - started}, exc.exit_code)
    except OSError as exc:
        if exc.errno not in _CANNOT_WRITE:
            return _crashed(out, exc, started)
        where = f" {exc.filename}" if exc.filename else f" in {out}"
        err = MlpiError(f"the {scenario} {mode} test could not write{where}: {describe_os_error(exc)}",
                        "free some disk space, or pass --output DIR on another disk")
        return _finish(out, {"status": "failed", "error": _error(err), "seconds": time.time() - started}, EXIT_FAILURE)
    except Exception as exc:  # noqa: BLE001 - a backend's own failure, reported as such
        return _crashed(out, exc, started)
    details.update(status="ok", seconds=time.time() - started, peak_rss_mb=peak_rss_mb())
    return _finish(out, details, 0)


#: A write that failed for want of space or of a writable file system, not of a fault.
_CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _crashed(out: Path, exc: BaseException, started: float) -> int:
    with contextlib.suppress(OSError):  # the log may be on the disk that is full
        traceback.print_exc()
    err = MlpiError(f"{type(exc).__name__}: {exc}", f"see {out / 'harness.log'}; re-run with --debug")
    return _finish(out, {"status": "failed", "error": _error(err), "seconds": time.time() - started}, EXIT_FAILURE)


def peak_rss_mb() -> float | None:
    """This test process's peak resident memory, MB (LoadGen's queries included)."""
    try:
        import resource
    except ImportError:  # not on every platform
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)


def _finish(out: Path, outcome: dict[str, Any], code: int) -> int:
    """Write the outcome; :data:`EXIT_UNWRITABLE` (saying why, where it still can) when it
    cannot be written."""
    try:
        _write(out, outcome)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(1, f"\nmlpi: cannot write {out / OUTCOME}: {describe_os_error(exc)}\n".encode("utf-8", "replace"))
        return EXIT_UNWRITABLE
    return code


def run_test(plan_path: Path, scenario: str, mode: str, out: Path) -> dict[str, Any]:
    """Open, load, calibrate, run LoadGen, score: one test, in the order LoadGen needs."""
    import mlperf_loadgen as lg

    from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY
    from mlpi.core.engine.dispatch import device_stats, pace_snapshot, record_pace
    from mlpi.core.engine.finite import check_sessions
    from mlpi.core.engine.plan import Plan
    from mlpi.core.engine.progress import (
        LiveCounts,
        expected_seconds,
        samples_done,
        write_progress,
    )

    plan = for_scenario(Plan.read(plan_path), scenario)  # a scenario's own batch, instances, expectation
    setup = open_test(plan)
    loaded = setup.load_sessions(scenario)
    finite = check_sessions(loaded.placed) if mode == "accuracy" else None
    write_progress(out, phase="calibrating")
    watchdog, probe = start_watchdog(setup, loaded, scenario, mode, out)
    executors, outputs = build_executors(setup, loaded, scenario, out, lg, probe)
    watchdog.add(lambda ex=ex: (ex.started, ex.finished) for ex in executors)
    try:
        expect, calib_s = calibrate_expectations(setup, executors, scenario)
    except MlpiError:
        raise
    except Exception as exc:  # a backend's own failure, named as LoadGen's test names it
        raise backend_failure(setup.backend.name, scenario, out, exc) from exc
    watchdog.measured(batch_seconds(expect, loaded.batch_size, scenario))
    if loaded.pieces is not None:
        loaded.pieces.reset_stats()
    pace_start = pace_snapshot(loaded.placed)  # what set the pace counts from here, as the figures do
    settings, perf_count, departed = write_settings(setup, scenario, mode, expect, calib_s, out, lg)
    if mode != "accuracy":  # an accuracy test issues each sample once
        check_loadgen_memory(settings, scenario)
    if mode in AUDITS:  # passed to LoadGen by path, never read from a working directory
        (out / AUDIT_CONFIG).write_text(audit_config_text(mode, setup.spec.rules), encoding="utf-8")
    sut_impl = make_sut(executors, scenario, plan, settings)
    expected_s = expected_seconds(settings, scenario, mode, setup.dataset.count)
    print(f"mlpi: the {scenario} {mode} test should take about {expected_s:,.0f} s", flush=True)
    live = LiveCounts(out, samples_done(executors), {"phase": "running", "expected_s": expected_s, "started": time.time()})
    live.start()
    elapsed_s, busy_s = run_loadgen(sut_impl, setup.dataset, len(setup.loaded), settings, out, plan, lg)
    live.stop()
    watchdog.stop()
    if mode == "accuracy":
        write_progress(out, phase="scoring")
    devices = (
        device_stats(executors, busy_s, elapsed_s) if loaded.pieces is None else loaded.pieces.stats(elapsed_s)
    )
    record_pace(devices, loaded.placed, pace_start)
    loaded.close()
    accuracy = score_test(setup, outputs, out) if mode == "accuracy" else None
    audit = verify_audit(setup, outputs, scenario, mode, out, plan_path.parent) if mode in AUDITS else None
    return {
        "accuracy": accuracy,
        **({"audit": audit} if audit is not None else {}),
        "performance_sample_count": perf_count,
        **({"conf_departures": departed} if departed else {}),
        "batch_size": loaded.batch_size,
        "batch_unit": "rows" if loaded.sample_rows is not None else "samples",
        "sessions": len(loaded.placed),
        "precision": loaded.main(0).precision,
        **({"precision_detail": detail} if isinstance(detail := getattr(loaded.main(0), "precision_detail", None), str)
           else {}),
        "samples_per_query": MULTISTREAM_SAMPLES_PER_QUERY if scenario == "MultiStream" else None,
        "expectations": expect.__dict__,
        "slots": len(executors),
        "simulated": loaded.simulated,
        "devices": devices,
        **({"nonfinite_batches": finite.nonfinite, "checked_batches": finite.batches} if finite is not None else {}),
    }


class TestSetup:
    """The plan's plugins, resolved in this process: backend, options, model spec, dataset."""

    def __init__(self, plan: Any, registry: Any, backend: Any, options: Any, spec: Any, artifacts: Any, dataset: Any) -> None:
        self.plan, self.registry, self.backend, self.options = plan, registry, backend, options
        #: The graphs to load, by role, the one the dataset feeds first.
        self.spec, self.artifacts, self.dataset = spec, artifacts, dataset
        #: The samples LoadGen keeps loaded, also used for warm-up and calibration.
        self.loaded = list(range(min(dataset.count, performance_count_limit(self))))

    def load_sessions(self, scenario: str) -> LoadedSessions:
        """Every graph on every unit (``--instances`` each in Offline/Server), and the slots
        they give: batches in flight for the SUT, or piece workers for a model with pieces."""
        from mlpi.core.contract.backend import LoadContext
        from mlpi.core.contract.device import Device
        from mlpi.core.engine.batch_axes import adapt
        from mlpi.core.engine.rows import row_batch_size

        plan = self.plan
        device = Device.parse(plan.device)
        pieces = self.spec.pieces
        rows = self.dataset.sample_rows()
        # SingleStream and MultiStream keep one query in flight: further instances would sit
        # idle, unless the sample is spread over them in pieces.
        instances = plan.instances if scenario in ("Offline", "Server") or pieces else 1
        context = LoadContext(
            batch_size=plan.batch_size if pieces or rows is not None else planned_batch_size(plan.batch_size, scenario),
            # int8 calibration feeds the main graph: only where samples are its inputs.
            calibration=calibration_batches(self.dataset) if self.spec.sample_inputs is None else None,
        )
        units = device.units()
        where = placed_roles(self.spec, len(units))
        placed = [
            (str(unit), {role: adapt(self.backend.load(artifact, unit, self.options, plan.precision, context), artifact)
                         for role, artifact in self.artifacts.items() if position in where.get(role, (position,))})
            for position, unit in enumerate(units)
            for _ in range(instances)
        ]
        main_caps = placed[0][1][self.spec.main_role].capabilities
        # Offline and Server keep up to max_in_flight batches in flight per session, one slot
        # each; pieces always do, whatever the scenario.
        spread = scenario in ("Offline", "Server") or pieces
        slots = [
            (unit, sessions)
            for unit, sessions in placed
            for _ in range(min(s.capabilities.max_in_flight for s in sessions.values()) if spread else 1)
        ]
        if pieces:
            loaded = LoadedSessions.with_pieces(placed, slots, self.spec.main_role, scenario, plan.batch_size,
                                                self.spec.samples_in_flight)
        elif rows is not None:  # batches count rows, in every scenario
            largest = int(max(rows[i] for i in self.loaded)) if self.loaded else 1
            batch_size = row_batch_size(plan.batch_size, main_caps.preferred_batch_size, largest, main_caps.max_batch_size)
            effective_batch_size(batch_size, main_caps, "Offline")  # the session's limit, checked
            loaded = LoadedSessions(placed, slots, batch_size, self.spec.main_role, sample_rows=rows)
        else:
            batch_size = effective_batch_size(plan.batch_size, main_caps, scenario)
            loaded = LoadedSessions(placed, slots, batch_size, self.spec.main_role)
        print(
            f"mlpi: {len(placed)} {self.backend.name} session(s) on {device}"
            + (f" ({len(self.artifacts)} graphs each)" if len(self.artifacts) > 1 else "")
            + f", {len(slots)} slot(s){' for pieces' if pieces else ''}, batch size {loaded.batch_size}"
            + (" rows" if rows is not None and not pieces else "")
            + (" (simulated device)" if loaded.simulated else ""),
            flush=True,
        )
        return loaded


class LoadedSessions:
    """Sessions by device unit (a dict by graph role each), the slots they give, the batch
    size they run at; for a model with pieces, the piece workers serving every slot."""

    def __init__(self, placed: list[tuple[str, dict[str, Any]]], slots: list[tuple[str, dict[str, Any]]],
                 batch_size: int, main_role: str, pieces: Any = None, sample_rows: Any = None) -> None:
        self.placed = placed
        #: Rows of each sample where samples are groups of rows (batch_size counts rows).
        self.sample_rows = sample_rows
        self.slots = slots
        self.batch_size = batch_size
        self.main_role = main_role
        self.pieces = pieces
        self.simulated = any(session.simulated for _, sessions in placed for session in sessions.values())

    @classmethod
    def with_pieces(cls, placed: list[tuple[str, dict[str, Any]]], slots: list[tuple[str, dict[str, Any]]],
                    main_role: str, scenario: str, requested: int | None,
                    samples_in_flight: int | None = None) -> LoadedSessions:
        """Piece workers on every slot; the SUT's own slots then hold no sessions: one for
        SingleStream/MultiStream; in Offline/Server one per worker (samples in flight at once),
        at most ``samples_in_flight`` where the model bounds them."""
        from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY
        from mlpi.core.engine.pieces import PieceDispatcher

        caps = placed[0][1][main_role].capabilities
        piece_batch = effective_batch_size(requested, caps, "Offline")
        dispatcher = PieceDispatcher(slots, piece_batch)
        dispatcher.start()
        sample_batch = MULTISTREAM_SAMPLES_PER_QUERY if scenario == "MultiStream" else 1
        in_flight = min(len(slots), samples_in_flight or len(slots)) if scenario in ("Offline", "Server") else 1
        sample_slots = [("", {})] * in_flight
        return cls(placed, sample_slots, sample_batch, main_role, dispatcher)

    def main(self, k: int) -> Any:
        """The main graph's session of placement ``k``."""
        return self.placed[k][1][self.main_role]

    def close(self) -> None:
        if self.pieces is not None:
            self.pieces.stop()
        for _, sessions in self.placed:
            for session in sessions.values():
                session.close()


def placed_roles(spec: Any, units: int) -> dict[str, tuple[int, ...]]:
    """Where the model wants each role it places (unit positions); the main role is everywhere."""
    if spec.placement is None:
        return {}
    where = {role: tuple(int(p) for p in positions) for role, positions in spec.placement(units).items()}
    if spec.main_role in where and set(where[spec.main_role]) != set(range(units)):
        raise ModelError(f"model {spec.name} places its main graph '{spec.main_role}' on some units only",
                         "report this to the model plugin's authors: the main graph runs where the samples are")
    for role, positions in where.items():
        if role not in spec.graphs or not positions or any(p < 0 or p >= units for p in positions):
            raise ModelError(f"model {spec.name} places graph '{role}' on units {list(positions)} of {units}",
                             "report this to the model plugin's authors")
    return where


def open_test(plan: Any) -> TestSetup:
    from mlpi.core.engine.planning import open_dataset, spec_of_plan
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.options import build_options
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(plan.plugins_file))
    backend = registry.backend(plan.backend)
    options = build_options(backend.Options, [("plan", plan.backend_options)], backend.name)
    artifacts = plan.model.artifacts()
    spec = spec_of_plan(registry, plan)
    dataset = open_dataset(
        registry, spec, plan.model.inputs, plan.dataset, plan.dataset_path, plan.dataset_count, plan.seed
    )
    return TestSetup(plan, registry, backend, options, spec, artifacts, dataset)


def build_executors(setup: TestSetup, loaded: LoadedSessions, scenario: str, out: Path, lg: Any,
                    probe: Any = None) -> tuple[list[Any], list[Any]]:
    """One executor per slot, each with its own pipeline (the model's, or the default)."""
    from mlpi.core.contract.pipeline import PipelineContext
    from mlpi.core.engine.executor import BatchExecutor

    spec, dataset, batch_size = setup.spec, setup.dataset, loaded.batch_size
    dataset.load(setup.loaded)
    _feed_constants(setup, loaded)
    if spec.sample_inputs is None:
        try:
            outputs = observed_outputs(loaded.main(0), dataset, setup.loaded[0], batch_first=spec.outputs_batch_first,
                                       probe=probe)
        except MlpiError:
            raise
        except Exception as exc:  # the backend's first batch failed
            raise backend_failure(setup.backend.name, scenario, out, exc) from exc
    else:  # samples are not the graph's feeds: its pipeline knows its outputs
        outputs = list(loaded.main(0).outputs)
    on_error = error_handler(setup.backend.name, scenario, out)
    executors = []
    for unit, sessions in loaded.slots:
        postprocess = spec.postprocess(outputs, batch_size)
        pipeline = None
        if spec.pipeline is not None:
            pipeline = spec.pipeline(
                PipelineContext(sessions, dataset, batch_size, outputs, postprocess, loaded.pieces, spec.main_role,
                                unit, loaded.placed)
            )
        executors.append(
            BatchExecutor(
                sessions.get(spec.main_role), dataset, postprocess, batch_size, lg.QuerySamplesComplete,
                lg.QuerySampleResponse, on_error, device=unit, pipeline=pipeline, check_rows=spec.outputs_batch_first,
                sample_rows=loaded.sample_rows,
            )
        )
    return executors, outputs


def _feed_constants(setup: TestSetup, loaded: LoadedSessions) -> None:
    """The value each input that is not batched gets in every batch: the first loaded sample's,
    which every loaded sample must share (a UsageError names two that differ)."""
    from mlpi.core.engine.batch_axes import AxesSession, check_constants

    names = [s.name for s in setup.artifacts[setup.spec.main_role].inputs if s.batch_axis is None]
    if not names or not setup.loaded:
        return
    check_constants(setup.dataset, setup.loaded, names)
    sample = setup.dataset.sample(setup.loaded[0])
    for _, sessions in loaded.placed:
        for session in sessions.values():
            if isinstance(session, AxesSession):
                session.set_constants(sample)


#: A model without MLPerf rules keeps at most this many bytes of samples loaded ...
PRELOAD_BUDGET_BYTES = 1 << 30
#: ... and at most this many samples (LoadGen loads them before timing: a million tiny
#: synthetic samples took minutes to make, and gain nothing over a few thousand).
PRELOAD_SAMPLES = 8192


def performance_count_limit(setup: TestSetup) -> int:
    """LoadGen's performance sample count: the model's rule, bounded by what the data has;
    without a rule, what fits in PRELOAD_BUDGET_BYTES (samples of a known size), at most
    PRELOAD_SAMPLES."""
    import numpy as np

    wanted = setup.spec.rules.performance_sample_count
    available = setup.dataset.performance_count
    if wanted is not None:
        return min(wanted, available)
    shapes = [spec.sample_shape for spec in setup.dataset.inputs]
    if any(d is None for shape in shapes for d in shape):
        return available
    sample_bytes = sum(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        for spec, shape in zip(setup.dataset.inputs, shapes)
    )
    return max(1, min(available, PRELOAD_SAMPLES, PRELOAD_BUDGET_BYTES // max(sample_bytes, 1)))


def error_handler(backend_name: str, scenario: str, out: Path) -> Any:
    def on_error(exc: BaseException) -> None:
        # LoadGen cannot be aborted from Python: record the error and end the process.
        if isinstance(exc, MlpiError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            err = exc
        else:
            err = backend_failure(backend_name, scenario, out, exc)
        _write(out, {"status": "failed", "error": _error(err)})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)

    return on_error


def start_watchdog(setup: TestSetup, loaded: LoadedSessions, scenario: str, mode: str, out: Path) -> tuple[Any, Any]:
    """The test's watchdog (:mod:`mlpi.core.engine.watchdog`), watching the first batch (the
    returned probe's counts) and the piece workers; the executors are added once made."""
    from mlpi.core.contract.errors import RunFailed
    from mlpi.core.engine.watchdog import Counts, Watchdog, dump_stacks

    name = setup.backend.name
    limit = setup.plan.extra.get("watchdog_s")

    def fire(what: str) -> None:
        dump_stacks()
        err = RunFailed(f"backend '{name}' stopped responding during the {scenario} {mode} test: {what}",
                        f"every thread's stack is in {out / 'harness.log'}; --watchdog-s S sets the limit (0: off)")
        _write(out, {"status": "failed", "error": _error(err)})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)

    probe = Counts()
    sources = [lambda: (probe.started, probe.finished)]
    if loaded.pieces is not None:
        sources.append(lambda: (loaded.pieces.started, loaded.pieces.finished))
    watchdog = Watchdog(sources, fire, None if limit is None else float(limit))
    watchdog.start()
    return watchdog, probe


def backend_failure(name: str, scenario: str, out: Path, exc: BaseException) -> MlpiError:
    """A backend's exception as the one error a user reads; its traceback goes to harness.log."""
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    return MlpiError(f"backend '{name}' failed during the {scenario} test: {type(exc).__name__}: {exc}",
                     f"see {out / 'harness.log'}")


def batch_seconds(expect: Any, batch_size: int, scenario: str) -> float:
    """How long calibration found one batch to take (0: not measured)."""
    if scenario == "SingleStream":
        return float(expect.latency_s)
    if scenario == "MultiStream":
        return float(expect.multistream_latency_s)
    return batch_size / expect.throughput_qps if expect.throughput_qps > 0 else 0.0


def calibrate_expectations(setup: TestSetup, executors: list[Any], scenario: str) -> tuple[Any, float]:
    from mlpi.core.engine.calibrate import calibrate

    plan = setup.plan
    loaded = setup.loaded
    calib_s = 0.5 if plan.quick or (plan.duration_s is not None and plan.duration_s < 60) else 2.0
    expect = tuned_expectations(plan, scenario, calibrate(executors, scenario, loaded, calib_s, plan.target_qps))
    print(f"mlpi: {scenario} expectations from {expect.source}: {expect.describe(scenario)}", flush=True)
    setup.dataset.unload(loaded)
    return expect, calib_s


def write_settings(setup: TestSetup, scenario: str, mode: str, expect: Any, calib_s: float, out: Path,
                   lg: Any) -> tuple[Any, int | None, list[str]]:
    """user.conf from the model's rules and the expectations, merged with the user's conf files
    (:mod:`mlpi.core.engine.loadgen_conf`); LoadGen's TestSettings from it, with the seeds of the
    model's round; and where the user's files depart from the rules (not valid for submission)."""
    from mlpi.core.contract.rounds import round_seeds
    from mlpi.core.engine.loadgen_conf import files_of, merged, overridden, seeds
    from mlpi.core.engine.scenario import user_conf

    plan, spec = setup.plan, setup.spec
    conf_path = out / "user.conf"
    perf_count = performance_sample_count(spec.rules.performance_sample_count, setup.dataset.performance_count)
    model_key = loadgen_model_key(spec.rules.loadgen_key, plan.model.name)
    own = exact_conf(
        user_conf(model_key, scenario, expect, min_duration_s=plan.min_duration_s, performance_sample_count=perf_count,
                  short_calibration=calib_s < 1, rules=spec.rules if spec.rules.retired else None,
                  equal_issue=spec.rules.equal_issue), plan, model_key, scenario)
    files = files_of(plan)
    conf_path.write_text(merged(own, model_key, scenario, files) if files else own, encoding="utf-8")
    for change in overridden(own, model_key, scenario, files):
        print(f"mlpi: --user-conf sets {change} (mlpi's value -> the file's)", flush=True)
    settings = lg.TestSettings()
    if settings.FromConfig(str(conf_path), model_key, scenario) != 0:
        raise UsageError(f"LoadGen rejected {conf_path}", "see harness.log for the line it names")
    # LoadGen reads seeds only from its built-in mlperf.conf: the model's round's, then the
    # --mlperf-conf file's, are set here
    for name, value in {**round_seeds(spec.rules.round), **seeds(files, model_key, scenario)}.items():
        setattr(settings, name, value)
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    departed = (departures(own, model_key, scenario, files, settings, rule_settings(setup, model_key, scenario, lg))
                if files else [])
    return settings, perf_count, departed


def rule_settings(setup: TestSetup, model_key: str, scenario: str, lg: Any) -> Any:
    """The TestSettings the MLPerf rules give this test: LoadGen's built-in mlperf.conf and a
    retired model's own rule lines, without anything mlpi or the user chose (what a user's conf
    file is compared with). Neither call counts as a conf file of the test (LoadGen counts only
    user confs), so LoadGen logs no error for them."""
    import tempfile

    from mlpi.core.engine.scenario import retired_rule_lines

    rules = lg.TestSettings()
    rules.FromConfig("", model_key, scenario, 0)  # conf_type 0: the built-in mlperf.conf alone
    if setup.spec.rules.retired:
        with tempfile.NamedTemporaryFile("w", suffix=".conf", encoding="utf-8") as handle:
            handle.write("\n".join(retired_rule_lines(model_key, scenario, setup.spec.rules)) + "\n")
            handle.flush()
            rules.FromConfig(handle.name, model_key, scenario, 2)  # conf_type 2: the file alone
    return rules


def check_loadgen_memory(settings: Any, scenario: str) -> None:
    """Refuse the test before LoadGen generates queries it cannot hold (see
    :mod:`mlpi.core.engine.loadgen_memory`), from the settings LoadGen will run with."""
    from mlpi.core.engine.loadgen_memory import check_fits, generated_queries
    from mlpi.core.engine.planning import available_memory_bytes

    duration_s = settings.min_duration_ms / 1e3
    qps = {"Offline": settings.offline_expected_qps, "Server": settings.server_target_qps}.get(scenario, 0.0)
    latency_s = (settings.single_stream_expected_latency_ns if scenario == "SingleStream"
                 else settings.multi_stream_expected_latency_ns) / 1e9
    queries = generated_queries(scenario, qps=qps, latency_s=latency_s, duration_s=duration_s,
                                min_queries=settings.min_query_count)
    if settings.max_query_count > 0 and scenario != "Offline":
        queries = min(queries, int(settings.max_query_count))
    rate = f"{qps:,.0f} samples/s" if scenario in ("Offline", "Server") else f"{latency_s * 1e3:,.3g} ms a query"
    check_fits(scenario, queries, available_memory_bytes(), f"{rate} for {duration_s:,.0f} s")


def make_sut(executors: list[Any], scenario: str, plan: Any, settings: Any) -> Any:
    from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY
    from mlpi.core.engine.sut import InlineSUT, OfflineSUT, ServerSUT

    if scenario in ("SingleStream", "MultiStream"):
        per_query = MULTISTREAM_SAMPLES_PER_QUERY if scenario == "MultiStream" else 1
        return InlineSUT(executors[0], per_query)
    if scenario == "Offline":
        return OfflineSUT(executors)
    timeout_s = server_batch_timeout_s(plan.batch_timeout_ms, settings.server_target_latency_ns)
    return ServerSUT(executors, executors[0].batch_size, timeout_s)


def run_loadgen(sut_impl: Any, dataset: Any, perf_count: int, settings: Any, out: Path, plan: Any, lg: Any) -> tuple[float, Any]:
    """LoadGen's test itself; returns the wall time and the busy time per unit."""
    log_output = lg.LogOutputSettings()
    log_output.outdir = str(out)
    log_output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = log_output
    log_settings.enable_trace = False

    sut = lg.ConstructFastSUT(sut_impl.issue, sut_impl.flush)
    qsl = lg.ConstructQSL(dataset.count, perf_count, dataset.load, dataset.unload)
    audit = str(plan.extra.get("audit_config") or out / AUDIT_CONFIG)  # absent: no audit
    sut_impl.start()
    # Everything made so far lives for the whole test: keep the collector from rescanning it.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, audit)
    finally:
        elapsed_s = time.perf_counter() - started
        busy_s = sut_impl.busy_seconds() if hasattr(sut_impl, "busy_seconds") else None
        sut_impl.stop()
        lg.DestroyQSL(qsl)
        lg.DestroyFastSUT(sut)
    return elapsed_s, busy_s


def score_test(setup: TestSetup, outputs: list[Any], out: Path) -> dict[str, Any] | None:
    """Score the accuracy log with the model's scorer; write accuracy.txt."""
    from mlpi.core.contract.accuracy import read_accuracy_log

    spec, dataset = setup.spec, setup.dataset
    if spec.score is None:
        return None
    if not dataset.has_ground_truth:
        if spec.scoring_optional:
            return None
        raise UsageError(
            f"dataset '{setup.plan.dataset}' has no ground truth, so {spec.name}'s accuracy cannot be scored",
            "run accuracy mode with a dataset that has ground truth (`mlpi models` lists them)",
        )
    result = score_responses(spec, read_accuracy_log(out / "mlperf_log_accuracy.json", spec.repeated_responses), dataset, outputs)
    from mlpi.core.results.rundir import write_bytes_atomic

    write_bytes_atomic(out / "accuracy.txt", (result.report + "\n").encode("utf-8"))
    print(f"mlpi: {result.report}", flush=True)
    return result.to_json()


def verify_audit(setup: TestSetup, outputs: list[Any], scenario: str, audit: str, out: Path,
                 this_run: Path) -> dict[str, Any]:
    """Check the audit's logs against the run it audits (``plan.extra["audit_reference"]``, else
    this run) as MLCommons' verification does; lay out the submission's ``TEST0x`` folder."""
    from mlpi.core.engine.audit_check import verify

    reference = Path(setup.plan.extra.get("audit_reference") or this_run) / scenario
    scorer = None
    if setup.spec.score is not None and setup.dataset.has_ground_truth:
        from mlpi.core.contract.accuracy import read_accuracy_log

        def scorer(log: Path) -> Any:
            return score_responses(setup.spec, read_accuracy_log(log, setup.spec.repeated_responses), setup.dataset,
                                   outputs)
    verification = verify(audit, setup.spec.rules, reference, out, out.parent, scorer)
    print(f"mlpi: {audit} {'PASS' if verification.passed else 'FAIL'} "
          f"(see {out.parent / 'verify_performance.txt'})", flush=True)
    return verification.to_json()


def score_responses(spec: Any, responses: Any, dataset: Any, outputs: Any) -> Any:
    """The model's scorer on ``responses``, held to the target its rules set."""
    result = spec.score(responses, dataset, outputs)
    return result.with_target(spec.quality_target)


def performance_sample_count(rule: int | None, available: int) -> int | None:
    """Override mlperf.conf's performance sample count only where the data has fewer samples
    (a subset for development): LoadGen cannot load samples that are not there."""
    if rule is not None and rule > available:
        return available
    return None


def planned_batch_size(requested: int | None, scenario: str) -> int | None:
    """The largest batch a scenario will send, as known before any session exists."""
    from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY

    if scenario == "SingleStream":
        return 1
    if scenario == "MultiStream":
        return MULTISTREAM_SAMPLES_PER_QUERY
    return requested


def calibration_batches(dataset: Any, limit: int = 500) -> Any:
    """``calibration(batch_size)``: the dataset's first ``limit`` samples as feed batches,
    loaded for the build and unloaded after, for backends that calibrate int8 themselves."""
    import numpy as np

    def batches(batch_size: int) -> Any:
        indices = list(range(min(dataset.count, limit)))
        dataset.load(indices)
        try:
            for start in range(0, len(indices), batch_size):
                rows = indices[start : start + batch_size]
                feeds = {s.name: np.zeros((batch_size, *s.sample_shape), dtype=s.dtype) for s in dataset.inputs}
                dataset.gather(rows, feeds)
                yield {name: array[: len(rows)] for name, array in feeds.items()}
        finally:
            dataset.unload(indices)

    return batches


def effective_batch_size(requested: int | None, caps: Any, scenario: str) -> int:
    """The executor batch size for a scenario, checked against what the session accepts."""
    from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY

    # SingleStream and MultiStream fix their own batch; --batch-size is for Offline and Server
    # (a backend that builds for the run's batch may accept no more than that).
    if scenario == "SingleStream":
        return 1
    if scenario == "MultiStream":
        limit = caps.max_batch_size or MULTISTREAM_SAMPLES_PER_QUERY
        return min(MULTISTREAM_SAMPLES_PER_QUERY, limit)
    bs = requested or caps.preferred_batch_size
    if caps.max_batch_size is not None and bs > caps.max_batch_size:
        raise ModelError(
            f"batch size {bs} is larger than the session accepts ({caps.max_batch_size})",
            f"pass --batch-size {caps.max_batch_size} or less, or use a model with a dynamic batch dimension",
        )
    return bs


def server_batch_timeout_s(requested_ms: float | None, latency_bound_ns: int) -> float:
    """How long a Server batch may wait to fill: the user's, else 1/20 of the latency bound."""
    if requested_ms is not None:
        return requested_ms / 1e3
    return latency_bound_ns / 1e9 / 20


def observed_outputs(session: Any, dataset: Any, index: int, *, batch_first: bool = True, probe: Any = None) -> list[Any]:
    """Run one sample and describe the outputs as they really are (dynamic dims resolved).

    A model whose outputs are not batch-first (one image's detections as ``[N, 4]``) gets
    the session's own output specs: its postprocessor knows how to read them. ``probe``
    counts the batch for the watchdog."""
    import numpy as np

    from mlpi.core.contract.backend import TensorSpec
    from mlpi.core.contract.errors import RunFailed

    caps = session.capabilities
    rows = caps.max_batch_size if caps.fixed_batch and caps.max_batch_size else 1
    feeds = {s.name: np.zeros((rows, *s.sample_shape), dtype=s.dtype) for s in dataset.inputs}
    dataset.gather([index], feeds)
    if probe is not None:
        probe.started += 1
    outputs = session.run(feeds)
    if probe is not None:
        probe.finished += 1
    if not batch_first:
        return list(session.outputs)
    specs = []
    for spec in session.outputs:
        array = np.asarray(outputs[spec.name])
        declared = tuple(spec.shape)
        axis = _batch_axis_hint(spec.name, array.shape, rows)
        if array.ndim and array.ndim == len(declared) and declared[0] in (None, rows) and array.shape[0] != rows:
            raise RunFailed(f"the backend answered {array.shape[0]} rows of output '{spec.name}' for a batch of {rows}",
                            (f"{axis}; if not, " if axis else "") +
                            "the backend is broken: report it to its authors (mlpi checks every batch's outputs)")
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(
                f"output '{spec.name}' has shape {array.shape}, with no batch dimension of {rows} first"
                + (f" (the file declares {list(declared)})" if declared and declared != array.shape else ""),
                axis or "mlpi needs every output batch-first; export the model with a batch dimension",
            )
        specs.append(TensorSpec(spec.name, array.dtype.name, (None, *array.shape[1:])))
    return specs


def _batch_axis_hint(name: str, shape: tuple[int, ...], rows: int) -> str:
    """Where an output's batch may be when it is not first (a CRNN's ``[time, batch, classes]``,
    which a file may declare as something else): the first later dimension of ``rows``."""
    later = [k for k, size in enumerate(shape) if k and size == rows]
    return f"if its batch is dimension {later[0]}, say so: --batch-axis {name}={later[0]}" if later else ""


def _die_with_parent() -> None:
    """On Linux, have the kernel end this process if the parent dies (e.g. SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _error(exc: MlpiError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}


def _write(out: Path, data: dict[str, Any]) -> None:
    from mlpi.core.results.rundir import write_json_atomic

    write_json_atomic(out / OUTCOME, data)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
