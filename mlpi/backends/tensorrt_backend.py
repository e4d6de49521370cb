"""The ``tensorrt`` backend: the model's ONNX file compiled to a TensorRT 10 or 11 engine on an NVIDIA GPU.

``--device cuda`` or ``cuda:N``. The engine is built for the batch sizes the run sends (an
optimisation profile from batch 1 to ``LoadContext.batch_size``, or ``-o default_batch_size``
when the run gives none) and kept in ``<mlpi cache>/tensorrt`` under a key covering everything
it depends on, TensorRT's version and major version included (see
:mod:`mlpi.backends._trt_engine`); a later run with the same key loads it in a second instead
of building it again.

Precision. By default, on TensorRT 10 and 11 alike, the network is strongly typed and built
with no precision flags and no calibrator: the graph's own types decide. ``--precision
fp16|bf16|int8`` reaches this backend as a graph mlpi derived from the fp32 model
(``ModelArtifact.precision`` set: fp16/bf16 tensors, or int8 Q/DQ nodes), which runs as it is
typed; so does a file given without ``--precision``, reported as its first floating input is
typed (fp32, fp16 or bf16). bf16 needs a GPU of compute capability 8.0 or newer. The native path, TensorRT
10 only: ``-o builder_precision=true`` derives ``--precision fp16|int8`` from the fp32 model
with TensorRT 10's builder flags (FP16; FP16+INT8 with an entropy calibrator on the run's
calibration set, or the scales of ``-o calibration_cache``), on a weakly typed network, as
this backend did before TensorRT 11; :meth:`TensorRTBackend.native_precision` tells the core,
whose results record the method. TensorRT 11 removed that API, so there it is refused.
``-o tf32=true`` lets fp32 layers use TF32 math on both versions (TensorRT's default; mlpi
clears it otherwise).

TensorRT 11 facts this relies on (checked against NVIDIA's documentation and sources):

- weak typing is gone: ``BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4``,
  ``OBEY/PREFER_PRECISION_CONSTRAINTS``, ``DIRECT_IO``, ``IBuilderConfig.int8_calibrator``,
  ``set/get_calibration_profile`` and the quantization flags were removed from the Python API;
  reduced precision comes from the graph's types (fp16/bf16) and explicit Q/DQ nodes (int8):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  and https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x.html
  ("Strongly Typed Networks Are Now Required");
- the ``IInt8*Calibrator`` classes are gone (no ``pyInt8.cpp`` in the 11.1 Python bindings), as are
  ``platform_has_fast_fp16/int8`` and ``IAlgorithm*``:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-c-api-reference.html
  and https://github.com/NVIDIA/TensorRT (``python/src/infer/pyCore.cpp``, release 11.1);
- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is deprecated in 11 and ignored (always strongly
  typed; its value is 0 there, 1 in 10, where it is needed for strong typing), and ``BuilderFlag.TF32``
  still exists, on by default: ``include/NvInfer.h`` of https://github.com/NVIDIA/TensorRT (release 11.1);
- explicit quantization is used with strong typing and needs no precision flags:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html

Packages: ``pip install "mlpi[tensorrt]"`` installs ``tensorrt-cu12`` 10.x or 11.x with
cuda-python 12. TensorRT 11 ships a CUDA 12 and a CUDA 13 variant (https://pypi.org/project/tensorrt-cu12/11.4.0.106/),
and the bare ``tensorrt`` package installs the CUDA 13 one
(https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/installing-tensorrt/install-pip.html), so the
extra names the CUDA 12 package, which matches the cuda-python 12 it pins; results record
whichever TensorRT distributions are installed.

A session holds ``-o contexts`` execution contexts, each with its own CUDA stream, pinned
host buffers and device buffers allocated once for the largest batch. Each ``run`` takes a
free context, copies the batch in, runs it and copies the outputs out on that context's
stream, and returns fresh arrays (the pinned buffers are reused by the next call). The core
keeps ``contexts`` batches in flight from as many threads, so copies and kernels of one
batch overlap with those of the others.
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
    require_batch_first,
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
_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: TensorRT major versions this backend drives.
_MAJORS = (10, 11)
#: What ``-o builder_precision=true`` makes of each precision it derives (TensorRT 10 only).
_BUILDER_METHODS = {
    "fp16": "TensorRT 10 builder flag FP16 (TensorRT picks fp16 or fp32 kernels layer by layer)",
    "int8": "TensorRT 10 builder flags FP16+INT8 with its entropy calibrator",
}
_GRAPH_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_NO_CONTEXT = LoadContext()  # frozen: one shared default
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
    builder_precision: bool = field(
        default=False,
        metadata={
            "help": "derive --precision fp16|int8 with TensorRT 10's builder flags FP16/INT8 and its entropy "
                    "calibrator instead of mlpi's model transform (results record it); TensorRT 11 removed them",
        },
    )
    calibration_cache: str = field(
        default="",
        metadata={
            "help": "with builder_precision and --precision int8: a TensorRT 10 calibration cache file to take "
                    "the scales from instead of calibrating",
        },
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
        return ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings", "tensorrt-cu12-libs", "tensorrt-cu13",
                "tensorrt-cu13-bindings", "tensorrt-cu13-libs", "cuda-python", "cuda-bindings")

    def native_precision(self, options: Any, precision: str) -> str | None:
        """TensorRT 10's builder flags where ``-o builder_precision=true`` asks for them (``check``
        refuses them on TensorRT 11); otherwise mlpi's transform derives the precision."""
        if getattr(options, "builder_precision", False):
            return _BUILDER_METHODS.get(precision)
        return None

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
        trt, _ = self._modules()
        if device.kind != "cuda":
            raise DeviceError(f"backend 'tensorrt' cannot use device kind '{device.kind}'", "it runs on: cuda")
        if len(device.indices) > 1:
            raise UsageError(f"one TensorRT session runs on one GPU, not {device}", "name a single unit, e.g. cuda:0")
        require_batch_first(model, "tensorrt", "builds optimisation profiles for batches")
        route = _route(_major(trt), model, options, precision)
        _check_calibration_cache(options, route)
        plan_profile(model, options.default_batch_size, options.contexts)

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = _NO_CONTEXT
    ) -> Session:
        self.check(model, device, options, precision)
        trt, runtime_module = self._modules()
        route = _route(_major(trt), model, options, precision)
        cuda = Cuda(runtime_module)
        try:
            cuda.set_device(device.index)
            gpu = cuda.device_info(device.index)
        except CudaError as exc:
            raise DeviceError(
                f"CUDA cannot use GPU {device.index} ({exc})", "check the driver with nvidia-smi, or pick a GPU `mlpi backends` lists"
            ) from None
        if route.runs == "bf16" and gpu.major < 8:
            raise DeviceError(
                f"bf16 needs a GPU of compute capability 8.0 or newer; GPU {device.index} ({gpu.name}) is {gpu.compute_capability}",
                "run --precision fp16 on this GPU",
            )
        batch = context.batch_size or options.default_batch_size
        if batch < 1:
            raise UsageError(f"the run asks for batch size {batch}", "pass --batch-size 1 or more")
        profile = plan_profile(model, batch, options.contexts)
        settings = BuildSettings(route.runs, options.workspace_mib, options.builder_optimization_level, options.tf32,
                                 route.builder_precision)
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
        return TensorRTSession(trt, cuda, runtime, engine, model, gpu, profile, route.runs, options.contexts, path, reused)

    # -- helpers -------------------------------------------------------------------------

    def _modules(self) -> tuple[Any, Any]:
        """(tensorrt, cuda runtime bindings), or PluginError naming what is missing."""
        try:
            import tensorrt as trt
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing libnvinfer
            raise PluginError(f"TensorRT is not installed ({_first_line(exc)})", _with_gpu_absence(self.install_hint)) from None
        found = str(getattr(trt, "__version__", "?"))
        if _major(trt) not in _MAJORS:
            raise PluginError(f"TensorRT {found} is installed; the tensorrt backend needs TensorRT 10 or 11", self.install_hint)
        try:
            runtime_module = import_runtime()
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
            raise PluginError(f"cuda-python is not installed ({_first_line(exc)})", self.install_hint) from None
        return trt, runtime_module


