"""``openimages``: MLPerf's OpenImages validation subset, preprocessed exactly like the RetinaNet reference.

``--dataset-path DIR`` holds what MLCommons' download script writes:

- ``DIR/annotations/openimages-mlperf.json``: a COCO-format file (``images`` with ``id``,
  ``file_name``, ``height``, ``width``; ``annotations`` with ``image_id``, ``category_id``,
  ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd``; ``categories``);
- ``DIR/validation/data/<file_name>``: the JPEGs.

The COCO-format machinery here (:class:`CocoFormatDetection`: annotation checks, the cache,
the finish a model declares) also serves ``coco`` (:mod:`mlpi.datasets.coco`), whose files
sit elsewhere (:class:`Layout`) and whose SSD models ask for uint8 pixels or ImageNet
mean/std after the same float32 resize (:class:`Finish`).

Sample ``i`` is ``images[i]`` in file order, the mapping MLPerf's ``accuracy-openimages.py``
uses (``cocoGt.dataset["images"][qsl_idx]``). ``--count N`` takes the first N images. A
missing or undecodable image is an error naming the file, never a skipped sample: skipping
would shift every later index.

Preprocessing (the reference's ``pre_process_openimages_retinanet``, reimplemented): decode
with OpenCV (BGR), convert the uint8 pixels to float32, convert to RGB, ``cv2.resize`` the
**float32** image to the model's ``H x W`` with ``INTER_LINEAR`` (a plain stretch, the aspect
ratio is not kept), divide by 255 in float32 and transpose to CHW for an NCHW model.

Preprocessed cache
------------------
Decoding and resizing is done once, in :meth:`OpenImages.open`, into
``cache_root()/datasets/openimages/<key>/images.npy``: ONE memory-mappable array
``[count, H, W, 3]`` of the resized RGB pixels, stored as **float32** (values 0..255).

- Why float32 and not uint8: the reference resizes the float32 image, and OpenCV's float
  bilinear resize gives fractional values (almost every pixel), where a uint8 resize rounds
  them with fixed-point weights. Storing uint8 would change the model's inputs by up to
  ~1/255 per pixel; the float32 resized pixels are what the reference computes, so mlpi
  stays bit-for-bit identical. The cost is disk: 7.7 MB per 800x800 image, about 190 GB
  for MLPerf's 24,781 images (the reference's own cache of final float32 tensors is the
  same size). The space is checked before building.
- The division by 255 and the NCHW transpose run in :meth:`OpenImagesDataset.read`, at load
  time, never while timing; ``x / np.float32(255)`` on the same float32 values is the same
  float32 division as the reference's ``img /= 255.``, so the floats are identical. The
  layout is therefore not part of the cache key.

The key is a sha256 over everything that determines the cached bytes: height and width,
the interpolation, :data:`PREPROCESS_VERSION`, the OpenCV version, and each used image's
name, size and ``mtime_ns`` (``os.stat`` only). The dataset folder's path is not in the key:
a moved dataset reuses its cache. A cache is built in a temporary sibling folder and renamed
to its key only once complete, so an interrupted build leaves nothing a later run would use.

``request.for_scoring`` (``mlpi score``): only the annotations are read and checked; no
image is touched and no cache is built.

Calibration images by name
--------------------------
``request.names`` (int8 calibration on MLPerf's list, ``openimages_cal_images_list.txt``:
500 file names like ``dd51a1780bcb3d28.jpg``, OpenImages *train* images) opens exactly those
images, in list order, from ``request.path`` (``--calibration-path``). No annotation file is
read and there is no ground truth. The folder is chosen once for the whole list
(:func:`calibration_folder`): ``DIR`` itself, a flat folder of the listed JPEGs, or
``DIR/calibration/data``, where MLCommons' ``openimages_calibration_mlperf.sh`` puts them.
The images go through the same preprocessing, finish and cache as the run's; a missing one
is one error naming the first ten missing and how many more.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
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
    PreloadedDataset,
)
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.image_cache import ImageCache, check_listed_images, escapes_folder

NAME = "openimages"
#: Bump when the preprocessing code changes in a way that changes the cached pixels.
PREPROCESS_VERSION = 1
#: Where the annotations and the images live under ``--dataset-path``.
ANNOTATIONS = "annotations/openimages-mlperf.json"
IMAGES = "validation/data"
#: Where MLCommons' openimages_calibration_mlperf.sh puts the calibration images under its --dataset-path.
CALIBRATION_IMAGES = "calibration/data"
#: What messages call the list that ``request.names`` comes from.
CALIBRATION_LIST = "the calibration list"
#: The preprocessing this dataset implements, as a model declares it in its DataParams.
#: All of these (and ``image_size``, ``layout``) must be declared; nothing else may be.
SUPPORTED_PARAMS: dict[str, Any] = {
    "resize": "stretch",
    "interpolation": "linear",
    "channel_order": "RGB",
    "scale": 1.0 / 255.0,
}
REQUIRED_PARAMS = ("image_size", "layout", "resize", "interpolation", "scale", "channel_order")
#: ``dtype='uint8'`` instead of ``scale`` (SSD-MobileNet); ``mean`` and ``std`` after the scale.
OPTIONAL_PARAMS = ("dtype", "mean", "std")
LAYOUTS = ("NCHW", "NHWC")
#: The reference divides by this (``img /= 255.``), in float32.
DIVISOR = np.float32(255.0)


@dataclass(frozen=True)
class Layout:
    """Where a COCO-format detection data set keeps its files, and what writes them.

    ``calibration`` / ``calibration_source``: the folder (under the calibration path) where
    the tool that fetches the MLPerf calibration images puts them, and that tool; ``""``:
    the images are read from a flat folder only."""

    name: str
    annotations: str
    images: str
    source: str
    calibration: str = ""
    calibration_source: str = ""

    @property
    def format_hint(self) -> str:
        return (
            f"--dataset-path must hold {self.annotations} (COCO format, as {self.source} writes it) "
            f"and the JPEGs under {self.images}/"
        )


OPENIMAGES = Layout(NAME, ANNOTATIONS, IMAGES, "MLCommons' openimages download script",
                    CALIBRATION_IMAGES, "MLCommons' openimages_calibration_mlperf.sh")


@dataclass(frozen=True)
class Finish:
    """What follows the cached resize, at load time, as the model's DataParams declare it:
    uint8 pixels (``np.asarray(img, dtype=np.uint8)``: SSD-MobileNet), or float32 ``/ 255``
    with an optional ``(x - mean) / std`` (RetinaNet: none; SSD-ResNet34: ImageNet's)."""

    layout: str
    uint8: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @property
    def dtype(self) -> str:
        return "uint8" if self.uint8 else "float32"


_FORMAT_HINT = OPENIMAGES.format_hint


@dataclass(frozen=True)
class CocoGroundTruth:
    """What the COCO mAP scorer reads: the annotation file and the samples' image records.

    - ``annotation_file``: the COCO-format JSON the official script loads.
    - ``images``: the image records of samples ``0..count-1``, in sample order
      (``images[i]`` is sample ``i``: ``id``, ``file_name``, ``height``, ``width``).
    - ``data_dir``: the folder holding the images.
    """

    annotation_file: Path
    images: list[dict[str, Any]]
    data_dir: Path

    @property
    def count(self) -> int:
        return len(self.images)


def resized_pixels(bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 RGB ``height x width x 3`` pixels (0..255) of an OpenCV BGR uint8 image: the
    reference's steps before its division by 255 (float32 first, then colour, then resize)."""
    import cv2

    pixels = np.asarray(bgr, dtype=np.float32)
    if pixels.ndim == 2 or pixels.shape[2] != 3:  # never for cv2.imread's default colour mode
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)


def model_input(pixels: np.ndarray, layout: str | Finish, out: np.ndarray | None = None) -> np.ndarray:
    """float32 resized pixels ``[n, H, W, 3]`` -> the model's input in its layout and type.

    float32 (``layout`` a string, or a :class:`Finish`): the division by 255 (the reference's
    ``img /= 255.`` or ``img / 255.``, the same float32 division) writes straight into the
    (transposed) output, then ``- mean`` and ``/ std`` in float32 where declared. uint8: the
    float pixels truncated, as ``np.asarray(img, dtype=np.uint8)`` does.
    """
    finish = layout if isinstance(layout, Finish) else Finish(layout)
    source = pixels.transpose(0, 3, 1, 2) if finish.layout == "NCHW" else pixels
    if out is None:
        out = np.empty(source.shape, dtype=finish.dtype)
    if finish.uint8:
        np.copyto(out, source, casting="unsafe")
        return out
    np.divide(source, DIVISOR, out=out)
    if finish.mean is not None and finish.std is not None:
        shape = (1, 3, 1, 1) if finish.layout == "NCHW" else (1, 1, 1, 3)
        np.subtract(out, np.asarray(finish.mean, dtype=np.float32).reshape(shape), out=out)
        np.divide(out, np.asarray(finish.std, dtype=np.float32).reshape(shape), out=out)
    return out


class OpenImagesDataset(PreloadedDataset):
    """The preprocessed images of one cache, read from its memory-mapped array on ``load``.

    ``truth`` is ``None`` for images opened by name (a calibration list): they have no
    annotations, and ``count`` says how many there are."""

    def __init__(
        self,
        spec: TensorSpec | None,
        layout: str | Finish,
        root: Path,
        truth: CocoGroundTruth | None,
        cache_file: Path | None,
        key: str | None,
        performance_count: int,
        kind: str = NAME,
        count: int | None = None,
    ) -> None:
        super().__init__([] if spec is None else [spec])
        self.finish = layout if isinstance(layout, Finish) else Finish(layout)
        self.layout = self.finish.layout
        self.kind = kind
        self.root = root
        self.cache_file = cache_file
        self.cache_key = key
        self._truth = truth
        self._count = truth.count if truth is not None else int(count or 0)
        self._performance_count = performance_count
        self._images: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self._count

    @property
    def performance_count(self) -> int:
        return self._performance_count

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        if self.cache_file is None or not self.inputs:
            raise DatasetError(
                f"this {self.kind} dataset was opened for scoring only: it has no preprocessed images",
                "open it without for_scoring to feed a model",
            )
        if self._images is None:
            self._images = np.load(self.cache_file, mmap_mode="r")
        rows = np.asarray(indices, dtype=np.int64)
        spec = self.inputs[0]
        out = np.empty((len(rows), *spec.sample_shape), dtype=self.finish.dtype)  # type: ignore[misc]
        for j, row in enumerate(rows):  # row by row from the page cache: no second full copy
            model_input(self._images[row : row + 1], self.finish, out=out[j : j + 1])
        return {spec.name: out}

    def ground_truth(self) -> CocoGroundTruth | None:
        return self._truth

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.root),
            "count": self.count,
            "annotations": None if self._truth is None else str(self._truth.annotation_file),
            "cache_key": self.cache_key,
        }


