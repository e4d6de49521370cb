"""SQuAD v1.1 exact match and F1 from BERT's accuracy log, as MLPerf's scripts compute them.

Followed: MLCommons inference ``language/bert/accuracy-squad.py`` (``load_loadgen_log``:
each response is float32 ``[seq, 2]``, start and end logits interleaved, padded with
-10000 to 384; ``write_predictions`` with n-best 20, max answer length 30, lower case:
spans that start or end outside the context, outside the window that gives a token its
most context, backwards or longer than 30 pieces are dropped, the rest ranked by start +
end logit, ties kept in the order they were found; ``get_final_text``) and
``evaluate_v1.1.py`` (SQuAD's answer normalisation, the best exact match and F1 over the
reference answers, averaged over every question in file order; the printed line).

Only the best span's text is needed: the reference's n-best list and its de-duplication
never change its first entry. A run over the first N features (``--count``) is scored over
the questions those features cover; the reference script, given such a log, would count
every other question of the file as answered "empty". Our own code, proven equal to the scripts' output line on
known-answer logs (``tests/test_squad.py``).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpi.core.contract.accuracy import AccuracyResult
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.squad_features import basic_tokens

if TYPE_CHECKING:
    from mlpi.core.contract.backend import TensorSpec
    from mlpi.core.contract.dataset import Dataset
    from mlpi.datasets.squad import SquadTruth

N_BEST = 20
MAX_ANSWER_PIECES = 30
#: What the reference pads a short response with, and its sequence length.
PAD_LOGIT = -10000.0
SEQ_LEN = 384
#: The prediction of a question none of whose spans is valid (the reference's nonce).
NO_ANSWER = "empty"


def squad_f1(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    """The model scorer: predictions from the logits, then ``evaluate_v1.1.py``'s figures."""
    truth = dataset.ground_truth()
    if truth is None:
        raise DatasetError("this dataset has no SQuAD answers, so BERT's accuracy cannot be scored",
                           "use --dataset squad with its --dataset-path")
    predictions = predict(responses, truth)
    return evaluate(truth, predictions)


