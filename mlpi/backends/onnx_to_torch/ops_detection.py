"""NonMaxSuppression, as onnxruntime's CPU kernel computes it.

Follows the ONNX operator spec (``onnx/defs/object_detection/defs.py``) and onnxruntime's
``non_max_suppression.cc`` for what the spec leaves open: the selection order, ties, and
float32 arithmetic throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step
from mlpi.core.contract.errors import ModelError


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, max_out: int, iou_threshold: float,
               score_threshold: float | None, center_point_box: int) -> np.ndarray:
    """ONNX NonMaxSuppression as onnxruntime's CPU kernel computes it, float32 throughout.

    Per batch, per class: the boxes above the score threshold by score descending (equal
    scores: lower index first); a box is kept unless its IoU with a box kept before it is
    above the threshold; at most ``max_out`` per class. Rows (batch, class, box) in that order.
    """
    f32 = np.float32
    rows: list[tuple[int, int, int]] = []
    threshold = f32(iou_threshold)
    for b in range(boxes.shape[0]):
        box = boxes[b]
        if center_point_box == 0:  # [y1, x1, y2, x2], any two opposite corners
            y_lo, y_hi = np.minimum(box[:, 0], box[:, 2]), np.maximum(box[:, 0], box[:, 2])
            x_lo, x_hi = np.minimum(box[:, 1], box[:, 3]), np.maximum(box[:, 1], box[:, 3])
            area = (y_hi - y_lo) * (x_hi - x_lo)
        else:  # [x_center, y_center, width, height]
            half_w, half_h = box[:, 2] / f32(2), box[:, 3] / f32(2)
            x_lo, x_hi = box[:, 0] - half_w, box[:, 0] + half_w
            y_lo, y_hi = box[:, 1] - half_h, box[:, 1] + half_h
            area = box[:, 2] * box[:, 3]
        for c in range(scores.shape[1]):
            s = scores[b, c]
            if score_threshold is None:
                candidates = np.arange(s.shape[0])
            else:
                candidates = np.flatnonzero(s > f32(score_threshold))
            order = candidates[np.argsort(-s[candidates], kind="stable")]
            bx0, bx1, by0, by1, barea = x_lo[order], x_hi[order], y_lo[order], y_hi[order], area[order]
            suppressed = np.zeros(order.shape[0], dtype=bool)
            kept = 0
            for i in range(order.shape[0]):
                if suppressed[i]:
                    continue
                rows.append((b, c, int(order[i])))
                kept += 1
                if kept >= max_out:
                    break
                rest = slice(i + 1, None)
                ix0, ix1 = np.maximum(bx0[i], bx0[rest]), np.minimum(bx1[i], bx1[rest])
                iy0, iy1 = np.maximum(by0[i], by0[rest]), np.minimum(by1[i], by1[rest])
                inter = (ix1 - ix0) * (iy1 - iy0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = inter / ((barea[rest] + barea[i]) - inter)
                suppressed[rest] |= (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (iou > threshold)
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _nms(n: Node) -> Step:
    center = int(n.attr("center_point_box", 0))
    if center not in (0, 1):
        raise n.unsupported(f"has center_point_box={center}")
    max_of = n.ints_input(2)
    iou_of = n.floats_input(3)
    score_of = n.floats_input(4)

    def run(a: Args) -> torch.Tensor:
        boxes, scores = a[0], a[1]
        if boxes.dim() != 3 or scores.dim() != 3 or boxes.shape[2] != 4 or boxes.shape[0] != scores.shape[0] \
                or boxes.shape[1] != scores.shape[2]:
            raise ModelError(f"NonMaxSuppression node '{n.name}' got boxes {tuple(boxes.shape)} "
                             f"and scores {tuple(scores.shape)}")
        max_out = max(int((max_of(a) or [0])[0]), 0)
        iou = (iou_of(a) or [0.0])[0]
        if not 0.0 <= iou <= 1.0:
            raise ModelError(f"NonMaxSuppression node '{n.name}' has iou_threshold {iou}, outside [0, 1]")
        score = score_of(a)
        if max_out == 0:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        selected = _nms_numpy(
            boxes.detach().to(torch.float32).cpu().numpy(), scores.detach().to(torch.float32).cpu().numpy(),
            max_out, iou, score[0] if score else None, center,
        )
        return torch.from_numpy(selected).to(boxes.device)

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {"NonMaxSuppression": _nms}
