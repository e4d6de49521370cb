"""A small checked layer over cuda-python's runtime API, for the ``tensorrt`` backend.

cuda-python returns ``(error, value...)`` tuples instead of raising; every call here
checks the error and raises :class:`CudaError` naming the call, so a failed copy or
allocation can never be mistaken for a result. Only what the backend needs is wrapped:
device selection and properties, streams, device and pinned host memory, copies.

The runtime's current device is per host thread: :meth:`Cuda.set_device` must be called
in every thread before it touches memory, streams or an execution context of a unit.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def import_runtime() -> Any:
    """``cuda.bindings.runtime`` (cuda-python 12.6 and later), else the older ``cuda.cudart``.

    Raises ImportError when cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python before 12.6
    return runtime


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for a TensorRT engine: engines are built for one model of GPU."""

    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


class Cuda:
    """Checked CUDA runtime calls on one cuda-python runtime module."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self._success = runtime.cudaError_t.cudaSuccess
        self._h2d = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost

    @classmethod
    def load(cls) -> Cuda:
        return cls(import_runtime())

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        error, values = result[0], tuple(result[1:])
        if error != self._success:
            raise CudaError(f"{name} failed: {self.error_name(error)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def error_name(self, error: Any) -> str:
        try:
            found = self.rt.cudaGetErrorName(error)
            name = found[1] if found[0] == self._success else None
        except Exception:  # noqa: BLE001 - naming the error must not hide it
            name = None
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        return str(name or error)

    # -- devices ---------------------------------------------------------------------

    def set_device(self, index: int) -> None:
        self._call("cudaSetDevice", index)

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def device_info(self, index: int) -> GpuInfo:
        props = self._call("cudaGetDeviceProperties", index)
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return GpuInfo(index, str(name).strip(), int(props.major), int(props.minor))

    # -- streams -----------------------------------------------------------------------

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    @staticmethod
    def handle(stream: Any) -> int:
        """The stream as the integer TensorRT's ``*_async`` calls take."""
        return int(stream)

    # -- memory ------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", pointer)

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: asynchronous copies from and to it really are asynchronous."""
        return int(self._call("cudaMallocHost", nbytes))

    def free_host(self, pointer: int) -> None:
        self._call("cudaFreeHost", pointer)

    def copy_to_device(self, device: int, host: int, nbytes: int) -> None:
        """Synchronous host-to-device copy (for calibration batches, outside timing)."""
        self._call("cudaMemcpy", device, host, nbytes, self._h2d)

    def copy_to_device_async(self, device: int, host: int, nbytes: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", device, host, nbytes, self._h2d, stream)

    def copy_to_host_async(self, host: int, device: int, nbytes: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", host, device, nbytes, self._d2h, stream)


def host_array(pointer: int, nbytes: int) -> np.ndarray:
    """A uint8 numpy view of ``nbytes`` of host memory at ``pointer`` (no copy, no ownership)."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(pointer))
