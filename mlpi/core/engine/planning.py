"""Planning a run: resolve what the user asked for and check it before any timing.

``build_plan`` turns a :class:`RunRequest` into a validated :class:`Plan` or raises the
error that names the fix; ``recheck_plan`` checks a saved plan against this machine again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.backend import fixed_batch_size
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DeviceError,
    ModelError,
    PluginError,
    UsageError,
    suggest,
)
from mlpi.core.contract.model import ModelSpec
from mlpi.core.contract.pipeline import MAIN_GRAPH
from mlpi.core.contract.rules import MODES, SCENARIOS
from mlpi.core.engine.artifacts import cached, recorded_fingerprint
from mlpi.core.engine.batch_axes import EXTRA_KEY as AXES_KEY
from mlpi.core.engine.batch_axes import parse_batch_axes, resolve_batch_axes
from mlpi.core.engine.cache import cache_root
from mlpi.core.engine.loadgen_conf import EXTRA_KEY as CONF_KEY
from mlpi.core.engine.loadgen_conf import ConfFile, check_applies, loadgen_model_key
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.plan import GraphRef, ModelRef, Plan, combined_digest
from mlpi.core.engine.precision import DERIVED
from mlpi.core.engine.precision_plan import EXTRA_KEY as PRECISION_KEY
from mlpi.core.engine.precision_plan import (
    PrecisionRequest,
    calibrates_on_run_data,
    model_precision,
)
from mlpi.core.engine.shapes import EXTRA_KEY as SHAPES_KEY
from mlpi.core.engine.shapes import apply_shapes, parse_shape_options, symbolic_dims
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.options import build_options, options_to_json, thread_limit
from mlpi.core.plugins.registry import Registry
from mlpi.core.results.rundir import write_json_atomic


@dataclass
class RunRequest:
    """What the user asked for, before anything is resolved or checked."""

    backend: str | None = None
    device: str | None = None  # None: cpu, or the first device kind of the named backend
    model: str | None = None
    model_path: str | None = None
    dataset: str | None = None  # None: synthetic, or the model's first dataset where synthetic cannot serve it
    dataset_path: str | None = None
    dataset_count: int | None = None
    scenarios: list[str] = field(default_factory=lambda: ["Offline"])
    mode: str = "performance"
    batch_size: int | None = None
    instances: int = 1
    precision: str | None = None
    target_qps: float | None = None
    quick: bool = False
    duration_s: float | None = None
    batch_timeout_ms: float | None = None
    options: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)
    watchdog_s: float | None = None  # None: the default limit; 0: off
    plugins_file: str | None = None
    seed: int = 0
    weights: str | None = None  # "official" or "random" for a registered model; None: official if cached
    audits: list[str] = field(default_factory=list)  # compliance audits to run after the tests (TEST01, TEST04)
    against: str | None = None  # the run directory the audits compare with; None: this run
    #: Per scenario, its own batch_size, instances and expectation (a tuned profile's); see
    #: mlpi.core.engine.scenario_settings. ``profile``: where they came from, kept in the plan.
    scenario_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    #: LoadGen conf files merged into each test's user.conf (mlpi.core.engine.loadgen_conf).
    user_conf: str | None = None
    mlperf_conf: str | None = None
    #: --shape values, NAME=DIMS: dynamic dimensions fixed (mlpi.core.engine.shapes).
    shapes: list[str] = field(default_factory=list)
    #: --batch-axis values, NAME=K or NAME=none (mlpi.core.engine.batch_axes).
    batch_axes: list[str] = field(default_factory=list)
    #: How --precision is derived (mlpi.core.engine.precision_plan): --calibration (official,
    #: dataset or a list file), --calibration-path, -P KEY=VALUE.
    calibration: str | None = None
    calibration_path: str | None = None
    precision_options: dict[str, str] = field(default_factory=dict)


def parse_scenarios(values: list[str]) -> list[str]:
    """Case-insensitive scenario names, ``all`` for every one; order kept, duplicates dropped."""
    by_lower = {s.lower(): s for s in SCENARIOS}
    chosen: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.lower() == "all":
                chosen.extend(SCENARIOS)
            elif item.lower() in by_lower:
                chosen.append(by_lower[item.lower()])
            else:
                raise UsageError(f"unknown scenario '{item}'", f"{suggest(item, list(SCENARIOS))} (or all)")
    return list(dict.fromkeys(chosen))


def parse_modes(mode: str) -> list[str]:
    if mode == "both":
        return list(MODES)
    if mode not in MODES:
        raise UsageError(f"unknown mode '{mode}'", "choose performance, accuracy or both")
    return [mode]


def build_plan(request: RunRequest, config: PluginsConfig | None = None) -> Plan:
    """Resolve and check everything a run needs; raise the error that names the fix."""
    config = config or PluginsConfig.load(request.plugins_file)
    registry = Registry(config)
    scenarios = parse_scenarios(request.scenarios)
    modes = parse_modes(request.mode)
    _check_numbers(vars(request))

    # an empty --backend, --device or --model is a mistake, never "the default"
    if request.device is None and request.backend is not None:
        backend = registry.backend(request.backend)
        device = Device(backend.device_kinds[0]) if backend.device_kinds else Device("cpu")
    else:
        device = Device.parse(request.device if request.device is not None else "cpu")
        backend = registry.backend(request.backend if request.backend is not None else registry.default_backend(device.kind))
    if device.kind not in backend.device_kinds:
        raise DeviceError(
            f"backend '{backend.name}' cannot use device kind '{device.kind}'",
            f"it runs on: {', '.join(backend.device_kinds)}; `mlpi backends` shows which backend runs where",
        )
    backend.version()  # raises the install hint when the runtime is missing
    _check_device(backend, device)
    if request.precision is not None and request.precision not in backend.precisions:
        raise UsageError(
            f"backend '{backend.name}' cannot run precision '{request.precision}'",
            f"choose one of: {', '.join(backend.precisions)}",
        )
    layers: list[tuple[str, Any]] = list(registry.backend_options(backend.name))
    layers.append(("--option", request.options))
    options = build_options(backend.Options, layers, backend.name)

    _check_target_memory(request, scenarios)
    model_ref, spec, registered = _resolve_model(request, registry)
    shapes = parse_shape_options(request.shapes)
    if shapes:
        model_ref = _with_shapes(model_ref, shapes)
    model_ref, batch_axes = with_batch_axes(model_ref, spec, parse_batch_axes(request.batch_axes))
    # A model with an official file to fetch is scored only with it; one whose official
    # weights mlpi cannot fetch (DLRM-v2's) may run its accuracy path on random weights, as the
    # reference's debug profile does: the result says the score is not the model's.
    if model_ref.random_weights and "accuracy" in modes and spec.artifact is not None:
        raise UsageError(
            f"accuracy mode needs the official {model_ref.name} weights; random weights are for performance only",
            f"run `mlpi fetch {model_ref.name}`, or pass --model-path FILE, or use --mode performance",
        )
    wanted = PrecisionRequest(request.precision, request.calibration, request.calibration_path, request.precision_options)
    native = backend.native_precision(options, request.precision) if request.precision in DERIVED else None
    on_run_data = calibrates_on_run_data(wanted, spec)
    derives = request.precision in DERIVED and native is None
    # before deriving anything (minutes, for int8): would the backend run a file of that precision?
    _check_backend(backend, model_ref, device, options, request.precision, provisional=derives)
    precision_record = None
    if not on_run_data:  # derived now (from the cache, usually), so the backend checks the file it will load
        model_ref, precision_record = model_precision(model_ref, wanted, spec, registry, native, seed=request.seed)
        if derives:
            _check_backend(backend, model_ref, device, options, request.precision)
    _check_batch_size(request.batch_size, model_ref.inputs)
    batch_memory = (request.batch_size, request.instances, len(device.units()))
    flag = ("--batch-size", "pass --batch-size {fits} or less")
    # before the dataset opens (it may preprocess for minutes), with the model's own shapes;
    # after, with the dataset's (a dynamic dimension resolved)
    _check_batch_memory(*batch_memory, spec.sample_inputs or model_ref.inputs, model_ref.outputs, *flag)
    dataset_name = request.dataset if request.dataset is not None else default_dataset(spec)
    dataset = open_dataset(
        registry, spec, model_ref.inputs, dataset_name, request.dataset_path, request.dataset_count, request.seed
    )
    if dataset.count < 1:
        raise UsageError(f"dataset '{dataset_name}' has no samples", "check --dataset-path and --count")
    _check_grouping(spec, dataset, dataset_name)
    if on_run_data:
        model_ref, precision_record = model_precision(model_ref, wanted, spec, registry, native, dataset, dataset_name,
                                                      request.dataset_path, request.seed)
        _check_backend(backend, model_ref, device, options, request.precision)
    _check_batch_memory(*batch_memory, dataset.inputs, model_ref.outputs, *flag)
    scenario_settings = _check_scenario_settings(request, scenarios, model_ref, dataset.inputs, len(device.units()))
    if "accuracy" in modes and spec.score is not None and not spec.scoring_optional and not dataset.has_ground_truth:
        fitting = [d for d in spec.datasets if d != dataset_name]
        raise UsageError(
            f"dataset '{dataset_name}' has no ground truth, so an accuracy run of {spec.name} cannot be scored",
            f"use --dataset {fitting[0] if fitting else 'NAME'} with its --dataset-path, or --mode performance",
        )

    from mlpi.core.engine.audit_plan import check_audits

    against = Path(request.against) if request.against else None
    data_key = (dataset_name, str(Path(request.dataset_path).resolve()) if request.dataset_path else None,
                request.dataset_count)
    audits = check_audits(request.audits, spec, modes, scenarios, against, model_ref, data_key)
    conf_files = _conf_files(request, loadgen_model_key(spec.rules.loadgen_key, model_ref.name), scenarios)

    return Plan(
        backend=backend.name,
        backend_options=options_to_json(options),
        device=str(device),
        precision=request.precision,
        model=model_ref,
        dataset=dataset_name,
        dataset_path=str(Path(request.dataset_path).resolve()) if request.dataset_path else None,
        dataset_count=request.dataset_count,
        scenarios=scenarios,
        modes=modes,
        batch_size=request.batch_size,
        instances=request.instances,
        target_qps=request.target_qps,
        quick=request.quick,
        duration_s=request.duration_s,
        batch_timeout_ms=request.batch_timeout_ms,
        seed=request.seed,
        plugins_file=config.user_file,  # --plugins, MLPI_PLUGINS or ./plugins.toml: a --plan rerun loads the same
        extra={"registered_model": registered, "rules": spec.rules.to_json() if spec.rules.official else None,
               **({"model_options": options_to_json(spec.options)} if spec.options is not None else {}),
               **({"watchdog_s": request.watchdog_s} if request.watchdog_s is not None else {}),
               **({"audits": audits} if audits else {}),
               **({"audit_reference": str(against)} if audits and against is not None else {}),
               **({"scenario_settings": scenario_settings} if scenario_settings else {}),
               **({"profile": request.profile} if request.profile else {}),
               **({CONF_KEY: {role: conf.to_json() for role, conf in conf_files.items()}} if conf_files else {}),
               **({SHAPES_KEY: shapes} if shapes else {}),
               **({PRECISION_KEY: precision_record} if precision_record else {}),
               **({AXES_KEY: batch_axes} if batch_axes else {})},
    )


def derive_precision(request: RunRequest) -> tuple[ModelRef, dict[str, Any] | None]:
    """``mlpi quantize``: the model ``request`` names, derived for its precision ahead of any run
    (no backend: a backend's own method is a run's choice), with the record a run keeps."""
    if request.precision not in DERIVED:
        raise UsageError(f"mlpi quantize derives fp16, bf16 or int8, not {request.precision or 'nothing'}",
                         "pass --precision int8 (or fp16, bf16)")
    registry = Registry(PluginsConfig.load(request.plugins_file))
    _check_numbers(vars(request))
    model_ref, spec, _ = _resolve_model(request, registry)
    shapes = parse_shape_options(request.shapes)
    if shapes:
        model_ref = _with_shapes(model_ref, shapes)
    model_ref, _ = with_batch_axes(model_ref, spec, parse_batch_axes(request.batch_axes))
    wanted = PrecisionRequest(request.precision, request.calibration, request.calibration_path, request.precision_options)
    dataset = name = None
    if calibrates_on_run_data(wanted, spec):
        name = request.dataset if request.dataset is not None else default_dataset(spec)
        dataset = open_dataset(registry, spec, model_ref.inputs, name, request.dataset_path, request.dataset_count,
                               request.seed)
    return model_precision(model_ref, wanted, spec, registry, None, dataset, name, request.dataset_path, request.seed)


def _check_backend(backend: Any, model_ref: ModelRef, device: Device, options: Any, precision: str | None,
                   provisional: bool = False) -> None:
    """The backend's own checks of every graph on every unit; ``provisional``: the file is yet to
    be derived for ``precision``, so the backend is asked about a graph of that precision."""
    for artifact in model_ref.artifacts().values():
        if provisional:
            artifact = dataclasses.replace(artifact, precision=precision)
        for unit in device.units():
            backend.check(artifact, unit, options, precision)


def with_batch_axes(model_ref: ModelRef, spec: ModelSpec, given: dict[str, int | None]) -> tuple[ModelRef, dict[str, Any]]:
    """The main graph's signature with each tensor's batch axis (:mod:`mlpi.core.engine.batch_axes`)
    and the record of those that are not dimension 0. A model that runs its own pipeline
    feeds its graphs itself: its tensors stay as its plugin declares them."""
    graph = spec.main_graph
    declared = {t.name: t.batch_axis for t in (*graph.inputs, *graph.outputs) if t.batch_axis != 0}
    if spec.pipeline is not None:
        if given:
            raise UsageError(f"{spec.name} runs its own pipeline, which feeds its graphs itself",
                             "drop --batch-axis")
        return model_ref, {}
    path = Path(model_ref.path)
    names = {**symbolic_dims(path, outputs=True), **symbolic_dims(path)}
    # A dimension --shape fixed is no longer a candidate for the batch: an OCR model's
    # [1, 1, 64, image_width] with image_width=128 is batched (of 1) along dimension 0.
    for tensor in model_ref.inputs:
        if tensor.name in names:
            names[tensor.name] = [name if size is None else None for name, size in zip(names[tensor.name], tensor.shape)]
    resolved = resolve_batch_axes(model_ref.inputs, model_ref.outputs, names, given, declared)
    record = resolved.record()
    if not record:
        return model_ref, {}
    return dataclasses.replace(model_ref, inputs=resolved.inputs, outputs=resolved.outputs), record


def _with_shapes(model_ref: ModelRef, shapes: dict[str, str]) -> ModelRef:
    """The model with ``--shape``'s sizes in its main graph's inputs (the file is unchanged)."""
    inputs = apply_shapes(model_ref.inputs, symbolic_dims(Path(model_ref.path)), shapes)
    graphs = dict(model_ref.graphs)
    if model_ref.main_role in graphs:
        graphs[model_ref.main_role] = dataclasses.replace(graphs[model_ref.main_role], inputs=inputs)
    return dataclasses.replace(model_ref, inputs=inputs, graphs=graphs)


def _conf_files(request: RunRequest, model_key: str, scenarios: list[str]) -> dict[str, ConfFile]:
    """``--mlperf-conf`` and ``--user-conf``, read and checked line by line now (a test that
    fails on its conf file after minutes of preprocessing loses those minutes)."""
    files = {role: ConfFile.read(role, path)
             for role, path in (("mlperf_conf", request.mlperf_conf), ("user_conf", request.user_conf)) if path}
    for conf in files.values():
        check_applies(conf, model_key, scenarios)
    return files


def _check_target_memory(request: RunRequest, scenarios: list[str]) -> None:
    """``--target-qps`` decides how many queries LoadGen makes in Offline and Server: refuse
    now a rate whose queries cannot fit in memory (a calibrated rate is checked in the test)."""
    from mlpi.core.contract.rules import OFFICIAL_MIN_DURATION_S
    from mlpi.core.engine.loadgen_memory import check_fits, generated_queries
    from mlpi.core.engine.plan import QUICK_DURATION_S

    if request.target_qps is None:
        return
    duration = request.duration_s or (QUICK_DURATION_S if request.quick else OFFICIAL_MIN_DURATION_S)
    for scenario in scenarios:
        if scenario in ("Offline", "Server"):
            queries = generated_queries(scenario, qps=request.target_qps, duration_s=duration)
            check_fits(scenario, queries, available_memory_bytes(),
                       f"--target-qps {request.target_qps:,.0f} for {duration:,.0f} s")


def _check_scenario_settings(request: RunRequest, scenarios: list[str], model_ref: ModelRef, inputs: Any,
                             units: int) -> dict[str, dict[str, Any]]:
    """Each scenario's own settings (a tuned profile's), held to what the run's flags are held
    to: a batch the model and the memory can take, instances within the thread limit. Only
    the plan's scenarios keep theirs."""
    from mlpi.core.engine.scenario_settings import ScenarioSettings

    source = str((request.profile or {}).get("path") or "the run's scenario settings")
    kept: dict[str, dict[str, Any]] = {}
    for scenario, raw in request.scenario_settings.items():
        if scenario not in scenarios:
            continue
        own = ScenarioSettings.from_json(raw, f"{source}, {scenario}")
        names = {key: f"{scenario} {key} in {source}" for key in _FLAGS}
        _check_numbers(own.to_json(), names, lambda name, want: f"set it to {want} in {source}, or give the flag to replace it")
        _check_batch_size(own.batch_size, model_ref.inputs)
        _check_batch_memory(own.batch_size, own.instances or request.instances, units, inputs, model_ref.outputs,
                            names["batch_size"], "pass --batch-size {fits} or less")
        kept[scenario] = own.to_json()
    return kept


