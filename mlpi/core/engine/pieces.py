"""Pieces: a sample cut into several batches, spread over every device unit and slot.

A model whose one sample is many inferences (3D-UNet's sliding windows over a volume)
says so with ``ModelSpec.pieces``; its pipeline then
runs no session itself but hands its batches to
:class:`~mlpi.core.contract.pipeline.Pieces`, which the core serves
from one worker thread per slot of every unit (``--device cuda:0,1`` or ``qaic:0-3``,
``max_in_flight`` slots each). Workers take pieces from one queue in order, so a faster
unit simply takes more, and one sample finishes sooner on four units than on one — in
SingleStream too, where only one sample is ever in flight.

The workers are threads of their own, never the sample slots' threads: a pipeline that
waits for its pieces cannot hold the place one of its pieces needs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpi.core.contract.backend import Session
from mlpi.core.contract.pipeline import MAIN_GRAPH, PieceConsumer, Pieces

Feeds = Mapping[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]


@dataclass(eq=False)
class _Job:
    """The pieces of one ``run`` call: how many are left, their outputs, the first error."""

    role: str
    consume: PieceConsumer | None
    left: int
    outputs: list[Outputs | None]
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, error: BaseException | None = None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left == 0:
                self.done.set()


@dataclass(eq=False)
class _Unit:
    """One device unit's piece counters and busy time (wall time with a piece running)."""

    label: str
    workers: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    busy_s: float = 0.0
    busy_since: float = 0.0


class PieceDispatcher(Pieces):
    """One worker per (unit, slot), each with that slot's sessions by role, on one queue."""

    def __init__(self, workers: Sequence[tuple[str, Mapping[str, Session]]], batch_size: int) -> None:
        if not workers:
            raise ValueError("PieceDispatcher needs at least one worker")
        self.batch_size = batch_size
        self.workers = len(workers)
        self.roles = tuple(workers[0][1])
        self._queue: queue.SimpleQueue[tuple[_Job, int, Sequence[Feeds]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._units: dict[str, _Unit] = {}
        self._workers = list(workers)
        self._threads: list[threading.Thread] = []
        #: Pieces started and finished (the watchdog's progress).
        self.started = 0
        self.finished = 0
        for label, _ in workers:
            self._units.setdefault(label, _Unit(label)).workers += 1

    def start(self) -> None:
        for label, sessions in self._workers:
            thread = threading.Thread(
                target=self._work, args=(self._units[label], sessions), daemon=True, name=f"mlpi-piece-{label}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def run(
        self, feeds: Sequence[Feeds], role: str = MAIN_GRAPH, consume: PieceConsumer | None = None
    ) -> list[Outputs] | None:
        if role not in self.roles:
            raise KeyError(f"no graph '{role}' to run pieces on (graphs: {', '.join(self.roles)})")
        if not feeds:
            return None if consume is not None else []
        job = _Job(role, consume, len(feeds), [None] * len(feeds))
        for k in range(len(feeds)):
            self._queue.put((job, k, feeds))  # feeds[k] is read in the worker: it may be built there
        job.done.wait()
        if job.error is not None:
            raise job.error
        return None if consume is not None else job.outputs  # type: ignore[return-value]

    def _work(self, unit: _Unit, sessions: Mapping[str, Session]) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, k, pieces = item
            if job.error is not None:  # a piece of this call failed: the call fails, run no more of it
                job.finish()
                continue
            rows = 0
            self._begin(unit)
            try:
                feeds = pieces[k]
                rows = _rows(feeds)
                outputs = _run_padded(sessions[job.role], feeds, rows)
                if job.consume is not None:
                    job.consume(k, outputs)
                else:
                    job.outputs[k] = {name: np.array(value, copy=True) for name, value in outputs.items()}
            except BaseException as exc:  # noqa: BLE001 - raised in the pipeline's thread
                self._end(unit, rows)
                job.finish(exc)
                continue
            self._end(unit, rows)
            job.finish()

    def _begin(self, unit: _Unit) -> None:
        with self._lock:
            if unit.in_flight == 0:
                unit.busy_since = time.monotonic()
            unit.in_flight += 1
            self.started += 1

    def _end(self, unit: _Unit, rows: int) -> None:
        with self._lock:
            self.finished += 1
            unit.in_flight -= 1
            if unit.in_flight == 0:
                unit.busy_s += time.monotonic() - unit.busy_since
            if rows:  # 0: the piece failed before it had rows
                unit.sizes[rows] = unit.sizes.get(rows, 0) + 1

    def stats(self, elapsed_s: float | None) -> list[dict[str, Any]]:
        """Per unit, as :func:`~mlpi.core.engine.dispatch.device_stats` gives them, counting
        pieces as batches and their rows as samples."""
        now = time.monotonic()
        out = []
        with self._lock:
            for unit in self._units.values():
                busy = unit.busy_s + (now - unit.busy_since if unit.in_flight else 0.0)
                out.append({
                    "device": unit.label,
                    "slots": unit.workers,
                    "batches": sum(unit.sizes.values()),
                    "samples": sum(size * count for size, count in unit.sizes.items()),
                    "batch_sizes": {str(size): unit.sizes[size] for size in sorted(unit.sizes)},
                    "busy_s": round(busy, 6),
                    "busy_fraction": None if not elapsed_s else round(min(busy / elapsed_s, 1.0), 4),
                    "work": "pieces",
                })
        return out

    def reset_stats(self) -> None:
        """Forget calibration's pieces: the figures a result reports are LoadGen's test only."""
        with self._lock:
            for unit in self._units.values():
                unit.sizes.clear()
                unit.busy_s = 0.0


def _rows(feeds: Feeds) -> int:
    for value in feeds.values():
        return int(value.shape[0]) if value.ndim else 1
    return 0


def _run_padded(session: Session, feeds: Feeds, rows: int) -> Outputs:
    """``session.run``; a fixed-batch session gets zero rows added and its outputs cut back."""
    caps = session.capabilities
    if caps.max_batch_size is not None and rows > caps.max_batch_size:
        raise ValueError(f"a piece of {rows} rows is more than the session takes ({caps.max_batch_size})")
    if not caps.fixed_batch or caps.max_batch_size is None or rows == caps.max_batch_size:
        return session.run(feeds)
    full = caps.max_batch_size
    padded = {}
    for name, value in feeds.items():
        buffer = np.zeros((full, *value.shape[1:]), dtype=value.dtype)
        buffer[:rows] = value
        padded[name] = buffer
    return {name: value[:rows] for name, value in session.run(padded).items()}
