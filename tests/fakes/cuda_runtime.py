"""FAKE of cuda-python's ``cuda.bindings.runtime``, for tests only.

This is a fake for a runtime that cannot exist on the machines the test suite runs on
(no NVIDIA GPU, no driver). It is never installed: tests load it from this file and put
it into ``sys.modules`` as ``cuda.bindings.runtime`` themselves, and take it out again.

It has exactly the calls the ``tensorrt`` backend makes, with cuda-python's conventions
(every call returns ``(cudaError_t, values...)``), and behaves like a GPU where the tests
can see it:

- device memory is numpy storage behind made-up addresses that no host code can touch:
  only the copy calls (and the fake TensorRT) reach it, and they check every address
  and size against live allocations;
- pinned host memory is real host memory whose address is handed out, as CUDA does;
  asynchronous copies from or to other host memory are counted (``PAGEABLE_ASYNC_COPIES``);
- work queued on a stream (copies, fake TensorRT executions) runs only when the stream
  is synchronized, so code that reads results before synchronizing gets stale bytes;
- the current device is per host thread, like CUDA's.

Tests configure it through ``DEVICES`` and ``EXECUTION_DELAY_S`` and read ``live()``.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np


class cudaError_t(IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


@dataclass
class FakeDevice:
    name: str = "NVIDIA Fake GPU"
    major: int = 9
    minor: int = 0
    total_memory: int = 1 << 30


#: The GPUs of the fake machine; tests replace or edit it.
DEVICES: list[FakeDevice] = [FakeDevice()]
#: Seconds each queued TensorRT execution takes when its stream is synchronized.
EXECUTION_DELAY_S = 0.0
#: Asynchronous copies whose host side was not pinned memory.
PAGEABLE_ASYNC_COPIES = 0


@dataclass
class _Allocation:
    base: int
    size: int
    data: np.ndarray
    device: int


@dataclass
class _Stream:
    handle: int
    device: int
    queue: list[Callable[[], None]] = field(default_factory=list)


class cudaStream_t:  # noqa: N801
    """A stream handle: ``int(stream)`` is what TensorRT's ``*_async`` calls are given."""

    def __init__(self, handle: int = 0) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    def __repr__(self) -> str:
        return f"<cudaStream_t 0x{self._handle:x}>"


@dataclass
class cudaDeviceProp:  # noqa: N801
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int  # noqa: N815


_lock = threading.RLock()
_device: dict[int, _Allocation] = {}  # base address -> allocation
_bases: list[int] = []  # sorted base addresses of device allocations
_pinned: dict[int, np.ndarray] = {}  # host address -> its storage
_streams: dict[int, _Stream] = {}
_next_address = itertools.count(0x7F00_0000_0000, 1 << 24)  # 16 MiB apart, never real memory
_next_stream = itertools.count(0x5000)
_current = threading.local()

_OK = (cudaError_t.cudaSuccess,)


def _fail(error: cudaError_t) -> tuple[Any, ...]:
    return (error, None)


# --------------------------------------------------------------------------- devices


def current_device() -> int:
    return getattr(_current, "device", 0)


def cudaGetDeviceCount() -> tuple[Any, ...]:  # noqa: N802
    if not DEVICES:
        return _fail(cudaError_t.cudaErrorNoDevice)
    return (cudaError_t.cudaSuccess, len(DEVICES))


def cudaSetDevice(device: int) -> tuple[Any, ...]:  # noqa: N802
    if not 0 <= device < len(DEVICES):
        return (cudaError_t.cudaErrorInvalidDevice,)
    _current.device = device
    return _OK


def cudaGetDeviceProperties(device: int) -> tuple[Any, ...]:  # noqa: N802
    if not 0 <= device < len(DEVICES):
        return _fail(cudaError_t.cudaErrorInvalidDevice)
    gpu = DEVICES[device]
    name = gpu.name.encode().ljust(256, b"\0")  # char[256], as cuda-python gives it
    return (cudaError_t.cudaSuccess, cudaDeviceProp(name, gpu.major, gpu.minor, gpu.total_memory))


def cudaGetErrorName(error: cudaError_t) -> tuple[Any, ...]:  # noqa: N802
    return (cudaError_t.cudaSuccess, cudaError_t(error).name.encode())


# --------------------------------------------------------------------------- memory


def cudaMalloc(size: int) -> tuple[Any, ...]:  # noqa: N802
    if size <= 0 or size > DEVICES[current_device()].total_memory:
        return _fail(cudaError_t.cudaErrorMemoryAllocation)
    with _lock:
        base = next(_next_address)
        _device[base] = _Allocation(base, size, np.zeros(size, dtype=np.uint8), current_device())
        bisect.insort(_bases, base)
    return (cudaError_t.cudaSuccess, base)


def cudaFree(pointer: int) -> tuple[Any, ...]:  # noqa: N802
    with _lock:
        if int(pointer) not in _device:
            return (cudaError_t.cudaErrorInvalidValue,)
        del _device[int(pointer)]
        _bases.remove(int(pointer))
    return _OK


