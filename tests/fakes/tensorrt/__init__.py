"""FAKE of the TensorRT 10 or 11 Python module, for tests only.

This is a fake for a runtime that cannot exist on the machines the test suite runs on:
TensorRT needs an NVIDIA GPU and its libraries, which these machines do not have. It is
never installed: tests load this file and put it into ``sys.modules`` as ``tensorrt``
themselves (together with the fake CUDA runtime in ``../cuda_runtime.py``), and take
it out again afterwards.

``FAKE_TENSORRT_MAJOR`` (read when the file is loaded: ``10``, the default, or ``11``) picks
which TensorRT it is. As 11.x it lacks what TensorRT 11 removed from the Python API (weak
typing: the precision builder flags, ``IBuilderConfig.int8_calibrator`` and the calibration
profile, the ``IInt8*Calibrator`` classes, ``platform_has_fast_fp16/int8``, ``IAlgorithm*``,
``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``): reaching one raises ``AttributeError``, as
the real module does, and is also recorded in ``REMOVED_REACHED``, so a test sees an attempt
even where the caller swallows the error. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is 1
on 10.x and 0 on 11.x, as in TensorRT's headers.

It has exactly the API surface mlpi's ``tensorrt`` backend uses, and its numbers are real:

- ``OnnxParser.parse_from_file`` reads the ONNX file with the ``onnx`` package and fails,
  with errors, on what onnx rejects;
- ``Builder.create_network`` makes a strongly typed network when asked (10.x) or always
  (11.x); a strongly typed network refuses precision builder flags at build time;
- ``Builder.build_serialized_network`` checks the optimisation profiles against the
  network (dynamic inputs need one; shapes must be consistent), runs int8 calibration
  through the given calibrator on the bytes it hands over in fake device memory (10.x,
  weakly typed), and serialises what it recorded (flags, profiles, calibration, the ONNX
  path, strong typing) as the "engine"; every build is also appended to ``BUILDS`` for
  tests to inspect;
- ``Runtime.deserialize_cuda_engine`` refuses bytes that are not such an engine, or that
  were built by another TensorRT version or for another compute capability;
- an execution context honours ``set_input_shape`` only within its profile's limits,
  and ``execute_async_v3`` queues, on the given stream, a run of the ONNX graph with
  onnxruntime on the CPU: inputs are read from, and outputs written to, the fake device
  memory at the addresses given by ``set_tensor_address``. A strongly typed engine runs
  the graph as its types say (an fp16 or Q/DQ graph runs as it is); a weakly typed engine
  built with the FP16 flag rounds float inputs and outputs through float16. It refuses to
  run on another device than the one the context was made on, and refuses two contexts of
  one dynamic-shape engine working at once on the same profile (TensorRT's documented rule).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from enum import Enum, EnumMeta, IntEnum
from pathlib import Path
from typing import Any

import numpy as np

MAJOR = int(os.environ.get("FAKE_TENSORRT_MAJOR", "10"))
if MAJOR not in (10, 11):
    raise ImportError(f"FAKE_TENSORRT_MAJOR is {MAJOR}; the fake is TensorRT 10 or 11")
__version__ = "10.9.0.34" if MAJOR == 10 else "11.4.0.106"

#: One record per build_serialized_network call that produced an engine.
BUILDS: list[dict[str, Any]] = []
#: Every engine deserialized, in order.
ENGINES: list[ICudaEngine] = []
#: Every attempt to reach an API TensorRT 11 removed ("BuilderFlag.FP16", ...), on 11.x.
REMOVED_REACHED: list[str] = []

#: What TensorRT 11 removed, per owner ("" is the module).
_REMOVED_IN_11: dict[str, frozenset[str]] = {
    "": frozenset({"IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                   "IInt8LegacyCalibrator", "CalibrationAlgoType", "QuantizationFlag", "IAlgorithm",
                   "IAlgorithmContext", "IAlgorithmIOInfo", "IAlgorithmSelector", "IAlgorithmVariant"}),
    "BuilderFlag": frozenset({"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                              "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"}),
    "NetworkDefinitionCreationFlag": frozenset({"EXPLICIT_BATCH"}),
    "IBuilderConfig": frozenset({"int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                                 "set_quantization_flag", "get_quantization_flag", "clear_quantization_flag",
                                 "quantization_flags", "algorithm_selector"}),
    "Builder": frozenset({"platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"}),
}


def _removed(owner: str, name: str) -> AttributeError:
    """The error for a missing attribute, recording the attempt when TensorRT 11 removed it."""
    if MAJOR >= 11 and name in _REMOVED_IN_11.get(owner, frozenset()):
        REMOVED_REACHED.append(f"{owner}.{name}" if owner else name)
    where = f"type object '{owner}'" if owner in ("BuilderFlag", "NetworkDefinitionCreationFlag") else (
        f"'tensorrt.{owner}' object" if owner else "module 'tensorrt'")
    return AttributeError(f"{where} has no attribute '{name}'")


def __getattr__(name: str) -> Any:
    raise _removed("", name)


class _RecordingEnumMeta(EnumMeta):
    """An enum whose missing members are looked up through :func:`_removed`."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise _removed(cls.__name__, name)

    def __getitem__(cls, name: str) -> Any:
        try:
            return super().__getitem__(name)
        except KeyError:
            _removed(cls.__name__, name)  # recorded; the lookup still fails as Enum's does
            raise