class CocoFormatDetection(DatasetFactory):
    """A COCO-format detection data set (annotations JSON + JPEGs) at ``files``'s places,
    preprocessed as MLPerf's detector references do, cached."""

    files: Layout = OPENIMAGES
    needs_path = True
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        files = self.files
        spec: TensorSpec | None = None
        finish, height, width = Finish("NCHW"), 0, 0
        if not request.for_scoring or request.names is not None:
            # The model's declared preprocessing and its input are checked before any file.
            height, width, finish = check_params(request.params, files.name)
            spec = image_input(request.inputs, height, width, finish, files.name)
        if request.names is not None:
            return self._open_by_name(request, request.names, spec, finish, height, width)
        root = _folder(request.path, files)
        annotation_file = root / files.annotations
        images = read_annotations(annotation_file, files)
        count = request.count
        if count is not None and count < 1:
            raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
        if count is not None and count > len(images):
            raise DatasetError(
                f"--count {count} is more than the {len(images)} images listed in {annotation_file}",
                f"pass --count {len(images)} or less, or leave --count out to use them all",
            )
        n = len(images) if count is None else count
        images = images[:n]
        data_dir = root / files.images
        truth = CocoGroundTruth(annotation_file, images, data_dir)
        performance_count = request.performance_count_of(n)
        if request.for_scoring:
            return OpenImagesDataset(None, finish, root, truth, None, None, performance_count, files.name)

        names = [image["file_name"] for image in images]
        key, cache_file = image_cache(height, width, files).prepare(data_dir, names)
        return OpenImagesDataset(spec, finish, root, truth, cache_file, key, performance_count, files.name)

    def _open_by_name(self, request: DatasetRequest, names: Sequence[str], spec: TensorSpec | None, finish: Finish,
                      height: int, width: int) -> Dataset:
        """The images a calibration list names, in its order, preprocessed and cached as the
        run's images are; no annotations, no ground truth."""
        files = self.files
        root = _folder(request.path, files, calibration_hint(files))
        if not names:
            raise DatasetError(f"{CALIBRATION_LIST} for {files.name} names no images",
                               "use the benchmark's calibration list as published")
        folder = calibration_folder(root, names, files)
        try:
            check_listed_images(folder, names, CALIBRATION_LIST)
        except DatasetError as exc:
            raise DatasetError(exc.message, f"{exc.hint}; {calibration_hint(files, root)}") from None
        cache = dataclasses.replace(
            image_cache(height, width, files),
            where=lambda index: f"line {index + 1} of {CALIBRATION_LIST}",
            missing_fix=f"restore the missing image ({calibration_hint(files, root)})",
            decode_fix=f"replace it with the valid JPEG ({files.calibration_source or files.source} fetches it again)",
        )
        key, cache_file = cache.prepare(folder, names, build=not request.for_scoring)
        return OpenImagesDataset(spec, finish, folder, None, cache_file, key,
                                 request.performance_count_of(len(names)), files.name, count=len(names))


