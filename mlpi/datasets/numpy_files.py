"""``numpy``: bring your own data as NumPy arrays, one array per model input.

``--dataset-path`` is either

- a ``.npz`` file (``np.savez`` / ``np.savez_compressed``) with one array per model input,
  keyed by the input's file name (below), plus an optional ``labels`` array; or
- a folder with one ``<file name>.npy`` per model input, plus an optional ``labels.npy``.
  These are memory-mapped (``np.load(mmap_mode="r")``): opening reads only their headers and
  loading reads only the rows LoadGen asks for.

File names: a model input's name with every character outside ``[A-Za-z0-9._-]`` replaced by
``_`` (ONNX names such as ``input_tensor:0`` or ``serving/x`` are not valid file names
everywhere), e.g. ``input_tensor:0`` -> ``input_tensor_0.npy`` or npz key ``input_tensor_0``.
:func:`file_stem` does the mapping. A model input whose file name is ``labels`` takes that
array; the dataset then has no labels.

Every array's first dimension is the sample index and must be the same for all of them.
The rest of an array's shape must match the model input's shape after the batch dimension
(a dynamic model dimension matches any size), and its dtype must be castable to the
input's with ``np.can_cast(..., "same_kind")`` (float64 data feeds a float32 input;
floats never feed an integer input). ``labels`` (the ground truth, e.g. class ids) must be
1-D with one entry per sample.

Arrays are batch first even where the model's input is not: an input batched along another
dimension (``--batch-axis``) is stored as ``[samples, *its shape without that dimension]``,
and an input that is not batched (a scalar, ``--batch-axis NAME=none``) as ``[samples, *its
shape]`` with every sample the same: mlpi feeds that one value to every batch.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.dataset import (
    Dataset,
    DatasetFactory,
    DatasetRequest,
    PreloadedDataset,
)
from mlpi.core.contract.errors import DatasetError

LABELS = "labels"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_stem(input_name: str) -> str:
    """The file name (without ``.npy``) or npz key holding model input ``input_name``."""
    return _UNSAFE.sub("_", input_name)


@dataclass(frozen=True)
class _Header:
    """What an array is, without reading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype


class NumpyDataset(PreloadedDataset):
    def __init__(self, inputs: Sequence[TensorSpec], stems: Mapping[str, str], source: _Source, count: int, labels: np.ndarray | None) -> None:
        super().__init__(inputs)
        self._stems = dict(stems)  # input name -> key in the source
        self._source = source
        self._count = count
        self._labels = labels

    @property
    def count(self) -> int:
        return self._count

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        rows = np.asarray(indices, dtype=np.int64)
        return {spec.name: np.asarray(self._source.array(self._stems[spec.name])[rows]) for spec in self.inputs}

    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else self._labels.copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "numpy", "path": str(self._source.path), "format": self._source.kind, "count": self._count}


class _Source:
    """A ``.npz`` file or a folder of ``.npy`` files: headers on open, data on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = "folder" if path.is_dir() else "npz"
        self._arrays: dict[str, np.ndarray] = {}
        self._headers: dict[str, _Header] = {} if self.kind == "folder" else self._npz_headers()
        self.keys = sorted(f.stem for f in path.glob("*.npy")) if self.kind == "folder" else sorted(self._headers)

    def header(self, key: str) -> _Header:
        """Shape and dtype of array ``key`` (a folder's .npy is memory-mapped, not read)."""
        if key not in self._headers:
            array = self.array(key)
            self._headers[key] = _Header(tuple(array.shape), array.dtype)
        return self._headers[key]

    def _npz_headers(self) -> dict[str, _Header]:
        headers = {}
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with archive.open(info) as fh:
                        version = np.lib.format.read_magic(fh)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                        shape, _fortran, dtype = read(fh)
                    headers[info.filename[: -len(".npy")]] = _Header(tuple(shape), np.dtype(dtype))
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"cannot read {self.path} as a .npz file: {exc}", "write it with np.savez or np.savez_compressed") from None
        return headers

    def array(self, key: str) -> np.ndarray:
        """The whole array: memory-mapped for a folder, decompressed once for a .npz."""
        array = self._arrays.get(key)
        if array is not None:
            return array
        try:
            if self.kind == "folder":
                file = self.path / f"{key}.npy"
                _check_npy_magic(file)
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            else:
                file = self.path
                with np.load(self.path, allow_pickle=False) as npz:
                    array = npz[key]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DatasetError(
                f"cannot read array '{key}' from {file}: {exc}", "write it with np.save / np.savez from a numeric array (not an object array)"
            ) from None
        self._arrays[key] = array
        return array


#: How every .npy file starts (``np.lib.format.MAGIC_PREFIX``); a pickle starts with 0x80.
_NPY_MAGIC = b"\x93NUMPY"


