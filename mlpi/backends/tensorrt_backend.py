"""The ``tensorrt`` backend: the model's ONNX file compiled to a TensorRT 10 engine on an NVIDIA GPU.

``--device cuda`` or ``cuda:N``; ``--precision fp32`` (the default), ``fp16`` or ``int8``.
The engine is built for the batch sizes the run sends (an optimisation profile from batch 1
to ``LoadContext.batch_size``, or ``-o default_batch_size`` when the run gives none) and
kept in ``<mlpi cache>/tensorrt`` under a key covering everything it depends on (see
:mod:`mlpi.backends._trt_engine`); a later run with the same key loads it in a second
instead of building it again. int8 engines are calibrated with an entropy calibrator on
the run's calibration set, or take their scales from a calibration cache.

A session holds ``-o contexts`` execution contexts, each with its own CUDA stream, pinned
host buffers and device buffers allocated once for the largest batch. Each ``run`` takes a
free context, copies the batch in, runs it and copies the outputs out on that context's
stream, and returns fresh arrays (the pinned buffers are reused by the next call). The core
keeps ``contexts`` batches in flight from as many threads, so copies and kernels of one
batch overlap with those of the others.

Needs ``tensorrt`` 10 and cuda-python (``pip install "mlpi[tensorrt]"``) plus an NVIDIA driver.
"""

from __future__ import annotations

import hashlib
import math
import queue
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.backends._cuda import cuda_absence, cuda_device_count
from mlpi.backends._trt_cuda import Cuda, CudaError, GpuInfo, host_array, import_runtime
from mlpi.backends._trt_engine import (
    BuildSettings,
    Profile,
    build_engine,
    cache_dir,
    engine_key,
    ensure_dir,
    last_error,
    logger,
    plan_profile,
    read_engine,
    write_engine,
)
from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DeviceError,
    MlpiError,
    ModelError,
    PluginError,
    UsageError,
)

_INSTALL_HINT = 'pip install "mlpi[tensorrt]"'
_PRECISIONS = ("fp32", "fp16", "int8")
_MAX_CONTEXTS = 32
_MAX_OPT_LEVEL = 5


@dataclass
class TrtOptions:
    contexts: int = field(
        default=2,
        metadata={
            "help": "execution contexts per GPU, each with its own CUDA stream and buffers: batches in flight at once",
            "min": 1, "max": _MAX_CONTEXTS,
        },
    )
    workspace_mib: int = field(
        default=0, metadata={"help": "builder workspace limit in MiB (0: TensorRT's default, the GPU's memory)", "min": 0}
    )
    builder_optimization_level: int = field(
        default=3,
        metadata={
            "help": "0-5: higher levels try more kernels, build slower and may run faster (TensorRT's default: 3)",
            "min": 0, "max": _MAX_OPT_LEVEL,
        },
    )
    tf32: bool = field(
        default=False,
        metadata={"help": "let fp32 layers use TF32 math on Ampere and newer: faster, about 1e-3 relative error"},
    )
    default_batch_size: int = field(
        default=32, metadata={"help": "largest batch the engine is built for when the run gives no --batch-size", "min": 1}
    )
    calibration_cache: str = field(
        default="",
        metadata={"help": "int8: a TensorRT calibration cache file to take the scales from instead of calibrating"},
    )
    cache: bool = field(
        default=True, metadata={"help": "keep built engines in <mlpi cache>/tensorrt and reuse them"}
    )


@dataclass
class _Tensor:
    """One engine input or output: its types and where its buffers of every context are."""

    name: str
    dtype: np.dtype  # what the engine takes or gives
    onnx_dtype: np.dtype  # what the ONNX file declares (and callers use)
    sample: tuple[int, ...]
    dynamic: bool


