"""A graph with 3D-UNet's signature whose segmentation is known by construction.

Its logits are a fixed function of each voxel's intensity ``x``: background 0, kidney
``x - 0.5``, tumour ``2x - 3``. Every window gives a voxel the same logits, so the blended
volume gives them too (up to float32 rounding), and the arg-max is a threshold on ``x``:
background below 0.5, kidney from 0.5 to 2.5, tumour above. Volumes whose intensities keep
away from the two thresholds (:data:`INTENSITY`) have a segmentation known exactly, so the
DICE of a run against any label is known too (:func:`threshold_labels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROI = 128
#: An intensity far from both thresholds, per class it segments as.
INTENSITY = {0: -1.0, 1: 1.5, 2: 4.0}
_SCALE = np.array([0.0, 1.0, 2.0], np.float32).reshape(1, 3, 1, 1, 1)
_SHIFT = np.array([0.0, -0.5, -3.0], np.float32).reshape(1, 3, 1, 1, 1)


def write_threshold_graph(path: Path) -> Path:
    """``output = input * [0, 1, 2] + [0, -0.5, -3]`` per class, [N,1,128³] -> [N,3,128³]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["output"])],
        "unet3d_threshold",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, ROI, ROI, ROI])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, ROI, ROI, ROI])],
        [numpy_helper.from_array(_SCALE, "scale"), numpy_helper.from_array(_SHIFT, "shift")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def threshold_labels(image: np.ndarray) -> np.ndarray:
    """The segmentation the graph gives ``image``: 0 below 0.5, 1 up to 2.5, 2 above."""
    x = np.asarray(image, np.float32)
    return np.where(x > 2.5, 2, np.where(x > 0.5, 1, 0)).astype(np.uint8)


def image_for(labels: np.ndarray) -> np.ndarray:
    """A float32 volume the graph segments as ``labels`` exactly."""
    out = np.empty(labels.shape, np.float32)
    for label, value in INTENSITY.items():
        out[labels == label] = value
    return out
