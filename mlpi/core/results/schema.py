"""result.json as types: the one schema the runner writes and the store, compare, report
and sweep read.

A run is a :class:`RunResult`; each LoadGen test in it a :class:`TestResult`; an accuracy
test's score an :class:`AccuracyRecord` (what :meth:`mlpi.core.contract.accuracy.AccuracyResult.to_json`
writes). Every class has ``to_json()`` and ``from_json()``; ``from_json`` checks every field's
type and raises one :class:`~mlpi.core.contract.errors.ResultError` naming the file and the field
(``tests[1].value is "fast", not a number``), so a damaged result.json is one ``error:``
line, never a ``KeyError``. ``system`` is a free object, but the fields mlpi prints from it
(:data:`SYSTEM_TEXT_FIELDS`, ``accelerators``...) are checked too, and a test's ``dir`` must stay
inside the run directory. :func:`load_result` reads a file.

Versions (``schema_version``, :data:`mlpi.core.results.rundir.SCHEMA_VERSION`):

- 1: accuracy records held ``metric``, ``value`` (always percent), ``good``, ``total``,
  ``report``, ``target``, ``passed``; the model had no ``rules``; tests of early runs lack
  ``sessions``, ``slots``, ``devices``, ``expectations``, ``latency_ms`` and ``simulated``.
- 2: accuracy records add ``unit``, ``higher_is_better`` and ``lines`` (the official script's
  output); the model carries ``rules`` (its MLPerf rules as JSON, or null); every test
  carries every field (null where it has no value).

Version 1 files are read with the defaults version 2 implies (unit ``%``, higher is better,
lines ``[report]``); what a reader does not know (keys added by hand, the details a scorer
writes) is kept in ``extra`` and written back, so reading and writing loses nothing. A
file of a newer schema is refused. Reading a file gives the current schema:
:meth:`RunResult.to_json` always writes :data:`~mlpi.core.results.rundir.SCHEMA_VERSION`, while
``RunResult.schema_version`` says which version the file was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from mlpi.core.contract.errors import ResultError
from mlpi.core.results.rundir import RESULT_FILE, SCHEMA_VERSION, format_figure

RUN_STATUSES = ("running", "ok", "failed", "interrupted")
TEST_STATUSES = ("ok", "failed", "interrupted")
TEST_MODES = ("performance", "accuracy")
DAMAGED_HINT = "copy the run directory again"
#: ``system`` fields (MLPerf's system description, and what mlpi adds) that lists, ``results
#: show`` and the store's columns print: each a string or a number when present.
SYSTEM_TEXT_FIELDS = (
    "system_name", "hostname", "machine", "python", "host_processor_model_name", "host_processors_per_node",
    "host_processor_core_count", "host_processor_vcpu_count", "host_memory_capacity", "accelerators_per_node",
    "accelerator_model_name", "accelerator_memory_capacity", "operating_system",
)

T = TypeVar("T")


# ------------------------------------------------------------------ reading JSON with types


class _Object:
    """One JSON object being read: typed getters that name the file and the field when a
    value is missing or of the wrong type. Keys no getter asked for are :meth:`rest`."""

    def __init__(self, data: Any, source: str, where: str) -> None:
        self.source, self.where = source, where
        if not isinstance(data, dict):
            raise _damaged(source, f"{where or 'the file'} is {_show(data)}, not a JSON object")
        self.data: dict[str, Any] = data
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ResultError:
        return _damaged(self.source, f"{self.path(key)} {problem}")

    def _get(self, key: str, ok: Callable[[Any], bool], expected: str, required: bool, default: Any) -> Any:
        self._read.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is missing" if key not in self.data else f"is null, not {expected}")
            return default
        if not ok(value):
            raise self.fail(key, f"is {_show(value)}, not {expected}")
        return value

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> Any:
        return self._get(key, lambda v: isinstance(v, str), "a string", required, default)

    def choice(self, key: str, choices: tuple[str, ...], *, required: bool = False, default: str | None = None) -> Any:
        value = self.string(key, required=required, default=default)
        if value is not None and value not in choices:
            raise self.fail(key, f"is {_show(value)}, not one of {', '.join(choices)}")
        return value

    def integer(self, key: str) -> int | None:
        return self._get(key, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number", False, None)

    def number(self, key: str, *, required: bool = False) -> Any:
        return self._get(key, _is_number, "a number", required, None)

    def boolean(self, key: str, *, default: bool | None = None) -> Any:
        return self._get(key, lambda v: isinstance(v, bool), "true or false", False, default)

    def mapping(self, key: str, *, default: Any = None) -> Any:
        value = self._get(key, lambda v: isinstance(v, dict), "a JSON object", False, None)
        return dict(value) if value is not None else default

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, lambda v: isinstance(v, list), "a list of strings", False, [])
        for number, item in enumerate(value):
            if not isinstance(item, str):
                raise _damaged(self.source, f"{self.path(key)}[{number}] is {_show(item)}, not a string")
        return tuple(value)

    def objects(self, key: str, *, required: bool = False) -> list[Any] | None:
        """A list whose items are read by the caller (each named ``key[i]``)."""
        return self._get(key, lambda v: isinstance(v, list), "a list", required, None)

    def nested(self, key: str, read: Callable[[_Object], T], *, required: bool = False) -> T | None:
        self._read.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is missing" if key not in self.data else "is null, not a JSON object")
            return None
        return read(_Object(value, self.source, self.path(key)))

    def rest(self) -> dict[str, Any]:
        """What no getter read: kept as it is, and written back."""
        return {k: v for k, v in self.data.items() if k not in self._read}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _damaged(source: str, detail: str) -> ResultError:
    return ResultError(f"{source} is damaged ({detail})", DAMAGED_HINT)


def _known(cls: type, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` less the keys ``cls`` writes itself (they must never be written twice)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in extra.items() if k not in names}


# ------------------------------------------------------------------ the records


@dataclass(frozen=True)
class AccuracyRecord:
    """An accuracy test's score, as :class:`mlpi.core.contract.accuracy.AccuracyResult` writes it.

    ``value`` and ``target`` are in ``unit`` (``"%"`` for top-1 or mAP, ``""`` for mean
    DICE...); ``higher_is_better`` is False for error rates; ``lines`` is what MLCommons'
    accuracy script prints (``report`` is the same text as one string); ``extra`` holds the
    further figures a scorer adds (``good``/``total``...)."""

    metric: str
    value: float
    unit: str = "%"
    higher_is_better: bool = True
    target: float | None = None
    passed: bool | None = None
    report: str = ""
    lines: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def figure(self) -> str:
        """``37.570%`` or ``0.86170``: the value as mlpi prints it."""
        from mlpi.core.contract.accuracy import format_value

        return format_value(self.value, self.unit)

    def target_text(self) -> str | None:
        """``>= 75.695%`` (``<=`` where lower is better); None without a target."""
        if self.target is None:
            return None
        from mlpi.core.contract.accuracy import format_value

        return f"{'>=' if self.higher_is_better else '<='} {format_value(self.target, self.unit)}"

    def failure(self) -> str | None:
        """Why the score fails its target (``... is below the target ...``, or ``above`` for a
        lower-is-better metric); None when it passes or has no target."""
        if self.passed is not False or self.target is None:
            return None
        from mlpi.core.contract.accuracy import format_value

        side = "below" if self.higher_is_better else "above"
        return f"{self.metric} {self.figure()} is {side} the target {format_value(self.target, self.unit)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "value": self.value, "unit": self.unit, "higher_is_better": self.higher_is_better,
            "target": self.target, "passed": self.passed, "report": self.report, "lines": list(self.lines),
            **_known(AccuracyRecord, self.extra),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "an accuracy record", where: str = "accuracy") -> AccuracyRecord:
        return cls._read(_Object(data, source, where))

    @classmethod
    def _read(cls, obj: _Object) -> AccuracyRecord:
        value = obj.number("value", required=True)
        target = obj.number("target")
        higher = obj.boolean("higher_is_better", default=True)
        report = obj.string("report", default="")
        lines = obj.strings("lines") or ((report,) if report else ())  # version 1: the report was the one line
        passed = obj.boolean("passed")
        if passed is None and target is not None:  # a record that did not say: judge it as the run would have
            passed = value >= target if higher else value <= target
        return cls(
            metric=obj.string("metric", required=True), value=value, unit=obj.string("unit", default="%"),
            higher_is_better=higher, target=target, passed=passed, report=report or "\n".join(lines), lines=lines,
            extra=obj.rest(),
        )


@dataclass(frozen=True)
class ErrorRecord:
    """Why a test failed: what mlpi printed as ``error:`` and ``hint:``."""

    type: str
    message: str
    hint: str | None = None
    exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "hint": self.hint, "exit_code": self.exit_code}

    @classmethod
    def from_json(cls, data: Any, source: str = "an error record", where: str = "error") -> ErrorRecord:
        return cls._read(_Object(data, source, where))

    @classmethod
    def _read(cls, obj: _Object) -> ErrorRecord:
        return cls(
            type=obj.string("type", default="MlpiError"), message=obj.string("message", default="the test failed"),
            hint=obj.string("hint"), exit_code=obj.integer("exit_code"),
        )


@dataclass(frozen=True)
class TestResult:
    """One LoadGen test (a scenario in one mode) of a run.

    ``metric``/``value``/``unit``: the figure MLPerf reports (``samples_per_second``,
    ``early_stopping_p90_latency`` in ms (LoadGen's estimate; ``p90_latency`` where early
    stopping gave none)..., or for an accuracy test the accuracy metric). ``valid`` is
    None until the test has a verdict. ``dir`` is its folder under the run directory."""

    __test__ = False  # not a pytest test class, whatever its name says

    scenario: str
    mode: str
    status: str
    valid: bool | None = None
    metric: str | None = None
    value: float | None = None
    unit: str | None = None
    quick: bool = False
    dir: str = ""
    error: ErrorRecord | None = None
    batch_size: int | None = None
    sessions: int | None = None
    slots: int | None = None
    precision: str | None = None
    simulated: bool = False
    devices: tuple[dict[str, Any], ...] | None = None
    expectations: dict[str, Any] | None = None
    latency_ms: dict[str, float] | None = None
    invalid_reasons: tuple[str, ...] = ()
    accuracy: AccuracyRecord | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dir:
            object.__setattr__(self, "dir", f"{self.scenario}/{self.mode}")

    def figure(self) -> str:
        """The test's figure as every mlpi table prints it (``-`` without one)."""
        if self.accuracy is not None:
            return self.accuracy.figure()
        return format_figure(self.value, self.unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "mode": self.mode, "status": self.status, "valid": self.valid,
            "metric": self.metric, "value": self.value, "unit": self.unit, "quick": self.quick, "dir": self.dir,
            "error": None if self.error is None else self.error.to_json(),
            "batch_size": self.batch_size, "sessions": self.sessions, "slots": self.slots, "precision": self.precision,
            "simulated": self.simulated, "devices": None if self.devices is None else [dict(d) for d in self.devices],
            "expectations": self.expectations, "latency_ms": self.latency_ms,
            "invalid_reasons": list(self.invalid_reasons),
            "accuracy": None if self.accuracy is None else self.accuracy.to_json(),
            **_known(TestResult, self.extra),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "a test record", where: str = "test") -> TestResult:
        return cls._read(_Object(data, source, where))

    @classmethod
    def _read(cls, obj: _Object) -> TestResult:
        scenario = obj.string("scenario", required=True)
        mode = obj.choice("mode", TEST_MODES, required=True)
        devices = obj.objects("devices")
        if devices is not None:
            for number, item in enumerate(devices):
                if not isinstance(item, dict):
                    raise _damaged(obj.source, f"{obj.path('devices')}[{number}] is {_show(item)}, not a JSON object")
        folder = obj.string("dir") or f"{scenario}/{mode}"
        if not _inside_run(folder):
            raise obj.fail("dir", f"is {_show(folder)}, not a folder inside the run directory")
        latency = obj.mapping("latency_ms")
        if latency is not None:
            for key, value in latency.items():
                if not _is_number(value):
                    raise _damaged(obj.source, f"{obj.path('latency_ms')}.{key} is {_show(value)}, not a number")
        return cls(
            scenario=scenario, mode=mode, status=obj.choice("status", TEST_STATUSES, required=True),
            valid=obj.boolean("valid"), metric=obj.string("metric"), value=obj.number("value"), unit=obj.string("unit"),
            quick=obj.boolean("quick", default=False), dir=folder,
            error=obj.nested("error", ErrorRecord._read), batch_size=obj.integer("batch_size"),
            sessions=obj.integer("sessions"), slots=obj.integer("slots"), precision=obj.string("precision"),
            simulated=obj.boolean("simulated", default=False),
            devices=None if devices is None else tuple(dict(d) for d in devices),
            expectations=obj.mapping("expectations"), latency_ms=latency, invalid_reasons=obj.strings("invalid_reasons"),
            accuracy=obj.nested("accuracy", AccuracyRecord._read), extra=obj.rest(),
        )


