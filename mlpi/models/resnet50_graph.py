"""A ResNet50-v1.5 ONNX graph with MLPerf's signature and seeded random weights.

For performance runs where the official file cannot be downloaded: the same layers and
operators, the same input (``input_tensor:0`` [N,3,224,224]) and outputs (``softmax_tensor:0``
[N,1001], ``ArgMax:0`` [N]), so every backend does the same work. Batch-norm is folded into
the convolutions, as inference graphs usually have it. Built with onnx + numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.rundir import write_bytes_atomic

#: Bump when the graph or the weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
INPUT = "input_tensor:0"
SOFTMAX = "softmax_tensor:0"
ARGMAX = "ArgMax:0"
CLASSES = 1001
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, width, stride


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def conv(self, x: str, out_ch: int, in_ch: int, k: int, stride: int = 1, relu: bool = True, gain: float = 1.0) -> str:
        self.count += 1
        name = f"conv{self.count}"
        std = gain * np.sqrt(2.0 / (in_ch * k * k))
        weight = self.rng.standard_normal((out_ch, in_ch, k, k), dtype=np.float32)
        # Zero-mean filters stand in for batch-norm's centring: without it the positive mean
        # of ReLU outputs grows layer by layer and every input ends in the same class.
        weight -= weight.mean(axis=(1, 2, 3), keepdims=True)
        weight = (weight * std).astype(np.float32)
        bias = np.zeros(out_ch, dtype=np.float32)
        self.weights += [numpy_helper.from_array(weight, f"{name}/W"), numpy_helper.from_array(bias, f"{name}/B")]
        pad = k // 2
        self.nodes.append(
            helper.make_node("Conv", [x, f"{name}/W", f"{name}/B"], [name], kernel_shape=[k, k],
                             strides=[stride, stride], pads=[pad] * 4)
        )
        if not relu:
            return name
        self.nodes.append(helper.make_node("Relu", [name], [f"{name}/relu"]))
        return f"{name}/relu"

    def bottleneck(self, x: str, in_ch: int, width: int, stride: int) -> str:
        out_ch = width * 4
        y = self.conv(x, width, in_ch, 1)
        y = self.conv(y, width, width, 3, stride=stride)  # v1.5: the stride sits on the 3x3
        y = self.conv(y, out_ch, width, 1, relu=False, gain=0.2)
        shortcut = x if (stride == 1 and in_ch == out_ch) else self.conv(x, out_ch, in_ch, 1, stride=stride, relu=False)
        self.count += 1
        added = f"add{self.count}"
        self.nodes.append(helper.make_node("Add", [y, shortcut], [added]))
        self.nodes.append(helper.make_node("Relu", [added], [f"{added}/relu"]))
        return f"{added}/relu"


def build_resnet50(seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv(INPUT, 64, 3, 7, stride=2, gain=1 / 64)  # inputs are mean-subtracted pixels, ~±128
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, channels = "pool1", 64
    for blocks, width, stride in STAGES:
        for i in range(blocks):
            x = b.bottleneck(x, channels, width, stride if i == 0 else 1)
            channels = width * 4
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    fc_w = (b.rng.standard_normal((channels, CLASSES), dtype=np.float32) * np.sqrt(1.0 / channels) * 50).astype(np.float32)
    b.weights += [numpy_helper.from_array(fc_w, "fc/W"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc/B")]
    b.nodes.append(helper.make_node("Gemm", ["features", "fc/W", "fc/B"], ["logits"]))
    b.nodes.append(helper.make_node("Softmax", ["logits"], [SOFTMAX], axis=1))
    b.nodes.append(helper.make_node("ArgMax", ["logits"], [ARGMAX], axis=1, keepdims=0))
    graph = helper.make_graph(
        b.nodes,
        "resnet50_v1.5_random",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info(ARGMAX, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(SOFTMAX, TensorProto.FLOAT, ["N", CLASSES]),
        ],
        b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlpi")
    model.ir_version = 8
    model.doc_string = f"ResNet50-v1.5 with random weights (seed {seed}, graph v{GRAPH_VERSION}): performance only"
    return model


def write_resnet50(path: Path, seed: int = 0) -> Path:
    """Build the graph and write it atomically to ``path``."""
    model = build_resnet50(seed)
    write_bytes_atomic(path, model.SerializeToString())
    return path