def _check_grouping(spec: ModelSpec, dataset: Any, name: str) -> None:
    """A model whose samples are groups of rows needs a dataset that says how many each has."""
    if spec.grouped_samples and dataset.sample_rows() is None:
        fitting = [d for d in spec.datasets if d != name]
        raise UsageError(
            f"dataset '{name}' makes samples of one row each, and a {spec.name} sample is a group of rows",
            f"use --dataset {fitting[0] if fitting else 'NAME'} (a dataset that groups rows as the benchmark does)",
        )


def default_dataset(spec: ModelSpec) -> str:
    """The dataset a run without ``--dataset`` uses: synthetic data where the model takes it,
    else the model's first dataset (DLRM's samples are groups of rows synthetic data cannot
    make: its criteo dataset makes fake data without a path)."""
    return "synthetic" if "synthetic" in spec.datasets or not spec.datasets else spec.datasets[0]


def recheck_plan(plan: Plan) -> Plan:
    """Check a saved plan against this machine again: its values (as a new run's would be:
    :meth:`Plan.read` has checked them already), the model file must be the same, and the
    dataset must open and a batch fit in memory here."""
    check_plan_values(plan)
    config = PluginsConfig.load(plan.plugins_file)
    registry = Registry(config)
    backend = registry.backend(plan.backend)
    backend.version()
    device = Device.parse(plan.device)
    _check_device(backend, device)
    build_options(backend.Options, [("plan.json", plan.backend_options)], backend.name)
    for graph in plan.model.artifacts().values():
        artifact = inspect_onnx(graph.path)
        if artifact.sha256 != graph.sha256:
            raise ModelError(
                f"{graph.path} changed since the plan was made (sha256 {artifact.sha256[:12]}..., plan has {graph.sha256[:12]}...)",
                "restore the original file, or start a new run without --plan",
            )
    _check_batch_size(plan.batch_size, plan.model.inputs)
    spec = spec_of_plan(registry, plan)
    batch_memory = (plan.batch_size, plan.instances, len(device.units()))
    label = ("the plan's batch_size", "set batch_size to {fits} or less in the plan, or start a new run without --plan")
    _check_batch_memory(*batch_memory, spec.sample_inputs or plan.model.inputs, plan.model.outputs, *label)
    dataset = open_dataset(registry, spec, plan.model.inputs, plan.dataset, plan.dataset_path, plan.dataset_count, plan.seed)
    _check_grouping(spec, dataset, plan.dataset)
    _check_batch_memory(*batch_memory, dataset.inputs, plan.model.outputs, *label)
    return plan


