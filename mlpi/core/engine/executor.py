"""BatchExecutor: one slot — a pipeline with its session(s) — and its LoadGen responses.

It runs one batch through the slot's :class:`~mlpi.core.contract.pipeline.Pipeline` and completes it
with one ``QuerySamplesComplete``; every SUT and the dispatcher drive batches through it.
Fixed-size responses are pointed at ``base + j * stride`` once per buffer; responses of any
size get their pointer and length per batch. A backend failure inside a LoadGen callback
cannot be raised into LoadGen; it goes to ``on_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mlpi.core.contract.backend import Session
from mlpi.core.contract.dataset import Dataset
from mlpi.core.contract.pipeline import GatherRunPostprocess, Pipeline
from mlpi.core.contract.postprocess import Postprocessor, Responses
from mlpi.core.engine.rows import cut_by_rows

ErrorHandler = Callable[[BaseException], None]


class BatchExecutor:
    """Runs batches of up to ``batch_size`` samples through one slot.

    Give ``session``, ``dataset`` and ``postprocess`` for the default gather -> run ->
    postprocess pipeline, or ``pipeline`` for a model's own (``session`` is then the slot's
    main session, kept for reporting, or ``None`` where the pipeline runs in pieces).
    """

    def __init__(
        self,
        session: Session | None,
        dataset: Dataset,
        postprocess: Postprocessor | None,
        batch_size: int,
        complete: Callable[[list], None],
        response_type: Callable[[int, int, int], object],
        on_error: ErrorHandler,
        device: str = "",
        pipeline: Pipeline | None = None,
        check_rows: bool = True,
        sample_rows: np.ndarray | None = None,
    ) -> None:
        #: The device unit this executor's session runs on, for dispatch and per-unit stats.
        self.device = device
        self.session = session
        self.dataset = dataset
        self.batch_size = batch_size
        #: Rows of each sample index where a sample is a group of rows: ``batch_size`` then
        #: counts rows (see :mod:`mlpi.core.engine.rows`); ``None``: it counts samples.
        self.sample_rows = None if sample_rows is None else np.maximum(np.asarray(sample_rows, dtype=np.int64), 1)
        #: Rows completed, where samples are groups of rows.
        self.rows_done = 0
        #: Batches started and finished (the watchdog's progress; one writer per executor).
        self.started = 0
        self.finished = 0
        if pipeline is None:
            if postprocess is None or session is None:
                raise ValueError("BatchExecutor needs a session and a postprocessor, or a pipeline")
            pipeline = GatherRunPostprocess(session, dataset, postprocess, batch_size, check_rows=check_rows)
        self.pipeline = pipeline
        stride = pipeline.sample_nbytes
        self._stride = 0 if stride is None else stride
        self._last_response: object = None
        self._base = -1
        self._rows_set = 0  # responses[:_rows_set] point into the buffer at self._base
        # LoadGen copies responses inside QuerySamplesComplete, so one set of response
        # objects per executor is reused: setting an id is far cheaper than a new object.
        self._responses = [response_type(0, 0, self._stride) for _ in range(max(batch_size, 1))]
        self._one = self._responses[:1]
        self._complete = complete
        self._on_error = on_error
        #: Batch-size histogram: ``sizes[n]`` batches of ``n`` samples were completed.
        self.sizes = [0] * (max(batch_size, 1) + 1)
        #: Seconds spent in batches, where the SUT times them (one query in flight: not timed).
        self.busy_s = 0.0

    @property
    def batches(self) -> int:
        return sum(self.sizes)

    def compute(self, indices: Sequence[int]) -> np.ndarray | Responses:
        """Run one batch through the pipeline; returns its responses (no completion)."""
        self.started += 1
        response = self.pipeline(indices)
        self.finished += 1
        return response

    def execute(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Run one batch (``len(ids) <= batch_size``) and complete it in one call."""
        n = len(ids)
        self.started += 1
        try:
            response = self.pipeline(indices)
            self.finished += 1
            if response is not self._last_response:
                self._repoint(response, n)
        except BaseException as exc:  # noqa: BLE001 - reported, LoadGen cannot take it
            self._on_error(exc)
            return
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
        self.sizes[n] += 1
        if self.sample_rows is not None:
            self.rows_done += self.rows_of(indices)

    def rows_of(self, indices: Sequence[int]) -> int:
        """Rows of these samples (their count where a sample is one row)."""
        if self.sample_rows is None:
            return len(indices)
        return int(self.sample_rows[np.asarray(indices, dtype=np.int64)].sum())

    def cuts(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """Where a query of ``indices`` is cut into batches of at most ``batch_size``
        samples, or rows where samples are groups of rows."""
        if self.sample_rows is None:
            bs = self.batch_size
            return [(start, min(start + bs, len(indices))) for start in range(0, len(indices), bs)]
        return cut_by_rows(self.sample_rows[np.asarray(indices, dtype=np.int64)], self.batch_size)

    def _repoint(self, response: np.ndarray | Responses, n: int) -> None:
        """A response the pointers do not yet follow: fixed rows get their buffer's base (the
        rows are pointed lazily by :meth:`_point`); responses of any size get every pointer
        and length now, and are never taken as pointed already (a postprocessor may reuse
        its Responses object with new offsets)."""
        if type(response) is Responses:
            self._point_ragged(response, n)
            return
        self._last_response = response
        base = response.ctypes.data  # type: ignore[union-attr]
        if base != self._base:
            self._base, self._rows_set = base, 0

    def _point(self, n: int) -> None:
        base, stride = self._base, self._stride
        for j in range(self._rows_set, n):
            self._responses[j].data = base + j * stride
            self._responses[j].size = stride
        self._rows_set = n

    def _point_ragged(self, response: Responses, n: int) -> None:
        if len(response) < n:
            raise ValueError(f"the pipeline answered {len(response)} responses for {n} samples")
        base = response.buffer.ctypes.data
        offsets = response.offsets.tolist()
        for j in range(n):
            slot = self._responses[j]
            slot.data = base + offsets[j]
            slot.size = offsets[j + 1] - offsets[j]
        # Every pointer is set for this batch; the next response, of either kind, re-points.
        self._last_response, self._base, self._rows_set = None, -1, n

    def execute_chunked(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Run a query of any size as consecutive batches."""
        bs = self.batch_size
        if self.sample_rows is None and len(ids) <= bs:
            self.execute(ids, indices)
            return
        for start, stop in self.cuts(indices):
            self.execute(ids[start:stop], indices[start:stop])