_MAGIC = b"FAKE-TRT-ENGINE\n"


def _cuda() -> Any:
    from cuda.bindings import runtime  # the fake one, put into sys.modules by the tests

    return runtime


class ILogger:
    class Severity(IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        pass


def _error(logger: Any, message: str) -> None:
    logger.log(ILogger.Severity.ERROR, message)


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    return True


class DataType(Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8
    BF16 = 7


_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}


def nptype(trt_type: DataType) -> type:
    if trt_type not in _NUMPY:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {trt_type}")
    return _NUMPY[trt_type]


class TensorIOMode(Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_BUILDER_FLAGS = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                  "SPARSE_WEIGHTS": 7, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
                  "DIRECT_IO": 11, "FP8": 15, "BF16": 17, "INT4": 22, "FP4": 26}
#: The precision flags a strongly typed network refuses (those this TensorRT has).
_PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4")


class _RecordingEnum(Enum, metaclass=_RecordingEnumMeta):
    pass


BuilderFlag = _RecordingEnum(
    "BuilderFlag", {n: v for n, v in _BUILDER_FLAGS.items() if MAJOR == 10 or n not in _REMOVED_IN_11["BuilderFlag"]}
)


class NetworkDefinitionCreationFlag(IntEnum, metaclass=_RecordingEnumMeta):
    if MAJOR == 10:
        EXPLICIT_BATCH = 0  # deprecated in 10: networks are always explicit batch
        STRONGLY_TYPED = 1
        PREFER_JIT_PYTHON_PLUGINS = 2
        PREFER_AOT_PYTHON_PLUGINS = 3
    else:
        STRONGLY_TYPED = 0  # deprecated in 11 and ignored: networks are always strongly typed
        PREFER_JIT_PYTHON_PLUGINS = 1
        PREFER_AOT_PYTHON_PLUGINS = 2


class MemoryPoolType(Enum):
    WORKSPACE = 0


# --------------------------------------------------------------------------- network


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType, symbols: tuple[str | None, ...]) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.symbols = symbols  # the ONNX dim_param of each dynamic dimension


class INetworkDefinition:
    def __init__(self) -> None:
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx_path: str | None = None
        self.strongly_typed = False

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
               9: DataType.BOOL, 2: DataType.UINT8, 16: DataType.BF16}


