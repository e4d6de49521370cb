"""``imagenet``: the ImageNet 2012 validation set, preprocessed exactly like MLPerf's ResNet50 reference.

``--dataset-path`` is a folder of JPEGs with a ``val_map.txt`` whose lines read
``ILSVRC2012_val_00000001.JPEG 65`` (file name relative to the folder, whitespace, class id).
Sample ``i`` is line ``i + 1``; its label is that line's class id. A listed image that is
missing or cannot be decoded is an error naming the file, never a skipped sample: skipping
would shift every later label.

Every listed name must stay inside the folder: an absolute path (``/etc/hostname``), a
``..`` component (``../outside.JPEG``, ``sub/../../x``) or a NUL byte is refused, with one
error naming the line, when the dataset is opened (before any test). The check is on the
name as written, so it holds for every line of the file, not just the ``--count`` used.
Symlinks in the folder are followed, wherever they point: a ``val_map.txt`` (a text file
often fetched on its own) cannot reach out of the folder, but whoever put a symlink into the
folder chose its target, as they chose ``--dataset-path``, and a folder of symlinks into a
shared copy of ImageNet is the usual way to use a subset without copying it. ``..`` is
refused outright rather than resolved, because through a symlinked sub-folder ``sub/..``
is not the folder the name seems to stay in.

Preprocessing (the MLPerf reference ``pre_process_vgg``, reimplemented): decode with OpenCV
(BGR; greyscale and CMYK JPEGs come out as 3-channel BGR too), convert to RGB, resize with
``INTER_AREA`` keeping the aspect ratio so the shorter side becomes ``int(100 * H / 87.5)``
(256 for 224), centre-crop ``H x W``, convert to float32, subtract the per-channel mean
``[123.68, 116.78, 103.94]`` (no scaling) and transpose to CHW for an NCHW model.

Preprocessed cache
------------------
Decoding and resizing is slow, so it is done once, in :meth:`ImageNet.open` (the parent
process opens the dataset while planning, before any LoadGen test process), into
``cache_root()/datasets/imagenet/<key>/images.npy``: ONE memory-mappable uint8 array of
shape ``[count, H, W, 3]`` holding the RGB centre crops.

- One array rather than one ``.npy`` per image: a test process opens one file instead of
  tens of thousands, ``load`` reads just the rows it needs straight from the page cache
  (``np.load(mmap_mode="r")``), and completeness is all-or-nothing.
- uint8 crops rather than the final float32 tensors: a quarter of the disk space and I/O
  (7.5 GB instead of 30 GB for the 50,000 validation images). The remaining steps
  (float32 conversion, mean subtraction, NCHW transpose) run in :meth:`ImageNetDataset.read`,
  at load time, never while timing, and give bit-for-bit the same floats as the reference,
  which applies the same float32 operations to the same uint8 pixels. The layout and the
  mean are therefore not part of the cache key: changing them cannot make the cache stale.

The key is a sha256 over everything that determines the cached bytes: the crop size, the
resize scale and interpolation, :data:`PREPROCESS_VERSION`, the OpenCV version, and each used
image's name, size and ``mtime_ns`` (``os.stat`` only, no hashing of contents). Any change
gives a new key, so a stale cache is never used. The dataset's folder path is not in the
key: a copied or moved dataset reuses its cache. Only the first ``count`` images are
keyed and built, so a quick ``--count 16`` run does not preprocess 50,000 images.

A cache is built in a temporary sibling folder and renamed to its key only once every image
is written and flushed, so a crash or Ctrl-C mid-build leaves nothing a later run would use
(a leftover ``.<key>.tmp-*`` folder is never read and may be deleted). The mechanism is
:mod:`mlpi.datasets.image_cache`, shared with the other image datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

#: Bump when the preprocessing code changes in a way that changes the cached pixels.
PREPROCESS_VERSION = 1
#: The reference's crop fraction: the shorter side is resized to ``int(100 * H / 87.5)``.
RESIZE_SCALE = 87.5
#: Per-channel RGB mean subtracted from every pixel (no scaling), as in the reference.
MEAN = np.array([123.68, 116.78, 103.94], dtype=np.float32)
#: Height and width used for a model input whose spatial dimensions are dynamic.
DEFAULT_SIZE = 224
#: The preprocessing this dataset implements, as a model declares it in its data parameters.
#: A model that declares none of these keys (a custom file) gets exactly this too.
SUPPORTED_PARAMS = {
    "resize": "shorter-side-crop",
    "crop_fraction": RESIZE_SCALE / 100,
    "interpolation": "area",
    "channel_order": "RGB",
    "mean": (123.68, 116.78, 103.94),
    "scale": 1.0,
}
VAL_MAP = "val_map.txt"


def resized_size(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
    """``(h, w)`` the reference resizes a ``height x width`` image to before cropping."""
    new_height = int(100.0 * out_height / RESIZE_SCALE)
    new_width = int(100.0 * out_width / RESIZE_SCALE)
    if height > width:
        return int(new_height * height / width), new_width
    return new_height, int(new_width * width / height)


def reference_crop(bgr: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """RGB uint8 ``out_height x out_width x 3`` centre crop of an OpenCV BGR image, as the
    MLPerf ResNet50 reference computes it before its float conversion."""
    import cv2

    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = resized_size(rgb.shape[0], rgb.shape[1], out_height, out_width)
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    top = int((h - out_height) / 2)
    left = int((w - out_width) / 2)
    return resized[top : top + out_height, left : left + out_width]


def normalise(crops: np.ndarray, layout: str) -> np.ndarray:
    """uint8 RGB crops ``[n, H, W, 3]`` -> float32 model input in ``layout`` ("NCHW"/"NHWC").

    One pass: the uint8 pixels are cast to float32 and the float32 mean subtracted, the
    same float32 operation as the reference's ``np.asarray(img, "float32") - mean``.
    """
    if layout == "NCHW":
        out = np.empty((crops.shape[0], 3, *crops.shape[1:3]), dtype=np.float32)
        np.subtract(crops.transpose(0, 3, 1, 2), MEAN[:, None, None], out=out)
    else:
        out = np.empty(crops.shape, dtype=np.float32)
        np.subtract(crops, MEAN, out=out)
    return out


class ImageNetDataset(PreloadedDataset):
    """The preprocessed images of one cache, read from its memory-mapped array on ``load``."""

    def __init__(self, spec: TensorSpec, layout: str, folder: Path, labels: np.ndarray, cache_file: Path, key: str) -> None:
        super().__init__([spec])
        self.layout = layout
        self.folder = folder
        self.cache_file = cache_file
        self.cache_key = key
        self._labels = labels
        self._images: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self._labels)

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        if self._images is None:
            self._images = np.load(self.cache_file, mmap_mode="r")
        crops = np.asarray(self._images[np.asarray(indices, dtype=np.int64)])
        return {self.inputs[0].name: normalise(crops, self.layout)}

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "imagenet", "path": str(self.folder), "count": self.count, "cache_key": self.cache_key}


class ImageNet(DatasetFactory):
    name = "imagenet"
    needs_path = True
    description = "ImageNet 2012 val (JPEGs + val_map.txt), MLPerf ResNet50 preprocessing, cached"
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        check_params(request.params)
        count = request.count
        spec, layout, height, width = image_input(request.inputs)
        if request.params.get("image_size") is not None and tuple(request.params.get("image_size")) != (height, width):
            raise DatasetError(
                f"the model declares image_size {tuple(request.params.get('image_size'))} but its input is {height}x{width}",
                "fix the model plugin's data parameters",
            )
        if request.params.get("layout") not in (None, layout):
            raise DatasetError(f"the model declares layout {request.params.get('layout')} but its input is {layout}", "fix the model plugin's data parameters")
        folder = _folder(request.path)
        if request.names is not None:  # a calibration list: these images, no labels needed
            check_listed_images(folder, request.names, "the calibration list")
            names = list(request.names)
            key, cache_file = image_cache(height, width).prepare(folder, names, build=not request.for_scoring)
            return ImageNetDataset(spec, layout, folder, np.full(len(names), -1, np.int64), cache_file, key)
        names, labels = read_val_map(folder / VAL_MAP)
        if count is not None and count < 1:
            raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
        if count is not None and count > len(names):
            raise DatasetError(
                f"--count {count} is more than the {len(names)} images listed in {folder / VAL_MAP}",
                f"pass --count {len(names)} or less, or leave --count out to use them all",
            )
        n = len(names) if count is None else count
        names, labels = names[:n], labels[:n]
        key, cache_file = image_cache(height, width).prepare(folder, names, build=not request.for_scoring)
        return ImageNetDataset(spec, layout, folder, labels, cache_file, key)


# -- checks --------------------------------------------------------------------------------


def check_params(params: DataParams) -> None:
    """Refuse a model whose declared preprocessing is not the one this dataset implements."""
    for key, supported in SUPPORTED_PARAMS.items():
        if key not in params:
            continue
        value = params.get(key)
        same = tuple(value) == tuple(supported) if isinstance(supported, tuple) else value == supported
        if not same:
            raise DatasetError(
                f"dataset 'imagenet' cannot serve {key}={value!r}: it implements MLPerf's ResNet50 preprocessing ({key}={supported!r})",
                "use a dataset that fits this model (`mlpi models` lists them)",
            )
    unknown = sorted(set(params.values) - set(SUPPORTED_PARAMS) - {"image_size", "layout"})
    if unknown:
        raise DatasetError(
            f"dataset 'imagenet' cannot serve the data parameters {', '.join(unknown)} the model declares",
            "use a dataset that fits this model (`mlpi models` lists them)",
        )



def image_input(inputs: Sequence[TensorSpec]) -> tuple[TensorSpec, str, int, int]:
    """The model's single image input as a concrete spec, its layout, height and width."""
    shapes = ", ".join(f"'{s.name}' {s.dtype} {format_shape(s.shape)}" for s in inputs) or "none"
    hint = "imagenet needs a model with one float32 input shaped [N,3,H,W] or [N,H,W,3]; use --dataset numpy for other inputs"
    if len(inputs) != 1:
        raise DatasetError(f"imagenet feeds one image input, but the model has {len(inputs)} inputs: {shapes}", hint)
    spec = inputs[0]
    shape = tuple(spec.shape)
    if spec.dtype != "float32" or len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise DatasetError(f"imagenet feeds one float32 image [N,3,H,W] or [N,H,W,3], but the model's input is {shapes}", hint)
    if shape[1] == 3:
        layout, height, width = "NCHW", shape[2], shape[3]
    else:
        layout, height, width = "NHWC", shape[1], shape[2]
    height = DEFAULT_SIZE if height is None else int(height)
    width = DEFAULT_SIZE if width is None else int(width)
    if height < 1 or width < 1:
        raise DatasetError(f"the model's image input {shapes} has no pixels", hint)
    sample = (3, height, width) if layout == "NCHW" else (height, width, 3)
    return TensorSpec(spec.name, "float32", (shape[0], *sample)), layout, height, width


