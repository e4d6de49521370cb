"""A 3D-UNet (KiTS19) ONNX graph with MLPerf's signature and seeded random weights.

For performance runs where MLCommons' ``3dunet_kits19_128x128x128_dynbatch.onnx``
(``vision/medical_imaging/3d-unet-kits19``, exported from PyTorch at opset 12) cannot be
downloaded: the same layers, the same operators, the same input and output and the same
weight volume, so every backend does the same work. The layers follow the MLPerf training
reference the inference file was exported from, ``image_segmentation/pytorch/model/unet3d.py``
(with ``model/layers.py``; instance norm and ReLU, its defaults). The weights are random, so
the logits mean nothing (the segmentation is wrong): performance only. They do vary with the
voxel and the input, and every class wins somewhere. Built with onnx + numpy only.

Signature (as the official file's, opset 12):

* input ``input``: float32 [N, 1, 128, 128, 128], one preprocessed CT window, the batch
  dimension dynamic (the official export names it ``batch_size``; the name has no effect);
* output ``output``: float32 [N, 3, 128, 128, 128], the logits of background, kidney, tumour.

Layers (:class:`UNetConfig`; filters (32, 64, 128, 256, 320) by default). A conv block is
Conv (kernel 3, padding 1, stride 1 or 2, no bias), InstanceNormalization (a scale and a bias
per channel, epsilon 1e-5) and Relu:

* input block: conv blocks 1 -> 32 and 32 -> 32 at 128^3;
* four downsample blocks, 32 -> 64 -> 128 -> 256 -> 320: a conv block of stride 2, then one
  of stride 1 (64^3 ... 8^3);
* the bottleneck, a downsample block 320 -> 320 (4^3);
* five upsample blocks, 320 -> 320, then 320 -> 256 -> 128 -> 64 -> 32: ConvTranspose
  (kernel 2, stride 2, with a bias; no norm, no activation), Concat (the upsampled tensor
  first) with the encoder output of the same size, the deepest first (the bottleneck's
  upsample takes the last downsample block's output, the last takes the input block's), then
  conv blocks 2*out -> out and out -> out;
* output: Conv, kernel 1, 32 -> 3, with a bias.

Weights: one ``numpy.random.default_rng(seed)`` draws every tensor in the order the layers
run. Convolutions are He-normal (std sqrt(2 / fan-in), fan-in = in channels * kernel volume;
a stride-2, kernel-2 transposed convolution's fan-in is its in channels), biases normal with
std 0.01, instance-norm scales 1 + normal(0, 0.1) and biases normal(0, 0.1). At the defaults
that is 31,190,243 parameters (:func:`parameters`), a 124,776,095-byte file.

Cost: :func:`macs` counts the multiply-accumulates of the Conv and ConvTranspose nodes for
one 128^3 window: 477,298,688,000 (477.3 GMAC, ~0.95 TFLOP) at the defaults. On two CPU cores
(AMD EPYC, default session options) one window takes ~11.4 s on onnxruntime and ~8.2 s on
OpenVINO (f32), peaking at ~2.5 GB and ~1.7 GB resident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.rundir import write_bytes_atomic

#: Bump when the graph or the weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
OPSET = 12
#: The IR version that came with opset 12 (onnx 1.7).
IR_VERSION = 7
INPUT = "input"
OUTPUT = "output"
BATCH_DIM = "N"
ROI = 128
CLASSES = 3
IN_CHANNELS = 1
NORM_EPSILON = 1e-5


@dataclass(frozen=True)
class UNetConfig:
    """The model's widths and window; the defaults are MLPerf's. ``filters`` are the channels
    of the input block and of each downsample block (the bottleneck repeats the last);
    ``roi`` is the window's edge, a multiple of 2 ** len(filters) (128 in MLPerf's signature:
    other values are for testing the builder)."""

    filters: tuple[int, ...] = (32, 64, 128, 256, 320)
    roi: int = ROI

    def __post_init__(self) -> None:
        if len(self.filters) < 2:
            raise ValueError(f"UNetConfig.filters needs at least 2 widths, not {self.filters}")
        if any(f < 1 for f in self.filters):
            raise ValueError(f"UNetConfig.filters must be positive, not {self.filters}")
        if self.roi < 1 or self.roi % 2 ** len(self.filters):
            raise ValueError(f"UNetConfig.roi ({self.roi}) must be a positive multiple of "
                             f"2 ** len(filters) = {2 ** len(self.filters)}")

    @property
    def levels(self) -> tuple[int, ...]:
        """Channels at each resolution, the bottleneck's last: filters + (filters[-1],)."""
        return (*self.filters, self.filters[-1])

    def edge(self, level: int) -> int:
        """The tensor's edge at ``level`` (0: the input's, roi)."""
        return self.roi >> level


#: Narrow widths with the same operators and signature, far cheaper to run (for tests).
NARROW = UNetConfig(filters=(4, 8, 8, 16, 16))


