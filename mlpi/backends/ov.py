"""The ``openvino`` backend: any ONNX model on OpenVINO's CPU, GPU or NPU plugin.

``--device cpu|gpu|gpu:N|npu`` picks the plugin (``CPU``, ``GPU.N``, ``NPU``).
``--precision fp16|bf16|int8``: mlpi derives the model for that precision
(:mod:`mlpi.core.engine.precision`: fp16/bf16 types, int8 Q/DQ nodes) and OpenVINO compiles
the derived file with its float layers hinted to the file's own precision where the device
has it, else f32 (f32 around int8's Q/DQ pairs): never below what the file holds. The session
reports the graph's precision, and ``precision_detail`` says what OpenVINO computes the
remaining float layers in when that differs.
``-o native_precision=true`` is OpenVINO's own fp16/bf16 instead: the fp32 model compiled with
``INFERENCE_PRECISION_HINT`` (recorded as the backend's method). Without ``--precision`` OpenVINO
chooses (bf16 on CPUs with AVX-512 BF16 or AMX, f32 on other CPUs, f16 on GPUs), and the
precision the compiled model really runs is read back and reported, never assumed.
A hinted precision the device lacks is refused: OpenVINO would otherwise quietly run f32.

``--precision fp32`` means f32 end to end: beside the hint it sets ACCURACY execution mode,
turns off dynamic quantization of activations and keeps any KV cache in f32, then reads each
back from the compiled model and refuses to run if one did not take. Without it, OpenVINO's
CPU plugin quantizes the activations of layers with 8- or 4-bit integer weights to int8 at
run time (``DYNAMIC_QUANTIZATION_GROUP_SIZE``, groups of 32, on CPUs with AVX2-VNNI or
AVX-512 VNNI); ``-o dynamic_quantization=off|on`` decides it, and when it is really at work
the session says so in ``precision_detail``.

A session keeps a pool of infer requests. ``run`` takes one and, when others are idle,
spreads the batch's rows over them as well, so that one caller keeps every stream of the
throughput hint busy (a single request runs on a single stream). Inputs are handed to
OpenVINO zero-copy (OpenVINO copies a read-only array itself, except a 0-d one, which it
refuses: that one is copied here) and outputs are copied out, so results stay valid after
later runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlpi.backends._model_hint import model_hint
from mlpi.backends._ov_unfaithful import refuse_unfaithful_nodes, repair_unfaithful_ops
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

#: ``load``'s default: nothing known about the run ahead (LoadContext is frozen, so one will do).
_NO_CONTEXT = LoadContext()

#: mlpi device kind -> OpenVINO plugin name.
_PLUGINS = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}

#: mlpi precision -> (INFERENCE_PRECISION_HINT value, OPTIMIZATION_CAPABILITIES entry).
_HINTS = {"fp32": ("f32", "FP32"), "fp16": ("f16", "FP16"), "bf16": ("bf16", "BF16")}
_FROM_HINT = {hint: precision for precision, (hint, _) in _HINTS.items()}

#: What a device runs when INFERENCE_PRECISION_HINT cannot be read back from it.
_DEFAULT_PRECISION = {"cpu": "fp32", "gpu": "fp16", "npu": "fp16"}

#: What ``--precision fp32`` sets, each where the plugin has it, and expects back from the
#: compiled model: no bf16/f16 lowering, no fast-math kernels (ACCURACY mode), no int8
#: activations (dynamic quantization off) and no u8 KV cache (the CPU's default).
_FP32_END_TO_END: dict[str, Any] = {
    "INFERENCE_PRECISION_HINT": "f32",
    "EXECUTION_MODE_HINT": "ACCURACY",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
    "KV_CACHE_PRECISION": "f32",
    "KEY_CACHE_PRECISION": "f32",
    "VALUE_CACHE_PRECISION": "f32",
}

#: ``-o dynamic_quantization`` -> DYNAMIC_QUANTIZATION_GROUP_SIZE (``default`` sets nothing).
#: 32 activations a group is the CPU plugin's own default.
_DYNAMIC_QUANTIZATION_GROUPS = {"off": 0, "on": 32}

#: Weight element types of a layer OpenVINO may run with dynamically quantized activations.
_COMPRESSED_WEIGHTS = frozenset({"i8", "u8", "i4", "u4", "nf4"})

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
        default=False,
        metadata={"help": "keep compiled models in <mlpi cache>/openvino (OpenVINO's CACHE_DIR); off by default: "
                          "OpenVINO 2026.4's CPU cache answers wrongly for rotary-embedding graphs loaded from it"}
    )
    native_precision: bool = field(
        default=False,
        metadata={"help": "--precision fp16/bf16 as OpenVINO's INFERENCE_PRECISION_HINT on the fp32 model, instead "
                          "of mlpi's derived fp16/bf16 model"},
    )
    dynamic_quantization: Literal["default", "off", "on"] = field(
        default="default",
        metadata={
            "help": "int8 quantization of the activations of layers with integer weights, at run time "
            "(DYNAMIC_QUANTIZATION_GROUP_SIZE): off, on (groups of 32), default (OpenVINO decides: on for "
            "CPUs with VNNI; off with --precision fp32); each test's result records it where it is at work"
        },
    )


def _hinted(model: ModelArtifact, precision: str | None) -> str | None:
    """The precision to hint: none for a graph that carries its own (a derived fp16/int8 file)."""
    return None if model.precision is not None else precision


def _derived_compute(graph_precision: str, capabilities: Any) -> str:
    """What OpenVINO computes a derived file's float layers in: the file's own fp16 or bf16
    where the device has it, else f32 (never bf16 for an fp16 file, fewer mantissa bits than it
    holds, as OpenVINO's CPU plugin otherwise picks on CPUs with AVX-512 BF16 or AMX); f32
    around an int8 file's Q/DQ pairs, as onnxruntime computes them."""
    if graph_precision in ("fp16", "bf16") and (capabilities is None or _HINTS[graph_precision][1] in capabilities):
        return graph_precision
    return "fp32"


class OpenVinoSession(Session):
    """One compiled model; ``run`` is thread-safe through a pool of infer requests."""

    #: What changes the numbers beyond ``precision``, in words (int8 dynamic quantization of
    #: activations); ``None`` when nothing does.
    precision_detail: str | None = None

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
        # (as the model says: an LSTM state is batched along dimension 1, a scalar not at all)
        # and dynamic; then one caller keeps all of OpenVINO's streams busy.
        self._splittable = (
            self.num_requests > 1
            and bool(self.inputs)
            and all(spec.batch_axis == 0 for spec in [*model.inputs, *model.outputs])
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
        # The core keeps a whole batch in flight on every request, as OpenVINO's own
        # AsyncInferQueue does: splitting each batch over the requests and waiting for all of
        # them left streams idle at every batch's end (int8 ResNet50 Offline ran at 0.86 of
        # the queue's rate). A call made while no other is running (SingleStream, a quiet
        # Server) still spreads its rows over the idle requests, for latency.
        self.capabilities = Capabilities(
            max_batch_size=max_batch, fixed_batch=fixed, concurrent=True, preferred_batch_size=preferred,
            max_in_flight=self.num_requests,
        )
        self._calls = 0
        self._calls_lock = threading.Lock()

    @property
    def compiled(self) -> Any:
        """The ``openvino.CompiledModel`` (``None`` once closed)."""
        return self._compiled

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("this OpenVINO session is closed")
        index = self._input_index
        for name, array in feeds.items():
            _check_fits_int32(name, array)
        keyed = {index.get(name, name): _shareable(array) for name, array in feeds.items()}
        with self._calls_lock:
            self._calls += 1
            alone = self._calls == 1
        requests: list[Any] = []
        started: list[Any] = []
        try:
            requests.append(pool.get())
            if alone and self._splittable and keyed:
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
            with self._calls_lock:
                self._calls -= 1

    def close(self) -> None:
        self._pool = None
        self._compiled = None


#: 64-bit integer inputs OpenVINO narrows to 32 bits (its CPU plugin has no int64 kernels;
#: openvinotoolkit/openvino#24072): an int64 past int32 wraps, silently, even through an
#: Identity (3,000,000,000 comes back as -1,294,967,296), and uint64 arithmetic wraps at 2^32.
#: uint32 is computed as uint32.
_NARROWED_TO_INT32 = (np.dtype(np.int64), np.dtype(np.uint64))
_INT32 = np.iinfo(np.int32)


def _check_fits_int32(name: str, array: np.ndarray) -> None:
    """``ModelError`` for a 64-bit integer input holding a value OpenVINO would wrap."""
    if array.dtype not in _NARROWED_TO_INT32 or not array.size:
        return
    low, high = int(array.min()), int(array.max())
    if low < _INT32.min or high > _INT32.max:
        bad = high if high > _INT32.max else low
        raise ModelError(
            f"input '{name}' holds {bad:,}, past int32: OpenVINO computes {array.dtype} as int32 "
            "and would wrap it without a word",
            "use --backend onnxruntime, which computes int64 as int64",
        )


class OpenVinoBackend(Backend):
    name = "openvino"
    device_kinds = ("cpu", "gpu", "npu")
    precisions = ("fp32", "fp16", "bf16", "int8")
    Options = OvOptions
    install_hint = 'pip install "mlpi[openvino]"'

    def __init__(self) -> None:
        self._core: Any = None
        #: (plugin, settings) -> whether it quantizes activations (see _quantizes_activations).
        self._quantizes: dict[tuple[str, tuple[tuple[str, Any], ...]], bool | None] = {}

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

    def native_precision(self, options: Any, precision: str) -> str | None:
        if options.native_precision and precision in ("fp16", "bf16"):
            return f"OpenVINO INFERENCE_PRECISION_HINT={_HINTS[precision][0]} on the fp32 model"
        return None

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        if options.native_precision and (precision not in ("fp16", "bf16") or model.precision is not None):
            raise UsageError(f"-o native_precision derives --precision fp16 or bf16 from the fp32 model, and this run "
                             f"{'asks for ' + precision if precision else 'gives no --precision'}",
                             "add --precision fp16 (or bf16), or drop -o native_precision")
        precision = _hinted(model, precision)
        self._import()
        plugin = self._plugin(device)
        core = self._get_core()
        supported = _device_property(core, plugin, "SUPPORTED_PROPERTIES") or {}
        wanted = {
            "PERFORMANCE_HINT": options.performance_hint != "none",
            "NUM_STREAMS": options.num_streams > 0,
            "INFERENCE_NUM_THREADS": options.num_threads > 0,
            "INFERENCE_PRECISION_HINT": precision is not None,
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": options.dynamic_quantization != "default",
        }
        if precision == "fp32" and options.dynamic_quantization == "on":
            raise UsageError(
                "-o dynamic_quantization=on quantizes activations to int8, which --precision fp32 rules out",
                "drop one: --precision fp32 runs f32 end to end; without it, dynamic_quantization=on applies",
            )
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
        refuse_unfaithful_nodes(model)

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = _NO_CONTEXT
    ) -> Session:
        self.check(model, device, options, precision)
        precision = _hinted(model, precision)
        plugin = self._plugin(device)
        core = self._get_core()
        config: dict[str, Any] = {}
        if options.performance_hint != "none":
            config["PERFORMANCE_HINT"] = options.performance_hint.upper()
        if options.num_streams > 0:
            config["NUM_STREAMS"] = options.num_streams
        if options.num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = options.num_threads
        supported = _device_property(core, plugin, "SUPPORTED_PROPERTIES") or {}
        expected = _expected_settings(precision, options, supported)
        if model.precision is not None and (not supported or "INFERENCE_PRECISION_HINT" in supported):
            compute = _derived_compute(model.precision, _device_property(core, plugin, "OPTIMIZATION_CAPABILITIES"))
            expected["INFERENCE_PRECISION_HINT"] = _HINTS[compute][0]
        config.update(expected)
        if options.cache:
            config["CACHE_DIR"] = str(_cache_dir())
        try:
            ov_model = core.read_model(str(model.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeError
            raise ModelError(f"OpenVINO could not read {model.path}: {_first_line(exc)}", model_hint(self.name, str(exc))) from None
        _refuse_unfaithful_outputs(ov_model, model)
        repair_unfaithful_ops(ov_model)
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
        try:
            self._record_quantization(session, plugin, expected, precision, options.dynamic_quantization)
        except BaseException:
            session.close()
            raise
        if model.precision is not None:  # the graph's own precision; OpenVINO's hint covers the float layers left
            computed, session.precision = session.precision, model.precision
            if computed != model.precision:
                rest = "layers outside its Q/DQ pairs" if model.precision == "int8" else "layers"
                note = f"OpenVINO computes the {model.precision} model's {rest} in {computed}"
                session.precision_detail = "; ".join(filter(None, [note, session.precision_detail]))
        return session

    def _record_quantization(self, session: OpenVinoSession, plugin: str, expected: Mapping[str, Any],
                             precision: str | None, dynamic_quantization: str) -> None:
        """Check that the compiled model kept the settings asked for, and set ``precision_detail``
        when it quantizes activations at run time; a UsageError where fp32 would not be f32 end to end."""
        properties = session.properties
        unmet = [f"{key}={properties[key]}" for key, value in expected.items()
                 if key in properties and properties[key] != value]
        if unmet and precision == "fp32":
            raise UsageError(
                f"OpenVINO compiled the model for {plugin} with {', '.join(unmet)}: not f32 end to end, "
                "as --precision fp32 asks",
                "this OpenVINO ignores the setting: drop --precision fp32 to let OpenVINO choose, "
                "or run f32 on the onnxruntime backend",
            )
        if unmet:
            raise UsageError(
                f"OpenVINO compiled the model for {plugin} with {', '.join(unmet)}, not as "
                f"-o dynamic_quantization={dynamic_quantization} asks",
                "this OpenVINO ignores the setting: drop -o dynamic_quantization",
            )
        layers = _compressed_layers(session.compiled)
        group = properties.get("DYNAMIC_QUANTIZATION_GROUP_SIZE")
        if not layers or group == 0:
            return
        quantizes = self._quantizes_activations(plugin, properties)
        if quantizes is False:
            return
        if precision == "fp32":
            raise UsageError(
                f"OpenVINO on {plugin} {'still' if quantizes else 'may still'} quantize activations to int8 with "
                f"DYNAMIC_QUANTIZATION_GROUP_SIZE={group}: not f32 end to end, as --precision fp32 asks",
                "drop --precision fp32 to let OpenVINO choose, or run f32 on the onnxruntime backend",
            )
        groups = f"groups of {group}" if group is not None else "group size not reported"
        where = f"{layers} layer{'s' if layers != 1 else ''} with integer weights"
        session.precision_detail = (
            f"int8 dynamic quantization of activations ({groups}) in {where}" if quantizes
            else f"int8 dynamic quantization of activations ({groups}) may apply in {where} (checking it failed)"
        )

    def _quantizes_activations(self, plugin: str, properties: Mapping[str, Any]) -> bool | None:
        """Whether ``plugin`` with the compiled model's precision settings quantizes the
        activations of a layer with int8 weights, found by running a small such layer once
        (OpenVINO does it only on some processors, and says so nowhere); ``None``: unknown."""
        keys = ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE")
        settings = tuple((key, properties[key]) for key in keys
                         if key in properties and (key != "INFERENCE_PRECISION_HINT" or properties[key] in _FROM_HINT))
        if (plugin, settings) not in self._quantizes:
            self._quantizes[(plugin, settings)] = _quantizes_activations(self._get_core(), plugin, dict(settings))
        return self._quantizes[(plugin, settings)]

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
    """What the compiled model really runs with (plain Python values: ``"f32"``, ``"ACCURACY"``,
    ``32``; absent when unknown)."""
    out: dict[str, Any] = {}
    for key in (
        "INFERENCE_PRECISION_HINT",
        "EXECUTION_MODE_HINT",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE",
        "KV_CACHE_PRECISION",
        "KEY_CACHE_PRECISION",
        "VALUE_CACHE_PRECISION",
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
        elif isinstance(getattr(value, "name", None), str) and not isinstance(value, (int, float, str, list, tuple)):
            value = value.name  # an enum such as ExecutionMode.ACCURACY
        elif not isinstance(value, (int, float, str, list, tuple)):
            value = str(value)
        out[key] = value
    return out


def _expected_settings(precision: str | None, options: Any, supported: Mapping[str, Any]) -> dict[str, Any]:
    """The compile settings for ``precision`` and ``-o dynamic_quantization``, each of which the
    compiled model must report back as set: for fp32 every one of :data:`_FP32_END_TO_END` the
    plugin has (or only the hint when it does not list its properties)."""
    settings: dict[str, Any] = {}
    if precision == "fp32":
        settings = {key: value for key, value in _FP32_END_TO_END.items()
                    if key in supported or key == "INFERENCE_PRECISION_HINT"}
    elif precision is not None:
        settings["INFERENCE_PRECISION_HINT"] = _HINTS[precision][0]
    if options.dynamic_quantization != "default":
        settings["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = _DYNAMIC_QUANTIZATION_GROUPS[options.dynamic_quantization]
    return settings


def _compressed_layers(compiled: Any) -> int:
    """Layers of the compiled model that multiply float activations by 8- or 4-bit integer
    weights: the ones OpenVINO may quantize activations for. 0 where the runtime model
    cannot be read."""
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except Exception:  # noqa: BLE001 - a plugin without a runtime model: nothing to count
        return 0
    count = 0
    for op in ops:
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str)).lower().replace("_", "") if "layerType" in info else ""
        if not any(word in kind for word in ("fullyconnected", "matmul", "gemm")) or op.get_input_size() < 2:
            continue
        data, weights = (op.input(k).get_element_type().get_type_name() for k in (0, 1))
        count += data in ("f32", "f16", "bf16") and weights in _COMPRESSED_WEIGHTS
    return count


def _quantizes_activations(core: Any, plugin: str, settings: Mapping[str, Any]) -> bool | None:
    """Run one layer with int8 weights (2, scaled by 0.5) under ``settings``: activations of 1000
    and 0.01 in every group of 16, with weights 0 for the 1000s and 1 for the rest, give 0.6 in
    f32, f16 or bf16 and 0 once each group is quantized to int8 (0.01 rounds to 0 next to 1000).
    ``None`` when the plugin cannot run it."""
    import openvino as ov
    from openvino import opset13 as ops

    rows, depth = 64, 64
    x = ops.parameter([rows, depth], np.float32, name="x")
    weights = np.full((depth, 8), 2, np.int8)
    weights[::16] = 0
    scaled = ops.multiply(ops.convert(ops.constant(weights), np.float32), ops.constant(np.float32(0.5)))
    model = ov.Model([ops.matmul(x, scaled, False, False)], [x], "activation_quantization_check")
    try:
        compiled = core.compile_model(model, plugin, {"PERFORMANCE_HINT": "LATENCY", **settings})
        feed = np.full((rows, depth), 0.01, np.float32)
        feed[:, ::16] = 1000.0
        out = compiled.create_infer_request().infer({0: feed})[0]
    except Exception:  # noqa: BLE001 - a plugin that cannot run the check: unknown
        return None
    return bool(np.abs(np.asarray(out, np.float64) - 0.6).max() > 0.1)


def _shareable(array: Any) -> Any:
    """``array`` as OpenVINO can share it: a read-only 0-d array (a scalar from a constant, a
    ``np.broadcast_to`` of one) copied, since OpenVINO refuses to share it and copies no other."""
    if isinstance(array, np.ndarray) and array.ndim == 0 and not array.flags.writeable:
        return array.copy()
    return array


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
