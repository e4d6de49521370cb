"""ONNX Runtime backend: signatures, batch kinds, options, and the provider check.

There is no GPU on the build machines, so the silent-fallback check is exercised by an
InferenceSession stand-in that drops the requested provider the way onnxruntime-gpu does
when CUDA cannot start (the only fake here; everything else runs the real runtime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from mlpi.backends._cuda import cuda_device_count
from mlpi.backends.ort import OnnxRuntimeBackend, OrtOptions
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, UsageError
from mlpi.core.engine.onnx_file import inspect_onnx


def load(model: Path, device: str = "cpu", **options: object):
    return OnnxRuntimeBackend().load(inspect_onnx(model), Device.parse(device), OrtOptions(**options), None)


def test_dynamic_batch_model_accepts_any_batch(model_dir: Path) -> None:
    session = load(model_dir / "matmul.onnx")
    assert session.capabilities.max_batch_size is None and not session.capabilities.fixed_batch
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "float32", (None, 16))]
    assert [(s.name, s.dtype) for s in session.outputs] == [("logits", "float32"), ("label", "int64")]
    for n in (1, 3, 17):
        out = session.run({"x": np.ones((n, 16), np.float32)})
        assert out["logits"].shape == (n, 10) and out["label"].shape == (n,)
    assert session.precision == "fp32"


def test_fixed_batch_model_reports_its_batch(model_dir: Path) -> None:
    session = load(model_dir / "matmul_b4.onnx")
    caps = session.capabilities
    assert (caps.max_batch_size, caps.fixed_batch, caps.preferred_batch_size) == (4, True, 4)


def test_options_reach_the_session(model_dir: Path) -> None:
    session = load(model_dir / "conv.onnx", intra_op_threads=1, graph_optimization_level="disable", execution_mode="parallel")
    opts = session._session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.execution_mode == onnxruntime.ExecutionMode.ORT_PARALLEL


def _one_node_model(path: Path, op: str, dtype: int, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", dtype, ["N", 4])],
        [helper.make_tensor_value_info("y", dtype, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)  # a valid model: the checker has nothing to say about it
    onnx.save(model, str(path))
    return path


def test_an_operator_onnxruntime_lacks_is_named_with_another_backend_to_try(tmp_path: Path) -> None:
    from onnx import TensorProto

    # valid ONNX that onnxruntime's CPU build has no kernel for (Erf on doubles)
    with pytest.raises(ModelError, match="Erf") as info:
        load(_one_node_model(tmp_path / "erf.onnx", "Erf", TensorProto.DOUBLE))
    hint = info.value.hint or ""
    assert "onnx.checker" not in hint, hint
    assert "operator Erf is not supported by onnxruntime" in hint and "--backend openvino" in hint


def test_a_graph_onnxruntime_rejects_is_a_model_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    graph = helper.make_graph(
        [node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="onnxruntime could not load") as info:
        load(tmp_path / "bad.onnx")
    assert "custom operator" in (info.value.hint or "") and "no.such.domain:NoSuchOp" in (info.value.hint or "")


def test_provider_missing_from_the_build_is_a_device_error(model_dir: Path) -> None:
    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has the OpenVINO provider")
    with pytest.raises(DeviceError, match="OpenVINOExecutionProvider"):
        load(model_dir / "matmul.onnx", provider="openvino")


def test_provider_that_does_not_fit_the_device_is_a_usage_error(model_dir: Path) -> None:
    with pytest.raises(UsageError, match="cannot run on device kind 'cpu'"):
        load(model_dir / "matmul.onnx", provider="tensorrt")


def test_silent_fallback_to_cpu_is_an_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_session = onnxruntime.InferenceSession

    class FallsBackToCpu(real_session):  # type: ignore[misc, valid-type]
        """What onnxruntime-gpu does without a working CUDA: keeps only the CPU provider."""

        def __init__(self, path: str, sess_options: object = None, providers: object = None) -> None:
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FallsBackToCpu)
    with pytest.raises(DeviceError, match="fell back to CPUExecutionProvider"):
        load(model_dir / "matmul.onnx", device="cuda:0")


def test_probe_lists_cpu_and_only_gpus_the_driver_reports() -> None:
    devices = OnnxRuntimeBackend().probe()
    assert Device("cpu") in devices
    assert len([d for d in devices if d.kind == "cuda"]) == (
        cuda_device_count() if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else 0
    )


@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0 or "CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
                    reason="needs an NVIDIA GPU and onnxruntime-gpu")
def test_cuda_session_really_runs_on_cuda(model_dir: Path) -> None:
    session = load(model_dir / "matmul.onnx", device="cuda:0")
    assert session.provider == "CUDAExecutionProvider"
    cpu = load(model_dir / "matmul.onnx")
    x = {"x": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)}
    assert np.allclose(session.run(x)["logits"], cpu.run(x)["logits"], atol=1e-4)


def test_int8_quantizes_once_runs_close_to_fp32_and_says_int8(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """-o dynamic_int8 with --precision int8: the MatMul weights become int8 (MatMulInteger after
    a run-time DynamicQuantizeLinear), made once into the cache; the answers stay close to fp32's."""
    import onnx

    from mlpi.models.bert_graph import BertConfig, write_bert

    path = write_bert(tmp_path / "bert.onnx", 5, BertConfig(layers=2, hidden=64, heads=4, intermediate=128))
    artifact = inspect_onnx(path)
    backend = OnnxRuntimeBackend()
    dynamic = OrtOptions(dynamic_int8=True)
    assert backend.native_precision(dynamic, "int8") and backend.native_precision(OrtOptions(), "int8") is None
    backend.check(artifact, Device("cpu"), dynamic, "int8")
    int8 = backend.load(artifact, Device("cpu"), dynamic, "int8")
    fp32 = backend.load(artifact, Device("cpu"), OrtOptions(), None)
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert "quantizing bert.onnx to int8" in capfd.readouterr().err
    from mlpi.backends.ort import dynamic_int8

    ops = {node.op_type for node in onnx.load(str(dynamic_int8(artifact))).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30522, (2, 384)), "input_mask": np.ones((2, 384), np.int64),
             "segment_ids": rng.integers(0, 2, (2, 384))}
    got, want = int8.run(feeds), fp32.run(feeds)
    for name, expected in want.items():
        assert not np.array_equal(got[name], expected)  # really another computation
        np.testing.assert_allclose(got[name], expected, atol=0.05 * float(np.abs(expected).max()) + 1e-3)
    backend.load(artifact, Device("cpu"), dynamic, "int8")
    assert "quantizing" not in capfd.readouterr().err  # from the cache the second time


