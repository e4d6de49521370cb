"""RNN-T's word error rate, as MLPerf's ``accuracy_eval.py`` computes it.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt/`` —
``accuracy_eval.py`` (responses are label ids, decoded with
``array.array("q", ...)`` for ``--output_dtype int64``; the printed line),
``pytorch/helpers.py`` (``__gather_predictions``: ids joined into text through the labels)
and ``pytorch/metrics.py`` (``word_error_rate``: word-level Levenshtein distances summed over
the samples, divided by the summed reference word counts; ``inf`` when there are none). The
references are the dataset's transcripts, normalised by :mod:`mlpi.datasets.librispeech_text`.

The scorer sums over the samples of the accuracy log as :func:`read_accuracy_log` gives
them (one response per sample). The script sums over every log entry, so a sample logged
twice would count twice there; LoadGen's accuracy mode logs each sample once.
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

#: What a response holds per sample: label ids, native int64 (``--output_dtype int64``).
RESPONSE_DTYPE = np.dtype(np.int64)

# --------------------------------------------------------------------------- word error rate


def word_distance(hypothesis: Sequence[str], reference: Sequence[str]) -> int:
    """Word-level Levenshtein distance: substitutions, insertions and deletions, each costing 1."""
    start = 0
    while start < min(len(hypothesis), len(reference)) and hypothesis[start] == reference[start]:
        start += 1
    end = 0  # a common prefix and suffix never change the distance: skip them
    while end < min(len(hypothesis), len(reference)) - start and hypothesis[-1 - end] == reference[-1 - end]:
        end += 1
    hypothesis = hypothesis[start : len(hypothesis) - end]
    reference = reference[start : len(reference) - end]
    if len(hypothesis) < len(reference):
        hypothesis, reference = reference, hypothesis
    row = list(range(len(reference) + 1))
    for i, word in enumerate(hypothesis, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(reference, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, int, int]:
    """``(wer, errors, reference words)`` over pairs of texts split on whitespace; ``wer`` is
    ``inf`` when the references hold no word, as ``metrics.word_error_rate`` gives."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    errors = words = 0
    for hypothesis, reference in zip(hypotheses, references):
        reference_words = reference.split()
        words += len(reference_words)
        errors += word_distance(hypothesis.split(), reference_words)
    return ((1.0 * errors) / words if words else float("inf")), errors, words


def wer_line(wer: float) -> str:
    """``accuracy_eval.py``'s line: both figures as Python prints a float."""
    return f"Word Error Rate: {wer * 100!s}%, accuracy={(1 - wer) * 100!s}%"


# --------------------------------------------------------------------------- the scorer


def decode_response(index: int, data: bytes, labels: Sequence[str]) -> str:
    """One response (int64 label ids) as text."""
    if len(data) % RESPONSE_DTYPE.itemsize:
        raise DatasetError(f"the response of sample {index} has {len(data)} bytes, not a whole number of int64 label ids",
                           "score the accuracy log of an RNN-T run (its responses are int64 label ids)")
    ids = np.frombuffer(data, RESPONSE_DTYPE)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(labels)):
        bad = int(ids[(ids < 0) | (ids >= len(labels))][0])
        raise DatasetError(f"the response of sample {index} holds label id {bad}, but there are {len(labels)} labels "
                           f"(0..{len(labels) - 1})", "score the accuracy log of an RNN-T run with the labels it used")
    return "".join(labels[i] for i in ids.tolist())


def librispeech_wer(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    """WER over the logged samples, with ``accuracy_eval.py``'s line."""
    truth = dataset.ground_truth()
    if truth is None or not all(hasattr(truth, name) for name in ("labels", "transcript", "text")):
        raise DatasetError("this dataset gives no LibriSpeech transcripts, so the word error rate cannot be computed",
                           "score with --dataset librispeech and its --dataset-path")
    if not responses:
        raise DatasetError("the accuracy log holds no responses", "score the log of a finished accuracy run")
    labels = tuple(truth.labels)
    count = len(truth)
    hypotheses: list[str] = []
    references: list[str] = []
    for index, data in responses.items():
        if not 0 <= index < count:
            raise DatasetError(f"the accuracy log names sample {index}, but the dataset has {count} utterances",
                               "score with the dataset (and --count) the run used")
        hypotheses.append(decode_response(index, data, labels))
        references.append(truth.text(index))
    wer, errors, words = word_error_rate(hypotheses, references)
    return AccuracyResult("WER", wer * 100, "%", (wer_line(wer),), higher_is_better=False,
                          details={"errors": errors, "words": words, "samples": len(hypotheses)})
