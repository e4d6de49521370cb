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

#: Candidates resolved per step of the greedy selection: each step weighs a block against the
#: boxes already kept and against itself with whole-array operations, so Python touches a
#: candidate for one integer AND against a bitset of the block's kept boxes (a vector pass per
#: kept box made an SSD-MobileNet batch of 8 take 3.3 s).
BLOCK = 64


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, max_out: int, iou_threshold: float,
               score_threshold: float | None, center_point_box: int) -> np.ndarray:
    """ONNX NonMaxSuppression as onnxruntime's CPU kernel computes it, float32 throughout.

    Per batch, per class: the boxes above the score threshold by score descending (equal
    scores: lower index first); a box is kept unless its IoU with a box kept before it is
    above the threshold; at most ``max_out`` per class. Rows (batch, class, box) in that order.
    IoU is symmetric bit for bit (max, min, one product, one sum), so weighing a candidate
    against a kept box in either order gives onnxruntime's answer.
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
            corners = np.stack([x_lo[order], x_hi[order], y_lo[order], y_hi[order], area[order]])
            rows += [(b, c, int(order[k])) for k in _greedy(corners, threshold, max_out)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _overlaps(kept: np.ndarray, block: np.ndarray, threshold: np.float32) -> np.ndarray:
    """[len(kept), len(block)]: whether each pair overlaps past the threshold (columns of [x0, x1, y0, y1, area])."""
    ix0, ix1 = np.maximum(kept[0][:, None], block[0][None]), np.minimum(kept[1][:, None], block[1][None])
    iy0, iy1 = np.maximum(kept[2][:, None], block[2][None]), np.minimum(kept[3][:, None], block[3][None])
    inter = (ix1 - ix0) * (iy1 - iy0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((block[4][None] + kept[4][:, None]) - inter)
    return (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (iou > threshold)


def _greedy(corners: np.ndarray, threshold: np.float32, max_out: int) -> list[int]:
    """Positions kept by greedy suppression over boxes in score order ([5, n] corner rows), at most ``max_out``."""
    kept: list[int] = []
    n = corners.shape[1]
    for start in range(0, n, BLOCK):
        block = corners[:, start:start + BLOCK]
        alive = np.ones(block.shape[1], dtype=bool)
        if kept:
            alive &= ~_overlaps(corners[:, kept], block, threshold).any(axis=0)
        # bit k of suppressors[t]: block box k (before t) overlaps box t past the threshold
        before = np.triu(_overlaps(block, block, threshold), 1)
        packed = np.packbits(before.T, axis=1, bitorder="little")
        suppressors = [int.from_bytes(row.tobytes(), "little") for row in packed]
        kept_here = 0
        for t in np.flatnonzero(alive).tolist():
            if suppressors[t] & kept_here:
                continue
            kept.append(start + t)
            if len(kept) >= max_out:
                return kept
            kept_here |= 1 << t
    return kept


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
