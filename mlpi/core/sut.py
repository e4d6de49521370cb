"""Systems under test on LoadGen's ConstructFastSUT: how queries become batches.

- :class:`BatchExecutor`: one session with preallocated feed and response buffers;
  gathers, runs, postprocesses and completes one batch with one ``QuerySamplesComplete``.
- :class:`InlineSUT` (SingleStream, MultiStream): the whole batch in the issue callback.
- :class:`OfflineSUT`: the one big query cut into batches; the issue thread works through
  them with the first session, helper threads with the others.
- :class:`ServerSUT`: dynamic batching: a batch leaves when it is full or when its oldest
  sample has waited ``timeout_s``, whichever comes first, to the first idle session.

A backend failure inside a callback cannot be raised into LoadGen; it goes to ``on_error``,
which ends the test process with the error recorded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mlpi.core.backend import Session
from mlpi.core.dataset import Dataset
from mlpi.core.postprocess import Postprocessor

ErrorHandler = Callable[[BaseException], None]


class BatchExecutor:
    """Runs batches of up to ``batch_size`` samples through one session."""

    def __init__(
        self,
        session: Session,
        dataset: Dataset,
        postprocess: Postprocessor,
        batch_size: int,
        complete: Callable[[list], None],
        response_type: Callable[[int, int, int], object],
        on_error: ErrorHandler,
    ) -> None:
        caps = session.capabilities
        self.session = session
        self.dataset = dataset
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.fixed = caps.fixed_batch
        rows = caps.max_batch_size if caps.fixed_batch and caps.max_batch_size else batch_size
        # A batch of one can run straight from the dataset's memory unless padding is needed.
        self._zero_copy_single = rows == 1 or not self.fixed
        self._feeds = {
            spec.name: np.zeros((rows, *spec.sample_shape), dtype=spec.dtype) for spec in dataset.inputs
        }
        self._views: dict[int, Mapping[str, np.ndarray]] = {}
        self._stride = postprocess.sample_nbytes
        self._last_response: np.ndarray | None = None
        self._base = -1
        self._rows_set = 0  # responses[:_rows_set] point into the buffer at self._base
        # LoadGen copies responses inside QuerySamplesComplete, so one set of response
        # objects per executor is reused: setting an id is far cheaper than a new object.
        self._responses = [response_type(0, 0, self._stride) for _ in range(max(batch_size, 1))]
        self._one = self._responses[:1]
        self._complete = complete
        self._on_error = on_error
        self.batches = 0

    def feeds_for(self, n: int) -> Mapping[str, np.ndarray]:
        """The feed views for a batch of ``n``: all rows for a fixed-batch session."""
        if self.fixed:
            return self._feeds
        views = self._views.get(n)
        if views is None:
            views = self._views[n] = {name: buf[:n] for name, buf in self._feeds.items()}
        return views

    def compute(self, indices: Sequence[int]) -> np.ndarray:
        """Gather, run and postprocess one batch; returns the response rows (no completion)."""
        n = len(indices)
        if n == 1 and self._zero_copy_single:
            feeds = self.dataset.sample(indices[0])
        else:
            self.dataset.gather(indices, self._feeds)
            feeds = self.feeds_for(n)
        return self.postprocess(self.session.run(feeds), n)

    def execute(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Run one batch (``len(ids) <= batch_size``) and complete it in one call."""
        try:
            response = self.compute(indices)
        except BaseException as exc:  # noqa: BLE001 - reported, LoadGen cannot take it
            self._on_error(exc)
            return
        n = len(ids)
        if response is not self._last_response:
            self._last_response = response
            base = response.ctypes.data
            if base != self._base:
                self._base, self._rows_set = base, 0
        if n > self._rows_set:
            self._point(n)
        responses = self._responses
        if n == 1:
            responses[0].id = ids[0]
            self._complete(self._one)
        else:
            for response_slot, qid in zip(responses, ids):
                response_slot.id = qid
            self._complete(responses if n == len(responses) else responses[:n])
        self.batches += 1

    def _point(self, n: int) -> None:
        base, stride = self._base, self._stride
        for j in range(self._rows_set, n):
            self._responses[j].data = base + j * stride
        self._rows_set = n

    def execute_chunked(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Run a query of any size as consecutive batches."""
        bs = self.batch_size
        if len(ids) <= bs:
            self.execute(ids, indices)
            return
        for start in range(0, len(ids), bs):
            self.execute(ids[start : start + bs], indices[start : start + bs])


class InlineSUT:
    """SingleStream / MultiStream: one query in flight; answered inside the issue callback."""

    def __init__(self, executor: BatchExecutor, samples_per_query: int) -> None:
        self.executor = executor
        # The callback LoadGen calls is the executor's own method when no query needs cutting.
        fits = samples_per_query <= executor.batch_size
        self.issue = executor.execute if fits else executor.execute_chunked

    def flush(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _ThreadedSUT:
    """One worker thread per given executor, all waiting on one condition until stopped."""

    def __init__(self, executors: Sequence[BatchExecutor]) -> None:
        self.executors = list(executors)
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def _start_workers(self, executors: Sequence[BatchExecutor], target: Callable[[BatchExecutor], None], name: str) -> None:
        for ex in executors:
            thread = threading.Thread(target=target, args=(ex,), daemon=True, name=name)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def flush(self) -> None:
        pass


class OfflineSUT(_ThreadedSUT):
    """Offline: the issue thread and one helper per further session share the batches."""

    def __init__(self, executors: Sequence[BatchExecutor]) -> None:
        super().__init__(executors)
        self._jobs: deque[tuple[Sequence[int], Sequence[int], threading.Lock, list[int]]] = deque()

    def start(self) -> None:
        self._start_workers(self.executors[1:], self._helper, "mlpi-offline")

    def issue(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        first = self.executors[0]
        if len(self.executors) == 1:
            first.execute_chunked(ids, indices)
            return
        job = (ids, indices, threading.Lock(), [0])
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
        self._work(first, job)

    def _helper(self, executor: BatchExecutor) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._jobs[0]
            self._work(executor, job)
            with self._cond:
                if self._jobs and self._jobs[0] is job:
                    self._jobs.popleft()

    @staticmethod
    def _work(executor: BatchExecutor, job: tuple[Sequence[int], Sequence[int], threading.Lock, list[int]]) -> None:
        ids, indices, lock, cursor = job
        bs, total = executor.batch_size, len(ids)
        while True:
            with lock:
                start = cursor[0]
                cursor[0] = start + bs
            if start >= total:
                return
            executor.execute(ids[start : start + bs], indices[start : start + bs])


class ServerSUT(_ThreadedSUT):
    """Server: dynamic batching by size or deadline, one worker thread per session."""

    def __init__(self, executors: Sequence[BatchExecutor], batch_size: int, timeout_s: float) -> None:
        super().__init__(executors)
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self._ids: list[int] = []
        self._indices: list[int] = []
        self._oldest = 0.0

    def start(self) -> None:
        self._start_workers(self.executors, self._worker, "mlpi-server")

    def issue(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        with self._cond:
            pending = self._ids
            if not pending:
                self._oldest = time.monotonic()
                pending += ids
                self._indices += indices
                self._cond.notify()
            else:
                pending += ids
                self._indices += indices
                if len(pending) >= self.batch_size:
                    self._cond.notify()

    def _worker(self, executor: BatchExecutor) -> None:
        cond, bs, timeout = self._cond, self.batch_size, self.timeout_s
        monotonic = time.monotonic
        while True:
            with cond:
                while True:
                    if self._stopping:
                        return
                    waiting = len(self._ids)
                    if waiting >= bs:
                        break
                    if waiting:
                        remaining = self._oldest + timeout - monotonic()
                        if remaining <= 0:
                            break
                        cond.wait(remaining)
                    else:
                        cond.wait()
                ids = self._ids[:bs]
                indices = self._indices[:bs]
                del self._ids[:bs]
                del self._indices[:bs]
                # What is left arrived after the old oldest sample: keeping its time can only
                # make the next batch leave early, never late.
                if self._ids:
                    cond.notify()
            executor.execute(ids, indices)
