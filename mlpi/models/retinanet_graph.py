"""A RetinaNet (ResNeXt50-32x4d FPN) ONNX graph with MLPerf's signature and seeded random weights.

For performance runs where MLCommons' ``resnext50_32x4d_fpn.onnx`` (zenodo 6617879) cannot be
downloaded: the same layers, the same kind of in-graph post-processing (TopK, NonZero, Gather,
NonMaxSuppression), the same input and outputs, so every backend does about the same work and
meets the operators a detector brings. The weights are random, so the
detections mean nothing; they exist, though (tens to hundreds per image, see _CLS_BIAS), so
the NMS and the top-k paths do real work. Built with onnx + numpy only.

Signature (as the official file's):

* input ``images`` float32 [1, 3, S, S]: RGB scaled to [0, 1] (MLPerf's
  ``pre_process_openimages_retinanet`` divides by 255); the graph normalises with ImageNet's
  mean and std itself, as torchvision's ``GeneralizedRCNNTransform`` does;
* outputs ``boxes`` float32 [N, 4] (x1, y1, x2, y2 in input pixels, clipped to [0, S]),
  ``scores`` float32 [N] (descending, all > 0.05) and ``labels`` int64 [N] (0..263), with
  N dynamic, 0..300.

Layers, as torchvision's RetinaNet v1 with MLPerf's backbone: a ResNeXt50-32x4d (7x7/2 stem and
3x3/2 max-pool; 3, 4, 6, 3 bottlenecks with grouped 3x3 convolutions, 32 groups, the stride on the
3x3), batch-norm folded into the convolutions; an FPN on C3..C5 (1x1 laterals, nearest 2x
top-down Resize, 3x3 outputs) with P6 and P7 from P5 (``LastLevelP6P7(256, 256)``); the head shared
by the five levels: four 3x3 conv + ReLU then a 3x3 conv to A*K logits (A = 9 anchors, K = 264
classes) and Sigmoid, and a regression tower of the same shape to A*4 deltas.

Post-processing inside the graph: per level the top min(1000, L) of the flattened anchor x class
scores, kept where > 0.05 (the same set as torchvision's threshold-then-top-1000); box decoding
(BoxCoder weights 1, dw/dh clamped at log(1000/16)) against anchors computed here in numpy and
stored as constants (torchvision's ``AnchorGenerator``: sizes 32..512 times 2^0, 2^(1/3),
2^(2/3) truncated to integers, aspect ratios 0.5, 1, 2, rounded base anchors, integer strides
S // grid); boxes clipped to the image; class-wise NMS at IoU 0.5 by offsetting each box by
label * (S + 1) and running one NonMaxSuppression; then TopK of at most 300 by score.

Cost: :func:`macs` counts the convolutions' multiply-accumulates. At the defaults (800x800,
width 1.0) it gives 201.2 GMAC per image: backbone 53.9, FPN 10.2, head 137.1 (over the five
levels' 13,343 positions; the classification convolution to 2376 channels alone is 73.0). That
is this graph's figure, computed from its layers, not a measurement of the official file. The
weights take ~150 MB; writing the file takes a few seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.rundir import write_bytes_atomic

#: Bump when the graph or the weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
INPUT = "images"
OUTPUTS = ("boxes", "scores", "labels")
NUM_CLASSES = 264
IMAGE_SIZE = 800
OPSET = 13

NUM_ANCHORS = 9
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCORE_THRESHOLD = 0.05
TOPK_CANDIDATES = 1000
NMS_IOU = 0.5
DETECTIONS_PER_IMAGE = 300
BBOX_CLIP = math.log(1000.0 / 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, planes, stride
GROUPS = 32
FPN_CHANNELS = 256
HEAD_CONVS = 4

#: The classification conv's bias and weight gain. The real model's prior is
#: -log((1 - 0.01) / 0.01) = -4.6 on trained features; on these random features the logits'
#: spread is set by _CLS_GAIN, and the pair was chosen (measured with onnxruntime, seed 0) so
#: that NMS has work to do: at 800x800 a uniform-noise image gives ~1000 scores above 0.05
#: (most at P3, some at every level but P7), ~700 left after NMS, the top 300 kept; a
#: clipped-Gaussian noise image gives ~60 and ~45. At width 0.125 and 128x128, noise images
#: give 0 to ~130 detections, mostly tens.
_CLS_BIAS = -4.55
_CLS_GAIN = 0.6
_REG_GAIN = 0.15
#: How alike the A anchors' filters for one class are: where a class fires, several anchors of
#: one place fire together, as on a trained model, so NMS has overlapping boxes to suppress.
_ANCHOR_CORRELATION = 0.95
#: Gains of the FPN's output convolutions (P3, P4, P5, P6, P7): without batch-norm the coarser
#: levels come out weaker, and every level should give some detections.
_FPN_GAINS = (1.0, 1.4, 2.3, 0.75, 1.2)


def _channels(n: int, width: float) -> int:
    """``n`` channels scaled by ``width``, a multiple of 8 (at least 8)."""
    return max(8, int(round(n * width / 8)) * 8)


def _groups(channels: int, width: float) -> int:
    """ResNeXt's 32 groups scaled by ``width`` (4 at width 0.125), a divisor of ``channels``."""
    g = max(1, int(round(GROUPS * width)))
    while channels % g:
        g -= 1
    return g