def check_plan_values(plan: Plan, source: str = "the plan") -> None:
    """The values of a saved plan (``source``: its file) held to the rules a new run's are
    held to: scenarios and modes mlpi knows (spelt as plans spell them), a device, numbers
    in range. A plan may have been edited by hand: a UsageError names the key and the file."""
    fix = f"fix it in {source}, or start a new run without --plan"
    for key, known in (("scenarios", SCENARIOS), ("modes", MODES)):
        values = getattr(plan, key)
        if not values:
            raise UsageError(f"{source} has no {key}", fix)
        for value in values:
            if value not in known:
                close = suggest(value, list(known))
                raise UsageError(f"{source} has an unknown {key[:-1]} '{value}' in {key}", f"{close}; {fix}")
        if len(set(values)) != len(values):
            raise UsageError(f"{source} lists a {key[:-1]} twice in {key}", fix)
    try:
        Device.parse(plan.device)
    except UsageError as exc:
        raise UsageError(f"{source}: device {exc.message}", f"{exc.hint}; {fix}") from None
    if not plan.backend or not plan.dataset or not plan.model.name:
        raise UsageError(f"{source} names no backend, model or dataset", fix)
    _check_numbers(vars(plan), {key: key for key in _FLAGS},
                   lambda key, want: f"set {key} to {want} in {source}, or start a new run without --plan", where=f" in {source}")


