"""Systems under test on LoadGen's ConstructFastSUT: how queries become batches.

- :class:`InlineSUT` (SingleStream, MultiStream): the whole batch in the issue callback.
- :class:`OfflineSUT`: the one big query cut into batches. With one slot the issue thread
  runs them itself; with several (instances, in-flight batches, device units) the
  :class:`~mlpi.core.engine.dispatch.Dispatcher` hands each to the least-loaded unit.
- :class:`ServerSUT`: dynamic batching: a batch leaves when it is full or when its oldest
  sample has waited ``timeout_s``, whichever comes first, as soon as a slot is free.

Batches run through :class:`~mlpi.core.engine.executor.BatchExecutor`; a backend failure inside
a callback goes to its ``on_error``, which ends the test process with the error recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from mlpi.core.engine.dispatch import Dispatcher
from mlpi.core.engine.executor import BatchExecutor, ErrorHandler
from mlpi.core.engine.rows import first_cut

__all__ = ["BatchExecutor", "ErrorHandler", "InlineSUT", "OfflineSUT", "ServerSUT"]


class InlineSUT:
    """SingleStream / MultiStream: one query in flight; answered inside the issue callback."""

    def __init__(self, executor: BatchExecutor, samples_per_query: int) -> None:
        self.executor = executor
        # The callback LoadGen calls is the executor's own method when no query needs cutting.
        fits = samples_per_query <= executor.batch_size and executor.sample_rows is None
        self.issue = executor.execute if fits else executor.execute_chunked

    def flush(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class OfflineSUT:
    """Offline: one slot runs the batches in the issue thread; several share them by dispatch."""

    def __init__(self, executors: Sequence[BatchExecutor]) -> None:
        self.executors = list(executors)
        self._dispatcher = Dispatcher(self.executors) if len(self.executors) > 1 else None

    def start(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.start()

    def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()

    def flush(self) -> None:
        pass

    def issue(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            first = self.executors[0]
            started = time.perf_counter()
            first.execute_chunked(ids, indices)
            first.busy_s += time.perf_counter() - started
            return
        for start, stop in self.executors[0].cuts(indices):
            dispatcher.submit(ids[start:stop], indices[start:stop])

    def busy_seconds(self) -> dict[str, float]:
        if self._dispatcher is not None:
            return self._dispatcher.busy_seconds()
        return {self.executors[0].device: self.executors[0].busy_s}


class ServerSUT:
    """Server: dynamic batching by size or deadline; each batch to the least-loaded free slot.

    One thread forms batches: it waits until a slot is free and then until the batch is
    full or its oldest sample is due. While every slot is busy, arrivals keep collecting,
    so the next batch leaves fuller. Where samples are groups of rows, "full" counts rows.
    """

    def __init__(self, executors: Sequence[BatchExecutor], batch_size: int, timeout_s: float) -> None:
        self.executors = list(executors)
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self._dispatcher = Dispatcher(self.executors)
        self._single = self.executors[0] if len(self.executors) == 1 else None
        self._cond = self._dispatcher.cond
        self._ids: list[int] = []
        self._indices: list[int] = []
        self._rows = self.executors[0].sample_rows
        self._waiting_rows = 0  # rows of the samples waiting, where samples are groups of rows
        self._oldest = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._single is None:
            self._dispatcher.start()
        self._thread = threading.Thread(target=self._batcher, daemon=True, name="mlpi-server")
        self._thread.start()

    def stop(self) -> None:
        self._dispatcher.stop()  # wakes the batcher too: it waits on the same condition
        if self._thread is not None:
            self._thread.join(timeout=10)

    def flush(self) -> None:
        pass

    def busy_seconds(self) -> dict[str, float]:
        if self._single is not None:
            return {self._single.device: self._single.busy_s}
        return self._dispatcher.busy_seconds()

    def issue(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        with self._cond:
            pending = self._ids
            if self._rows is not None:
                self._waiting_rows += int(self._rows[list(indices)].sum())
            if not pending:
                self._oldest = time.monotonic()
                pending += ids
                self._indices += indices
                self._cond.notify_all()
            else:
                pending += ids
                self._indices += indices
                if self._waiting() >= self.batch_size:
                    self._cond.notify_all()

    def _waiting(self) -> int:
        """What waits, in the unit batches count: samples, or rows (call with ``cond`` held)."""
        return len(self._ids) if self._rows is None else self._waiting_rows

    def _batcher(self) -> None:
        cond, bs, timeout, dispatcher = self._cond, self.batch_size, self.timeout_s, self._dispatcher
        # With one slot the batcher runs the batch itself: no hand-off on the latency path.
        single = self._single
        monotonic, perf_counter = time.monotonic, time.perf_counter
        while True:
            with cond:
                while True:
                    if dispatcher.stopping:
                        return
                    waiting = len(self._ids)
                    if not waiting or (single is None and not dispatcher.has_free_slot()):
                        cond.wait()
                        continue
                    if self._waiting() >= bs:
                        break
                    remaining = self._oldest + timeout - monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
                take = bs if self._rows is None else first_cut(self._rows, self._indices, bs)
                ids = self._ids[:take]
                indices = self._indices[:take]
                del self._ids[:take]
                del self._indices[:take]
                if self._rows is not None:
                    self._waiting_rows -= int(self._rows[indices].sum())
                # What is left arrived after the old oldest sample: keeping its time can only
                # make the next batch leave early, never late.
                slot = dispatcher.take_slot() if single is None else None
            if single is not None:
                started = perf_counter()
                single.execute(ids, indices)
                single.busy_s += perf_counter() - started
            else:
                dispatcher.post(slot, ids, indices)