def test_int8_is_refused_off_the_cpu_provider_and_for_a_non_fp32_model(model_dir: Path) -> None:
    artifact = inspect_onnx(model_dir / "matmul.onnx")
    with pytest.raises(UsageError, match="CPU execution provider"):
        OnnxRuntimeBackend().check(artifact, Device("cpu"), OrtOptions(provider="openvino", dynamic_int8=True), "int8")
    from mlpi.core.contract.backend import ModelArtifact, TensorSpec

    half = ModelArtifact(artifact.path, artifact.sha256, (TensorSpec("x", "float16", (None, 4)),), artifact.outputs)
    with pytest.raises(UsageError, match="fp16"):
        OnnxRuntimeBackend().check(half, Device("cpu"), OrtOptions(dynamic_int8=True), "int8")
    with pytest.raises(UsageError, match="-o dynamic_int8 derives --precision int8"):
        OnnxRuntimeBackend().check(artifact, Device("cpu"), OrtOptions(dynamic_int8=True), None)


def test_int8_weights_of_an_fp32_model_run_with_float_activations(tmp_path: Path) -> None:
    """DequantizeLinear(int8 weights) -> MatMul: onnxruntime's default fuses the pair into
    MatMulNBits and quantizes the activations to int8 (0.6% off here, reported as fp32);
    mlpi's fp32 session keeps them float, to float32 rounding of the exact product."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 127, (256, 128)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 128])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "int8_weights.onnx"))
    x = (rng.standard_normal((4, 256)) * np.logspace(-3, 2, 256)).astype(np.float32)  # activations of every scale
    exact = x.astype(np.float64) @ (weights.astype(np.float64) * 0.01)
    session = load(tmp_path / "int8_weights.onnx")
    assert session.precision == "fp32"
    got = session.run({"x": x})["y"]
    assert np.abs(got - exact).max() / np.abs(exact).max() < 1e-5