def _check_npy_magic(file: Path) -> None:
    """A file that is not a .npy at all is said to be one, not read on: ``np.load`` takes
    any file without the magic bytes for a pickle and, with pickles refused, would call
    random bytes "pickled (object) data"."""
    with open(file, "rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        return
    what = "pickled Python data" if head[:1] == b"\x80" else "not a .npy file"
    raise DatasetError(
        f"{file} is {what}: it does not start with NumPy's .npy header",
        "write it with np.save from a numeric array",
    )


class NumpyFiles(DatasetFactory):
    name = "numpy"
    needs_path = True
    description = "your own arrays: a .npz or a folder of <input>.npy, optional labels"

    def open(self, request: DatasetRequest) -> Dataset:
        inputs, path, count = request.inputs, request.path, request.count
        layout_hint = "a .npz with one array per model input, or a folder of <input name>.npy files (see `mlpi datasets`)"
        if path is None:
            raise DatasetError("numpy needs --dataset-path", f"point --dataset-path at {layout_hint}")
        if not path.exists():
            raise DatasetError(f"{path} does not exist", f"point --dataset-path at {layout_hint}")
        if not path.is_dir() and path.suffix.lower() != ".npz":
            raise DatasetError(f"{path} is neither a folder nor a .npz file", f"point --dataset-path at {layout_hint}")
        source = _Source(path.resolve())
        where = "the folder" if source.kind == "folder" else "the file"
        listing = lambda keys: ", ".join(sorted(keys)) or "nothing"  # noqa: E731
        if not inputs:
            raise DatasetError("the model has no inputs to feed", "check the model file")

        stems: dict[str, str] = {}
        for spec in inputs:
            stem = file_stem(spec.name)
            clash = next((other for other, s in stems.items() if s == stem), None)
            if clash is not None:
                raise DatasetError(
                    f"model inputs '{clash}' and '{spec.name}' both map to the file name '{stem}'",
                    "the numpy dataset cannot tell them apart; rename the model inputs",
                )
            stems[spec.name] = stem
        suffix = ".npy" if source.kind == "folder" else ""
        missing = [f"'{name}' ({stem}{suffix})" for name, stem in stems.items() if stem not in source.keys]
        if missing:
            raise DatasetError(
                f"{source.path} has no array for model input{'s' if len(missing) > 1 else ''} {', '.join(missing)}; {where} has: "
                + listing(k + suffix for k in source.keys),
                "name each array after its model input, with characters outside [A-Za-z0-9._-] replaced by '_'",
            )

        samples: int | None = None
        first = ""
        concrete: list[TensorSpec] = []
        for spec in inputs:
            stem = stems[spec.name]
            header = source.header(stem)
            if header.dtype.hasobject or header.dtype.kind in "OUSV":
                raise DatasetError(f"array '{stem}' holds {header.dtype} values", "store numbers: the model input is " + spec.dtype)
            if len(header.shape) < 1:
                raise DatasetError(f"array '{stem}' is a scalar, not one row per sample", "store the samples along the first dimension")
            if samples is None:
                samples, first = header.shape[0], stem
            elif header.shape[0] != samples:
                raise DatasetError(
                    f"array '{stem}' has {header.shape[0]} samples but '{first}' has {samples}",
                    "every array needs the same length along the first dimension (one row per sample)",
                )
            want = tuple(spec.sample_shape)
            got = header.shape[1:]
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                raise DatasetError(
                    f"array '{stem}' has samples of shape {format_shape(got)} but model input '{spec.name}' takes {format_shape(want)} per sample "
                    f"(the input is {format_shape(spec.shape)}, the array {format_shape(header.shape)})",
                    "the array's shape must be [samples, *input shape without the batch dimension]",
                )
            try:
                model_dtype = np.dtype(spec.dtype)
            except TypeError:
                raise DatasetError(f"model input '{spec.name}' has type {spec.dtype}, which numpy data cannot feed", "use a model with numeric inputs") from None
            if not np.can_cast(header.dtype, model_dtype, "same_kind"):
                raise DatasetError(
                    f"array '{stem}' holds {header.dtype} but model input '{spec.name}' takes {model_dtype}, and {header.dtype} does not cast to it",
                    f"save the array as {model_dtype} (e.g. array.astype(np.{model_dtype.name}))",
                )
            concrete.append(TensorSpec(spec.name, spec.dtype, (spec.shape[0], *got)))
        assert samples is not None

        labels: np.ndarray | None = None
        if LABELS in source.keys and LABELS not in stems.values():
            header = source.header(LABELS)
            if len(header.shape) != 1 or header.shape[0] != samples:
                raise DatasetError(
                    f"labels has shape {format_shape(header.shape)} but there are {samples} samples",
                    f"labels must be 1-D with one entry per sample: shape [{samples}]",
                )
            if header.dtype.hasobject or header.dtype.kind not in "biuf":
                raise DatasetError(f"labels holds {header.dtype} values", "store the labels as numbers (class ids)")
            labels = np.array(source.array(LABELS))

        if samples < 1:
            raise DatasetError(f"{source.path} holds no samples (its arrays have length 0)", "store at least one sample")
        if count is not None and count < 1:
            raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
        if count is not None and count > samples:
            raise DatasetError(
                f"--count {count} is more than the {samples} samples in {source.path}",
                f"pass --count {samples} or less, or leave --count out to use them all",
            )
        n = samples if count is None else count
        return NumpyDataset(concrete, stems, source, n, None if labels is None else labels[:n])
