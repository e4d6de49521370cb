"""DLRM-v2's ROC AUC on Criteo, as MLPerf's ``accuracy-dlrm.py`` computes it.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch/tools/accuracy-dlrm.py``
(the default mode, where the log holds the ground truth: each response is native float32
``[prediction, label]`` pairs, one per row of the sample's group; a sample logged twice
counts once, its first response; ``sklearn.metrics.roc_auc_score`` over every row; a row is
"good" when ``prediction.round() == label``, NumPy's round half to even; the printed line).

The AUC is our own NumPy code, the Mann-Whitney statistic with tied scores counting one
half, summed in exact integers, so that it matches scikit-learn's (which mlpi does not
depend on) to rounding. The labels come from the log, so the dataset is not read; the
script's ``--day-23-file`` mode (a log of predictions only) is not how mlpi logs DLRM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mlpi.core.contract.accuracy import AccuracyResult
from mlpi.core.contract.errors import DatasetError

if TYPE_CHECKING:
    from mlpi.core.contract.backend import TensorSpec
    from mlpi.core.contract.dataset import Dataset

#: One row of a response: prediction then label, native float32 (the script's default ``--dtype``).
ROW_DTYPE = np.dtype(np.float32)
ROW_BYTES = 2 * ROW_DTYPE.itemsize
_HINT = ("score the accuracy log of a DLRM-v2 run: each response is float32 [prediction, label] pairs, "
         "one per row of the sample, with labels 0 or 1")


def criteo_auc(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    """The model scorer: ROC AUC (percent) over every row, with ``accuracy-dlrm.py``'s line."""
    pairs, indices, starts = gather(responses)
    predictions, labels = pairs[:, 0], pairs[:, 1]
    check(predictions, labels, indices, starts)
    auc = roc_auc(labels == 1, predictions)
    total = len(pairs)
    good = int(np.count_nonzero(np.rint(predictions) == labels))
    accuracy = good / total
    line = (f"AUC={100.0 * auc:.3f}%, accuracy={100.0 * accuracy:.3f}%, "
            f"good={good}, total={total}, queries={len(indices)}")
    positives = int(np.count_nonzero(labels == 1))
    return AccuracyResult("AUC", 100.0 * auc, "%", (line,), details={
        "auc": auc, "accuracy": 100.0 * accuracy, "good": good, "total": total, "queries": len(indices),
        "positives": positives, "negatives": total - positives,
    })


def gather(responses: Mapping[int, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs [rows, 2] float32, sample indices, first row of each sample)``.

    Every response is copied once into one growing float32 buffer: the real log has ~89M
    rows, far too many for per-row Python objects."""
    if not responses:
        raise DatasetError("the accuracy log holds no responses", "score the log of a finished DLRM-v2 accuracy run")
    buffer = np.empty(2 * 256 * len(responses), ROW_DTYPE)  # a guess (groups are 100-700 rows); doubled as needed
    indices = np.empty(len(responses), np.int64)
    starts = np.empty(len(responses), np.int64)
    used = 0
    for number, (index, data) in enumerate(responses.items()):
        if len(data) % ROW_BYTES:
            raise DatasetError(f"the response of sample {index} has {len(data)} bytes, not a whole number of "
                               f"[prediction, label] float32 pairs ({ROW_BYTES} bytes each)", _HINT)
        values = np.frombuffer(data, ROW_DTYPE)
        if used + len(values) > len(buffer):
            grown = np.empty(max(2 * len(buffer), used + len(values)), ROW_DTYPE)
            grown[:used] = buffer[:used]
            buffer = grown
        buffer[used : used + len(values)] = values
        indices[number] = index
        starts[number] = used // 2
        used += len(values)
    return buffer[:used].reshape(-1, 2), indices, starts


def check(predictions: np.ndarray, labels: np.ndarray, indices: np.ndarray, starts: np.ndarray) -> None:
    """Reject what ``roc_auc_score`` rejects (non-finite scores, one class) and labels other than 0/1."""
    if not len(labels):
        raise DatasetError("the accuracy log's responses hold no rows", _HINT)

    def where(row: int) -> str:
        number = int(np.searchsorted(starts, row, side="right")) - 1
        return f"sample {int(indices[number])} (row {row - int(starts[number])})"

    bad = np.flatnonzero(~np.isfinite(predictions))
    if len(bad):
        raise DatasetError(f"{where(int(bad[0]))} has prediction {predictions[bad[0]]}; ROC AUC needs finite scores "
                           f"({len(bad)} rows are not)", "check the model's output (a sigmoid, 0 to 1) and its inputs")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DatasetError(f"{where(int(bad[0]))} has label {labels[bad[0]]}, not 0 or 1 ({len(bad)} rows do)", _HINT)
    positives = int(np.count_nonzero(labels == 1))
    if positives in (0, len(labels)):
        raise DatasetError(f"all {len(labels)} rows of the accuracy log have label {int(positives > 0)}: only one class "
                           "is present, so ROC AUC is not defined", "score a log with clicks and non-clicks (more samples)")


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative, ties one half.

    ``2U = sum over tie groups of pos * (2 * negatives below + neg)`` in int64 (exact while
    rows < 4e9), divided once, so only the last step rounds."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores)
    if positive.shape != scores.shape or positive.ndim != 1:
        raise ValueError(f"labels {positive.shape} and scores {scores.shape} must be one-dimensional and alike")
    if not len(scores):
        raise ValueError("ROC AUC is not defined without rows")
    order = np.argsort(scores)  # the order within a tie never matters
    ranked = scores[order]
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]) + 1, len(ranked))  # each tie group's end
    positives_upto = np.cumsum(positive[order], dtype=np.int64)[ends - 1]
    pos = np.diff(positives_upto, prepend=np.int64(0))
    neg = np.diff(ends, prepend=0).astype(np.int64) - pos
    neg_below = np.cumsum(neg) - neg
    total_pos, total_neg = int(positives_upto[-1]), len(ranked) - int(positives_upto[-1])
    if not total_pos or not total_neg:
        raise ValueError("ROC AUC is not defined with only one class")
    twice_u = int(np.dot(pos, 2 * neg_below + neg))
    return twice_u / (2 * total_pos * total_neg)  # Python ints: one correctly rounded division