def spec_of_plan(registry: Registry, plan: Plan) -> ModelSpec:
    """The ModelSpec a plan runs: its registered model's, or one made from its file."""
    if plan.extra.get("registered_model"):
        return configured(registry.model(plan.model.name), plan.extra.get("model_options") or {}, "plan.json")
    return ModelSpec.for_file(Path(plan.model.path))


def configured(spec: ModelSpec, values: Mapping[str, Any], source: str = "--model-option") -> ModelSpec:
    """``spec`` for the model options ``values`` (a model without options takes none)."""
    if spec.Options is None or spec.configure is None:
        if values:
            raise UsageError(f"model {spec.name} has no options ({', '.join(sorted(values))} given)",
                             f"drop {source}; `mlpi models` lists the models that take options")
        return spec
    if not values:
        return spec
    return spec.configure(build_options(spec.Options, [(source, values)], spec.name, kind="model"))


def open_dataset(
    registry: Registry, spec: ModelSpec, inputs: Any, name: str, path: str | None, count: int | None, seed: int = 0,
    *, for_scoring: bool = False,
) -> Any:
    """Dataset ``name`` opened for ``spec``: its inputs (the model's own sample inputs where
    it declares them, else the main graph's), data parameters and sample count."""
    if spec.sample_inputs is not None:
        inputs = list(spec.sample_inputs)
    constants = tuple(s.name for s in inputs if s.batch_axis is None)
    inputs = [s.batch_first() for s in inputs]  # datasets make samples; the core batches them along the front
    factory = registry.dataset(name)
    if factory.needs_path and not path:
        raise UsageError(f"dataset '{name}' needs --dataset-path", "point it at the dataset's folder")
    return factory.open(
        DatasetRequest(
            inputs=inputs,
            params=spec.data,
            path=Path(path) if path else None,
            count=count,
            seed=seed,
            performance_count=spec.rules.performance_sample_count,
            for_scoring=for_scoring,
            constant_inputs=constants,
        )
    )


