"""int8 calibration for the ``tensorrt`` backend: an entropy calibrator fed by the run's data.

Only for ``-o builder_precision=true --precision int8`` on TensorRT 10: TensorRT 11 removed
``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator`` (int8 there comes from the
Q/DQ nodes of the graph mlpi derives), so this module is imported only on that path.

TensorRT asks for batches of the calibration profile's size; the run's calibration set
comes in batches whose last one may be short, which is padded by repeating its own rows
(zeros would skew the activation ranges TensorRT measures). The calibration cache TensorRT
writes is kept, so the next build (another batch size, another GPU of the same kind)
reuses the scales instead of calibrating again; a cache given by the user is only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.backends._trt_cuda import Cuda
from mlpi.core.results.rundir import write_bytes_atomic


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with exactly ``rows`` rows: cut, or padded by repeating its rows in order."""
    have = len(array)
    if have == rows:
        return array
    if have > rows:
        return array[:rows]
    if have == 0:
        raise ValueError("an empty calibration batch cannot be padded")
    return np.concatenate([array, array[np.arange(rows - have) % have]])


def make_calibrator(
    trt: Any,
    cuda: Cuda,
    device_index: int,
    inputs: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
    batch: int,
    batches: Callable[[int], Iterator[Mapping[str, np.ndarray]]] | None,
    read_from: Path | None,
    write_to: Path | None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches(batch)``; ``inputs`` maps each network
    input to its engine dtype and sample shape. ``read_from`` is the cache to try first,
    ``write_to`` where a new cache goes (``None``: nowhere)."""

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.used = 0
            self.error: BaseException | None = None
            self.cache_read = False
            self.cache_written: Path | None = None
            self._iterator: Iterator[Mapping[str, np.ndarray]] | None = None
            self._device: dict[str, int] = {}

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            # TensorRT swallows exceptions raised here: keep the first, end calibration.
            try:
                return self._next(list(names))
            except BaseException as exc:  # noqa: BLE001 - re-raised by the builder's caller
                self.error = self.error or exc
                return None

        def _next(self, names: list[str]) -> list[int] | None:
            if batches is None:
                return None
            if self._iterator is None:
                self._iterator = iter(batches(batch))
            try:
                feeds = next(self._iterator)
            except StopIteration:
                return None
            cuda.set_device(device_index)  # TensorRT may call from a thread of its own
            pointers = []
            for name in names:
                dtype, sample = inputs[name]
                array = np.ascontiguousarray(pad_rows(np.asarray(feeds[name]), batch), dtype=dtype)
                if array.shape[1:] != sample:
                    raise ValueError(f"calibration input '{name}' has shape {array.shape}, the model {('N', *sample)}")
                if name not in self._device:
                    self._device[name] = cuda.malloc(max(array.nbytes, 1))
                cuda.copy_to_device(self._device[name], array.ctypes.data, array.nbytes)
                pointers.append(self._device[name])
            self.used += 1
            return pointers

        def read_calibration_cache(self, *_: Any) -> bytes | None:
            if read_from is None or not read_from.is_file():
                return None
            data = read_from.read_bytes()
            self.cache_read = bool(data)
            return data or None

        def write_calibration_cache(self, cache: Any, *_: Any) -> None:
            if write_to is None:
                return
            try:
                write_bytes_atomic(write_to, bytes(memoryview(cache)))
                self.cache_written = write_to
            except BaseException as exc:  # noqa: BLE001 - TensorRT swallows it; the caller raises it
                self.error = self.error or exc

        def close(self) -> None:
            iterator, self._iterator = self._iterator, None
            finish = getattr(iterator, "close", None)
            if callable(finish):
                finish()  # lets the data source unload its samples now
            for pointer in self._device.values():
                try:
                    cuda.free(pointer)
                except Exception:  # noqa: BLE001, S110 - freeing after a failed build: best effort
                    pass
            self._device.clear()

    return Calibrator()
