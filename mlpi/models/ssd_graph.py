"""Seeded random-weights SSD graphs with the official signatures, for ``--weights random``.

Built with onnx/numpy like the ResNet50 and RetinaNet ones (the layer helper is
RetinaNet's), with the same kind of in-graph post-processing the official files have, so
every backend meets the operators the real models have: decode, NonMaxSuppression per
class, and the top detections gathered into fixed-size outputs.

- :func:`build_ssd_mobilenet`: MobileNet-v1 (depthwise-separable convolutions, 300x300)
  and SSD's four extra layers; six feature maps (19, 10, 5, 3, 2, 1) with 3 then 6 anchors:
  1,917 boxes, 91 sigmoid classes (0 = background). The TensorFlow signature: input
  ``image_tensor:0`` uint8 NHWC ``[N,300,300,3]`` (the graph scales it to [-1, 1]);
  outputs ``num_detections:0`` ``[N]``, ``detection_boxes:0`` ``[N,100,4]`` (ymin, xmin,
  ymax, xmax in [0, 1]), ``detection_scores:0`` ``[N,100]``, ``detection_classes:0``
  ``[N,100]`` (COCO ids 1..90 as float). Box coder: TensorFlow's (scales 10, 10, 5, 5); NMS
  per class with IoU 0.6, 100 per class, the best 100 kept. About 1.2 GMAC per image.
- :func:`build_ssd_resnet34`: ResNet34 up to its third stage at stride 8 (150x150 for a
  1200x1200 image), then SSD's extra layers; six feature maps (50, 25, 13, 7, 3, 3) with
  4, 6, 6, 6, 4, 4 anchors: 15,130 boxes, 81 softmax classes. Input ``image`` float32
  ``[1,3,1200,1200]``; outputs ``bboxes`` ``[1,200,4]`` (xmin, ymin, xmax, ymax in
  [0, 1]), ``labels`` ``[1,200]`` int64 (1..80), ``scores`` ``[1,200]``. Box coder: SSD's
  (0.1, 0.2); NMS per class with IoU 0.5 above score 0.05, the best 200 kept.

"The best K" is taken over every (class, box) pair NMS kept, by scattering the kept scores
into a zero ``[N, classes, boxes]`` tensor and taking TopK over it per image, so the graph
needs no loop and keeps a dynamic batch; the slots past the last detection have score 0
(``num_detections`` counts the others).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from mlpi.core.results.rundir import write_bytes_atomic
from mlpi.models.retinanet_graph import _Builder, _channels

#: Bump when the graphs change, so cached random graphs are rebuilt.
GRAPH_VERSION = 1
#: ReduceSum takes its axes as an attribute and GatherND has batch_dims from opset 12.
OPSET = 12

MOBILENET_SIZE = 300
MOBILENET_INPUT = "image_tensor:0"
MOBILENET_OUTPUTS = ("num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0")
MOBILENET_CLASSES = 91
MOBILENET_DETECTIONS = 100
#: MobileNet-v1's depthwise-separable blocks: (pointwise channels, stride).
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                    (512, 1), (512, 1), (1024, 2), (1024, 1))
#: SSD's extra layers after MobileNet: (1x1 channels, 3x3/2 channels).
MOBILENET_EXTRAS = ((256, 512), (128, 256), (128, 256), (64, 128))

RESNET34_SIZE = 1200
RESNET34_INPUT = "image"
RESNET34_OUTPUTS = ("bboxes", "labels", "scores")
RESNET34_CLASSES = 81
RESNET34_DETECTIONS = 200
RESNET34_ANCHORS = (4, 6, 6, 6, 4, 4)
#: ResNet34's first three stages (blocks, channels, stride); the third keeps stride 1, as SSD's does.
RESNET34_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 1))
#: SSD-ResNet34's extra layers: (1x1 channels, 3x3 channels, stride, padding) -> 50, 25, 13, 7, 3, 3.
RESNET34_EXTRAS = ((256, 512, 3, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 2, 0), (128, 256, 1, 1))

#: Gains of the class-logit convolutions. SSD-ResNet34's softmax over 81 classes gives every
#: class about 1/81 on near-zero logits, below its 0.05 threshold: at 4.0 a noise image gives
#: every one of the 200 slots a detection above 0.05 and tens above 0.5 (onnxruntime, seed 0,
#: width 0.25), so NMS and the 0.5 cut of the response both have work, as on the real model.
_MOBILENET_CONF_GAIN = 0.6
_RESNET34_CONF_GAIN = 4.0

def _f32(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _i64(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _grid_anchors(sizes: tuple[int, ...], counts: tuple[int, ...], xy_order: bool) -> np.ndarray:
    """Normalised anchors, one set per feature-map cell, in (row, column, anchor) order:
    (cy, cx, h, w) for TensorFlow's coder, (cx, cy, w, h) for SSD's."""
    out = []
    scales = np.linspace(0.2, 0.95, len(sizes) + 1)
    for level, (grid, count) in enumerate(zip(sizes, counts)):
        scale, following = scales[level], scales[level + 1]
        shapes = [(scale, scale), (math.sqrt(scale * following), math.sqrt(scale * following))]
        for ratio in (2.0, 0.5, 3.0, 1 / 3):
            shapes.append((scale / math.sqrt(ratio), scale * math.sqrt(ratio)))  # (h, w)
        shapes = shapes[:count]
        centres = (np.arange(grid, dtype=np.float64) + 0.5) / grid
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        for y, x in zip(cy.reshape(-1), cx.reshape(-1)):
            for h, w in shapes:
                out.append((x, y, w, h) if xy_order else (y, x, h, w))
    return np.asarray(out, dtype=np.float32)


def _heads(b: _Builder, features: list[str], counts: tuple[int, ...], classes: int, k: int, conf_gain: float) -> tuple[str, str]:
    """Class logits ``[N, boxes, classes]`` and box codes ``[N, boxes, 4]`` of every feature map."""
    logits, codes = [], []
    for level, (feature, count) in enumerate(zip(features, counts)):
        conf = b.conv(feature, count * classes, k, relu=False, gain=conf_gain, tag="head")
        loc = b.conv(feature, count * 4, k, relu=False, gain=0.15, tag="head")
        for out, tensor, size in ((logits, conf, classes), (codes, loc, 4)):
            nhwc = b.node("Transpose", [tensor], perm=[0, 2, 3, 1])
            shape = b.const(f"head/shape{size}_{level}", _i64([0, -1, size]))
            out.append(b.node("Reshape", [nhwc, shape]))
    return b.node("Concat", logits, axis=1), b.node("Concat", codes, axis=1)


def _top_detections(b: _Builder, boxes: str, scores: str, classes: int, anchors: int, keep: int,
                    iou: float, threshold: float, per_class: int) -> tuple[str, str, str, str]:
    """NMS per class of ``boxes [N, anchors, 4]`` by ``scores [N, classes, anchors]``, then the
    best ``keep`` kept (class, box) pairs per image: (boxes, scores, class index, count)."""
    b.const("post/per_class", _i64([per_class]))
    b.const("post/iou", _f32([iou]))
    b.const("post/threshold", _f32([threshold]))
    selected = b.node("NonMaxSuppression", [boxes, scores, "post/per_class", "post/iou", "post/threshold"])
    kept_scores = b.node("GatherND", [scores, selected])
    dense = b.node("ScatterND", [b.node("Mul", [scores, "post/zero"]), selected, kept_scores])
    b.const("post/flat", _i64([0, -1]))
    flat = b.node("Reshape", [dense, "post/flat"])
    b.const("post/keep", _i64([keep]))
    top_scores, top_index = "post/top_scores", "post/top_index"
    b.node("TopK", [flat, "post/keep"], [top_scores, top_index], axis=1, largest=1, sorted=1)
    b.const("post/anchors", _i64(anchors))
    class_index = b.node("Div", [top_index, "post/anchors"])
    box_index = b.node("Sub", [top_index, b.node("Mul", [class_index, "post/anchors"])])
    b.const("post/last", _i64([0, keep, 1]))
    picked = b.node("GatherND", [boxes, b.node("Reshape", [box_index, "post/last"])], batch_dims=1)
    found = b.node("Cast", [b.node("Greater", [top_scores, "post/zero"])], to=TensorProto.FLOAT)
    count = b.node("ReduceSum", [found], axes=[1], keepdims=0)
    return picked, top_scores, class_index, count


def _mobilenet(seed: int, width: float, materialize: bool) -> _Builder:
    b = _Builder(seed, materialize)
    size = MOBILENET_SIZE
    b.const("post/zero", _f32(0))
    b.const("pre/half", _f32(127.5))
    # uint8 NHWC -> float NCHW in [-1, 1], as TensorFlow's SSD graphs do first
    x = b.node("Cast", [MOBILENET_INPUT], to=TensorProto.FLOAT)
    x = b.node("Div", [b.node("Sub", [x, "pre/half"]), "pre/half"])
    x = b.node("Transpose", [x], perm=[0, 3, 1, 2])
    b.shapes[x] = (3, size, size)
    x = b.conv(x, _channels(32, width), 3, stride=2)
    features = []
    for number, (channels, stride) in enumerate(MOBILENET_BLOCKS):
        in_ch = b.shapes[x][0]
        x = b.conv(x, in_ch, 3, stride=stride, groups=in_ch)
        x = b.conv(x, _channels(channels, width), 1)
        if number in (10, 12):  # Conv2d_11_pointwise (19x19) and Conv2d_13_pointwise (10x10)
            features.append(x)
    for inner, outer in MOBILENET_EXTRAS:
        x = b.conv(x, _channels(inner, width), 1, tag="extras")
        x = b.conv(x, _channels(outer, width), 3, stride=2, tag="extras")
        features.append(x)
    counts = (3, 6, 6, 6, 6, 6)
    logits, codes = _heads(b, features, counts, MOBILENET_CLASSES, 1, _MOBILENET_CONF_GAIN)
    anchors = _grid_anchors(tuple(b.shapes[f][1] for f in features), counts, xy_order=False)
    # TensorFlow's FasterRcnnBoxCoder: (ty, tx, th, tw) / (10, 10, 5, 5) about (cy, cx, h, w)
    b.const("post/anchor_centre", anchors[None, :, :2])
    b.const("post/anchor_size", anchors[None, :, 2:])
    b.const("post/centre_scale", _f32([10.0, 10.0]))
    b.const("post/size_scale", _f32([5.0, 5.0]))
    for name, value in (("post/0", [0]), ("post/2", [2]), ("post/4", [4]), ("post/axis2", [2]), ("post/1", [1]), ("post/91", [MOBILENET_CLASSES])):
        b.const(name, _i64(value))
    t_c = b.node("Slice", [codes, "post/0", "post/2", "post/axis2"])
    t_s = b.node("Slice", [codes, "post/2", "post/4", "post/axis2"])
    centre = b.node("Add", [b.node("Mul", [b.node("Div", [t_c, "post/centre_scale"]), "post/anchor_size"]), "post/anchor_centre"])
    extent = b.node("Mul", [b.node("Exp", [b.node("Div", [t_s, "post/size_scale"])]), "post/anchor_size"])
    b.const("post/halve", _f32(0.5))
    half = b.node("Mul", [extent, "post/halve"])
    b.const("post/one", _f32(1))
    boxes = b.node("Clip", [b.node("Concat", [b.node("Sub", [centre, half]), b.node("Add", [centre, half])], axis=2),
                            "post/zero", "post/one"])
    scores = b.node("Sigmoid", [b.node("Slice", [logits, "post/1", "post/91", "post/axis2"])])  # drop background
    scores = b.node("Transpose", [scores], perm=[0, 2, 1])
    picked, top_scores, class_index, count = _top_detections(
        b, boxes, scores, MOBILENET_CLASSES - 1, len(anchors), MOBILENET_DETECTIONS, 0.6, 1e-8, MOBILENET_DETECTIONS
    )
    b.node("Identity", [count], [MOBILENET_OUTPUTS[0]])
    b.node("Identity", [picked], [MOBILENET_OUTPUTS[1]])
    b.node("Identity", [top_scores], [MOBILENET_OUTPUTS[2]])
    ids = b.node("Add", [b.node("Cast", [class_index], to=TensorProto.FLOAT), "post/one"])  # class k -> id k + 1
    b.node("Identity", [ids], [MOBILENET_OUTPUTS[3]])
    return b


def _basic_block(b: _Builder, x: str, channels: int, stride: int) -> str:
    in_ch = b.shapes[x][0]
    y = b.conv(x, channels, 3, stride=stride)
    y = b.conv(y, channels, 3, relu=False, gain=0.3)
    shortcut = x if (stride == 1 and in_ch == channels) else b.conv(x, channels, 1, stride=stride, relu=False)
    return b.relu(b.add(y, shortcut))


def _resnet34(seed: int, width: float, image_size: int, materialize: bool) -> _Builder:
    b = _Builder(seed, materialize)
    b.const("post/zero", _f32(0))
    b.shapes[RESNET34_INPUT] = (3, image_size, image_size)
    x = b.conv(RESNET34_INPUT, _channels(64, width), 7, stride=2, gain=0.5)
    c, h, w = b.shapes[x]
    pooled = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.shapes[pooled] = (c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    x = pooled
    for blocks, channels, stride in RESNET34_STAGES:
        for i in range(blocks):
            x = _basic_block(b, x, _channels(channels, width), stride if i == 0 else 1)
    features = []
    for inner, outer, stride, pad in RESNET34_EXTRAS:
        x = b.conv(x, _channels(inner, width), 1, tag="extras")
        x = b.conv(x, _channels(outer, width), 3, stride=stride, pad=pad, tag="extras")
        features.append(x)
    logits, codes = _heads(b, features, RESNET34_ANCHORS, RESNET34_CLASSES, 3, _RESNET34_CONF_GAIN)
    anchors = _grid_anchors(tuple(b.shapes[f][1] for f in features), RESNET34_ANCHORS, xy_order=True)
    # SSD's coder: (dx, dy) * 0.1 * (w, h) + (cx, cy); (w, h) * exp((dw, dh) * 0.2)
    b.const("post/anchor_centre", anchors[None, :, :2])
    b.const("post/anchor_size", anchors[None, :, 2:])
    b.const("post/scale_xy", _f32(0.1))
    b.const("post/scale_wh", _f32(0.2))
    b.const("post/halve", _f32(0.5))
    for name, value in (("post/0", [0]), ("post/2", [2]), ("post/4", [4]), ("post/axis2", [2]), ("post/1", [1]), ("post/81", [RESNET34_CLASSES])):
        b.const(name, _i64(value))
    d_c = b.node("Slice", [codes, "post/0", "post/2", "post/axis2"])
    d_s = b.node("Slice", [codes, "post/2", "post/4", "post/axis2"])
    centre = b.node("Add", [b.node("Mul", [b.node("Mul", [d_c, "post/scale_xy"]), "post/anchor_size"]), "post/anchor_centre"])
    extent = b.node("Mul", [b.node("Exp", [b.node("Mul", [d_s, "post/scale_wh"])]), "post/anchor_size"])
    half = b.node("Mul", [extent, "post/halve"])
    boxes = b.node("Concat", [b.node("Sub", [centre, half]), b.node("Add", [centre, half])], axis=2)  # xyxy
    probabilities = b.node("Softmax", [logits], axis=2)
    scores = b.node("Slice", [probabilities, "post/1", "post/81", "post/axis2"])  # drop background
    scores = b.node("Transpose", [scores], perm=[0, 2, 1])
    # NMS reads corners as (y1, x1, y2, x2); IoU is the same for (x1, y1, x2, y2).
    picked, top_scores, class_index, _ = _top_detections(
        b, boxes, scores, RESNET34_CLASSES - 1, len(anchors), RESNET34_DETECTIONS, 0.5, 0.05, RESNET34_DETECTIONS
    )
    b.node("Identity", [picked], [RESNET34_OUTPUTS[0]])
    b.const("post/one64", _i64(1))
    b.node("Add", [class_index, "post/one64"], [RESNET34_OUTPUTS[1]])  # labels 1..80
    b.node("Identity", [top_scores], [RESNET34_OUTPUTS[2]])
    return b


def _model(b: _Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
    model.ir_version = 8
    model.doc_string = doc
    return model


def build_ssd_mobilenet(seed: int = 0, *, width: float = 1.0) -> onnx.ModelProto:
    b = _mobilenet(seed, width, materialize=True)
    n, d = "N", MOBILENET_DETECTIONS
    return _model(
        b, "ssd_mobilenet_v1_coco_random",
        [helper.make_tensor_value_info(MOBILENET_INPUT, TensorProto.UINT8, [n, MOBILENET_SIZE, MOBILENET_SIZE, 3])],
        [
            helper.make_tensor_value_info(MOBILENET_OUTPUTS[0], TensorProto.FLOAT, [n]),
            helper.make_tensor_value_info(MOBILENET_OUTPUTS[1], TensorProto.FLOAT, [n, d, 4]),
            helper.make_tensor_value_info(MOBILENET_OUTPUTS[2], TensorProto.FLOAT, [n, d]),
            helper.make_tensor_value_info(MOBILENET_OUTPUTS[3], TensorProto.FLOAT, [n, d]),
        ],
        f"SSD-MobileNet-v1 with random weights (seed {seed}, width {width}, graph v{GRAPH_VERSION}): performance only",
    )


def build_ssd_resnet34(seed: int = 0, *, width: float = 1.0, image_size: int = RESNET34_SIZE) -> onnx.ModelProto:
    b = _resnet34(seed, width, image_size, materialize=True)
    d = RESNET34_DETECTIONS
    return _model(
        b, "ssd_resnet34_1200_random",
        [helper.make_tensor_value_info(RESNET34_INPUT, TensorProto.FLOAT, [1, 3, image_size, image_size])],
        [
            helper.make_tensor_value_info(RESNET34_OUTPUTS[0], TensorProto.FLOAT, [1, d, 4]),
            helper.make_tensor_value_info(RESNET34_OUTPUTS[1], TensorProto.INT64, [1, d]),
            helper.make_tensor_value_info(RESNET34_OUTPUTS[2], TensorProto.FLOAT, [1, d]),
        ],
        f"SSD-ResNet34 with random weights (seed {seed}, width {width}, {image_size}x{image_size}, "
        f"graph v{GRAPH_VERSION}): performance only",
    )


def mobilenet_macs(width: float = 1.0) -> int:
    """Multiply-accumulates of the convolutions for one 300x300 image."""
    return sum(_mobilenet(0, width, materialize=False).macs.values())


def resnet34_macs(width: float = 1.0, image_size: int = RESNET34_SIZE) -> int:
    """Multiply-accumulates of the convolutions for one image."""
    return sum(_resnet34(0, width, image_size, materialize=False).macs.values())


def write_ssd_mobilenet(path: Path, seed: int, *, width: float = 1.0) -> Path:
    write_bytes_atomic(Path(path), build_ssd_mobilenet(seed, width=width).SerializeToString())
    return Path(path)


def write_ssd_resnet34(path: Path, seed: int, *, width: float = 1.0, image_size: int = RESNET34_SIZE) -> Path:
    write_bytes_atomic(Path(path), build_ssd_resnet34(seed, width=width, image_size=image_size).SerializeToString())
    return Path(path)
