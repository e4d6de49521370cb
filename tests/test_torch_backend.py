"""PyTorch backend: the ONNX-to-torch conversion against ONNX Runtime, precisions, options,
errors, and the conformance kit. Skipped as a whole where torch is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")  # the reference the values are checked against

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from mlpi.backends.torch_backend import TorchBackend, TorchOptions  # noqa: E402
from mlpi.core.contract.device import Device  # noqa: E402
from mlpi.core.contract.errors import ModelError, UsageError  # noqa: E402
from mlpi.core.engine.onnx_file import inspect_onnx  # noqa: E402
from mlpi.testing import tiny_models  # noqa: E402
from mlpi.testing.conformance import run_checks  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and bool(torch.version.cuda)


def load(model: Path, device: str = "cpu", precision: str | None = None, **options: object):
    return TorchBackend().load(inspect_onnx(model), Device.parse(device), TorchOptions(**options), precision)


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def random_feeds(model: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inspect_onnx(model).inputs:
        shape = (n, *(d or 1 for d in spec.sample_shape))
        if np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(-4, 5, shape).astype(spec.dtype)
    return feeds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("torch-models")
    return {
        "conv": tiny_models.conv_model(path / "conv.onnx"),
        "matmul": tiny_models.matmul_model(path / "matmul.onnx"),
        "two_inputs": tiny_models.two_input_model(path / "two_inputs.onnx"),
        "argmax": tiny_models.argmax_model(path / "argmax.onnx"),
        "mlp": tiny_models.mlp_model(path / "mlp.onnx"),
        "conv_strided": tiny_models.strided_conv_model(path / "conv_strided.onnx"),
        "classifier": tiny_models.resnet_signature_classifier(path / "classifier.onnx"),
        "matmul_b4": tiny_models.matmul_model(path / "matmul_b4.onnx", batch=4),
    }


def test_probe_and_version() -> None:
    backend = TorchBackend()
    assert backend.version() == torch.__version__
    devices = backend.probe()
    assert Device("cpu") in devices
    assert len([d for d in devices if d.kind == "cuda"]) == (torch.cuda.device_count() if HAS_CUDA else 0)
    assert backend.runtime_distributions() == ("torch",)


def test_signature_and_capabilities(models: dict[str, Path]) -> None:
    session = load(models["matmul"])
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "float32", (None, 16))]
    assert [(s.name, s.dtype) for s in session.outputs] == [("logits", "float32"), ("label", "int64")]
    caps = session.capabilities
    assert (caps.max_batch_size, caps.fixed_batch, caps.concurrent, caps.preferred_batch_size) == (None, False, True, 8)
    assert session.precision == "fp32"
    fixed = load(models["matmul_b4"]).capabilities
    assert (fixed.max_batch_size, fixed.fixed_batch, fixed.preferred_batch_size) == (4, True, 4)


@pytest.mark.parametrize("name", ["conv", "matmul", "two_inputs", "argmax", "mlp", "conv_strided", "classifier"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_values_match_onnxruntime(models: dict[str, Path], name: str, batch: int) -> None:
    session = load(models[name])
    feeds = random_feeds(models[name], batch, seed=batch)
    got, want = session.run(feeds), reference(models[name], feeds)
    assert set(got) == set(want)
    for key, expected in want.items():
        assert got[key].dtype == expected.dtype and got[key].shape == expected.shape
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got[key], expected, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(got[key], expected)


def test_outputs_stay_valid_after_the_next_call(models: dict[str, Path], tmp_path: Path) -> None:
    # A graph whose output is a view of its input: the output must not follow the feed buffer.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "identity.onnx"))
    session = load(tmp_path / "identity.onnx")
    feed = np.ones((3, 2), np.float32)
    first = session.run({"x": feed})["y"]
    feed[:] = 7
    session.run({"x": feed})
    assert (first == 1).all()


def test_bf16_is_close_and_reported(models: dict[str, Path]) -> None:
    for name in ("conv", "mlp"):
        session = load(models[name], precision="bf16")
        assert session.precision == "bf16"
        feeds = random_feeds(models[name], 8)
        got, want = session.run(feeds), reference(models[name], feeds)
        for key, expected in want.items():
            assert got[key].dtype == np.float32  # cast back to the ONNX output type
            np.testing.assert_allclose(got[key], expected, rtol=5e-2, atol=5e-2)
    assert next(iter(dict(load(models["conv"], precision="bf16").module.named_buffers()).values())).dtype == torch.bfloat16


def test_fp16_on_cpu_is_rejected_by_check(models: dict[str, Path]) -> None:
    artifact = inspect_onnx(models["conv"])
    with pytest.raises(UsageError, match="fp16 on the CPU") as info:
        TorchBackend().check(artifact, Device("cpu"), TorchOptions(), "fp16")
    assert "bf16" in (info.value.hint or "")
    with pytest.raises(UsageError):
        TorchBackend().load(artifact, Device("cpu"), TorchOptions(), "fp16")


def test_channels_last_takes_effect(models: dict[str, Path]) -> None:
    session = load(models["conv"], channels_last=True)
    weights = [b for b in session.module.buffers() if b.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)
    feeds = random_feeds(models["conv"], 3)
    np.testing.assert_allclose(session.run(feeds)["scores"], reference(models["conv"], feeds)["scores"], rtol=1e-4, atol=1e-5)


def test_threads_option_sets_torch_threads(models: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    try:
        load(models["matmul"], threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unsupported_operator_is_a_model_error_naming_it(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("LpNormalization", ["x"], ["y"], axis=1)], "lpnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "lpnorm.onnx"))
    with pytest.raises(ModelError, match="LpNormalization"):
        load(tmp_path / "lpnorm.onnx")


def test_corrupt_file_is_a_model_error(models: dict[str, Path], tmp_path: Path) -> None:
    good = inspect_onnx(models["conv"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(3).bytes(4096))
    artifact = type(good)(bad, "0" * 64, good.inputs, good.outputs)
    with pytest.raises(ModelError):
        TorchBackend().load(artifact, Device("cpu"), TorchOptions(), None)


def test_cuda_on_a_torch_without_it_is_a_device_error(models: dict[str, Path]) -> None:
    if HAS_CUDA:
        pytest.skip("this torch has CUDA")
    from mlpi.core.contract.errors import DeviceError

    with pytest.raises(DeviceError):
        TorchBackend().check(inspect_onnx(models["conv"]), Device("cuda", (0,)), TorchOptions(), None)


def test_conformance_kit_passes() -> None:
    report = run_checks(TorchBackend)
    assert report.failed == []
    assert not report.skipped  # concurrent CPU sessions: every check applies


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU and a CUDA build of torch")
def test_cuda_session_matches_cpu(models: dict[str, Path]) -> None:
    for name in ("conv", "two_inputs", "classifier"):
        gpu, cpu = load(models[name], device="cuda:0"), load(models[name])
        assert not gpu.capabilities.concurrent
        for batch in (1, 8, 3):  # grows, then reuses, the pinned staging buffers
            feeds = random_feeds(models[name], batch, seed=batch)
            got, want = gpu.run(feeds), cpu.run(feeds)
            for key, expected in want.items():
                assert isinstance(got[key], np.ndarray) and got[key].dtype == expected.dtype
                np.testing.assert_allclose(got[key], expected, rtol=1e-3, atol=1e-4)
        gpu.close()


def _single_node(path: Path, node: object, inputs: list[tuple[str, int, list[int]]], opset: int = 13) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


GATHER_SCATTER_CASES = {
    "gathernd_batch_dims_1": (("GatherND", ["d", "i"], {"batch_dims": 1}), [("i", [2, 3, 1])],
                              np.array([[[0], [4], [-1]], [[2], [2], [1]]]), None, 13),
    "gathernd_pairs": (("GatherND", ["d", "i"], {}), [("i", [3, 2])], np.array([[0, 1], [1, 4], [1, -2]]), None, 13),
    "scatternd_points": (("ScatterND", ["d", "i", "u"], {}), [("i", [3, 3]), ("u", [3])],
                         np.array([[0, 1, 2], [1, 4, 0], [1, -2, 3]]), (3,), 13),
    "scatternd_add_slices": (("ScatterND", ["d", "i", "u"], {"reduction": "add"}), [("i", [3, 1]), ("u", [3, 5, 4])],
                             np.array([[0], [1], [0]]), (3, 5, 4), 16),
}


@pytest.mark.parametrize("case", sorted(GATHER_SCATTER_CASES))
def test_gathernd_and_scatternd_match_onnxruntime(case: str, tmp_path: Path) -> None:
    """The SSD graphs' top-detection gather and dense scatter (negative indices, batch_dims, add)."""
    from onnx import TensorProto, helper

    (op, names, attrs), extra, index, update_shape, opset = GATHER_SCATTER_CASES[case]
    inputs = [("d", TensorProto.FLOAT, [2, 5, 4])]
    inputs += [(n, TensorProto.INT64 if n == "i" else TensorProto.FLOAT, s) for n, s in extra]
    model = _single_node(tmp_path / f"{case}.onnx", helper.make_node(op, names, ["y"], **attrs), inputs, opset)
    rng = np.random.default_rng(0)
    feeds = {"d": rng.standard_normal((2, 5, 4)).astype(np.float32), "i": index.astype(np.int64)}
    if update_shape is not None:
        feeds["u"] = rng.standard_normal(update_shape).astype(np.float32)
    got = load(model).run(feeds)
    np.testing.assert_array_equal(np.asarray(got["y"]), reference(model, feeds)["y"])


