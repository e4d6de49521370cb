"""Batches that count rows, for datasets whose samples are groups of rows (DLRM's users).

The SUTs, the dispatcher and calibration cut by rows when the executors know each sample's
row count: no batch holds more than ``batch_size`` rows unless it is one sample alone, every
sample is answered once, and a Server batch fills by rows, not samples.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from mlpi.core.contract.pipeline import Pipeline
from mlpi.core.contract.postprocess import Responses
from mlpi.core.engine.calibrate import _batches
from mlpi.core.engine.dispatch import device_stats
from mlpi.core.engine.rows import cut_by_rows, first_cut, row_batch_size
from mlpi.core.engine.sut import BatchExecutor, InlineSUT, OfflineSUT, ServerSUT


class Response:
    def __init__(self, qid: int, data: int, size: int) -> None:
        self.id, self.data, self.size = qid, data, size


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: dict[int, bytes] = {}
        self.duplicates = 0

    def __call__(self, responses: list[Response]) -> None:
        with self.lock:
            for r in responses:
                self.duplicates += r.id in self.bytes
                self.bytes[r.id] = ctypes.string_at(r.data, r.size)


class RowEcho(Pipeline):
    """Answers each sample with its index repeated once per row (int32); records its batches."""

    def __init__(self, rows: np.ndarray, seen: list[list[int]], lock: threading.Lock) -> None:
        self.rows, self.seen, self.lock = rows, seen, lock

    @property
    def sample_nbytes(self) -> int | None:
        return None

    def __call__(self, indices: Sequence[int]) -> Responses:
        with self.lock:
            self.seen.append(list(indices))
        return Responses.from_arrays([np.full(int(self.rows[i]), i, dtype=np.int32) for i in indices])


def executors(rows: np.ndarray, limit: int, count: int = 1) -> tuple[list[BatchExecutor], Recorder, list[list[int]], list[BaseException]]:
    recorder, seen, errors, lock = Recorder(), [], [], threading.Lock()
    made = [
        BatchExecutor(None, None, None, limit, recorder, Response, errors.append,  # type: ignore[arg-type]
                      device=f"unit{k % 2}", pipeline=RowEcho(rows, seen, lock), sample_rows=rows)
        for k in range(count)
    ]
    return made, recorder, seen, errors


def check_batches(seen: list[list[int]], rows: np.ndarray, limit: int) -> None:
    for batch in seen:
        total = int(rows[batch].sum())
        assert total <= limit or len(batch) == 1, f"a batch of {total} rows over {len(batch)} samples (limit {limit})"


def check_answers(recorder: Recorder, ids: list[int], indices: list[int], rows: np.ndarray) -> None:
    assert recorder.duplicates == 0
    assert sorted(recorder.bytes) == sorted(ids)
    for qid, index in zip(ids, indices):
        assert recorder.bytes[qid] == np.full(int(rows[index]), index, dtype=np.int32).tobytes()


# ------------------------------------------------------------------ cutting


@pytest.mark.parametrize(("rows", "limit", "cuts"), [
    ([300, 300, 300], 512, [(0, 1), (1, 2), (2, 3)]),
    ([100, 200, 300, 100], 600, [(0, 3), (3, 4)]),
    ([700, 10, 10], 512, [(0, 1), (1, 3)]),
    ([5], 1, [(0, 1)]),
    ([], 8, []),
])
def test_cuts_hold_at_most_the_limit_in_rows(rows: list[int], limit: int, cuts: list[tuple[int, int]]) -> None:
    assert cut_by_rows(np.array(rows, dtype=np.int64), limit) == cuts


def test_cuts_are_greedy_cover_everything_in_order() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = rng.integers(1, 800, size=int(rng.integers(1, 60)))
        limit = int(rng.integers(1, 2500))
        cuts = cut_by_rows(rows, limit)
        assert [a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == len(rows)
        for a, b in cuts:
            assert rows[a:b].sum() <= limit or b - a == 1
            if b < len(rows):  # greedy: the next sample would not have fitted
                assert rows[a : b + 1].sum() > limit


def test_first_cut_takes_what_fits_and_at_least_one() -> None:
    rows = np.array([0, 100, 200, 300, 700])
    assert first_cut(rows, [1, 2, 3], 300) == 2
    assert first_cut(rows, [1, 2, 3], 600) == 3
    assert first_cut(rows, [4, 1], 512) == 1
    assert first_cut(rows, [3], 10) == 1


def test_row_batch_size_holds_the_largest_sample_unless_told() -> None:
    assert row_batch_size(None, 8, 700, None) == 700
    assert row_batch_size(None, 4096, 700, None) == 4096
    assert row_batch_size(None, 8, 700, 256) == 256
    assert row_batch_size(64, 8, 700, None) == 64


# ------------------------------------------------------------------ the SUTs


ROWS = np.random.default_rng(3).integers(100, 701, size=64).astype(np.int64)


def query(n: int) -> tuple[list[int], list[int]]:
    return [5000 + k for k in range(n)], [(k * 11) % len(ROWS) for k in range(n)]


@pytest.mark.parametrize("slots", [1, 3])
def test_offline_cuts_the_query_by_rows(slots: int) -> None:
    made, recorder, seen, errors = executors(ROWS, 1000, slots)
    sut = OfflineSUT(made)
    sut.start()
    ids, indices = query(200)
    sut.issue(ids, indices)
    deadline = time.monotonic() + 10
    while len(recorder.bytes) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    sut.stop()
    assert not errors
    check_answers(recorder, ids, indices, ROWS)
    check_batches(seen, ROWS, 1000)
    # counting samples would have made batches of 1000 samples: one for the whole query
    assert len(seen) >= ROWS[indices].sum() // 1000


def test_inline_cuts_a_multistream_query_by_rows() -> None:
    made, recorder, seen, _ = executors(ROWS, 800)
    sut = InlineSUT(made[0], 8)
    ids, indices = query(8)
    sut.issue(ids, indices)
    check_answers(recorder, ids, indices, ROWS)
    check_batches(seen, ROWS, 800)
    assert len(seen) > 1


def test_server_batches_fill_by_rows() -> None:
    rows = np.full(32, 100, dtype=np.int64)
    made, recorder, seen, errors = executors(rows, 1000)
    sut = ServerSUT(made, 1000, timeout_s=5.0)  # a batch leaves full long before its deadline
    sut.start()
    ids, indices = [9000 + k for k in range(30)], list(range(30))
    for qid, index in zip(ids, indices):
        sut.issue([qid], [index])
    deadline = time.monotonic() + 4
    while len(recorder.bytes) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    sut.stop()
    assert not errors
    check_answers(recorder, ids, indices, rows)
    # 1000 rows are 10 samples of 100: three full batches, none waiting for the 5 s deadline
    assert [len(batch) for batch in seen] == [10, 10, 10]


def test_server_sends_a_sample_larger_than_the_limit_alone() -> None:
    rows = np.array([50, 900, 50, 50], dtype=np.int64)
    made, recorder, seen, _ = executors(rows, 100)
    sut = ServerSUT(made, 100, timeout_s=0.05)
    sut.start()
    ids, indices = [1, 2, 3, 4], [0, 1, 2, 3]
    sut.issue(ids, indices)
    deadline = time.monotonic() + 4
    while len(recorder.bytes) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    sut.stop()
    check_answers(recorder, ids, indices, rows)
    assert seen == [[0], [1], [2, 3]]


def test_calibration_batches_are_cut_by_rows() -> None:
    made, _, _, _ = executors(ROWS, 1500)
    batches = _batches(list(range(len(ROWS))), 1500, 7, made[0])
    assert sorted(i for batch in batches for i in batch) == list(range(len(ROWS)))
    for batch in batches:
        assert ROWS[batch].sum() <= 1500 or len(batch) == 1


def test_device_figures_report_rows() -> None:
    made, _, _, _ = executors(ROWS, 1000, 2)
    ids, indices = query(20)
    made[0].execute_chunked(ids[:10], indices[:10])
    made[1].execute_chunked(ids[10:], indices[10:])
    stats = {unit["device"]: unit for unit in device_stats(made, None, None)}
    assert stats["unit0"]["rows"] == int(ROWS[indices[:10]].sum())
    assert stats["unit1"]["rows"] == int(ROWS[indices[10:]].sum())
    assert stats["unit0"]["samples"] == 10
