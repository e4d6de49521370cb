"""Hints that fit the machine: a GPU device or backend refused on a machine without the GPU,
its driver, or the GPU build of the runtime says which of these is missing."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import one_error, run_cli

from mlpi.backends import _cuda
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError
from mlpi.core.engine.planning import _check_device


class _Lib:
    """A stand-in for libcuda.so.1 answering ``cuInit`` and ``cuDeviceGetCount``."""

    def __init__(self, init: int, count: int) -> None:
        self.init, self.count = init, count

    def cuInit(self, flags: int) -> int:
        return self.init

    def cuDeviceGetCount(self, out: Any) -> int:
        out._obj.value = self.count
        return 0


def _no_library(name: str) -> Any:
    raise OSError(f"{name}: cannot open shared object file")


@pytest.mark.parametrize(("lib", "env", "says"), [
    (None, None, "no NVIDIA driver was found on this machine: libcuda.so.1 cannot be loaded"),
    (_Lib(100, 0), None, "the NVIDIA driver did not start (cuInit error 100)"),
    (_Lib(0, 0), None, "the NVIDIA driver sees no GPU"),
    (_Lib(0, 2), "", "CUDA_VISIBLE_DEVICES is set empty"),
    (_Lib(0, 2), None, None),
])
def test_cuda_absence_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, lib: Any, env: str | None,
                                           says: str | None) -> None:
    monkeypatch.setattr(_cuda.ctypes, "CDLL", _no_library if lib is None else (lambda name: lib))
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    found = _cuda.cuda_absence()
    assert found == says if says is None else found is not None and found.startswith(says)


def test_onnxruntime_says_cpu_only_package_before_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from mlpi.backends.ort import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "CPU-only" in backend.device_hint("cuda") and "onnxruntime-gpu" in backend.device_hint("cuda")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(_cuda.ctypes, "CDLL", _no_library)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hint = backend.device_hint("cuda")
    assert hint.startswith("onnxruntime-gpu is installed, but no NVIDIA driver was found")
    assert "ROCm" in backend.device_hint("rocm")
    assert backend.device_hint("cpu") is None


class _Backend:
    name = "gpuish"

    def __init__(self, hint: Any) -> None:
        self.hint = hint

    def probe(self) -> list[Device]:
        return [Device("cpu")]

    def device_hint(self, kind: str) -> Any:
        if isinstance(self.hint, Exception):
            raise self.hint
        return self.hint


@pytest.mark.parametrize(("hint", "expected"), [
    ("no NVIDIA driver was found", "no NVIDIA driver was found; or pick a usable device with --device"),
    (None, "install the driver and runtime for it, or pick a usable device with --device"),
    (RuntimeError("a plugin's bug"), "install the driver and runtime for it, or pick a usable device with --device"),
    (42, "install the driver and runtime for it, or pick a usable device with --device"),
])
def test_the_refusal_carries_the_backends_account(hint: Any, expected: str) -> None:
    with pytest.raises(DeviceError) as info:
        _check_device(_Backend(hint), Device("cuda"))
    assert "device 'cuda' is not usable by backend 'gpuish'" in info.value.message
    assert info.value.hint == expected


def _cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_cuda_with_the_cpu_package_names_the_package(tmp_path: Path) -> None:
    if _cuda_provider():
        pytest.skip("this onnxruntime has a CUDA provider")
    proc = run_cli(["run", "--backend", "onnxruntime", "--device", "cuda", "--quick", "--output", str(tmp_path / "r")],
                   cwd=tmp_path)
    one_error(proc, "device 'cuda' is not usable")
    assert "hint: the installed onnxruntime package is CPU-only" in proc.stderr


def test_tensorrt_on_a_machine_without_a_gpu_says_so(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None or _cuda.cuda_absence() is None:
        pytest.skip("this machine has TensorRT or an NVIDIA GPU")
    try:
        ctypes.CDLL("libcuda.so.1")
        driver = True
    except OSError:
        driver = False
    proc = run_cli(["run", "--backend", "tensorrt", "--device", "cuda", "--quick", "--output", str(tmp_path / "r")],
                   cwd=tmp_path)
    one_error(proc, "TensorRT is not installed")
    hint = next(line for line in proc.stderr.splitlines() if line.startswith("hint:"))
    assert "TensorRT runs only on NVIDIA GPUs" in hint and 'pip install "mlpi[tensorrt]"' in hint
    assert ("no NVIDIA driver was found" in hint) is not driver
