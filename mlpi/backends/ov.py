"""The ``openvino`` backend: any ONNX model on OpenVINO's CPU, GPU or NPU plugin.

``--device cpu|gpu|gpu:N|npu`` picks the plugin (``CPU``, ``GPU.N``, ``NPU``).
``--precision`` sets OpenVINO's ``INFERENCE_PRECISION_HINT``; without it OpenVINO
chooses (bf16 on CPUs with AVX-512 BF16 or AMX, f32 on other CPUs, f16 on GPUs), and the
precision the compiled model really runs is read back and reported, never assumed.
A precision the device lacks is refused: OpenVINO would otherwise quietly run f32.

A session keeps a pool of infer requests. ``run`` takes one and, when others are idle,
spreads the batch's rows over them as well, so that one caller keeps every stream of the
throughput hint busy (a single request runs on a single stream). Inputs are handed to
OpenVINO zero-copy and outputs are copied out, so results stay valid after later runs.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlpi.backends._model_hint import model_hint
from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
    fixed_batch_size,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError

#: mlpi device kind -> OpenVINO plugin name.
_PLUGINS = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}

#: mlpi precision -> (INFERENCE_PRECISION_HINT value, OPTIMIZATION_CAPABILITIES entry).
_HINTS = {"fp32": ("f32", "FP32"), "fp16": ("f16", "FP16"), "bf16": ("bf16", "BF16")}
_FROM_HINT = {hint: precision for precision, (hint, _) in _HINTS.items()}

#: What a device runs when INFERENCE_PRECISION_HINT cannot be read back from it.
_DEFAULT_PRECISION = {"cpu": "fp32", "gpu": "fp16", "npu": "fp16"}

#: OpenVINO element type names -> numpy dtype names (``Type.to_dtype`` maps bf16 to float16).
_OV_TYPES = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i8": "int8",
    "u8": "uint8",
    "i16": "int16",
    "u16": "uint16",
    "i32": "int32",
    "u32": "uint32",
    "i64": "int64",
    "u64": "uint64",
    "boolean": "bool",
}


@dataclass
class OvOptions:
    performance_hint: Literal["throughput", "latency", "none"] = field(
        default="throughput",
        metadata={
            "help": "OpenVINO's PERFORMANCE_HINT: throughput (several streams), latency (one stream), "
            "none (set no hint: the device's own default and num_streams/num_threads decide)"
        },
    )
    num_streams: int = field(
        default=0, metadata={"help": "NUM_STREAMS: parallel inference streams (0: OpenVINO decides)", "threads": True}
    )
    num_threads: int = field(
        default=0,
        metadata={"help": "INFERENCE_NUM_THREADS: CPU threads for inference (0: OpenVINO decides)", "threads": True},
    )
    num_requests: int = field(
        default=0,
        metadata={"help": "infer requests per session (0: OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS)", "threads": True},
    )
    cache: bool = field(
        default=True, metadata={"help": "keep compiled models in <mlpi cache>/openvino (OpenVINO's CACHE_DIR)"}
    )


class OpenVinoSession(Session):
    """One compiled model; ``run`` is thread-safe through a pool of infer requests."""

    def __init__(self, compiled: Any, model: ModelArtifact, device: Device, options: OvOptions, precision: str | None) -> None:
        self._compiled = compiled
        self.device = device
        self.properties = _read_properties(compiled)
        inputs = _specs(compiled.inputs, [s.name for s in model.inputs])
        outputs = _specs(compiled.outputs, [s.name for s in model.outputs])
        self.inputs = [spec for _, spec in inputs]
        self.outputs = [spec for _, spec in outputs]
        self._input_index = {spec.name: i for i, spec in inputs}
        self._output_ports = [(spec.name, i) for i, spec in outputs]

        hint = self.properties.get("INFERENCE_PRECISION_HINT")
        self.precision = _FROM_HINT.get(str(hint), precision or _DEFAULT_PRECISION.get(device.kind, "fp32"))

        optimal = int(self.properties.get("OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1)
        self.num_requests = options.num_requests or max(optimal, 1)
        self._pool: queue.SimpleQueue[Any] | None = queue.SimpleQueue()
        for _ in range(self.num_requests):
            self._pool.put(compiled.create_infer_request())

        max_batch = fixed_batch_size(self.inputs)
        fixed = max_batch is not None
        # Rows of one batch can go to several requests only when every tensor is batch-first
        # and dynamic; then one caller keeps all of OpenVINO's streams busy.
        self._splittable = (
            self.num_requests > 1
            and bool(self.inputs)
            and all(spec.batch_dynamic for spec in [*self.inputs, *self.outputs])
        )
        if fixed:
            preferred = int(max_batch or 1)
        elif options.performance_hint == "latency" or device.kind == "npu":
            preferred = 1
        elif device.kind == "gpu":
            preferred = max(32, self.num_requests)
        else:
            # CPU, throughput: 4 rows for every infer request (8 at least). Each call costs
            # OpenVINO ~0.1 ms of fixed work (dispatch to a stream, waking its threads); 4+
            # rows a request make that small next to a real model's per-row time, and one
            # batch is spread over every request, so every stream gets work.
            preferred = max(8, 4 * self.num_requests)
        # A batch that cannot be split over the requests (a fixed batch, outputs that are not
        # batch-first) keeps one request busy; the core's dispatcher then keeps a batch in
        # flight on every request instead, so every stream still gets work.
        self.capabilities = Capabilities(
            max_batch_size=max_batch, fixed_batch=fixed, concurrent=True, preferred_batch_size=preferred,
            max_in_flight=1 if self._splittable else self.num_requests,
        )

    @property
    def compiled(self) -> Any:
        """The ``openvino.CompiledModel`` (``None`` once closed)."""
        return self._compiled

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("this OpenVINO session is closed")
        index = self._input_index
        keyed = {index.get(name, name): array for name, array in feeds.items()}
        requests = [pool.get()]
        started: list[Any] = []
        try:
            if self._splittable and keyed:
                rows = len(next(iter(keyed.values())))
                while len(requests) < rows:
                    try:
                        requests.append(pool.get_nowait())
                    except queue.Empty:
                        break
            # Inputs are always shared (zero-copy), never copied in: once a compiled model has
            # seen a shared input, a copy-mode call writes into that caller's array (and a
            # request that held a shared tensor cannot take a copied one of another shape).
            if len(requests) == 1:
                request = requests[0]
                request.start_async(keyed, share_inputs=True)
                started.append(request)
                request.wait()
                return {name: request.get_output_tensor(i).data.copy() for name, i in self._output_ports}
            bounds = [rows * k // len(requests) for k in range(len(requests) + 1)]
            for request, low, high in zip(requests, bounds, bounds[1:]):
                request.start_async({key: array[low:high] for key, array in keyed.items()}, share_inputs=True)
                started.append(request)
            for request in requests:
                request.wait()
            # np.concatenate copies: the results outlive the requests' reuse.
            return {
                name: np.concatenate([r.get_output_tensor(i).data for r in requests]) for name, i in self._output_ports
            }
        except BaseException:
            for request in started:
                try:
                    request.wait()  # never hand back a request that is still running
                except Exception:  # noqa: BLE001, S110 - the first error is the one raised
                    pass
            raise
        finally:
            for request in requests:
                pool.put(request)

    def close(self) -> None:
        self._pool = None
        self._compiled = None


class OpenVinoBackend(Backend):
    name = "openvino"
    device_kinds = ("cpu", "gpu", "npu")
    precisions = ("fp32", "fp16", "bf16")
    Options = OvOptions
    install_hint = 'pip install "mlpi[openvino]"'

    def __init__(self) -> None:
        self._core: Any = None

    def version(self) -> str:
        ov = self._import()
        return str(ov.get_version())

    def runtime_distributions(self) -> tuple[str, ...]:
        return ("openvino",)

    def describe(self, device: Device) -> str:
        try:
            return str(_device_property(self._get_core(), self._plugin(device), "FULL_DEVICE_NAME") or "")
        except Exception:  # noqa: BLE001 - a description never fails a listing
            return ""

    def probe(self) -> list[Device]:
        try:
            names = list(self._get_core().available_devices)
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        devices = []
        for name in names:
            device = _mlpi_device(str(name))
            if device is not None and device not in devices:
                devices.append(device)
        return devices

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        self._import()
        plugin = self._plugin(device)
        core = self._get_core()
        supported = _device_property(core, plugin, "SUPPORTED_PROPERTIES") or {}
        wanted = {
            "PERFORMANCE_HINT": options.performance_hint != "none",
            "NUM_STREAMS": options.num_streams > 0,
            "INFERENCE_NUM_THREADS": options.num_threads > 0,
            "INFERENCE_PRECISION_HINT": precision is not None,
        }
        for prop, used in wanted.items():
            if used and supported and prop not in supported:
                raise UsageError(
                    f"OpenVINO's {plugin} plugin has no {prop} setting",
                    f"drop the option that sets it for --device {device} (`mlpi backends` lists them)",
                )
        if precision is not None:
            if precision not in _HINTS:
                raise UsageError(
                    f"backend 'openvino' cannot run precision '{precision}'", f"choose one of: {', '.join(self.precisions)}"
                )
            capabilities = _device_property(core, plugin, "OPTIMIZATION_CAPABILITIES")
            needed = _HINTS[precision][1]
            if capabilities is not None and needed not in capabilities:
                why = " (bf16 needs AVX-512 BF16 or AMX)" if device.kind == "cpu" and precision == "bf16" else ""
                raise UsageError(
                    f"{plugin} cannot run {precision}{why}; OpenVINO reports it can do: {', '.join(map(str, capabilities))}",
                    "drop --precision to let OpenVINO choose, or pass one the device has (fp32 always works on CPU)",
                )

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        self.check(model, device, options, precision)
        plugin = self._plugin(device)
        core = self._get_core()
        config: dict[str, Any] = {}
        if options.performance_hint != "none":
            config["PERFORMANCE_HINT"] = options.performance_hint.upper()
        if options.num_streams > 0:
            config["NUM_STREAMS"] = options.num_streams
        if options.num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = options.num_threads
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision][0]
        if options.cache:
            config["CACHE_DIR"] = str(_cache_dir())
        try:
            ov_model = core.read_model(str(model.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeError
            raise ModelError(f"OpenVINO could not read {model.path}: {_first_line(exc)}", model_hint(self.name, str(exc))) from None
        _refuse_unfaithful_outputs(ov_model, model)
        try:
            compiled = core.compile_model(ov_model, plugin, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeError
            hint = model_hint(self.name, str(exc))
            if device.kind == "npu" and any(spec.batch_dynamic for spec in model.inputs):
                hint = "the NPU needs static shapes: export the model with a fixed batch size"
            raise ModelError(f"OpenVINO could not compile {model.path} for {plugin}: {_first_line(exc)}", hint) from None
        session = OpenVinoSession(compiled, model, device, options, precision)
        if precision is not None and session.precision != precision:
            session.close()
            raise UsageError(
                f"OpenVINO compiled the model for {plugin} in {session.precision}, not the {precision} asked for",
                "drop --precision to let OpenVINO choose, or pass one the device has",
            )
        return session

    # -- helpers -------------------------------------------------------------------------

    def _import(self) -> Any:
        try:
            import openvino
        except ImportError as exc:
            raise PluginError(f"OpenVINO is not installed ({exc})", self.install_hint) from None
        return openvino

    def _get_core(self) -> Any:
        if self._core is None:
            ov = self._import()
            self._core = ov.Core()
        return self._core

    def _plugin(self, device: Device) -> str:
        """The OpenVINO device name for one mlpi device unit; DeviceError when absent."""
        if device.kind not in _PLUGINS:
            raise DeviceError(
                f"backend 'openvino' cannot use device kind '{device.kind}'", f"it runs on: {', '.join(self.device_kinds)}"
            )
        if len(device.indices) > 1:
            raise UsageError(f"one OpenVINO session runs on one unit, not {device}", "name a single unit, e.g. gpu:0")
        available = [str(n) for n in self._get_core().available_devices]
        base = _PLUGINS[device.kind]
        if device.kind == "gpu":
            index = device.index
            names = [f"GPU.{index}"] + (["GPU"] if index == 0 else [])
        elif device.indices and device.index != 0:
            names = [f"{base}.{device.index}"]
        else:
            names = [base, f"{base}.0"]
        for name in names:
            if name in available:
                return f"GPU.{device.index}" if device.kind == "gpu" else name
        found = ", ".join(str(d) for d in self.probe()) or "none"
        raise DeviceError(
            f"OpenVINO sees no {device} on this machine (it sees: {found})",
            {
                "gpu": "install Intel's GPU driver (OpenCL/Level Zero), or use --device cpu",
                "npu": "install Intel's NPU driver, or use --device cpu",
            }.get(device.kind, "use a device that `mlpi devices` lists"),
        )


def _mlpi_device(name: str) -> Device | None:
    """``CPU`` -> cpu, ``GPU``/``GPU.N`` -> gpu:N, ``NPU`` -> npu; other plugins -> None."""
    base, _, unit = name.partition(".")
    kind = {plugin: kind for kind, plugin in _PLUGINS.items()}.get(base)
    if kind is None or (unit and not unit.isdigit()):
        return None
    if kind == "gpu":
        return Device("gpu", (int(unit) if unit else 0,))
    return Device(kind, (int(unit),)) if unit and int(unit) != 0 else Device(kind)


def _device_property(core: Any, plugin: str, key: str) -> Any:
    try:
        return core.get_property(plugin, key)
    except Exception:  # noqa: BLE001 - an older plugin without it: nothing to check against
        return None


def _read_properties(compiled: Any) -> dict[str, Any]:
    """What the compiled model really runs with (plain Python values; absent when unknown)."""
    out: dict[str, Any] = {}
    for key in (
        "INFERENCE_PRECISION_HINT",
        "PERFORMANCE_HINT",
        "NUM_STREAMS",
        "INFERENCE_NUM_THREADS",
        "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
        "EXECUTION_DEVICES",
    ):
        try:
            value = compiled.get_property(key)
        except Exception:  # noqa: BLE001, S112 - a plugin that does not report it
            continue
        if hasattr(value, "get_type_name"):
            value = value.get_type_name()
        elif not isinstance(value, (int, float, str, list, tuple)):
            value = str(value)
        out[key] = value
    return out


def _refuse_unfaithful_outputs(ov_model: Any, model: ModelArtifact) -> None:
    """OpenVINO hands a bfloat16 output to Python as a float16 array holding the raw bf16
    bits (1.0, 2.5, -3, 100 read back as 1.875, 2.06, -2.125, 3.39): refuse it rather than
    return wrong values."""
    for k, port in enumerate(ov_model.outputs):
        if port.get_element_type().get_type_name() == "bf16":
            name = port.get_any_name() if port.get_names() else f"output {k}"
            raise ModelError(
                f"{model.path.name}: output '{name}' is bfloat16, which OpenVINO's Python API cannot return as its values",
                "run this model on the onnxruntime backend, or export it with float32 outputs (compute can stay bf16)",
            )


def _specs(ports: Sequence[Any], model_names: Sequence[str]) -> list[tuple[int, TensorSpec]]:
    """(port index, TensorSpec) per port, named and ordered as in the ONNX model (a port
    may carry several tensor names; OpenVINO's port order is kept where names do not match)."""
    specs = []
    for i, port in enumerate(ports):
        names = set(port.get_names())
        name = next((n for n in model_names if n in names), None)
        if name is None:
            name = port.get_any_name() if names else f"tensor_{i}"
        dtype = _OV_TYPES.get(port.get_element_type().get_type_name(), "unknown")
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        specs.append((i, TensorSpec(name, dtype, shape)))
    order = {n: k for k, n in enumerate(model_names)}
    if all(spec.name in order for _, spec in specs):
        specs.sort(key=lambda item: order[item[1].name])
    return specs


def _cache_dir() -> Any:
    from mlpi.core.engine.cache import cache_root

    path = cache_root() / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create OpenVINO's cache folder {path}: {exc.strerror or exc}",
            "set MLPI_CACHE to a writable folder, or pass -o cache=false",
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    """OpenVINO's message without its 'Exception from src/...' and 'Check ... failed at' lines."""
    lines = [line.strip() for line in str(exc).splitlines()]
    useful = [
        line for line in lines
        if line and not line.startswith("Exception from ") and not (line.startswith("Check '") and " failed at " in line)
    ]
    text = " ".join(useful) or type(exc).__name__
    return text[:300]
