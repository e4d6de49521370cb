"""``kits19``: KiTS19 CT volumes for the 3D-UNet benchmark, one LoadGen sample per whole volume.

Followed: MLCommons inference ``vision/medical_imaging/3d-unet-kits19`` — ``preprocess.py``
(what a sample is), ``global_vars.py`` (the 43 inference cases), ``base_SUT.py`` (a sample is
fed as one ``(1, 1, D, H, W)`` volume and cut into windows by the model's pipeline) and
``accuracy_kits.py`` (scoring compares with the preprocessed labels, sample ``i`` being
``file_list[i]``).

Volumes differ in size, so samples are never batched: :meth:`Kits19Dataset.sample` hands
out the loaded volume itself and :meth:`Kits19Dataset.gather` refuses.

``--dataset-path`` is either

1. the folder the reference's ``preprocess.py`` wrote: ``preprocessed_files.pkl`` (the
   sample order, ``file_list``, and each case's shape and affines) and one
   ``case_XXXXX.pkl`` per case holding ``[image (1, D, H, W) float32, label (1, D, H, W)
   uint8]``. Pickles can run code when loaded, so these are read with an unpickler that
   builds numpy arrays and plain Python values only, and refuses anything else; or
2. raw KiTS19 (``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``, as
   github.com/neheller/kits19 lays them out under ``data/``; the repository's root works
   too). The cases are the 43 inference cases in the reference's order when all are there,
   every ``case_*`` folder (sorted) when none is, and an error when only some are. They are
   preprocessed as ``preprocess.py`` does (:func:`preprocess_case`), once, into the cache.

``--count N`` takes the first N cases.

By name (``DatasetRequest.names``, int8 calibration on MLPerf's list of 20 KiTS19 cases,
``calibration/KiTS/calibration_cases.txt``): exactly the named cases, in the list's order,
without ground truth, from either form. The reference preprocesses them with ``preprocess.py
--calibration``, which writes the same layout (its ``file_list`` the calibration cases) into
the folder its Makefile calls ``build/calibration_data``; that folder, or the ``build`` folder
holding it, or raw KiTS19 (where every case is; preprocessed as for a run, into the same
cache, images only) all serve. A case that is not there is one error naming the first ten.

The model declares, in its DataParams: ``roi_shape`` (the window, ``(128, 128, 128)``),
``overlap`` (0.5: windows advance by ``roi * (1 - overlap)`` voxels, the stride),
``target_spacing`` (mm per voxel along D, H, W), ``clip`` (the CT intensity range kept),
``mean`` / ``std`` (the normalisation) and ``padding_value`` (the normalised value padded
volumes get).

Cache (raw form only): preprocessing a real case takes seconds (resampling a 512x512xN CT),
so it is done once, into ``cache_root()/datasets/kits19/<key>/``: ``cases.json`` plus, per
case, ``<case>.image.npy`` (float32 ``(D, H, W)``) and ``<case>.label.npy`` (uint8), plain
``.npy`` files that ``np.load`` reads with ``allow_pickle=False`` (and could memory-map).
The key is a sha256 over :data:`PREPROCESS_VERSION`, the parameters above, scipy's version
(its resampling decides the voxels) and each used case's file names, sizes and
``mtime_ns``: the raw volumes are gigabytes of gzip, and hashing them on every open would
cost more than it protects against (a file rewritten in place keeping size and mtime). The
folder's path is not in the key, so a moved dataset keeps its cache. Only the used cases
are keyed, so ``--count 2`` preprocesses two. The cache is built in a temporary sibling
folder and renamed into place complete; one whose files do not match ``cases.json`` is
rebuilt.

Ground truth (:class:`Kits19Truth`): the preprocessed label of each case, read from disk
when asked for (a label is tens of MB; all 43 at once would be gigabytes).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import re
import sys
import time
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
from mlpi.core.engine.cache import cache_root, staged_folder
from mlpi.datasets.image_cache import missing_from_list

NAME = "kits19"
#: Bumped whenever the cached volumes' meaning or layout changes.
PREPROCESS_VERSION = 1
#: What the reference's ``preprocess.py`` writes beside the case pickles.
INDEX_FILE = "preprocessed_files.pkl"
IMAGE_FILE = "imaging.nii.gz"
LABEL_FILE = "segmentation.nii.gz"
CACHE_INDEX = "cases.json"
#: Where the reference's Makefile has ``preprocess.py --calibration`` write the calibration cases.
CALIBRATION_FOLDER = "calibration_data"
INSTALL_HINT = "pip install 'mlpi[kits19]'"
#: Seconds a load may take before it reports its progress.
PROGRESS_AFTER_S = 2.0

#: The KiTS19 cases MLPerf's 3D-UNet benchmark runs, in sample order (its inference_cases.json).
INFERENCE_CASES: tuple[str, ...] = (
    "case_00000", "case_00003", "case_00005", "case_00006", "case_00012", "case_00024",
    "case_00034", "case_00041", "case_00044", "case_00049", "case_00052", "case_00056",
    "case_00061", "case_00065", "case_00066", "case_00070", "case_00076", "case_00078",
    "case_00080", "case_00084", "case_00086", "case_00087", "case_00092", "case_00111",
    "case_00112", "case_00125", "case_00128", "case_00138", "case_00157", "case_00160",
    "case_00161", "case_00162", "case_00169", "case_00171", "case_00176", "case_00185",
    "case_00187", "case_00189", "case_00198", "case_00203", "case_00206", "case_00207",
    "case_00400",
)

_CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_EXPECTED = (
    f"a folder written by MLCommons' 3d-unet-kits19 preprocess.py ({INDEX_FILE} and case_XXXXX.pkl files), "
    f"or raw KiTS19 (case_XXXXX/{IMAGE_FILE} folders, github.com/neheller/kits19's data/)"
)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class PreprocessParams:
    """The model's preprocessing settings (every one it must declare)."""

    roi_shape: tuple[int, int, int]
    overlap: float
    target_spacing: tuple[float, float, float]
    clip: tuple[float, float]
    mean: float
    std: float
    padding_value: float

    @classmethod
    def from_params(cls, params: DataParams) -> PreprocessParams:
        def floats(key: str, n: int) -> tuple[float, ...]:
            value = params.require(key, NAME)
            try:
                out = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                out = ()
            if len(out) != n or not all(math.isfinite(v) for v in out):
                raise DatasetError(f"the model declares {key}={value!r} for kits19; it needs {n} finite numbers",
                                   f"fix the model plugin's '{key}'")
            return out

        def number(key: str) -> float:
            value = params.require(key, NAME)
            try:
                out = float(value)
            except (TypeError, ValueError):
                out = math.nan
            if not math.isfinite(out):
                raise DatasetError(f"the model declares {key}={value!r} for kits19; it needs a finite number",
                                   f"fix the model plugin's '{key}'")
            return out

        roi = floats("roi_shape", 3)
        if any(r < 1 or r != int(r) for r in roi):
            raise DatasetError(f"the model declares roi_shape={roi!r} for kits19; it needs 3 positive integers",
                               "fix the model plugin's 'roi_shape'")
        overlap = number("overlap")
        spacing = floats("target_spacing", 3)
        clip = floats("clip", 2)
        std = number("std")
        made = cls(tuple(int(r) for r in roi), overlap, spacing, clip, number("mean"), std,  # type: ignore[arg-type]
                   number("padding_value"))
        if not 0 <= overlap < 1 or min(made.strides) < 1:
            raise DatasetError(f"the model declares overlap={overlap} for kits19; windows of {made.roi_shape} "
                               "need an overlap in [0, 1) that leaves a stride of a voxel or more",
                               "fix the model plugin's 'overlap'")
        if std == 0 or min(spacing) <= 0:
            raise DatasetError("the model declares std=0 or a target_spacing that is not positive for kits19",
                               "fix the model plugin's 'std' and 'target_spacing'")
        return made

    @property
    def strides(self) -> tuple[int, int, int]:
        """How far the sliding window advances along each axis (the reference truncates)."""
        return tuple(int(r * (1 - self.overlap)) for r in self.roi_shape)  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {"roi_shape": list(self.roi_shape), "overlap": self.overlap, "target_spacing": list(self.target_spacing),
                "clip": list(self.clip), "mean": self.mean, "std": self.std, "padding_value": self.padding_value}


