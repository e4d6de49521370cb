"""TensorRT engines for the ``tensorrt`` backend: the profile, the cache key, the file, the build.

An engine is derived from the ONNX artifact and is only valid for one TensorRT version,
one model of GPU, one precision, one optimisation profile and one set of builder options.
All of them go into the cache key, so an engine built for anything else is never found,
and the engine file carries a checksum of itself, so a half-written or damaged file is
rebuilt instead of being handed to TensorRT.

The network is strongly typed (every tensor keeps the type the ONNX graph gives it, as
``trtexec --stronglyTyped`` builds), except where TensorRT 10's builder flags are asked to
choose precisions (``BuildSettings.builder_precision``), which needs a weakly typed network.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi.backends._model_hint import model_hint
from mlpi.core.contract.backend import ModelArtifact, fixed_batch_size, format_shape
from mlpi.core.contract.errors import ModelError, UsageError
from mlpi.core.results.rundir import write_bytes_atomic

#: Changes whenever the engine file layout or the key's meaning changes.
FORMAT = 1
_MAGIC = b"MLPI-TRT-ENGINE\x01"
_HEADER = struct.Struct("<16s32sQ")  # magic, sha256 of the payload, payload length
MODEL_HINT = "check the model with onnx.checker.check_model, or export it again (TensorRT needs opset 9 or later)"


@dataclass(frozen=True)
class Profile:
    """The input shapes an engine is built for.

    ``shapes`` maps each batch-dynamic input to its (min, opt, max) shape; it is empty for a
    model whose batch is fixed in the file (``fixed`` then holds that batch). ``count`` is how
    many copies of the profile the engine holds: one per execution context, because
    TensorRT lets concurrently used contexts of a dynamic-shape engine share no profile.
    """

    shapes: tuple[tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], ...]
    count: int
    fixed: int | None

    @property
    def dynamic(self) -> bool:
        return bool(self.shapes)

    @property
    def low(self) -> int:
        return self.fixed if self.fixed is not None else self.shapes[0][1][0][0]

    @property
    def high(self) -> int:
        return self.fixed if self.fixed is not None else self.shapes[0][1][2][0]

    def describe(self) -> str:
        return f"batch {self.low}" if self.low == self.high else f"batch {self.low}-{self.high}"

    def to_json(self) -> Any:
        if not self.dynamic:
            return {"fixed_batch": self.fixed}
        return {"count": self.count, "shapes": {name: [list(s) for s in mmo] for name, mmo in self.shapes}}


def plan_profile(model: ModelArtifact, batch_size: int, contexts: int) -> Profile:
    """Batch 1 to ``batch_size`` for every batch-dynamic input; ModelError for shapes TensorRT
    cannot be given a profile for here (a dynamic dimension other than the batch)."""
    shapes = []
    for spec in model.inputs:
        if not spec.shape:
            continue
        if any(d is None for d in spec.shape[1:]):
            raise ModelError(
                f"input '{spec.name}' has shape {format_shape(spec.shape)}: only the batch dimension may be dynamic "
                "for TensorRT here",
                "export the model with every dimension but the first fixed",
            )
        if spec.batch_dynamic:
            sample = tuple(int(d) for d in spec.shape[1:])  # type: ignore[arg-type]
            shapes.append((spec.name, ((1, *sample), (batch_size, *sample), (batch_size, *sample))))
    fixed = fixed_batch_size(model.inputs)
    if shapes and fixed is not None:
        raise ModelError(
            "the model mixes inputs with a fixed batch dimension and inputs with a dynamic one",
            "export the model with the same batch dimension on every input",
        )
    if shapes:
        return Profile(tuple(shapes), contexts, None)
    return Profile((), 0, fixed or 1)


def engine_key(fields: dict[str, Any]) -> str:
    """sha256 over everything the engine depends on (canonical JSON)."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- engine files


