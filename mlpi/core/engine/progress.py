"""Live progress of a test: what phase it is in, how long it should take, how much is done.

A test runs in a child process for seconds to many minutes (3D-UNet's windows, an official
600 s run, a slow MultiStream). The child writes ``progress.json`` into its test folder —
atomically, at each phase and every few seconds while LoadGen runs — and the parent, waiting
for it, shows the figures: the phase, the elapsed and expected seconds, samples completed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROGRESS = "progress.json"
#: Seconds between two progress writes while LoadGen runs.
PERIOD_S = 2.0


def write_progress(out: Path, **fields: Any) -> None:
    """Replace the test's progress with ``fields`` (never fails the test: progress is a courtesy)."""
    from mlpi.core.results.rundir import write_json_atomic

    try:
        write_json_atomic(out / PROGRESS, {"at": time.time(), **fields})
    except OSError:
        pass


def read_progress(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def expected_seconds(settings: Any, scenario: str, mode: str, samples: int) -> float:
    """About how long LoadGen's test will take, from the settings it runs with (``samples``:
    the data set's, which an accuracy test issues once each)."""
    duration = settings.min_duration_ms / 1e3
    minimum = max(int(settings.min_query_count), 1)
    if scenario in ("Offline", "Server"):
        qps = settings.offline_expected_qps if scenario == "Offline" else settings.server_target_qps
        if qps <= 0:
            return duration
        return samples / qps if mode == "accuracy" else max(duration, minimum / qps)
    latency = (settings.single_stream_expected_latency_ns if scenario == "SingleStream"
               else settings.multi_stream_expected_latency_ns) / 1e9
    if mode == "accuracy":
        per_query = 1 if scenario == "SingleStream" else max(int(settings.multi_stream_samples_per_query), 1)
        return samples / per_query * latency
    seconds = max(duration, minimum * latency)  # LoadGen stops once both are met
    if settings.max_query_count > 0:  # a cut query count (a quick run of a slow model) ends it sooner
        seconds = min(seconds, int(settings.max_query_count) * latency)
    return seconds


class LiveCounts:
    """Writes the samples completed so far every :data:`PERIOD_S` while LoadGen runs."""

    def __init__(self, out: Path, done: Callable[[], int], fields: dict[str, Any]) -> None:
        self.out, self.done, self.fields = out, done, fields
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mlpi-progress")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            write_progress(self.out, **self.fields, done=self.done())
            if self._stop.wait(PERIOD_S):
                return


def samples_done(executors: Sequence[Any]) -> Callable[[], int]:
    """Samples the executors have completed (their batch-size histograms)."""
    def count() -> int:
        return sum(size * n for ex in executors for size, n in enumerate(list(ex.sizes)))

    return count
