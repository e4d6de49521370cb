"""A short calibration pass: how fast is this SUT, so LoadGen's expectations are real.

LoadGen pre-generates its queries from the expected QPS (Offline, Server) or latency
(SingleStream, MultiStream); a wrong guess ends the run early as INVALID. mlpi never
guesses: it measures the sessions on the loaded samples first, unless the user says.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence

from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY
from mlpi.core.engine.scenario import Expectations
from mlpi.core.engine.sut import BatchExecutor

#: Server's target QPS, when the user gives none, as a fraction of calibrated throughput.
SERVER_TARGET_FRACTION = 0.4
#: What LoadGen, the hand-off to a worker and Python add per Server query beyond the
#: session's own time (calibration runs without LoadGen); measured on a 2-core machine,
#: rounded up so that small CPU models stay within their latency bound.
SERVER_QUERY_OVERHEAD_S = 40e-6
#: The same for each Offline sample (LoadGen's bookkeeping and the response). It matters
#: only for near-free models (the null backend): measured at 0.25-1 us on 2-core machines.
#: Too high caps the expected QPS below what LoadGen achieves and the run ends INVALID
#: before its minimum duration; too low makes LoadGen generate (and hold in memory) far
#: more samples than the run needs. 1 us made 10 s null-backend runs INVALID on a machine
#: where LoadGen reached 2.3-3.6M samples/s from run to run; 0.35 us gave VALID runs there,
#: with LoadGen holding about 6.6 GB for a 10 s run.
OFFLINE_SAMPLE_OVERHEAD_S = 0.35e-6


#: What LoadGen and the issue callback add to a SingleStream/MultiStream query beyond the
#: session's time (about 5 us on a 2-core machine; kept below that, since an expected
#: latency that is too long makes LoadGen generate too few queries). LoadGen generates
#: min_duration / expected latency queries up front, a few KB each: a sub-microsecond
#: expectation for a trivial model would make it allocate gigabytes.
INLINE_QUERY_OVERHEAD_S = 3e-6


#: Timed batches per session at the least, however long they take.
MIN_TIMED_BATCHES = 3


def calibrate(
    executors: Sequence[BatchExecutor],
    scenario: str,
    indices: Sequence[int],
    seconds: float,
    target_qps: float | None,
) -> Expectations:
    """Measure what ``scenario`` needs on ``indices`` (loaded samples) for ``seconds``."""
    throughput = latency = ms_latency = 0.0
    if scenario in ("Offline", "Server") and target_qps is None:
        throughput = _throughput(executors, indices, seconds)
    if scenario == "SingleStream":
        latency = _latency(executors[0], indices, 1, seconds) + INLINE_QUERY_OVERHEAD_S
    if scenario == "MultiStream":
        ms_latency = _latency(executors[0], indices, MULTISTREAM_SAMPLES_PER_QUERY, seconds) + INLINE_QUERY_OVERHEAD_S
    if target_qps is not None:
        return Expectations(target_qps, latency, ms_latency, target_qps, "user (--target-qps)")
    if throughput <= 0:
        return Expectations(0.0, latency, ms_latency, 0.0, "calibration")
    offline = 1.0 / (1.0 / throughput + OFFLINE_SAMPLE_OVERHEAD_S)
    server = SERVER_TARGET_FRACTION / (1.0 / throughput + SERVER_QUERY_OVERHEAD_S)
    return Expectations(offline, latency, ms_latency, server, "calibration")


def _batches(indices: Sequence[int], size: int, offset: int, executor: BatchExecutor | None = None) -> list[Sequence[int]]:
    """Batches of ``size`` samples over the pool from ``offset`` on; where the executor's
    samples are groups of rows, the pool from ``offset`` cut as the executor cuts queries."""
    pool = list(indices)
    if executor is not None and executor.sample_rows is not None:
        start = offset % len(pool)
        rotated = pool[start:] + pool[:start]
        return [rotated[a:b] for a, b in executor.cuts(rotated)]
    out = []
    for k in range(max(1, len(pool) // max(size, 1))):
        start = (offset + k * size) % len(pool)
        batch = (pool + pool)[start : start + size] if size <= len(pool) else (pool * (size // len(pool) + 1))[:size]
        out.append(batch)
    return out


def _throughput(executors: Sequence[BatchExecutor], indices: Sequence[int], seconds: float) -> float:
    counts = [0] * len(executors)
    for k, ex in enumerate(executors):  # warm-up, not timed: first touches of data and buffers
        for batch in _batches(indices, ex.batch_size, k * ex.batch_size, ex)[:2]:
            ex.compute(batch)
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def loop(k: int, ex: BatchExecutor) -> None:
        batches = _batches(indices, ex.batch_size, k * ex.batch_size, ex)
        done = runs = 0
        try:
            while True:
                for batch in batches:
                    ex.compute(batch)
                    done += len(batch)
                    runs += 1
                    # At least MIN_TIMED_BATCHES: one slow batch alone says little.
                    if time.perf_counter() >= deadline and runs >= MIN_TIMED_BATCHES:
                        counts[k] = done
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k, ex)) for k, ex in enumerate(executors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts) / max(time.perf_counter() - start, 1e-9)


def _latency(executor: BatchExecutor, indices: Sequence[int], size: int, seconds: float) -> float:
    samples: list[float] = []
    batches = _batches(indices, size, 0)
    bs = executor.batch_size
    for batch in batches[:2]:  # warm-up, not timed
        executor.compute(batch[:bs])
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 3:
        for batch in batches:
            t0 = time.perf_counter()
            for start, stop in executor.cuts(batch):
                executor.compute(batch[start:stop])
            samples.append(time.perf_counter() - t0)
            if time.perf_counter() >= deadline and len(samples) >= 3:
                break
    return statistics.median(samples)
