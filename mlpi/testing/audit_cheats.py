"""Backends that cheat the way compliance audits exist to catch: a TEST TOOL.

Both run the model for real with ONNX Runtime, then misbehave:

- ``unsteady``: answers honestly in the first ``-o honest=N`` test processes of a run (counted
  in ``-o state_dir=DIR``), and differently in every later one: its integer outputs gain 1 and
  its float outputs change sign (every ``-o every=K``-th batch). With ``--mode both`` and one
  scenario, the performance and accuracy tests are honest and the audit is not: TEST01 must
  see that the performance-mode responses are not the accuracy run's.
- ``caching``: remembers the last batch it was sent and, sent the same inputs again, returns
  the remembered outputs without running the model; every batch it does run takes
  ``-o delay_ms=D`` longer (a device whose compute dominates). TEST04, which issues one
  sample again and again, must see it run faster than the performance run it audits.

They are not entry points of mlpi: a test installs them for its ``mlpi`` processes with a
``*.dist-info`` whose ``entry_points.txt`` says::

    [mlpi.backends]
    unsteady = mlpi.testing.audit_cheats:UnsteadyBackend
    caching = mlpi.testing.audit_cheats:CachingBackend
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.backends.ort import OnnxRuntimeBackend, OrtOptions
from mlpi.core.contract.backend import LoadContext, ModelArtifact, Session
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import UsageError

ENTRY_POINTS = (
    "[mlpi.backends]\n"
    "unsteady = mlpi.testing.audit_cheats:UnsteadyBackend\n"
    "caching = mlpi.testing.audit_cheats:CachingBackend\n"
)


@dataclass
class UnsteadyOptions(OrtOptions):
    honest: int = field(default=2, metadata={"help": "test processes that answer honestly", "min": 0})
    state_dir: str = field(default="", metadata={"help": "folder that counts the test processes"})
    every: int = field(default=1, metadata={"help": "a dishonest process changes every N-th batch", "min": 1})


@dataclass
class CachingOptions(OrtOptions):
    delay_ms: float = field(default=2.0, metadata={"help": "milliseconds every batch the model runs takes", "min": 0})


class _Wrapped(Session):
    """An ONNX Runtime session seen through a cheat; everything but ``run`` is the session's."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capabilities, self.precision = inner.capabilities, inner.precision

    def close(self) -> None:
        self.inner.close()


def _process_number(state_dir: str) -> int:
    """This process's place among the test processes that loaded a model (from 1), counted
    once per process with files made exclusively in ``state_dir``."""
    global _NUMBER
    if _NUMBER is None:
        folder = Path(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        number = 1
        while True:
            try:
                os.close(os.open(folder / f"process-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                number += 1
        _NUMBER = number
    return _NUMBER


_NUMBER: int | None = None
_NO_CONTEXT = LoadContext()


class _Unsteady(_Wrapped):
    def __init__(self, inner: Session, honest: bool, every: int) -> None:
        super().__init__(inner)
        self.honest, self.every = honest, every
        self._batches = itertools.count()

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        outputs = self.inner.run(feeds)
        if self.honest or next(self._batches) % self.every:
            return outputs
        return {name: (value + 1 if np.issubdtype(value.dtype, np.integer) else -value) for name, value in outputs.items()}


class _Caching(_Wrapped):
    def __init__(self, inner: Session, delay_ms: float) -> None:
        super().__init__(inner)
        self.delay_s = delay_ms / 1e3
        self._lock = threading.Lock()
        self._last: tuple[bytes, Mapping[str, np.ndarray]] | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        key = hashlib.sha1(b"".join(np.ascontiguousarray(feeds[name]).tobytes() for name in sorted(feeds))).digest()
        with self._lock:
            if self._last is not None and self._last[0] == key:
                return self._last[1]
        time.sleep(self.delay_s)
        outputs = self.inner.run(feeds)
        with self._lock:
            self._last = (key, outputs)
        return outputs


class UnsteadyBackend(OnnxRuntimeBackend):
    name = "unsteady"
    device_kinds = ("cpu",)
    Options = UnsteadyOptions

    def load(self, model: ModelArtifact, device: Device, options: Any, precision: str | None,
             context: LoadContext = _NO_CONTEXT) -> Session:
        if not options.state_dir:
            raise UsageError("the unsteady backend needs -o state_dir=DIR", "pass a folder the run's tests share")
        honest = _process_number(options.state_dir) <= options.honest
        return _Unsteady(super().load(model, device, options, precision, context), honest, options.every)


class CachingBackend(OnnxRuntimeBackend):
    name = "caching"
    device_kinds = ("cpu",)
    Options = CachingOptions

    def load(self, model: ModelArtifact, device: Device, options: Any, precision: str | None,
             context: LoadContext = _NO_CONTEXT) -> Session:
        return _Caching(super().load(model, device, options, precision, context), options.delay_ms)
