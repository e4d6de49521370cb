"""The dataset contract: LoadGen's query sample library (QSL), preloaded before timing.

A dataset plugin is a :class:`DatasetFactory` subclass registered under ``mlpi.datasets``.
``open`` checks that the data is there and fits the model (cheaply: it runs before any
test starts) and returns a :class:`Dataset`. LoadGen then calls ``load`` with the sample
indices of the performance set; ``gather`` builds a batch's feeds from the loaded samples
by copying rows into caller-owned buffers, so the timed path allocates nothing.

Most datasets subclass :class:`PreloadedDataset` and implement only ``count`` and ``read``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlpi.core.backend import TensorSpec


class Dataset(ABC):
    """A sample library: ``count`` samples, of which LoadGen keeps ``performance_count`` loaded."""

    #: The model inputs this dataset feeds, with concrete sample shapes.
    inputs: Sequence[TensorSpec]

    @property
    @abstractmethod
    def count(self) -> int:
        """Total samples (accuracy mode runs all of them)."""

    @property
    def performance_count(self) -> int:
        """How many samples fit in memory at once (LoadGen's performance sample count)."""
        return self.count

    @abstractmethod
    def load(self, indices: Sequence[int]) -> None:
        """Bring these samples into memory (called by LoadGen before timing starts)."""

    @abstractmethod
    def unload(self, indices: Sequence[int]) -> None:
        """Release these samples."""

    @abstractmethod
    def gather(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Copy the loaded samples ``indices`` into rows ``0..len(indices)-1`` of ``out[name]``."""

    def labels(self) -> np.ndarray | None:
        """Ground truth, one entry per sample index (``None`` when the data has none).

        For classification: the class id of each sample, as the dataset numbers them.
        """
        return None

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        """Feeds for one loaded sample, batch of one. Override to answer without copying."""
        out = {spec.name: np.empty((1, *spec.sample_shape), dtype=spec.dtype) for spec in self.inputs}
        self.gather([index], out)
        return out

    def describe(self) -> dict[str, Any]:
        """What results should record about this dataset."""
        return {"count": self.count}


class PreloadedDataset(Dataset):
    """Keeps each input of the loaded samples in one contiguous array; gathers with ``np.take``."""

    def __init__(self, inputs: Sequence[TensorSpec]) -> None:
        self.inputs = list(inputs)
        self._arrays: dict[str, np.ndarray] = {}
        self._rows: np.ndarray | None = None  # sample index -> row in self._arrays
        self._identity = False
        self._samples: dict[int, Mapping[str, np.ndarray]] = {}

    @abstractmethod
    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        """Read samples ``indices`` from their source, one array per input, batch first."""

    def load(self, indices: Sequence[int]) -> None:
        wanted = np.unique(np.asarray(indices, dtype=np.int64))
        data = self.read(wanted)
        self._arrays = {}
        for spec in self.inputs:
            array = np.ascontiguousarray(data[spec.name], dtype=spec.dtype)
            if array.shape[0] != len(wanted):
                raise ValueError(f"read() returned {array.shape[0]} rows of '{spec.name}' for {len(wanted)} samples")
            self._arrays[spec.name] = array
        self._identity = len(wanted) == self.count and (len(wanted) == 0 or wanted[-1] == self.count - 1)
        rows = np.full(self.count, -1, dtype=np.int64)
        rows[wanted] = np.arange(len(wanted))
        self._rows = rows
        self._samples = {}

    def unload(self, indices: Sequence[int]) -> None:
        self._arrays = {}
        self._rows = None
        self._samples = {}

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        """One-row views into the loaded arrays: SingleStream copies nothing."""
        feeds = self._samples.get(index)
        if feeds is None:
            row = int(self._rows[index])  # type: ignore[index]
            if row < 0:
                raise IndexError(f"sample {index} is not loaded")
            feeds = self._samples[index] = {name: array[row : row + 1] for name, array in self._arrays.items()}
        return feeds

    def gather(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        n = len(indices)
        if n == 1:
            row = indices[0] if self._identity else self._rows[indices[0]]  # type: ignore[index]
            for name, array in self._arrays.items():
                out[name][0] = array[row]
            return
        rows = indices if self._identity else self._rows[indices]  # type: ignore[index]
        for name, array in self._arrays.items():
            np.take(array, rows, axis=0, out=out[name][:n])


class DatasetFactory(ABC):
    """A dataset plugin: knows how to open one kind of data for a model.

    - ``name``: what users type after ``--dataset``.
    - ``needs_path``: whether ``--dataset-path`` is required.
    - ``description``: one line for ``mlpi datasets``.
    """

    name: ClassVar[str]
    needs_path: ClassVar[bool] = True
    description: ClassVar[str] = ""

    @abstractmethod
    def open(self, inputs: Sequence[TensorSpec], path: Path | None, count: int | None, seed: int) -> Dataset:
        """Check the data and return a dataset feeding ``inputs``; raise DatasetError if it
        does not fit. ``count`` limits the number of samples (None: the dataset's own)."""
