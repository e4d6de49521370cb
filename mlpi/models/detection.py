"""Object detection: the responses MLPerf's detectors log, and the COCO mAP scorer.

Response format (MLPerf's reference ``PostProcessOpenImagesRetinanet`` and its kin): per sample,
float32 records of 7 values ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``, coordinates
normalised to [0, 1], one record per detection, in the model's order; a sample without
detections answers an empty response. :class:`DetectionResponses` writes them, vectorised.

Scoring (:func:`coco_map`): the computation of MLCommons' ``accuracy-openimages.py`` (and,
with ``use_inv_map``, ``accuracy-coco.py``), reimplemented: the first log entry per sample,
the records scaled back to the image's pixels, pycocotools' COCOeval on the bbox task over
the images seen, and the same ``mAP=..%`` line. pycocotools is imported only when scoring.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.accuracy import AccuracyResult
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import DatasetError, ModelError, PluginError, RunFailed
from mlpi.core.contract.postprocess import Postprocessor, Responses

#: float32 values per detection record: qsl_idx, ymin, xmin, ymax, xmax, score, label.
RECORD = 7
#: The reference RetinaNet's score threshold: detections stop at the first score below it.
SCORE_THRESHOLD = 0.05
#: Names of COCOeval's 12 summary figures, in ``stats`` order.
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Record columns [ymin, xmin, ymax, xmax] taken from the model's box columns.
_BOX_COLUMNS = {"xyxy": (1, 0, 3, 2), "yxyx": (0, 1, 2, 3)}


class DetectionResponses(Postprocessor):
    """MLPerf detection records from a detector's ``boxes``, ``scores`` and ``labels`` outputs.

    - ``height`` / ``width``: the model's input size in pixels; boxes are divided by them
      (in float32, as the reference's ``box / height`` on float32 boxes) unless
      ``normalized`` says the model already answers [0, 1] coordinates.
    - ``boxes`` / ``scores`` / ``labels``: output names. Shapes ``[N, 4]``, ``[N]``, ``[N]`` for a
      graph that answers one image (the RetinaNet ONNX, batch 1), or ``[B, N, 4]``, ``[B, N]``,
      ``[B, N]`` for a batched one.
    - ``box_order``: ``"xyxy"`` (x1, y1, x2, y2: RetinaNet, torchvision) or ``"yxyx"``
      (TensorFlow's SSD detectors).
    - ``score_threshold``: records stop at the first score below it (the reference ``break``s,
      so scores must come sorted, as the detectors give them); ``None``: no threshold.
    - ``count``: an output holding each sample's number of valid detections (SSD's
      ``num_detections``), or ``None``: all ``N``.
    - ``max_batch``: the largest batch, to size the buffers up front.

    Labels are logged as ``float32(int(label))``, the qsl index as ``float32(index)``, the
    score as its float32 value: the bytes equal those of the reference's per-detection loop.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        boxes: str = "boxes",
        scores: str = "scores",
        labels: str = "labels",
        count: str | None = None,
        score_threshold: float | None = SCORE_THRESHOLD,
        box_order: str = "xyxy",
        normalized: bool = False,
        max_batch: int = 1,
    ) -> None:
        if box_order not in _BOX_COLUMNS:
            raise ValueError(f"box_order must be one of {', '.join(_BOX_COLUMNS)}, not {box_order!r}")
        if not normalized and (int(height) < 1 or int(width) < 1):
            raise ValueError(f"the input size must be positive, not {height}x{width}")
        self.height, self.width = int(height), int(width)
        self._names = (boxes, scores, labels)
        self._count = count
        self._threshold = score_threshold
        self._columns = list(_BOX_COLUMNS[box_order])
        self._normalized = normalized
        # Divisors of the model's box columns, exact in float32.
        along_x = (self.width, self.height) if box_order == "xyxy" else (self.height, self.width)
        self._box_scale = np.array(along_x * 2, dtype=np.float32)
        batch = max(int(max_batch), 1)
        self._records = np.zeros((batch * 128, RECORD), dtype=np.float32)
        self._boxes = np.zeros((batch * 128, 4), dtype=np.float32)
        self._offsets = np.zeros(batch + 1, dtype=np.int64)

    @classmethod
    def factory(cls, height: int, width: int, **options: Any) -> Callable[[Sequence[TensorSpec], int], DetectionResponses]:
        """A ModelSpec ``postprocess`` factory: checks that the named outputs exist."""

        def make(outputs: Sequence[TensorSpec], max_batch: int) -> DetectionResponses:
            names = {spec.name for spec in outputs}
            wanted = [options.get(k, k) for k in ("boxes", "scores", "labels")] + ([options["count"]] if options.get("count") else [])
            missing = [name for name in wanted if name not in names]
            if names and missing:
                raise ModelError(
                    f"the detector has no output{'s' if len(missing) > 1 else ''} {', '.join(missing)} (it has: {', '.join(sorted(names))})",
                    "use the model's official file, whose outputs are boxes, scores and labels",
                )
            return cls(height, width, max_batch=max_batch, **options)

        return make

    @property
    def sample_nbytes(self) -> None:
        return None

    def __call__(self, outputs: Mapping[str, np.ndarray], indices: Sequence[int]) -> Responses:
        n = len(indices)
        boxes, scores, labels = (np.asarray(outputs[name]) for name in self._names)
        if scores.ndim == 1:  # one image's detections: [N, 4], [N], [N]
            if n != 1:
                raise ValueError(f"the detector answered one image's detections for a batch of {n}")
            boxes, scores, labels = boxes[None], scores[None], labels[None]
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] or labels.shape[:2] != scores.shape:
            raise ValueError(
                f"detector outputs have shapes boxes {boxes.shape}, scores {scores.shape}, labels {labels.shape}; "
                "expected [N,4], [N], [N] or [B,N,4], [B,N], [B,N]"
            )
        if boxes.shape[0] < n:
            raise ValueError(f"the detector answered {boxes.shape[0]} images for a batch of {n}")
        if n == 1:  # the common case (RetinaNet, batch 1): plain slices, no masks
            k = self._kept_one(scores[0], outputs)
            records = self._reserve(k)
            self._fill(records, boxes[0, :k], scores[0, :k], labels[0, :k])
            records[:, 0] = float(indices[0])
            offsets = self._offsets[:2]
            offsets[1] = k * RECORD * 4
            return Responses(records, offsets)
        keep = self._kept(scores[:n], outputs)
        total = int(keep.sum())
        records = self._reserve(total)
        if n + 1 > len(self._offsets):
            self._offsets = np.zeros(n + 1, dtype=np.int64)
        offsets = self._offsets[: n + 1]
        np.cumsum(keep, out=offsets[1:])
        offsets *= RECORD * 4
        kept = np.arange(scores.shape[1]) < keep[:, None]
        self._fill(records, boxes[:n][kept], scores[:n][kept], labels[:n][kept])
        records[:, 0] = np.repeat(np.asarray([float(i) for i in indices], dtype=np.float64), keep)
        return Responses(records, offsets)

    def _reserve(self, total: int) -> np.ndarray:
        """The first ``total`` rows of the record buffer (grown, never shrunk)."""
        if total > len(self._records):
            self._records = np.zeros((max(total, 2 * len(self._records)), RECORD), dtype=np.float32)
            self._boxes = np.zeros((len(self._records), 4), dtype=np.float32)
        return self._records[:total]

    def _kept_one(self, scores: np.ndarray, outputs: Mapping[str, np.ndarray]) -> int:
        m = len(scores)
        keep = m
        if self._threshold is not None and m:
            below = scores < self._threshold
            first = int(below.argmax())
            if below[first]:
                keep = first
        if self._count is not None:
            keep = min(keep, max(0, int(np.asarray(outputs[self._count]).reshape(-1)[0])))
        return keep

    def _kept(self, scores: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Detections logged per sample: up to the first score below the threshold (a NaN
        score is not below it, as in the reference's ``if score < threshold: break``)."""
        n, m = scores.shape
        keep = np.full(n, m, dtype=np.int64)
        if self._threshold is not None and m:
            below = scores < self._threshold
            first = below.argmax(axis=1)
            np.copyto(keep, first, where=below[np.arange(n), first])
        if self._count is not None:
            counts = np.asarray(outputs[self._count]).reshape(-1)[:n]
            np.minimum(keep, np.clip(counts.astype(np.int64), 0, m), out=keep)
        return keep

    def _fill(self, records: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        """Columns 1..6 of ``records`` from the kept detections."""
        k = len(records)
        if self._normalized:
            pixels = boxes
        elif boxes.dtype == np.float32:
            pixels = np.divide(boxes, self._box_scale, out=self._boxes[:k])
        elif boxes.dtype.kind == "f":  # the division in the boxes' own precision, then float32
            pixels = boxes / self._box_scale.astype(boxes.dtype)
        else:  # integer pixels: a true division in float64
            pixels = boxes / self._box_scale.astype(np.float64)
        for column, source in enumerate(self._columns, start=1):
            records[:, column] = pixels[:, source]
        records[:, 5] = scores
        if labels.dtype.kind == "f":  # the reference logs float(int(label)): truncated
            records[:, 6] = np.trunc(labels)
        else:
            records[:, 6] = labels


# -- scoring -------------------------------------------------------------------------------


def _scalar_dtype() -> np.dtype:
    """What ``np.float32 scalar * Python int`` gives under this NumPy (float32 since NumPy 2,
    float64 before): the precision the official script scales coordinates in."""
    return np.asarray(np.float32(1) * 1).dtype


def coco_map(
    responses: Mapping[int, bytes], dataset: Any, outputs: Sequence[TensorSpec] = (), *, use_inv_map: bool = False
) -> AccuracyResult:
    """COCO bbox mAP of detection responses, as ``accuracy-openimages.py`` and
    ``accuracy-coco.py`` (``--use-inv-map`` with ``use_inv_map``) compute it.

    ``responses``: ``{qsl_idx: bytes}`` with the first log entry per sample
    (:func:`~mlpi.core.contract.accuracy.read_accuracy_log`); ``dataset``: one whose
    ``ground_truth()`` is a :class:`~mlpi.datasets.openimages.CocoGroundTruth`.
    """
    from mlpi.datasets.openimages import CocoGroundTruth

    truth = dataset.ground_truth() if dataset is not None else None
    if truth is None:
        raise DatasetError(
            "this dataset has no COCO ground truth, so mAP cannot be scored",
            "score with the detection dataset the run used: --dataset openimages or --dataset coco, with its --dataset-path",
        )
    if not isinstance(truth, CocoGroundTruth):
        raise DatasetError(
            f"the dataset's ground truth is {type(truth).__name__}, not COCO annotations: mAP cannot be scored with it",
            "score detections with a detection dataset: --dataset openimages or --dataset coco",
        )
    return score_coco(responses, truth.annotation_file, use_inv_map=use_inv_map)


def coco_map_inv(responses: Mapping[int, bytes], dataset: Any, outputs: Sequence[TensorSpec] = ()) -> AccuracyResult:
    """:func:`coco_map` of a model whose labels count COCO's categories from 1 (``--use-inv-map``)."""
    return coco_map(responses, dataset, outputs, use_inv_map=True)


def _import_pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise PluginError(
            f"scoring detections needs pycocotools, which is not installed ({exc})",
            'pip install "mlpi[detection]"',
        ) from None
    return COCO, COCOeval


def score_coco(responses: Mapping[int, bytes], annotation_file: Path, *, use_inv_map: bool = False) -> AccuracyResult:
    """The mAP of ``responses`` against a COCO-format ``annotation_file``; ``use_inv_map``
    maps labels through ``[0] + category ids`` as ``accuracy-coco.py --use-inv-map`` does."""
    COCO, COCOeval = _import_pycocotools()
    chatter = io.StringIO()  # pycocotools prints progress: keep it off mlpi's output
    try:
        with contextlib.redirect_stdout(chatter):
            truth = COCO(str(annotation_file))
    except FileNotFoundError:
        raise DatasetError(f"the annotation file {annotation_file} is missing", "give the dataset folder the run used") from None
    except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"pycocotools cannot read the annotation file {annotation_file}: {type(exc).__name__}: {exc}",
            "regenerate it with MLCommons' download script (COCO format)",
        ) from None
    decoded = decode_detections(responses, truth.dataset["images"], [0, *truth.getCatIds()] if use_inv_map else None, annotation_file)
    if not decoded.image_ids:
        raise DatasetError("the accuracy log has no responses to score", "run the accuracy test first")
    detections = decoded.detections
    notes: list[str] = []
    if decoded.mismatches:
        notes.append(
            f"{decoded.mismatches} detection record(s) carry a qsl_idx other than their log entry's "
            f"({'; '.join(decoded.mismatch_examples)}); scored by the log entry, as MLCommons' script does"
        )

    with contextlib.redirect_stdout(chatter):
        if detections:
            results = truth.loadRes(detections)
        else:  # the official script stops with an IndexError here; mlpi scores "nothing found"
            results = COCO()
            results.dataset = {"images": list(truth.dataset["images"]), "categories": list(truth.dataset.get("categories", [])), "annotations": []}
            results.createIndex()
            notes.append("no response holds a detection: MLCommons' script fails on such a log (IndexError); mlpi scores it as nothing found")
        evaluation = COCOeval(truth, results, iouType="bbox")
        evaluation.params.imgIds = list(decoded.image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluation.summarize()

    value = 100.0 * evaluation.stats[0]
    details: dict[str, Any] = {
        "coco_stats": dict(zip(COCO_STATS, (float(v) for v in evaluation.stats))),
        "images": len(decoded.image_ids),
        "detections": len(detections),
        "images_without_detections": decoded.no_results,
        "summary": summary.getvalue().rstrip("\n"),
    }
    if decoded.mismatches:
        details["payload_mismatches"] = decoded.mismatches
    if notes:
        details["warnings"] = notes
        for text in notes:
            warnings.warn(text, RuntimeWarning, stacklevel=2)
    line = "mAP={:.3f}%".format(value)
    return AccuracyResult("mAP", float(value), "%", (line,), higher_is_better=True, details=details)


@dataclass
class DecodedLog:
    """Detection responses decoded as the official script decodes them."""

    #: pycocotools result dicts (image_id, category_id, bbox [x, y, w, h], score), in log order.
    detections: list[dict[str, Any]]
    #: Ids of every image the log answers, with or without detections.
    image_ids: set[Any]
    #: Responses shorter than one record (images without detections).
    no_results: int = 0
    #: Records whose own qsl_idx is not their log entry's, and the first few of them.
    mismatches: int = 0
    mismatch_examples: list[str] = field(default_factory=list)


def decode_detections(
    responses: Mapping[int, bytes], images: Sequence[Mapping[str, Any]], inv_map: Sequence[int] | None = None, source: Any = "the annotations"
) -> DecodedLog:
    """Responses -> pycocotools result dicts with the very floats MLCommons' script makes.

    Sample ``i`` is ``images[i]``; coordinates are scaled back by its height and width the
    script's way (``ymin *= height`` on float32 values, ``float(xmax - xmin)``), labels are
    ``int(label)`` (through ``inv_map`` when given), scores ``float(score)``.
    """
    image_ids: set[Any] = set()
    groups: list[tuple[Any, int, int, np.ndarray]] = []  # (image id, height, width, records)
    decoded = DecodedLog([], image_ids)
    for index, data in responses.items():
        if not 0 <= index < len(images):
            raise DatasetError(
                f"the accuracy log names sample {index}, but {source} lists {len(images)} images",
                "score with the annotation file of the data set the run used",
            )
        if len(data) % 4:
            raise RunFailed(
                f"the response of sample {index} has {len(data)} bytes, not float32 detection records",
                "the model's postprocessing must log float32 [qsl_idx, ymin, xmin, ymax, xmax, score, label] records",
            )
        values = np.frombuffer(data, np.float32)
        image = images[index]
        image_ids.add(image["id"])
        if len(values) < RECORD:  # an image without detections still counts
            decoded.no_results += 1
            continue
        if len(values) % RECORD:
            raise RunFailed(
                f"the response of sample {index} holds {len(values)} float32 values, not records of {RECORD}",
                "the model's postprocessing must log float32 [qsl_idx, ymin, xmin, ymax, xmax, score, label] records",
            )
        records = values.reshape(-1, RECORD)
        payload = records[:, 0]
        differs = ~(np.trunc(payload) == index)  # the script compares int(payload) with the log's index
        if differs.any():
            decoded.mismatches += int(np.count_nonzero(differs))
            if len(decoded.mismatch_examples) < 5:
                decoded.mismatch_examples.append(f"loadgen({index}) and payload({payload[differs][0]:g}) disagree on image_idx")
        labels = records[:, 6]
        if not np.isfinite(labels).all() or np.abs(labels).max() >= 2.0**63:
            raise RunFailed(f"the response of sample {index} has a label that is not a class id", "the model's postprocessing logs labels as float32 class ids")
        groups.append((image["id"], image["height"], image["width"], records))
    decoded.detections = _detections(groups, inv_map)
    return decoded


def _detections(groups: Sequence[tuple[Any, int, int, np.ndarray]], inv_map: Sequence[int] | None) -> list[dict[str, Any]]:
    """pycocotools result dicts, in log order, with the floats the official script makes:
    ``ymin *= height`` etc. on float32 scalars, then ``float()`` of the box and its extent."""
    if not groups:
        return []
    dtype = _scalar_dtype()
    records = np.concatenate([g[3] for g in groups]) if len(groups) > 1 else groups[0][3]
    sizes = [len(g[3]) for g in groups]
    scale = np.repeat(np.array([[g[1], g[2], g[1], g[2]] for g in groups], dtype=dtype), sizes, axis=0)
    corners = records[:, 1:5].astype(dtype) * scale  # ymin, xmin, ymax, xmax in pixels
    ymin, xmin, ymax, xmax = corners.T
    x = xmin.tolist()
    y = ymin.tolist()
    w = (xmax - xmin).tolist()
    h = (ymax - ymin).tolist()
    scores = records[:, 5].tolist()
    labels = np.trunc(records[:, 6]).astype(np.int64).tolist()
    if inv_map is not None:
        try:
            labels = [inv_map[label] for label in labels]
        except IndexError:
            raise RunFailed(
                f"a label is outside the inverse label map of {len(inv_map)} entries",
                "use the inverse label map only for models whose labels count the categories from 1",
            ) from None
    image_ids = [g[0] for g, size in zip(groups, sizes) for _ in range(size)]
    return [
        {"image_id": i, "category_id": c, "bbox": [a, b, cw, ch], "score": s}
        for i, c, a, b, cw, ch, s in zip(image_ids, labels, x, y, w, h, scores)
    ]