def cudaMallocHost(size: int) -> tuple[Any, ...]:  # noqa: N802
    if size <= 0:
        return _fail(cudaError_t.cudaErrorInvalidValue)
    storage = np.zeros(size, dtype=np.uint8)
    with _lock:
        _pinned[storage.ctypes.data] = storage
    return (cudaError_t.cudaSuccess, storage.ctypes.data)


def cudaFreeHost(pointer: int) -> tuple[Any, ...]:  # noqa: N802
    with _lock:
        if _pinned.pop(int(pointer), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
    return _OK


def device_bytes(pointer: int, nbytes: int) -> np.ndarray | None:
    """The fake device memory ``[pointer, pointer + nbytes)`` as a writable uint8 view, or None
    when that range is not inside one live allocation."""
    pointer = int(pointer)
    with _lock:
        at = bisect.bisect_right(_bases, pointer) - 1
        if at < 0:
            return None
        allocation = _device[_bases[at]]
        offset = pointer - allocation.base
        if nbytes < 0 or offset + nbytes > allocation.size:
            return None
        return allocation.data[offset : offset + nbytes]


def device_of(pointer: int) -> int | None:
    with _lock:
        at = bisect.bisect_right(_bases, int(pointer)) - 1
        return _device[_bases[at]].device if at >= 0 else None


def _is_pinned(pointer: int, nbytes: int) -> bool:
    with _lock:
        for base, storage in _pinned.items():
            if base <= pointer and pointer + nbytes <= base + storage.size:
                return True
    return False


def _copy(dst: int, src: int, count: int, kind: cudaMemcpyKind) -> cudaError_t:
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        target = device_bytes(dst, count)
        if target is None or device_bytes(src, 1) is not None:
            return cudaError_t.cudaErrorInvalidValue
        target[:] = np.frombuffer(ctypes.string_at(src, count), dtype=np.uint8)
        return cudaError_t.cudaSuccess
    if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        source = device_bytes(src, count)
        if source is None or device_bytes(dst, 1) is not None:
            return cudaError_t.cudaErrorInvalidValue
        ctypes.memmove(dst, source.ctypes.data, count)
        return cudaError_t.cudaSuccess
    return cudaError_t.cudaErrorInvalidValue


def cudaMemcpy(dst: int, src: int, count: int, kind: cudaMemcpyKind) -> tuple[Any, ...]:  # noqa: N802
    return (_copy(int(dst), int(src), int(count), kind),)


def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: Any) -> tuple[Any, ...]:  # noqa: N802
    global PAGEABLE_ASYNC_COPIES
    queue = _stream(stream)
    if queue is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    dst, src, count = int(dst), int(src), int(count)
    device_side, host_side = (dst, src) if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else (src, dst)
    if device_bytes(device_side, count) is None:  # checked now, as CUDA checks its arguments
        return (cudaError_t.cudaErrorInvalidValue,)
    if not _is_pinned(host_side, count):
        PAGEABLE_ASYNC_COPIES += 1

    def run() -> None:
        error = _copy(dst, src, count, kind)
        if error != cudaError_t.cudaSuccess:
            raise RuntimeError(f"queued copy failed: {error.name}")

    enqueue(queue, run)
    return _OK


# --------------------------------------------------------------------------- streams


def cudaStreamCreate() -> tuple[Any, ...]:  # noqa: N802
    handle = next(_next_stream)
    with _lock:
        _streams[handle] = _Stream(handle, current_device())
    return (cudaError_t.cudaSuccess, cudaStream_t(handle))


def _stream(stream: Any) -> _Stream | None:
    with _lock:
        return _streams.get(int(stream))


def stream_by_handle(handle: int) -> _Stream | None:
    return _stream(handle)


def enqueue(stream: _Stream, work: Callable[[], None]) -> None:
    with _lock:
        stream.queue.append(work)


def cudaStreamSynchronize(stream: Any) -> tuple[Any, ...]:  # noqa: N802
    queue = _stream(stream)
    if queue is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    while True:
        with _lock:
            if not queue.queue:
                return _OK
            work = queue.queue.pop(0)
        try:
            work()
        except Exception:  # noqa: BLE001 - a failed kernel or copy: CUDA reports it here
            with _lock:
                queue.queue.clear()
            return (cudaError_t.cudaErrorInvalidValue,)


def cudaStreamDestroy(stream: Any) -> tuple[Any, ...]:  # noqa: N802
    result = cudaStreamSynchronize(stream)
    if result[0] != cudaError_t.cudaSuccess and _stream(stream) is None:
        return result
    with _lock:
        _streams.pop(int(stream), None)
    return _OK


def delay() -> None:
    if EXECUTION_DELAY_S:
        time.sleep(EXECUTION_DELAY_S)


def live() -> dict[str, int]:
    """How many device allocations, pinned host buffers and streams are still alive."""
    with _lock:
        return {"device": len(_device), "pinned": len(_pinned), "streams": len(_streams)}
