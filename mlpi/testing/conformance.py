"""Conformance kit: check that a backend plugin keeps the Backend/Session contract.

Any backend, built-in or third party, runs the same checks on tiny standard ONNX models
built on the spot (no download, no dataset). The backend is found exactly as ``mlpi run``
finds it: by entry-point name or alias, with ``plugins.toml`` options applied.

Command line::

    python -m mlpi.testing.conformance --backend NAME [--device cpu] [--precision fp32]
                                       [-o key=value ...] [--plugins FILE] [--json]

prints one line per check (``PASS``/``FAIL``/``SKIP`` with the reason) and a summary line
``N passed, N failed[, N skipped]``; ``--json`` prints one JSON object instead. The exit
code is 0 only when no check failed (1 otherwise). What stops the kit from starting (an
unknown backend, a bad option, a device or runtime missing here) is reported like the rest
of mlpi: an ``error:`` and a ``hint:`` line, exit 2 for usage errors, 1 for the others.
``--onnx-node-tests [--sample N] [--op OP ...]`` runs the extended tier instead: the installed
onnx's node test cases, compared with onnxruntime (:mod:`mlpi.testing.onnx_node_tier`).

In a plugin's own test suite::

    from mlpi.testing.conformance import run_checks

    def test_my_backend_conforms():
        assert run_checks("mybackend").failed == []

:func:`run_checks` takes the CLI's arguments (``device``, ``precision``, ``options``
as a dict, ``plugins_file``) and returns a :class:`ConformanceReport`; on failure pytest
shows the failing checks (:class:`CheckResult`) with their reasons. ``backend`` may also be a
:class:`~mlpi.core.contract.backend.Backend` subclass, to check a backend before it is installed.

The checks (``M`` is one standard model: ``conv``, ``conv_strided``, ``matmul``,
``two_inputs``, ``mlp``, ``classifier`` with dynamic batch, ``matmul_fixed4`` with a fixed
batch of 4; :data:`STANDARD_MODELS` says what each one exercises):

- ``declarations``: the class attributes (name, device kinds, precisions, Options) are usable.
- ``version``: ``version()`` returns a non-empty string.
- ``probe``: ``probe()`` returns a list of Devices of the declared kinds and never raises.
- ``load[M]``: ``check()`` and ``load()`` give a Session.
- ``signature[M]``: its input and output names and dtypes are the ONNX file's.
- ``capabilities[M]``: consistent (fixed_batch implies max_batch_size...; a fixed-batch model
  reports fixed_batch with its batch size).
- ``precision[M]``: the precision it reports is one the backend declares (and the one asked for).
- ``outputs[M]``: ``run()`` returns one batch-first array per output with the file's dtype and shape.
- ``values[M]``: outputs match ONNX Runtime on the CPU within the precision's tolerance
  (:data:`TOLERANCES`; see below for fp16, bf16 and int8); skipped when onnxruntime is not
  installed.
- ``batch_sizes[M]``: batches of 1, 2, 3 and 8 (dynamic) give each sample the answer of batch 1;
  a fixed batch gives each sample the same answer in any row.
- ``concurrent[M]``: run() from several threads at once gives the sequential answers
  (skipped unless ``capabilities.concurrent``).
- ``outputs_kept[M]``: arrays returned by ``run()`` are not changed by a later call.
- ``reload[M]``: ``close()`` then ``load()`` again works and gives the same answers.
- ``corrupt_model[random]``, ``corrupt_model[truncated]``: loading random bytes or a truncated
  model raises :class:`~mlpi.core.contract.errors.ModelError` (any other exception fails, named).

A check that cannot run because one it depends on failed is skipped with that reason.

Reduced precisions (``--precision fp16|bf16|int8``) are checked the way ``mlpi run`` runs
them (:mod:`mlpi.core.engine.precision`). Unless the backend's options ask for its own method
(``Backend.native_precision``), mlpi's transform derives each standard model's file, int8
calibrated on the kit's own first feeds of that model (:data:`CALIBRATION_BATCHES` batches),
and the backend loads that file, its ``ModelArtifact.precision`` set; ``load[M]`` names the
file (``derived int8 file (transform KEY)``). A model the transform cannot derive skips its
checks with the transform's reason. ``values[M]`` compares with ONNX Runtime on the CPU
running the same derived file: an int8 file as written (``ORT_DISABLE_ALL``: its Q/DQ nodes
around fp32 operators), within :data:`TOLERANCES` plus a small share of outliers
(:data:`INT8_OUTLIER_SHARE`, measured there); a bf16 file ONNX Runtime's CPU kernels cannot
run, against its fp32 source. With the backend's own method the backend loads the fp32 file
and ``values[M]`` compares with fp32 ONNX Runtime (int8: skipped, as its calibration is the
backend's). Derived files, and whatever the backend caches, go to a cache inside the kit's
temporary folder (``MLPI_CACHE`` for the run), never the user's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import (
    PRECISIONS,
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
    fixed_batch_size,
    format_shape,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    DeviceError,
    MlpiError,
    ModelError,
    UsageError,
)
from mlpi.core.engine.precision import DERIVED
from mlpi.testing import tiny_models

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

#: (rtol, atol) for comparing with ONNX Runtime on the CPU, per precision: fp32 against the
#: fp32 file; fp16, bf16 and int8 against the same derived file (fp16 and bf16 against the fp32
#: file where the backend derives them itself).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-5), "fp16": (1e-2, 1e-3), "bf16": (5e-2, 5e-2), "int8": (5e-2, 5e-2),
}
#: int8 against the same Q/DQ file run as written (ORT_DISABLE_ALL): this share of an output's
#: values may lie outside TOLERANCES["int8"], none further than INT8_OUTLIER_BOUND times the
#: output's largest magnitude. Measured on the values batch of the standard models (onnxruntime
#: 1.32 and OpenVINO 2026.4 on an AVX2 CPU without VNNI): ONNX Runtime's fused int8 kernels
#: (ORT_ENABLE_ALL) and OpenVINO differ from the file as written by up to 0.053 on conv (outputs
#: up to 0.75, all within rtol/atol 0.05) and by up to 1.12 on conv_strided (outputs up to 6.2:
#: 2.4% of its values outside rtol/atol 0.05, up to 0.18 of the peak; 0.25 over 64 samples); on
#: matmul, two_inputs, classifier and matmul_fixed4 they agree exactly (over 64 samples, past the
#: calibrated ones, OpenVINO's matmul differs by up to 0.33 of the peak). The outliers fit the
#: int16 saturation of u8s8 kernels (VPMADDUBSW) on CPUs without VNNI: conv and conv_strided
#: quantized with 7-bit weights (reduce_range) agree exactly in ONNX Runtime. Outputs scaled
#: by 1.1 put 46-78% of the values of every model with outputs above 1 outside rtol/atol 0.05.
INT8_OUTLIER_SHARE = 0.05
INT8_OUTLIER_BOUND = 0.5
#: Self-consistency tolerance for int8 (a backend's own int8 may quantize activations per batch).
_INT8_SELF_TOLERANCE = (1e-1, 1e-1)
#: Calibration batches an int8 transform of a standard model sees: the kit's first feeds.
CALIBRATION_BATCHES = 2
#: Below fp32, this share of integer outputs (arg-max labels) may flip on near ties.
_INT_FLIP_SHARE = 0.1

BATCH_SIZES = (1, 2, 3, 8)
THREADS = 4
ROUNDS = 3
TIMEOUT_S = 60.0
NO_ORT = "onnxruntime not installed"


@dataclass(frozen=True)
class StandardModel:
    """One tiny model the checks run on: ``key`` names it in check names."""

    key: str
    build: Callable[[Path], Path]
    about: str


STANDARD_MODELS: tuple[StandardModel, ...] = (
    StandardModel("conv", tiny_models.conv_model, "Conv with pads, Relu, GlobalAveragePool, Flatten"),
    StandardModel("conv_strided", tiny_models.strided_conv_model, "Conv with bias, strides, asymmetric pads; grouped, dilated Conv"),
    StandardModel("matmul", tiny_models.matmul_model, "MatMul, Add, ArgMax: a float32 and an int64 output"),
    StandardModel("two_inputs", tiny_models.two_input_model, "two inputs (float32, int64), two outputs: Cast, Add, Mul"),
    StandardModel("mlp", tiny_models.mlp_model, "Gemm (transB, alpha, beta), Relu, Softmax"),
    StandardModel(
        "classifier", tiny_models.resnet_signature_classifier,
        "ResNet50's signature (names with ':'): Reshape, Slice, Softmax, ArgMax",
    ),
    StandardModel("matmul_fixed4", functools.partial(tiny_models.matmul_model, batch=4), "MatMul model with a fixed batch of 4"),
)

MODEL_CHECKS = (
    "load", "signature", "capabilities", "precision", "outputs", "values",
    "batch_sizes", "concurrent", "outputs_kept", "reload",
)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``status`` is PASS, FAIL or SKIP; ``detail`` says why."""

    name: str
    status: str
    detail: str = ""

    def line(self, width: int = 0) -> str:
        return f"{self.status}  {self.name:<{width}}  {self.detail}".rstrip()