class _ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self._network = network
        self._logger = logger
        self._errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(model)
            onnx.checker.check_model(proto)
        except Exception as exc:  # noqa: BLE001 - what onnx rejects, TensorRT's parser rejects
            self._errors.append(_ParserError(f"ModelImporter.cpp: Failed to parse ONNX model from file: {model} ({exc})"))
            return False
        initializers = {init.name for init in proto.graph.initializer}
        try:
            self._network.inputs = [self._tensor(v) for v in proto.graph.input if v.name not in initializers]
            self._network.outputs = [self._tensor(v) for v in proto.graph.output]
        except ValueError as exc:
            self._errors.append(_ParserError(str(exc)))
            return False
        self._network.onnx_path = os.path.abspath(model)
        return True

    @staticmethod
    def _tensor(value: Any) -> ITensor:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in _ONNX_TYPES:
            raise ValueError(f"tensor '{value.name}': unsupported ONNX data type {tensor_type.elem_type}")
        dims = tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        symbols = tuple(d.dim_param if d.HasField("dim_param") else None for d in dims)
        return ITensor(value.name, shape, _ONNX_TYPES[tensor_type.elem_type], symbols)


# --------------------------------------------------------------------------- builder


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # TensorRT's names
        low, mid, high = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not (len(low) == len(mid) == len(high)) or any(not a <= b <= c for a, b, c in zip(low, mid, high)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (low, mid, high)

    def get_shape(self, input: str) -> list[tuple[int, ...]]:
        return list(self.shapes.get(input, ()))


class IBuilderConfig:
    """Builder settings; on 11.x without the int8 calibrator and calibration profile, and, like
    the real (pybind) object, refusing to be given attributes it does not have."""

    _SETTABLE = frozenset({"builder_optimization_level", *(("int8_calibrator",) if MAJOR == 10 else ())})

    def __init__(self) -> None:
        self._flags = {BuilderFlag.TF32}  # TensorRT's default
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._int8_calibrator: Any = None
        self._calibration_profile: IOptimizationProfile | None = None
        self.builder_optimization_level = 3

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._SETTABLE:
            raise _removed("IBuilderConfig", name)
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        raise _removed("IBuilderConfig", name)

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(pool, _cuda().DEVICES[_cuda().current_device()].total_memory)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    if MAJOR == 10:

        @property
        def int8_calibrator(self) -> Any:
            return self._int8_calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, calibrator: Any) -> None:
            self._int8_calibrator = calibrator

        def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
            self._calibration_profile = profile
            return True

        def get_calibration_profile(self) -> IOptimizationProfile | None:
            return self._calibration_profile


if MAJOR == 10:

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass


def _dynamic(tensor: ITensor) -> bool:
    return any(d < 0 for d in tensor.shape)


def _fits(tensor: ITensor, shape: tuple[int, ...]) -> bool:
    return len(shape) == len(tensor.shape) and all(d < 0 or d == s for d, s in zip(tensor.shape, shape))