class OpenImages(CocoFormatDetection):
    name = NAME
    files = OPENIMAGES
    description = "MLPerf OpenImages validation (COCO-format annotations + JPEGs), RetinaNet preprocessing, cached"


# -- checks --------------------------------------------------------------------------------


def check_params(params: DataParams, name: str = NAME) -> tuple[int, int, Finish]:
    """``(height, width, finish)`` from the model's DataParams; a DatasetError naming the
    parameter when one is missing or asks for preprocessing this dataset does not implement."""
    supported = (
        f"{name} implements MLPerf's detector preprocessing: image_size=(H, W), layout='NCHW' or 'NHWC', "
        "resize='stretch', interpolation='linear', channel_order='RGB', then either scale=1/255 "
        "(with mean=(r, g, b) and std=(r, g, b), or neither) or dtype='uint8'"
    )
    hint = "use a dataset that fits this model (`mlpi models` lists them), or declare these data parameters in the model plugin"
    for key, want in SUPPORTED_PARAMS.items():
        if key not in params:
            continue
        value = params.get(key)
        if key == "scale":
            ok = _is_number(value) and math.isclose(float(value), want, rel_tol=1e-9)
        else:
            ok = isinstance(value, str) and value == want
        if not ok:
            raise DatasetError(f"dataset '{name}' cannot serve {key}={value!r} ({supported})", hint)
    unknown = sorted(set(params.values) - set(REQUIRED_PARAMS) - set(OPTIONAL_PARAMS))
    if unknown:
        raise DatasetError(
            f"dataset '{name}' cannot serve the data parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{k}={params.get(k)!r}' for k in unknown)} the model declares ({supported})",
            hint,
        )
    uint8 = params.get("dtype", "float32") == "uint8"
    if params.get("dtype", "float32") not in ("float32", "uint8"):
        raise DatasetError(f"dataset '{name}' cannot serve dtype={params.get('dtype')!r} ({supported})", hint)
    if uint8 and any(k in params for k in ("scale", "mean", "std")):
        raise DatasetError(f"dataset '{name}' cannot serve uint8 pixels with scale, mean or std ({supported})", hint)
    if ("mean" in params) != ("std" in params):
        given, missing = ("mean", "std") if "mean" in params else ("std", "mean")
        raise DatasetError(
            f"dataset '{name}' cannot serve {given}={params.get(given)!r} without {missing} ({supported})", hint
        )
    mean, std = (_triple(params.get(k), k, name, hint) if k in params else None for k in ("mean", "std"))
    for key in REQUIRED_PARAMS:
        if key == "scale" and uint8:
            continue
        params.require(key, name)
    size = params.get("image_size")
    try:
        if not isinstance(size, (list, tuple)):
            raise TypeError
        height, width = (int(v) for v in size)
        if height < 1 or width < 1 or any(isinstance(v, bool) or int(v) != v for v in size):
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetError(f"dataset '{name}' cannot serve image_size={size!r}: it needs (height, width), two positive integers", hint) from None
    layout = params.get("layout")
    if layout not in LAYOUTS:
        raise DatasetError(f"dataset '{name}' cannot serve layout={layout!r} ({supported})", hint)
    return height, width, Finish(layout, uint8, mean, std)