# --------------------------------------------------------------------------- preprocessing


def needs_resampling(spacing: Sequence[float], params: PreprocessParams) -> bool:
    """Whether a volume of ``spacing`` is resampled: the reference compares the header's
    spacings, as Python floats, with the target list, so only exact equality skips it (a
    float32 header never holds 1.6 or 1.2 exactly, so real KiTS19 cases are all resampled,
    if only by a factor that leaves their shape)."""
    return [float(s) for s in spacing] != [float(t) for t in params.target_spacing]


def zoom_factor(spacing: Sequence[float], params: PreprocessParams) -> np.ndarray:
    return np.array([float(s) for s in spacing]) / np.array(params.target_spacing)


def resample(volume: np.ndarray, spacing: Sequence[float], params: PreprocessParams, order: int) -> np.ndarray:
    """``volume`` resampled to the target spacing as the reference does: ``scipy.ndimage.zoom``
    with ``order`` (1 for images, 0 for labels), corners aligned (``grid_mode=False``) and the
    volume's minimum outside it; unchanged when the spacing already is the target."""
    if not needs_resampling(spacing, params):
        return volume
    from scipy.ndimage import zoom

    return zoom(volume, zoom_factor(spacing, params), order=order, mode="constant", cval=volume.min(), grid_mode=False)