def read_engine(path: Path) -> tuple[bytes | None, str]:
    """(payload, "") for an intact engine file; (None, why) when it is missing or damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    if len(data) < _HEADER.size:
        return None, f"{len(data)} bytes, shorter than its header"
    magic, digest, length = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != _MAGIC:
        return None, "not an mlpi engine file"
    if len(payload) != length:
        return None, f"{len(payload)} of {length} bytes (truncated)"
    if hashlib.sha256(payload).digest() != digest:
        return None, "checksum mismatch"
    return payload, ""


def write_engine(path: Path, payload: bytes) -> None:
    header = _HEADER.pack(_MAGIC, hashlib.sha256(payload).digest(), len(payload))
    write_bytes_atomic(path, header + payload)


def cache_dir(sub: str = "") -> Path:
    from mlpi.core.engine.cache import cache_root

    path = cache_root() / "tensorrt"
    return path / sub if sub else path


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create TensorRT's cache folder {path}: {exc.strerror or exc}",
            "set MLPI_CACHE to a writable folder, or pass -o cache=false",
        ) from None
    return path


# --------------------------------------------------------------------------- logging


class _ErrorLog:
    """Keeps TensorRT's recent error messages, so failures can be reported with TensorRT's reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        with self._lock:
            self._messages = (self._messages + [message])[-50:]
            self.count += 1

    def since(self, mark: int) -> list[str]:
        with self._lock:
            new = self.count - mark
            return self._messages[-new:] if new > 0 else []


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def logger(trt: Any) -> Any:
    """One TensorRT logger for the process (TensorRT warns when builders get different ones).

    It prints nothing: errors are kept and put into the exceptions mlpi raises.
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER.trt is not trt:
            severity = trt.ILogger.Severity
            errors = (severity.INTERNAL_ERROR, severity.ERROR)

            class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.trt = trt
                    self.errors = _ErrorLog()

                def log(self, level: Any, message: str) -> None:
                    if level in errors:
                        self.errors.add(str(message).strip())

            _LOGGER = _Logger()
            init_plugins = getattr(trt, "init_libnvinfer_plugins", None)
            if init_plugins is not None:
                init_plugins(_LOGGER, "")
        return _LOGGER


def last_error(log: Any, mark: int, default: str) -> str:
    found = log.errors.since(mark)
    text = found[-1] if found else default
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildSettings:
    """What a build is asked for. ``precision`` is the one that runs; ``builder_precision``:
    TensorRT 10's builder flags (and int8 calibrator) derive it from an fp32 graph, on a
    weakly typed network; otherwise the graph's own types decide, on a strongly typed one."""

    precision: str
    workspace_mib: int
    builder_optimization_level: int
    tf32: bool
    builder_precision: bool = False

    @property
    def network(self) -> str:
        return "weakly typed, builder flags" if self.builder_precision else "strongly typed"

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.builder_optimization_level,
            "tf32": self.tf32,
            "network": self.network,
        }


def network_flags(trt: Any, builder_precision: bool) -> int:
    """``create_network`` flags: strongly typed unless TensorRT 10's builder flags choose the
    precisions. TensorRT 10 is strongly typed only with this flag; TensorRT 11 always is, and
    accepts the flag (its value there is 0, on 10 it is 1: ``int()`` of the enum gives each)."""
    if builder_precision:
        return 0  # TensorRT 10 networks are always explicit batch; weak typing is the default there
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(
    trt: Any,
    model: ModelArtifact,
    profile: Profile,
    settings: BuildSettings,
    calibrator: Any = None,
    calibration_batch: int | None = None,
) -> bytes:
    """Parse the ONNX file and build a serialized engine; ModelError with TensorRT's reason."""
    log = logger(trt)
    mark = log.errors.count
    builder = trt.Builder(log)
    network = builder.create_network(network_flags(trt, settings.builder_precision))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(model.path)):
        reasons = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        reason = reasons[0] if reasons else last_error(log, mark, "no reason given")
        raise ModelError(f"TensorRT's ONNX parser rejected {model.path}: {reason[:300]}",
                         model_hint("tensorrt", " ".join(reasons) or reason, MODEL_HINT))
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    wanted = {spec.name for spec in model.inputs}
    if names != wanted:
        raise ModelError(
            f"TensorRT sees inputs {sorted(names)} in {model.path}, the ONNX file declares {sorted(wanted)}",
            MODEL_HINT,
        )

    config = builder.create_builder_config()
    if settings.workspace_mib > 0:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.builder_optimization_level
    if not settings.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default, in TensorRT 10 and 11 alike
    if settings.builder_precision and settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 engines run what cannot be int8 in fp16
    if settings.builder_precision and settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if profile.dynamic:
            assert calibration_batch is not None
            calibration = builder.create_optimization_profile()
            for name, (low, _, _) in profile.shapes:
                shape = (calibration_batch, *low[1:])
                calibration.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(calibration)
    for _ in range(profile.count):
        optimisation = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes:
            optimisation.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimisation)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(
            f"TensorRT could not build an engine for {model.path} ({settings.precision}, {settings.network}, "
            f"{profile.describe()}): "
            f"{last_error(log, mark, 'no reason given')}",
            "see TensorRT's message; a smaller --batch-size or -o workspace_mib=N may help, or export the model again",
        )
    return bytes(memoryview(serialized))


def _parser_error(error: Any) -> str:
    describe: Callable[[], str] | None = getattr(error, "desc", None)
    text = describe() if callable(describe) else str(error)
    return str(text).strip() or str(error)