class _Slot:
    """One execution context with its stream and its buffers, sized for the largest batch."""

    def __init__(self, context: Any, stream: Any, handle: int) -> None:
        self.context = context
        self.stream = stream
        self.handle = handle
        self.device: dict[str, int] = {}
        self.host: dict[str, int] = {}
        self.views: dict[str, np.ndarray] = {}  # uint8 views of the pinned host buffers
        self.capacity: dict[str, int] = {}

    def allocate(self, cuda: Cuda, name: str, nbytes: int) -> None:
        size = max(nbytes, 1)
        self.device[name] = cuda.malloc(size)
        self.host[name] = cuda.malloc_host(size)
        self.views[name] = host_array(self.host[name], size)
        self.capacity[name] = size

    def free(self, cuda: Cuda) -> None:
        if self.stream is not None:
            _quietly(cuda.stream_synchronize, self.stream)
        self.views.clear()
        for pointer in self.device.values():
            _quietly(cuda.free, pointer)
        for pointer in self.host.values():
            _quietly(cuda.free_host, pointer)
        self.device.clear()
        self.host.clear()
        if self.stream is not None:
            _quietly(cuda.stream_destroy, self.stream)
        self.stream = None
        self.context = None


class TensorRTSession(Session):
    """One TensorRT engine on one GPU; ``run`` is thread-safe through a queue of contexts."""

    def __init__(
        self,
        trt: Any,
        cuda: Cuda,
        runtime: Any,
        engine: Any,
        model: ModelArtifact,
        gpu: GpuInfo,
        profile: Profile,
        precision: str,
        contexts: int,
        engine_path: Path | None,
        reused: bool,
    ) -> None:
        self._trt = trt
        self._cuda = cuda
        self._runtime = runtime
        self._engine = engine
        self.gpu = gpu
        self.profile = profile
        self.precision = precision
        self.engine_path = engine_path
        self.engine_reused = reused
        self.inputs: list[TensorSpec] = list(model.inputs)
        self.outputs: list[TensorSpec] = list(model.outputs)
        self._in, self._out = _io_tensors(trt, engine, model, profile)
        self._count = contexts
        self.capabilities = Capabilities(
            max_batch_size=profile.high,
            fixed_batch=not profile.dynamic,
            concurrent=True,
            preferred_batch_size=profile.high,
            max_in_flight=contexts,
        )
        self._slots: queue.SimpleQueue[_Slot] | None = queue.SimpleQueue()
        made: list[_Slot] = []
        try:
            cuda.set_device(gpu.index)
            for k in range(contexts):
                made.append(self._make_slot(k))
        except BaseException:
            for slot in made:
                slot.free(cuda)
            raise
        for slot in made:
            self._slots.put(slot)

    def _make_slot(self, index: int) -> _Slot:
        cuda, trt = self._cuda, self._trt
        log = logger(trt)
        mark = log.errors.count
        slot = _Slot(None, None, 0)
        try:
            slot.stream = cuda.stream_create()
            slot.handle = cuda.handle(slot.stream)
            slot.context = context = self._engine.create_execution_context()
            if context is None:
                raise DeviceError(
                    f"TensorRT could not create execution context {index + 1} on GPU {self.gpu.index} "
                    f"({last_error(log, mark, 'out of memory?')})",
                    "pass -o contexts=1, a smaller --batch-size, or free GPU memory",
                )
            if self.profile.dynamic:
                # Contexts used at once may share no profile: context k runs profile k.
                context.set_optimization_profile_async(index, slot.handle)
                cuda.stream_synchronize(slot.stream)
            high = self.profile.high
            for tensor in self._in.values():
                if tensor.dynamic and not context.set_input_shape(tensor.name, (high, *tensor.sample)):
                    raise ModelError(
                        f"TensorRT refused batch {high} for input '{tensor.name}': {last_error(log, mark, 'no reason given')}",
                        "build the engine again (delete it from <mlpi cache>/tensorrt)",
                    )
                slot.allocate(cuda, tensor.name, high * _row_bytes(tensor))
            for tensor in self._out.values():
                shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    raise ModelError(
                        f"output '{tensor.name}' has a shape TensorRT only knows after running ({list(shape)})",
                        "export the model with output shapes that follow from the input shapes",
                    )
                slot.allocate(cuda, tensor.name, math.prod(shape) * tensor.dtype.itemsize)
            for name, pointer in slot.device.items():
                if not context.set_tensor_address(name, pointer):
                    raise ModelError(f"TensorRT refused the buffer of tensor '{name}'", "build the engine again")
        except CudaError as exc:
            slot.free(cuda)
            raise DeviceError(
                f"CUDA could not set up execution context {index + 1} on GPU {self.gpu.index}: {exc}",
                "pass -o contexts=1 or a smaller --batch-size, or free GPU memory",
            ) from None
        except BaseException:
            slot.free(cuda)
            raise
        return slot

    @property
    def engine(self) -> Any:
        """The ``tensorrt.ICudaEngine`` (``None`` once closed)."""
        return self._engine

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        slots = self._slots
        if slots is None:
            raise RuntimeError("this TensorRT session is closed")
        rows = self._rows(feeds)
        slot = slots.get()  # blocks while every context is busy
        try:
            return self._run_on(slot, feeds, rows)
        finally:
            slots.put(slot)

    def _rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        counts = set()
        for name, tensor in self._in.items():
            if name not in feeds:
                raise ModelError(f"no value for input '{name}'", f"feed every input: {', '.join(self._in)}")
            array = feeds[name]
            if tuple(array.shape[1:]) != tensor.sample:
                raise ModelError(
                    f"input '{name}' has shape {tuple(array.shape)}; the engine takes (N, {', '.join(map(str, tensor.sample))})",
                    "feed batch-first arrays with the model's sample shape",
                )
            counts.add(len(array))
        if len(counts) != 1:
            raise ModelError(f"inputs have different batch sizes {sorted(counts)}", "feed the same number of rows to every input")
        rows = counts.pop()
        profile = self.profile
        if profile.dynamic and not 1 <= rows <= profile.high:
            raise ModelError(
                f"a batch of {rows} is outside the engine's {profile.describe()}",
                f"pass --batch-size {profile.high} or less, or a larger one so that the engine is built for it",
            )
        if not profile.dynamic and rows != profile.high:
            raise ModelError(f"the engine takes batches of exactly {profile.high}, not {rows}", "pad the batch")
        return rows

    def _run_on(self, slot: _Slot, feeds: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        cuda, context = self._cuda, slot.context
        log = logger(self._trt)
        mark = log.errors.count
        cuda.set_device(self.gpu.index)  # per host thread
        pending = False
        try:
            for name, tensor in self._in.items():
                nbytes = rows * _row_bytes(tensor)
                staged = slot.views[name][:nbytes].view(tensor.dtype).reshape((rows, *tensor.sample))
                staged[...] = feeds[name]  # into pinned memory, converted to the engine's type
                if tensor.dynamic and not context.set_input_shape(name, (rows, *tensor.sample)):
                    raise RuntimeError(f"TensorRT refused batch {rows} for '{name}': {last_error(log, mark, 'no reason given')}")
                cuda.copy_to_device_async(slot.device[name], slot.host[name], nbytes, slot.stream)
                pending = True
            shapes = {name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in self._out}
            if not context.execute_async_v3(slot.handle):
                raise RuntimeError(f"TensorRT could not run the batch: {last_error(log, mark, 'no reason given')}")
            sizes = {}
            for name, tensor in self._out.items():
                sizes[name] = math.prod(shapes[name]) * tensor.dtype.itemsize
                if sizes[name] > slot.capacity[name]:
                    raise RuntimeError(f"output '{name}' of shape {shapes[name]} does not fit its buffer")
                cuda.copy_to_host_async(slot.host[name], slot.device[name], sizes[name], slot.stream)
            cuda.stream_synchronize(slot.stream)
            pending = False
            # Copies: the pinned buffers belong to the context and the next batch overwrites them.
            return {
                name: np.array(slot.views[name][: sizes[name]].view(tensor.dtype).reshape(shapes[name]), dtype=tensor.onnx_dtype)
                for name, tensor in self._out.items()
            }
        finally:
            if pending:  # never hand back a context whose stream still writes into its buffers
                _quietly(cuda.stream_synchronize, slot.stream)

    def close(self) -> None:
        slots, self._slots = self._slots, None
        if slots is None:
            return
        taken = []
        for _ in range(self._count):
            try:
                taken.append(slots.get(timeout=60))  # waits for batches still running
            except queue.Empty:
                break
        _quietly(self._cuda.set_device, self.gpu.index)
        for slot in taken:
            slot.free(self._cuda)
        self._engine = None
        self._runtime = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    device_kinds = ("cuda",)
    precisions = _PRECISIONS
    Options = TrtOptions
    install_hint = _INSTALL_HINT

    def version(self) -> str:
        trt, _ = self._modules()
        return str(trt.__version__)

    def runtime_distributions(self) -> tuple[str, ...]:
        return ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings", "tensorrt-cu12-libs", "cuda-python", "cuda-bindings")

    def probe(self) -> list[Device]:
        try:
            self._modules()
            count = cuda_device_count()
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        return [Device("cuda", (i,)) for i in range(count)]

    def device_hint(self, kind: str) -> str | None:
        return cuda_absence() if kind == "cuda" else None

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        self._modules()
        if device.kind != "cuda":
            raise DeviceError(f"backend 'tensorrt' cannot use device kind '{device.kind}'", "it runs on: cuda")
        if len(device.indices) > 1:
            raise UsageError(f"one TensorRT session runs on one GPU, not {device}", "name a single unit, e.g. cuda:0")
        if precision is not None and precision not in _PRECISIONS:
            raise UsageError(f"backend 'tensorrt' cannot run precision '{precision}'", f"choose one of: {', '.join(_PRECISIONS)}")
        _check_options(options, precision or "fp32")
        plan_profile(model, options.default_batch_size, options.contexts)

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        self.check(model, device, options, precision)
        trt, runtime_module = self._modules()
        cuda = Cuda(runtime_module)
        runs = precision or "fp32"
        try:
            cuda.set_device(device.index)
            gpu = cuda.device_info(device.index)
        except CudaError as exc:
            raise DeviceError(
                f"CUDA cannot use GPU {device.index} ({exc})", "check the driver with nvidia-smi, or pick a GPU `mlpi backends` lists"
            ) from None
        batch = context.batch_size or options.default_batch_size
        if batch < 1:
            raise UsageError(f"the run asks for batch size {batch}", "pass --batch-size 1 or more")
        profile = plan_profile(model, batch, options.contexts)
        settings = BuildSettings(runs, options.workspace_mib, options.builder_optimization_level, options.tf32)
        engines = _Engines(trt, cuda, model, gpu, profile, settings, options, context)
        payload, path, reused = engines.get()
        log = logger(trt)
        mark = log.errors.count
        runtime = trt.Runtime(log)
        engine = runtime.deserialize_cuda_engine(payload)
        if engine is None and reused:
            _say(f"cached engine {path} was refused by TensorRT ({last_error(log, mark, 'no reason given')}); building it again")
            payload, path, reused = engines.get(rebuild=True)
            mark = log.errors.count
            engine = runtime.deserialize_cuda_engine(payload)
        if engine is None:
            raise ModelError(
                f"TensorRT could not load the engine it built for {model.path}: {last_error(log, mark, 'no reason given')}",
                "see TensorRT's message; check that the driver supports this TensorRT version",
            )
        return TensorRTSession(trt, cuda, runtime, engine, model, gpu, profile, runs, options.contexts, path, reused)

    # -- helpers -------------------------------------------------------------------------

    def _modules(self) -> tuple[Any, Any]:
        """(tensorrt, cuda runtime bindings), or PluginError naming what is missing."""
        try:
            import tensorrt as trt
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing libnvinfer
            raise PluginError(f"TensorRT is not installed ({_first_line(exc)})", _with_gpu_absence(self.install_hint)) from None
        found = str(getattr(trt, "__version__", "?"))
        if found.split(".")[0] != "10":
            raise PluginError(f"TensorRT {found} is installed; the tensorrt backend needs TensorRT 10", self.install_hint)
        try:
            runtime_module = import_runtime()
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
            raise PluginError(f"cuda-python is not installed ({_first_line(exc)})", self.install_hint) from None
        return trt, runtime_module


def _with_gpu_absence(hint: str) -> str:
    """The install hint, led by what this machine lacks when it has no NVIDIA GPU at all:
    installing TensorRT would not be enough there."""
    absent = cuda_absence()
    return f"{absent}, and TensorRT runs only on NVIDIA GPUs; on a machine with one: {hint}" if absent else hint


class _Engines:
    """Finds the engine for one load in the cache, or builds (and calibrates) it."""

    def __init__(
        self, trt: Any, cuda: Cuda, model: ModelArtifact, gpu: GpuInfo, profile: Profile, settings: BuildSettings,
        options: TrtOptions, context: LoadContext,
    ) -> None:
        self.trt, self.cuda, self.model, self.gpu = trt, cuda, model, gpu
        self.profile, self.settings, self.options, self.context = profile, settings, options, context
        self.own_calibration = cache_dir("calibration") / f"{self._calibration_key()}.cache"
        self.given_calibration = Path(options.calibration_cache).expanduser() if options.calibration_cache else None

    def get(self, rebuild: bool = False) -> tuple[bytes, Path | None, bool]:
        """(engine bytes, where it is cached, whether it came from the cache)."""
        int8 = self.settings.precision == "int8"
        scales = self._scales_source() if int8 else None
        if int8 and scales is None and self.context.calibration is None:
            raise UsageError(
                "int8 needs calibration data or a calibration cache, and this run has neither",
                "run it with `mlpi run` (it calibrates on the dataset), or pass -o calibration_cache=FILE",
            )
        path = self._path(scales)
        if self.options.cache and not rebuild and (not int8 or scales is not None):
            payload, why = read_engine(path)
            if payload is not None:
                _say(f"reused engine for {self._what()} from {path}")
                return payload, path, True
            if why != "missing":
                _say(f"cached engine {path} is damaged ({why}); building it again")
        payload, seconds, calibrator = self._build(scales)
        if int8:
            written = calibrator.cache_written if calibrator is not None else None
            if calibrator is not None and calibrator.used:
                where = f"calibration cache at {written}" if written else "calibration cache not kept"
                _say(f"calibrated int8 on {calibrator.used} batches of {self._calibration_batch()} ({where})")
            scales = written or scales
            path = self._path(scales)
        if not self.options.cache:
            _say(f"built engine for {self._what()} in {seconds:.1f} s (not cached: -o cache=false)")
            return payload, None, False
        ensure_dir(path.parent)
        write_engine(path, payload)
        _say(f"built engine for {self._what()} in {seconds:.1f} s (cached at {path})")
        return payload, path, False

    def _build(self, scales: Path | None) -> tuple[bytes, float, Any]:
        from mlpi.backends._trt_calibrator import make_calibrator

        calibrator = None
        if self.settings.precision == "int8":
            ensure_dir(self.own_calibration.parent)
            inputs = {spec.name: (np.dtype(spec.dtype), tuple(int(d) for d in spec.shape[1:])) for spec in self.model.inputs}  # type: ignore[arg-type]
            calibrator = make_calibrator(
                self.trt, self.cuda, self.gpu.index, inputs, self._calibration_batch(), self.context.calibration,
                read_from=scales, write_to=self.own_calibration if self.options.cache else None,
            )
        started = time.perf_counter()
        try:
            self.cuda.set_device(self.gpu.index)
            payload = build_engine(self.trt, self.model, self.profile, self.settings, calibrator, self._calibration_batch())
        except ModelError:
            if calibrator is not None and calibrator.error is not None:
                raise _calibration_failed(calibrator.error) from None  # the data failed, not TensorRT
            raise
        finally:
            if calibrator is not None:
                calibrator.close()
        if calibrator is not None and calibrator.error is not None:
            raise _calibration_failed(calibrator.error) from None
        return payload, time.perf_counter() - started, calibrator

    def _scales_source(self) -> Path | None:
        """The calibration cache an int8 build takes its scales from, if there is one."""
        if self.given_calibration is not None:
            return self.given_calibration
        return self.own_calibration if self.options.cache and self.own_calibration.is_file() else None

    def _path(self, scales: Path | None) -> Path:
        fields = {
            "artifact": self.model.sha256,
            "tensorrt": str(self.trt.__version__),
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "precision": self.settings.precision,
            "profile": self.profile.to_json(),
            "builder": self.settings.to_json(),
            "calibration": _file_sha256(scales) if scales is not None else None,
        }
        return cache_dir() / f"{engine_key(fields)}.engine"

    def _calibration_key(self) -> str:
        fields = {
            "artifact": self.model.sha256,
            "tensorrt": str(self.trt.__version__),
            "calibrator": "entropy2",
            "inputs": {spec.name: [spec.dtype, list(spec.shape[1:])] for spec in self.model.inputs},
        }
        return engine_key(fields)

    def _calibration_batch(self) -> int:
        return self.profile.high

    def _what(self) -> str:
        return f"{self.model.path.stem} {self.settings.precision} {self.profile.describe()} on {self.gpu.name}"


def _io_tensors(trt: Any, engine: Any, model: ModelArtifact, profile: Profile) -> tuple[dict[str, _Tensor], dict[str, _Tensor]]:
    """The engine's inputs and outputs, in the ONNX file's order, checked against the file."""
    found: dict[str, tuple[bool, Any, tuple[int, ...]]] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        found[name] = (is_input, engine.get_tensor_dtype(name), tuple(int(d) for d in engine.get_tensor_shape(name)))
    dynamic = {name for name, _ in profile.shapes}
    groups = []
    for specs, want_input in ((model.inputs, True), (model.outputs, False)):
        expected = {s.name for s in specs}
        have = {name for name, (is_input, _, _) in found.items() if is_input == want_input}
        if expected != have:
            kind = "inputs" if want_input else "outputs"
            raise ModelError(
                f"the engine's {kind} are {sorted(have)}, the ONNX file's {sorted(expected)}",
                "delete the engine from <mlpi cache>/tensorrt and run again",
            )
        tensors = {}
        for spec in specs:
            _, trt_dtype, shape = found[spec.name]
            try:
                dtype = np.dtype(trt.nptype(trt_dtype))
            except TypeError:
                raise ModelError(
                    f"tensor '{spec.name}' is {trt_dtype} in the engine, which numpy cannot hold",
                    "export the model with float32, float16 or integer inputs and outputs",
                ) from None
            tensors[spec.name] = _Tensor(spec.name, dtype, np.dtype(spec.dtype), shape[1:], spec.name in dynamic)
        groups.append(tensors)
    return groups[0], groups[1]


def _check_options(options: TrtOptions, precision: str) -> None:
    if options.calibration_cache:
        if precision != "int8":
            raise UsageError(
                f"option calibration_cache is only used for int8, and this run is {precision}",
                "add --precision int8, or drop -o calibration_cache",
            )
        path = Path(options.calibration_cache).expanduser()
        if not path.is_file():
            raise UsageError(f"calibration cache {path} does not exist", "pass the path of a TensorRT calibration cache file")


def _calibration_failed(error: BaseException) -> BaseException:
    """The calibration data's own error when it is an mlpi one (a dataset problem), else a ModelError."""
    if isinstance(error, MlpiError):
        return error
    return ModelError(
        f"int8 calibration failed: {type(error).__name__}: {_first_line(error)}",
        "the calibration set must give every model input in its sample shape",
    )


def _row_bytes(tensor: _Tensor) -> int:
    return math.prod(tensor.sample) * tensor.dtype.itemsize


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _say(text: str) -> None:
    """Progress lines go to stderr, so machine-read stdout (``--json``) stays clean."""
    print(f"mlpi: tensorrt: {text}", file=sys.stderr, flush=True)


def _quietly(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # noqa: BLE001, S110 - releasing resources: the first error is the one raised
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