class _Builder:
    """Nodes and initializers, the weights drawn from one generator in the order they are added."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def normal(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> str:
        value = self.rng.standard_normal(shape, dtype=np.float32)
        value *= np.float32(std)
        if mean:
            value += np.float32(mean)
        self.weights.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_block(self, x: str, name: str, in_ch: int, out_ch: int, stride: int = 1) -> str:
        w = self.normal(f"{name}/conv/W", (out_ch, in_ch, 3, 3, 3), math.sqrt(2.0 / (in_ch * 27)))
        y = self.node("Conv", f"{name}/conv", [x, w], kernel_shape=[3, 3, 3], strides=[stride] * 3,
                      pads=[1] * 6, dilations=[1] * 3, group=1)
        scale = self.normal(f"{name}/norm/scale", (out_ch,), 0.1, mean=1.0)
        bias = self.normal(f"{name}/norm/B", (out_ch,), 0.1)
        y = self.node("InstanceNormalization", f"{name}/norm", [y, scale, bias], epsilon=NORM_EPSILON)
        return self.node("Relu", f"{name}/relu", [y])

    def upsample(self, x: str, skip: str, name: str, in_ch: int, out_ch: int) -> str:
        w = self.normal(f"{name}/upsample/W", (in_ch, out_ch, 2, 2, 2), math.sqrt(2.0 / in_ch))
        b = self.normal(f"{name}/upsample/B", (out_ch,), 0.01)
        y = self.node("ConvTranspose", f"{name}/upsample", [x, w, b], kernel_shape=[2, 2, 2], strides=[2, 2, 2],
                      pads=[0] * 6, dilations=[1] * 3, group=1)
        y = self.node("Concat", f"{name}/concat", [y, skip], axis=1)
        y = self.conv_block(y, f"{name}/conv1", 2 * out_ch, out_ch)
        return self.conv_block(y, f"{name}/conv2", out_ch, out_ch)


def build_unet3d(seed: int, config: UNetConfig = UNetConfig()) -> onnx.ModelProto:
    """The graph as a ModelProto (see the module docstring); 125 MB at the defaults."""
    b = _Builder(seed)
    ch = config.levels
    x = b.conv_block(INPUT, "input_block/conv1", IN_CHANNELS, ch[0])
    x = b.conv_block(x, "input_block/conv2", ch[0], ch[0])
    skips = [x]
    for level in range(1, len(ch)):
        name = "bottleneck" if level == len(ch) - 1 else f"downsample{level - 1}"
        x = b.conv_block(x, f"{name}/conv1", ch[level - 1], ch[level], stride=2)
        x = b.conv_block(x, f"{name}/conv2", ch[level], ch[level])
        skips.append(x)
    skips.pop()  # the bottleneck's own output is no skip
    for i, level in enumerate(range(len(ch) - 1, 0, -1)):
        x = b.upsample(x, skips.pop(), f"upsample{i}", ch[level], ch[level - 1])
    w = b.normal("output/conv/W", (CLASSES, ch[0], 1, 1, 1), math.sqrt(2.0 / ch[0]))
    bias = b.normal("output/conv/B", (CLASSES,), 0.01)
    b.nodes.append(helper.make_node("Conv", [x, w, bias], [OUTPUT], name="output/conv", kernel_shape=[1, 1, 1],
                                    strides=[1] * 3, pads=[0] * 6, dilations=[1] * 3, group=1))
    edge = config.roi
    graph = helper.make_graph(
        b.nodes,
        "3dunet_kits19_random",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH_DIM, IN_CHANNELS, edge, edge, edge])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [BATCH_DIM, CLASSES, edge, edge, edge])],
        b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
    model.ir_version = IR_VERSION
    model.doc_string = (
        f"3D-UNet KiTS19 with random weights (seed {seed}, filters {list(config.filters)}, "
        f"roi {config.roi}, graph v{GRAPH_VERSION}): performance only"
    )
    return model


def write_unet3d(path: Path, seed: int, config: UNetConfig = UNetConfig()) -> Path:
    """Build the graph and write it atomically to ``path`` (parent folders created)."""
    path = Path(path)
    write_bytes_atomic(path, build_unet3d(seed, config).SerializeToString())
    return path


def _layers(config: UNetConfig) -> list[tuple[str, int, int, int, int, int]]:
    """Every Conv and ConvTranspose as (op, in channels, out channels, kernel volume, voxels
    per sample that each weight is applied at: the output's for Conv, the input's for
    ConvTranspose; vectors of ``out channels`` that come with it: 2 for an instance norm's
    scale and bias, 1 for a bias)."""
    ch = config.levels
    vox = [config.edge(level) ** 3 for level in range(len(ch))]
    layers = [("Conv", IN_CHANNELS, ch[0], 27, vox[0], 2), ("Conv", ch[0], ch[0], 27, vox[0], 2)]
    for level in range(1, len(ch)):
        layers += [("Conv", ch[level - 1], ch[level], 27, vox[level], 2),
                   ("Conv", ch[level], ch[level], 27, vox[level], 2)]
    for level in range(len(ch) - 1, 0, -1):
        c_in, c_out = ch[level], ch[level - 1]
        layers += [("ConvTranspose", c_in, c_out, 8, vox[level], 1),
                   ("Conv", 2 * c_out, c_out, 27, vox[level - 1], 2),
                   ("Conv", c_out, c_out, 27, vox[level - 1], 2)]
    layers.append(("Conv", ch[0], CLASSES, 1, vox[0], 1))
    return layers


def macs(config: UNetConfig = UNetConfig()) -> int:
    """Multiply-accumulates of the Conv and ConvTranspose nodes for one window of ``roi``^3
    (477,298,688,000 at the defaults)."""
    return sum(c_in * c_out * k * v for _, c_in, c_out, k, v, _ in _layers(config))


def parameters(config: UNetConfig = UNetConfig()) -> int:
    """Number of float32 weights: convolutions, their biases (the transposed and the output
    ones) and the instance norms' scales and biases (31,190,243 at the defaults)."""
    return sum(c_out * (c_in * k + vectors) for _, c_in, c_out, k, _, vectors in _layers(config))
