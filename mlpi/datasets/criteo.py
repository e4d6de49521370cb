"""``criteo``: the multi-hot Criteo 1TB click logs, day 23, for DLRM-v2; a sample is a group of rows.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch/python/multihot_criteo.py``
(``MultihotCriteo``: the three day-23 files, memory-mapped, the npz members found by their
offset in the zip; only the first half of the official day 23 is used; the rows grouped into
samples of "user-item pairs" with sizes drawn from ``tools/dist_quantile.txt`` after
``np.random.seed(123)``) and ``python/main.py`` (``--count-samples`` keeps the first groups).

``--dataset-path`` is the folder holding

- ``day_23_dense.npy``: float32 ``[N, 13]``;
- ``day_23_sparse_multi_hot.npz``: an uncompressed npz whose members ``0.npy`` .. ``25.npy``
  are int32 ``[N, hotness[k]]``;
- ``day_23_labels.npy``: int32 ``[N, 1]`` (``[N]`` is accepted too),

or the same names with a ``_sample`` or ``_debug`` suffix (``_debug`` is what the reference's
``tools/quickgen.py`` writes). The official names win, then ``_sample``, then ``_debug``; the
first kind of which any file is there must be complete. Only for the official names does the
reference keep the first half of the rows (``N // 2 + N % 2``); the variants are used whole.

The files are about 90 GB, so they are memory-mapped and never read whole: ``open`` checks
shapes and dtypes from the headers, and ``load`` copies only the loaded groups' rows into
contiguous arrays (and checks their indices against the model's table sizes there).

Without ``--dataset-path`` the data is generated in the layout of ``tools/quickgen.py``
(dense uniform in [0, 9), labels 0/1, indices uniform over each official table): each
group's rows come from an RNG keyed on ``(--seed, group index)`` when it is loaded, so a
group is the same whatever else is loaded, and only loaded groups cost memory.

The model declares, in its DataParams: ``hotness`` (indices per row of each sparse feature),
``table_sizes`` (rows of each embedding table; every index must be below it),
``group_size_quantiles`` and ``grouping_seed``. It feeds ``dense_features`` float32
``[N, 13]``, ``sparse_features`` int32 ``[N, sum(hotness)]`` (feature k's indices side by
side) and may take ``labels`` float32 ``[N]`` (each row's click label) as a sample input.

Calibration by name (``DatasetRequest.names``; MLCommons' ``calibration/CriteoTerabyte/README.md``:
the first 128,000 rows of the second half of day 23, rows 89,137,319 to 89,265,318): each name
is a row range ``FIRST-LAST``, 0-based and inclusive, of the whole files (for the official
ones too, whose second half a run never reads). The ranges' rows, in the list's order, are cut
into samples of :data:`CALIBRATION_CHUNK_ROWS` rows (a range's last one shorter): one batch of
rows each, as the model's pipeline feeds them; no grouping, and labels are read but not needed.

Ground truth (:class:`CriteoTruth`): each sample's labels, read when asked for. The DLRM
scorer reads them from the accuracy log itself, as MLCommons' ``accuracy-dlrm.py`` does.
"""

from __future__ import annotations

import math
import re
import struct
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.dataset import (
    DataParams,
    Dataset,
    DatasetFactory,
    DatasetRequest,
)
from mlpi.core.contract.errors import DatasetError

NAME = "criteo"
DENSE_INPUT, SPARSE_INPUT, LABEL_INPUT = "dense_features", "sparse_features", "labels"
#: Criteo's integer features, one float column each.
DENSE_WIDTH = 13
#: Samples generated when there is no ``--dataset-path`` and no ``--count``.
DEFAULT_FAKE_GROUPS = 1024
#: File-name suffix of each kind of day-23 file set, in order of preference.
VARIANTS: dict[str, str] = {"official": "", "sample": "_sample", "debug": "_debug"}
DAY = "day_23"
#: Rows copied per step while loading (bounds the temporaries of one step: 100 MB for 100 indices a row).
LOAD_CHUNK_ROWS = 1 << 18
#: Rows whose indices are checked per step (bounds the check's temporary: 14 MB).
CHECK_CHUNK_ROWS = 1 << 16
#: Seconds a load may take before it reports its progress, and between reports.
PROGRESS_AFTER_S = 2.0
#: Rows of one sample opened by name (calibration): a batch of rows the pipeline would run as
#: one, small enough that a calibrator's per-batch intermediates stay small (500 for MLPerf's set).
CALIBRATION_CHUNK_ROWS = 256
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
_MAKE_HINT = ("give the folder holding MLCommons' multi-hot day_23 files, write fake ones with "
              "`python -m mlpi.datasets.criteo_fake FOLDER --rows N`, or leave --dataset-path out for generated data")