def _check_batch_size(batch_size: int | None, inputs: list[Any]) -> None:
    """A model whose inputs fix the batch dimension runs at most that many samples at once."""
    limit = fixed_batch_size(inputs)
    if batch_size is not None and limit is not None and batch_size > limit:
        raise UsageError(
            f"--batch-size {batch_size} is larger than the model's fixed batch dimension ({limit})",
            f"pass --batch-size {limit} or less, or export the model with a dynamic batch dimension",
        )


#: The command-line flag of each number a run takes.
_FLAGS = {"seed": "--seed", "batch_size": "--batch-size", "instances": "--instances", "dataset_count": "--count",
          "target_qps": "--target-qps", "duration_s": "--duration", "batch_timeout_ms": "--batch-timeout-ms"}


def _pass_flag(flag: str, want: str) -> str:
    return f"pass {flag} {want}"


def _check_numbers(values: Mapping[str, Any], names: Mapping[str, str] = _FLAGS,
                   fix: Callable[[str, str], str] = _pass_flag, where: str = "") -> None:
    """The run's numbers (``values``: a RunRequest's or a Plan's fields; ``names``: how the
    user spells each one) are in range: whole numbers at least 0 or 1, times and rates
    positive and finite (``inf`` and ``nan`` are refused), ``--instances`` at most
    :func:`thread_limit` (each session takes a thread or more)."""
    seed = values.get("seed")
    if seed is not None and seed < 0:
        raise UsageError(f"{names['seed']}{where} must be 0 or more, not {seed}", fix(names["seed"], "0 or a positive number"))
    for key in ("batch_size", "instances", "dataset_count"):
        value = values.get(key)
        if value is not None and value < 1:
            raise UsageError(f"{names[key]}{where} must be at least 1, not {value}", fix(names[key], "1 or more"))
    instances, limit = values.get("instances"), thread_limit()
    if instances is not None and instances > limit:
        raise UsageError(
            f"{names['instances']}{where} is {instances}: more sessions per device unit than the {limit} threads "
            f"mlpi lets a run start here",
            fix(names["instances"], f"{limit} or less (a few per device unit are usually plenty)"),
        )
    for key in ("target_qps", "duration_s", "batch_timeout_ms"):
        fvalue = values.get(key)
        if fvalue is not None and not (fvalue > 0 and math.isfinite(fvalue)):
            raise UsageError(f"{names[key]}{where} must be a positive, finite number, not {fvalue}",
                             fix(names[key], "a finite value above 0"))
    watchdog = values.get("watchdog_s")
    if watchdog is not None and not (watchdog >= 0 and math.isfinite(watchdog)):
        flag = names.get("watchdog_s", "--watchdog-s")
        raise UsageError(f"{flag}{where} must be 0 (off) or a positive, finite number of seconds, not {watchdog}",
                         fix(flag, "0 or a finite number of seconds"))


