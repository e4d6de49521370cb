"""A test that cannot finish or cannot fit ends with one clear line instead of hanging or
running out of memory: the watchdog's rules, and LoadGen's memory estimate.

The watchdog is driven end to end by a backend that hangs in tests/test_faults.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlpi.core.contract.errors import UsageError
from mlpi.core.engine.loadgen_memory import (
    BYTES_PER_QUERY,
    check_fits,
    generated_queries,
)
from mlpi.core.engine.watchdog import FACTOR, FIRST_BATCH_S, MIN_S, Watchdog


class Counters:
    def __init__(self) -> None:
        self.started = self.finished = 0

    def __call__(self) -> tuple[int, int]:
        return self.started, self.finished


def watch(counters: Counters, limit: float | None) -> tuple[Watchdog, list[str], threading.Event]:
    fired: list[str] = []
    done = threading.Event()

    def fire(message: str) -> None:
        fired.append(message)
        done.set()

    dog = Watchdog([counters], fire, limit, period_s=0.02)
    dog.start()
    return dog, fired, done


def test_a_batch_in_flight_that_never_finishes_fires() -> None:
    counters = Counters()
    counters.started = 1
    dog, fired, done = watch(counters, 0.2)
    assert done.wait(5), "the watchdog did not fire"
    dog.stop()
    assert "1 in flight" in fired[0] and "limit is 0.2 s" in fired[0]


def test_idle_time_between_queries_is_not_a_hang() -> None:
    counters = Counters()
    dog, fired, _ = watch(counters, 0.1)
    time.sleep(0.5)  # nothing in flight: LoadGen waiting for the next query
    counters.started = 1
    time.sleep(0.05)  # the clock starts with the batch, not with the idle time before it
    counters.finished = 1
    time.sleep(0.3)
    dog.stop()
    assert fired == []


def test_progress_keeps_it_quiet_even_when_the_run_is_long() -> None:
    counters = Counters()
    dog, fired, _ = watch(counters, 0.2)
    for _ in range(40):  # 0.8 s in all, a batch every 20 ms, always one in flight
        counters.started += 1
        time.sleep(0.02)
        counters.finished += 1
    dog.stop()
    assert fired == []


def test_the_limit_follows_the_measured_batch_unless_the_user_set_it() -> None:
    default = Watchdog([], lambda _: None, None)
    assert default.limit_s == FIRST_BATCH_S
    default.measured(0.01)
    assert default.limit_s == MIN_S
    default.measured(10.0)
    assert default.limit_s == FACTOR * 10.0
    chosen = Watchdog([], lambda _: None, 7.0)
    chosen.measured(10.0)
    assert chosen.limit_s == 7.0


def test_zero_turns_it_off() -> None:
    counters = Counters()
    counters.started = 1
    dog, fired, done = watch(counters, 0)
    assert not done.wait(0.3) and fired == [] and dog._thread is None
    dog.stop()


# --------------------------------------------------------------------------- LoadGen's memory


def test_generated_queries_follow_rate_latency_and_minimum() -> None:
    assert generated_queries("Offline", qps=1000, duration_s=10) == 11000
    assert generated_queries("Offline", qps=1, duration_s=10, min_queries=24576) == 24576
    assert generated_queries("SingleStream", latency_s=0.01, duration_s=60) == 6600
    assert generated_queries("Server", qps=float("inf"), duration_s=1) > 2**60


def test_a_test_that_cannot_fit_is_refused_with_the_ways_on() -> None:
    check_fits("Offline", 1000, 10**9, "x")  # fits
    check_fits("Offline", 10**12, None, "x")  # unknown memory: nothing refused
    with pytest.raises(UsageError) as refused:
        check_fits("Offline", 100_000_000, 10 * 10**9, "2,000,000 samples/s for 600 s")
    message = refused.value.message
    assert f"{100_000_000 * BYTES_PER_QUERY / 1e9:,.1f} GB" in message and "100,000,000 samples" in message
    assert "--duration" in (refused.value.hint or "") and "--target-qps" in (refused.value.hint or "")


def test_an_impossible_target_qps_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from mlpi.testing.tiny_models import matmul_model

    model = matmul_model(tmp_path / "mm.onnx")
    done = subprocess.run([sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(model),
                           "--target-qps", "1e9", "--quick", "--output", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(errors) == 1 and "LoadGen hold about" in errors[0] and "--target-qps 1,000,000,000" in errors[0]
    assert not (tmp_path / "results").exists() or not any(p.is_dir() for p in (tmp_path / "results").iterdir())
