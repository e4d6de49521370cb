"""The preprocessed-image cache the image datasets share (imagenet, openimages).

Decoding and resizing is slow, so a dataset does it once, while the run is planned, into
``cache_root()/datasets/<dataset>/<key>/images.npy``: ONE memory-mappable array
``[count, H, W, 3]`` of the preprocessed pixels, plus ``meta.json``.

- The key is a sha256 over the dataset's preprocessing parameters, the OpenCV version and
  each used image's name, size and ``mtime_ns`` (``os.stat`` only): any change gives a new
  key, so a stale cache is never used, and a moved dataset reuses its cache.
- The cache is built in a temporary sibling folder, in parallel over images, and renamed to
  its key only once every image is written and flushed: a crash or Ctrl-C mid-build leaves
  nothing a later run would use. A missing or undecodable image is an error naming it, never
  a skipped index (skipping would shift every later sample). So is a truncated JPEG, which
  libjpeg decodes anyway (the missing rows grey, "Premature end of JPEG file" on stderr):
  :func:`jpeg_truncation` finds it from the file's last bytes before it is decoded.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from mlpi.core.contract.errors import DatasetError
from mlpi.core.engine.cache import cache_root

CACHE_FILE = "images.npy"
META_FILE = "meta.json"


def escapes_folder(name: str) -> str:
    """Why the image name ``name`` (a list entry, relative to the dataset folder) could reach
    outside that folder; ``""`` when it cannot. Judged on the name as written: absolute
    paths, ``..`` parts and NUL bytes are refused; symlinks inside the folder are followed
    (whoever put them there chose their target, as they chose the folder)."""
    if "\0" in name:
        return "which holds a NUL byte"
    path = PurePath(name)  # this platform's rules: on Windows 'C:x', '\\x' and '..\\x' too
    if path.anchor:
        return "an absolute path"
    if ".." in path.parts:
        return "which climbs out with '..'"
    return ""


def check_listed_images(folder: Path, names: Sequence[str], what: str) -> None:
    """Every image a calibration list names is a file inside ``folder``: one DatasetError that
    names the missing ones (the first ten, and how many there are), before any is decoded."""
    for name in names:
        problem = escapes_folder(name)
        if problem:
            raise DatasetError(f"{what} names {name!r}, {problem}: every image must be inside {folder}",
                               "use the benchmark's calibration list as published")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            missing_from_list(missing, len(names), f"images {what} names", str(folder)),
            "copy (or symlink) every listed image into that folder, or point --calibration-path at the folder "
            "that holds them",
        )


def missing_from_list(missing: Sequence[str], total: int, things: str, where: str) -> str:
    """The message for samples a calibration list names that ``where`` lacks: how many, and the
    first ten of them (every dataset that reads a list by name says it alike)."""
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return f"{len(missing)} of the {total} {things} {'is' if len(missing) == 1 else 'are'} not in {where}: {shown}"


#: JPEG's start-of-image, start-of-scan and end-of-image markers.
_SOI, _SOS, _EOI = b"\xff\xd8\xff", b"\xff\xda", b"\xff\xd9"
#: Bytes read from a JPEG's end to find its end-of-image marker (past any padding).
_TAIL = 64


def jpeg_truncation(file: Path | str) -> str:
    """Why the JPEG ``file`` is cut short (``""`` when it is complete, or not a JPEG).

    A whole JPEG ends with its end-of-image marker (FF D9), perhaps followed by padding;
    that takes reading its first and last few bytes, two small reads of a file the decoder
    reads next anyway (about 1% of decoding and resizing an ImageNet image). Only where the tail does not end so is the whole file read:
    it is complete if an end-of-image marker follows its last start-of-scan (data appended
    after the image, as some cameras do), and cut short if not. libjpeg decodes a truncated
    file without an error, so cv2.imread cannot tell."""
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:  # unbuffered reads: ~15-25 us, against milliseconds to decode
        if _read_at(fd, 3, 0) != _SOI:
            return ""
        size = os.fstat(fd).st_size
        if _read_at(fd, _TAIL, max(0, size - _TAIL)).rstrip(b"\x00\t\n\r ").endswith(_EOI):
            return ""
        data = _read_at(fd, size, 0)
    finally:
        os.close(fd)
    scan = data.rfind(_SOS)
    if scan < 0 or data.rfind(_EOI) > scan:  # no image data at all: the decoder refuses it
        return ""
    return f"it ends after {size} bytes, before its end-of-image marker"


def _read_at(fd: int, count: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows has no pread
    return os.read(fd, count)


@dataclass(frozen=True)
class ImageCache:
    """How one dataset preprocesses its images into a cache.

    - ``dataset``: the folder under ``cache_root()/datasets``.
    - ``params``: everything besides the files that determines the cached pixels (its
      ``version`` is bumped when the preprocessing code changes them).
    - ``transform``: an OpenCV BGR image -> ``[height, width, 3]`` pixels of ``dtype``.
    - ``where``: how messages name sample ``i`` ("line 4 of val_map.txt").
    - ``missing_fix`` / ``decode_fix``: the hints for a missing / undecodable image.
    - ``space_detail``: added to the disk-space error (why the cache is that big).
    - ``window_per_worker``: images in flight per worker (bounds memory while building).
    """

    dataset: str
    params: Mapping[str, Any]
    height: int
    width: int
    dtype: str
    transform: Callable[[np.ndarray], np.ndarray]
    where: Callable[[int], str]
    missing_fix: str
    decode_fix: str
    space_detail: str = ""
    window_per_worker: int = 4

    @property
    def row_bytes(self) -> int:
        return self.height * self.width * 3 * np.dtype(self.dtype).itemsize

    def prepare(self, folder: Path, names: Sequence[str], *, build: bool = True) -> tuple[str, Path]:
        """Check every image is there, then the cache's key and file (built when missing)."""
        import cv2

        stats = self.stat_images(folder, names)
        key = self.key(cv2.__version__, names, stats)
        cache_dir = cache_root() / "datasets" / self.dataset / key
        if build and not self.ready(cache_dir, len(names)):
            self.build(folder, names, cache_dir)
        return key, cache_dir / CACHE_FILE

    def stat_images(self, folder: Path, names: Sequence[str]) -> list[os.stat_result]:
        """``os.stat`` of every used image (no decoding); a missing one is an error naming it."""
        stats: list[os.stat_result] = []
        missing: list[int] = []
        base = str(folder)
        for index, name in enumerate(names):
            try:
                st = os.stat(os.path.join(base, name))
            except OSError:
                missing.append(index)
                continue
            if not stat.S_ISREG(st.st_mode):
                missing.append(index)
                continue
            stats.append(st)
        if missing:
            index = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"image {folder / names[index]} ({self.where(index)}) is missing{more}", self.missing_fix)
        return stats

    def key(self, cv2_version: str, names: Sequence[str], stats: Sequence[os.stat_result]) -> str:
        """sha256 over everything that determines the cached pixels."""
        digest = hashlib.sha256()
        params = {**self.params, "height": self.height, "width": self.width, "opencv": cv2_version, "count": len(names)}
        digest.update(json.dumps(params, sort_keys=True).encode())
        for name, st in zip(names, stats):
            digest.update(f"\n{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def ready(self, cache_dir: Path, count: int) -> bool:
        """A finished cache of the expected shape: only complete caches ever get the key's name."""
        try:
            images = np.load(cache_dir / CACHE_FILE, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return (
            images.dtype == np.dtype(self.dtype)
            and images.shape == (count, self.height, self.width, 3)
            and (cache_dir / META_FILE).is_file()
        )

    def build(self, folder: Path, names: Sequence[str], cache_dir: Path) -> None:
        """Preprocess ``names`` into ``cache_dir`` in parallel; atomic: all or nothing."""
        import cv2

        count, row_bytes, parent = len(names), self.row_bytes, cache_dir.parent
        if self.ready(cache_dir, count):  # another process just finished it
            return
        try:
            parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(parent).free
        except OSError as exc:
            raise DatasetError(f"cannot create the cache folder {parent}: {exc}", "set MLPI_CACHE to a writable folder") from None
        if free < count * row_bytes + (64 << 20):
            raise DatasetError(
                f"the preprocessed images need {count * row_bytes / 1e9:.1f} GB in {parent}{self.space_detail}, "
                f"which has {free / 1e9:.1f} GB free",
                "free some space there, set MLPI_CACHE to a folder on a bigger disk, or use fewer images with --count",
            )
        if cache_dir.exists():  # an unusable leftover under the key's name (not one of our builds)
            shutil.rmtree(cache_dir, ignore_errors=True)

        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=parent))
        done = False
        threads = cv2.getNumThreads()
        workers = max(1, min(os.cpu_count() or 1, count))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            shape = (count, self.height, self.width, 3)
            header = np.lib.format.open_memmap(tmp / CACHE_FILE, mode="w+", dtype=np.dtype(self.dtype), shape=shape)
            offset = header.offset
            del header
            cv2.setNumThreads(1)  # parallel over images, not inside each resize
            with open(tmp / CACHE_FILE, "r+b") as out:
                self._write_rows(folder, names, cache_dir, workers, out, offset)
                out.flush()
                os.fsync(out.fileno())
            meta = {
                **self.params,
                "source": str(folder),
                "count": count,
                "shape": list(shape),
                "dtype": self.dtype,
                "opencv": cv2.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.rename(tmp, cache_dir)
                done = True
            except OSError:
                # Another process finished the same cache first: use theirs.
                if not self.ready(cache_dir, count):
                    raise
        except OSError as exc:
            raise DatasetError(
                f"cannot write the preprocessed images to {parent}: {exc}", "check the disk, or set MLPI_CACHE to a writable folder"
            ) from None
        finally:
            cv2.setNumThreads(threads)
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_rows(self, folder: Path, names: Sequence[str], cache_dir: Path, workers: int, out: Any, offset: int) -> None:
        """Decode and preprocess every image on ``workers`` threads, writing each row in place,
        with a progress bar on stderr."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        count, row_bytes = len(names), self.row_bytes
        print(f"mlpi: preprocessing {count} images from {folder} into {cache_dir} (once)", file=sys.stderr, flush=True)
        progress = Progress(
            TextColumn("preprocessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        with progress, ThreadPoolExecutor(max_workers=workers) as pool:
            task = progress.add_task("preprocessing", total=count)
            # A sliding window of work: bounded memory, and cheap to cancel on the first error.
            window = self.window_per_worker * workers
            running: dict[Future[np.ndarray], int] = {}
            submitted = 0
            try:
                while submitted < count or running:
                    while submitted < count and len(running) < window:
                        running[pool.submit(self._one, folder / names[submitted], submitted)] = submitted
                        submitted += 1
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=running.__getitem__):
                        index = running.pop(future)
                        pixels = future.result()  # raises the worker's DatasetError
                        out.seek(offset + index * row_bytes)
                        out.write(pixels.data)
                    progress.advance(task, len(finished))
            finally:
                for future in running:
                    future.cancel()

    def _one(self, file: Path, index: int) -> np.ndarray:
        import cv2

        problem = f"cannot decode image {file} ({self.where(index)})"
        try:
            truncated = jpeg_truncation(file)
        except OSError as exc:
            raise DatasetError(f"cannot read image {file} ({self.where(index)}): {exc.strerror or exc}", self.decode_fix) from None
        if truncated:
            raise DatasetError(f"image {file} ({self.where(index)}) is a truncated JPEG: {truncated}", self.decode_fix)
        bgr = cv2.imread(str(file))
        if bgr is None:
            raise DatasetError(problem, self.decode_fix)
        try:
            return np.ascontiguousarray(self.transform(bgr), dtype=np.dtype(self.dtype))
        except cv2.error as exc:
            raise DatasetError(f"{problem}: {exc}", self.decode_fix) from None