def available_memory_bytes() -> int | None:
    """Memory a new allocation can have now (``MemAvailable``); ``None`` where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def sample_bytes(specs: Any) -> int:
    """Bytes of one sample of ``specs`` (a dynamic dimension counts as 1; an unknown type
    as one byte an element)."""
    import numpy as np

    total = 0
    for spec in specs:
        try:
            itemsize = np.dtype(spec.dtype).itemsize
        except TypeError:
            itemsize = 1
        total += math.prod(int(d) if d else 1 for d in spec.sample_shape) * itemsize
    return total


def _check_batch_memory(batch_size: int | None, instances: int, units: int, inputs: Any, outputs: Any,
                        label: str, fix: str) -> None:
    """One batch's buffers (``inputs`` and ``outputs``) on every session of the run must fit
    in the memory this machine has available: a batch size far beyond it would only start a
    run that fails allocating it (``label`` names the batch size, ``fix`` says what to do,
    with ``{fits}`` for the most that would)."""
    if batch_size is None:
        return
    per_sample = sample_bytes(inputs) + sample_bytes(outputs)
    available = available_memory_bytes()
    if available is None or per_sample <= 0:
        return
    sessions = max(1, instances) * max(1, units)
    need = batch_size * per_sample * sessions
    if need <= available:
        return
    fits = available // (per_sample * sessions)
    across = f" on each of {sessions} sessions" if sessions > 1 else ""
    raise UsageError(
        f"{label} {batch_size} needs {_size(need)} of batch buffers ({_size(per_sample)} a sample{across}), "
        f"more than the {_size(available)} of memory available",
        fix.format(fits=fits) if fits >= 1 else "use fewer instances or devices, or a machine with more memory",
    )


def _size(n: int) -> str:
    if n >= 1 << 70:
        return f"{n:.3g} bytes"
    for unit, scale in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _check_device(backend: Any, device: Device) -> None:
    usable = probed_devices(backend)
    hint = None
    if not any(d.kind == device.kind for d in usable):
        try:
            hint = backend.device_hint(device.kind)
        except Exception:  # noqa: BLE001 - a plugin's hint is a courtesy; the error stands without it
            hint = None
    check_device_usable(backend.name, device, usable, hint if isinstance(hint, str) and hint else None)


def probed_devices(backend: Any) -> list[Device]:
    """``backend.probe()``; a probe that raises or answers something other than a list of
    Devices (the contract says it never raises) is one PluginError naming the backend."""
    try:
        devices = backend.probe()
    except Exception as exc:  # noqa: BLE001 - a third-party probe's bug, reported as such
        text = str(exc).strip().splitlines()
        raise PluginError(
            f"backend '{backend.name}' failed to list its devices: probe() raised {type(exc).__name__}"
            + (f": {text[0][:200]}" if text else ""),
            f"report this to the authors of the '{backend.name}' backend (probe() must never raise), "
            "or choose another backend with --backend (`mlpi backends` lists them)",
        ) from None
    if not isinstance(devices, (list, tuple)) or not all(isinstance(d, Device) for d in devices):
        raise PluginError(
            f"backend '{backend.name}' listed its devices as {type(devices).__name__}, not a list of Devices",
            f"report this to the authors of the '{backend.name}' backend, or choose another backend with --backend",
        )
    return list(devices)


def check_device_usable(name: str, device: Device, usable: list[Device], why: str | None = None) -> None:
    """Raise DeviceError unless ``device`` (every unit it names) is among ``usable``; ``why``
    is the backend's own account of a kind it finds none of (:meth:`Backend.device_hint`)."""
    kinds = [d for d in usable if d.kind == device.kind]
    listing = ", ".join(str(d) for d in usable) or "none"
    if not kinds:
        raise DeviceError(
            f"device '{device}' is not usable by backend '{name}' on this machine (usable: {listing})",
            f"{why}; or pick a usable device with --device" if why else
            "install the driver and runtime for it, or pick a usable device with --device",
        )
    if device.indices:
        have = {i for d in kinds for i in (d.indices or (0,))}
        missing = [i for i in device.indices if i not in have]
        if missing:
            raise DeviceError(
                f"{device.kind} unit(s) {', '.join(map(str, missing))} not found for backend '{name}' (usable: {listing})",
                "pick units that `mlpi backends` lists",
            )