def _folder(path: Path | None) -> Path:
    if path is None:
        raise DatasetError("imagenet needs --dataset-path", "point --dataset-path at the folder holding the images and val_map.txt")
    if not path.exists():
        raise DatasetError(f"{path} does not exist", "point --dataset-path at the ImageNet validation folder (JPEGs + val_map.txt)")
    if not path.is_dir():
        raise DatasetError(
            f"{path} is not a folder: imagenet reads a folder of JPEGs with a val_map.txt",
            "point --dataset-path at the folder itself, not at a file in it",
        )
    return path.resolve()


def read_val_map(val_map: Path) -> tuple[list[str], np.ndarray]:
    """The image names and int64 labels listed in ``val_map``, in file order."""
    hint = f"each line of {VAL_MAP} must read '<image file relative to the folder> <class id>'"
    if not val_map.is_file():
        raise DatasetError(f"{val_map.parent} has no {VAL_MAP}", f"add {VAL_MAP} to the folder; {hint}")
    try:
        text = val_map.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {val_map}: {exc}", hint) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        fields = line.strip().rsplit(None, 1)
        try:
            if len(fields) != 2:
                raise ValueError
            label = int(fields[1])
            if label < 0:
                raise ValueError
        except ValueError:
            raise DatasetError(f"line {number} of {val_map} does not parse: {line!r}", hint + " (class id a non-negative integer)") from None
        problem = escapes_folder(fields[0])
        if problem:
            raise DatasetError(
                f"line {number} of {val_map} names {fields[0]!r}, {problem}: every image must be inside {val_map.parent}",
                "list each image by its path relative to that folder, like 'ILSVRC2012_val_00000001.JPEG' "
                "(no leading '/', no '..'); to use images kept elsewhere, put symlinks to them in the folder",
            )
        names.append(fields[0])
        labels.append(label)
    if not names:
        raise DatasetError(f"{val_map} lists no images", hint)
    return names, np.asarray(labels, dtype=np.int64)


# -- the cache -----------------------------------------------------------------------------


def image_cache(height: int, width: int) -> ImageCache:
    """The cache of this preprocessing at ``height x width``: uint8 RGB centre crops."""
    return ImageCache(
        dataset="imagenet",
        params={
            "version": PREPROCESS_VERSION,
            "resize_scale": RESIZE_SCALE,
            "interpolation": "INTER_AREA",
            "colour": "BGR2RGB",
            "stored": "uint8 HWC RGB centre crops",
        },
        height=height,
        width=width,
        dtype="uint8",
        transform=lambda bgr: reference_crop(bgr, height, width),
        where=lambda index: f"line {index + 1} of {VAL_MAP}",
        missing_fix=(
            f"restore the missing image files, or remove their lines from {VAL_MAP}; "
            "a missing image is never skipped because that would shift every later label"
        ),
        decode_fix=f"replace it with a valid JPEG (check it opens in an image viewer), or remove its line from {VAL_MAP}",
    )
