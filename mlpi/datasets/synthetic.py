"""``synthetic``: seeded random inputs shaped like the model's inputs.

For performance runs of any model without its real data. Sample ``i`` is the same on
every run with the same seed. Floats are standard normal, integers uniform in [0, 100),
booleans fair coins. An input whose sample size is dynamic (a whole CT volume) gets
the shape its model declares for it, ``sample_shapes={name: shape}``. A model whose integer inputs index a table (token ids, segment ids,
embedding rows) declares each one's range in its DataParams, ``value_ranges={name: (low,
high)}`` (uniform in [low, high)), so synthetic data never indexes past a table's end.
An input that is not batched (``DatasetRequest.constant_inputs``) holds sample 0's value in
every sample: one value is fed to every batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.dataset import (
    Dataset,
    DatasetFactory,
    DatasetRequest,
    PreloadedDataset,
)
from mlpi.core.contract.errors import DatasetError

#: Integers of an input whose model declares no range for it: uniform in [0, 100).
INT_RANGE = (0, 100)
#: Samples when --count is not given, bounded so the preloaded set stays under MAX_BYTES.
DEFAULT_COUNT = 1024
MAX_BYTES = 1 << 30
#: The most samples --count may ask for: synthetic data has no size of its own, and a count
#: far beyond any real data set only makes a run start and then hang on its index tables.
MAX_COUNT = 1 << 24


class SyntheticDataset(PreloadedDataset):
    def __init__(self, inputs: Sequence[TensorSpec], count: int, seed: int,
                 ranges: Mapping[str, tuple[int, int]] | None = None, constants: Sequence[str] = ()) -> None:
        super().__init__(inputs)
        self._count = count
        self._seed = seed
        self._ranges = dict(ranges or {})
        self._constants = set(constants)  # inputs that are not batched: sample 0's value for every sample

    @property
    def count(self) -> int:
        return self._count

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for k, spec in enumerate(self.inputs):
            shape = tuple(int(d) for d in spec.sample_shape)  # type: ignore[arg-type]
            array = np.empty((len(indices), *shape), dtype=spec.dtype)
            for row, index in enumerate(indices):
                rng = np.random.default_rng((self._seed, k, 0 if spec.name in self._constants else int(index)))
                array[row] = _random(rng, shape, np.dtype(spec.dtype), self._ranges.get(spec.name, INT_RANGE))
            out[spec.name] = array
        return out

    def describe(self) -> dict[str, object]:
        return {"count": self._count, "seed": self._seed, "kind": "synthetic"}


class Synthetic(DatasetFactory):
    name = "synthetic"
    needs_path = False
    description = "seeded random inputs shaped like the model's inputs (performance only)"

    def open(self, request: DatasetRequest) -> Dataset:
        inputs, count, seed = request.inputs, request.count, request.seed
        concrete: list[TensorSpec] = []
        declared = request.params.get("sample_shapes") or {}
        for spec in inputs:
            if any(d is None for d in spec.sample_shape):
                spec = _declared_shape(spec, declared.get(spec.name))
            try:
                np.dtype(spec.dtype)
            except TypeError:
                raise DatasetError(f"input '{spec.name}' has type {spec.dtype}, which synthetic data cannot make", "use a numpy dataset") from None
            concrete.append(spec)
        sample_bytes = sum(int(np.prod(s.sample_shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in concrete)
        if count is None:
            count = max(1, min(DEFAULT_COUNT, MAX_BYTES // max(sample_bytes, 1)))
        if count < 1:
            raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
        if count > MAX_COUNT:
            raise DatasetError(
                f"--count {count} is more samples than synthetic data makes (at most {MAX_COUNT:,})",
                f"pass --count {MAX_COUNT} or less: LoadGen keeps only a few thousand loaded anyway",
            )
        return SyntheticDataset(concrete, count, seed, _ranges(request.params.get("value_ranges") or {}),
                                request.constant_inputs)


def _declared_shape(spec: TensorSpec, shape: Sequence[int] | None) -> TensorSpec:
    """``spec`` with the sample shape its model declares for synthetic data (``sample_shapes``)."""
    if shape is None:
        raise DatasetError(
            f"input '{spec.name}' has shape {format_shape(spec.shape)}: synthetic data cannot choose a size for the dynamic dimensions",
            f"fix them with --shape {spec.name}={'x'.join('?' if d is None else str(d) for d in spec.shape[:1])}"
            f"{''.join('x' + ('N' if d is None else str(d)) for d in spec.shape[1:])} (N: the size to run)",
        )
    sample = tuple(int(d) for d in shape)
    fits = len(sample) == len(spec.sample_shape) and all(
        d > 0 and (want is None or want == d) for d, want in zip(sample, spec.sample_shape)
    )
    if not fits:
        raise DatasetError(
            f"the model declares synthetic samples of shape {list(sample)} for input '{spec.name}', which does not fit {format_shape(spec.shape)}",
            "report this to the model plugin's authors",
        )
    return TensorSpec(spec.name, spec.dtype, (spec.shape[0], *sample))


def _ranges(declared: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int]]:
    ranges = {}
    for name, bounds in declared.items():
        low, high = (int(b) for b in bounds)
        if high <= low:
            raise DatasetError(f"the model declares an empty value range [{low}, {high}) for input '{name}'",
                               "report this to the model plugin's authors")
        ranges[name] = (low, high)
    return ranges


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, bounds: tuple[int, int]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(bounds[0], bounds[1], size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise DatasetError(f"synthetic data cannot make values of type {dtype}", "use a dataset with real inputs")