def _resolve_model(request: RunRequest, registry: Registry) -> tuple[ModelRef, ModelSpec, bool]:
    """The model's graph file(s) and its spec (the registered model's, or one made from the file)."""
    spec: ModelSpec | None = None
    if request.model is not None:  # an empty --model is unknown, never "no model"
        spec = configured(registry.model(request.model), request.model_options)
    elif request.model_options:
        raise UsageError("--model-option sets a registered model's options, and no --model is given",
                         "pass --model NAME, or drop --model-option")
    if request.weights not in (None, "official", "random"):
        raise UsageError(f"unknown --weights '{request.weights}'", "choose official or random")
    random_weights = False
    if request.model_path:
        if request.weights == "random":
            raise UsageError("--weights random and --model-path both choose the model file", "drop one of them")
        given = Path(request.model_path).expanduser()
        if spec is not None and spec.checkpoint is not None and spec.checkpoint.recognises(given):
            files = checkpoint_graphs(spec, given)
        else:
            files = _graph_files_at(given, spec)
    elif spec is None:
        raise UsageError("no model given", "pass --model NAME (see `mlpi models`) or --model-path FILE.onnx")
    else:
        files, random_weights = _registered_model_files(spec, request.weights, request.seed)
    graphs = {role: inspect_onnx(path) for role, path in files.items()}
    if spec is not None:
        for role, artifact in graphs.items():
            _check_signature(spec, role, artifact, artifact.path)
    main_role, main = next(iter(graphs.items()))
    spec = spec or ModelSpec.for_file(main.path)
    refs = (
        {role: GraphRef(str(a.path), a.sha256, list(a.inputs), list(a.outputs)) for role, a in graphs.items()}
        if len(graphs) > 1 else {}
    )
    ref = ModelRef(
        name=spec.name,
        path=str(main.path),
        sha256=combined_digest(refs) if refs else main.sha256,
        rules_key=spec.rules_key,
        inputs=list(main.inputs),
        outputs=list(main.outputs),
        random_weights=random_weights,
        graphs=refs,
        main_role=main_role,
    )
    return ref, spec, request.model is not None


def _graph_files_at(path: Path, spec: ModelSpec | None) -> dict[str, Path]:
    """``--model-path``: the file of a one-graph model, or the folder holding ``<role>.onnx``
    for each graph of a model with several."""
    if spec is None or len(spec.graphs) == 1:
        return {spec.main_role if spec else MAIN_GRAPH: path}
    if not path.is_dir():
        raise ModelError(
            f"{spec.name} has {len(spec.graphs)} graphs ({', '.join(spec.roles)}), so --model-path must be a folder",
            f"pass a folder holding {', '.join(r + '.onnx' for r in spec.roles)}",
        )
    missing = [role for role in spec.roles if not (path / f"{role}.onnx").is_file()]
    if missing:
        raise ModelError(
            f"{path} has no {', '.join(r + '.onnx' for r in missing)} for model {spec.name}",
            f"put every graph of {spec.name} there: {', '.join(r + '.onnx' for r in spec.roles)}",
        )
    return {role: path / f"{role}.onnx" for role in spec.roles}


def random_weights_path(spec: ModelSpec, seed: int) -> Path:
    """Where a model's seeded random graph is kept (a folder for a model with several)."""
    version = spec.extra.get("random_graph_version", 1)
    name = spec.extra.get("random_graph_name", spec.name)  # models differing only in their rules share one
    suffix = ".onnx" if len(spec.graphs) == 1 else ""
    return cache_root() / "models" / name / f"{name}-random-seed{seed}-v{version}{suffix}"


def _registered_model_files(spec: ModelSpec, weights: str | None, seed: int) -> tuple[dict[str, Path], bool]:
    """The official graphs when asked for (or cached), else seeded random ones, built once."""
    official = cached(spec.artifact) if spec.artifact is not None else None
    if weights == "official" or (weights is None and official is not None):
        if official is None:
            raise ModelError(
                f"the official {spec.name} model is not downloaded",
                f"run `mlpi fetch {spec.name}`, pass --model-path FILE, or use --weights random for a performance-only run",
            )
        return official_graphs(spec, official), False
    if spec.build_random is None:
        raise ModelError(f"model {spec.name} has no random-weights form", f"run `mlpi fetch {spec.name}` or pass --model-path FILE")
    path = random_weights_path(spec, seed)
    if len(spec.graphs) == 1:
        if not path.exists():
            _write_model(spec, f"the random-weights model to {path}", lambda: spec.build_random(path, seed))  # type: ignore[misc]
        return {spec.main_role: path}, True
    graphs = {role: path / f"{role}.onnx" for role in spec.roles}
    if not all(file.is_file() for file in graphs.values()):
        built = _write_model(spec, f"the random-weights graphs to {path}", lambda: _made_in(path, spec, lambda f: spec.build_random(f, seed)))  # type: ignore[misc]
        graphs = {role: Path(built[role]) for role in spec.roles}
    return graphs, True