class Builder:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __getattr__(self, name: str) -> Any:
        raise _removed("Builder", name)

    if MAJOR == 10:
        platform_has_fast_fp16 = True
        platform_has_fast_int8 = True
        platform_has_tf32 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        network = INetworkDefinition()
        strongly_typed = 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network.strongly_typed = MAJOR >= 11 or bool(int(flags) & strongly_typed)
        return network

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        cuda = _cuda()
        device = cuda.current_device()
        gpu = cuda.DEVICES[device]
        if network.onnx_path is None:
            _error(self.logger, "Network must have at least one output")
            return None
        precision_flags = sorted(f.name for f in config._flags if f.name in _PRECISION_FLAGS)
        if network.strongly_typed and precision_flags:
            _error(self.logger, f"Builder flags {precision_flags} set precisions, which a strongly typed network does not "
                                "allow: its types come from the network")
            return None
        dynamic = [t for t in network.inputs if _dynamic(t)]
        if dynamic and not config._profiles:
            _error(self.logger, "Network has dynamic or shape inputs, but no optimization profile has been defined.")
            return None
        for index, profile in enumerate(config._profiles):
            for tensor in dynamic:
                shapes = profile.shapes.get(tensor.name)
                if shapes is None:
                    _error(self.logger, f"Optimization profile {index} has no shape for dynamic input '{tensor.name}'")
                    return None
                if not all(_fits(tensor, s) for s in shapes):
                    _error(self.logger, f"Optimization profile {index}: shapes {shapes} do not fit input '{tensor.name}'")
                    return None
        if not 0 <= config.builder_optimization_level <= 5:
            _error(self.logger, f"builder optimization level {config.builder_optimization_level} is not 0-5")
            return None
        record: dict[str, Any] = {
            "onnx": network.onnx_path,
            "device": device,
            "gpu": gpu.name,
            "flags": sorted(flag.name for flag in config._flags),
            "workspace": config._pools.get(MemoryPoolType.WORKSPACE),
            "opt_level": config.builder_optimization_level,
            "strongly_typed": network.strongly_typed,
            "profiles": [{n: [list(s) for s in mmo] for n, mmo in p.shapes.items()} for p in config._profiles],
            "calibration_batches": [],
            "calibration_from_cache": False,
            "scales": None,
        }
        if "INT8" in {f.name for f in config._flags}:  # only 10.x has the flag, on weakly typed networks
            scales = self._calibrate(network, config, record)
            if scales is None:
                return None
            record["scales"] = scales
        doc = {
            "version": __version__,
            "compute_capability": [gpu.major, gpu.minor],
            "gpu": gpu.name,
            "onnx": network.onnx_path,
            "onnx_sha256": hashlib.sha256(Path(network.onnx_path).read_bytes()).hexdigest(),
            "flags": record["flags"],
            "strongly_typed": network.strongly_typed,
            "inputs": [_tensor_doc(t) for t in network.inputs],
            "outputs": [_tensor_doc(t) for t in network.outputs],
            "profiles": record["profiles"],
            "scales": record["scales"],
        }
        BUILDS.append(record)
        return _MAGIC + json.dumps(doc).encode()

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig, record: dict[str, Any]) -> dict[str, float] | None:
        calibrator = config._int8_calibrator
        if calibrator is None:
            _error(self.logger, "INT8 is set but no calibrator and no dynamic ranges are given")
            return None
        header = f"FAKE-TRT-{__version__}-EntropyCalibration2"
        cache = calibrator.read_calibration_cache()
        if cache:
            lines = bytes(cache).decode().splitlines()
            if lines and lines[0] == header:
                record["calibration_from_cache"] = True
                return {name: float(value) for name, value in (line.split(": ") for line in lines[1:])}
        shapes = {}
        for tensor in network.inputs:
            if _dynamic(tensor):
                profile = config._calibration_profile
                if profile is None or tensor.name not in profile.shapes:
                    _error(self.logger, "Calibration with dynamic shapes needs a calibration profile")
                    return None
                low, mid, high = profile.shapes[tensor.name]
                if low != high:
                    _error(self.logger, "The calibration profile must have static shapes (min == opt == max)")
                    return None
                shapes[tensor.name] = mid
            else:
                shapes[tensor.name] = tensor.shape
        cuda = _cuda()
        names = [t.name for t in network.inputs]
        absmax = {name: 0.0 for name in names}
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            batch = {}
            for tensor, pointer in zip(network.inputs, pointers):
                dtype = np.dtype(nptype(tensor.dtype))
                count = int(np.prod(shapes[tensor.name]))
                raw = cuda.device_bytes(int(pointer), count * dtype.itemsize)
                if raw is None:
                    _error(self.logger, f"calibration batch for '{tensor.name}' is not in device memory of its size")
                    return None
                value = raw.view(dtype).reshape(shapes[tensor.name]).copy()
                batch[tensor.name] = value
                absmax[tensor.name] = max(absmax[tensor.name], float(np.abs(value.astype(np.float64)).max(initial=0)))
            record["calibration_batches"].append(batch)
        if not record["calibration_batches"]:
            _error(self.logger, "Calibration failure occurred with no scaling factors detected.")
            return None
        text = "\n".join([header, *(f"{name}: {value!r}" for name, value in absmax.items())])
        calibrator.write_calibration_cache(text.encode())
        return absmax


