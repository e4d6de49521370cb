"""Postprocessing: turn a batch of model outputs into the bytes LoadGen logs per sample.

A postprocessor returns an array whose rows are the per-sample responses (batch first,
C-contiguous); LoadGen is handed a pointer into it, so a postprocessor that can answer
with the output array itself copies nothing. Each executor gets its own instance, so an
instance may keep preallocated buffers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from mlpi.core.backend import TensorSpec


class Postprocessor(ABC):
    """Fixed-size per-sample responses from a batch's outputs."""

    @property
    @abstractmethod
    def sample_nbytes(self) -> int:
        """Bytes of one sample's response (the row size of what ``__call__`` returns)."""

    @abstractmethod
    def __call__(self, outputs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Return a C-contiguous array whose first ``n`` rows are the samples' responses.

        The array must stay untouched until the next call on this instance.
        """


class RawOutputs(Postprocessor):
    """Every output of a sample, flattened and concatenated in output order, as raw bytes.

    The default for models without a postprocessor of their own: the accuracy log then
    holds exactly what the model produced. A single output is answered in place.
    """

    def __init__(self, outputs: Sequence[TensorSpec], max_batch: int) -> None:
        self._names = [spec.name for spec in outputs]
        self._sizes = [_sample_nbytes(spec) for spec in outputs]
        self._nbytes = sum(self._sizes)
        self._single = self._names[0] if len(self._names) == 1 else None
        self._buffer = np.zeros((max(max_batch, 1), self._nbytes), dtype=np.uint8)
        self._targets: dict[int, list[np.ndarray]] = {}
        self._specs = list(outputs)
        self._checked: np.ndarray | None = None  # last single output seen C-contiguous

    @property
    def sample_nbytes(self) -> int:
        return self._nbytes

    def __call__(self, outputs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if self._single is not None:
            array = outputs[self._single]
            if array is self._checked:
                return array
            if array.flags.c_contiguous:
                self._checked = array
                return array
            return np.ascontiguousarray(array)
        targets = self._targets.get(n)
        if targets is None:
            targets = self._targets[n] = self._views(n)
        for name, target in zip(self._names, targets):
            np.copyto(target, outputs[name][:n].reshape(target.shape))
        return self._buffer

    def _views(self, n: int) -> list[np.ndarray]:
        views, start = [], 0
        for spec, size in zip(self._specs, self._sizes):
            block = self._buffer[:n, start : start + size]
            view = block.view(spec.dtype)
            view.shape = (n, *(d or 1 for d in spec.sample_shape))  # raises rather than copy
            views.append(view)
            start += size
        return views


def _sample_nbytes(spec: TensorSpec) -> int:
    return int(np.prod([d or 1 for d in spec.sample_shape], dtype=np.int64)) * np.dtype(spec.dtype).itemsize


class ClassIdResponse(Postprocessor):
    """One float32 class id per sample, the response format of MLPerf's image classifiers.

    Reads an integer class output (``ArgMax:0``) or takes the arg-max of a score output,
    then adds ``offset`` (-1 for a 1001-class model whose class 0 is "background").
    """

    def __init__(self, output: str, offset: int, max_batch: int, argmax: bool = False) -> None:
        self._output = output
        self._offset = offset
        self._argmax = argmax
        self._buffer = np.zeros(max(max_batch, 1), dtype=np.float32)

    @property
    def sample_nbytes(self) -> int:
        return 4

    def __call__(self, outputs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        values = outputs[self._output][:n]
        if self._argmax:
            values = values.reshape(n, -1).argmax(axis=1)
        np.add(values.reshape(n), self._offset, out=self._buffer[:n], casting="unsafe")
        return self._buffer
