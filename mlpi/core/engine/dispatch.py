"""Dispatch over several device units: each batch goes to the least-loaded unit.

A run on ``cuda:0,1`` or ``qaic:0-3`` opens sessions on every listed unit (``--instances``
per unit), and each session may keep several batches in flight
(``Capabilities.max_in_flight``). Every such in-flight place is a *slot*: one
:class:`~mlpi.core.engine.sut.BatchExecutor` (its own buffers) and one thread that runs its batches.
The dispatcher hands each batch to a free slot of the unit with the lowest load — batches
in flight over slots, ties to the unit that has had the fewest samples — so a fast unit
takes more work and a slow or saturated one is never queued behind. Busy time is the wall
time a unit had at least one batch in flight.

This lives in the core so every backend gets it: a backend only says how many batches one
session can take at once; where they go is decided here. The per-unit figures of a test's
``devices`` are made here too, with what set the pace where a simulated session reports it
(:class:`~mlpi.core.contract.backend.PaceRecord`): its device model, or the host computing
the outputs, which then makes the result a measure of the host CPU (:func:`pace_warning`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlpi.core.contract.backend import PaceRecord
from mlpi.core.engine.executor import BatchExecutor


@dataclass(eq=False)
class _Slot:
    executor: BatchExecutor
    lane: _Lane
    event: threading.Event = field(default_factory=threading.Event)
    job: tuple[Sequence[int], Sequence[int]] = ((), ())


@dataclass(eq=False)
class _Lane:
    """One device unit: its slots, how many of them are busy, and for how long it was busy."""

    label: str
    slots: list[_Slot] = field(default_factory=list)
    free: list[_Slot] = field(default_factory=list)
    in_flight: int = 0
    samples: int = 0
    busy_s: float = 0.0
    busy_since: float = 0.0


class Dispatcher:
    """Slots grouped by device unit (``executor.device``), one worker thread per slot.

    ``cond`` guards the dispatcher's state; a SUT that batches (Server) waits on the same
    condition for "a slot is free" and "a batch is ready" at once.
    """

    def __init__(self, executors: Sequence[BatchExecutor]) -> None:
        self.cond = threading.Condition(threading.Lock())
        lanes: dict[str, _Lane] = {}
        for executor in executors:
            lane = lanes.setdefault(executor.device, _Lane(executor.device))
            slot = _Slot(executor, lane)
            lane.slots.append(slot)
            lane.free.append(slot)
        self.lanes = list(lanes.values())
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        for lane in self.lanes:
            for slot in lane.slots:
                thread = threading.Thread(target=self._run_slot, args=(slot,), daemon=True, name=f"mlpi-{lane.label}")
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        for lane in self.lanes:
            for slot in lane.slots:
                slot.event.set()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def has_free_slot(self) -> bool:
        """Whether a batch handed over now would start at once (call with ``cond`` held)."""
        return any(lane.free for lane in self.lanes)

    def submit(self, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Hand one batch to the least-loaded unit, waiting for a free slot if there is none."""
        with self.cond:
            while not self.has_free_slot():
                if self._stopping:
                    return
                self.cond.wait()
            slot = self.take_slot()
        self.post(slot, ids, indices)

    def take_slot(self) -> _Slot:
        """Reserve a free slot of the least-loaded unit (call with ``cond`` held, a slot free)."""
        best: _Lane | None = None
        best_key = (2.0, 0)
        for lane in self.lanes:
            if lane.free:
                key = (lane.in_flight / len(lane.slots), lane.samples)
                if best is None or key < best_key:
                    best, best_key = lane, key
        assert best is not None, "take_slot needs a free slot"
        if best.in_flight == 0:
            best.busy_since = time.monotonic()
        best.in_flight += 1
        return best.free.pop()

    @staticmethod
    def post(slot: _Slot, ids: Sequence[int], indices: Sequence[int]) -> None:
        """Give a reserved slot its batch; its thread runs it."""
        slot.lane.samples += slot.executor.rows_of(indices)  # rows, where a sample is a group of rows
        slot.job = (ids, indices)
        slot.event.set()

    def _run_slot(self, slot: _Slot) -> None:
        event, lane, executor = slot.event, slot.lane, slot.executor
        while True:
            event.wait()
            event.clear()
            if self._stopping:
                return
            ids, indices = slot.job
            executor.execute(ids, indices)
            with self.cond:
                lane.free.append(slot)
                lane.in_flight -= 1
                if lane.in_flight == 0:
                    lane.busy_s += time.monotonic() - lane.busy_since
                self.cond.notify_all()

    def busy_seconds(self) -> dict[str, float]:
        """Busy time per unit so far (a unit busy now counts until now)."""
        now = time.monotonic()
        with self.cond:
            return {
                lane.label: lane.busy_s + (now - lane.busy_since if lane.in_flight else 0.0) for lane in self.lanes
            }