def _tensor_doc(tensor: ITensor) -> dict[str, Any]:
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype.name, "symbols": list(tensor.symbols)}


# --------------------------------------------------------------------------- runtime


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)")
            return None
        try:
            doc = json.loads(data[len(_MAGIC) :])
        except ValueError:
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (engine plan is corrupt)")
            return None
        if doc["version"] != __version__:
            _error(self.logger, f"The engine plan file is not compatible with this version of TensorRT, expecting "
                                f"library version {__version__} got {doc['version']}")
            return None
        cuda = _cuda()
        gpu = cuda.DEVICES[cuda.current_device()]
        if doc["compute_capability"] != [gpu.major, gpu.minor]:
            _error(self.logger, "The engine plan file is generated on an incompatible device")
            return None
        engine = ICudaEngine(doc, self.logger)
        ENGINES.append(engine)
        return engine


class ICudaEngine:
    def __init__(self, doc: dict[str, Any], logger: Any) -> None:
        self.doc = doc
        self.logger = logger
        self.flags = set(doc["flags"])
        self._io = [(t, TensorIOMode.INPUT) for t in doc["inputs"]] + [(t, TensorIOMode.OUTPUT) for t in doc["outputs"]]
        self._by_name = {t["name"]: (t, mode) for t, mode in self._io}
        self._profiles = [{n: [tuple(s) for s in mmo] for n, mmo in p.items()} for p in doc["profiles"]]
        self._lock = threading.Lock()
        self._session: Any = None
        self.contexts: list[IExecutionContext] = []
        self.working: set[IExecutionContext] = set()
        self.peak_working = 0
        self.executions = 0

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]["name"]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name][1] if name in self._by_name else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._by_name[name][0]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._by_name[name][0]["shape"])

    @property
    def num_optimization_profiles(self) -> int:
        return max(len(self._profiles), 1)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return list(self._profiles[profile_index][name])

    @property
    def dynamic(self) -> bool:
        return any(-1 in t["shape"] for t in self.doc["inputs"])

    def create_execution_context(self) -> IExecutionContext:
        context = IExecutionContext(self)
        self.contexts.append(context)
        return context

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3
                self._session = onnxruntime.InferenceSession(self.doc["onnx"], options, providers=["CPUExecutionProvider"])
            return self._session

    def start(self, context: IExecutionContext) -> str | None:
        """Mark ``context`` as working; the reason it may not, if any."""
        with self._lock:
            if self.dynamic:
                for other in self.working:
                    if other is not context and other.profile == context.profile:
                        return f"profile {context.profile} is in use by another execution context"
            self.working.add(context)
            self.peak_working = max(self.peak_working, len(self.working))
            self.executions += 1
            return None

    def finish(self, context: IExecutionContext) -> None:
        with self._lock:
            self.working.discard(context)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.device = _cuda().current_device()
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.pending = 0
        self.misuse = 0  # calls made while this context still had queued work
        self.threads: set[int] = set()
        self._reset_shapes()

    def _reset_shapes(self) -> None:
        self.shapes = {t["name"]: tuple(t["shape"]) for t in self.engine.doc["inputs"] if -1 not in t["shape"]}

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles or _cuda().stream_by_handle(stream_handle) is None:
            raise RuntimeError("Error in set optimization profile async.")
        self.profile = profile_index
        self._reset_shapes()
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        if self.pending:
            self.misuse += 1
        spec, mode = self.engine._by_name.get(name, (None, None))
        shape = tuple(int(d) for d in shape)
        if mode != TensorIOMode.INPUT or len(shape) != len(spec["shape"]):
            _error(self.engine.logger, f"IExecutionContext::setInputShape: Error Code 3: no input '{name}' of rank {len(shape)}")
            return False
        if any(d >= 0 and d != s for d, s in zip(spec["shape"], shape)):
            _error(self.engine.logger, f"IExecutionContext::setInputShape: Error Code 3: {shape} does not match {spec['shape']}")
            return False
        if -1 in spec["shape"]:
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if any(not a <= s <= b for a, s, b in zip(low, shape, high)):
                _error(self.engine.logger, f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Supplied "
                                           f"binding dimension {shape} for '{name}' is out of bounds of profile "
                                           f"{self.profile}: min {low}, max {high})")
                return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        spec, mode = self.engine._by_name[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, tuple(spec["shape"]))
        bound: dict[str, int] = {}
        for tensor in self.engine.doc["inputs"]:
            shape = self.shapes.get(tensor["name"])
            if shape is not None:
                bound.update({sym: d for sym, d in zip(tensor["symbols"], shape) if sym})
        return tuple(d if d >= 0 else bound.get(sym, -1) for d, sym in zip(spec["shape"], spec["symbols"]))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._by_name:
            _error(self.engine.logger, f"IExecutionContext::setTensorAddress: no tensor '{name}'")
            return False
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cuda = _cuda()
        logger = self.engine.logger
        if self.pending:
            self.misuse += 1
        stream = cuda.stream_by_handle(int(stream_handle))
        if stream is None:
            _error(logger, "IExecutionContext::enqueueV3: invalid stream")
            return False
        if cuda.current_device() != self.device or stream.device != self.device:
            _error(logger, f"IExecutionContext::enqueueV3: context of GPU {self.device} used on GPU {cuda.current_device()}")
            return False
        doc = self.engine.doc
        shapes = {}
        for tensor in doc["inputs"] + doc["outputs"]:
            name = tensor["name"]
            shape = self.get_tensor_shape(name)
            if any(d < 0 for d in shape):
                _error(logger, f"IExecutionContext::enqueueV3: the shape of '{name}' is not specified")
                return False
            nbytes = int(np.prod(shape)) * np.dtype(nptype(DataType[tensor["dtype"]])).itemsize
            address = self.addresses.get(name)
            if address is None or cuda.device_bytes(address, nbytes) is None or cuda.device_of(address) != self.device:
                _error(logger, f"IExecutionContext::enqueueV3: no device memory of {nbytes} bytes set for '{name}'")
                return False
            shapes[name] = shape
        why = self.engine.start(self)
        if why is not None:
            _error(logger, f"IExecutionContext::enqueueV3: {why}")
            return False
        self.pending += 1
        self.threads.add(threading.get_ident())
        addresses = dict(self.addresses)
        cuda.enqueue(stream, lambda: self._execute(shapes, addresses))
        return True

    def _execute(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
        cuda = _cuda()
        doc = self.engine.doc
        half = "FP16" in self.engine.flags
        try:
            cuda.delay()
            feeds = {}
            for tensor in doc["inputs"]:
                dtype = np.dtype(nptype(DataType[tensor["dtype"]]))
                shape = shapes[tensor["name"]]
                raw = cuda.device_bytes(addresses[tensor["name"]], int(np.prod(shape)) * dtype.itemsize)
                value = raw.view(dtype).reshape(shape).copy()
                feeds[tensor["name"]] = _half(value) if half else value
            results = self.engine.session().run(None, feeds)
            for tensor, value in zip(doc["outputs"], results):
                dtype = np.dtype(nptype(DataType[tensor["dtype"]]))
                shape = shapes[tensor["name"]]
                if tuple(value.shape) != shape:
                    raise RuntimeError(f"output '{tensor['name']}' came out {value.shape}, expected {shape}")
                value = np.ascontiguousarray(value, dtype=dtype)
                value = _half(value) if half else value
                target = cuda.device_bytes(addresses[tensor["name"]], value.nbytes)
                target[:] = value.reshape(-1).view(np.uint8)
        finally:
            self.pending -= 1
            self.engine.finish(self)


def _half(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind != "f":
        return value
    return value.astype(np.float16).astype(value.dtype)
