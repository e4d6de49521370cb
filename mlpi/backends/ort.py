"""The ``onnxruntime`` backend: any ONNX model on ONNX Runtime's execution providers.

``--device cpu|cuda|rocm`` picks the CPU, CUDA or ROCm provider; ``-o provider=tensorrt``
(CUDA) or ``-o provider=openvino`` (CPU) picks those instead. onnxruntime-gpu falls back
to the CPU silently when a provider cannot start, so after creating the session the
provider that really runs is checked and a fallback is an error, never a CPU run.

The TensorRT provider is given the GPU's index and nothing else (``tensorrt_provider_options``,
with the CUDA provider behind it for what TensorRT does not take): no ``trt_fp16_enable``,
``trt_int8_enable`` or int8 calibration table, which are TensorRT's weak typing, removed in
TensorRT 11, so the graph's own types and Q/DQ nodes decide its precision; no engine cache
either, so each session builds its engines anew.

``--precision fp16|bf16|int8``: mlpi derives the model for that precision
(:mod:`mlpi.core.engine.precision`: fp16 types, int8 Q/DQ nodes) and onnxruntime runs the
derived file as it is. ``-o dynamic_int8=true`` (CPU) is onnxruntime's own int8 instead: the
fp32 model's MatMul/Gemm weights quantized to int8 and its activations quantized at run time
(``quantize_dynamic``), made once into the cache; results record it as the backend's method.
Without ``--precision`` onnxruntime runs the model's own precision. An fp32 model whose
weights are stored as int8 (DequantizeLinear before a MatMul) stays fp32: onnxruntime's
default fuses that pair into MatMulNBits and computes it with int8 activations (0.6% off on a
test layer, under an fp32 label), so its accuracy level is set to keep float activations
(``session.qdq_matmulnbits_accuracy_level`` 0).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpi.backends._cuda import (
    cuda_absence,
    cuda_device_count,
    cuda_device_name,
    rocm_absence,
    rocm_device_count,
)
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

_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")

#: (device kind, provider option) -> execution provider that must end up first.
_PROVIDERS: dict[tuple[str, str], str] = {
    ("cpu", "default"): "CPUExecutionProvider",
    ("cpu", "openvino"): "OpenVINOExecutionProvider",
    ("cuda", "default"): "CUDAExecutionProvider",
    ("cuda", "tensorrt"): "TensorrtExecutionProvider",
    ("rocm", "default"): "ROCMExecutionProvider",
    ("rocm", "migraphx"): "MIGraphXExecutionProvider",
}

#: What to install for a provider that this onnxruntime build lacks.
_PROVIDER_HINTS = {
    "CUDAExecutionProvider": 'pip install "mlpi[onnxruntime-gpu]" (after uninstalling onnxruntime)',
    "TensorrtExecutionProvider": 'pip install "mlpi[onnxruntime-gpu]" plus TensorRT libraries matching it',
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino (after uninstalling onnxruntime)",
    "ROCMExecutionProvider": "install AMD's onnxruntime build for ROCm",
    "MIGraphXExecutionProvider": "install AMD's onnxruntime build for ROCm with MIGraphX",
}

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass
class OrtOptions:
    intra_op_threads: int = field(
        default=0, metadata={"help": "threads inside one operator (0: ONNX Runtime decides)", "threads": True}
    )
    inter_op_threads: int = field(
        default=0, metadata={"help": "threads across operators in parallel mode (0: decide)", "threads": True}
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = field(
        default="all", metadata={"help": "graph optimisations applied when the session is created"}
    )
    execution_mode: Literal["sequential", "parallel"] = field(
        default="sequential", metadata={"help": "run independent operators one at a time or in parallel"}
    )
    dynamic_int8: bool = field(
        default=False,
        metadata={"help": "--precision int8 as onnxruntime's dynamic quantization (int8 MatMul/Gemm weights, "
                          "activations quantized at run time; CPU) instead of mlpi's calibrated Q/DQ model"},
    )
    provider: Literal["default", "tensorrt", "openvino", "migraphx"] = field(
        default="default",
        metadata={"help": "execution provider: default for the device, tensorrt (cuda), openvino (cpu), migraphx (rocm)"},
    )


class OrtSession(Session):
    def __init__(self, session: Any, provider: str) -> None:
        self._session = session
        self.provider = provider
        self.inputs = [_spec(v) for v in session.get_inputs()]
        self.outputs = [_spec(v) for v in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        max_batch = fixed_batch_size(self.inputs)
        fixed = max_batch is not None
        preferred = max_batch if fixed else (1 if provider in ("CPUExecutionProvider", "OpenVINOExecutionProvider") else 32)
        self.capabilities = Capabilities(
            max_batch_size=max_batch, fixed_batch=fixed, concurrent=True, preferred_batch_size=int(preferred or 1)
        )
        self.precision = _model_precision(self.inputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return dict(zip(self._output_names, self._session.run(self._output_names, feeds)))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device_kinds = ("cpu", "cuda", "rocm")
    precisions = ("fp32", "fp16", "bf16", "int8")
    Options = OrtOptions
    install_hint = 'pip install "mlpi[onnxruntime]" (or "mlpi[onnxruntime-gpu]" for CUDA)'

    def version(self) -> str:
        installed = [d for d in _DISTRIBUTIONS if _has_distribution(d)]
        if len(installed) > 1:
            raise PluginError(
                "onnxruntime and onnxruntime-gpu are both installed; they share one folder and break each other",
                "pip uninstall -y onnxruntime onnxruntime-gpu, then install just one of them",
            )
        try:
            import onnxruntime
        except ImportError as exc:
            raise PluginError(f"ONNX Runtime is not installed ({exc})", self.install_hint) from None
        return str(onnxruntime.__version__)

    def runtime_distributions(self) -> tuple[str, ...]:
        return _DISTRIBUTIONS

    def describe(self, device: Device) -> str:
        return cuda_device_name(device.index) if device.kind == "cuda" else ""

    def probe(self) -> list[Device]:
        try:
            import onnxruntime

            available = set(onnxruntime.get_available_providers())
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        devices = [Device("cpu")]
        if "CUDAExecutionProvider" in available:
            devices += [Device("cuda", (i,)) for i in range(cuda_device_count())]
        if "ROCMExecutionProvider" in available or "MIGraphXExecutionProvider" in available:
            devices += [Device("rocm", (i,)) for i in range(rocm_device_count())]
        return devices

    def device_hint(self, kind: str) -> str | None:
        """The CPU-only package where a GPU build is needed, else what the driver lacks."""
        try:
            import onnxruntime

            available = set(onnxruntime.get_available_providers())
        except Exception:  # noqa: BLE001 - a hint never raises
            return None
        if kind == "cuda":
            if "CUDAExecutionProvider" not in available:
                return ("the installed onnxruntime package is CPU-only (it has no CUDA provider): "
                        'pip uninstall -y onnxruntime && pip install "mlpi[onnxruntime-gpu]"')
            absent = cuda_absence()
            return f"onnxruntime-gpu is installed, but {absent}" if absent else None
        if kind == "rocm":
            if not available & {"ROCMExecutionProvider", "MIGraphXExecutionProvider"}:
                return "the installed onnxruntime package has no ROCm provider: install AMD's onnxruntime build for ROCm"
            absent = rocm_absence()
            return f"onnxruntime has its ROCm provider, but {absent}" if absent else None
        return None

    def native_precision(self, options: Any, precision: str) -> str | None:
        if options.dynamic_int8 and precision == "int8":
            return "onnxruntime quantize_dynamic: int8 MatMul/Gemm weights, activations quantized at run time"
        return None

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        if options.dynamic_int8:
            if precision != "int8":
                raise UsageError(f"-o dynamic_int8 derives --precision int8, and this run asks for {precision or 'none'}",
                                 "add --precision int8, or drop -o dynamic_int8")
            if device.kind != "cpu" or options.provider != "default":
                raise UsageError(
                    "onnxruntime's dynamic quantization runs on its CPU execution provider only",
                    "use --device cpu without -o provider, or drop -o dynamic_int8 (mlpi's Q/DQ model runs anywhere)",
                )
            runs = model.precision or _model_precision(model.inputs)
            if runs != "fp32":
                raise UsageError(f"onnxruntime quantizes fp32 models to int8, and this one is {runs}",
                                 "pass the fp32 model, or drop -o dynamic_int8")
        self._providers(device, options)
        runs = model.precision or _model_precision(model.inputs)
        if precision is not None and precision != runs and not options.dynamic_int8:
            raise UsageError(
                f"onnxruntime runs the model's own precision ({runs}), not {precision}",
                f"drop --precision, or pass a model exported in {precision}",
            )

    def _providers(self, device: Device, options: Any) -> tuple[str, list[Any]]:
        """The provider that must end up first, and the provider list to ask for."""
        import onnxruntime as ort

        key = (device.kind, options.provider)
        if key not in _PROVIDERS:
            usable = sorted(p for (kind, p) in _PROVIDERS if kind == device.kind)
            raise UsageError(
                f"provider '{options.provider}' cannot run on device kind '{device.kind}'",
                f"for {device.kind} use -o provider={' or '.join(usable)}",
            )
        wanted = _PROVIDERS[key]
        if wanted not in ort.get_available_providers():
            raise DeviceError(
                f"this onnxruntime build has no {wanted} (it has: {', '.join(ort.get_available_providers())})",
                _PROVIDER_HINTS.get(wanted, self.install_hint),
            )
        providers: list[Any] = []
        if device.kind == "cpu":
            if wanted != "CPUExecutionProvider":
                providers.append((wanted, {"device_type": "CPU"}))
        else:
            unit = {"device_id": str(device.index)}
            if wanted == "TensorrtExecutionProvider":
                providers.append((wanted, tensorrt_provider_options(device.index)))
                providers.append(("CUDAExecutionProvider", unit))
            else:
                providers.append((wanted, unit))
        providers.append("CPUExecutionProvider")
        return wanted, providers

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        import onnxruntime as ort

        self.check(model, device, options, precision)
        wanted, providers = self._providers(device, options)

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.graph_optimization_level]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.log_severity_level = 3
        if precision != "int8":  # fp32 end to end: no int8 activations behind an fp32 label
            so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        path = dynamic_int8(model) if options.dynamic_int8 else model.path
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime could not load {model.path}: {first[:300]}", model_hint(self.name, str(exc))) from None
        active = session.get_providers()
        if not active or active[0] != wanted:
            raise DeviceError(
                f"onnxruntime did not start {wanted} on {device}; it fell back to {active[0] if active else 'nothing'}",
                "check the driver, CUDA/cuDNN (or ROCm) versions this onnxruntime build needs, or use --device cpu",
            )
        ort_session = OrtSession(session, wanted)
        if model.precision is not None or options.dynamic_int8:
            ort_session.precision = model.precision or "int8"
        return ort_session


def tensorrt_provider_options(device_index: int) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider options: the GPU, and nothing that sets a precision.

    ``trt_fp16_enable``, ``trt_int8_enable`` and ``trt_int8_calibration_table_name`` are
    TensorRT's weak typing (builder flags and calibrator), which TensorRT 11 removed; left out,
    they are off (a provider-options dict also makes ONNX Runtime ignore its ``ORT_TENSORRT_*``
    environment variables), so the graph's own types and Q/DQ nodes decide the precision."""
    return {"device_id": str(device_index)}