def device_stats(
    executors: Sequence[BatchExecutor], busy_s: dict[str, float] | None, elapsed_s: float | None
) -> list[dict[str, Any]]:
    """Per device unit: slots, batches, samples (and rows, where a sample is a group of rows),
    batch-size histogram (samples per batch), busy time and fraction.

    ``busy_s`` is ``None`` where the SUT does not measure it (one query in flight at a time:
    the unit is busy exactly while LoadGen waits, so the figure says nothing).
    """
    units: dict[str, dict[str, Any]] = {}
    for executor in executors:
        unit = units.setdefault(
            executor.device, {"device": executor.device, "slots": 0, "batches": 0, "samples": 0, "batch_sizes": {}}
        )
        unit["slots"] += 1
        if executor.sample_rows is not None:  # samples are groups of rows: say how many rows ran
            unit["rows"] = unit.get("rows", 0) + executor.rows_done
        for size, count in enumerate(executor.sizes):
            if count:
                unit["batches"] += count
                unit["samples"] += size * count
                unit["batch_sizes"][str(size)] = unit["batch_sizes"].get(str(size), 0) + count
    for label, unit in units.items():
        unit["batch_sizes"] = dict(sorted(unit["batch_sizes"].items(), key=lambda item: int(item[0])))
        busy = None if busy_s is None else busy_s.get(label)
        unit["busy_s"] = None if busy is None else round(busy, 6)
        unit["busy_fraction"] = None if busy is None or not elapsed_s else round(min(busy / elapsed_s, 1.0), 4)
    return list(units.values())


def pace_snapshot(placed: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, PaceRecord]:
    """Per device unit, its sessions' pace records summed (:meth:`Session.pace`); units whose
    sessions report none are absent. ``placed``: (unit label, sessions by graph role)."""
    units: dict[str, PaceRecord] = {}
    for label, sessions in placed:
        for session in sessions.values():
            record = session.pace()
            if record is not None:
                units[label] = units.get(label, PaceRecord()) + record
    return units


def record_pace(devices: list[dict[str, Any]], placed: Sequence[tuple[str, dict[str, Any]]],
                since: dict[str, PaceRecord]) -> tuple[str, str] | None:
    """Add what set the pace since ``since`` (a :func:`pace_snapshot` taken when LoadGen's
    test began) to each unit of ``devices`` that reports it: ``modelled_batches``,
    ``host_bound_batches``, ``host_compute_s``, ``modelled_s``. Where the host set it, the
    :func:`pace_warning` is printed into the test's log (harness.log) and returned."""
    by_label = {unit["device"]: unit for unit in devices}
    for label, total in pace_snapshot(placed).items():
        unit = by_label.get(label)
        if unit is None:
            continue
        record = total - since.get(label, PaceRecord())
        unit.update(modelled_batches=record.modelled_batches, host_bound_batches=record.host_bound_batches,
                    host_compute_s=round(record.host_compute_s, 6), modelled_s=round(record.modelled_s, 6))
    warning = pace_warning(devices)
    if warning is not None:
        print(f"mlpi: warning: {warning[0]}\nmlpi: hint: {warning[1]}", flush=True)
    return warning


#: A unit is host-bound when host computation, not its device model, timed more than this
#: share of its batches.
HOST_BOUND_SHARE = 0.5


def pace_warning(devices: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """The warning (message, hint) when host computation set the pace of a simulated device:
    on more than :data:`HOST_BOUND_SHARE` of some unit's batches; ``None`` otherwise, and for
    units that report no pace."""
    paced = [u for u in devices if isinstance(u.get("modelled_batches"), int) and u["modelled_batches"] > 0
             and isinstance(u.get("host_bound_batches"), int)]
    bound = [u for u in paced if u["host_bound_batches"] > HOST_BOUND_SHARE * u["modelled_batches"]]
    if not bound:
        return None
    share = math.floor(100 * sum(u["host_bound_batches"] for u in bound) / sum(u["modelled_batches"] for u in bound))
    host_s = sum(float(u.get("host_compute_s") or 0.0) for u in bound)
    modelled_s = sum(float(u.get("modelled_s") or 0.0) for u in bound)
    where = "" if len(bound) == len(paced) else f" of {', '.join(str(u['device']) for u in bound)}"
    message = (f"host computation set the pace on {share}% of batches{where} ({_seconds(host_s)} of host "
               f"compute against {_seconds(modelled_s)} modelled): this result measures the host CPU, not the "
               "simulated device")
    hint = ("to time the simulated device alone, use the backend's performance-only option that skips computing "
            "outputs, where it has one (`mlpi backends --json` lists its options); or use fewer device units, "
            "--instances or host threads per unit")
    return message, hint


def _seconds(value: float) -> str:
    """Seconds as a warning shows them: whole seconds from 100 s, else three significant digits."""
    return f"{value:,.0f} s" if value >= 100 else f"{value:.3g} s"