def file_names(variant: str) -> tuple[str, str, str]:
    """The dense, sparse and label file names of a kind of file set (``official``/``sample``/``debug``)."""
    suffix = VARIANTS[variant]
    return f"{DAY}_dense{suffix}.npy", f"{DAY}_sparse_multi_hot{suffix}.npz", f"{DAY}_labels{suffix}.npy"


def first_half(rows: int) -> int:
    """Rows of the official day 23 that the reference uses: the first half, rounded up."""
    return rows // 2 + rows % 2


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class CriteoParams:
    """The model's data parameters this dataset reads."""

    hotness: tuple[int, ...]
    table_sizes: tuple[int, ...]
    quantiles: tuple[int, ...]
    grouping_seed: int

    @classmethod
    def from_params(cls, params: DataParams) -> CriteoParams:
        def ints(key: str) -> tuple[int, ...]:
            value = params.require(key, NAME)
            try:
                out = tuple(int(v) for v in value)
                exact = all(int(v) == v for v in value)
            except (TypeError, ValueError):
                out, exact = (), False
            if not out or not exact or min(out) < 1:
                raise DatasetError(f"the model declares {key}={value!r} for criteo; it needs a list of positive integers",
                                   f"fix the model plugin's '{key}'")
            return out

        hotness, sizes, quantiles = ints("hotness"), ints("table_sizes"), ints("group_size_quantiles")
        if len(sizes) != len(hotness):
            raise DatasetError(f"the model declares {len(hotness)} hotness values but {len(sizes)} table sizes for criteo",
                               "fix the model plugin's 'hotness' and 'table_sizes': one of each per sparse feature")
        seed = params.require("grouping_seed", NAME)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
            raise DatasetError(f"the model declares grouping_seed={seed!r} for criteo; it needs an integer in [0, 2**32)",
                               "fix the model plugin's 'grouping_seed'")
        return cls(hotness, sizes, quantiles, int(seed))

    @property
    def width(self) -> int:
        """Columns of ``sparse_features``: every feature's indices side by side."""
        return sum(self.hotness)

    def column_offsets(self) -> np.ndarray:
        """``[features + 1]``: where each feature's indices start in a row of ``sparse_features``."""
        return np.concatenate(([0], np.cumsum(self.hotness))).astype(np.int64)

    def column_limits(self) -> np.ndarray:
        """``[width]`` int64: the table size each column's indices must stay below."""
        return np.repeat(np.asarray(self.table_sizes, dtype=np.int64), self.hotness)


# --------------------------------------------------------------------------- grouping


def _draw_sizes(state: np.random.RandomState, quantiles: np.ndarray, n: int) -> np.ndarray:
    """``n`` group sizes, drawn as the reference's ``quantile[np.random.randint(0, len)]`` draws
    them one at a time (the legacy generator gives one sequence however it is chunked)."""
    return quantiles[state.randint(low=0, high=len(quantiles), size=n)]


