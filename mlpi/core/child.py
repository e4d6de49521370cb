"""One LoadGen test in its own process: ``python -m mlpi.core.child PLAN SCENARIO MODE DIR``.

LoadGen applies mlperf.conf once per process, and a vendor runtime that crashes must not
take the parent down, so every test runs here. The outcome (ok, or the error with its
hint) goes to ``DIR/outcome.json``; LoadGen's logs go to ``DIR``. No ``chdir``: the audit
config path is passed explicitly.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mlpi.core.errors import EXIT_FAILURE, MlpiError, ModelError, UsageError

OUTCOME = "outcome.json"


def main(argv: list[str]) -> int:
    import faulthandler
    import signal

    faulthandler.enable()  # a runtime that crashes the process leaves its stack in harness.log
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # LoadGen blocks the main thread: die at once
    _die_with_parent()
    plan_path, scenario, mode, outdir = argv
    print(f"mlpi: {scenario} {mode} test, pid {os.getpid()}", flush=True)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        details = run_test(Path(plan_path), scenario, mode, out)
    except MlpiError as exc:
        _write(out, {"status": "failed", "error": _error(exc), "seconds": time.time() - started})
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a backend's own failure, reported as such
        traceback.print_exc()
        err = MlpiError(f"{type(exc).__name__}: {exc}", f"see {out / 'harness.log'}; re-run with --debug")
        _write(out, {"status": "failed", "error": _error(err), "seconds": time.time() - started})
        return EXIT_FAILURE
    details.update(status="ok", seconds=time.time() - started)
    _write(out, details)
    return 0


def run_test(plan_path: Path, scenario: str, mode: str, out: Path) -> dict[str, Any]:
    import mlperf_loadgen as lg

    from mlpi.core.backend import LoadContext, ModelArtifact
    from mlpi.core.calibrate import calibrate
    from mlpi.core.config import PluginsConfig
    from mlpi.core.device import Device
    from mlpi.core.options import build_options
    from mlpi.core.plan import Plan
    from mlpi.core.plugins import Registry
    from mlpi.core.rules import MULTISTREAM_SAMPLES_PER_QUERY
    from mlpi.core.scenario import user_conf
    from mlpi.core.dispatch import device_stats
    from mlpi.core.sut import BatchExecutor, InlineSUT, OfflineSUT, ServerSUT

    plan = Plan.read(plan_path)
    registry = Registry(PluginsConfig.load(plan.plugins_file))
    backend = registry.backend(plan.backend)
    options = build_options(backend.Options, [("plan", plan.backend_options)], backend.name)
    artifact = ModelArtifact(
        Path(plan.model.path), plan.model.sha256, tuple(plan.model.inputs), tuple(plan.model.outputs)
    )
    spec = model_spec(registry, plan)
    factory = registry.resolve("datasets", plan.dataset).obj()
    dataset = factory.open(
        artifact.inputs, Path(plan.dataset_path) if plan.dataset_path else None, plan.dataset_count, plan.seed
    )

    device = Device.parse(plan.device)
    # SingleStream and MultiStream keep one query in flight: further instances would sit idle.
    instances = plan.instances if scenario in ("Offline", "Server") else 1
    context = LoadContext(batch_size=planned_batch_size(plan.batch_size, scenario), calibration=calibration_batches(dataset))
    placed = [
        (str(unit), backend.load(artifact, unit, options, plan.precision, context))
        for unit in device.units()
        for _ in range(instances)
    ]
    sessions = [session for _, session in placed]
    caps = sessions[0].capabilities
    batch_size = effective_batch_size(plan.batch_size, caps, scenario)
    # Offline and Server keep up to max_in_flight batches in flight per session, one slot each.
    slots = [
        (unit, session)
        for unit, session in placed
        for _ in range(session.capabilities.max_in_flight if scenario in ("Offline", "Server") else 1)
    ]
    simulated = any(session.simulated for session in sessions)
    print(
        f"mlpi: {len(sessions)} {backend.name} session(s) on {device}, {len(slots)} slot(s), batch size {batch_size}"
        + (" (simulated device)" if simulated else ""),
        flush=True,
    )

    loaded = list(range(min(dataset.count, dataset.performance_count)))
    dataset.load(loaded)
    outputs = observed_outputs(sessions[0], dataset, loaded[0])

    def on_error(exc: BaseException) -> None:
        # LoadGen cannot be aborted from Python: record the error and end the process.
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        err = exc if isinstance(exc, MlpiError) else MlpiError(
            f"backend '{backend.name}' failed during the {scenario} test: {type(exc).__name__}: {exc}",
            f"see {out / 'harness.log'}",
        )
        _write(out, {"status": "failed", "error": _error(err)})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)

    executors = [
        BatchExecutor(
            session, dataset, spec.postprocess(outputs, batch_size), batch_size, lg.QuerySamplesComplete,
            lg.QuerySampleResponse, on_error, device=unit,
        )
        for unit, session in slots
    ]
    calib_s = 0.5 if plan.quick or (plan.duration_s is not None and plan.duration_s < 60) else 2.0
    expect = calibrate(executors, scenario, loaded, calib_s, plan.target_qps)
    print(f"mlpi: {scenario} expectations from {expect.source}: {expect}", flush=True)
    dataset.unload(loaded)

    conf_path = out / "user.conf"
    perf_count = performance_sample_count(plan.model.rules_key, dataset.performance_count)
    model_key = loadgen_model_key(plan.model.rules_key, plan.model.name)
    conf_path.write_text(
        user_conf(model_key, scenario, expect, min_duration_s=plan.min_duration_s, performance_sample_count=perf_count,
                  short_calibration=calib_s < 1),
        encoding="utf-8",
    )
    settings = lg.TestSettings()
    if settings.FromConfig(str(conf_path), model_key, scenario) != 0:
        raise UsageError(f"LoadGen rejected {conf_path}", "see harness.log for the line it names")
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly

    if scenario in ("SingleStream", "MultiStream"):
        per_query = MULTISTREAM_SAMPLES_PER_QUERY if scenario == "MultiStream" else 1
        sut_impl: Any = InlineSUT(executors[0], per_query)
    elif scenario == "Offline":
        sut_impl = OfflineSUT(executors)
    else:
        timeout_s = server_batch_timeout_s(plan.batch_timeout_ms, settings.server_target_latency_ns)
        sut_impl = ServerSUT(executors, batch_size, timeout_s)

    log_output = lg.LogOutputSettings()
    log_output.outdir = str(out)
    log_output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = log_output
    log_settings.enable_trace = False

    sut = lg.ConstructFastSUT(sut_impl.issue, sut_impl.flush)
    qsl = lg.ConstructQSL(dataset.count, dataset.performance_count, dataset.load, dataset.unload)
    audit = str(plan.extra.get("audit_config") or out / "audit.config")
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
    for session in sessions:
        session.close()
    accuracy = None
    if mode == "accuracy" and spec.score is not None and dataset.labels() is not None:
        from mlpi.core.accuracy import read_accuracy_log

        result = spec.score(read_accuracy_log(out / "mlperf_log_accuracy.json"), dataset, outputs)
        (out / "accuracy.txt").write_text(result.report + "\n", encoding="utf-8")
        print(f"mlpi: {result.report}", flush=True)
        accuracy = result.to_json()
    return {
        "accuracy": accuracy,
        "performance_sample_count": perf_count,
        "batch_size": batch_size,
        "sessions": len(sessions),
        "precision": sessions[0].precision,
        "samples_per_query": MULTISTREAM_SAMPLES_PER_QUERY if scenario == "MultiStream" else None,
        "expectations": expect.__dict__,
        "slots": len(executors),
        "simulated": simulated,
        "devices": device_stats(executors, busy_s, elapsed_s),
    }


def model_spec(registry: Any, plan: Any) -> Any:
    from mlpi.core.model import ModelSpec, load_spec

    if plan.extra.get("registered_model"):
        return load_spec(registry.resolve("models", plan.model.name).obj)
    return ModelSpec.for_file(Path(plan.model.path))


def loadgen_model_key(rules_key: str | None, name: str) -> str:
    """The model name LoadGen looks up in mlperf.conf. A model outside MLPerf's list gets a
    name that cannot collide with one inside it (a file called resnet50.onnx is not ResNet50)."""
    return rules_key or f"custom_{name}"


def performance_sample_count(rules_key: str | None, available: int) -> int | None:
    """Override mlperf.conf's performance sample count only where the data has fewer samples
    (a subset for development): LoadGen cannot load samples that are not there."""
    from mlpi.core.rules import RULES

    rules = RULES.get(rules_key or "")
    if rules is not None and rules.performance_sample_count > available:
        return available
    return None


def planned_batch_size(requested: int | None, scenario: str) -> int | None:
    """The largest batch a scenario will send, as known before any session exists."""
    from mlpi.core.rules import MULTISTREAM_SAMPLES_PER_QUERY

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
    from mlpi.core.rules import MULTISTREAM_SAMPLES_PER_QUERY

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


def observed_outputs(session: Any, dataset: Any, index: int) -> list[Any]:
    """Run one sample and describe the outputs as they really are (dynamic dims resolved)."""
    import numpy as np

    from mlpi.core.backend import TensorSpec

    caps = session.capabilities
    rows = caps.max_batch_size if caps.fixed_batch and caps.max_batch_size else 1
    feeds = {s.name: np.zeros((rows, *s.sample_shape), dtype=s.dtype) for s in dataset.inputs}
    dataset.gather([index], feeds)
    outputs = session.run(feeds)
    specs = []
    for spec in session.outputs:
        array = np.asarray(outputs[spec.name])
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(
                f"output '{spec.name}' has shape {array.shape}, with no batch dimension of {rows}",
                "mlpi needs every output batch-first; export the model with a batch dimension",
            )
        specs.append(TensorSpec(spec.name, array.dtype.name, (None, *array.shape[1:])))
    return specs


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
    from mlpi.core.results import write_json_atomic

    write_json_atomic(out / OUTCOME, data)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