@dataclass(frozen=True)
class BackendInfo:
    name: str
    version: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "options": self.options, **_known(BackendInfo, self.extra)}

    @classmethod
    def _read(cls, obj: _Object) -> BackendInfo:
        return cls(obj.string("name", required=True), obj.string("version"), obj.mapping("options", default={}), obj.rest())


@dataclass(frozen=True)
class ModelInfo:
    """The model run: its name, file and hash; ``rules`` is its MLPerf rules as JSON
    (:meth:`mlpi.core.contract.rules.Rules.to_json`), None for a model outside MLPerf or a v1 file."""

    name: str
    path: str | None = None
    sha256: str | None = None
    rules_key: str | None = None
    rules: dict[str, Any] | None = None
    weights: str | None = None
    note: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "sha256": self.sha256, "rules_key": self.rules_key, "rules": self.rules,
            "weights": self.weights, "note": self.note, **_known(ModelInfo, self.extra),
        }

    @classmethod
    def _read(cls, obj: _Object) -> ModelInfo:
        return cls(
            name=obj.string("name", required=True), path=obj.string("path"), sha256=obj.string("sha256"),
            rules_key=obj.string("rules_key"), rules=obj.mapping("rules"), weights=obj.string("weights"),
            note=obj.string("note"), extra=obj.rest(),
        )


