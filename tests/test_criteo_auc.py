"""DLRM-v2's AUC scorer: known answers by construction, scikit-learn's roc_auc_score on many
ties, MLCommons' accuracy-dlrm.py on logs written as LoadGen writes them (character for
character), and the errors a broken log meets."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.accuracy import read_accuracy_log
from mlpi.core.contract.errors import DatasetError
from mlpi.models.criteo_auc import criteo_auc, roc_auc
from mlpi.testing.openimages_fixture import write_accuracy_log

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
DLRM_TOOLS = SHARED / "recommendation" / "dlrm_v2" / "pytorch" / "tools"
#: The scorer reads its labels from the log, never from the dataset.
NO_DATASET: Any = None


def rows(predictions: Any, labels: Any) -> bytes:
    """One response: float32 ``[prediction, label]`` pairs."""
    return np.stack([np.asarray(predictions, np.float32), np.asarray(labels, np.float32)], axis=1).tobytes()


def score(responses: dict[int, bytes]) -> Any:
    return criteo_auc(responses, NO_DATASET, ())


def line(predictions: Any, labels: Any, samples: int = 1) -> str:
    """The line for ``predictions``/``labels`` split over ``samples`` responses."""
    parts = np.array_split(np.arange(len(labels)), samples)
    p, t = np.asarray(predictions), np.asarray(labels)
    return score({i: rows(p[part], t[part]) for i, part in enumerate(parts)}).lines[0]


def sklearn_missing() -> str | None:
    if importlib.util.find_spec("sklearn") is None:
        return "scikit-learn is not installed (accuracy-dlrm.py and the comparison need it)"
    return None


# -- known answers ----------------------------------------------------------------------------


def test_perfect_and_reversed_rankings() -> None:
    labels = [0, 0, 0, 1, 1]
    assert line([0.1, 0.2, 0.3, 0.8, 0.9], labels) == "AUC=100.000%, accuracy=100.000%, good=5, total=5, queries=1"
    assert line([0.9, 0.8, 0.7, 0.2, 0.1], labels) == "AUC=0.000%, accuracy=0.000%, good=0, total=5, queries=1"


def test_interleaved_ranking_is_three_quarters() -> None:
    result = score({7: rows([0.9, 0.8], [1, 0]), 3: rows([0.7, 0.6], [1, 0])})
    assert result.details["auc"] == 0.75
    assert (result.metric, result.value, result.unit, result.higher_is_better) == ("AUC", 75.0, "%", True)
    assert result.lines == ("AUC=75.000%, accuracy=50.000%, good=2, total=4, queries=2",)
    assert result.with_target(0.99 * 80.31).passed is False


def test_ties_count_one_half() -> None:
    assert line([0.3] * 6, [0, 1, 0, 1, 1, 0]).startswith("AUC=50.000%,")
    # one positive tied with one of two negatives, above the other: (1 + 1/2) / 2
    assert score({0: rows([0.4, 0.4, 0.1], [1, 0, 0])}).details["auc"] == 0.75


def test_accuracy_rounds_half_to_even() -> None:
    below, above = np.nextafter(np.float32(0.5), np.float32(0)), np.nextafter(np.float32(0.5), np.float32(1))
    predictions = [0.5, 0.5, below, above, above, 0.0, 1.0]
    labels = [0, 1, 0, 1, 0, 0, 1]  # good: 0.5->0 yes, 0.5->0 no, below->0 yes, above->1 yes, no, yes, yes
    result = score({0: rows(predictions, labels)})
    assert (result.details["good"], result.details["total"]) == (5, 7)
    assert result.lines[0].split(", ")[1] == f"accuracy={100 * 5 / 7:.3f}%"


def test_samples_are_counted_not_their_order() -> None:
    rng = np.random.default_rng(4)
    responses = {i: rows(rng.random(n), rng.integers(0, 2, n)) for i, n in enumerate(rng.integers(1, 30, 40))}
    responses[40] = b""  # a sample of no rows is still a query, as in the script
    shuffled = list(responses.items())
    random.Random(1).shuffle(shuffled)
    first, second = score(responses), score(dict(shuffled))
    assert first.lines == second.lines and first.details["auc"] == second.details["auc"]
    assert first.details["queries"] == 41


def test_auc_of_one_group_grown_past_the_first_guess() -> None:
    """One sample far longer than the buffer's first guess (256 rows a sample) still counts whole."""
    rng = np.random.default_rng(5)
    predictions, labels = rng.random(5000).astype(np.float32), rng.integers(0, 2, 5000)
    whole = score({0: rows(predictions, labels)})
    assert whole.details["total"] == 5000
    assert whole.details["auc"] == roc_auc(labels == 1, predictions)
    assert whole.lines == (line(predictions, labels, samples=37).replace("queries=37", "queries=1"),)


