"""PyTorch backend: the ONNX-to-torch conversion against ONNX Runtime, precisions, options,
errors, and the conformance kit. Skipped as a whole where torch is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")  # the reference the values are checked against

import onnx
from onnx import TensorProto, helper

from mlpi.backends.torch_backend import TorchBackend, TorchOptions
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import ModelError, UsageError
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.testing import tiny_models
from mlpi.testing.conformance import run_checks

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
        [helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5),
         helper.make_node("Relu", ["y"], ["z"])], "binarizer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "binarizer.onnx"))
    with pytest.raises(ModelError, match=r"does not support operator ai\.onnx\.ml::Binarizer \(hint: use the onnxruntime backend"):
        load(tmp_path / "binarizer.onnx")


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
#: 7 in 4 parts is 2, 2, 2, 1 under every onnxruntime; 6 in 4 would end in an empty part,
#: which onnxruntime 1.30 refuses and 1.32 returns.
SPLIT_SHAPES = {"num_outputs_uneven_opset18": (2, 7, 6)}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_split_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    """Split as BERT's SQuAD head uses it (start and end logits), and its other forms."""
    attrs, sizes, parts, opset = SPLIT_CASES[case]
    inputs = ["x"] if sizes is None else ["x", "sizes"]
    outputs = [f"y{k}" for k in range(parts)]
    node = helper.make_node("Split", inputs, outputs, **attrs)
    initializers = [] if sizes is None else [helper.make_tensor("sizes", TensorProto.INT64, [len(sizes)], sizes)]
    shape = SPLIT_SHAPES.get(case, (2, 6, 6))
    graph = helper.make_graph([node], "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "split.onnx"))
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
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


# --------------------------------------------------------------------------- operator semantics


def _graph_model(path: Path, nodes: list, feeds: dict[str, np.ndarray], outputs: list[str], opset: int,
                 consts: dict[str, np.ndarray] | None = None) -> Path:
    from onnx import numpy_helper

    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in (consts or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _assert_same(model: Path, feeds: dict[str, np.ndarray], exact: bool = False) -> dict[str, np.ndarray]:
    """The pytorch session's answers have onnxruntime's dtypes, shapes and values; onnxruntime's."""
    got, want = load(model).run(feeds), reference(model, feeds)
    for name, expected in want.items():
        value = np.asarray(got[name])
        assert (value.dtype, value.shape) == (expected.dtype, expected.shape), name
        if exact or expected.dtype.kind != "f":
            np.testing.assert_array_equal(value, expected, err_msg=name)
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    return want


ATTENTION_CASES = {
    # grouped-query, causal on a past cache (the mask's diagonal moves right by the past length),
    # a boolean mask that leaves one query row nothing to attend (zeros, not NaN), the scores asked for
    "gqa_causal_past_bool_mask": ({"is_causal": 1, "qk_matmul_output_mode": 3}, (2, 6, 3, 4), (2, 2, 5, 4), 7, True),
    # 3-d inputs with heads packed, softcap and a float mask
    "packed_softcap_short_float_mask": ({"q_num_heads": 4, "kv_num_heads": 2, "softcap": 2.0, "scale": 0.3},
                                        (2, 3, 16), (2, 5, 8), 0, False),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    attrs, q_shape, kv_shape, past, bool_mask = ATTENTION_CASES[case]
    rng = np.random.default_rng(4)
    feeds = {"Q": rng.standard_normal(q_shape).astype(np.float32), "K": rng.standard_normal(kv_shape).astype(np.float32),
             "V": rng.standard_normal(kv_shape).astype(np.float32)}
    sq, sk = q_shape[-2] if len(q_shape) == 4 else q_shape[1], kv_shape[-2] if len(kv_shape) == 4 else kv_shape[1]
    inputs, outputs = ["Q", "K", "V", "mask"], ["Y"]
    if bool_mask:
        mask = rng.random((sq, past + sk)) > 0.3
        mask[1, :] = False  # the second query attends nothing
        feeds["mask"] = mask
    else:
        feeds["mask"] = rng.standard_normal((sq, sk)).astype(np.float32)
    if past:
        feeds["past_key"] = rng.standard_normal((*kv_shape[:2], past, kv_shape[3])).astype(np.float32)
        feeds["past_value"] = rng.standard_normal((*kv_shape[:2], past, kv_shape[3])).astype(np.float32)
        inputs += ["past_key", "past_value"]
        outputs += ["present_key", "present_value", "qk"]
    node = helper.make_node("Attention", inputs, outputs, **attrs)
    model = _graph_model(tmp_path / "attention.onnx", [node], feeds, outputs, 23)
    want = _assert_same(model, feeds)
    if bool_mask:
        assert not want["Y"][:, :, 1].any() and not np.isnan(want["Y"]).any()


def test_attention_refuses_masked_scores_whose_value_runtimes_disagree_on(tmp_path: Path) -> None:
    """qk_matmul_output_mode=2 with masked positions: the spec writes -inf there, onnxruntime
    the lowest float; a refusal, not one of the two."""
    rng = np.random.default_rng(5)
    feeds = {k: rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for k in ("Q", "K", "V")}
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y", "", "", "qk"], is_causal=1, qk_matmul_output_mode=2)
    session = load(_graph_model(tmp_path / "attention.onnx", [node], feeds, ["Y", "qk"], 23))
    with pytest.raises(ModelError, match="qk_matmul_output_mode=2 with masked positions"):
        session.run(feeds)


RESIZE_CASES = {
    "linear_antialias_down": ({"mode": "linear", "antialias": 1}, (1, 2, 9, 7), [1, 1, 0.45, 0.6]),
    "cubic_exclude_outside_up": ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, (1, 1, 4, 5), [1, 1, 1.7, 2.3]),
    "linear_crop_and_resize": ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                                "extrapolation_value": 7.0}, (1, 1, 6, 6), [1, 1, 1.5, 0.8]),
    "linear_half_pixel_symmetric": ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
                                    (2, 3, 5, 4), [1, 1, 0.7, 1.6]),
}