@dataclass(frozen=True)
class DatasetInfo:
    name: str | None = None
    path: str | None = None
    count: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "count": self.count, **_known(DatasetInfo, self.extra)}

    @classmethod
    def _read(cls, obj: _Object) -> DatasetInfo:
        return cls(obj.string("name"), obj.string("path"), obj.integer("count"), obj.rest())


@dataclass(frozen=True)
class RunSettings:
    """The run's settings as asked for (a test's own ``batch_size`` is the one it ran)."""

    batch_size: int | None = None
    instances: int | None = None
    target_qps: float | None = None
    quick: bool = False
    duration_s: float | None = None
    batch_timeout_ms: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "instances": self.instances, "target_qps": self.target_qps,
            "quick": self.quick, "duration_s": self.duration_s, "batch_timeout_ms": self.batch_timeout_ms,
            **_known(RunSettings, self.extra),
        }

    @classmethod
    def _read(cls, obj: _Object) -> RunSettings:
        return cls(
            batch_size=obj.integer("batch_size"), instances=obj.integer("instances"), target_qps=obj.number("target_qps"),
            quick=obj.boolean("quick", default=False), duration_s=obj.number("duration_s"),
            batch_timeout_ms=obj.number("batch_timeout_ms"), extra=obj.rest(),
        )