def dynamic_int8(model: ModelArtifact) -> Path:
    """``model`` with its MatMul/Gemm weights quantized to int8 and its activations quantized
    at run time (onnxruntime's ``quantize_dynamic``, QInt8 weights): made once, kept in the
    cache under the model's sha256, written to a temporary file and renamed into place."""
    from mlpi.core.engine.cache import cache_root

    target = cache_root() / "onnxruntime" / "int8" / f"{model.sha256[:32]}.onnx"
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"mlpi: quantizing {model.path.name} to int8 for onnxruntime (once, into {target.parent})", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.{os.getpid()}.partial.onnx")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its advice to pre-process the model first goes to the root logger
    try:
        quantize_dynamic(str(model.path), str(partial), weight_type=QuantType.QInt8)
        os.replace(partial, target)
    except Exception as exc:  # noqa: BLE001 - the quantizer raises whatever its passes raise
        raise ModelError(
            f"onnxruntime could not quantize {model.path.name} to int8: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            "drop -o dynamic_int8 (mlpi's calibrated Q/DQ model is the default), or pass a model quantized ahead of time",
        ) from None
    finally:
        quiet.setLevel(level)
        partial.unlink(missing_ok=True)
    return target


def _model_precision(inputs: Any) -> str:
    """ONNX Runtime runs a graph in its own types: the first floating input's type says which."""
    float_types = [s.dtype for s in inputs if s.dtype.startswith(("float", "bfloat"))]
    return {"float16": "fp16", "bfloat16": "bf16"}.get(float_types[0] if float_types else "", "fp32")


def _spec(value: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (value.shape or ()))
    return TensorSpec(value.name, _ORT_TYPES.get(value.type, "unknown"), shape)


def _has_distribution(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True
