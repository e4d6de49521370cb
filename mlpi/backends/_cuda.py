"""Count NVIDIA GPUs through the driver API without importing any framework.

Runtimes such as onnxruntime-gpu list CUDA as available even where no driver is
installed; a backend's probe asks the driver itself. Never raises.
"""

from __future__ import annotations

import ctypes
import os


def cuda_device_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    try:
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except (AttributeError, OSError):
        return 0


def rocm_device_count() -> int:
    """AMD GPUs visible through the kernel driver (``/dev/kfd`` plus render nodes)."""
    if not os.path.exists("/dev/kfd"):
        return 0
    try:
        nodes = os.listdir("/sys/class/kfd/kfd/topology/nodes")
    except OSError:
        return 0
    count = 0
    for node in nodes:
        try:
            with open(f"/sys/class/kfd/kfd/topology/nodes/{node}/properties", encoding="utf-8") as handle:
                if any(line.startswith("simd_count") and line.split()[1] != "0" for line in handle):
                    count += 1
        except OSError:
            continue
    return count


def cuda_device_name(index: int) -> str:
    """``NVIDIA H100 80GB HBM3, 79.6 GiB`` for one GPU, from the driver; empty if unknown."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        if lib.cuInit(0) != 0:
            return ""
        handle = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(handle), index) != 0:
            return ""
        name = ctypes.create_string_buffer(256)
        if lib.cuDeviceGetName(name, 256, handle) != 0:
            return ""
        text = name.value.decode(errors="replace")
        memory = ctypes.c_size_t(0)
        if lib.cuDeviceTotalMem_v2(ctypes.byref(memory), handle) == 0 and memory.value:
            text += f", {memory.value / 2**30:.1f} GiB"
        return text
    except (OSError, AttributeError):
        return ""


def cuda_absence() -> str | None:
    """Why this machine has no usable NVIDIA GPU, in words (None when the driver sees one):
    what a hint must say before it suggests installing a GPU runtime."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "CUDA_VISIBLE_DEVICES is set empty, which hides every GPU"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        where = " (/dev/nvidia0 exists, so the driver's user-space library is missing)" if os.path.exists("/dev/nvidia0") else ""
        return f"no NVIDIA driver was found on this machine: libcuda.so.1 cannot be loaded{where}"
    try:
        status = lib.cuInit(0)
        if status != 0:
            return f"the NVIDIA driver did not start (cuInit error {status}): check it with nvidia-smi"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return "the NVIDIA driver sees no GPU"
    except (AttributeError, OSError):
        return "the NVIDIA driver library does not answer as CUDA's"
    return None


def rocm_absence() -> str | None:
    """Why this machine has no usable AMD GPU, in words (None when one is visible)."""
    if not os.path.exists("/dev/kfd"):
        return "no AMD GPU driver was found on this machine (/dev/kfd is missing)"
    return None if rocm_device_count() else "the AMD GPU driver lists no GPU"