@dataclass
class ConformanceReport:
    """What :func:`run_checks` found; ``failed`` is empty when the backend conforms."""

    backend: str
    origin: str
    version: str | None
    device: str
    precision: str | None
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def passed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == PASS]

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == SKIP]

    def status(self, name: str) -> str:
        """The status of the check called ``name`` (KeyError when there is none)."""
        for r in self.results:
            if r.name == name:
                return r.status
        raise KeyError(name)

    def summary(self) -> str:
        text = f"{len(self.passed)} passed, {len(self.failed)} failed"
        return text + (f", {len(self.skipped)} skipped" if self.skipped else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "origin": self.origin,
            "version": self.version,
            "device": self.device,
            "precision": self.precision,
            "results": [dataclasses.asdict(r) for r in self.results],
            "passed": len(self.passed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "summary": self.summary(),
        }


class Fail(Exception):
    """Raised by a check: the backend breaks the contract (the message says how)."""


class Skip(Exception):
    """Raised by a check: it does not apply, or cannot run (the message says why)."""


# --------------------------------------------------------------------------- entry point


def run_checks(
    backend: str | type[Backend] | Backend,
    device: str = "cpu",
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
    plugins_file: str | Path | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    on_start: Callable[[ConformanceReport], None] | None = None,
) -> ConformanceReport:
    """Run every check on ``backend`` (an entry-point name or alias, or a Backend class).

    Raises an :class:`~mlpi.core.contract.errors.MlpiError` when the checks cannot start at all
    (unknown backend, bad option or precision, device or runtime not usable here), like
    ``mlpi run`` would. ``on_start`` is called with the (empty) report once the backend is
    resolved, ``on_result`` with each result as soon as it is known.
    """
    kit = _Kit.setup(backend, device, precision, options, plugins_file)
    report = ConformanceReport(kit.name, kit.origin, kit.version, str(kit.device), precision)
    if on_start is not None:
        on_start(report)
    with tempfile.TemporaryDirectory(prefix="mlpi-conformance-") as tmp, _cache_in(Path(tmp) / "cache"):
        kit.workdir = Path(tmp)
        try:
            for name, check in kit.plan():
                result = _run_one(name, check)
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
        finally:
            kit.close_all()
    return report


def check_names() -> list[str]:
    """Every check's name, in the order they run."""
    names = ["declarations", "version", "probe"]
    for model in STANDARD_MODELS:
        names += [f"{check}[{model.key}]" for check in MODEL_CHECKS]
    return names + ["corrupt_model[random]", "corrupt_model[truncated]"]


def _run_one(name: str, check: Callable[[], str | None]) -> CheckResult:
    try:
        detail = check()
    except Fail as exc:
        return CheckResult(name, FAIL, str(exc))
    except Skip as exc:
        return CheckResult(name, SKIP, str(exc))
    except Exception as exc:  # noqa: BLE001 - a backend's exception is a verdict, not a crash
        return CheckResult(name, FAIL, f"raised {_describe(exc)}")
    return CheckResult(name, PASS, detail or "")


# --------------------------------------------------------------------------- the kit


@dataclass
class _Loaded:
    """One standard model: the file the backend loads, its signature, the sample pool and
    (once loaded) the session. ``path`` is the fp32 file built on the spot, or the file mlpi's
    transform derived from it (``derived_key`` set) for a precision the backend does not derive
    itself; ``source`` is always the fp32 file."""

    model: StandardModel
    path: Path
    artifact: ModelArtifact
    source: Path
    session: Session | None = None
    load_problem: str | None = None
    pool: dict[str, np.ndarray] = field(default_factory=dict)
    fixed_in_file: int | None = None
    derived_key: str | None = None
    not_derived: str | None = None  # why the transform could not derive this model

    def needs_session(self) -> Session:
        if self.session is None:
            raise Skip(f"needs a session; load[{self.model.key}] did not give one ({self.load_problem})")
        return self.session

    def batch_plan(self) -> tuple[bool, int | None]:
        """(fixed, max batch): the file's fixed batch, else what the session says (Skip when
        that makes no sense)."""
        caps = self.needs_session().capabilities
        if self.fixed_in_file is not None:
            return True, self.fixed_in_file
        if not isinstance(caps, Capabilities):
            raise Skip(f"needs usable capabilities (see capabilities[{self.model.key}])")
        if caps.fixed_batch:
            if not isinstance(caps.max_batch_size, int) or caps.max_batch_size < 1:
                raise Skip(f"fixed_batch without a max_batch_size (see capabilities[{self.model.key}])")
            return True, caps.max_batch_size
        limit = caps.max_batch_size if isinstance(caps.max_batch_size, int) and caps.max_batch_size >= 1 else None
        return False, limit

    def one_batch(self) -> int:
        """The batch size most checks use: the fixed one, else 3 (or the largest allowed)."""
        fixed, limit = self.batch_plan()
        if fixed:
            assert limit is not None
            return limit
        return min(3, limit) if limit else 3

    @property
    def pool_size(self) -> int:
        return len(next(iter(self.pool.values()))) if self.pool else 0

    def feeds(self, rows: list[int]) -> dict[str, np.ndarray]:
        """One batch of pool samples (the pool grows, keeping its first samples, when needed)."""
        if max(rows) >= self.pool_size:
            self.grow(max(rows) + 1)
        return {name: np.ascontiguousarray(values[rows]) for name, values in self.pool.items()}

    def grow(self, count: int) -> None:
        have = self.pool_size
        rng = np.random.default_rng([sum(map(ord, self.model.key)), have])
        for spec in self.artifact.inputs:
            more = _random(spec, count - have, rng)
            self.pool[spec.name] = np.concatenate([self.pool[spec.name], more]) if have else more


class _Kit:
    def __init__(self) -> None:
        self.backend: Backend
        self.name = ""
        self.entry_name: str | None = None
        self.origin = ""
        self.device = Device("cpu")
        self.precision: str | None = None
        self.options: Any = None
        self.version: str | None = None
        self.version_problem: str | None = None
        self.probed: Any = None
        self.probe_problem: str | None = None
        self.workdir = Path()
        self.loaded: dict[str, _Loaded] = {}
        self._reference: dict[str, tuple[Any, str]] = {}
        # For fp16/bf16/int8: the backend's own method (its native_precision), else None and
        # mlpi's transform derives each standard model's file, as `mlpi run` does.
        self.native: str | None = None
        self.native_problem: str | None = None

    # ------------------------------------------------------------------ setup

    @classmethod
    def setup(
        cls,
        backend: str | type[Backend] | Backend,
        device: str,
        precision: str | None,
        options: Mapping[str, Any] | None,
        plugins_file: str | Path | None,
    ) -> _Kit:
        from mlpi.core.engine.planning import check_device_usable
        from mlpi.core.plugins.options import build_options

        kit = cls()
        layers: list[tuple[str, Mapping[str, Any]]] = []
        if isinstance(backend, str):
            from mlpi.core.plugins.config import PluginsConfig
            from mlpi.core.plugins.registry import Registry

            registry = Registry(PluginsConfig.load(plugins_file))
            info = registry.resolve("backends", backend)
            name = info.key or info.name  # a clashing plugin by its qualified name
            kit.backend = registry.backend(name)
            kit.entry_name, kit.origin = name, info.origin
            layers += registry.backend_options(name)
        elif isinstance(backend, type) and issubclass(backend, Backend):
            kit.backend, kit.origin = backend(), f"class {backend.__module__}.{backend.__qualname__}"
        elif isinstance(backend, Backend):
            kit.backend, kit.origin = backend, f"instance of {type(backend).__module__}.{type(backend).__qualname__}"
        else:
            raise UsageError(f"{backend!r} is not a backend", "pass a backend name, or a mlpi Backend subclass")
        kit.name = kit.entry_name or str(getattr(kit.backend, "name", type(kit.backend).__name__))

        parsed = Device.parse(device)
        if len(parsed.units()) > 1:
            raise UsageError(f"the conformance kit checks one device unit, not '{parsed}'", f"pass --device {parsed.units()[0]}")
        kit.device = parsed
        kinds = tuple(getattr(kit.backend, "device_kinds", ()) or ())
        if parsed.kind not in kinds:
            raise DeviceError(
                f"backend '{kit.name}' cannot use device kind '{parsed.kind}'",
                f"it runs on: {', '.join(map(str, kinds)) or 'nothing (device_kinds is empty)'}",
            )
        if precision is not None:
            declared = tuple(getattr(kit.backend, "precisions", ()) or ())
            if precision not in PRECISIONS or precision not in declared:
                raise UsageError(
                    f"backend '{kit.name}' cannot run precision '{precision}'",
                    f"choose one of: {', '.join(declared)}",
                )
        kit.precision = precision
        # The largest batch the checks send; a backend that builds for one batch size builds for it.
        kit.context = LoadContext(batch_size=max(BATCH_SIZES))
        layers.append(("--option", dict(options or {})))
        kit.options = build_options(kit.backend.Options, layers, kit.name)
        if precision in DERIVED:
            try:
                kit.native = kit.backend.native_precision(kit.options, precision)
            except Exception as exc:  # noqa: BLE001 - reported by the declarations check
                kit.native_problem = f"native_precision() raised {_describe(exc)}"

        try:
            kit.version = kit.backend.version()
        except MlpiError:
            raise  # the runtime is not installed: nothing can be checked; the hint says what to install
        except Exception as exc:  # noqa: BLE001 - reported by the version check
            kit.version_problem = f"version() raised {_describe(exc)}"
        try:
            kit.probed = kit.backend.probe()
        except Exception as exc:  # noqa: BLE001 - reported by the probe check
            kit.probe_problem = f"probe() raised {_describe(exc)}"
        else:
            if isinstance(kit.probed, list) and all(isinstance(d, Device) for d in kit.probed):
                check_device_usable(kit.name, parsed, kit.probed)  # as `mlpi run` does
        return kit

    def plan(self) -> Iterator[tuple[str, Callable[[], str | None]]]:
        yield "declarations", self.check_declarations
        yield "version", self.check_version
        yield "probe", self.check_probe
        for model in STANDARD_MODELS:
            for check in MODEL_CHECKS:
                method = getattr(self, f"check_{check}")
                yield f"{check}[{model.key}]", functools.partial(method, model)
        yield "corrupt_model[random]", functools.partial(self.check_corrupt, "random")
        yield "corrupt_model[truncated]", functools.partial(self.check_corrupt, "truncated")

    def close_all(self) -> None:
        for loaded in self.loaded.values():
            if loaded.session is not None:
                try:
                    loaded.session.close()
                except Exception:  # noqa: BLE001, S110 - reported by reload[]; here only cleanup
                    pass
                loaded.session = None

    # ------------------------------------------------------------------ backend-wide checks

    def check_declarations(self) -> str:
        """The class attributes the core reads are there and usable."""
        from mlpi.core.plugins.options import option_help

        cls = type(self.backend)
        problems = []
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            problems.append(f"name is {name!r}, not a non-empty string")
        elif self.entry_name is not None and name != self.entry_name:
            problems.append(f"name is '{name}' but the entry point is '{self.entry_name}' (plans record the name)")
        kinds = getattr(cls, "device_kinds", None)
        if not isinstance(kinds, (tuple, list)) or not kinds or not all(isinstance(k, str) and k for k in kinds):
            problems.append(f"device_kinds is {kinds!r}, not a non-empty tuple of strings")
        precisions = getattr(cls, "precisions", None)
        if not isinstance(precisions, (tuple, list)) or not precisions:
            problems.append(f"precisions is {precisions!r}, not a non-empty tuple")
        else:
            unknown = [p for p in precisions if p not in PRECISIONS]
            if unknown:
                problems.append(f"precisions {unknown} are not among {', '.join(PRECISIONS)}")
        options_cls = getattr(cls, "Options", None)
        if not (isinstance(options_cls, type) and dataclasses.is_dataclass(options_cls)):
            problems.append(f"Options is {options_cls!r}, not a dataclass")
        else:
            try:
                options_cls()
                option_help(options_cls)
            except Exception as exc:  # noqa: BLE001 - reported
                problems.append(f"Options cannot be built from its defaults or described ({_describe(exc)})")
        if not isinstance(getattr(cls, "install_hint", ""), str):
            problems.append("install_hint is not a string")
        if self.native_problem:
            problems.append(self.native_problem)
        if problems:
            raise Fail("; ".join(problems))
        knobs = ", ".join(f.name for f in dataclasses.fields(options_cls)) or "none"
        return f"{name}: {', '.join(kinds)}; {', '.join(precisions)}; options: {knobs}"

    def check_version(self) -> str:
        """version() returns a non-empty string."""
        if self.version_problem:
            raise Fail(self.version_problem)
        if not isinstance(self.version, str) or not self.version.strip():
            raise Fail(f"version() returned {self.version!r}, not a non-empty string")
        return self.version

    def check_probe(self) -> str:
        """probe() returns a list of Devices of the declared kinds and never raises."""
        if self.probe_problem:
            raise Fail(self.probe_problem)
        if not isinstance(self.probed, list):
            raise Fail(f"probe() returned {type(self.probed).__name__}, not a list of Device")
        wrong = [d for d in self.probed if not isinstance(d, Device)]
        if wrong:
            raise Fail(f"probe() returned {wrong[0]!r}, not a mlpi.core.contract.device.Device")
        kinds = tuple(getattr(self.backend, "device_kinds", ()))
        stray = [str(d) for d in self.probed if d.kind not in kinds]
        if stray:
            raise Fail(f"probe() lists {', '.join(stray)}, of kinds not in device_kinds ({', '.join(kinds)})")
        return ", ".join(str(d) for d in self.probed) or "no devices"

    # ------------------------------------------------------------------ per-model checks

    @property
    def derives(self) -> bool:
        """Whether the backend gets files mlpi's transform derived (not the fp32 ones)."""
        return self.precision in DERIVED and self.native is None

    def model(self, model: StandardModel) -> _Loaded:
        loaded = self.loaded.get(model.key)
        if loaded is None:
            from mlpi.core.engine.onnx_file import inspect_onnx

            path = model.build(self.workdir / f"{model.key}.onnx")
            artifact = inspect_onnx(path)
            loaded = _Loaded(model, path, artifact, path, fixed_in_file=fixed_batch_size(artifact.inputs))
            loaded.grow(max(BATCH_SIZES) + (loaded.fixed_in_file or 0))
            self.loaded[model.key] = loaded
            if self.derives:
                self._derive(loaded)
        return loaded

    def _derive(self, loaded: _Loaded) -> None:
        """Point ``loaded`` at the file mlpi's transform derives for the kit's precision (int8:
        calibrated on the kit's first feeds), built in the kit's cache (:func:`run_checks`); a
        model the transform cannot derive keeps the reason in ``not_derived``."""
        from mlpi.core.engine.onnx_file import inspect_onnx, sha256_of
        from mlpi.core.engine.precision import CalibrationData, PrecisionOptions, derive

        assert self.precision is not None
        calibration: CalibrationData | None = None
        feeds: Callable[[], Iterator[Mapping[str, np.ndarray]]] | None = None
        if self.precision == "int8":
            batch = loaded.fixed_in_file or max(BATCH_SIZES)
            batches = [loaded.feeds(list(range(b * batch, (b + 1) * batch))) for b in range(CALIBRATION_BATCHES)]
            calibration = CalibrationData("dataset", "conformance", None, CALIBRATION_BATCHES * batch)
            feeds = functools.partial(iter, batches)
        chatter = io.StringIO()  # derive's progress lines: the load check says what was derived
        try:
            with contextlib.redirect_stderr(chatter):
                derived = derive(loaded.source, sha256_of(loaded.source), self.precision, PrecisionOptions(),
                                 calibration, feeds)
        except ModelError as exc:
            loaded.not_derived = exc.message
            return
        loaded.path, loaded.derived_key = derived.path, str(derived.record.get("key", ""))
        loaded.artifact = dataclasses.replace(inspect_onnx(derived.path), precision=self.precision)

    def _which_file(self, loaded: _Loaded) -> str:
        """For a reduced precision, the file the backend was given in a few words (the load
        check's detail); empty otherwise."""
        if loaded.derived_key is not None:
            return f" on the derived {self.precision} file (transform {loaded.derived_key[:12]})"
        if self.precision in DERIVED:
            return f" on the fp32 file; the backend derives {self.precision} itself"
        return ""

    def check_load(self, model: StandardModel) -> str:
        """check() and load() accept a standard model and give a Session."""
        loaded = self.model(model)
        if loaded.not_derived is not None:
            loaded.load_problem = f"mlpi cannot derive its {self.precision} file"
            raise Skip(f"mlpi's transform cannot derive the {self.precision} file: {loaded.not_derived}")
        try:
            self.backend.check(loaded.artifact, self.device, self.options, self.precision)
            session = self.backend.load(loaded.artifact, self.device, self.options, self.precision, self.context)
        except (UsageError, DeviceError) as exc:
            loaded.load_problem = "declined"
            raise Skip(f"the backend declines this model here: {exc.message}") from None
        except ModelError as exc:
            loaded.load_problem = "ModelError"
            raise Fail(f"rejected a standard model ({model.about}): {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - the verdict
            loaded.load_problem = type(exc).__name__
            raise Fail(f"raised {_describe(exc)}") from None
        if not isinstance(session, Session):
            loaded.load_problem = "not a Session"
            raise Fail(f"load() returned {type(session).__name__}, not a mlpi Session")
        missing = [a for a in ("inputs", "outputs", "capabilities", "precision") if not hasattr(session, a)]
        if missing:
            loaded.load_problem = "attributes missing"
            raise Fail(f"the session does not set {', '.join(missing)}")
        loaded.session = session
        return f"{type(session).__name__}{self._which_file(loaded)}"

    def check_signature(self, model: StandardModel) -> str:
        """The session's inputs and outputs have the ONNX file's names and dtypes."""
        loaded = self.model(model)
        session = loaded.needs_session()
        problems = []
        for what, mine, theirs in (
            ("inputs", session.inputs, loaded.artifact.inputs),
            ("outputs", session.outputs, loaded.artifact.outputs),
        ):
            if not all(isinstance(s, TensorSpec) for s in mine):
                problems.append(f"{what} are not all TensorSpec")
                continue
            got = {s.name: s.dtype for s in mine}
            want = {s.name: s.dtype for s in theirs}
            if got != want:
                problems.append(f"{what} are {_names(got)}, the ONNX file has {_names(want)}")
                continue
            for spec in mine:
                ref = next(s for s in theirs if s.name == spec.name)
                if len(spec.shape) != len(ref.shape) or any(
                    a is not None and b is not None and a != b for a, b in zip(spec.shape, ref.shape)
                ):
                    problems.append(f"{what[:-1]} '{spec.name}' has shape {format_shape(spec.shape)}, the ONNX file {format_shape(ref.shape)}")
        if problems:
            raise Fail("; ".join(problems))
        return f"{_names({s.name: s.dtype for s in session.inputs})} -> {_names({s.name: s.dtype for s in session.outputs})}"

    def check_capabilities(self, model: StandardModel) -> str:
        """Capabilities are consistent, and a fixed-batch model reports its fixed batch."""
        loaded = self.model(model)
        caps = loaded.needs_session().capabilities
        if not isinstance(caps, Capabilities):
            raise Fail(f"capabilities is {type(caps).__name__}, not mlpi.core.contract.backend.Capabilities")
        problems = []
        mbs = caps.max_batch_size
        if mbs is not None and (not isinstance(mbs, int) or isinstance(mbs, bool) or mbs < 1):
            problems.append(f"max_batch_size is {mbs!r}, not None or a positive int")
            mbs = None
        if caps.fixed_batch and mbs is None:
            problems.append("fixed_batch is true but max_batch_size is not set")
        if not isinstance(caps.preferred_batch_size, int) or caps.preferred_batch_size < 1:
            problems.append(f"preferred_batch_size is {caps.preferred_batch_size!r}, not a positive int")
        elif mbs is not None and caps.preferred_batch_size > mbs:
            problems.append(f"preferred_batch_size {caps.preferred_batch_size} is above max_batch_size {mbs}")
        if not isinstance(caps.concurrent, bool) or not isinstance(caps.fixed_batch, bool):
            problems.append("concurrent and fixed_batch must be booleans")
        fixed = loaded.fixed_in_file
        if fixed is not None and (not caps.fixed_batch or mbs != fixed):
            problems.append(
                f"the model's batch is fixed at {fixed}, but the session reports fixed_batch={caps.fixed_batch}, "
                f"max_batch_size={caps.max_batch_size}"
            )
        if problems:
            raise Fail("; ".join(problems))
        return (
            f"max_batch_size={caps.max_batch_size} fixed_batch={caps.fixed_batch} "
            f"concurrent={caps.concurrent} preferred_batch_size={caps.preferred_batch_size}"
        )

    def check_precision(self, model: StandardModel) -> str:
        """The precision the session reports is declared by the backend (and asked for)."""
        session = self.model(model).needs_session()
        declared = tuple(getattr(self.backend, "precisions", ()))
        if session.precision not in declared:
            raise Fail(f"session.precision is {session.precision!r}, not one of the declared {', '.join(declared)}")
        if self.precision is not None and session.precision != self.precision:
            raise Fail(f"asked for {self.precision}, the session runs {session.precision} (raise an error instead)")
        return session.precision

    def check_outputs(self, model: StandardModel) -> str:
        """run() returns one batch-first array per output with the file's dtype and shape."""
        loaded = self.model(model)
        session = loaded.needs_session()
        fixed, limit = loaded.batch_plan()
        sizes = [limit] if fixed else sorted({1, loaded.one_batch()})
        for n in sizes:
            assert n is not None
            outputs = session.run(loaded.feeds(list(range(n))))
            _collect(outputs, loaded.artifact.outputs, n, strict=True)
        return f"batch {', '.join(map(str, sizes))}"

    def check_values(self, model: StandardModel) -> str:
        """Outputs match ONNX Runtime on the CPU within the precision's tolerance."""
        loaded = self.model(model)
        session = loaded.needs_session()
        # A derived file is judged at its own precision, whatever the session claims (the
        # precision check judges the claim).
        runs = loaded.artifact.precision or self._runs_precision(session)
        if runs == "int8" and loaded.derived_key is None:
            raise Skip("int8 the backend derives itself: its values are not compared with fp32 ONNX Runtime")
        reference, file = self._reference_session(loaded)
        n = loaded.one_batch()
        feeds = loaded.feeds(list(range(n)))
        got = self._run(loaded, feeds, n)
        want = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, feeds)))
        rtol, atol = TOLERANCES[runs]
        outliers = (INT8_OUTLIER_SHARE, INT8_OUTLIER_BOUND) if runs == "int8" else (0.0, 0.0)
        problem = _compare(got, want, rtol, atol, exact_ints=runs == "fp32", against=f"ONNX Runtime CPU on {file}",
                           outliers=outliers)
        if problem:
            raise Fail(problem)
        outside = _outside(got, want, rtol, atol)
        allowed = f"; {outside[0]} of {outside[1]} values outside, up to {INT8_OUTLIER_SHARE:.0%} allowed" if outside[0] else ""
        return f"batch {n} ({runs}) within rtol {rtol:g} atol {atol:g} of ONNX Runtime CPU on {file}{allowed}"

    def check_batch_sizes(self, model: StandardModel) -> str:
        """Every batch size gives each sample the answer it gets alone (dynamic batch), or
        in any row of the fixed batch (fixed batch)."""
        loaded = self.model(model)
        session = loaded.needs_session()
        fixed, limit = loaded.batch_plan()
        rtol, atol, exact = self._self_tolerance(session)
        if fixed:
            assert limit is not None
            rows = list(range(limit))
            rotated = rows[1:] + rows[:1]
            first = self._run(loaded, loaded.feeds(rows), limit)
            second = self._run(loaded, loaded.feeds(rotated), limit)
            for position, sample in enumerate(rotated):
                problem = _compare(_row(second, position), _row(first, sample), rtol, atol, exact, "the same sample in row "
                                   f"{sample}")
                if problem:
                    raise Fail(f"fixed batch {limit}, sample {sample} in row {position}: {problem}")
            return f"fixed batch {limit}: rows are independent"
        sizes = [b for b in BATCH_SIZES if limit is None or b <= limit]
        alone = [self._run(loaded, loaded.feeds([i]), 1) for i in range(max(sizes))]
        for b in sizes[1:]:
            together = self._run(loaded, loaded.feeds(list(range(b))), b)
            for i in range(b):
                problem = _compare(_row(together, i), alone[i], rtol, atol, exact, "batch 1")
                if problem:
                    raise Fail(f"batch {b}, sample {i}: {problem}")
        return f"batches {', '.join(map(str, sizes))} agree with batch 1"

    def check_concurrent(self, model: StandardModel) -> str:
        """run() from several threads at once gives the answers it gives sequentially."""
        loaded = self.model(model)
        session = loaded.needs_session()
        if not session.capabilities.concurrent:
            raise Skip("capabilities.concurrent is false: the core never calls run() from two threads")
        n = loaded.one_batch()
        pool = loaded.pool_size
        jobs = {(t, r): [(t * ROUNDS + r + k) % pool for k in range(n)] for t in range(THREADS) for r in range(ROUNDS)}
        expected = {job: self._run(loaded, loaded.feeds(rows), n) for job, rows in jobs.items()}
        feeds = {job: loaded.feeds(rows) for job, rows in jobs.items()}
        got: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        errors: list[str] = []
        barrier = threading.Barrier(THREADS)

        def worker(t: int) -> None:
            try:
                barrier.wait(TIMEOUT_S)
                for r in range(ROUNDS):
                    got[(t, r)] = _collect(session.run(feeds[(t, r)]), loaded.artifact.outputs, n)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"thread {t}: {_describe(exc)}")

        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            raise Fail(f"run() from {THREADS} threads did not finish within {TIMEOUT_S:g} s (deadlock?)")
        if errors:
            raise Fail(f"run() raised when called from {THREADS} threads: {errors[0]}")
        rtol, atol, exact = self._self_tolerance(session)
        wrong = []
        for job in jobs:
            problem = _compare(got[job], expected[job], rtol, atol, exact, "the sequential run")
            if problem:
                wrong.append(f"thread {job[0]} call {job[1]}: {problem}")
        if wrong:
            raise Fail(f"{len(wrong)} of {len(jobs)} concurrent calls differ from sequential ones; first: {wrong[0]}")
        return f"{THREADS} threads x {ROUNDS} calls agree with sequential runs"

    def check_outputs_kept(self, model: StandardModel) -> str:
        """Arrays returned by run() keep their values after later calls."""
        loaded = self.model(model)
        session = loaded.needs_session()
        n = loaded.one_batch()
        pool = loaded.pool_size
        first = session.run(loaded.feeds(list(range(n))))
        kept = _collect(first, loaded.artifact.outputs, n)
        for shift in (1, 2):
            session.run(loaded.feeds([(i + shift * n) % pool for i in range(n)]))
        for name, value in kept.items():
            if not np.array_equal(first[name], value, equal_nan=value.dtype.kind == "f"):
                raise Fail(
                    f"output '{name}' returned by run() was changed by a later call; "
                    "return fresh arrays (or ones the backend never writes again)"
                )
        return "later calls leave earlier outputs alone"

    def check_reload(self, model: StandardModel) -> str:
        """close() then load() again works and gives the same answers."""
        loaded = self.model(model)
        session = loaded.needs_session()
        n = loaded.one_batch()
        feeds = loaded.feeds(list(range(n)))
        before = self._run(loaded, feeds, n)
        loaded.session = None
        try:
            session.close()
        except Exception as exc:  # noqa: BLE001 - the verdict
            raise Fail(f"close() raised {_describe(exc)}") from None
        try:
            again = self.backend.load(loaded.artifact, self.device, self.options, self.precision, self.context)
        except Exception as exc:  # noqa: BLE001 - the verdict
            raise Fail(f"load() after close() raised {_describe(exc)}") from None
        loaded.session = again
        after = self._run(loaded, feeds, n)
        rtol, atol, exact = self._self_tolerance(again)
        problem = _compare(after, before, rtol, atol, exact, "the first session")
        if problem:
            raise Fail(f"after reloading: {problem}")
        return "closed, loaded again, same answers"

    # ------------------------------------------------------------------ corrupt files

    def check_corrupt(self, kind: str) -> str:
        """Loading a corrupt model file raises ModelError (nothing else)."""
        from mlpi.core.engine.onnx_file import sha256_of

        good = self.model(STANDARD_MODELS[0])
        path = self.workdir / f"corrupt-{kind}.onnx"
        if kind == "random":
            candidates = (np.random.default_rng(seed).bytes(4096) for seed in range(20))
        else:
            data = good.path.read_bytes()
            candidates = (data[:cut] for cut in (len(data) // 2, len(data) // 3, 2 * len(data) // 3, len(data) - 7))
        for blob in candidates:
            path.write_bytes(blob)
            if _is_corrupt(path):
                break
        else:  # pragma: no cover - protobuf always rejects these
            raise Skip(f"could not make a {kind} file that onnx rejects")
        # Offered as the kit offers the standard models: as a derived file where they are derived.
        artifact = ModelArtifact(path.resolve(), sha256_of(path), good.artifact.inputs, good.artifact.outputs,
                                 precision=self.precision if self.derives else None)
        try:
            self.backend.check(artifact, self.device, self.options, self.precision)
            session = self.backend.load(artifact, self.device, self.options, self.precision, self.context)
        except ModelError as exc:
            return f"ModelError: {_clip(exc.message)}"
        except (UsageError, DeviceError) as exc:
            if good.load_problem == "declined" or good.not_derived is not None:
                raise Skip(f"the backend declines the standard models here too: {exc.message}") from None
            raise Fail(f"raised {_describe(exc)}, not mlpi.core.contract.errors.ModelError") from None
        except Exception as exc:  # noqa: BLE001 - the verdict
            raise Fail(f"raised {_describe(exc)}, not mlpi.core.contract.errors.ModelError") from None
        try:
            session.close()
        except Exception:  # noqa: BLE001, S110 - the failure below is what matters
            pass
        raise Fail(f"load() accepted a {'file of random bytes' if kind == 'random' else 'truncated model'} and returned a session")

    # ------------------------------------------------------------------ helpers

    def _run(self, loaded: _Loaded, feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Run and copy the outputs at once (so only outputs_kept sees reused buffers)."""
        session = loaded.needs_session()
        return _collect(session.run(feeds), loaded.artifact.outputs, n)

    def _runs_precision(self, session: Session) -> str:
        runs = getattr(session, "precision", None)
        if runs in PRECISIONS:
            return str(runs)
        return self.precision or "fp32"

    def _self_tolerance(self, session: Session) -> tuple[float, float, bool]:
        runs = self._runs_precision(session)
        rtol, atol = _INT8_SELF_TOLERANCE if runs == "int8" else TOLERANCES.get(runs, _INT8_SELF_TOLERANCE)
        return rtol, atol, runs == "fp32"

    def _reference_session(self, loaded: _Loaded) -> tuple[Any, str]:
        """ONNX Runtime on the CPU running the file the backend was given, and that file in
        words. A derived int8 file runs as written (ORT_DISABLE_ALL: Q/DQ nodes around fp32
        operators, no fused int8 kernels); a derived file ONNX Runtime's CPU kernels cannot
        run (bf16 has few) is replaced by its fp32 source."""
        key = loaded.model.key
        if key not in self._reference:
            try:
                import onnxruntime as ort
            except ImportError:
                raise Skip(NO_ORT) from None
            so = ort.SessionOptions()
            so.log_severity_level = 3
            cpu = ["CPUExecutionProvider"]
            if loaded.derived_key is None:
                self._reference[key] = (ort.InferenceSession(str(loaded.path), sess_options=so, providers=cpu), "the fp32 file")
            else:
                as_written = self.precision == "int8"
                if as_written:
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    session = ort.InferenceSession(str(loaded.path), sess_options=so, providers=cpu)
                    file = "the same derived file" + (", as written" if as_written else "")
                except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the fp32 file stands in
                    if self.precision == "int8":
                        raise Skip(f"ONNX Runtime CPU cannot run the derived int8 file: {_describe(exc)}") from None
                    session = ort.InferenceSession(str(loaded.source), sess_options=so, providers=cpu)
                    file = f"the fp32 file (it cannot run the derived {self.precision} one)"
                self._reference[key] = (session, file)
        return self._reference[key]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """mlpi's cache (``MLPI_CACHE``) in ``folder`` for the block, so what a kit run derives or
    builds (precision transforms, a backend's engines or quantized files) never lands in the
    user's cache; the environment is restored afterwards."""
    before = os.environ.get("MLPI_CACHE")
    os.environ["MLPI_CACHE"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLPI_CACHE", None)
        else:
            os.environ["MLPI_CACHE"] = before


def _random(spec: TensorSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    shape = (count, *(d or 1 for d in spec.sample_shape))
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        low = 0 if dtype.kind == "u" else -4
        return rng.integers(low, 5, shape).astype(dtype)
    raise ValueError(f"input '{spec.name}' has dtype {spec.dtype}, which the kit cannot generate")


def _collect(outputs: Any, specs: tuple[TensorSpec, ...], n: int, strict: bool = False) -> dict[str, np.ndarray]:
    """Copies of the outputs, after checking the structure (``strict``: also dtypes and shapes)."""
    if not isinstance(outputs, Mapping):
        raise Fail(f"run() returned {type(outputs).__name__}, not a mapping of output name to array")
    missing = [s.name for s in specs if s.name not in outputs]
    if missing:
        raise Fail(f"run() returned no '{missing[0]}' (it returned: {', '.join(map(str, outputs)) or 'nothing'})")
    copies = {}
    for spec in specs:
        value = outputs[spec.name]
        if not isinstance(value, np.ndarray):
            raise Fail(f"output '{spec.name}' is a {type(value).__name__}, not a numpy array")
        if value.ndim == 0 or value.shape[0] != n:
            raise Fail(f"output '{spec.name}' has shape {value.shape} for a batch of {n}: the batch must come first")
        if strict:
            if value.dtype != np.dtype(spec.dtype):
                raise Fail(f"output '{spec.name}' is {value.dtype}, the ONNX file says {spec.dtype}")
            sample = spec.sample_shape
            if len(value.shape) - 1 != len(sample) or any(d is not None and d != v for d, v in zip(sample, value.shape[1:])):
                raise Fail(f"output '{spec.name}' has shape {value.shape}, the ONNX file says {format_shape(spec.shape)}")
        copies[spec.name] = np.array(value, copy=True)
    return copies


def _row(outputs: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {name: value[i : i + 1] for name, value in outputs.items()}


def _compare(
    got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], rtol: float, atol: float, exact_ints: bool, against: str,
    outliers: tuple[float, float] = (0.0, 0.0),
) -> str | None:
    """None when ``got`` matches ``want``; else what differs, in words. ``outliers`` (share,
    bound): that share of a float output's values may lie outside rtol/atol, each within
    bound times the output's largest magnitude (int8's saturating kernels; see INT8_OUTLIER_SHARE)."""
    for name, expected in want.items():
        value = np.asarray(got[name])
        expected = np.asarray(expected)
        if value.shape != expected.shape:
            return f"output '{name}' has shape {value.shape}, {against} gives {expected.shape}"
        if expected.dtype.kind in "iub":
            bad = value != expected
            allowed = 0 if exact_ints else int(_INT_FLIP_SHARE * bad.size)
            if int(bad.sum()) > allowed:
                return f"output '{name}': {int(bad.sum())} of {bad.size} values differ from {against}"
            continue
        value64, expected64 = value.astype(np.float64), expected.astype(np.float64)
        bad = ~np.isclose(value64, expected64, rtol=rtol, atol=atol, equal_nan=True)
        if not bad.any():
            continue
        diff = np.abs(value64 - expected64)
        worst = float(np.nanmax(np.where(bad, diff, 0))) if np.isfinite(diff[bad]).any() else float("nan")
        share, bound = outliers
        peak = float(np.nanmax(np.abs(expected64))) if np.isfinite(expected64).any() else 0.0
        if int(bad.sum()) <= int(share * bad.size) and np.isfinite(diff[bad]).all() and worst <= bound * peak:
            continue
        allowed = f"; up to {share:.0%} of them may differ by up to {bound * peak:.3g}" if share else ""
        return (
            f"output '{name}': {int(bad.sum())} of {bad.size} values differ from {against} "
            f"(largest difference {worst:.3g}; rtol {rtol:g}, atol {atol:g}{allowed})"
        )
    return None


def _outside(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], rtol: float, atol: float) -> tuple[int, int]:
    """(values outside rtol/atol, values) over the float outputs of ``want``."""
    outside = total = 0
    for name, expected in want.items():
        if np.asarray(expected).dtype.kind == "f":
            close = np.isclose(np.asarray(got[name], np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol,
                               equal_nan=True)
            outside, total = outside + int((~close).sum()), total + close.size
    return outside, total


def _is_corrupt(path: Path) -> bool:
    from mlpi.core.engine.onnx_file import inspect_onnx

    try:
        inspect_onnx(path)
    except ModelError:
        return True
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {_clip(text)}" if text else type(exc).__name__


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(specs: Mapping[str, str]) -> str:
    return "(" + ", ".join(f"{name}:{dtype}" for name, dtype in specs.items()) + ")"


# --------------------------------------------------------------------------- command line

_PROG = "python -m mlpi.testing.conformance"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    import click

    @click.command(
        context_settings={"help_option_names": ["-h", "--help"]},
        help="Check that a backend plugin keeps mlpi's Backend/Session contract, on tiny standard models.",
    )
    @click.option("--backend", "-b", required=True, help="Backend name or alias, as for `mlpi run`.")
    @click.option("--device", "-d", default="cpu", show_default=True, help="One device unit: cpu, cuda, cuda:1 ...")
    @click.option("--precision", help="fp32, fp16, bf16 or int8 (default: the backend's).")
    @click.option("--option", "-o", "options", multiple=True, help="Backend option KEY=VALUE; repeatable.")
    @click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
    @click.option("--onnx-node-tests", "node_tests", is_flag=True,
                  help="Instead of the checks: run the installed onnx's node test cases, compared with onnxruntime (CPU).")
    @click.option("--sample", type=click.IntRange(min=1), help="With --onnx-node-tests: N cases spread over the "
                  "operators, the same ones every time for a given onnx version.")
    @click.option("--op", "ops", multiple=True, help="With --onnx-node-tests: only this operator's cases; repeatable.")
    @click.option("--isolate", is_flag=True, help="With --onnx-node-tests: run the backend in a worker process, so a "
                  "case that crashes it is unsupported and the run goes on.")
    def command(backend: str, device: str, precision: str | None, options: tuple[str, ...], plugins_file: str | None,
                as_json: bool, node_tests: bool, sample: int | None, ops: tuple[str, ...], isolate: bool) -> int:
        from mlpi.core.plugins.options import parse_assignments

        if node_tests:
            from mlpi.testing.onnx_node_tier import main_node_tests

            return main_node_tests(backend, device, precision, parse_assignments(options), plugins_file, ops, sample, as_json,
                                   isolate)
        if isolate:
            raise UsageError("--isolate runs the ONNX node test cases in a worker process", "add --onnx-node-tests, or drop it")
        if sample is not None or ops:
            raise UsageError("--sample and --op choose ONNX node test cases", "add --onnx-node-tests, or drop them")

        width = max(map(len, check_names()))

        def start(report: ConformanceReport) -> None:
            print(
                f"mlpi conformance: backend {report.backend} {report.version or '?'} ({report.origin}) on {report.device}, "
                f"precision {report.precision or 'default'}",
                file=sys.stderr, flush=True,
            )

        def show(result: CheckResult) -> None:
            print(result.line(width), flush=True)

        report = run_checks(
            backend, device=device, precision=precision, options=parse_assignments(options),
            plugins_file=plugins_file, on_start=None if as_json else start, on_result=None if as_json else show,
        )
        if as_json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            print(report.summary())
        return EXIT_FAILURE if report.failed else EXIT_OK

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=args, prog_name=_PROG, standalone_mode=False)
    except click.UsageError as exc:
        return _fail(exc.format_message(), f"see '{_PROG} --help'", EXIT_USAGE)
    except MlpiError as exc:
        return _fail(exc.message, exc.hint, exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        return _fail("interrupted", None, EXIT_INTERRUPTED)
    return code if isinstance(code, int) else EXIT_OK


def _fail(message: str, hint: str | None, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
