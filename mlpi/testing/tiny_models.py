"""Tiny ONNX models built on the spot with onnx.helper (tests and benchmarks; no hub needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def matmul_model(path: Path, batch: int | str = "N", features: int = 16, classes: int = 10, seed: int = 0) -> Path:
    """x[batch, features] -> logits[batch, classes] (MatMul + Add) and label[batch] (ArgMax)."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
        ],
        [weight, bias],
    )
    return _save(graph, path)


def conv_model(path: Path, batch: int | str = "N", channels: int = 3, size: int = 32, width: int = 32, seed: int = 0) -> Path:
    """A compute-heavy little CNN: image[batch, 3, size, size] -> scores[batch, width]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((width, channels, 3, 3)) * 0.1).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal((width, width, 3, 3)) * 0.1).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "W1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, width])],
        inits,
    )
    return _save(graph, path)


def two_input_model(path: Path, batch: int | str = "N") -> Path:
    """a[batch, 4] float, b[batch, 4] int64 -> sum[batch, 4] float, prod[batch, 4] float."""
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "bf"], ["sum"]),
        helper.make_node("Mul", ["a", "bf"], ["prod"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [batch, 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, [batch, 4]),
        ],
    )
    return _save(graph, path)


def argmax_model(path: Path, batch: int | str = "N", features: int = 16) -> Path:
    """x[batch, features] -> label[batch] int64: one small output, like ResNet50's ArgMax."""
    nodes = [helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes,
        "argmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [batch])],
    )
    return _save(graph, path)


def resnet_signature_classifier(path: Path, classes: int = 1001) -> Path:
    """ResNet50's signature (``input_tensor:0`` -> ``ArgMax:0``, ``softmax_tensor:0``) with a
    transparent rule: the predicted class is the position of the largest of the first
    ``classes`` input values (flattened). Tests build images whose answer they know."""
    shape = helper.make_tensor("flat_shape", TensorProto.INT64, [2], [0, -1])
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [classes])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Reshape", ["input_tensor:0", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax_tensor:0"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["ArgMax:0"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet_signature_classifier",
        [helper.make_tensor_value_info("input_tensor:0", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info("ArgMax:0", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("softmax_tensor:0", TensorProto.FLOAT, ["N", classes]),
        ],
        [shape, starts, ends, axes],
    )
    return _save(graph, path)


def mlp_model(path: Path, batch: int | str = "N", features: int = 16, hidden: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """x[batch, features] -> probs[batch, classes]: Gemm (transB) + Relu + Gemm (alpha, beta) + Softmax."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((hidden, features)) * 0.3).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((hidden, classes)) * 0.3).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal((1, classes)).astype(np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "B2"], ["z"], alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    return _save(graph, path)


def strided_conv_model(path: Path, batch: int | str = "N", size: int = 15, seed: int = 0) -> Path:
    """image[batch, 3, size, size] -> features[batch, 8 * k * k]: a Conv with bias, strides 2 and
    asymmetric pads, then a grouped (group 2), dilated Conv, Relu and Flatten."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((8, 4, 2, 2)) * 0.2).astype(np.float32), "W2"),
    ]
    first = (size + 1 + 2 - 3) // 2 + 1  # pads top/left 1, bottom/right 2, kernel 3, stride 2
    second = first - 2  # kernel 2, dilation 2, no pads
    nodes = [
        helper.make_node("Conv", ["image", "W1", "B1"], ["c1"], strides=[2, 2], pads=[1, 1, 2, 2], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], group=2, dilations=[2, 2]),
        helper.make_node("Flatten", ["c2"], ["features"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "strided_conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8 * second * second])],
        inits,
    )
    return _save(graph, path)


BUILDERS = {"matmul": matmul_model, "conv": conv_model, "two_inputs": two_input_model, "argmax": argmax_model}


def main(argv: list[str] | None = None) -> int:
    """``python -m mlpi.testing.tiny_models KIND FILE``: write a tiny model to try mlpi with."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in BUILDERS:
        print(f"usage: python -m mlpi.testing.tiny_models {{{','.join(BUILDERS)}}} FILE.onnx", file=sys.stderr)
        return 2
    print(BUILDERS[args[0]](Path(args[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