@dataclass(frozen=True)
class RunResult:
    """A whole run: what ran where, and each test's outcome (written after every test).

    ``status`` is ``running`` until the run ends ``ok``, ``failed`` or ``interrupted``.
    ``submission_valid`` is False for quick or shortened runs; ``simulated`` is True when any
    test's timings came from a device model. ``system`` is :func:`mlpi.core.results.sysinfo.system_info`."""

    run_id: str
    backend: BackendInfo
    model: ModelInfo
    device: str
    status: str = "running"
    started: str | None = None
    finished: str | None = None
    precision: str | None = None
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    settings: RunSettings = field(default_factory=RunSettings)
    submission_valid: bool = False
    simulated: bool = False
    system: dict[str, Any] = field(default_factory=dict)
    tests: tuple[TestResult, ...] = ()
    #: The version of the file this was read from (what ``to_json`` writes is always the current one).
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        """A quick or shortened run: not valid for submission."""
        return self.settings.quick or self.settings.duration_s is not None or any(t.quick for t in self.tests)

    def with_test(self, test: TestResult) -> RunResult:
        """This run with one more test: a test that ran sets the run's precision, and a
        simulated one marks the whole run simulated (every reader must see it)."""
        return replace(
            self, tests=(*self.tests, test),
            precision=test.precision if test.status == "ok" and test.precision else self.precision,
            simulated=self.simulated or test.simulated,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "run_id": self.run_id, "status": self.status, "started": self.started,
            "finished": self.finished, "backend": self.backend.to_json(), "device": self.device,
            "precision": self.precision, "model": self.model.to_json(), "dataset": self.dataset.to_json(),
            "settings": self.settings.to_json(), "submission_valid": self.submission_valid, "simulated": self.simulated,
            "system": self.system, "tests": [t.to_json() for t in self.tests],
            **_known(RunResult, self.extra),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = RESULT_FILE) -> RunResult:
        """Read a parsed result.json (any version up to the current one); ``source`` names it
        in the error a damaged one raises."""
        obj = _Object(data, source, "")
        version = obj.data.get("schema_version", 1)
        obj._read.add("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise obj.fail("schema_version", f"is {_show(version)}, not a schema version")
        if version > SCHEMA_VERSION:
            raise ResultError(f"{source} has result schema {version}, newer than this mlpi reads ({SCHEMA_VERSION})",
                              "upgrade mlpi")
        run_id = obj.string("run_id", required=True)
        backend = obj.nested("backend", BackendInfo._read, required=True)
        model = obj.nested("model", ModelInfo._read, required=True)
        device = obj.string("device", required=True)
        raw_tests = obj.objects("tests", required=True) or []
        tests = tuple(TestResult._read(_Object(raw, source, f"tests[{n}]")) for n, raw in enumerate(raw_tests))
        return cls(
            run_id=run_id, backend=backend, model=model, device=device,  # type: ignore[arg-type]
            status=obj.choice("status", RUN_STATUSES, required=True), started=obj.string("started"),
            finished=obj.string("finished"), precision=obj.string("precision"),
            dataset=obj.nested("dataset", DatasetInfo._read) or DatasetInfo(),
            settings=obj.nested("settings", RunSettings._read) or RunSettings(),
            submission_valid=obj.boolean("submission_valid", default=False),
            simulated=obj.boolean("simulated", default=False), system=_system(obj),
            tests=tests, schema_version=version, extra=obj.rest(),
        )


def _system(obj: _Object) -> dict[str, Any]:
    """``system``: a free JSON object (keys added by hand are kept), whose fields that mlpi
    reads (:data:`SYSTEM_TEXT_FIELDS`, ``accelerators``, ``host_memory_bytes``, ``packages``)
    must have the types :func:`mlpi.core.results.sysinfo.system_info` writes."""
    system = obj.mapping("system", default={})
    where = obj.path("system")
    for key in SYSTEM_TEXT_FIELDS:
        value = system.get(key)
        if value is not None and not (isinstance(value, str) or _is_number(value)):
            raise _damaged(obj.source, f"{where}.{key} is {_show(value)}, not a string or a number")
    memory = system.get("host_memory_bytes")
    if memory is not None and not _is_number(memory):
        raise _damaged(obj.source, f"{where}.host_memory_bytes is {_show(memory)}, not a number")
    packages = system.get("packages")
    if packages is not None and not isinstance(packages, dict):
        raise _damaged(obj.source, f"{where}.packages is {_show(packages)}, not a JSON object")
    accelerators = system.get("accelerators")
    if accelerators is not None:
        if not isinstance(accelerators, list):
            raise _damaged(obj.source, f"{where}.accelerators is {_show(accelerators)}, not a list")
        for number, item in enumerate(accelerators):
            if not isinstance(item, dict):
                raise _damaged(obj.source, f"{where}.accelerators[{number}] is {_show(item)}, not a JSON object")
    return system


def _inside_run(folder: str) -> bool:
    """A test's ``dir``: a relative path that stays inside the run directory."""
    normal = folder.replace("\\", "/")
    return not normal.startswith("/") and ".." not in normal.split("/") and "\0" not in folder


def result_from_text(text: str, source: str) -> RunResult:
    """A result.json's text, parsed and checked (``source`` names the file in the error)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(source, f"{exc.msg} at line {exc.lineno}") from None
    return RunResult.from_json(data, source)


def load_result(path: Path) -> RunResult:
    """Read and check a result.json (``path`` is the file, or the run directory holding it);
    :class:`~mlpi.core.contract.errors.ResultError` naming the file and what is wrong with it if it
    is missing, unreadable, not JSON or not shaped as mlpi writes it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultError(f"{path} is missing", "copy the whole run directory again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"cannot read {path}: {exc}", "check the file's permissions or copy it again") from None
    return result_from_text(text, str(path))


__all__ = [
    "AccuracyRecord", "BackendInfo", "DatasetInfo", "ErrorRecord", "ModelInfo", "RunResult", "RunSettings", "TestResult",
    "load_result", "result_from_text",
]
