"""The ``faulty`` backend: a TEST TOOL that injects faults into runs on purpose.

It never runs a model. Like the ``null`` backend it answers every batch at once with zeros
shaped like the model's outputs (a dynamic non-batch dimension becomes 1), until its fault
fires; from then on every batch meets the fault. It exists so that tests can check what
``mlpi run`` does when a backend misbehaves; never use it to measure anything.

Faults (``-o fault=...``), after ``-o after=N`` batches have succeeded (counted per process,
over all of its sessions: the first batch of a test is the one the harness runs to see the
outputs' shapes):

- ``none``: no fault; behaves like ``null``.
- ``raise``: ``Session.run`` raises ``RuntimeError("injected fault after N batches")``.
- ``hang``: ``Session.run`` blocks forever (on an event that is never set; the GIL is
  released, so the process's other threads go on).
- ``crash``: the process dies as on a segfault (``SIGSEGV`` sent to itself).
- ``short``: the outputs have one row fewer than the batch sent.
- ``wrong_shape``: every output's first non-batch dimension is one larger than the model's
  (an output with no such dimension gets one, of 2).
- ``nan``: floating-point outputs are all NaN (integer outputs stay zeros).
- ``leak``: each batch allocates ``leak_mb`` MB, touches every page and keeps it until
  the process ends, and answers normally.

``delay_ms`` makes every batch (before and after the fault) sleep that long, so timing is
closer to a real device's. It is not registered as an entry point of mlpi: a test installs
it for its ``mlpi`` processes with a ``*.dist-info`` whose ``entry_points.txt`` says::

    [mlpi.backends]
    faulty = mlpi.testing.faulty:FaultyBackend
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
)
from mlpi.core.contract.device import Device

#: Every fault ``-o fault=`` takes.
FAULTS = ("none", "raise", "hang", "crash", "short", "wrong_shape", "nan", "leak")

Fault = Literal["none", "raise", "hang", "crash", "short", "wrong_shape", "nan", "leak"]

_MB = 1 << 20
#: Bytes apart that a leaked block is written, so that each of its pages is really held.
_PAGE = 4096


@dataclass
class FaultyOptions:
    fault: Fault = field(
        default="none",
        metadata={"help": "the fault to inject: none, raise, hang, crash, short, wrong_shape, nan or leak"},
    )
    after: int = field(
        default=0,
        metadata={"help": "batches that succeed before the fault fires (per process, over all sessions)", "min": 0},
    )
    leak_mb: int = field(default=64, metadata={"help": "for fault=leak: MB kept per batch", "min": 0})
    delay_ms: float = field(default=0.0, metadata={"help": "milliseconds every batch sleeps", "min": 0})
    preferred_batch_size: int = field(
        default=64, metadata={"help": "batch size when --batch-size is not given", "min": 1}
    )


class _Counter:
    """Batches run in this process, over every session (sessions may run concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0

    def next(self) -> int:
        """The number of batches that came before this one."""
        with self._lock:
            seen = self.batches
            self.batches += 1
            return seen


#: Per process: a test's child process starts at 0.
_COUNTER = _Counter()
#: What ``leak`` keeps: never freed while the process lives.
_LEAKED: list[np.ndarray] = []
#: What ``hang`` waits on: never set.
_NEVER = threading.Event()
_NO_CONTEXT = LoadContext()


def reset() -> None:
    """Count batches from 0 again and drop what ``leak`` holds (for tests in one process)."""
    with _COUNTER._lock:
        _COUNTER.batches = 0
    _LEAKED.clear()


def batches_seen() -> int:
    """Batches this process's sessions have been asked to run (for tests)."""
    return _COUNTER.batches


def leaked_bytes() -> int:
    """Bytes ``leak`` holds in this process (for tests)."""
    return sum(block.nbytes for block in _LEAKED)


class FaultySession(Session):
    def __init__(self, model: ModelArtifact, options: FaultyOptions) -> None:
        self.inputs = list(model.inputs)
        self.outputs = list(model.outputs)
        self.capabilities = Capabilities(concurrent=True, preferred_batch_size=options.preferred_batch_size)
        self.precision = "fp32"
        self.options = options
        self._first = self.inputs[0].name if self.inputs else None
        self._zeros: dict[int, dict[str, np.ndarray]] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        options = self.options
        if options.delay_ms > 0:
            time.sleep(options.delay_ms / 1e3)
        n = len(feeds[self._first]) if self._first is not None else 1
        before = _COUNTER.next()
        if options.fault == "none" or before < options.after:
            return self._zeros_for(n)
        return self._fault(options.fault, n, before)

    def _zeros_for(self, n: int) -> dict[str, np.ndarray]:
        outputs = self._zeros.get(n)
        if outputs is None:
            outputs = self._zeros[n] = {spec.name: _zeros(spec, n) for spec in self.outputs}
        return outputs

    def _fault(self, fault: str, n: int, before: int) -> dict[str, np.ndarray]:
        if fault == "raise":
            raise RuntimeError(f"injected fault after {before} batches")
        if fault == "hang":
            _NEVER.wait()  # never set: blocks for ever, GIL released
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(60)  # the signal is delivered at once; never answer meanwhile
        if fault == "short":
            return {spec.name: _zeros(spec, max(n - 1, 0)) for spec in self.outputs}
        if fault == "wrong_shape":
            return {spec.name: _wrong_shape(spec, n) for spec in self.outputs}
        if fault == "nan":
            return {spec.name: _nan(spec, n) for spec in self.outputs}
        if fault == "leak":
            block = np.empty(self.options.leak_mb * _MB, dtype=np.uint8)
            block[::_PAGE] = 1  # touch every page: resident, not only reserved
            _LEAKED.append(block)
            return self._zeros_for(n)
        return self._zeros_for(n)


class FaultyBackend(Backend):
    name = "faulty"
    device_kinds = ("cpu",)
    precisions = ("fp32",)
    Options = FaultyOptions

    def version(self) -> str:
        from mlpi import __version__

        return __version__

    def probe(self) -> list[Device]:
        return [Device("cpu")]

    def describe(self, device: Device) -> str:
        return "fault injection (a test tool: runs no model)"

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = _NO_CONTEXT
    ) -> Session:
        return FaultySession(model, options)


def _dtype(name: str) -> np.dtype[Any]:
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype("float32")


def _sample_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(d or 1 for d in spec.sample_shape)


def _zeros(spec: TensorSpec, n: int) -> np.ndarray:
    return np.zeros((n, *_sample_shape(spec)), dtype=_dtype(spec.dtype))


def _wrong_shape(spec: TensorSpec, n: int) -> np.ndarray:
    shape = _sample_shape(spec)
    wrong = (shape[0] + 1, *shape[1:]) if shape else (2,)
    return np.zeros((n, *wrong), dtype=_dtype(spec.dtype))


def _nan(spec: TensorSpec, n: int) -> np.ndarray:
    array = _zeros(spec, n)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        array.fill(np.nan)
    return array


__all__ = ["FAULTS", "FaultyBackend", "FaultyOptions", "FaultySession", "batches_seen", "leaked_bytes", "reset"]