def _major(trt: Any) -> int:
    """TensorRT's major version, from ``tensorrt.__version__`` ("10.9.0.34" -> 10; 0 when unreadable)."""
    head = str(getattr(trt, "__version__", "")).split(".")[0]
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True)
class _Route:
    """How one load is built: the precision that runs, and whether TensorRT 10's builder flags
    derive it from the fp32 graph (``builder_precision``) or the graph's own types decide."""

    runs: str
    builder_precision: bool


def _route(major: int, model: ModelArtifact, options: TrtOptions, precision: str | None) -> _Route:
    """The build a load asks for, or UsageError for what no build can honour."""
    if options.builder_precision and major >= 11:
        raise UsageError(
            f"-o builder_precision=true derives precision with TensorRT 10's builder flags and calibrator, "
            f"which TensorRT {major} removed",
            "drop -o builder_precision: mlpi's --precision transform gives the same precision in the graph itself",
        )
    if precision is not None and precision not in _PRECISIONS:
        raise UsageError(f"backend 'tensorrt' cannot run precision '{precision}'", f"choose one of: {', '.join(_PRECISIONS)}")
    if model.precision is not None:
        if model.precision not in _PRECISIONS:
            raise UsageError(f"backend 'tensorrt' cannot run a graph derived for '{model.precision}'",
                             f"derive one of: {', '.join(_PRECISIONS)}")
        if precision is not None and precision != model.precision:
            raise UsageError(
                f"{model.path.name} was derived for {model.precision}, and the run asks for {precision}",
                f"hand the backend the {precision} graph, or ask for {model.precision}",
            )
        return _Route(model.precision, False)  # the derived graph runs as it is typed
    if options.builder_precision and precision in _BUILDER_METHODS:
        return _Route(precision, True)
    own = _graph_precision(model)
    if precision is None or precision == own:
        return _Route(own, False)
    native = " or, on TensorRT 10, add -o builder_precision=true" if major == 10 and precision in _BUILDER_METHODS else ""
    raise UsageError(
        f"backend 'tensorrt' runs the precision its graph carries, and {model.path.name} is {own}, not {precision} "
        "(the graph was not derived for it)",
        f"let mlpi derive the {precision} graph (`mlpi run --precision {precision}` does){native}",
    )


