"""The watchdog: a test whose backend stops answering ends as failed instead of hanging.

A backend that never returns from ``Session.run`` would hold ``mlpi run`` forever: LoadGen
waits for every sample it issued, calibration for every batch. The test process runs this
watchdog in a thread of its own. It reads counters that the executors (and the piece
workers) bump as batches start and finish — two integer increments per batch, no lock, no
clock on the timed path — once a second, and when work is in flight and nothing has started
or finished for ``limit_s`` seconds, it writes every thread's stack into ``harness.log``,
records the test as failed ("backend stopped responding") and ends the process. The run stops
there, as after any failed test, keeping every earlier result.

The limit starts at :data:`FIRST_BATCH_S` (nothing is known of the model yet: a first batch
may compile) and, once calibration has measured a batch, becomes ``max(MIN_S, FACTOR x the
batch time)`` unless the user set one (``--watchdog-s``; 0 turns it off).
"""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

#: Seconds a batch may take before anything is measured.
FIRST_BATCH_S = 300.0
#: The limit once a batch time is known: at least this ...
MIN_S = 60.0
#: ... and at least this many batch times.
FACTOR = 20.0

#: ``() -> (started, finished)``: a source of progress (an executor, the piece workers).
Progress = Callable[[], tuple[int, int]]


class Counts:
    """Started and finished counts of a source with one writer (the first batch's probe)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0


class Watchdog:
    """Ends the process through ``fire(message)`` when work in flight makes no progress."""

    def __init__(self, sources: Sequence[Progress], fire: Callable[[str], None], limit_s: float | None,
                 period_s: float = 1.0) -> None:
        self.sources = list(sources)
        self.fire = fire
        #: ``None``: the default (FIRST_BATCH_S, then from the batch time); 0: off.
        self.user_limit = limit_s
        self.limit_s = FIRST_BATCH_S if limit_s is None else float(limit_s)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, sources: Iterable[Progress]) -> None:
        """Watch these too (the executors, once made)."""
        self.sources.extend(sources)

    def measured(self, batch_s: float) -> None:
        """Calibration measured a batch: the default limit follows it."""
        if self.user_limit is None and batch_s > 0:
            self.limit_s = max(MIN_S, FACTOR * batch_s)

    def start(self) -> None:
        if self.limit_s <= 0:
            return
        self._thread = threading.Thread(target=self._watch, daemon=True, name="mlpi-watchdog")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _totals(self) -> tuple[int, int]:
        started = finished = 0
        for source in self.sources:
            s, f = source()
            started, finished = started + s, finished + f
        return started, finished

    def _watch(self) -> None:
        last = self._totals()
        since = time.monotonic()
        while not self._stop.wait(self.period_s):
            now_totals = self._totals()
            now = time.monotonic()
            if now_totals != last:
                last, since = now_totals, now
                continue
            in_flight = now_totals[0] - now_totals[1]
            if in_flight > 0 and now - since >= self.limit_s and self.limit_s > 0:
                self.fire(f"no batch finished in {now - since:.3g} s with {in_flight} in flight "
                          f"(the watchdog's limit is {self.limit_s:.3g} s)")
                return
            if in_flight <= 0:
                since = now  # idle (LoadGen between queries): the clock starts with the next batch


def dump_stacks() -> None:
    """Every thread's stack into the test's log (the child's stderr is harness.log)."""
    sys.stderr.write("mlpi: the watchdog fired; every thread's stack follows\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