# -- scikit-learn and MLCommons' script ---------------------------------------------------------


def test_equals_sklearn_on_many_ties() -> None:
    if (reason := sklearn_missing()) is not None:
        pytest.skip(reason)
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    n = 200_000
    predictions = np.round(rng.random(n), 3).astype(np.float32)  # ~1,000 distinct scores: long ties
    labels = (rng.random(n) < 0.2 + 0.5 * predictions).astype(np.float32)
    ours = score({0: rows(predictions[:70_000], labels[:70_000]), 1: rows(predictions[70_000:], labels[70_000:])})
    theirs = roc_auc_score(labels, predictions)
    assert 0.6 < theirs < 0.9
    assert abs(ours.details["auc"] - theirs) < 1e-12
    wide = rng.random(n)  # distinct scores, float64
    assert abs(roc_auc(labels == 1, wide) - roc_auc_score(labels, wide)) < 1e-12


def log_entries(seed: int) -> list[tuple[int, bytes]]:
    """~50 samples of 100-700 rows in shuffled order, scores correlated with labels and
    rounded to make ties; values at exactly .5; one sample logged twice with another payload."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in rng.permutation(50):
        n = int(rng.integers(100, 701))
        labels = (rng.random(n) < 0.1 + 0.1 * seed).astype(np.float32)
        predictions = np.clip(np.round(0.35 * labels + 0.8 * rng.random(n), 2 + seed % 2), 0, 1).astype(np.float32)
        predictions[: 1 + seed] = 0.5
        entries.append((int(index), rows(predictions, labels)))
    repeated = entries[seed][0]
    entries.insert(30, (repeated, rows(np.ones(400), np.zeros(400))))  # wrong on every row: "last" would show it
    return entries


@pytest.fixture(scope="module")
def official() -> Any:
    if (reason := sklearn_missing()) is not None:
        pytest.skip(reason)
    if not (DLRM_TOOLS / "accuracy-dlrm.py").is_file():
        pytest.skip(f"MLCommons' accuracy-dlrm.py is not at {DLRM_TOOLS} (the shared mlcommons-inference folder is absent)")

    def run(log: Path) -> str:
        proc = subprocess.run([sys.executable, "accuracy-dlrm.py", "--mlperf-accuracy-file", str(log)], cwd=DLRM_TOOLS,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        found = [text for text in proc.stdout.splitlines() if text.startswith("AUC=")]
        assert len(found) == 1, proc.stdout
        return found[0]

    return run


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_line_equals_accuracy_dlrm(official: Any, seed: int, tmp_path: Path) -> None:
    log = write_accuracy_log(tmp_path / "mlperf_log_accuracy.json", log_entries(seed))
    ours = score(dict(read_accuracy_log(log, "first")))
    assert ours.lines == (official(log),)
    assert ours.details["queries"] == 50
    last = score(dict(read_accuracy_log(log, "last")))
    assert last.lines != ours.lines  # the repeated sample's payloads differ: first-wins is what was compared


# -- errors ------------------------------------------------------------------------------------


def one_error(responses: dict[int, bytes], *words: str) -> DatasetError:
    with pytest.raises(DatasetError) as excinfo:
        score(responses)
    error = excinfo.value
    assert error.hint and "\n" not in error.message, (error.message, error.hint)
    for word in words:
        assert word in error.message, (word, error.message)
    return error


def test_response_not_whole_pairs() -> None:
    error = one_error({0: rows([0.2], [1]), 12: rows([0.3], [0]) + b"\0\0\0\0"}, "sample 12", "12 bytes")
    assert "[prediction, label]" in (error.hint or "")


def test_label_neither_zero_nor_one() -> None:
    one_error({0: rows([0.2, 0.3], [1, 0]), 5: rows([0.2, 0.3, 0.4], [0, 1, 2])}, "sample 5", "row 2", "label 2.0")


def test_non_finite_prediction() -> None:
    one_error({3: rows([0.2, np.nan], [1, 0]), 4: rows([0.1], [0])}, "sample 3", "row 1", "nan")
    one_error({3: rows([0.2, 0.1], [1, 0]), 4: rows([np.inf], [0])}, "sample 4", "row 0", "inf")


def test_one_class_only() -> None:
    one_error({0: rows([0.2, 0.9], [1, 1]), 1: rows([0.4], [1])}, "only one class", "3 rows", "label 1")
    one_error({0: rows([0.2, 0.9], [0, 0])}, "only one class", "label 0")


def test_no_rows() -> None:
    one_error({}, "no responses")
    one_error({0: b"", 1: b""}, "no rows")
