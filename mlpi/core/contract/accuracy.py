"""Accuracy from LoadGen's ``mlperf_log_accuracy.json``, computed the way MLPerf's scripts do.

The official scripts read every entry, keep one per ``qsl_idx`` (LoadGen may send a sample
twice: most scripts keep the first, BERT's the last) and decode ``data`` with
``np.frombuffer(bytes.fromhex(...), dtype)``. :func:`read_accuracy_log` gives exactly that
mapping; each model's scorer turns it into an
:class:`AccuracyResult` in its own metric (top-1 %, mAP %, F1, mean DICE, AUC, WER...).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.errors import DatasetError, RunFailed


@dataclass(frozen=True)
class AccuracyResult:
    """One accuracy figure, the lines the official script prints, and the target it is held to.

    - ``metric`` / ``value`` / ``unit``: e.g. ``"mAP"``, ``37.57``, ``"%"``; or ``"mean DICE"``,
      ``0.8617``, ``""``.
    - ``higher_is_better``: False for error rates (WER).
    - ``lines``: exactly what MLCommons' accuracy script prints as its result, written to
      ``accuracy.txt``.
    - ``target``: the value a valid result must reach (filled from the model's rules).
    - ``details``: further figures the scorer knows (``good``/``total``, per-class values...).
    """

    metric: str
    value: float
    unit: str
    lines: tuple[str, ...]
    higher_is_better: bool = True
    target: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> str:
        """The official line(s) as one text."""
        return "\n".join(self.lines)

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def with_target(self, target: float | None) -> AccuracyResult:
        return replace(self, target=target)

    def describe(self) -> str:
        """``mAP 37.570% (target 37.175%) PASS``: how mlpi prints it."""
        text = f"{self.metric} {format_value(self.value, self.unit)}"
        if self.target is not None:
            text += f" (target {'>=' if self.higher_is_better else '<='} {format_value(self.target, self.unit)})"
            text += " PASS" if self.passed else " FAIL"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "passed": self.passed,
            "report": self.report,
            "lines": list(self.lines),
            **{k: v for k, v in self.details.items() if k not in ("metric", "value", "unit", "target", "passed")},
        }


def format_value(value: float, unit: str) -> str:
    return f"{value:.3f}%" if unit == "%" else f"{value:.5f}{(' ' + unit) if unit else ''}"


#: Which response of a sample logged more than once a model's official script scores.
REPEATED_RESPONSES = ("first", "last")


def read_accuracy_log(path: Path, keep: str = "first") -> Mapping[int, bytes]:
    """``{qsl_idx: response bytes}``, the ``keep`` (first or last) entry per sample, as the
    model's official script keeps.

    A log in LoadGen's own layout is indexed, not parsed: responses are decoded from the
    mapped file when a scorer asks for them, so a log of 43 whole 3D-UNet volumes (GBs of
    hex) is never held in memory, let alone twice. Any other JSON is parsed whole.
    """
    if keep not in REPEATED_RESPONSES:
        raise ValueError(f"keep must be one of {', '.join(REPEATED_RESPONSES)}, not {keep!r}")
    try:
        indexed = _IndexedLog.open(path, keep)
    except _CutShort:
        raise RunFailed(f"cannot read the accuracy log {path}: it ends before its closing bracket (cut short)",
                        "the accuracy test did not finish; see harness.log") from None
    except FileNotFoundError:
        raise RunFailed(f"there is no accuracy log at {path}", "give a run directory or mlperf_log_accuracy.json of an accuracy run") from None
    except (OSError, ValueError):
        indexed = None
    if indexed is not None:
        return indexed
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFailed(f"there is no accuracy log at {path}", "give a run directory or mlperf_log_accuracy.json of an accuracy run") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFailed(f"cannot read the accuracy log {path}: {exc}", "the accuracy test did not finish; see harness.log") from None
    if not isinstance(entries, list):
        raise RunFailed(f"{path} is not a LoadGen accuracy log (a JSON list)", "give the mlperf_log_accuracy.json LoadGen wrote")
    responses: dict[int, bytes] = {}
    for number, entry in enumerate(entries):
        try:
            index = int(entry["qsl_idx"])
            if keep == "last" or index not in responses:
                responses[index] = bytes.fromhex(entry["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFailed(
                f"entry {number} of {path} is not a LoadGen accuracy record ({type(exc).__name__}: {exc})",
                "give the mlperf_log_accuracy.json LoadGen wrote, unedited",
            ) from None
    return responses


#: One record as LoadGen writes it, and what follows it (``,`` or the closing ``]``).
_RECORD = re.compile(
    rb'\s*\{\s*"seq_id"\s*:\s*\d+\s*,\s*"qsl_idx"\s*:\s*(\d+)\s*,\s*"data"\s*:\s*"([0-9A-Fa-f]*)"\s*\}\s*([,\]])'
)
_OPEN = re.compile(rb"\s*\[")
_EMPTY = re.compile(rb"\s*\[\s*\]\s*\Z")
_END = re.compile(rb"\s*\Z")


class _CutShort(Exception):
    """The log does not end with ``]``: no JSON parser could read it, so none is run on it."""


class _IndexedLog(Mapping[int, bytes]):
    """The kept record's hex span per sample in a memory-mapped log; decoded on access."""

    def __init__(self, mapped: mmap.mmap | bytes, spans: dict[int, tuple[int, int]]) -> None:
        self._mapped = mapped
        self._spans = spans

    @classmethod
    def open(cls, path: Path, keep: str) -> _IndexedLog | None:
        """The index, or None when the file is not in LoadGen's layout (parse it as JSON)."""
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            mapped: mmap.mmap | bytes = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if size and not mapped[max(0, size - 4096) :].rstrip().endswith(b"]"):
            raise _CutShort()
        if _EMPTY.match(mapped):
            return cls(mapped, {})
        start = _OPEN.match(mapped)
        if start is None:
            return None
        spans: dict[int, tuple[int, int]] = {}
        position = start.end()
        while True:
            record = _RECORD.match(mapped, position)
            if record is None:
                return None
            index = int(record.group(1))
            if (record.end(2) - record.start(2)) % 2:
                return None  # odd hex: the JSON path names the record
            if keep == "last" or index not in spans:
                spans[index] = record.span(2)
            position = record.end()
            if record.group(3) == b"]":
                break
        return cls(mapped, spans) if _END.match(mapped, position) else None

    def __getitem__(self, index: int) -> bytes:
        start, end = self._spans[index]
        return bytes.fromhex(self._mapped[start:end].decode("ascii"))

    def __contains__(self, index: object) -> bool:
        return index in self._spans

    def __iter__(self) -> Iterator[int]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


def top1(responses: Mapping[int, bytes], labels: np.ndarray | None, dtype: str) -> AccuracyResult:
    """Top-1 from responses whose first element (of ``dtype``) is the predicted class; the
    line is ``accuracy-imagenet.py``'s."""
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
    line = f"accuracy={value:.3f}%, good={good}, total={total}"
    return AccuracyResult("top-1", value, "%", (line,), details={"good": good, "total": total})


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
