"""A tiny OpenImages-layout data set whose COCO mAP is known by construction, and LoadGen logs for it.

:func:`write_openimages` writes ``ROOT/validation/data/*.jpg`` (small non-square JPEGs of
varied sizes, drawn with NumPy/OpenCV) and ``ROOT/annotations/openimages-mlperf.json`` (COCO
format: a handful of categories, several boxes per image, some ``iscrowd=1``).

:func:`known_map_case` answers perfect detections (the ground-truth boxes, in MLPerf's
normalised response format) for the categories in ``perfect`` and none for the others. COCO's
AP of a category whose every box is found exactly, before any false positive, is 1.0 at every
IoU threshold 0.50:0.95; a category with ground truth and no true positive scores 0; a
category without ground truth among the evaluated images is left out (-1). So the mAP is
exactly ``#perfect / #categories with (non-crowd) ground truth in the logged images``: 3 of 4,
75.000%, by default (a category with ground truth in the empty response is never perfect). The case also holds the traps a scorer must get right:

- a duplicate log entry for a sample (LoadGen may log one twice: only the first counts; the
  duplicate here holds top-scored false positives of perfect categories);
- a sample with an empty response (it is still evaluated: the only ground truth of category
  ``12`` is in it, so skipping it would give 100%);
- an image that is not in the log (its boxes must not count: evaluating it gives 50%);
- detections of a category without ground truth (left out of the mean), a low-scored false
  positive after the true ones (AP stays 1.0), crowd boxes without detections (ignored);
- the log's samples out of order, and image ids that are neither sorted nor 0-based.

:func:`random_case` answers jittered, partly wrong detections with random scores (a value
that is not round), through :class:`~mlpi.models.detection.DetectionResponses` as a model's
outputs would be. :func:`write_accuracy_log` writes ``mlperf_log_accuracy.json`` byte for
byte as LoadGen does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ANNOTATIONS = "annotations/openimages-mlperf.json"
IMAGES = "validation/data"

CATEGORIES = [
    {"id": 0, "name": "Apple"},
    {"id": 3, "name": "Bicycle"},
    {"id": 7, "name": "Cat"},
    {"id": 12, "name": "Door"},
    {"id": 20, "name": "Eagle"},  # no ground truth anywhere: left out of the mean
]

# (image id, file name, width, height): ids unsorted and not the sample index; sizes non-square.
IMAGE_TABLE = [
    (101, "0a1b2c3d4e5f6071.jpg", 96, 64),
    (205, "1f2e3d4c5b6a7988.jpg", 50, 80),
    (150, "2b3c4d5e6f708192.jpg", 120, 72),
    (7, "3c4d5e6f70819203.jpg", 64, 48),
    (330, "4d5e6f7081920314.jpg", 45, 70),
    (12, "5e6f708192031425.jpg", 88, 60),
]

# (sample index, category id, [x, y, w, h], iscrowd)
BOXES = [
    (0, 0, [4, 6, 30, 20], 0),
    (0, 3, [40, 10, 25, 40], 0),
    (0, 0, [60, 30, 30, 30], 0),
    (0, 7, [0, 0, 96, 64], 1),
    (1, 7, [5, 5, 20, 30], 0),
    (1, 3, [2, 60, 15, 18], 0),
    (1, 12, [10, 40, 35, 35], 1),
    (2, 0, [10, 10, 50, 40], 0),
    (2, 7, [30, 50, 20, 20], 0),
    (2, 7, [70, 20, 40, 45], 0),
    (2, 3, [0, 0, 120, 72], 1),
    (3, 3, [8, 8, 30, 30], 0),
    (3, 0, [35, 20, 25, 25], 0),
    (3, 12, [0, 0, 10, 10], 1),
    (4, 12, [5, 5, 30, 40], 0),
    (4, 0, [0, 0, 45, 70], 1),
    (5, 0, [10, 10, 40, 30], 0),
    (5, 12, [50, 20, 30, 30], 0),
]

#: Samples the known case logs, in LoadGen's (shuffled) order; sample 5 is never logged.
LOGGED = (2, 0, 3, 1, 4)
#: The logged sample whose response is empty.
EMPTY = 4
#: The categories answered perfectly by default, and the value that gives.
PERFECT = (0, 3, 7)
KNOWN_MAP = 75.0


@dataclass(frozen=True)
class OpenImagesFixture:
    """What :func:`write_openimages` wrote."""

    root: Path
    annotation_file: Path
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]

    @property
    def data_dir(self) -> Path:
        return self.root / IMAGES

    def image_file(self, index: int) -> Path:
        return self.data_dir / self.images[index]["file_name"]

    def boxes(self, index: int) -> list[dict[str, Any]]:
        """The annotations of sample ``index``, in file order."""
        image_id = self.images[index]["id"]
        return [a for a in self.annotations if a["image_id"] == image_id]


@dataclass(frozen=True)
class LogCase:
    """Log entries ``(qsl_idx, response)`` in log order, and what they must score."""

    entries: list[tuple[int, bytes]]
    value: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def line(self) -> str:
        assert self.value is not None
        return f"mAP={self.value:.3f}%"


def draw_image(width: int, height: int, boxes: Sequence[dict[str, Any]], seed: int) -> np.ndarray:
    """BGR uint8 picture: gradients and noise, the boxes filled in a colour per category."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width) % 256, (y * 255 // height) % 256, ((x + y) * 97 // (width + height)) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
    for box in boxes:
        bx, by, bw, bh = (int(v) for v in box["bbox"])
        colour = tuple(int(c) for c in np.random.default_rng(box["category_id"]).integers(0, 256, 3))
        cv2.rectangle(pixels, (bx, by), (bx + bw - 1, by + bh - 1), colour, thickness=-1 if not box["iscrowd"] else 2)
    return pixels