def logits_of(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits (float64, 384 long) of one response, as ``load_loadgen_log`` reads it."""
    if len(data) % 8:
        raise DatasetError(f"a BERT response of {len(data)} bytes is not float32 [seq, 2] pairs",
                           "score the accuracy log of a BERT run (3,072 bytes per sample)")
    pairs = np.frombuffer(data, dtype=np.float32).reshape(-1, 2)
    if len(pairs) > SEQ_LEN:
        raise DatasetError(f"a BERT response holds {len(pairs)} positions, more than {SEQ_LEN}",
                           "score the accuracy log of a BERT run (3,072 bytes per sample)")
    start = np.full(SEQ_LEN, PAD_LOGIT)
    end = np.full(SEQ_LEN, PAD_LOGIT)
    start[: len(pairs)] = pairs[:, 0]
    end[: len(pairs)] = pairs[:, 1]
    return start, end


def _best_indexes(logits: np.ndarray) -> np.ndarray:
    """The n-best positions, highest first, equal logits in position order (a stable sort)."""
    return np.argsort(-logits, kind="stable")[:N_BEST]


def predict(responses: Mapping[int, bytes], truth: SquadTruth) -> dict[str, str]:
    """``{question id: predicted text}`` for every question the samples cover, in file order."""
    features = truth.features
    by_example: dict[int, list[int]] = {}
    for f in range(truth.count):
        by_example.setdefault(int(features.example[f]), []).append(f)
    covered = range(len(truth.squad.examples)) if truth.count == features.count else sorted(by_example)
    predictions: dict[str, str] = {}
    for number in covered:
        example = truth.squad.examples[number]
        logits = [(f, *logits_of(responses[f])) for f in by_example.get(number, ()) if f in responses]
        if all(np.isfinite(start).all() and np.isfinite(end).all() for _, start, end in logits):
            best = _best_of(logits, truth)
        else:  # NaN or infinity: the reference's own sorts, whose order such values decide
            best = _best_as_sorted(logits, truth)
        predictions[example.qas_id] = NO_ANSWER if best is None else _answer_text(truth, number, *best[1:])
    return predictions


def _best_of(logits: list[tuple[int, np.ndarray, np.ndarray]], truth: SquadTruth) -> tuple[float, int, int, int] | None:
    """The best valid span over the question's windows; between equal scores, the first
    window's (with finite logits, what one stable sort of every candidate gives)."""
    best: tuple[float, int, int, int] | None = None  # score, feature, start, end
    for f, start, end in logits:
        candidate = _best_span(f, start, end, truth)
        if candidate is not None and (best is None or candidate[0] > best[0]):
            best = candidate
    return best


def _valid(truth: SquadTruth, f: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which (start, end) pairs the reference keeps: both in the window's context, the start
    where the window gives it its most context, not backwards, at most 30 pieces."""
    features = truth.features
    first = int(features.query_length[f]) + 2
    last = first + int(features.span_length[f]) - 1
    s = starts[:, None]
    e = ends[None, :]
    valid = (s >= first) & (s <= last) & (e >= first) & (e <= last) & (e >= s) & (e - s + 1 <= MAX_ANSWER_PIECES)
    return valid & features.max_context[f][starts][:, None]


def _best_span(f: int, start: np.ndarray, end: np.ndarray, truth: SquadTruth) -> tuple[float, int, int, int] | None:
    """The highest-scoring valid span of feature ``f`` (the first found among equals)."""
    starts = _best_indexes(start)
    ends = _best_indexes(end)
    candidates = np.flatnonzero(_valid(truth, f, starts, ends))  # row-major: the reference's loop order
    if not len(candidates):
        return None
    scores = (start[starts][:, None] + end[ends][None, :]).reshape(-1)[candidates]
    k = int(candidates[int(np.argmax(scores))])  # the first of equals, as a stable sort keeps it
    i, j = divmod(k, len(ends))
    return float(start[starts[i]] + end[ends[j]]), f, int(starts[i]), int(ends[j])


def _best_as_sorted(logits: list[tuple[int, np.ndarray, np.ndarray]], truth: SquadTruth) -> tuple[float, int, int, int] | None:
    """:func:`_best_of` done as the reference does it, with Python's sorts: where a logit is
    NaN their order is not a ranking, so only the same sorts give the same answer."""
    candidates: list[tuple[float, int, int, int]] = []
    for f, start, end in logits:
        starts_list, ends_list = start.tolist(), end.tolist()
        starts = np.asarray([i for i, _ in sorted(enumerate(starts_list), key=lambda x: x[1], reverse=True)[:N_BEST]])
        ends = np.asarray([i for i, _ in sorted(enumerate(ends_list), key=lambda x: x[1], reverse=True)[:N_BEST]])
        valid = _valid(truth, f, starts, ends)
        for i, s in enumerate(starts.tolist()):
            for j, e in enumerate(ends.tolist()):
                if valid[i, j]:
                    candidates.append((starts_list[s] + ends_list[e], f, s, e))
    if not candidates:
        return None
    return sorted(candidates, key=lambda c: c[0], reverse=True)[0]  # noqa: FURB192 - with NaN, max() picks differently


def _answer_text(truth: SquadTruth, number: int, f: int, start: int, end: int) -> str:
    """The words under span ``start..end`` of feature ``f``, trimmed as ``get_final_text`` does."""
    features = truth.features
    example = truth.squad.examples[number]
    paragraph = example.paragraph
    offset = int(features.span_start[f]) - (int(features.query_length[f]) + 2)
    pieces = features.pieces[paragraph][start + offset : end + offset + 1]
    word_of = features.piece_word[paragraph]
    words = truth.squad.paragraphs[paragraph][word_of[start + offset] : word_of[end + offset] + 1]
    text = " ".join(pieces).replace(" ##", "").replace("##", "")
    return final_text(" ".join(text.strip().split()), " ".join(words), truth.lower_case)


def final_text(predicted: str, original: str, lower_case: bool) -> str:
    """The part of ``original`` (the span's whole words) the normalised ``predicted`` pieces
    cover, aligned character by character once spaces are ignored; ``original`` itself
    when the alignment fails (the reference's ``get_final_text``)."""
    tokenized = " ".join(basic_tokens(original, lower_case))
    begin = tokenized.find(predicted)
    if begin == -1:
        return original
    finish = begin + len(predicted) - 1
    original_chars = [i for i, c in enumerate(original) if c != " "]
    tokenized_chars = [i for i, c in enumerate(tokenized) if c != " "]
    if len(original_chars) != len(tokenized_chars):
        return original
    position = {at: k for k, at in enumerate(tokenized_chars)}
    if begin not in position or finish not in position:
        return original
    return original[original_chars[position[begin]] : original_chars[position[finish]] + 1]


# -- evaluate_v1.1.py ----------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0
    precision = 1.0 * same / len(predicted)
    recall = 1.0 * same / len(expected)
    return (2 * precision * recall) / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def evaluate(truth: SquadTruth, predictions: Mapping[str, str]) -> AccuracyResult:
    """Mean best exact match and F1 (percent) over the questions scored, in file order; the
    line ``evaluate_v1.1.py`` prints."""
    covered = {truth.squad.examples[int(n)].qas_id for n in truth.features.example[: truth.count]}
    if truth.count == truth.features.count:
        covered = {example.qas_id for example in truth.squad.examples}
    total = 0
    matched: Any = 0
    overlap: Any = 0
    for example in truth.squad.examples:
        if example.qas_id not in covered:
            continue
        total += 1
        prediction = predictions.get(example.qas_id)
        if prediction is None:  # evaluate_v1.1.py: "Unanswered question ... will receive score 0."
            continue
        if not example.answers:  # evaluate_v1.1.py fails on it too (max of nothing)
            raise DatasetError(f"question {example.qas_id} has no reference answer", "score with SQuAD v1.1's dev set")
        matched += max(exact_match(prediction, answer) for answer in example.answers)
        overlap += max(f1(prediction, answer) for answer in example.answers)
    em = 100.0 * matched / total
    f1_percent = 100.0 * overlap / total
    line = json.dumps({"exact_match": em, "f1": f1_percent})
    return AccuracyResult(
        "F1", f1_percent, "%", (line,),
        details={"exact_match": em, "questions": total, "features": truth.count},
    )
