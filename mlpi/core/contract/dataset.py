"""The dataset contract: LoadGen's query sample library (QSL), preloaded before timing.

A dataset plugin is a :class:`DatasetFactory` subclass registered under ``mlpi.datasets``.
``open`` receives a :class:`DatasetRequest` — the model's inputs and its :class:`DataParams`
(image size, layout, sequence length, vocabulary...), never the model's name — checks that
the data is there and fits (cheaply: it runs before any test starts) and returns a
:class:`Dataset`. LoadGen then calls ``load`` with the sample
indices of the performance set; ``gather`` builds a batch's feeds from the loaded samples
by copying rows into caller-owned buffers, so the timed path allocates nothing.

Most datasets subclass :class:`PreloadedDataset` and implement only ``count`` and ``read``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import DatasetError


@dataclass(frozen=True)
class DataParams:
    """What a model needs its data to be, declared by the model, read by the dataset.

    Keys in common use (a dataset documents which it reads): ``image_size`` ``(h, w)``,
    ``layout`` (``"NCHW"``/``"NHWC"``), ``channel_order`` (``"RGB"``/``"BGR"``), ``mean``,
    ``std``, ``scale``, ``interpolation``, ``seq_len``, ``doc_stride``, ``max_query_len``,
    ``vocab`` (the vocabulary artifact's fields), ``sample_rate``, ``value_ranges`` (``{input:
    (low, high)}``: the integers an input may hold, for synthetic data), ``sample_shapes``
    (``{input: shape}``: the sample shape synthetic data gives an input whose size is
    dynamic). A model outside MLPerf's list has none.
    """

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **values: Any) -> DataParams:
        return cls(dict(values))

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def require(self, key: str, dataset: str) -> Any:
        """The value of ``key``, or the DatasetError that says the model does not give it."""
        if key not in self.values:
            given = ", ".join(sorted(self.values)) or "none"
            raise DatasetError(
                f"dataset '{dataset}' needs the model to declare '{key}' in its data parameters (it declares: {given})",
                f"use a dataset that fits this model (`mlpi models` lists them), or a model plugin that declares '{key}'",
            )
        return self.values[key]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.values.items()}


@dataclass(frozen=True)
class DatasetRequest:
    """Everything ``DatasetFactory.open`` is told.

    - ``inputs``: the model inputs to feed (their sample shapes may be dynamic).
    - ``params``: the model's :class:`DataParams`.
    - ``path`` / ``count`` / ``seed``: ``--dataset-path``, ``--count``, ``--seed``.
    - ``performance_count``: the model's performance sample count (``None``: the dataset's own).
    - ``for_scoring``: only the ground truth is needed (``mlpi score``): build no caches.
    - ``names``: open exactly these samples, in this order, by the names a benchmark's
      calibration list gives them (:class:`~mlpi.core.contract.calibration.CalibrationSet`),
      instead of the dataset's own list; only a factory with ``opens_by_name`` is asked. A
      name that is missing is a DatasetError naming it; labels are not needed.
    - ``constant_inputs``: inputs that are not batched (``TensorSpec.batch_axis`` None): one
      value is fed to every batch, the first loaded sample's, and every sample must hold the
      same (the core checks); a dataset that makes its data (synthetic) makes one for all.
      ``inputs`` are always batch first (:meth:`TensorSpec.batch_first`).
    """

    inputs: Sequence[TensorSpec]
    params: DataParams = field(default_factory=DataParams)
    path: Path | None = None
    count: int | None = None
    seed: int = 0
    performance_count: int | None = None
    for_scoring: bool = False
    names: tuple[str, ...] | None = None
    constant_inputs: tuple[str, ...] = ()

    def performance_count_of(self, count: int) -> int:
        """The performance sample count of ``count`` samples: the model's, bounded by what
        there is (at least 1); all ``count`` where the model gives none."""
        return count if self.performance_count is None else max(1, min(count, int(self.performance_count)))


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

    def sample_rows(self) -> np.ndarray | None:
        """Rows of each sample, by sample index, where one LoadGen sample is a group of rows
        the model runs as batch rows (DLRM's user-item pairs); ``None``: a sample is one row.

        Where a dataset answers, batches count rows: ``--batch-size`` is the most rows one
        batch holds (a sample larger than that is a batch of its own), Offline queries and
        Server batches are cut by rows, and per-unit figures report rows."""
        return None

    def labels(self) -> np.ndarray | None:
        """Class ids, one per sample index (``None`` when the data has none); classification
        datasets answer :meth:`ground_truth` with these."""
        return None

    def ground_truth(self) -> Any:
        """What a scorer compares responses with (``None`` when the data has none).

        Its form is an agreement between a dataset and the scorers that read it: an array of
        class ids, a COCO annotation set, reference answers... The core never looks inside.
        """
        return self.labels()

    @property
    def has_ground_truth(self) -> bool:
        """Whether :meth:`ground_truth` has an answer (checked before an accuracy run starts)."""
        return self.ground_truth() is not None

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
    - ``opens_by_name``: ``open`` honours ``DatasetRequest.names`` (it can read a calibration list).
    """

    name: ClassVar[str]
    needs_path: ClassVar[bool] = True
    description: ClassVar[str] = ""
    opens_by_name: ClassVar[bool] = False

    @abstractmethod
    def open(self, request: DatasetRequest) -> Dataset:
        """Check the data and return a dataset feeding ``request.inputs`` as ``request.params``
        ask; raise DatasetError naming the problem if it does not fit."""
