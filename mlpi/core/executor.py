"""BatchExecutor: one session with preallocated feed and response buffers.

It gathers, runs, postprocesses and completes one batch with one ``QuerySamplesComplete``;
every SUT and the dispatcher drive batches through it. A backend failure inside a LoadGen
callback cannot be raised into LoadGen; it goes to ``on_error``.
"""

from __future__ import annotations

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
        device: str = "",
    ) -> None:
        caps = session.capabilities
        #: The device unit this executor's session runs on, for dispatch and per-unit stats.
        self.device = device
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
        #: Batch-size histogram: ``sizes[n]`` batches of ``n`` samples were completed.
        self.sizes = [0] * (max(batch_size, 1) + 1)
        #: Seconds spent in batches, where the SUT times them (one query in flight: not timed).
        self.busy_s = 0.0

    @property
    def batches(self) -> int:
        return sum(self.sizes)

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
        self.sizes[n] += 1

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