class _Builder:
    """Nodes, initializers and static shapes; ``materialize=False`` only counts MACs."""

    def __init__(self, seed: int, materialize: bool = True) -> None:
        self.rng = np.random.default_rng(seed)
        self.materialize = materialize
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}  # conv-path tensors: (C, H, W), batch 1
        self.macs: dict[str, int] = {}
        self.count = 0
        self.levels: list[str] = []
        self.features: list[str] = []

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: object) -> str:
        outputs = outputs or [self.name(op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]

    def const(self, name: str, value: np.ndarray) -> str:
        if self.materialize:
            self.weights.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def conv_weights(self, name: str, out_ch: int, in_ch: int, k: int, groups: int = 1, gain: float = 1.0,
                     bias: float = 0.0) -> tuple[str, str]:
        """He-scaled zero-mean filters (standing in for batch-norm's centring, as in
        resnet50_graph) and a constant bias, as initializers ``name/W`` and ``name/B``."""
        if self.materialize:
            fan_in = in_ch // groups * k * k
            w = self.rng.standard_normal((out_ch, in_ch // groups, k, k), dtype=np.float32)
            w -= w.mean(axis=(1, 2, 3), keepdims=True)
            w *= np.float32(gain * math.sqrt(2.0 / fan_in))
            self.const(f"{name}/W", w)
            self.const(f"{name}/B", np.full(out_ch, bias, dtype=np.float32))
        return f"{name}/W", f"{name}/B"

    def cls_weights(self, name: str, anchors: int, classes: int, in_ch: int) -> tuple[str, str]:
        """The classification conv: output channel a*K + k mixes a filter shared by class k with
        one of its own (see _ANCHOR_CORRELATION)."""
        if self.materialize:
            shared = self.rng.standard_normal((1, classes, in_ch, 3, 3), dtype=np.float32)
            own = self.rng.standard_normal((anchors, classes, in_ch, 3, 3), dtype=np.float32)
            rho = _ANCHOR_CORRELATION
            w = (np.float32(math.sqrt(rho)) * shared + np.float32(math.sqrt(1 - rho)) * own).reshape(-1, in_ch, 3, 3)
            w -= w.mean(axis=(1, 2, 3), keepdims=True)
            w *= np.float32(_CLS_GAIN * math.sqrt(2.0 / (in_ch * 9)))
            self.const(f"{name}/W", w)
            self.const(f"{name}/B", np.full(anchors * classes, _CLS_BIAS, dtype=np.float32))
        return f"{name}/W", f"{name}/B"

    def conv(self, x: str, out_ch: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True,
             gain: float = 1.0, weights: tuple[str, str] | None = None, tag: str = "backbone",
             pad: int | None = None) -> str:
        in_ch, h, w = self.shapes[x]
        name = self.name("conv")
        if weights is None:
            weights = self.conv_weights(name, out_ch, in_ch, k, groups, gain)
        pad = k // 2 if pad is None else pad
        out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        self.macs[tag] = self.macs.get(tag, 0) + out_ch * out_h * out_w * (in_ch // groups) * k * k
        y = self.node("Conv", [x, *weights], [name], kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pad] * 4, group=groups)
        self.shapes[y] = (out_ch, out_h, out_w)
        if relu:
            y = self.relu(y)
        return y

    def relu(self, x: str) -> str:
        y = self.node("Relu", [x], [f"{x}/relu"])
        self.shapes[y] = self.shapes[x]
        return y

    def add(self, a: str, b: str) -> str:
        y = self.node("Add", [a, b])
        self.shapes[y] = self.shapes[a]
        return y

    def bottleneck(self, x: str, planes: int, stride: int, width: float) -> str:
        in_ch = self.shapes[x][0]
        mid = _channels(planes * 2, width)  # ResNeXt 32x4d: 32 groups of 4 * (planes / 64) channels
        out_ch = _channels(planes * 4, width)
        y = self.conv(x, mid, 1)
        y = self.conv(y, mid, 3, stride=stride, groups=_groups(mid, width))
        y = self.conv(y, out_ch, 1, relu=False, gain=0.2)
        shortcut = x if (stride == 1 and in_ch == out_ch) else self.conv(x, out_ch, 1, stride=stride, relu=False)
        return self.relu(self.add(y, shortcut))


def _grid(size: int) -> tuple[int, ...]:
    """Spatial sizes of C3, C4, C5, P6, P7 for an S x S input (3x3/2 pad 1 convs and pool, 7x7/2 stem)."""
    def down(n: int, k: int = 3) -> int:
        return (n + 2 * (k // 2) - k) // 2 + 1

    c2 = down(down(size, 7))
    c3 = down(c2)
    c4 = down(c3)
    c5 = down(c4)
    p6 = down(c5)
    return c3, c4, c5, p6, down(p6)


def anchors(image_size: int = IMAGE_SIZE) -> list[np.ndarray]:
    """Per level, float32 [H*W*A, 4] anchors (x1, y1, x2, y2) in torchvision's order (y, x, anchor)."""
    out = []
    for size, grid in zip(ANCHOR_SIZES, _grid(image_size)):
        scales = np.array([int(size * s) for s in ANCHOR_SCALES], dtype=np.float32)
        h_ratios = np.sqrt(np.array(ASPECT_RATIOS, dtype=np.float32))
        w_ratios = np.float32(1) / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)
        stride = image_size // grid
        shifts = np.arange(grid, dtype=np.float32) * np.float32(stride)
        sy, sx = np.meshgrid(shifts, shifts, indexing="ij")
        sx, sy = sx.reshape(-1), sy.reshape(-1)
        shift = np.stack([sx, sy, sx, sy], axis=1)
        out.append((shift[:, None, :] + base[None, :, :]).reshape(-1, 4).astype(np.float32))
    return out


def _anchor_codes(boxes: np.ndarray) -> np.ndarray:
    """(ctr_x, ctr_y, w, h) in float32, as torchvision's BoxCoder derives them from the anchors."""
    wh = boxes[:, 2:] - boxes[:, :2]
    ctr = boxes[:, :2] + np.float32(0.5) * wh
    return np.concatenate([ctr, wh], axis=1).astype(np.float32)


def _build(seed: int, width: float, image_size: int, materialize: bool) -> _Builder:
    if width <= 0:
        raise ValueError(f"width must be positive, not {width}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, not {image_size}")
    S = image_size
    b = _Builder(seed, materialize)
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731

    # -- GeneralizedRCNNTransform's normalisation, then the backbone
    b.const("norm/mean", f32(MEAN).reshape(1, 3, 1, 1))
    b.const("norm/std", f32(STD).reshape(1, 3, 1, 1))
    x = b.node("Div", [b.node("Sub", [INPUT, "norm/mean"]), "norm/std"])
    b.shapes[x] = (3, S, S)
    x = b.conv(x, _channels(64, width), 7, stride=2, gain=0.5)
    c, h, w = b.shapes[x]
    x_pool = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.shapes[x_pool] = (c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    x = x_pool
    features = []
    for blocks, planes, stride in STAGES:
        for i in range(blocks):
            x = b.bottleneck(x, planes, stride if i == 0 else 1, width)
        features.append(x)
    c3, c4, c5 = features[1:]

    # -- FPN (torchvision's FeaturePyramidNetwork + LastLevelP6P7(256, 256): P6 from P5)
    fpn = _channels(FPN_CHANNELS, width)
    g3, g4, g5, g6, g7 = _FPN_GAINS
    last = b.conv(c5, fpn, 1, relu=False, tag="fpn")
    outs = [b.conv(last, fpn, 3, relu=False, gain=g5, tag="fpn")]
    for c_i, gain in ((c4, g4), (c3, g3)):
        lateral = b.conv(c_i, fpn, 1, relu=False, tag="fpn")
        _, lh, lw = b.shapes[lateral]
        sizes = b.const(b.name("fpn/size"), i64([1, fpn, lh, lw]))
        up = b.node("Resize", [last, "", "", sizes], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        b.shapes[up] = b.shapes[lateral]
        last = b.add(lateral, up)
        outs.insert(0, b.conv(last, fpn, 3, relu=False, gain=gain, tag="fpn"))
    p6 = b.conv(outs[-1], fpn, 3, stride=2, relu=False, gain=g6, tag="fpn")
    p7 = b.conv(b.relu(p6), fpn, 3, stride=2, relu=False, gain=g7, tag="fpn")
    levels = [*outs, p6, p7]
    b.levels, b.features = levels, [c3, c4, c5]  # for inspection

    # -- the head, one set of weights shared by every level
    A, K = NUM_ANCHORS, NUM_CLASSES
    cls_tower = [b.conv_weights(f"head/cls{i}", fpn, fpn, 3) for i in range(HEAD_CONVS)]
    cls_out = b.cls_weights("head/cls_logits", A, K, fpn)
    reg_tower = [b.conv_weights(f"head/reg{i}", fpn, fpn, 3) for i in range(HEAD_CONVS)]
    reg_out = b.conv_weights("head/bbox_reg", A * 4, fpn, 3, gain=_REG_GAIN)
    b.const("post/thresh", f32(SCORE_THRESHOLD))
    b.const("post/K", i64(K))
    b.const("post/flat", i64([-1]))
    b.const("post/flat4", i64([-1, 4]))
    b.const("post/axis0", i64([0]))
    level_scores, level_labels, level_deltas, level_anchors = [], [], [], []
    for lvl, (feature, boxes) in enumerate(zip(levels, anchors(S))):
        _, fh, fw = b.shapes[feature]
        y = feature
        for weights in cls_tower:
            y = b.conv(y, fpn, 3, weights=weights, tag="head")
        logits = b.conv(y, A * K, 3, relu=False, weights=cls_out, tag="head")
        y = feature
        for weights in reg_tower:
            y = b.conv(y, fpn, 3, weights=weights, tag="head")
        deltas = b.conv(y, A * 4, 3, relu=False, weights=reg_out, tag="head")
        # (1, A*K, H, W) -> (H, W, A, K) flattened, torchvision's order
        shape5 = b.const(f"post/shape_cls{lvl}", i64([1, A, K, fh, fw]))
        logits = b.node("Transpose", [b.node("Reshape", [logits, shape5])], perm=[0, 3, 4, 1, 2])
        scores = b.node("Sigmoid", [b.node("Reshape", [logits, "post/flat"])])
        shape5r = b.const(f"post/shape_reg{lvl}", i64([1, A, 4, fh, fw]))
        deltas = b.node("Transpose", [b.node("Reshape", [deltas, shape5r])], perm=[0, 3, 4, 1, 2])
        deltas = b.node("Reshape", [deltas, "post/flat4"])
        # top min(1000, L) of the flattened scores, then those above the threshold
        k = min(TOPK_CANDIDATES, fh * fw * A * K)
        kname = b.const(f"post/k{lvl}", i64([k]))
        top_scores, top_idx = f"post/top_scores{lvl}", f"post/top_idx{lvl}"
        b.node("TopK", [scores, kname], [top_scores, top_idx], axis=0, largest=1, sorted=1)
        keep = b.node("NonZero", [b.node("Greater", [top_scores, "post/thresh"])])
        keep = b.node("Squeeze", [keep, "post/axis0"])
        idx = b.node("Gather", [top_idx, keep], axis=0)
        level_scores.append(b.node("Gather", [top_scores, keep], axis=0))
        # idx // K and idx - (idx // K) * K: not Mod, which OpenVINO's CPU plugin (2026.4) gets
        # wrong for int64 values above 2^24 (the flattened P3 index at 800x800 reaches 23.8M).
        anchor_idx = b.node("Div", [idx, "post/K"])
        level_labels.append(b.node("Sub", [idx, b.node("Mul", [anchor_idx, "post/K"])]))
        level_deltas.append(b.node("Gather", [deltas, anchor_idx], axis=0))
        codes = b.const(f"post/anchors{lvl}", _anchor_codes(boxes))
        level_anchors.append(b.node("Gather", [codes, anchor_idx], axis=0))
    scores = b.node("Concat", level_scores, axis=0)
    labels = b.node("Concat", level_labels, axis=0)
    deltas = b.node("Concat", level_deltas, axis=0)
    codes = b.node("Concat", level_anchors, axis=0)

    # -- BoxCoder.decode_single (weights 1, 1, 1, 1) and clip_boxes_to_image
    for name, value in (("post/0", [0]), ("post/2", [2]), ("post/4", [4]), ("post/1", [1])):
        b.const(name, i64(value))
    d_xy = b.node("Slice", [deltas, "post/0", "post/2", "post/1"])
    d_wh = b.node("Slice", [deltas, "post/2", "post/4", "post/1"])
    a_xy = b.node("Slice", [codes, "post/0", "post/2", "post/1"])
    a_wh = b.node("Slice", [codes, "post/2", "post/4", "post/1"])
    b.const("post/clip", f32(BBOX_CLIP))
    b.const("post/half", f32(0.5))
    ctr = b.node("Add", [b.node("Mul", [d_xy, a_wh]), a_xy])
    wh = b.node("Mul", [b.node("Exp", [b.node("Min", [d_wh, "post/clip"])]), a_wh])
    half = b.node("Mul", ["post/half", wh])
    corners = b.node("Concat", [b.node("Sub", [ctr, half]), b.node("Add", [ctr, half])], axis=1)
    b.const("post/zero", f32(0))
    b.const("post/size", f32(S))
    boxes = b.node("Clip", [corners, "post/zero", "post/size"])

    # -- batched NMS by the coordinate trick: boxes of different labels never overlap
    b.const("post/offset", f32(S + 1))
    offsets = b.node("Mul", [b.node("Cast", [labels], to=TensorProto.FLOAT), "post/offset"])
    shifted = b.node("Add", [boxes, b.node("Unsqueeze", [offsets, "post/1"])])
    b.const("post/axes01", i64([0, 1]))
    max_out = b.const("post/nms_max", i64([len(levels) * TOPK_CANDIDATES]))
    b.const("post/iou", f32([NMS_IOU]))
    selected = b.node("NonMaxSuppression", [b.node("Unsqueeze", [shifted, "post/axis0"]),
                                            b.node("Unsqueeze", [scores, "post/axes01"]), max_out, "post/iou"])
    b.const("post/box_column", i64(2))
    kept = b.node("Gather", [selected, "post/box_column"], axis=1)
    kept_scores = b.node("Gather", [scores, kept], axis=0)
    b.const("post/max_det", i64([DETECTIONS_PER_IMAGE]))
    k_final = b.node("Min", [b.node("Shape", [kept_scores]), "post/max_det"])
    order = "post/order"
    b.node("TopK", [kept_scores, k_final], [OUTPUTS[1], order], axis=0, largest=1, sorted=1)
    final = b.node("Gather", [kept, order], axis=0)
    b.node("Gather", [boxes, final], [OUTPUTS[0]], axis=0)
    b.node("Gather", [labels, final], [OUTPUTS[2]], axis=0)
    return b


def build_retinanet(seed: int = 0, *, width: float = 1.0, image_size: int = IMAGE_SIZE) -> onnx.ModelProto:
    """The graph as a ModelProto (see the module docstring)."""
    b = _build(seed, width, image_size, materialize=True)
    graph = helper.make_graph(
        b.nodes,
        "retinanet_resnext50_32x4d_fpn_random",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, image_size, image_size])],
        [
            helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(OUTPUTS[2], TensorProto.INT64, ["N"]),
        ],
        b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
    model.ir_version = 8
    model.doc_string = (
        f"RetinaNet ResNeXt50-32x4d FPN with random weights (seed {seed}, width {width}, "
        f"{image_size}x{image_size}, graph v{GRAPH_VERSION}): performance only"
    )
    return model


def macs(width: float = 1.0, image_size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates of the graph's convolutions for one image (201.2e9 at the defaults)."""
    return sum(_build(0, width, image_size, materialize=False).macs.values())


def macs_by_part(width: float = 1.0, image_size: int = IMAGE_SIZE) -> dict[str, int]:
    """:func:`macs` split into ``backbone``, ``fpn`` and ``head``."""
    return dict(_build(0, width, image_size, materialize=False).macs)


def write_retinanet(path: Path, seed: int, *, width: float = 1.0, image_size: int = IMAGE_SIZE) -> Path:
    """Build the graph and write it atomically to ``path``."""
    model = build_retinanet(seed, width=width, image_size=image_size)
    path = Path(path)
    write_bytes_atomic(path, model.SerializeToString())
    return path