@pytest.mark.parametrize("case", sorted(RESIZE_CASES))
def test_resize_interpolation_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    """Linear and cubic as weight matrices per axis: antialias, exclude_outside, crop boxes."""
    attrs, shape, scales = RESIZE_CASES[case]
    feeds = {"x": np.random.default_rng(6).standard_normal(shape).astype(np.float32)}
    consts = {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], np.float32), "scales": np.array(scales, np.float32)}
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **attrs)
    want = _assert_same(_graph_model(tmp_path / "resize.onnx", [node], feeds, ["y"], 19, consts), feeds)
    if "extrapolation_value" in attrs:
        assert (want["y"] == 7.0).any()  # some outputs fall outside the crop box


def test_resize_refuses_interpolating_integers(tmp_path: Path) -> None:
    feeds = {"x": np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)}
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    model = _graph_model(tmp_path / "resize.onnx", [node], feeds, ["y"], 19, {"scales": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(ModelError, match="mode=linear on torch.uint8 input, which is not supported"):
        load(model).run(feeds)


def test_quantization_matches_onnxruntime_exactly(tmp_path: Path) -> None:
    """Per-axis and blocked scales, halves rounded to even, saturation, and the integer and
    QLinear products requantised as onnxruntime does: every byte equal."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 6)) * 40).astype(np.float32)
    x[0, :3] = [2.5, -3.5, 1000.0]  # halves to even, and saturation
    feeds = {"x": x, "a": rng.integers(0, 255, (3, 4), dtype=np.uint8)}
    consts = {"axis_scale": np.array([0.5, 1.0, 2.0, 0.25], np.float32), "axis_zero": np.array([3, -4, 0, 7], np.int8),
              "block_scale": rng.uniform(0.1, 1.0, (4, 2)).astype(np.float32),
              "block_zero": rng.integers(-5, 5, (4, 2)).astype(np.int8),
              "b": rng.integers(-128, 127, (4, 5), dtype=np.int8), "a_zero": np.array(128, np.uint8),
              "a_scale": np.array(0.02, np.float32), "b_scale": np.array(0.05, np.float32),
              "b_zero": np.array(3, np.int8), "y_scale": np.array(0.3, np.float32), "y_zero": np.array(9, np.uint8),
              "bu": rng.integers(0, 255, (4, 5), dtype=np.uint8), "bu_zero": np.array(120, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "axis_scale", "axis_zero"], ["q_axis"], axis=0),
        helper.make_node("DequantizeLinear", ["q_axis", "axis_scale", "axis_zero"], ["dq_axis"], axis=0),
        helper.make_node("QuantizeLinear", ["x", "block_scale", "block_zero"], ["q_block"], axis=1, block_size=3),
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q_dyn", "s_dyn", "z_dyn"]),
        helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["mm_int"]),
        helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zero", "bu", "b_scale", "bu_zero", "y_scale", "y_zero"],
                         ["q_mm"]),
    ]
    outputs = ["q_axis", "dq_axis", "q_block", "q_dyn", "s_dyn", "z_dyn", "mm_int", "q_mm"]
    want = _assert_same(_graph_model(tmp_path / "quant.onnx", nodes, feeds, outputs, 21, consts), feeds, exact=True)
    assert want["q_axis"][0, 2] == 127 and want["q_axis"][0, 0] == 8  # 2.5 / 0.5 = 5 -> 5 + 3


def test_unsigned_arithmetic_past_the_signed_range_matches_onnxruntime(tmp_path: Path) -> None:
    """torch has no uint32/uint64 kernels: values above 2**31 and 2**63 must still compare,
    divide, wrap and shift as unsigned."""
    feeds = {"a": np.array([3, 2**63 + 5, 2**64 - 1, 7], np.uint64), "b": np.array([2**63, 3, 2, 2**64 - 1], np.uint64),
             "c": np.array([2**31 + 1, 5, 2**32 - 1], np.uint32), "d": np.array([2, 2**31, 2**32 - 2], np.uint32)}
    nodes = [helper.make_node(op, [x, y], [f"{op}_{x}"]) for x, y in (("a", "b"), ("c", "d"))
             for op in ("Add", "Sub", "Mul", "Div", "Mod", "Less", "GreaterOrEqual", "Max", "Min")]
    nodes += [helper.make_node("BitShift", ["c", "shift"], ["shifted"], direction="RIGHT"),
              helper.make_node("BitwiseNot", ["a"], ["not_a"])]
    outputs = [node.output[0] for node in nodes]
    consts = {"shift": np.array([31, 1, 33], np.uint32)}
    _assert_same(_graph_model(tmp_path / "unsigned.onnx", nodes, feeds, outputs, 18, consts), feeds, exact=True)


def test_if_and_loop_read_outer_values_and_keep_scalars_scalar(tmp_path: Path) -> None:
    """Subgraphs read the outer graph's values by name; a 0-d input stays 0-d through the session."""
    then_graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"])], "then", [],
                                   [helper.make_empty_tensor_value_info("t")])
    else_graph = helper.make_graph([helper.make_node("Sub", ["x", "k"], ["e"])], "else", [],
                                   [helper.make_empty_tensor_value_info("e")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         helper.make_node("Mul", ["acc_out", "k"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [])],
    )
    nodes = [helper.make_node("If", ["flag"], ["chosen"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Loop", ["trips", "", "k"], ["final", "scanned"], body=body)]
    for flag in (True, False):
        feeds = {"flag": np.array(flag), "x": np.arange(3, dtype=np.float32), "k": np.array(1.5, np.float32),
                 "step": np.array(0.5, np.float32), "trips": np.array(4, np.int64)}
        model = _graph_model(tmp_path / "control.onnx", nodes, feeds, ["chosen", "final", "scanned"], 18)
        want = _assert_same(model, feeds)
        assert want["final"].shape == () and want["scanned"].shape == (4,)
