"""Accuracy from LoadGen's ``mlperf_log_accuracy.json``, computed the way MLPerf's scripts do.

The official scripts read every entry, keep the first one per ``qsl_idx`` (LoadGen may
send a sample twice), decode ``data`` with ``np.frombuffer(bytes.fromhex(...), dtype)``
and divide by the number of distinct samples. mlpi does exactly that, so its figure and
the official script's agree to the last printed digit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.errors import DatasetError, RunFailed


@dataclass(frozen=True)
class AccuracyResult:
    """One accuracy figure and how it compares with the quality target."""

    metric: str  # e.g. "top-1"
    value: float  # percent
    good: int
    total: int
    report: str  # the line the official script prints, written to accuracy.txt
    target: float | None = None  # percent the value must reach, when the model has a rule

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.value >= self.target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def read_accuracy_log(path: Path) -> dict[int, bytes]:
    """``{qsl_idx: response bytes}``, first entry per sample, as the official scripts keep."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFailed(f"cannot read the accuracy log {path}: {exc}", "the accuracy test did not finish; see harness.log") from None
    responses: dict[int, bytes] = {}
    for entry in entries:
        index = int(entry["qsl_idx"])
        if index not in responses:
            responses[index] = bytes.fromhex(entry["data"])
    return responses


def top1(
    responses: Mapping[int, bytes], labels: np.ndarray | None, dtype: str, *, target: float | None = None
) -> AccuracyResult:
    """Top-1 from responses whose first element (of ``dtype``) is the predicted class."""
    if labels is None:
        raise DatasetError("this dataset has no labels, so accuracy cannot be scored", "use a dataset with ground truth")
    good = 0
    for index, data in responses.items():
        if index >= len(labels):
            raise DatasetError(f"the accuracy log names sample {index}, but the dataset has {len(labels)} labels", "run again")
        found = int(np.frombuffer(data, dtype)[0])
        if found == int(labels[index]):
            good += 1
    total = len(responses)
    value = 100.0 * good / total if total else 0.0
    report = f"accuracy={value:.3f}%, good={good}, total={total}"
    return AccuracyResult("top-1", value, good, total, report, target)


def raw_top1(responses: Mapping[int, bytes], labels: np.ndarray | None, first_output: Any) -> AccuracyResult:
    """Top-1 for a model given only as a file: its first output is a class id (integer,
    one per sample) or a score per class (float, the arg-max is taken)."""
    dtype = np.dtype(first_output.dtype)
    width = int(np.prod([d or 1 for d in first_output.sample_shape], dtype=np.int64))
    if labels is None:
        raise DatasetError("this dataset has no labels, so accuracy cannot be scored", "add labels to the dataset")
    decoded = {}
    for index, data in responses.items():
        values = np.frombuffer(data[: width * dtype.itemsize], dtype)
        decoded[index] = np.asarray([values[0] if dtype.kind in "iu" or width == 1 else values.argmax()], np.int64).tobytes()
    return top1(decoded, labels, "int64")