SPLIT_CASES = {
    "equal_opset11": ({"axis": -1}, None, 3, 11),
    "sizes_attr_opset11": ({"axis": 1, "split": [1, 3, 2]}, None, 3, 11),
    "sizes_input_opset13": ({"axis": 2}, [2, 4], 2, 13),
    "equal_opset13": ({"axis": 0}, None, 2, 13),
    "num_outputs_uneven_opset18": ({"axis": 1, "num_outputs": 4}, None, 4, 18),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_split_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    """Split as BERT's SQuAD head uses it (start and end logits), and its other forms."""
    attrs, sizes, parts, opset = SPLIT_CASES[case]
    inputs = ["x"] if sizes is None else ["x", "sizes"]
    outputs = [f"y{k}" for k in range(parts)]
    node = helper.make_node("Split", inputs, outputs, **attrs)
    initializers = [] if sizes is None else [helper.make_tensor("sizes", TensorProto.INT64, [len(sizes)], sizes)]
    graph = helper.make_graph([node], "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 6])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "split.onnx"))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 6, 6)).astype(np.float32)}
    got, want = load(tmp_path / "split.onnx").run(feeds), reference(tmp_path / "split.onnx", feeds)
    assert set(got) == set(want) == set(outputs)
    for name in outputs:
        np.testing.assert_array_equal(np.asarray(got[name]), want[name])


def test_a_narrow_bert_matches_onnxruntime(tmp_path: Path) -> None:
    """BERT's operators (Gather, Erf, Softmax, the opset-11 LayerNorm, Split...) end to end."""
    from mlpi.models.bert_graph import BertConfig, write_bert

    path = write_bert(tmp_path / "bert.onnx", 3, BertConfig(layers=2, hidden=64, heads=4, intermediate=128))
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(0, 30522, (2, 384)), "input_mask": np.ones((2, 384), np.int64),
             "segment_ids": rng.integers(0, 2, (2, 384))}
    feeds["input_mask"][1, 200:] = 0
    got, want = load(path).run(feeds), reference(path, feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-4, atol=1e-4)


def test_intermediates_are_freed_after_their_last_use(tmp_path: Path) -> None:
    """A deep model's activations are dropped as soon as no later node reads them (BERT-large
    at batch 8 took 24 GB when every activation lived until the end)."""
    from mlpi.backends.onnx_to_torch import convert

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    module = convert(model)
    assert module._release == [("x",), (), ("a", "b"), ("c",)]
    import torch

    assert module(torch.tensor([1.0, -2.0]))[0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reduce_axes_match_onnxruntime_at_every_opset(op: str, opset: int, tmp_path: Path) -> None:
    """ReduceSum takes its axes as an input from opset 13, the others from 18: summing over
    every axis instead was a silent wrong answer."""
    axes_as_input = opset >= (13 if op == "ReduceSum" else 18)
    node = helper.make_node(op, ["x", "axes"] if axes_as_input else ["x"], ["y"], keepdims=0,
                            **({} if axes_as_input else {"axes": [1, -1]}))
    initializers = [helper.make_tensor("axes", TensorProto.INT64, [2], [1, -1])] if axes_as_input else []
    graph = helper.make_graph([node], "reduce", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "reduce.onnx"))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    got, want = load(tmp_path / "reduce.onnx").run(feeds), reference(tmp_path / "reduce.onnx", feeds)
    assert np.asarray(got["y"]).shape == want["y"].shape == (2,)
    np.testing.assert_allclose(np.asarray(got["y"]), want["y"], rtol=1e-5, atol=1e-6)


CONV_TRANSPOSE_CASES = {
    "3d_stride2_as_3d_unet": ({"strides": [2, 2, 2], "kernel_shape": [2, 2, 2]}, (2, 4, 3, 4, 5), (4, 3, 2, 2, 2)),
    "2d_asymmetric_pads_output_padding": ({"strides": [2, 3], "pads": [1, 0, 0, 2], "output_padding": [1, 1]},
                                          (1, 3, 5, 4), (3, 2, 3, 4)),
    "2d_dilated_grouped": ({"strides": [1, 2], "dilations": [2, 1], "group": 2, "pads": [1, 1, 1, 1]}, (2, 4, 6, 5), (4, 1, 3, 3)),
    "1d_valid": ({"strides": [3], "auto_pad": "VALID"}, (2, 2, 7), (2, 3, 4)),
}


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE_CASES))
def test_conv_transpose_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    """3D-UNet's up-sampling, and the attributes a ConvTranspose may carry besides."""
    from onnx import numpy_helper

    attrs, x_shape, w_shape = CONV_TRANSPOSE_CASES[case]
    rng = np.random.default_rng(2)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], **attrs)], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "ct.onnx"))
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    got, want = np.asarray(load(tmp_path / "ct.onnx").run(feeds)["y"]), reference(tmp_path / "ct.onnx", feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_narrow_3d_unet_matches_onnxruntime(tmp_path: Path) -> None:
    """3D-UNet's operators (Conv3d, InstanceNormalization, ConvTranspose3d, Concat) end to end:
    the same class on all but a few voxels (instance norm sums 2M voxels in another order)."""
    from mlpi.models.unet3d_graph import NARROW, write_unet3d

    path = write_unet3d(tmp_path / "unet.onnx", 0, NARROW)
    feeds = {"input": np.random.default_rng(3).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)}
    got, want = np.asarray(load(path).run(feeds)["output"]), reference(path, feeds)["output"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() > 0.999
