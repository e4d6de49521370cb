"""Postprocessing: turn a batch of model outputs into the bytes LoadGen logs per sample.

Each session's executor owns one preallocated response buffer of ``sample_nbytes`` bytes
per row; a postprocessor fills rows ``0..n-1`` in place, vectorised over the batch.
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
        """Bytes of one sample's response."""

    @abstractmethod
    def __call__(self, outputs: Mapping[str, np.ndarray], n: int, out: np.ndarray) -> None:
        """Write the responses of the first ``n`` samples into ``out[:n]`` (uint8 rows)."""


class RawOutputs(Postprocessor):
    """Every output of a sample, flattened and concatenated in output order, as raw bytes.

    The default for models without a postprocessor of their own: the accuracy log then
    holds exactly what the model produced.
    """

    def __init__(self, outputs: Sequence[TensorSpec]) -> None:
        self._layout: list[tuple[str, int, int]] = []
        offset = 0
        for spec in outputs:
            size = int(np.prod([d or 1 for d in spec.sample_shape], dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            self._layout.append((spec.name, offset, offset + size))
            offset += size
        self._nbytes = offset

    @property
    def sample_nbytes(self) -> int:
        return self._nbytes

    def __call__(self, outputs: Mapping[str, np.ndarray], n: int, out: np.ndarray) -> None:
        for name, start, end in self._layout:
            rows = np.ascontiguousarray(outputs[name][:n]).reshape(n, -1).view(np.uint8)
            if rows.shape[1] != end - start:
                raise ValueError(
                    f"output '{name}' has {rows.shape[1]} bytes per sample, expected {end - start}"
                )
            out[:n, start:end] = rows