def _triple(value: Any, key: str, name: str, hint: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_number(v) for v in value):
        raise DatasetError(f"dataset '{name}' cannot serve {key}={value!r}: it needs three numbers (r, g, b)", hint)
    if key == "std" and any(float(v) <= 0 for v in value):
        raise DatasetError(f"dataset '{name}' cannot serve {key}={value!r}: every value must be positive", hint)
    return (float(value[0]), float(value[1]), float(value[2]))


def image_input(inputs: Sequence[TensorSpec], height: int, width: int, layout: str | Finish, name: str = NAME) -> TensorSpec:
    """The model's single image input (float32 or uint8) as a concrete spec of the declared size."""
    finish = layout if isinstance(layout, Finish) else Finish(layout)
    layout, dtype = finish.layout, finish.dtype
    shapes = ", ".join(f"'{s.name}' {s.dtype} {format_shape(s.shape)}" for s in inputs) or "none"
    want = "[N,3,H,W]" if layout == "NCHW" else "[N,H,W,3]"
    hint = f"{name} feeds a model with one {dtype} image input shaped {want} ({layout}, as it declares)"
    if len(inputs) != 1:
        raise DatasetError(f"{name} feeds one image input, but the model has {len(inputs)} inputs: {shapes}", hint)
    spec = inputs[0]
    shape = tuple(spec.shape)
    channel_axis = 1 if layout == "NCHW" else 3
    if spec.dtype != dtype or len(shape) != 4 or shape[channel_axis] not in (3, None):
        raise DatasetError(f"{name} feeds one {dtype} {layout} image {want}, but the model's input is {shapes}", hint)
    spatial = shape[2:4] if layout == "NCHW" else shape[1:3]
    if any(d is not None and d != v for d, v in zip(spatial, (height, width))):
        raise DatasetError(
            f"the model declares image_size ({height}, {width}) but its input is {shapes}",
            "fix the model plugin's data parameters so that they match its input",
        )
    sample = (3, height, width) if layout == "NCHW" else (height, width, 3)
    return TensorSpec(spec.name, dtype, (shape[0], *sample))


