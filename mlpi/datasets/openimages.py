"""``openimages``: MLPerf's OpenImages validation subset, preprocessed exactly like the RetinaNet reference.

``--dataset-path DIR`` holds what MLCommons' download script writes:

- ``DIR/annotations/openimages-mlperf.json``: a COCO-format file (``images`` with ``id``,
  ``file_name``, ``height``, ``width``; ``annotations`` with ``image_id``, ``category_id``,
  ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd``; ``categories``);
- ``DIR/validation/data/<file_name>``: the JPEGs.

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
"""

from __future__ import annotations

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
from mlpi.datasets.image_cache import ImageCache

NAME = "openimages"
#: Bump when the preprocessing code changes in a way that changes the cached pixels.
PREPROCESS_VERSION = 1
#: Where the annotations and the images live under ``--dataset-path``.
ANNOTATIONS = "annotations/openimages-mlperf.json"
IMAGES = "validation/data"
#: The preprocessing this dataset implements, as a model declares it in its DataParams.
#: All of these (and ``image_size``, ``layout``) must be declared; nothing else may be.
SUPPORTED_PARAMS: dict[str, Any] = {
    "resize": "stretch",
    "interpolation": "linear",
    "channel_order": "RGB",
    "scale": 1.0 / 255.0,
}
REQUIRED_PARAMS = ("image_size", "layout", "resize", "interpolation", "scale", "channel_order")
LAYOUTS = ("NCHW", "NHWC")
#: The reference divides by this (``img /= 255.``), in float32.
DIVISOR = np.float32(255.0)
_FORMAT_HINT = (
    f"--dataset-path must hold {ANNOTATIONS} (COCO format, as MLCommons' openimages download script writes it) "
    f"and the JPEGs under {IMAGES}/"
)


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


def model_input(pixels: np.ndarray, layout: str, out: np.ndarray | None = None) -> np.ndarray:
    """float32 resized pixels ``[n, H, W, 3]`` -> the model's float32 input in ``layout``.

    One pass: the float32 division by 255 (the reference's ``img /= 255.``) writes straight
    into the (transposed) output.
    """
    source = pixels.transpose(0, 3, 1, 2) if layout == "NCHW" else pixels
    if out is None:
        out = np.empty(source.shape, dtype=np.float32)
    np.divide(source, DIVISOR, out=out)
    return out


class OpenImagesDataset(PreloadedDataset):
    """The preprocessed images of one cache, read from its memory-mapped array on ``load``."""

    def __init__(
        self,
        spec: TensorSpec | None,
        layout: str,
        root: Path,
        truth: CocoGroundTruth,
        cache_file: Path | None,
        key: str | None,
        performance_count: int,
    ) -> None:
        super().__init__([] if spec is None else [spec])
        self.layout = layout
        self.root = root
        self.cache_file = cache_file
        self.cache_key = key
        self._truth = truth
        self._performance_count = performance_count
        self._images: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self._truth.count

    @property
    def performance_count(self) -> int:
        return self._performance_count

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        if self.cache_file is None or not self.inputs:
            raise DatasetError(
                "this openimages dataset was opened for scoring only: it has no preprocessed images",
                "open it without for_scoring to feed a model",
            )
        if self._images is None:
            self._images = np.load(self.cache_file, mmap_mode="r")
        rows = np.asarray(indices, dtype=np.int64)
        spec = self.inputs[0]
        out = np.empty((len(rows), *spec.sample_shape), dtype=np.float32)  # type: ignore[misc]
        for j, row in enumerate(rows):  # row by row from the page cache: no second full copy
            model_input(self._images[row : row + 1], self.layout, out=out[j : j + 1])
        return {spec.name: out}

    def ground_truth(self) -> CocoGroundTruth:
        return self._truth

    def describe(self) -> dict[str, Any]:
        return {
            "kind": NAME,
            "path": str(self.root),
            "count": self.count,
            "annotations": str(self._truth.annotation_file),
            "cache_key": self.cache_key,
        }


class OpenImages(DatasetFactory):
    name = NAME
    needs_path = True
    description = "MLPerf OpenImages validation (COCO-format annotations + JPEGs), RetinaNet preprocessing, cached"

    def open(self, request: DatasetRequest) -> Dataset:
        spec: TensorSpec | None = None
        layout, height, width = "NCHW", 0, 0
        if not request.for_scoring:
            # The model's declared preprocessing and its input are checked before any file.
            height, width, layout = check_params(request.params)
            spec = image_input(request.inputs, height, width, layout)
        root = _folder(request.path)
        annotation_file = root / ANNOTATIONS
        images = read_annotations(annotation_file)
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
        data_dir = root / IMAGES
        truth = CocoGroundTruth(annotation_file, images, data_dir)
        performance_count = n if request.performance_count is None else max(1, min(n, int(request.performance_count)))
        if request.for_scoring:
            return OpenImagesDataset(None, layout, root, truth, None, None, performance_count)

        names = [image["file_name"] for image in images]
        key, cache_file = image_cache(height, width).prepare(data_dir, names)
        return OpenImagesDataset(spec, layout, root, truth, cache_file, key, performance_count)


