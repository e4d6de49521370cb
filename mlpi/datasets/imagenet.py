"""``imagenet``: the ImageNet 2012 validation set, preprocessed exactly like MLPerf's ResNet50 reference.

``--dataset-path`` is a folder of JPEGs with a ``val_map.txt`` whose lines read
``ILSVRC2012_val_00000001.JPEG 65`` (file name relative to the folder, whitespace, class id).
Sample ``i`` is line ``i + 1``; its label is that line's class id. A listed image that is
missing or cannot be decoded is an error naming the file, never a skipped sample: skipping
would shift every later label.

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
(a leftover ``.<key>.tmp-*`` folder is never read and may be deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.backend import TensorSpec, format_shape
from mlpi.core.cache import cache_root
from mlpi.core.dataset import DataParams, Dataset, DatasetFactory, DatasetRequest, PreloadedDataset
from mlpi.core.errors import DatasetError

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
CACHE_FILE = "images.npy"
META_FILE = "meta.json"


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
        stats = _stat_images(folder, names)

        import cv2

        key = cache_key(height, width, cv2.__version__, names, stats)
        cache_dir = cache_root() / "datasets" / "imagenet" / key
        if not request.for_scoring and not _cache_ready(cache_dir, n, height, width):
            build_cache(folder, names, height, width, cache_dir)
        return ImageNetDataset(spec, layout, folder, labels, cache_dir / CACHE_FILE, key)


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
        names.append(fields[0])
        labels.append(label)
    if not names:
        raise DatasetError(f"{val_map} lists no images", hint)
    return names, np.asarray(labels, dtype=np.int64)


def _stat_images(folder: Path, names: Sequence[str]) -> list[os.stat_result]:
    """``os.stat`` of every listed image (no decoding); a missing one is an error naming it."""
    stats: list[os.stat_result] = []
    missing: list[tuple[int, str]] = []
    base = str(folder)
    for number, name in enumerate(names, start=1):
        try:
            st = os.stat(os.path.join(base, name))
        except OSError:
            missing.append((number, name))
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append((number, name))
            continue
        stats.append(st)
    if missing:
        number, name = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(
            f"image {name} (line {number} of {VAL_MAP}) is missing from {folder}{more}",
            f"restore the missing image files, or remove their lines from {VAL_MAP}; a missing image is never skipped because that would shift every later label",
        )
    return stats


# -- the cache -----------------------------------------------------------------------------


def cache_key(height: int, width: int, cv2_version: str, names: Sequence[str], stats: Sequence[os.stat_result]) -> str:
    """sha256 over everything that determines the cached crops."""
    digest = hashlib.sha256()
    params = {
        "version": PREPROCESS_VERSION,
        "height": height,
        "width": width,
        "resize_scale": RESIZE_SCALE,
        "interpolation": "INTER_AREA",
        "colour": "BGR2RGB",
        "stored": "uint8 HWC RGB centre crops",
        "opencv": cv2_version,
        "count": len(names),
    }
    digest.update(json.dumps(params, sort_keys=True).encode())
    for name, st in zip(names, stats):
        digest.update(f"\n{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _cache_ready(cache_dir: Path, count: int, height: int, width: int) -> bool:
    """A finished cache of the expected shape: only complete caches ever get the key's name."""
    try:
        images = np.load(cache_dir / CACHE_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return images.dtype == np.uint8 and images.shape == (count, height, width, 3) and (cache_dir / META_FILE).is_file()


def build_cache(folder: Path, names: Sequence[str], height: int, width: int, cache_dir: Path) -> None:
    """Preprocess ``names`` into ``cache_dir`` in parallel; atomic: all or nothing."""
    import cv2

    count = len(names)
    row_bytes = height * width * 3
    parent = cache_dir.parent
    if _cache_ready(cache_dir, count, height, width):  # another process just finished it
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise DatasetError(f"cannot create the cache folder {parent}: {exc}", "set MLPI_CACHE to a writable folder") from None
    if free < count * row_bytes + (64 << 20):
        raise DatasetError(
            f"the preprocessed images need {count * row_bytes / 1e9:.1f} GB in {parent}, which has {free / 1e9:.1f} GB free",
            "free some space there, or set MLPI_CACHE to a folder on a bigger disk",
        )
    if cache_dir.exists():  # an unusable leftover under the key's name (not one of our builds)
        shutil.rmtree(cache_dir, ignore_errors=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=parent))
    done = False
    threads = cv2.getNumThreads()
    workers = max(1, min(os.cpu_count() or 1, count))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        header = np.lib.format.open_memmap(tmp / CACHE_FILE, mode="w+", dtype=np.uint8, shape=(count, height, width, 3))
        offset = header.offset
        del header
        cv2.setNumThreads(1)  # parallel over images, not inside each resize

        def one(index: int) -> np.ndarray:
            file = folder / names[index]
            problem = f"cannot decode image {file} (line {index + 1} of {VAL_MAP})"
            fix = "replace it with a valid JPEG (check it opens in an image viewer), or remove its line from val_map.txt"
            bgr = cv2.imread(str(file))
            if bgr is None:
                raise DatasetError(problem, fix)
            try:
                return np.ascontiguousarray(reference_crop(bgr, height, width))
            except cv2.error as exc:
                raise DatasetError(f"{problem}: {exc}", fix) from None

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        print(f"mlpi: preprocessing {count} images from {folder} into {cache_dir} (once)", file=sys.stderr, flush=True)
        console = Console(stderr=True)
        progress = Progress(
            TextColumn("preprocessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console
        )
        with open(tmp / CACHE_FILE, "r+b") as out, progress, ThreadPoolExecutor(max_workers=workers) as pool:
            task = progress.add_task("preprocessing", total=count)
            # A sliding window of work: bounded memory, and cheap to cancel on the first error.
            window = 4 * workers
            running: dict[Future[np.ndarray], int] = {}
            submitted = 0
            try:
                while submitted < count or running:
                    while submitted < count and len(running) < window:
                        running[pool.submit(one, submitted)] = submitted
                        submitted += 1
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=running.__getitem__):
                        index = running.pop(future)
                        crop = future.result()  # raises the worker's DatasetError
                        out.seek(offset + index * row_bytes)
                        out.write(crop.data)
                    progress.advance(task, len(finished))
            finally:
                for future in running:
                    future.cancel()
            out.flush()
            os.fsync(out.fileno())
        meta = {
            "preprocess_version": PREPROCESS_VERSION,
            "source": str(folder),
            "count": count,
            "shape": [count, height, width, 3],
            "opencv": cv2.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, cache_dir)
            done = True
        except OSError:
            # Another process finished the same cache first: use theirs.
            if not _cache_ready(cache_dir, count, height, width):
                raise
    except OSError as exc:
        raise DatasetError(f"cannot write the preprocessed images to {parent}: {exc}", "check the disk, or set MLPI_CACHE to a writable folder") from None
    finally:
        cv2.setNumThreads(threads)
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
