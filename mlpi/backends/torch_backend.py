"""The ``pytorch`` backend: the model's ONNX file converted to a torch module, run by PyTorch.

The ONNX artifact stays the canonical model: :mod:`mlpi.backends.onnx_to_torch` turns it
into an ``nn.Module`` (its docstring says why mlpi has its own converter rather than
onnx2torch). ``--device cpu|cuda|rocm`` (ROCm builds of torch use the ``cuda`` device
type); ``--precision fp32|bf16`` on the CPU, plus ``fp16`` on GPUs. Float inputs are cast
to the precision that runs and float outputs back to the ONNX file's types, so results
look the same whatever runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpi.backends._cuda import cuda_device_count, cuda_device_name, rocm_device_count
from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    fixed_batch_size,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError

_INSTALL_HINT = 'pip install "mlpi[pytorch]"'
_PREFERRED_BATCH = 8


@dataclass
class TorchOptions:
    channels_last: bool = field(
        default=False,
        metadata={"help": "store 4-d weights and inputs channels-last (NHWC), often faster for convolutions"},
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the module: faster steady state, but compiling costs startup time (seconds "
            "to minutes, again for each new batch shape) and needs a C++ compiler on the CPU"
        },
    )
    threads: int = field(
        default=0,
        metadata={"help": "torch.set_num_threads for the whole process (0: torch's default)", "threads": True},
    )


class TorchSession(Session):
    """One converted module on one device. Runs under ``torch.inference_mode()`` always."""

    def __init__(
        self, module: Any, model: ModelArtifact, device: Any, precision: str, float_dtype: Any, options: TorchOptions,
        runner: Any = None,
    ) -> None:
        import torch

        from mlpi.backends.onnx_to_torch import NUMPY_TO_TORCH

        self.module = module
        self._runner = runner if runner is not None else module
        self.device = device
        self.precision = precision
        self.options = options
        self.inputs = list(model.inputs)
        self.outputs = list(model.outputs)
        self._float_dtype = float_dtype
        self._input_order = [s.name for s in self.inputs]
        if self._input_order != list(module.input_names):
            raise ModelError(
                f"the converted module's inputs {module.input_names} are not the ONNX file's {self._input_order}",
                "export the model again",
            )
        self._output_names = [s.name for s in self.outputs]
        self._output_dtypes = [NUMPY_TO_TORCH.get(s.dtype) for s in self.outputs]
        self._cuda = device.type == "cuda"
        self._channels_last = options.channels_last
        self._staging: dict[str, Any] = {}  # CUDA: one pinned host buffer per input, grown as needed
        # CUDA: each session (each --instances copy) queues its copies and kernels on a
        # stream of its own, so instances on one GPU overlap instead of serialising.
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._buffer_ptrs = {b.untyped_storage().data_ptr() for b in module.buffers()}
        max_batch = fixed_batch_size(self.inputs)
        fixed = max_batch is not None
        # The module keeps no state between calls (see onnx_to_torch) and torch ops are
        # re-entrant in inference mode, so CPU sessions take concurrent calls. CUDA sessions
        # reuse pinned staging buffers, and compiled modules may recompile on a new shape: no.
        concurrent = not self._cuda and not options.compile
        self.capabilities = Capabilities(
            max_batch_size=max_batch,
            fixed_batch=fixed,
            concurrent=concurrent,
            preferred_batch_size=max_batch if max_batch is not None else _PREFERRED_BATCH,
        )
        self._torch = torch

    # ------------------------------------------------------------------ inputs

    def _to_tensor(self, name: str, array: np.ndarray) -> Any:
        torch = self._torch
        array = np.require(array, requirements="C")  # ascontiguousarray would make a 0-d input 1-d
        if not array.flags.writeable:
            # torch warns about read-only arrays; the module never writes to its inputs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tensor = torch.from_numpy(array)
        else:
            tensor = torch.from_numpy(array)
        if self._cuda:
            tensor = self._stage(name, tensor).to(self.device, non_blocking=True)
        if tensor.is_floating_point() and tensor.dtype != self._float_dtype:
            tensor = tensor.to(self._float_dtype)
        if self._channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _stage(self, name: str, tensor: Any) -> Any:
        """Copy into this input's pinned buffer, so the host-to-device copy can be asynchronous."""
        torch = self._torch
        buffer = self._staging.get(name)
        rows = tensor.shape[0] if tensor.dim() else 1
        if buffer is None or buffer.dtype != tensor.dtype or buffer.shape[1:] != tensor.shape[1:] or buffer.shape[0] < rows:
            buffer = torch.empty((max(rows, _PREFERRED_BATCH), *tensor.shape[1:]) if tensor.dim() else (),
                                 dtype=tensor.dtype, pin_memory=True)
            self._staging[name] = buffer
        view = buffer[:rows] if tensor.dim() else buffer
        view.copy_(tensor)
        return view

    # ------------------------------------------------------------------ run

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        if self.module is None:
            raise RuntimeError("this session is closed")
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            return self._run(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        try:
            args = [self._to_tensor(name, feeds[name]) for name in self._input_order]
        except KeyError as exc:
            raise ModelError(f"no feed for model input {exc}", f"feed every input: {', '.join(self._input_order)}") from None
        with torch.inference_mode():
            results = self._runner(*args)
            outputs = []
            for value, dtype in zip(results, self._output_dtypes):
                if dtype is not None and value.dtype != dtype:
                    value = value.to(dtype)
                outputs.append(value)
            if self._cuda:
                self._stream.synchronize()  # type: ignore[union-attr]
                outputs = [v.to("cpu") for v in outputs]
            else:
                inputs = {t.untyped_storage().data_ptr() for t in args}
                # An output that is an input (Identity, a Reshape view) or a constant would
                # change with the caller's next feed, or be shared: hand out a copy of those.
                outputs = [
                    v.clone() if v.untyped_storage().data_ptr() in inputs or v.untyped_storage().data_ptr() in self._buffer_ptrs
                    else v
                    for v in outputs
                ]
        return {name: value.numpy() for name, value in zip(self._output_names, outputs)}

    def close(self) -> None:
        self.module = None
        self._runner = None
        self._staging.clear()
        if self._cuda:
            self._torch.cuda.empty_cache()


class TorchBackend(Backend):
    name = "pytorch"
    device_kinds = ("cpu", "cuda", "rocm")
    precisions = ("fp32", "fp16", "bf16")
    Options = TorchOptions
    install_hint = _INSTALL_HINT

    def version(self) -> str:
        try:
            import torch
        except ImportError as exc:
            raise PluginError(f"PyTorch is not installed ({exc})", _INSTALL_HINT) from None
        return str(torch.__version__)

    def runtime_distributions(self) -> tuple[str, ...]:
        return ("torch",)

    def describe(self, device: Device) -> str:
        return cuda_device_name(device.index) if device.kind == "cuda" else ""

    def probe(self) -> list[Device]:
        try:
            if "torch" not in sys.modules:
                if importlib.util.find_spec("torch") is None:
                    return []
                # Importing torch takes seconds; with no GPU driver here it could only find
                # the CPU, which needs no import to say (the system description probes
                # every installed backend). A torch that fails to import fails version().
                if not cuda_device_count() and not rocm_device_count():
                    return [Device("cpu")]
            import torch
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        devices = [Device("cpu")]
        try:
            if torch.cuda.is_available():
                count = torch.cuda.device_count()
                if getattr(torch.version, "hip", None):
                    devices += [Device("rocm", (i,)) for i in range(count)]
                elif getattr(torch.version, "cuda", None):
                    devices += [Device("cuda", (i,)) for i in range(count)]
        except Exception:  # noqa: BLE001 - a broken driver means no GPU, not a crash
            pass
        return devices

    def native_precision(self, options: Any, precision: str) -> str | None:
        """fp16 and bf16 are the converted module cast to that type: the backend's own method,
        always (its ONNX converter does not read a derived fp16/bf16 graph's casts as a plan)."""
        if precision in ("fp16", "bf16"):
            return f"the torch module's float weights and activations cast to {precision}"
        return None

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        if device.kind not in self.device_kinds:
            raise UsageError(f"the pytorch backend cannot use device kind '{device.kind}'",
                             f"use one of: {', '.join(self.device_kinds)}")
        wanted = precision or "fp32"
        if wanted not in self.precisions:
            raise UsageError(f"the pytorch backend cannot run precision '{wanted}'",
                             f"choose one of: {', '.join(self.precisions)}")
        if device.kind == "cpu" and wanted == "fp16":
            raise UsageError(
                "the pytorch backend does not run fp16 on the CPU: many CPU kernels lack fp16 or run it far slower than fp32",
                "use --precision bf16 (or fp32) on the CPU, or run fp16 on a GPU",
            )
        self._torch_device(device)

    def _torch_device(self, device: Device) -> Any:
        """The torch.device for ``device``; DeviceError when this torch cannot use it."""
        try:
            import torch
        except ImportError as exc:
            raise PluginError(f"PyTorch is not installed ({exc})", _INSTALL_HINT) from None
        if device.kind == "cpu":
            return torch.device("cpu")
        build = getattr(torch.version, "hip" if device.kind == "rocm" else "cuda", None)
        if not build:
            hint = ("install a ROCm build of torch from https://pytorch.org/get-started/locally/"
                    if device.kind == "rocm" else "install a CUDA build of torch from https://pytorch.org/get-started/locally/")
            raise DeviceError(f"this torch build ({torch.__version__}) has no {device.kind.upper()} support", hint)
        if not torch.cuda.is_available() or device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise DeviceError(
                f"{device} is not usable by torch here ({count} {device.kind} device{'s' if count != 1 else ''} found)",
                "check the driver (nvidia-smi / rocm-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu",
            )
        return torch.device("cuda", device.index)

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        self.check(model, device, options, precision)
        import onnx
        import torch

        from mlpi.backends.onnx_to_torch import convert

        target = self._torch_device(device)
        runs = precision or "fp32"
        float_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[runs]
        if options.threads > 0:
            torch.set_num_threads(options.threads)
        if target.type == "cuda" and runs == "fp32":
            # cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa): fp32 means fp32.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            proto = onnx.load(str(model.path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, onnx ValueError...
            raise ModelError(
                f"{model.path} is not an ONNX model or is corrupt ({type(exc).__name__}: {_first_line(exc)})",
                "check the model with onnx.checker.check_model, or export it again",
            ) from None
        if not proto.graph.node or not proto.graph.output:
            raise ModelError(f"{model.path} is not an ONNX model or is corrupt (no graph)", "export it again")
        try:
            module = convert(proto, float_dtype)
        except ModelError as exc:
            raise ModelError(f"cannot convert {model.path.name} to torch: {exc.message}",
                             exc.hint or "use the onnxruntime backend for this model") from None
        except Exception as exc:  # noqa: BLE001 - the converter's own failure, first line only
            raise ModelError(f"cannot convert {model.path.name} to torch: {_first_line(exc)}",
                             "use the onnxruntime backend for this model") from None
        del proto
        try:
            module = module.to(target)
            if options.channels_last:
                module = module.to(memory_format=torch.channels_last)
        except RuntimeError as exc:
            raise DeviceError(f"cannot move the model to {device}: {_first_line(exc)}",
                              "check free device memory, or use another device") from None
        runner = None
        if options.compile:
            try:
                runner = torch.compile(module)
            except Exception as exc:  # noqa: BLE001 - compile problems surface here or at first run
                raise UsageError(f"torch.compile failed: {_first_line(exc)}", "drop -o compile=true") from None
        session = TorchSession(module, model, target, runs, float_dtype, options, runner)
        if options.compile:
            _warm_up(session)
        return session


def _warm_up(session: TorchSession) -> None:
    """Compile now (one batch of zeros), so a compile failure stops the run before it starts."""
    rows = session.capabilities.max_batch_size or 1
    feeds = {s.name: np.zeros((rows, *(d or 1 for d in s.sample_shape)), dtype=s.dtype) for s in session.inputs}
    try:
        session.run(feeds)
    except Exception as exc:  # noqa: BLE001 - inductor raises many types
        raise UsageError(f"torch.compile could not compile the model: {_first_line(exc)}",
                         "drop -o compile=true (on the CPU it needs a working C++ compiler)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


__all__ = ["TorchBackend", "TorchOptions", "TorchSession"]