def _folder(path: Path | None, files: Layout = OPENIMAGES, hint: str | None = None) -> Path:
    hint = hint or files.format_hint
    if path is None:
        raise DatasetError(f"{files.name} needs --dataset-path", hint)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint)
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder: {files.name} reads a folder", hint)
    return path.resolve()


def calibration_folder(root: Path, names: Sequence[str], files: Layout = OPENIMAGES) -> Path:
    """The one folder a calibration list's images are read from, chosen for the whole list:
    ``root`` when it holds every listed image (a flat folder of them), else
    ``root/<files.calibration>`` (where the calibration download puts them) when that does;
    where neither holds them all, the one holding more (``root`` on a tie), so that the error
    names the images missing from the folder the user most likely meant. Never a mix of both:
    one place to look, and one to name in an error."""
    candidates = [root] + ([root / files.calibration] if files.calibration else [])
    held = [sum(1 for name in names if not escapes_folder(name) and (folder / name).is_file()) for folder in candidates]
    return candidates[held.index(max(held))]  # the first of those holding the most: all, where one does


def calibration_hint(files: Layout, root: Path | None = None) -> str:
    """Where ``files.name`` reads a calibration list's images from (``root``: the folder given)."""
    where = "DIR" if root is None else str(root)
    hint = f"{files.name} reads the listed JPEGs from --calibration-path {where} itself"
    if files.calibration:
        hint += f" or from {where}/{files.calibration} (where {files.calibration_source} puts them)"
    return hint


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_annotations(file: Path, files: Layout = OPENIMAGES) -> list[dict[str, Any]]:
    """The image records of a COCO-format annotation file, in file order, after checking
    everything the dataset and pycocotools rely on; one DatasetError naming the first fault."""
    hint = f"regenerate it with {files.source} (it writes COCO format), or fix the entry named"
    if not file.is_file():
        raise DatasetError(f"the annotation file {file} is missing", files.format_hint)
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"the annotation file {file} is not valid JSON: {exc}", hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the annotation file {file}: {exc}", hint) from None

    def bad(what: str) -> DatasetError:
        return DatasetError(f"the annotation file {file} is not COCO format: {what}", hint)

    if not isinstance(data, dict):
        raise bad(f"its top level is a {type(data).__name__}, not an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise bad(f"it has no '{key}' list")
        if not isinstance(data[key], list):
            raise bad(f"'{key}' is a {type(data[key]).__name__}, not a list")
    images = data["images"]
    if not images:
        raise bad("'images' is empty")
    seen: dict[Any, int] = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise bad(f"images[{i}] is a {type(image).__name__}, not an object")
        for key, check, kind in (
            ("id", _is_int, "an integer"),
            ("file_name", lambda v: isinstance(v, str) and v != "", "a file name"),
            ("height", lambda v: _is_int(v) and v > 0, "a positive integer"),
            ("width", lambda v: _is_int(v) and v > 0, "a positive integer"),
        ):
            if key not in image:
                raise bad(f"images[{i}] has no '{key}'")
            if not check(image[key]):
                raise bad(f"images[{i}] has '{key}': {image[key]!r}, not {kind}")
        problem = escapes_folder(image["file_name"])
        if problem:
            raise bad(f"images[{i}] has 'file_name': {image['file_name']!r}, {problem}: every image must be inside "
                      "the images folder")
        first = seen.setdefault(image["id"], i)
        if first != i:
            raise bad(f"images[{i}] and images[{first}] have the same id {image['id']}")
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise bad(f"categories[{i}] is not an object with an integer 'id'")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise bad(f"annotations[{i}] is a {type(ann).__name__}, not an object")
        for key in ("id", "image_id", "category_id", "iscrowd"):
            if not _is_int(ann.get(key)):
                raise bad(f"annotations[{i}] has {key!r}: {ann.get(key, '(none)')!r}, not an integer")
        if not _is_number(ann.get("area")):
            raise bad(f"annotations[{i}] has 'area': {ann.get('area', '(none)')!r}, not a number")
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise bad(f"annotations[{i}] has 'bbox': {box!r}, not [x, y, width, height]")
    return images


# -- the cache -----------------------------------------------------------------------------


def image_cache(height: int, width: int, files: Layout = OPENIMAGES) -> ImageCache:
    """The cache of this preprocessing at ``height x width``: float32 RGB pixels (0..255).

    float32, not uint8: the reference converts to float32 before its resize, and OpenCV's
    float bilinear resize gives fractional pixels, so a uint8 cache could not be bit-identical.
    """
    return ImageCache(
        dataset=files.name,
        params={
            "version": PREPROCESS_VERSION,
            "resize": "stretch",
            "interpolation": "INTER_LINEAR",
            "steps": "imread BGR uint8 -> float32 -> BGR2RGB -> resize",
            "stored": "float32 HWC RGB 0..255",
        },
        height=height,
        width=width,
        dtype="float32",
        transform=lambda bgr: resized_pixels(bgr, height, width),
        where=lambda index: f"sample {index}, images[{index}] of {files.annotations}",
        missing_fix=(
            f"restore the missing image files ({files.source} fetches them); "
            "a missing image is never skipped because that would shift every later sample"
        ),
        decode_fix=f"replace it with the valid JPEG ({files.source} fetches it again); it is never skipped",
        space_detail=" (float32, as the reference computes them)",
        window_per_worker=2,
    )
