"""The ONNX-to-torch converter's ``com.microsoft`` int8 operators against onnxruntime: whole
models as onnxruntime's own ``quantize_static`` writes them in its QOperator format (QLinearAdd,
QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearConcat, QLinearAveragePool,
QLinearGlobalAveragePool, QGemm), and the operators one by one.

Tolerance: quantised tensors equal onnxruntime's but where a value falls exactly between two
steps: onnxruntime's QLinearAdd rounds those in fixed point or with a fused multiply-add,
depending on the CPU, and may land on the other step (seen: 2 of 8,192 values); a layer with
a finer scale after it makes that step two of its own. So at most 0.1% of a quantised tensor
may be off, by at most two steps; float outputs within two of their own quantisation steps.
The operators alone are compared exactly (float outputs to float32 rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from mlpi.backends.onnx_to_torch import convert

MS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _float_net(path: Path) -> Path:
    """x [N, 3, 16, 16] -> y [N, 10]: every layer quantize_static has a QOperator for."""
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a1"]),
        helper.make_node("Mul", ["a1", "c1"], ["m1"]),
        helper.make_node("Sigmoid", ["m1"], ["s1"]),
        helper.make_node("LeakyRelu", ["a1"], ["l1"], alpha=0.1),
        helper.make_node("Concat", ["s1", "l1"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["y"], transB=1),
    ]
    weights = [weight("w1", (8, 3, 3, 3)), weight("b1", (8,)), weight("w2", (8, 8, 3, 3), 0.1), weight("b2", (8,)),
               weight("wg", (10, 16)), weight("bg", (10,))]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module", params=["uint8_per_tensor", "int8_per_channel"])
def qoperator_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    base = tmp_path_factory.mktemp("qop")
    source = _float_net(base / "net.onnx")
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    signed = request.param.startswith("int8")
    target = base / f"{request.param}.onnx"
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=signed)
    model = onnx.load(str(target))
    ops = {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain == "com.microsoft"}
    assert ops == {f"com.microsoft::{op}" for op in ("QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                                                     "QLinearConcat", "QLinearAveragePool",
                                                     "QLinearGlobalAveragePool", "QGemm")}
    return model


def _every_value(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every node's output a graph output too."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    declared = {o.name for o in out.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in declared:
                out.graph.output.append(helper.make_empty_tensor_value_info(name))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_qoperator_model_matches_onnxruntime(qoperator_model: onnx.ModelProto, seed: int) -> None:
    model = _every_value(qoperator_model)
    x = np.random.default_rng(seed).standard_normal((4, 3, 16, 16)).astype(np.float32)
    names = [o.name for o in model.graph.output]
    want = dict(zip(names, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                    .run(None, {"x": x})))
    module = convert(model)
    with torch.inference_mode():
        got = dict(zip(module.output_names, (t.numpy() for t in module(torch.from_numpy(x)))))
    for name in names:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind in "iu":
            apart = np.abs(g.astype(np.int64) - w.astype(np.int64))
            assert apart.max() <= 2 and (apart > 0).mean() <= 1e-3, (name, apart.max(), (apart > 0).sum())
    step = 2 * float(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "y_scale")))
    np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=2 * step)


def _single(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray], names: list[str],
            **attrs: object) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    node = helper.make_node(op, names, ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info("y")], [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=MS)
    model.ir_version = 8
    return model, inputs


def _same(model: onnx.ModelProto, feeds: dict[str, np.ndarray], atol: float = 0.0) -> np.ndarray:
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.inference_mode():
        (got,) = convert(model)(*(torch.from_numpy(v) for v in feeds.values()))
    got = got.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)
    return got


RNG = np.random.default_rng(3)


@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("scales", ["per_tensor", "per_column"])
def test_qgemm(scales: str, output: str) -> None:
    a = RNG.integers(0, 256, (5, 24)).astype(np.uint8)
    b = RNG.integers(-127, 128, (7, 24)).astype(np.int8)  # transB: [N, K]
    consts = {
        "a_scale": np.array(0.02, np.float32), "a_zero": np.array(120, np.uint8), "b": b,
        "b_scale": (0.01 * np.arange(1, 8)).astype(np.float32) if scales == "per_column" else np.array(0.01, np.float32),
        "b_zero": np.zeros(7 if scales == "per_column" else (), np.int8),
        "c": RNG.integers(-500, 500, 7).astype(np.int32),
    }
    names = ["a", "a_scale", "a_zero", "b", "b_scale", "b_zero", "c"]
    if output == "uint8":
        consts |= {"y_scale": np.array(0.5, np.float32), "y_zero": np.array(128, np.uint8)}
        names += ["y_scale", "y_zero"]
    got = _same(*_single("QGemm", {"a": a}, consts, names, transB=1, alpha=0.75), atol=1e-5)
    if output == "float":  # a known answer besides onnxruntime's
        acc = (a.astype(np.int64) - 120) @ b.T.astype(np.int64) + consts["c"]
        np.testing.assert_allclose(got, acc * 0.02 * consts["b_scale"] * 0.75, rtol=1e-5)


def test_qlinear_concat_requantises_each_input() -> None:
    x1 = RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    x2 = RNG.integers(0, 256, (2, 5, 4)).astype(np.uint8)
    consts = {"ys": np.array(0.05, np.float32), "yz": np.array(100, np.uint8),
              "s1": np.array(0.02, np.float32), "z1": np.array(128, np.uint8),
              "s2": np.array(0.09, np.float32), "z2": np.array(10, np.uint8)}
    _same(*_single("QLinearConcat", {"x1": x1, "x2": x2}, consts, ["ys", "yz", "x1", "s1", "z1", "x2", "s2", "z2"], axis=1))


@pytest.mark.parametrize("op", ["QLinearAveragePool", "QLinearGlobalAveragePool"])
def test_pooling_with_channels_last(op: str) -> None:
    x = RNG.integers(-128, 128, (2, 6, 6, 3)).astype(np.int8)
    consts = {"xs": np.array(0.03, np.float32), "xz": np.array(-5, np.int8),
              "ys": np.array(0.02, np.float32), "yz": np.array(3, np.int8)}
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]} if op == "QLinearAveragePool" else {}
    _same(*_single(op, {"x": x}, consts, ["x", "xs", "xz", "ys", "yz"], channels_last=1, **attrs))


def test_dynamic_quantize_matmul_and_matmul_integer_to_float() -> None:
    a = RNG.standard_normal((3, 4, 32)).astype(np.float32)
    b = RNG.integers(-127, 128, (32, 6)).astype(np.int8)
    consts = {"b": b, "b_scale": np.array(0.01, np.float32), "b_zero": np.array(0, np.int8),
              "bias": RNG.standard_normal(6).astype(np.float32)}
    _same(*_single("DynamicQuantizeMatMul", {"a": a}, consts, ["a", "b", "b_scale", "b_zero", "bias"]), atol=1e-5)
    qa = RNG.integers(0, 256, (3, 4, 32)).astype(np.uint8)
    consts = {"b": b, "a_scale": np.array(0.03, np.float32), "b_scale": np.linspace(0.01, 0.02, 6).astype(np.float32),
              "a_zero": np.array(131, np.uint8), "bias": RNG.standard_normal(6).astype(np.float32)}
    _same(*_single("MatMulIntegerToFloat", {"qa": qa}, consts, ["qa", "b", "a_scale", "b_scale", "a_zero", "", "bias"]),
          atol=1e-5)
