"""KiTS19 DICE, computed the way MLPerf's ``accuracy_kits.py`` computes it, without pandas.

Followed: MLCommons inference ``vision/medical_imaging/3d-unet-kits19/accuracy_kits.py``.
Per case, the response (uint8 labels, the case's D·H·W voxels in C order) is compared with
the preprocessed segmentation: for kidney (1) and tumour (2), background dropped,

    DICE = (2·|P∩T| + 1e-6) / (|T| + |P| + 1e-6)

in float64 (the script sums one-hot float64 arrays: exact integer counts, as ours are);
the case's composite is the mean of the two. The script stores the cases in a DataFrame,
adds the row ``df.fillna(0).mean()`` and prints ``Accuracy: mean = {:.5f}, kidney = {:.4f},
tumor = {:.4f}``: the column means over the cases, in sample order, which is what this
module computes (``np.sum`` over the column, divided by the count, as pandas does).

One case is decoded and scored at a time: a response and a label are tens of MB each,
and the accuracy log is read lazily (:func:`mlpi.core.contract.accuracy.read_accuracy_log`).
The script itself fails without every case in the log; mlpi scores the cases the log has
(a ``--count`` subset), in sample order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlpi.core.contract.accuracy import AccuracyResult
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import DatasetError

CLASSES = 3
SMOOTH_NUMERATOR = 1e-6
SMOOTH_DENOMINATOR = 1e-6


def dice_scores(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(kidney, tumour) DICE of one case's labels, as ``get_dice_score`` computes them."""
    if prediction.shape != target.shape:
        raise DatasetError(
            f"a prediction of shape {prediction.shape} cannot be scored against a label of shape {target.shape}",
            "score the accuracy log with the dataset the run used",
        )
    for name, labels in (("prediction", prediction), ("label", target)):
        if labels.size and int(labels.max()) >= CLASSES:
            raise DatasetError(
                f"a {name} holds class {int(labels.max())}, but KiTS19 has {CLASSES} classes (0, 1, 2)",
                "score the accuracy log of a 3D-UNet run with the dataset it used",
            )
    pairs = np.bincount((target.astype(np.uint8) * CLASSES + prediction.astype(np.uint8)).ravel(),
                        minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)  # [target, prediction]
    scores = []
    for c in range(1, CLASSES):
        intersection = float(pairs[c, c])
        target_sum = float(pairs[c, :].sum())
        prediction_sum = float(pairs[:, c].sum())
        scores.append((2.0 * intersection + SMOOTH_NUMERATOR) / (target_sum + prediction_sum + SMOOTH_DENOMINATOR))
    return scores[0], scores[1]


def kits_dice(responses: Mapping[int, bytes], dataset: Any, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    """Mean composite DICE over the logged cases, with ``accuracy_kits.py``'s line."""
    truth = dataset.ground_truth()
    if truth is None or not all(hasattr(truth, name) for name in ("cases", "shape", "label")):
        raise DatasetError(
            "this dataset gives no KiTS19 segmentation labels, so DICE cannot be computed",
            "score with --dataset kits19 and its --dataset-path",
        )
    count = len(truth.cases)
    indices = sorted(responses)
    if not indices:
        raise DatasetError("the accuracy log holds no responses", "score the log of a finished accuracy run")
    rows: list[tuple[float, float, float]] = []
    per_case: dict[str, dict[str, float]] = {}
    for index in indices:
        if not 0 <= index < count:
            raise DatasetError(
                f"the accuracy log names sample {index}, but the dataset has {count} cases",
                "score with the dataset (and --count) the run used",
            )
        shape = tuple(int(d) for d in truth.shape(index))
        data = responses[index]
        voxels = int(np.prod(shape, dtype=np.int64))
        if len(data) != voxels:
            raise DatasetError(
                f"the response of sample {index} ({truth.cases[index]}) has {len(data):,} bytes, "
                f"but its volume {list(shape)} has {voxels:,} voxels",
                "score the accuracy log with the dataset the run used",
            )
        prediction = np.frombuffer(data, np.uint8).reshape(shape)
        kidney, tumour = dice_scores(prediction, np.asarray(truth.label(index)))
        composite = float(np.mean([kidney, tumour]))
        rows.append((kidney, tumour, composite))
        per_case[str(truth.cases[index])] = {"kidney": kidney, "tumor": tumour, "composite": composite}
    table = np.asarray(rows, dtype=np.float64)
    kidney, tumour, composite = (float(np.sum(table[:, c]) / len(rows)) for c in range(3))
    line = f"Accuracy: mean = {composite:.5f}, kidney = {kidney:.4f}, tumor = {tumour:.4f}"
    return AccuracyResult(
        "mean DICE", composite, "", (line,),
        details={"kidney": kidney, "tumor": tumour, "cases": per_case, "total": len(rows)},
    )