def group_offsets(rows: int, quantiles: Sequence[int], seed: int, *, chunk: int | None = None) -> np.ndarray:
    """``[groups + 1]`` int64 row offsets of the samples that ``rows`` rows are cut into: the
    reference's loop (draw a size, advance, stop at ``rows``, the last group cut short),
    drawn ``chunk`` sizes at a time (by default about as many as there will be groups)."""
    if rows < 1:
        raise ValueError(f"cannot group {rows} rows")
    table = np.asarray(quantiles, dtype=np.int64)
    state = np.random.RandomState(seed)
    if chunk is None:
        chunk = max(1024, min(1 << 20, rows // max(1, int(table.mean())) + 64))
    parts: list[np.ndarray] = []
    total = 0
    while total < rows:
        sizes = _draw_sizes(state, table, chunk)
        parts.append(sizes)
        total += int(sizes.sum())
    ends = np.cumsum(np.concatenate(parts))
    last = int(np.searchsorted(ends, rows, side="left"))  # the first group reaching the end
    offsets = np.concatenate(([0], ends[: last + 1])).astype(np.int64)
    offsets[-1] = rows
    return offsets


def fake_group_offsets(groups: int, quantiles: Sequence[int], seed: int) -> np.ndarray:
    """``[groups + 1]`` offsets of ``groups`` generated samples: the reference's draws with no end."""
    sizes = _draw_sizes(np.random.RandomState(seed), np.asarray(quantiles, dtype=np.int64), groups)
    return np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


# --------------------------------------------------------------------------- the files


def locate(path: Path) -> tuple[str, tuple[Path, Path, Path]]:
    """The kind of file set in ``path`` and its three files; one DatasetError naming what is
    expected when no set is there or the preferred one is incomplete."""
    if not path.is_dir():
        raise DatasetError(f"criteo needs a folder holding {', '.join(file_names('official'))}; {path} is not a folder",
                           _MAKE_HINT)
    for variant in VARIANTS:
        files = tuple(path / name for name in file_names(variant))
        present = [f.exists() for f in files]
        if all(present):
            return variant, files  # type: ignore[return-value]
        if any(present):
            missing = ", ".join(f.name for f, here in zip(files, present) if not here)
            raise DatasetError(f"{path} holds only some of the criteo {variant} files: {missing} missing", _MAKE_HINT)
    expected = "; ".join(", ".join(file_names(v)) for v in VARIANTS)
    raise DatasetError(f"{path} holds no criteo day-23 files: expected {expected}", _MAKE_HINT)


def open_npy(path: Path) -> np.memmap:
    """``path`` memory-mapped; a file that is not a whole .npy is one DatasetError naming it."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {_one_line(exc)}", "check the file's permissions") from None
    except (ValueError, EOFError) as exc:
        raise DatasetError(f"{path} is truncated or not a .npy file ({_one_line(exc)})", _fetch_again(path)) from None
    if not isinstance(array, np.memmap):
        if hasattr(array, "close"):
            array.close()
        raise DatasetError(f"{path} is not a .npy file", _fetch_again(path))
    return array


def open_npz_members(path: Path, count: int) -> list[np.memmap]:
    """Members ``0.npy`` .. ``{count-1}.npy`` of an uncompressed npz, each memory-mapped where
    it lies in the zip (as the reference does): a member must be stored, not compressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {_one_line(exc)}", "check the file's permissions") from None
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DatasetError(f"{path} is truncated or not an .npz archive ({_one_line(exc)})", _fetch_again(path)) from None
    size = path.stat().st_size
    members: list[np.memmap] = []
    with path.open("rb") as handle:
        for k in range(count):
            name = f"{k}.npy"
            info = infos.get(name)
            if info is None:
                raise DatasetError(f"{path} has no member {name} (sparse feature {k}); it holds {len(infos)} members",
                                   _fetch_again(path))
            if info.compress_type != zipfile.ZIP_STORED:
                raise DatasetError(f"member {name} of {path} is compressed; criteo memory-maps the members, "
                                   "which needs them stored uncompressed",
                                   "write the file with np.savez, not np.savez_compressed")
            members.append(_map_member(path, handle, info, size))
    return members


def _map_member(path: Path, handle: Any, info: zipfile.ZipInfo, size: int) -> np.memmap:
    where = f"member {info.filename} of {path}"
    try:
        handle.seek(info.header_offset)
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(handle.read(_ZIP_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ValueError("no zip local header where the archive's directory says")
        start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version} is not supported")
        offset = handle.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        if offset + nbytes > min(size, start + info.file_size):
            raise ValueError(f"its {format_shape(shape)} {dtype} data runs past the end of the member")
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (ValueError, EOFError, struct.error) as exc:
        raise DatasetError(f"{where} is truncated or not a .npy ({_one_line(exc)})", _fetch_again(path)) from None


@dataclass
class DayFiles:
    """The three day-23 files, memory-mapped, cut to the rows the reference uses."""

    folder: Path
    variant: str
    files: tuple[Path, Path, Path]
    dense: np.memmap  # [rows, 13] float32
    sparse: list[np.memmap]  # [rows, hotness[k]] int32 each
    labels: np.memmap  # [rows]
    rows_in_files: int

    @property
    def rows(self) -> int:
        return int(self.dense.shape[0])

    @property
    def halved(self) -> bool:
        return self.variant == "official"

    @classmethod
    def open(cls, folder: Path, params: CriteoParams, *, whole: bool = False) -> DayFiles:
        """Open and check the files cheaply (headers only): shapes, dtypes, lengths.
        ``whole``: keep every row, not only the half the reference reads (calibration rows
        lie in the official files' second half)."""
        variant, files = locate(folder)
        dense_path, sparse_path, labels_path = files
        dense = open_npy(dense_path)
        if dense.ndim != 2 or dense.shape[1] != DENSE_WIDTH or dense.dtype != np.float32:
            raise DatasetError(f"{dense_path} is {dense.dtype} {format_shape(dense.shape)}, not float32 [N, {DENSE_WIDTH}]",
                               _fetch_again(dense_path))
        rows = int(dense.shape[0])
        if rows == 0:
            raise DatasetError(f"{dense_path} holds no rows", _fetch_again(dense_path))
        sparse = open_npz_members(sparse_path, len(params.hotness))
        for k, (member, hot) in enumerate(zip(sparse, params.hotness)):
            if member.dtype != np.int32:
                raise DatasetError(f"member {k}.npy of {sparse_path} is {member.dtype}, not int32", _fetch_again(sparse_path))
            if member.ndim != 2 or member.shape[1] != hot:
                raise DatasetError(f"member {k}.npy of {sparse_path} is {format_shape(member.shape)}, but the model's "
                                   f"sparse feature {k} takes {hot} indices per row ([N, {hot}])",
                                   "use the multi-hot files made with the model's hotness (make_fake_criteo.sh's sizes)")
            if member.shape[0] != rows:
                raise DatasetError(f"member {k}.npy of {sparse_path} holds {member.shape[0]} rows, "
                                   f"but {dense_path.name} holds {rows}", _fetch_again(sparse_path))
        labels = open_npy(labels_path)
        if not (labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1)) or labels.dtype.kind not in "biuf":
            raise DatasetError(f"{labels_path} is {labels.dtype} {format_shape(labels.shape)}, not int32 [N, 1] or [N]",
                               _fetch_again(labels_path))
        if labels.shape[0] != rows:
            raise DatasetError(f"{labels_path.name} holds {labels.shape[0]} labels, but {dense_path.name} holds {rows} rows",
                               _fetch_again(labels_path))
        labels = labels.reshape(rows)
        used = first_half(rows) if variant == "official" and not whole else rows
        return cls(folder, variant, files, dense[:used], [m[:used] for m in sparse], labels[:used], rows)

    def fill(self, groups: np.ndarray, offsets: np.ndarray, out: Mapping[str, np.ndarray],
             columns: np.ndarray) -> None:
        """Copy the rows of ``groups`` (sorted) into ``out``, in that order."""
        self.fill_spans(offsets[groups], offsets[groups + 1] - offsets[groups], out, columns)

    def fill_spans(self, starts: np.ndarray, lengths: np.ndarray, out: Mapping[str, np.ndarray],
                   columns: np.ndarray) -> None:
        """Copy file rows ``starts[i]:starts[i] + lengths[i]`` for each ``i`` into ``out``, side
        by side, chunk by chunk (the file rows of a chunk are worked out per chunk, so no index
        array spans the load)."""
        starts = np.asarray(starts, dtype=np.int64)
        placed = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)  # where each span goes in out
        total = int(placed[-1])
        began = last = time.perf_counter()
        for a in range(0, total, LOAD_CHUNK_ROWS):
            b = min(a + LOAD_CHUNK_ROWS, total)
            at = np.arange(a, b, dtype=np.int64)
            group = np.searchsorted(placed, at, side="right") - 1
            chunk = starts[group] + at - placed[group]
            # Indexing, not np.take: take copies an unaligned array (an npz member usually is) whole.
            out[DENSE_INPUT][a:b] = self.dense[chunk]
            out[LABEL_INPUT][a:b] = self.labels[chunk]
            for k, member in enumerate(self.sparse):
                out[SPARSE_INPUT][a:b, columns[k] : columns[k + 1]] = member[chunk]
            now = time.perf_counter()
            if now - began > PROGRESS_AFTER_S and now - last > PROGRESS_AFTER_S:
                last = now
                print(f"mlpi: loading criteo rows {b}/{total}", file=sys.stderr, flush=True)

    def read_labels(self, index: int, start: int, end: int) -> np.ndarray:
        return np.asarray(self.labels[start:end], dtype=np.float32)

    def where(self, row: int) -> str:
        return f"row {row} of {self.files[1].name}"


# --------------------------------------------------------------------------- generated data


class FakeRows:
    """Rows in the layout of the reference's ``quickgen.py``, each group from its own RNG."""

    def __init__(self, seed: int, params: CriteoParams) -> None:
        self.seed = int(seed) % 2**64
        limits = np.minimum(params.column_limits(), 2**31)  # sparse indices are int32
        self.scale, self.top = limits.astype(np.float64), (limits - 1).astype(np.float64)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    def group(self, index: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group ``index``'s labels, dense and sparse rows (labels first: the truth reads only them)."""
        rng = self._rng(index)
        labels = rng.integers(0, 2, size=rows).astype(np.float32)
        dense = rng.uniform(0.0, 9.0, size=(rows, DENSE_WIDTH)).astype(np.float32)
        # A [0, 1) draw scaled to each column's table: uniform to 1 part in 2**53, and several
        # times faster than integers() with a bound per column (a performance set is 200k groups).
        sparse = np.minimum(np.floor(rng.random((rows, len(self.scale))) * self.scale), self.top).astype(np.int32)
        return labels, dense, sparse

    def fill(self, groups: np.ndarray, offsets: np.ndarray, out: Mapping[str, np.ndarray],
             columns: np.ndarray) -> None:
        at = 0
        for index in groups:
            rows = int(offsets[index + 1] - offsets[index])
            labels, dense, sparse = self.group(int(index), rows)
            out[LABEL_INPUT][at : at + rows] = labels
            out[DENSE_INPUT][at : at + rows] = dense
            out[SPARSE_INPUT][at : at + rows] = sparse
            at += rows

    def read_labels(self, index: int, start: int, end: int) -> np.ndarray:
        return self._rng(index).integers(0, 2, size=end - start).astype(np.float32)

    def where(self, row: int) -> str:
        return "generated data"


# --------------------------------------------------------------------------- rows named by a calibration list


def parse_row_range(name: str, rows: int, where: str) -> tuple[int, int]:
    """``(first, last)`` of a calibration name ``FIRST-LAST`` (0-based, inclusive) within the
    ``rows`` rows of ``where``; anything else is one DatasetError naming it and the row count."""
    hint = (f"name row ranges FIRST-LAST, 0-based and inclusive, within the {rows} rows of {where} "
            f"(0-{rows - 1} is all of them), one a line")
    found = re.fullmatch(r"([0-9]+)-([0-9]+)", name.strip())
    if found is None:
        raise DatasetError(f"criteo calibration name {name!r} is not a row range FIRST-LAST of {where} ({rows} rows)", hint)
    first, last = int(found[1]), int(found[2])
    if first > last:
        raise DatasetError(f"criteo calibration range {name!r} ends before it starts ({where} has {rows} rows)", hint)
    if last >= rows:
        raise DatasetError(f"criteo calibration range {name!r} runs past the {rows} rows of {where} "
                           f"(the last is row {rows - 1})", hint)
    return first, last


def range_chunks(ranges: Sequence[tuple[int, int]], chunk: int = CALIBRATION_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The samples ``ranges`` are cut into, in order: each one's first file row and its
    ``[samples + 1]`` offsets among the named rows (``chunk`` rows each, a range's last fewer)."""
    starts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for first, last in ranges:
        begin = np.arange(first, last + 1, chunk, dtype=np.int64)
        starts.append(begin)
        lengths.append(np.minimum(begin + chunk, last + 1) - begin)
    sizes = np.concatenate(lengths)
    return np.concatenate(starts), np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


class RowRanges:
    """The rows of a calibration list's ranges, read from the day-23 files: sample ``i`` is
    file rows ``file_starts[i]`` onwards, as many as its offsets say."""

    def __init__(self, files: DayFiles, file_starts: np.ndarray, offsets: np.ndarray) -> None:
        self.files = files
        self.file_starts = file_starts
        self.offsets = offsets

    def fill(self, groups: np.ndarray, offsets: np.ndarray, out: Mapping[str, np.ndarray],
             columns: np.ndarray) -> None:
        self.files.fill_spans(self.file_starts[groups], offsets[groups + 1] - offsets[groups], out, columns)

    def read_labels(self, index: int, start: int, end: int) -> np.ndarray:
        first = int(self.file_starts[index])
        return np.asarray(self.files.labels[first : first + end - start], dtype=np.float32)

    def where(self, row: int) -> str:
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.files.where(int(self.file_starts[index]) + row - int(self.offsets[index]))


# --------------------------------------------------------------------------- the dataset


class SampleIndexError(DatasetError, IndexError):
    """A sample index that is out of range or not loaded."""


class CriteoTruth:
    """Each sample's click labels (float32, one per row), read when asked for."""

    def __init__(self, offsets: np.ndarray, read: Callable[[int, int, int], np.ndarray],
                 row_labels: np.ndarray | None) -> None:
        self.offsets = offsets
        self._read = read
        #: Every used row's label, memory-mapped (``None`` for generated data).
        self.row_labels = row_labels

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def labels(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise SampleIndexError(f"criteo sample {index} is not one of the {len(self)} samples",
                                   f"sample indices run from 0 to {len(self) - 1}")
        return self._read(index, int(self.offsets[index]), int(self.offsets[index + 1]))


@dataclass
class _Block:
    """The groups one ``load`` call brought in, their rows side by side."""

    arrays: dict[str, np.ndarray]
    groups: np.ndarray  # sorted sample indices
    starts: np.ndarray  # [len(groups) + 1] row offsets into arrays
    live: int


class CriteoDataset(Dataset):
    """Groups of rows, one per sample; loaded groups live in contiguous arrays, fed with :meth:`sample`."""

    def __init__(self, inputs: Sequence[TensorSpec], source: DayFiles | FakeRows | RowRanges, params: CriteoParams,
                 offsets: np.ndarray, performance_count: int, description: Mapping[str, Any]) -> None:
        self.inputs = list(inputs)
        self.source = source
        self._params = params
        self._columns = params.column_offsets()
        self._offsets = offsets
        self._performance_count = performance_count
        self._description = dict(description)
        self._blocks: list[_Block] = []
        self._where: dict[int, tuple[_Block, int]] = {}
        self._views: dict[int, dict[str, np.ndarray]] = {}

    @property
    def count(self) -> int:
        return len(self._offsets) - 1

    @property
    def performance_count(self) -> int:
        return self._performance_count

    @property
    def offsets(self) -> np.ndarray:
        """``[count + 1]`` int64: the rows sample ``i`` spans are ``offsets[i]:offsets[i + 1]``."""
        return self._offsets

    def sample_rows(self) -> np.ndarray:
        return np.diff(self._offsets)

    def load(self, indices: Sequence[int]) -> None:
        wanted = np.unique(np.asarray(list(indices), dtype=np.int64))
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.count):
            bad = int(wanted[0] if wanted[0] < 0 else wanted[-1])
            raise SampleIndexError(f"criteo sample {bad} is not one of the {self.count} samples",
                                   f"sample indices run from 0 to {self.count - 1}")
        wanted = np.array([g for g in wanted.tolist() if g not in self._where], dtype=np.int64)
        if not len(wanted):
            return
        lengths = self._offsets[wanted + 1] - self._offsets[wanted]
        starts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        total = int(starts[-1])
        arrays = {DENSE_INPUT: np.empty((total, DENSE_WIDTH), np.float32),
                  SPARSE_INPUT: np.empty((total, self._params.width), np.int32),
                  LABEL_INPUT: np.empty(total, np.float32)}
        self.source.fill(wanted, self._offsets, arrays, self._columns)
        block = _Block(arrays, wanted, starts, len(wanted))
        self._check_indices(block)
        self._blocks.append(block)
        for position, group in enumerate(wanted.tolist()):
            self._where[group] = (block, position)

    def _check_indices(self, block: _Block) -> None:
        """Every loaded index must be a row of its table: one that is not is one error line.

        One contiguous pass in row chunks; read as uint32, a negative index is 2**31 or more,
        so one comparison with each column's table size catches both kinds."""
        sparse = block.arrays[SPARSE_INPUT]
        limits = np.minimum(self._params.column_limits(), 2**31).astype(np.uint32)
        for a in range(0, len(sparse), CHECK_CHUNK_ROWS):
            outside = sparse[a : a + CHECK_CHUNK_ROWS].view(np.uint32) >= limits
            if not outside.any():
                continue
            first, column = (int(i) for i in np.argwhere(outside)[0])
            row = a + first
            k = int(np.searchsorted(self._columns, column, side="right")) - 1
            position = int(np.searchsorted(block.starts, row, side="right")) - 1
            group = int(block.groups[position])
            file_row = int(self._offsets[group]) + row - int(block.starts[position])
            raise DatasetError(f"criteo sparse feature {k} of sample {group} ({self.source.where(file_row)}) holds index "
                               f"{int(sparse[row, column])}, outside its table of {self._params.table_sizes[k]} rows",
                               "the data does not fit the model's table sizes: use the day-23 files made for this model")

    def unload(self, indices: Sequence[int]) -> None:
        for index in indices:
            found = self._where.pop(int(index), None)
            self._views.pop(int(index), None)
            if found is not None:
                found[0].live -= 1
        self._blocks = [b for b in self._blocks if b.live > 0]

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        """Views of the loaded group's rows, not copies: ``[rows, 13]``, ``[rows, width]``, ``[rows]``."""
        views = self._views.get(index)
        if views is None:
            found = self._where.get(int(index))
            if found is None:
                raise SampleIndexError(f"criteo sample {index} is not loaded", "load() a sample before feeding it")
            block, position = found
            a, b = int(block.starts[position]), int(block.starts[position + 1])
            views = self._views[index] = {spec.name: block.arrays[spec.name][a:b] for spec in self.inputs}
        return views

    def gather(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Refused: samples hold different numbers of rows, so no fixed buffer fits a batch of them."""
        raise DatasetError("criteo samples are groups of differing numbers of rows and cannot be gathered into a batch",
                           "the model's pipeline must feed them with sample(), cutting batches by sample_rows()")

    def ground_truth(self) -> CriteoTruth:
        row_labels = self.source.labels[: self._offsets[-1]] if isinstance(self.source, DayFiles) else None
        return CriteoTruth(self._offsets, self.source.read_labels, row_labels)

    def describe(self) -> dict[str, Any]:
        return {"kind": NAME, "count": self.count, "groups": self.count, "rows": int(self._offsets[-1]),
                **self._description}


class Criteo(DatasetFactory):
    name = NAME
    needs_path = False
    description = "Criteo 1TB multi-hot day 23 for DLRM-v2 (MLCommons' files, memory-mapped), or generated rows"
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        params = CriteoParams.from_params(request.params)
        inputs = [] if request.for_scoring else _inputs(request.inputs, params)
        if request.names is not None:
            return _open_ranges(request, params, inputs)
        if request.path is None:
            groups = DEFAULT_FAKE_GROUPS if request.count is None else request.count
            if groups < 1:
                raise DatasetError(f"--count {groups} leaves no samples", "pass --count 1 or more")
            offsets = fake_group_offsets(groups, params.quantiles, params.grouping_seed)
            source: DayFiles | FakeRows | RowRanges = FakeRows(request.seed, params)
            description: dict[str, Any] = {"path": None, "variant": "generated", "seed": request.seed,
                                           "rows_in_files": None, "first_half": False}
        else:
            files = DayFiles.open(Path(request.path), params)
            offsets = group_offsets(files.rows, params.quantiles, params.grouping_seed)
            offsets = offsets[: _count(len(offsets) - 1, request.count, files.folder) + 1]
            source = files
            description = {"path": str(files.folder), "variant": files.variant, "rows_in_files": files.rows_in_files,
                           "rows_used_of_files": files.rows, "first_half": files.halved}
        description["grouping_seed"] = params.grouping_seed
        count = len(offsets) - 1
        return CriteoDataset(inputs, source, params, offsets, request.performance_count_of(count), description)


def _open_ranges(request: DatasetRequest, params: CriteoParams, inputs: list[TensorSpec]) -> CriteoDataset:
    """The rows a calibration list's ranges name, of the whole day-23 files, as samples of
    :data:`CALIBRATION_CHUNK_ROWS` rows in the list's order."""
    if request.path is None:
        raise DatasetError("criteo reads calibration row ranges from day-23 files, and no folder is given",
                           "pass --calibration-path (or --dataset-path) with the folder holding the day_23 files")
    if not request.names:
        raise DatasetError("the criteo calibration list names no row range", "put one range FIRST-LAST a line")
    files = DayFiles.open(Path(request.path), params, whole=True)
    where = files.files[0].name
    ranges = [parse_row_range(name, files.rows, where) for name in request.names]
    file_starts, offsets = range_chunks(ranges)
    description = {"path": str(files.folder), "variant": files.variant, "rows_in_files": files.rows_in_files,
                   "row_ranges": list(request.names), "chunk_rows": CALIBRATION_CHUNK_ROWS, "first_half": False}
    count = len(offsets) - 1
    return CriteoDataset(inputs, RowRanges(files, file_starts, offsets), params, offsets,
                         request.performance_count_of(count), description)


def _inputs(inputs: Sequence[TensorSpec], params: CriteoParams) -> list[TensorSpec]:
    """The model's inputs as this dataset feeds them; anything it cannot produce is refused."""
    feeds = {DENSE_INPUT: ("float32", (None, DENSE_WIDTH)), SPARSE_INPUT: ("int32", (None, params.width)),
             LABEL_INPUT: ("float32", (None,))}
    hint = (f"criteo feeds {DENSE_INPUT} float32 [N, {DENSE_WIDTH}], {SPARSE_INPUT} int32 [N, {params.width}] "
            f"and {LABEL_INPUT} float32 [N]: use a DLRM-v2 model")
    names = [spec.name for spec in inputs]
    unknown = [n for n in names if n not in feeds] + [n for n in feeds if names.count(n) > 1]
    missing = [n for n in (DENSE_INPUT, SPARSE_INPUT) if n not in names]
    if unknown or missing:
        given = ", ".join(names) or "none"
        raise DatasetError(f"criteo cannot feed the model's inputs ({given}): "
                           + "; ".join(([f"unknown or repeated: {', '.join(unknown)}"] if unknown else [])
                                       + ([f"missing: {', '.join(missing)}"] if missing else [])), hint)
    out = []
    for spec in inputs:
        dtype, shape = feeds[spec.name]
        fits = len(spec.shape) == len(shape) and all(g is None or w is None or g == w for g, w in zip(spec.shape[1:], shape[1:]))
        if spec.dtype != dtype or not fits:
            raise DatasetError(f"the model's input '{spec.name}' is {spec.dtype} {format_shape(spec.shape)}; criteo feeds "
                               f"it as {dtype} {format_shape(shape)}", hint)
        out.append(TensorSpec(spec.name, dtype, shape))
    return out


def _count(total: int, count: int | None, where: Path) -> int:
    if count is None:
        return total
    if count < 1:
        raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
    if count > total:
        raise DatasetError(f"--count {count} is more than the {total} criteo samples (groups of rows) in {where}",
                           f"pass --count {total} or less, or leave --count out to use them all")
    return count


def _fetch_again(path: Path) -> str:
    return f"{path.name} is damaged: fetch or regenerate it (`python -m mlpi.datasets.criteo_fake` writes fake ones)"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