def normalize(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Clip to the CT window, then ``(x - mean) / std``, in float32 as the reference computes it
    (Python floats against a float32 array keep float32 in numpy 1 and 2 alike)."""
    low, high = (float(v) for v in params.clip)
    return (np.clip(image, low, high) - float(params.mean)) / float(params.std)


def pad_to_min_shape(volume: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Edge-pad each axis shorter than the window up to it, the extra voxel after."""
    widths = []
    for size, roi in zip(volume.shape, params.roi_shape):
        short = max(0, roi - size)
        widths.append((short // 2, short - short // 2))
    return np.pad(volume, widths, mode="edge") if any(w != (0, 0) for w in widths) else volume


def fit_to_strides(volume: np.ndarray, params: PreprocessParams, fill: float) -> np.ndarray:
    """Make every edge a multiple of the stride (and at least the window): an edge whose
    remainder is under half a stride loses it (split as ``r // 2`` before, the rest after);
    any other edge is padded up with ``fill`` (half before, rest after), by one more stride
    when that is still short of the window."""
    cuts = []
    for size, stride in zip(volume.shape, params.strides):
        rest = size % stride
        rest = rest if rest < stride // 2 else 0
        cuts.append(slice(rest // 2, size - (rest - rest // 2)))
    volume = volume[tuple(cuts)]
    widths = []
    for size, stride, roi in zip(volume.shape, params.strides, params.roi_shape):
        grow = (stride - size % stride) % stride
        if size + grow < roi:
            grow += stride
        widths.append((grow // 2, grow - grow // 2))
    return np.pad(volume, widths, mode="constant", constant_values=fill)


def preprocess_case(image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float],
                    params: PreprocessParams) -> tuple[np.ndarray, np.ndarray | None]:
    """A raw case as the reference's ``preprocess.py`` makes it: ``image`` (float32) and
    ``label`` (uint8, or None when the case has none), both ``(D, H, W)`` as read from the
    NIfTI files, ``spacing`` the image header's ``pixdim[1:4]``. Returns the float32 image and
    uint8 label the model sees, of one ``(D, H, W)``.

    The volumes are made C-contiguous first: NIfTI data comes out Fortran-ordered, which gives
    the same voxels but makes ``zoom`` several times slower."""
    image = normalize(resample(np.ascontiguousarray(image, dtype=np.float32), spacing, params, order=1), params)
    image = fit_to_strides(pad_to_min_shape(image, params), params, params.padding_value)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if label is None:
        return image, None
    label = resample(np.ascontiguousarray(label, dtype=np.uint8), spacing, params, order=0)
    label = fit_to_strides(pad_to_min_shape(label, params), params, 0)
    return image, np.ascontiguousarray(label, dtype=np.uint8)


def preprocessed_shape(shape: Sequence[int], spacing: Sequence[float], params: PreprocessParams) -> tuple[int, int, int]:
    """The ``(D, H, W)`` that :func:`preprocess_case` gives a raw volume of ``shape``, without
    reading its voxels (``scipy.ndimage.zoom`` rounds each ``size * factor`` with ``round``)."""
    sizes = [int(n) for n in shape]
    if needs_resampling(spacing, params):
        sizes = [round(n * float(z)) for n, z in zip(sizes, zoom_factor(spacing, params))]
    out = []
    for size, roi, stride in zip(sizes, params.roi_shape, params.strides):
        size = max(size, roi)
        rest = size % stride
        size -= rest if rest < stride // 2 else 0
        grow = (stride - size % stride) % stride
        out.append(size + grow + (stride if size + grow < roi else 0))
    return tuple(out)  # type: ignore[return-value]


def reshaped_affine(affine: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """The affine of a resampled volume as the reference builds it: each non-zero scale of a
    row is replaced by the target spacing of that voxel axis, keeping its sign."""
    original = np.asarray(affine, dtype=np.float64)
    out = original.copy()
    target = np.array(params.target_spacing)
    for row in range(3):
        for axis in np.flatnonzero(original[row, :3]):
            out[row, axis] = target[axis] * (-1 if original[row, axis] < 0 else 1)
    return out


# --------------------------------------------------------------------------- safe pickles


def _pickle_globals() -> dict[tuple[str, str], Any]:
    """Everything a KiTS19 preprocessed pickle may name: numpy's array, dtype and scalar
    rebuilders under numpy 1's and numpy 2's module names, and latin-1 bytes (protocols 0-2).

    Each is wrapped so that it builds plain-number data only: an array or dtype of Python
    objects would let the file's own bytes be read as object pointers. ``numpy.ndarray`` is
    a marker that ``_reconstruct`` accepts and nothing can call (``ndarray(shape, "O",
    buffer=...)`` is exactly such an array).
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    def latin1(text: str, encoding: str = "latin1") -> bytes:
        if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
            raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
        return text.encode("latin1")

    def dtype(*args: Any, **kwargs: Any) -> np.dtype:
        return _plain(np.dtype(*args, **kwargs))

    def reconstruct(subtype: Any, shape: Any, of: Any) -> np.ndarray:
        if subtype is not _NDARRAY:
            raise _Refused(f"an array of class {subtype!r}")
        return multiarray._reconstruct(np.ndarray, shape, _plain(np.dtype(of)))

    def scalar(of: Any, *data: Any) -> Any:
        return multiarray.scalar(_plain(of), *data)

    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): dtype,
                                         ("_codecs", "encode"): latin1}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        if hasattr(numeric, "_frombuffer"):
            frombuffer = numeric._frombuffer
            table[(f"{core}.numeric", "_frombuffer")] = (
                lambda buf, of, shape, order, _f=frombuffer: _f(buf, _plain(of), shape, order))
    return table


class _NdarrayMarker:
    """What ``numpy.ndarray`` unpickles to: ``_reconstruct``'s first argument, never callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Refused("a direct call of numpy.ndarray (an array over the file's own bytes)")


_NDARRAY = _NdarrayMarker()


def _plain(of: Any) -> np.dtype:
    """``of`` if it is a dtype of numbers, never one holding Python objects."""
    if not isinstance(of, np.dtype) or of.hasobject:
        raise _Refused(f"an array of Python objects ({of!r})")
    return of


def _only_plain_arrays(value: Any) -> Any:
    """``value`` unless it holds an array or dtype of Python objects anywhere (checked again
    after loading: a dtype's state is set after it is built)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (np.ndarray, np.generic)):
            _plain(item.dtype)
        elif isinstance(item, np.dtype):
            _plain(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return value


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dtypes and scalars and plain Python values,
    and refuses any other global a pickle names (a pickle naming ``os.system`` would run it)."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _pickle_globals()
        found = SafeUnpickler._allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def read_pickle(path: Path) -> Any:
    """The content of a KiTS19 preprocessed pickle, through :class:`SafeUnpickler`; a
    DatasetError naming the file when it is unreadable or names anything else."""
    try:
        with open(path, "rb") as f:
            return _only_plain_arrays(SafeUnpickler(f).load())
    except _Refused as exc:
        raise DatasetError(
            f"{path} refers to {exc.what}, which a KiTS19 preprocessed file never holds: "
            "refusing to load it (pickles can run code)",
            "regenerate the folder with MLCommons' preprocess.py from a source you trust, or give raw KiTS19 instead",
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}", "check the file and its permissions") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or garbled pickle fails in many ways
        raise DatasetError(f"{path} is not a readable KiTS19 pickle ({_one_line(exc)})",
                           "regenerate it with MLCommons' preprocess.py") from None


# --------------------------------------------------------------------------- ground truth


class Kits19Truth:
    """What the KiTS19 scorer needs: the case of each sample index, its preprocessed shape and
    its preprocessed label, read from disk on each call (never all at once)."""

    def __init__(self, cases: Sequence[str], shapes: Sequence[tuple[int, int, int]],
                 read_label: Callable[[int], np.ndarray], read_affine: Callable[[int], np.ndarray]) -> None:
        self.cases: tuple[str, ...] = tuple(cases)
        self._shapes = tuple(tuple(int(n) for n in s) for s in shapes)
        self._read_label = read_label
        self._read_affine = read_affine

    def __len__(self) -> int:
        return len(self.cases)

    def shape(self, index: int) -> tuple[int, int, int]:
        """``(D, H, W)`` of sample ``index`` (the shape of its prediction)."""
        return self._shapes[index]  # type: ignore[return-value]

    def label(self, index: int) -> np.ndarray:
        """The uint8 ``(D, H, W)`` label of sample ``index`` (0 background, 1 kidney, 2 tumour)."""
        label = self._read_label(index)
        if label.shape != self._shapes[index]:
            raise DatasetError(f"the label of {self.cases[index]} has shape {label.shape}, not {self._shapes[index]}",
                               "regenerate the preprocessed data")
        return label

    def affine(self, index: int) -> np.ndarray:
        """The 4x4 affine of the preprocessed volume (the reference writes predictions with it)."""
        return self._read_affine(index)


# --------------------------------------------------------------------------- the dataset


class Kits19Dataset(Dataset):
    """Whole preprocessed volumes, one per sample, fed one at a time through :meth:`sample`."""

    def __init__(self, inputs: Sequence[TensorSpec], cases: Sequence[str], shapes: Sequence[tuple[int, int, int]],
                 read_image: Callable[[int], np.ndarray], truth: Kits19Truth | None, performance_count: int,
                 description: Mapping[str, Any]) -> None:
        self.inputs = list(inputs)
        self._cases = tuple(cases)
        self._shapes = tuple(shapes)
        self._read_image = read_image
        self._truth = truth
        self._performance_count = performance_count
        self._description = dict(description)
        self._loaded: dict[int, dict[str, np.ndarray]] = {}

    @property
    def count(self) -> int:
        return len(self._cases)

    @property
    def performance_count(self) -> int:
        return self._performance_count

    @property
    def cases(self) -> tuple[str, ...]:
        return self._cases

    def shape(self, index: int) -> tuple[int, int, int]:
        """``(D, H, W)`` of sample ``index``, loaded or not (from the metadata)."""
        return self._shapes[index]

    def load(self, indices: Sequence[int]) -> None:
        wanted = [i for i in dict.fromkeys(int(i) for i in indices) if i not in self._loaded]
        began = time.perf_counter()
        reported = False
        for k, index in enumerate(wanted, 1):
            if not 0 <= index < self.count:
                raise IndexError(f"sample {index} is not one of the {self.count} kits19 cases")
            image = self._read_image(index)
            expected = self._shapes[index]
            if image.shape != expected:
                raise DatasetError(f"the image of {self._cases[index]} has shape {image.shape}, not {expected}",
                                   "regenerate the preprocessed data")
            volume = np.ascontiguousarray(image, dtype=np.float32).reshape(1, 1, *expected)
            self._loaded[index] = {spec.name: volume for spec in self.inputs}
            if reported or time.perf_counter() - began > PROGRESS_AFTER_S:
                reported = True
                print(f"mlpi: loading kits19 case {k}/{len(wanted)} ({self._cases[index]})", file=sys.stderr, flush=True)

    def unload(self, indices: Sequence[int]) -> None:
        for index in indices:
            self._loaded.pop(int(index), None)

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        """The loaded volume ``(1, 1, D, H, W)`` itself, not a copy."""
        feeds = self._loaded.get(index)
        if feeds is None:
            raise IndexError(f"kits19 sample {index} is not loaded")
        return feeds

    def gather(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Refused: KiTS19 volumes differ in size, so no buffer fits a batch of them."""
        raise ValueError("kits19 volumes differ in size and cannot be gathered into a batch: "
                         "the model's pipeline must feed them one at a time with sample()")

    def ground_truth(self) -> Kits19Truth | None:
        return self._truth

    def describe(self) -> dict[str, Any]:
        return {"kind": NAME, "count": self.count, **self._description}


class Kits19(DatasetFactory):
    name = NAME
    needs_path = True
    description = "KiTS19 CT volumes for 3D-UNet: MLCommons' preprocessed folder, or raw KiTS19 preprocessed once, cached"
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        params = PreprocessParams.from_params(request.params)
        inputs = [] if request.for_scoring else _inputs(request.inputs)
        form, folder = _locate(_calibration_folder(request.path) if request.names is not None else request.path)
        if form == "preprocessed":
            return _open_preprocessed(folder, params, inputs, request)
        return _open_raw(folder, params, inputs, request)


def _inputs(inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs) or "none"
        raise DatasetError(f"kits19 feeds one input, a CT volume; the model has {len(inputs)} ({names})",
                           "use a 3D-UNet graph with one (batch, 1, D, H, W) input")
    spec = inputs[0]
    if len(spec.shape) != 5 or spec.shape[1] not in (None, 1) or np.dtype(spec.dtype).kind != "f":
        raise DatasetError(f"the model's input '{spec.name}' is {spec.dtype} {format_shape(spec.shape)}, "
                           "not a float (batch, 1, D, H, W) volume",
                           "use a 3D-UNet graph with one (batch, 1, D, H, W) input")
    return [TensorSpec(spec.name, "float32", (None, 1, None, None, None))]


def _locate(path: Path | None) -> tuple[str, Path]:
    """Which form ``--dataset-path`` holds, and the folder to read."""
    if path is None:
        raise DatasetError("dataset 'kits19' needs --dataset-path", f"point it at {_EXPECTED}")
    path = path.expanduser()
    if path.is_file() and path.name == INDEX_FILE:
        path = path.parent
    if not path.is_dir():
        raise DatasetError(f"there is no folder at {path}", f"pass --dataset-path pointing at {_EXPECTED}")
    if (path / INDEX_FILE).is_file():
        return "preprocessed", path
    for root in (path, path / "data"):
        if root.is_dir() and _case_folders(root):
            return "raw", root
    raise DatasetError(f"{path} is neither a KiTS19 preprocessed folder (no {INDEX_FILE}) "
                       "nor raw KiTS19 (no case_XXXXX folders)", f"pass --dataset-path pointing at {_EXPECTED}")


def _calibration_folder(path: Path | None) -> Path | None:
    """Where the named cases are: ``path``, or the ``calibration_data`` folder in it when
    ``path`` is the reference's build folder (its Makefile preprocesses the calibration cases
    there, beside ``preprocessed_data``)."""
    if path is None or (path.expanduser() / INDEX_FILE).is_file():
        return path
    inside = path.expanduser() / CALIBRATION_FOLDER
    return inside if (inside / INDEX_FILE).is_file() else path


def _case_folders(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.name.startswith("case_") and p.is_dir())
    except OSError:
        return []


def _count(total: int, count: int | None, where: Path) -> int:
    if count is None:
        return total
    if count < 1:
        raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
    if count > total:
        raise DatasetError(f"--count {count} is more than the {total} KiTS19 cases in {where}",
                           f"pass --count {total} or less, or leave --count out to use them all")
    return count


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- preprocessed form


def _open_preprocessed(folder: Path, params: PreprocessParams, inputs: list[TensorSpec],
                       request: DatasetRequest) -> Kits19Dataset:
    index_file = folder / INDEX_FILE
    index = read_pickle(index_file)
    file_list = index.get("file_list") if isinstance(index, dict) else None
    auxes = index.get("cases") if isinstance(index, dict) else None
    if not isinstance(file_list, (list, tuple)) or not isinstance(auxes, dict) or not file_list:
        raise DatasetError(f"{index_file} is not what preprocess.py writes (a dict with a non-empty 'file_list' and 'cases')",
                           "regenerate the folder with MLCommons' preprocess.py")
    if request.names is not None:
        return _open_preprocessed_by_name(folder, auxes, params, inputs, request)
    count = _count(len(file_list), request.count, folder)
    cases: list[str] = []
    shapes: list[tuple[int, int, int]] = []
    affines: list[np.ndarray] = []
    for case in file_list[:count]:
        if not isinstance(case, str) or not _CASE_NAME.fullmatch(case):
            raise DatasetError(f"{index_file} lists {case!r}, which is not a case name",
                               "regenerate the folder with MLCommons' preprocess.py")
        shape, affine = _indexed_case(index_file, case, auxes.get(case), params)
        if not (folder / f"{case}.pkl").is_file():
            raise DatasetError(f"{folder / f'{case}.pkl'} is missing ({INDEX_FILE} lists {case})",
                               "copy the whole folder preprocess.py wrote, or pass --count to use the cases before it")
        cases.append(case)
        shapes.append(shape)
        affines.append(affine)
    read_image, read_label = _pickle_readers(folder, cases, shapes)
    truth = Kits19Truth(cases, shapes, read_label, lambda i: affines[i].copy())
    description = {"form": "preprocessed", "path": str(folder), "cases": list(cases), **params.to_json()}
    return Kits19Dataset(inputs, cases, shapes, read_image, truth, request.performance_count_of(count), description)


def _open_preprocessed_by_name(folder: Path, auxes: Mapping[Any, Any], params: PreprocessParams,
                               inputs: list[TensorSpec], request: DatasetRequest) -> Kits19Dataset:
    """The named cases of a preprocess.py folder, in the list's order, without ground truth.

    A case is there when ``preprocessed_files.pkl`` describes it and its pickle exists, as in
    the folder ``preprocess.py --calibration`` writes for the calibration cases."""
    cases = _checked_names(request.names or ())
    index_file = folder / INDEX_FILE
    missing = [case for case in cases if case not in auxes or not (folder / f"{case}.pkl").is_file()]
    if missing:
        raise _missing_cases(folder, missing, len(cases),
                             "preprocess them with MLCommons' preprocess.py --calibration and pass the folder it "
                             "writes (the reference's build/calibration_data), or pass raw KiTS19 (its data/ folder)")
    shapes = [_indexed_case(index_file, case, auxes[case], params)[0] for case in cases]
    read_image, _ = _pickle_readers(folder, cases, shapes)
    description = {"form": "preprocessed", "path": str(folder), "cases": list(cases), "selected_by": "names",
                   **params.to_json()}
    return Kits19Dataset(inputs, cases, shapes, read_image, None, request.performance_count_of(len(cases)), description)


def _indexed_case(index_file: Path, case: str, aux: Any, params: PreprocessParams) -> tuple[tuple[int, int, int], np.ndarray]:
    """The shape and reshaped affine ``preprocessed_files.pkl`` gives ``case``, checked against the window."""
    shape = _aux_shape(aux.get("image_shape") if isinstance(aux, dict) else None)
    if shape is None:
        raise DatasetError(f"{index_file} holds no image_shape (1, D, H, W) for {case}",
                           "regenerate the folder with MLCommons' preprocess.py")
    if any(n < r for n, r in zip(shape, params.roi_shape)):
        raise DatasetError(f"{case} is {shape[0]}x{shape[1]}x{shape[2]} voxels, smaller than the "
                           f"{'x'.join(map(str, params.roi_shape))} window: no window would cover it",
                           "preprocess it with MLCommons' preprocess.py, which pads every case to the window")
    affine = aux.get("reshaped_affine")
    return shape, np.asarray(affine, dtype=np.float64) if isinstance(affine, np.ndarray) else np.eye(4)


def _pickle_readers(folder: Path, cases: Sequence[str], shapes: Sequence[tuple[int, int, int]],
                    ) -> tuple[Callable[[int], np.ndarray], Callable[[int], np.ndarray]]:
    """``read_image(i)`` and ``read_label(i)`` of case ``i``'s ``<case>.pkl``, checked against its shape."""

    def read_case(i: int) -> tuple[np.ndarray, np.ndarray]:
        path = folder / f"{cases[i]}.pkl"
        content = read_pickle(path)
        expected = (1, *shapes[i])
        if (not isinstance(content, (list, tuple)) or len(content) != 2
                or not all(isinstance(a, np.ndarray) for a in content)
                or content[0].dtype.kind != "f" or content[1].dtype.kind not in "biu"):
            raise DatasetError(f"{path} does not hold [image float32, label uint8] as preprocess.py writes it",
                               "regenerate the folder with MLCommons' preprocess.py")
        image, label = content
        if image.shape != expected or label.shape != expected:
            raise DatasetError(f"{path} holds an image of {image.shape} and a label of {label.shape}; "
                               f"{INDEX_FILE} says {expected}", "regenerate the folder with MLCommons' preprocess.py")
        return image, label

    def read_image(i: int) -> np.ndarray:
        return read_case(i)[0].reshape(shapes[i])

    def read_label(i: int) -> np.ndarray:
        return np.ascontiguousarray(read_case(i)[1].reshape(shapes[i]), dtype=np.uint8)

    return read_image, read_label


def _checked_names(names: Sequence[str]) -> list[str]:
    """A calibration list's case names, each a plain file name (none can reach out of the folder)."""
    for name in names:
        if not _CASE_NAME.fullmatch(name):
            raise DatasetError(f"the calibration list names {name!r}, which is not a KiTS19 case name (case_XXXXX)",
                               "use the benchmark's calibration list as published, one case name per line")
    return list(names)


def _missing_cases(where: Path, missing: Sequence[str], total: int, hint: str) -> DatasetError:
    """One error naming the first ten cases of a calibration list that ``where`` lacks, and how many more."""
    return DatasetError(missing_from_list(missing, total, "KiTS19 cases the calibration list names", str(where)), hint)


def _aux_shape(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        return None
    try:
        sizes = [int(v) for v in value]
    except (TypeError, ValueError):
        return None
    if sizes[0] != 1 or min(sizes) < 1:
        return None
    return sizes[1], sizes[2], sizes[3]


# --------------------------------------------------------------------------- raw form


def select_raw_cases(root: Path) -> list[str]:
    """The cases of a raw KiTS19 folder: the 43 inference cases in the reference's order
    when all are there, every ``case_*`` folder (sorted) when none is; else a DatasetError."""
    present = _case_folders(root)
    have = set(present)
    found = [case for case in INFERENCE_CASES if case in have]
    if len(found) == len(INFERENCE_CASES):
        return list(INFERENCE_CASES)
    if not found:
        return present
    missing = [case for case in INFERENCE_CASES if case not in have]
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise DatasetError(
        f"{root} holds {len(found)} of the {len(INFERENCE_CASES)} KiTS19 inference cases; missing: "
        f"{', '.join(missing[:5])}{more}",
        "get every inference case (kits19's get_imaging.py), or give a folder holding none of them to run the cases it has",
    )


def _require_libraries() -> None:
    for module in ("nibabel", "scipy"):
        try:
            __import__(module)
        except ImportError:
            raise DatasetError(f"reading raw KiTS19 needs {module}, which is not installed", INSTALL_HINT) from None


def _load_nifti(path: Path) -> Any:
    import nibabel

    try:
        return nibabel.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        raise DatasetError(f"{path} is not a readable NIfTI file ({_one_line(exc)})",
                           "download the case again (kits19's get_imaging.py)") from None


def _read_volume(path: Path, dtype: type) -> tuple[np.ndarray, Any]:
    """The voxels of ``path`` (as the reference reads them: ``get_fdata()`` then ``dtype``) and its image."""
    image = _load_nifti(path)
    try:
        data = image.get_fdata().astype(dtype)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated gzip, a short file, a bad header...
        raise DatasetError(f"{path} is not a readable NIfTI file ({_one_line(exc)})",
                           "download the case again (kits19's get_imaging.py)") from None
    if data.ndim != 3:
        raise DatasetError(f"{path} holds a {data.ndim}-D volume, not a 3-D CT", "give KiTS19's own files")
    return data, image


def _spacing(image: Any) -> list[float]:
    """The voxel spacing as the reference reads it: the header's ``pixdim[1:4]``."""
    return [float(s) for s in image.header["pixdim"][1:4].tolist()]


def _open_raw(root: Path, params: PreprocessParams, inputs: list[TensorSpec], request: DatasetRequest) -> Kits19Dataset:
    _require_libraries()
    if request.names is not None:  # a calibration list: these cases' images, no labels needed
        cases = _checked_names(request.names)
        missing = [case for case in cases if not (root / case / IMAGE_FILE).is_file()]
        if missing:
            raise _missing_cases(root, missing, len(cases),
                                 "download them (kits19's get_imaging.py fetches every case), or pass the folder "
                                 "MLCommons' preprocess.py --calibration writes")
        count, labelled = len(cases), False
    else:
        cases = select_raw_cases(root)
        count = _count(len(cases), request.count, root)
        cases = cases[:count]
        for case in cases:
            if not (root / case / IMAGE_FILE).is_file():
                raise DatasetError(f"{root / case / IMAGE_FILE} is missing",
                                   "download the case's imaging (kits19's get_imaging.py)")
        labelled = all((root / case / LABEL_FILE).is_file() for case in cases)
    folder = cache_root() / "datasets" / NAME / _cache_key(root, cases, labelled, params)
    meta = _read_cache(folder, cases, labelled)
    if meta is None and not request.for_scoring:
        meta = _build_cache(folder, root, cases, labelled, params)
    description = {"form": "raw", "path": str(root), "cases": list(cases),
                   **({"selected_by": "names"} if request.names is not None else {}), **params.to_json()}
    if meta is None:  # scoring without a cache: labels are preprocessed from the raw files when asked for
        return _raw_for_scoring(root, cases, labelled, params, inputs, request, description)
    description["cache"] = str(folder)
    shapes = [tuple(entry["shape"]) for entry in meta]
    affines = [np.array(entry["reshaped_affine"], dtype=np.float64) for entry in meta]

    def read_image(i: int) -> np.ndarray:
        return _read_cached(folder / f"{cases[i]}.image.npy", shapes[i], np.float32)

    def read_label(i: int) -> np.ndarray:
        return _read_cached(folder / f"{cases[i]}.label.npy", shapes[i], np.uint8)

    truth = Kits19Truth(cases, shapes, read_label, lambda i: affines[i].copy()) if labelled else None
    return Kits19Dataset(inputs, cases, shapes, read_image, truth, request.performance_count_of(count), description)  # type: ignore[arg-type]


def _raw_for_scoring(root: Path, cases: list[str], labelled: bool, params: PreprocessParams, inputs: list[TensorSpec],
                     request: DatasetRequest, description: dict[str, Any]) -> Kits19Dataset:
    shapes: list[tuple[int, int, int]] = []
    headers = []
    for case in cases:
        image = _load_nifti(root / case / IMAGE_FILE)
        headers.append((_spacing(image), np.asarray(image.affine)))
        shapes.append(preprocessed_shape(image.shape[:3], headers[-1][0], params))

    def read_label(i: int) -> np.ndarray:
        label, _ = _read_volume(root / cases[i] / LABEL_FILE, np.uint8)
        image = _load_nifti(root / cases[i] / IMAGE_FILE)
        if tuple(image.shape) != label.shape:
            raise DatasetError(f"{cases[i]}'s image is {tuple(image.shape)} but its label {label.shape}",
                               "download the case again (kits19's get_imaging.py)")
        label = resample(np.ascontiguousarray(label), headers[i][0], params, order=0)
        return np.ascontiguousarray(fit_to_strides(pad_to_min_shape(label, params), params, 0), dtype=np.uint8)

    def read_image(i: int) -> np.ndarray:
        raise DatasetError("kits19 was opened for scoring only: its images are not read", "open it for a run")

    truth = Kits19Truth(cases, shapes, read_label, lambda i: reshaped_affine(headers[i][1], params)) if labelled else None
    return Kits19Dataset(inputs, cases, shapes, read_image, truth, request.performance_count_of(len(cases)), description)


def _cache_key(root: Path, cases: Sequence[str], labelled: bool, params: PreprocessParams) -> str:
    files = []
    for case in cases:
        for name in (IMAGE_FILE, LABEL_FILE) if labelled else (IMAGE_FILE,):
            stat = os.stat(root / case / name)
            files.append([case, name, stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps({
        "version": PREPROCESS_VERSION, "params": params.to_json(), "files": files,
        "scipy": importlib.metadata.version("scipy"),
    }, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _npy_fits(path: Path, shape: tuple[int, ...], dtype: type) -> bool:
    """Whether ``path`` is a complete ``.npy`` of ``shape`` and ``dtype`` (its header and size only)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                found, fortran, kind = np.lib.format.read_array_header_1_0(f)
            else:
                found, fortran, kind = np.lib.format.read_array_header_2_0(f)
            data_at = f.tell()
            size = os.fstat(f.fileno()).st_size
    except Exception:  # noqa: BLE001 - a missing, short or garbled file is simply not a cache
        return False
    return (tuple(found) == tuple(shape) and not fortran and kind == np.dtype(dtype)
            and size == data_at + math.prod(shape) * np.dtype(dtype).itemsize)


def _read_cache(folder: Path, cases: Sequence[str], labelled: bool) -> list[dict[str, Any]] | None:
    """The cached cases' metadata when every file is there and complete; None otherwise."""
    try:
        meta = json.loads((folder / CACHE_INDEX).read_text(encoding="utf-8"))
        entries = meta["cases"]
        if meta["version"] != PREPROCESS_VERSION or [entry["case"] for entry in entries] != list(cases):
            return None
        for entry in entries:
            shape = tuple(int(n) for n in entry["shape"])
            if len(shape) != 3 or not _npy_fits(folder / f"{entry['case']}.image.npy", shape, np.float32):
                return None
            if labelled and not _npy_fits(folder / f"{entry['case']}.label.npy", shape, np.uint8):
                return None
            np.array(entry["reshaped_affine"], dtype=np.float64).reshape(4, 4)
    except Exception:  # noqa: BLE001 - a damaged cache of any kind is rebuilt, never trusted
        return None
    return entries


def _build_cache(folder: Path, root: Path, cases: Sequence[str], labelled: bool,
                 params: PreprocessParams) -> list[dict[str, Any]]:
    print(f"mlpi: preprocessing {len(cases)} KiTS19 cases from {root} into {folder} (once)", file=sys.stderr, flush=True)
    began = time.perf_counter()
    entries = []
    try:
        # a cache another process finished meanwhile is kept
        with staged_folder(folder, lambda: _read_cache(folder, cases, labelled) is not None) as staging:
            for k, case in enumerate(cases, 1):
                print(f"mlpi: preprocessing kits19 case {k}/{len(cases)} ({case})", file=sys.stderr, flush=True)
                entries.append(_preprocess_into(staging, root, case, labelled, params))
            (staging / CACHE_INDEX).write_text(json.dumps({"version": PREPROCESS_VERSION, "params": params.to_json(),
                                                           "cases": entries}, indent=1), encoding="utf-8")
    except OSError as exc:
        raise _cache_error(folder, exc) from None
    print(f"mlpi: {len(cases)} KiTS19 cases preprocessed in {time.perf_counter() - began:.0f} s",
          file=sys.stderr, flush=True)
    return entries


def _preprocess_into(staging: Path, root: Path, case: str, labelled: bool, params: PreprocessParams) -> dict[str, Any]:
    """Preprocess one raw case into ``staging``; its ``cases.json`` entry."""
    image_path = root / case / IMAGE_FILE
    image_data, image = _read_volume(image_path, np.float32)
    label = None
    if labelled:
        label, _ = _read_volume(root / case / LABEL_FILE, np.uint8)
        if label.shape != image_data.shape:
            raise DatasetError(f"{case}'s image is {image_data.shape} but its label {label.shape}",
                               "download the case again (kits19's get_imaging.py)")
    spacing = _spacing(image)
    if min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
        raise DatasetError(f"{image_path} declares a voxel spacing of {spacing}", "download the case again")
    out_image, out_label = preprocess_case(image_data, label, spacing, params)
    del image_data, label
    try:
        np.save(staging / f"{case}.image.npy", out_image)
        if out_label is not None:
            np.save(staging / f"{case}.label.npy", out_label)
    except OSError as exc:
        raise _cache_error(staging, exc) from None
    original = np.asarray(image.affine, dtype=np.float64)
    return {"case": case, "shape": list(out_image.shape), "spacing": spacing,
            "zoom_factor": zoom_factor(spacing, params).tolist(), "original_affine": original.tolist(),
            "reshaped_affine": reshaped_affine(original, params).tolist()}


def _cache_error(folder: Path, exc: OSError) -> DatasetError:
    return DatasetError(f"cannot write the kits19 cache in {folder}: {exc.strerror or exc}",
                        "free disk space there (the 43 preprocessed cases take a few GB), or point MLPI_CACHE at a disk with room")


def _read_cached(path: Path, shape: tuple[int, int, int], dtype: type) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - the cache changed under us
        _forget(path.parent)
        raise DatasetError(f"the kits19 cache file {path} is damaged ({_one_line(exc)})",
                           "run again: the cache will be rebuilt") from None
    if array.shape != shape or array.dtype != dtype:
        _forget(path.parent)
        raise DatasetError(f"the kits19 cache file {path} holds {array.dtype} {array.shape}, not {np.dtype(dtype)} {shape}",
                           "run again: the cache will be rebuilt")
    return array


def _forget(folder: Path) -> None:
    """Make a damaged cache folder unusable, so the next open rebuilds it."""
    try:
        (folder / CACHE_INDEX).unlink()
    except OSError:
        pass
