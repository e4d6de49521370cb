"""Postprocessing: turn a batch of model outputs into the bytes LoadGen logs per sample.

A postprocessor is given the batch's outputs and the samples' indices, and answers either

- an array whose rows are the per-sample responses, all ``sample_nbytes`` long (batch
  first, C-contiguous): the fast path, where LoadGen is handed a pointer into it, so a
  postprocessor that can answer with the output array itself copies nothing; or
- :class:`Responses`: one buffer and per-sample byte offsets, for responses whose size
  differs from sample to sample (detections; an empty response is allowed).

Each executor gets its own instance, so an instance may keep preallocated buffers; what it
returns must stay untouched until its next call (LoadGen copies responses when it logs them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import RunFailed


class Responses:
    """Responses of any size: sample ``j``'s bytes are ``buffer[offsets[j]:offsets[j+1]]``.

    ``buffer`` is any C-contiguous array (its bytes are what LoadGen logs); ``offsets`` holds
    ``n + 1`` byte offsets, non-decreasing, starting at 0.
    """

    __slots__ = ("buffer", "offsets")

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray) -> None:
        self.buffer = buffer
        self.offsets = offsets

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> Responses:
        """Join per-sample arrays (of one dtype) into one buffer."""
        sizes = np.fromiter((a.nbytes for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
        for array, start, end in zip(arrays, offsets[:-1], offsets[1:]):
            buffer[start:end] = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        return cls(buffer, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample(self, j: int) -> bytes:
        """Sample ``j``'s bytes (for tests and scoring; the timed path never copies)."""
        raw = self.buffer.reshape(-1).view(np.uint8)
        return raw[int(self.offsets[j]) : int(self.offsets[j + 1])].tobytes()


class Postprocessor(ABC):
    """Per-sample responses from a batch's outputs."""

    @property
    @abstractmethod
    def sample_nbytes(self) -> int | None:
        """Bytes of one sample's response (the row size of the array ``__call__`` returns),
        or ``None`` when responses differ in size and ``__call__`` returns :class:`Responses`."""

    @abstractmethod
    def __call__(self, outputs: Mapping[str, np.ndarray], indices: Sequence[int]) -> np.ndarray | Responses:
        """The responses of samples ``indices`` (in that order), whose outputs are ``outputs``.

        A fixed-size postprocessor returns a C-contiguous array whose first ``len(indices)``
        rows are the responses. What it returns stays untouched until its next call.
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

    def __call__(self, outputs: Mapping[str, np.ndarray], indices: Sequence[int]) -> np.ndarray:
        n = len(indices)
        if self._single is not None:
            array = outputs[self._single]
            if array is self._checked:
                return array
            # Responses are cut at a fixed stride: an answer of another size or type per sample
            # would hand LoadGen the wrong bytes (or bytes past the array's end).
            if array.dtype != self._specs[0].dtype or array.ndim == 0 or array.nbytes != array.shape[0] * self._nbytes:
                raise RunFailed(
                    f"the backend answered output '{self._single}' as {array.dtype} {list(array.shape)}; the model's "
                    f"is {self._specs[0].dtype} {list(self._specs[0].shape)} (the shape of the first batch)",
                    "the backend is broken: report it to its authors (mlpi checks every batch's outputs)",
                )
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

    def __call__(self, outputs: Mapping[str, np.ndarray], indices: Sequence[int]) -> np.ndarray:
        n = len(indices)
        values = outputs[self._output][:n]
        if self._argmax:
            values = values.reshape(n, -1).argmax(axis=1)
        np.add(values.reshape(n), self._offset, out=self._buffer[:n], casting="unsafe")
        return self._buffer