def official_graphs(spec: ModelSpec, fetched: Path) -> dict[str, Path]:
    """The official artifact's graphs by role: the file itself, or what ``spec.convert``
    made of it, converted once and kept under the artifact's fingerprint (over the sha256
    recorded on first use for a file without a published checksum, so a re-download that
    changes it is converted afresh)."""
    if spec.convert is None:
        return {spec.main_role: fetched}
    assert spec.artifact is not None
    fingerprint = recorded_fingerprint(spec.artifact)
    if fingerprint is None:
        raise ModelError(
            f"the official {spec.name} model is not downloaded (or changed since it was)",
            f"run `mlpi fetch {spec.name}`",
        )
    convert = spec.convert
    return _converted_once(spec, fetched, fetched.parent / f"converted-{fingerprint[:16]}", lambda f: convert(fetched, f))


def checkpoint_graphs(spec: ModelSpec, checkpoint: Path) -> dict[str, Path]:
    """``--model-path`` naming the model's checkpoint format: its graphs, converted once and
    kept under the checkpoint's identity and the model's configuration (its random graph's
    name, which says the options that shape the graphs)."""
    assert spec.checkpoint is not None
    fmt = spec.checkpoint
    name = spec.extra.get("random_graph_name", spec.name)
    folder = cache_root() / "models" / name / f"checkpoint-{fmt.identity(checkpoint)[:16]}"
    return _converted_once(spec, checkpoint, folder, lambda f: fmt.convert(checkpoint, f), f"the {fmt.describes} ")


def _converted_once(spec: ModelSpec, source: Path, folder: Path, convert: Any, what: str = "") -> dict[str, Path]:
    """The graphs ``convert(folder)`` wrote from ``source`` on an earlier run, or written now;
    ``graphs.json`` in ``folder`` is written last, so an interrupted conversion is redone."""
    index = folder / "graphs.json"
    try:
        made = json.loads(index.read_text(encoding="utf-8"))
        graphs = {role: folder / made[role] for role in spec.roles}
        if all(file.is_file() for file in graphs.values()):
            return graphs
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"mlpi: converting {what}{source.name} into {', '.join(spec.roles)} (once)", file=sys.stderr)
    converted = _write_model(spec, f"the converted graphs to {folder}", lambda: _made_in(folder, spec, convert))
    write_json_atomic(index, {role: Path(converted[role]).relative_to(folder).as_posix() for role in spec.roles})
    return {role: Path(converted[role]) for role in spec.roles}


def _made_in(folder: Path, spec: ModelSpec, make: Any) -> dict[str, Path]:
    """``make(folder)`` (a random-weights builder or a converter) in a fresh ``folder``; what
    it returns must name one graph file per role there."""
    folder.mkdir(parents=True, exist_ok=True)
    return _check_roles(spec, make(folder), folder)


def _check_roles(spec: ModelSpec, made: Any, folder: Path) -> dict[str, Path]:
    """What a model's builder or converter returned must name one file per role, in ``folder``."""
    if not isinstance(made, Mapping) or set(made) != set(spec.roles):
        raise ModelError(
            f"model {spec.name}'s plugin wrote graphs {sorted(made) if isinstance(made, Mapping) else made!r}, "
            f"not one per role ({', '.join(spec.roles)})",
            "report this to the model plugin's authors",
        )
    files = {role: Path(made[role]) for role in spec.roles}
    outside = [role for role, file in files.items() if not file.resolve().is_relative_to(folder.resolve())]
    if outside:
        raise ModelError(f"model {spec.name}'s plugin wrote {', '.join(outside)} outside {folder}",
                         "report this to the model plugin's authors")
    return files


def _write_model(spec: ModelSpec, what: str, write: Any) -> Any:
    try:
        return write()
    except OSError as exc:
        raise ModelError(
            f"cannot write {what}: {exc.strerror or exc}",
            "set MLPI_CACHE to a writable folder with enough free space",
        ) from None


def _check_signature(spec: ModelSpec, role: str, artifact: Any, path: Path) -> None:
    """A file given for a registered model must have that graph's inputs and outputs."""
    graph = spec.graphs[role]
    label = spec.name if len(spec.graphs) == 1 else f"{spec.name} {role}"
    for kind, want, have in (("input", graph.inputs, artifact.inputs), ("output", graph.outputs, artifact.outputs)):
        have_names = {t.name for t in have}
        missing = [t.name for t in want if have_names.isdisjoint(graph.names_for(t.name))]
        if missing:
            raise ModelError(
                f"{path} is not a {label} model: it has no {kind} {', '.join(missing)} "
                f"(it has {', '.join(sorted(have_names)) or 'none'})",
                f"pass the {label} ONNX file, or drop --model to run the file as a custom model",
            )