# -- checks --------------------------------------------------------------------------------


def check_params(params: DataParams) -> tuple[int, int, str]:
    """``(height, width, layout)`` from the model's DataParams; a DatasetError naming the
    parameter when one is missing or asks for preprocessing this dataset does not implement."""
    supported = (
        "openimages implements MLPerf's RetinaNet preprocessing: image_size=(H, W), layout='NCHW' or 'NHWC', "
        "resize='stretch', interpolation='linear', scale=1/255, channel_order='RGB', no mean or std"
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
            raise DatasetError(f"dataset '{NAME}' cannot serve {key}={value!r} ({supported})", hint)
    unknown = sorted(set(params.values) - set(REQUIRED_PARAMS))
    if unknown:
        raise DatasetError(
            f"dataset '{NAME}' cannot serve the data parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{k}={params.get(k)!r}' for k in unknown)} the model declares ({supported})",
            hint,
        )
    for key in REQUIRED_PARAMS:
        params.require(key, NAME)
    size = params.get("image_size")
    try:
        if not isinstance(size, (list, tuple)):
            raise TypeError
        height, width = (int(v) for v in size)
        if height < 1 or width < 1 or any(isinstance(v, bool) or int(v) != v for v in size):
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetError(f"dataset '{NAME}' cannot serve image_size={size!r}: it needs (height, width), two positive integers", hint) from None
    layout = params.get("layout")
    if layout not in LAYOUTS:
        raise DatasetError(f"dataset '{NAME}' cannot serve layout={layout!r} ({supported})", hint)
    return height, width, layout


def image_input(inputs: Sequence[TensorSpec], height: int, width: int, layout: str) -> TensorSpec:
    """The model's single float32 image input as a concrete spec of the declared size."""
    shapes = ", ".join(f"'{s.name}' {s.dtype} {format_shape(s.shape)}" for s in inputs) or "none"
    want = "[N,3,H,W]" if layout == "NCHW" else "[N,H,W,3]"
    hint = f"openimages feeds a model with one float32 image input shaped {want} ({layout}, as it declares)"
    if len(inputs) != 1:
        raise DatasetError(f"openimages feeds one image input, but the model has {len(inputs)} inputs: {shapes}", hint)
    spec = inputs[0]
    shape = tuple(spec.shape)
    channel_axis = 1 if layout == "NCHW" else 3
    if spec.dtype != "float32" or len(shape) != 4 or shape[channel_axis] not in (3, None):
        raise DatasetError(f"openimages feeds one float32 {layout} image {want}, but the model's input is {shapes}", hint)
    spatial = shape[2:4] if layout == "NCHW" else shape[1:3]
    if any(d is not None and d != v for d, v in zip(spatial, (height, width))):
        raise DatasetError(
            f"the model declares image_size ({height}, {width}) but its input is {shapes}",
            "fix the model plugin's data parameters so that they match its input",
        )
    sample = (3, height, width) if layout == "NCHW" else (height, width, 3)
    return TensorSpec(spec.name, "float32", (shape[0], *sample))


def _folder(path: Path | None) -> Path:
    if path is None:
        raise DatasetError(f"{NAME} needs --dataset-path", _FORMAT_HINT)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", _FORMAT_HINT)
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder: openimages reads a folder", _FORMAT_HINT)
    return path.resolve()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_annotations(file: Path) -> list[dict[str, Any]]:
    """The image records of a COCO-format annotation file, in file order, after checking
    everything the dataset and pycocotools rely on; one DatasetError naming the first fault."""
    hint = "regenerate it with MLCommons' openimages download script (it writes COCO format), or fix the entry named"
    if not file.is_file():
        raise DatasetError(f"the annotation file {file} is missing", _FORMAT_HINT)
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


def image_cache(height: int, width: int) -> ImageCache:
    """The cache of this preprocessing at ``height x width``: float32 RGB pixels (0..255).

    float32, not uint8: the reference converts to float32 before its resize, and OpenCV's
    float bilinear resize gives fractional pixels, so a uint8 cache could not be bit-identical.
    """
    return ImageCache(
        dataset=NAME,
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
        where=lambda index: f"sample {index}, images[{index}] of {ANNOTATIONS}",
        missing_fix=(
            "restore the missing image files (MLCommons' openimages download script fetches them); "
            "a missing image is never skipped because that would shift every later sample"
        ),
        decode_fix="replace it with the valid JPEG (MLCommons' openimages download script fetches it again); it is never skipped",
        space_detail=" (float32, as the reference computes them)",
        window_per_worker=2,
    )