def write_openimages(root: Path, *, quality: int = 90) -> OpenImagesFixture:
    """Write the data set under ``root`` (created); returns what was written."""
    import cv2

    images = [{"id": i, "file_name": name, "height": h, "width": w} for i, name, w, h in IMAGE_TABLE]
    annotations = []
    for number, (index, category, bbox, crowd) in enumerate(BOXES):
        annotations.append(
            {
                "id": 1000 + number,
                "image_id": images[index]["id"],
                "category_id": category,
                "bbox": [float(v) for v in bbox],
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": crowd,
            }
        )
    categories = [dict(c) for c in CATEGORIES]
    data_dir = root / IMAGES
    data_dir.mkdir(parents=True, exist_ok=True)
    fixture = OpenImagesFixture(root, root / ANNOTATIONS, images, annotations, categories)
    for index, image in enumerate(images):
        pixels = draw_image(image["width"], image["height"], fixture.boxes(index), seed=index)
        if not cv2.imwrite(str(data_dir / image["file_name"]), pixels, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {data_dir / image['file_name']}")
    fixture.annotation_file.parent.mkdir(parents=True, exist_ok=True)
    document = {"info": {"description": "mlpi test fixture"}, "images": images, "annotations": annotations, "categories": categories}
    fixture.annotation_file.write_text(json.dumps(document, indent=1))
    return fixture


def records(qsl_idx: int, boxes_xywh: Sequence[Sequence[float]], scores: Sequence[float], labels: Sequence[int], height: int, width: int) -> np.ndarray:
    """float32 ``[n, 7]`` response records of boxes given in image pixels ``[x, y, w, h]``,
    normalised as MLPerf's detectors log them: ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``."""
    out = np.zeros((len(boxes_xywh), 7), dtype=np.float32)
    for row, (box, score, label) in enumerate(zip(boxes_xywh, scores, labels)):
        x, y, w, h = (np.float32(v) for v in box)
        out[row] = [qsl_idx, y / np.float32(height), x / np.float32(width), (y + h) / np.float32(height), (x + w) / np.float32(width), score, label]
    return out


def known_map_case(fixture: OpenImagesFixture, perfect: Iterable[int] = PERFECT) -> LogCase:
    """Perfect detections for the ``perfect`` categories, none for the others (see the module)."""
    perfect = set(perfect)
    entries: list[tuple[int, bytes]] = []
    present: set[int] = set()
    for index in LOGGED:
        image = fixture.images[index]
        truth = [a for a in fixture.boxes(index) if not a["iscrowd"]]
        present.update(a["category_id"] for a in truth)
        if index == EMPTY:
            entries.append((index, b""))
            continue
        found = [a for a in truth if a["category_id"] in perfect]
        boxes = [a["bbox"] for a in found]
        labels = [a["category_id"] for a in found]
        scores = [0.95 - 0.05 * k for k in range(len(found))]
        # A category without ground truth: left out of the mean whatever is detected.
        boxes.append([1.0, 1.0, 8.0, 8.0])
        labels.append(20)
        scores.append(0.5)
        # A false positive of a perfect category, scored below every true one: AP stays 1.0.
        if index == 0:
            boxes.append([image["width"] - 9.0, image["height"] - 9.0, 8.0, 8.0])
            labels.append(0)
            scores.append(0.06)
        entries.append((index, records(index, boxes, scores, labels, image["height"], image["width"]).tobytes()))
        if index == 0:
            # LoadGen logged sample 0 twice: the second entry must be ignored. Used instead
            # of the first, it loses sample 0's true boxes; counted as well, its top-scored
            # false positives of perfect categories cost them their AP of 1.0.
            wrong = [[50.0, 40.0, 12.0, 12.0], [2.0, 40.0, 10.0, 10.0]]
            chosen = sorted(perfect) or [0]
            duplicate = records(0, wrong, [0.99, 0.98], [chosen[0], chosen[-1]], image["height"], image["width"])
            entries.append((0, duplicate.tobytes()))
    # A category with ground truth in the empty response cannot be found completely.
    unanswered = {a["category_id"] for a in fixture.boxes(EMPTY) if not a["iscrowd"]}
    complete = (perfect & present) - unanswered
    value = 100.0 * len(complete) / len(present)
    return LogCase(entries, value, {"present": sorted(present), "perfect": sorted(complete)})


def random_case(fixture: OpenImagesFixture, seed: int = 0, input_size: tuple[int, int] = (64, 80), threshold: float = 0.05) -> LogCase:
    """Jittered, partly mislabelled detections with random scores plus false positives,
    written by DetectionResponses from model-like outputs (boxes in the model's input pixels,
    sorted by score, some below the threshold); one empty response, one duplicate entry, and
    sample 5 logged too. The value is whatever the official scorer says."""
    from mlpi.models.detection import DetectionResponses

    rng = np.random.default_rng(seed)
    in_h, in_w = input_size
    post = DetectionResponses(in_h, in_w, score_threshold=threshold)
    category_ids = [c["id"] for c in fixture.categories]
    order = [3, 5, 0, 2, 4, 1]
    entries: list[tuple[int, bytes]] = []
    for index in order:
        image = fixture.images[index]
        sx, sy = in_w / image["width"], in_h / image["height"]
        boxes, labels = [], []
        if index != EMPTY:
            for ann in fixture.boxes(index):
                if rng.random() < 0.15:
                    continue  # missed
                x, y, w, h = ann["bbox"]
                jitter = rng.normal(0.0, 0.08, 4) * [w, h, w, h]
                x1, y1 = x + jitter[0], y + jitter[1]
                x2, y2 = x + w + jitter[2], y + h + jitter[3]
                boxes.append([x1 * sx, y1 * sy, max(x2, x1 + 1) * sx, max(y2, y1 + 1) * sy])
                labels.append(ann["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids)))
            for _ in range(int(rng.integers(0, 4))):  # false positives
                x1, y1 = rng.uniform(0, in_w - 4), rng.uniform(0, in_h - 4)
                boxes.append([x1, y1, x1 + rng.uniform(2, in_w - x1), y1 + rng.uniform(2, in_h - y1)])
                labels.append(int(rng.choice(category_ids)))
        n = len(boxes)
        scores = np.sort(rng.uniform(0.0, 1.0, n).astype(np.float32))[::-1].copy()
        if n > 2:
            scores[-1] = np.float32(0.01)  # below the threshold: dropped by the break
        outputs = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(n, 4),
            "scores": scores,
            "labels": np.asarray(labels, dtype=np.int64),
        }
        response = post(outputs, [index])
        entries.append((index, response.sample(0)))
        if index == 0:
            entries.append((0, response.sample(0)[: 7 * 4]))  # a duplicate: ignored
    return LogCase(entries)


def accuracy_log_text(entries: Iterable[tuple[int, bytes]]) -> str:
    """``mlperf_log_accuracy.json`` as LoadGen writes it: a JSON list, one
    ``{ "seq_id" : n, "qsl_idx" : i, "data" : "<UPPER-CASE HEX>" }`` per line."""
    lines = [f'{{ "seq_id" : {seq}, "qsl_idx" : {index}, "data" : "{bytes(data).hex().upper()}" }}' for seq, (index, data) in enumerate(entries)]
    return "[" + ",".join("\n" + line for line in lines) + "\n]\n"


def write_accuracy_log(path: Path, entries: Iterable[tuple[int, bytes]]) -> Path:
    """Write ``entries`` (``(qsl_idx, response bytes)`` in log order) as LoadGen's accuracy log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(accuracy_log_text(entries))
    return path
