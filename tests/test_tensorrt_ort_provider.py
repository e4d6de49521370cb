"""ONNX Runtime's TensorRT provider (``-o provider=tensorrt``): what the provider is given.

TensorRT 11 removed weak typing, so the provider must never be asked for a precision of its
own (``trt_fp16_enable``, ``trt_int8_enable``, an int8 calibration table): the graph's types
and Q/DQ nodes decide. No GPU is needed: onnxruntime's list of available providers is
replaced, so ``_providers`` builds the list it would hand to a session on a GPU machine.
"""

from __future__ import annotations

import onnxruntime
import pytest

from mlpi.backends.ort import OnnxRuntimeBackend, OrtOptions, tensorrt_provider_options
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError

#: TensorRT provider options that set a precision (TensorRT's weak typing).
PRECISION_OPTIONS = {"trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable", "trt_int8_calibration_table_name",
                     "trt_int8_use_native_calibration_table"}
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu's providers, on a machine that has only the CPU package."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD))


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_the_tensorrt_provider_is_given_the_gpu_and_no_precision(gpu_build: None, device: str):
    unit = Device.parse(device)
    wanted, providers = OnnxRuntimeBackend()._providers(unit, OrtOptions(provider="tensorrt"))
    index = str(unit.index)
    assert wanted == "TensorrtExecutionProvider"
    assert providers == [
        ("TensorrtExecutionProvider", {"device_id": index}),
        ("CUDAExecutionProvider", {"device_id": index}),
        "CPUExecutionProvider",
    ]
    assert not PRECISION_OPTIONS & set(providers[0][1])


def test_the_helper_names_only_the_gpu():
    for index in (0, 3):
        options = tensorrt_provider_options(index)
        assert options == {"device_id": str(index)}
        assert not PRECISION_OPTIONS & set(options)


def test_the_cuda_provider_alone_is_unchanged(gpu_build: None):
    wanted, providers = OnnxRuntimeBackend()._providers(Device.parse("cuda:2"), OrtOptions())
    assert (wanted, providers) == ("CUDAExecutionProvider", [("CUDAExecutionProvider", {"device_id": "2"}),
                                                             "CPUExecutionProvider"])


def test_a_build_without_the_tensorrt_provider_is_a_device_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="this onnxruntime build has no TensorrtExecutionProvider") as raised:
        OnnxRuntimeBackend()._providers(Device.parse("cuda"), OrtOptions(provider="tensorrt"))
    assert "TensorRT libraries" in (raised.value.hint or "")