def _graph_precision(model: ModelArtifact) -> str:
    """The precision a file given as it is runs in, as its first floating input is typed."""
    floats = [spec.dtype for spec in model.inputs if spec.dtype in _GRAPH_TYPES]
    return _GRAPH_TYPES[floats[0]] if floats else "fp32"


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
        int8 = self.settings.builder_precision and self.settings.precision == "int8"  # calibrated by TensorRT 10
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
        if self.settings.builder_precision and self.settings.precision == "int8":
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
            "artifact_precision": self.model.precision,
            "tensorrt": str(self.trt.__version__),
            "tensorrt_major": _major(self.trt),
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


def _check_calibration_cache(options: TrtOptions, route: _Route) -> None:
    """``-o calibration_cache`` feeds TensorRT 10's int8 calibrator, so it belongs to that build only."""
    if not options.calibration_cache:
        return
    if not (route.builder_precision and route.runs == "int8"):
        what = (f"derives {route.runs} with the builder flags" if route.builder_precision
                else f"runs its {route.runs} graph as it is typed")
        raise UsageError(
            "option calibration_cache holds scales for TensorRT 10's int8 calibrator, used only with "
            f"-o builder_precision=true --precision int8, and this run {what}",
            "drop -o calibration_cache (an int8 graph mlpi derives carries its scales in its Q/DQ nodes)",
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
