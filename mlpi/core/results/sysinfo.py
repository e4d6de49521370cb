"""What machine and software a result was measured on: what can be detected, nothing invented.

The keys are MLPerf's system-description field names (the ``systems/<id>.json`` of a
submission), so ``mlpi sysinfo --json`` is a starting point for that file. A field mlpi
cannot detect (submitter, cooling, storage, interconnects...) stays ``""`` for the user to
fill. ``system_name`` is taken from ``$MLPI_SYSTEM_NAME`` when set. Beyond the MLPerf
fields, mlpi keeps exact machine-readable values (``host_memory_bytes``, ``accelerators``,
``packages``) that comparisons and the results store read.

Accelerators are learnt through the installed backends, whatever the vendor: every backend
that can use a device kind other than ``cpu`` is asked for its devices (``Backend.probe``)
and what each one is (``Backend.describe``); a device several backends see (``cuda:0``
through ONNX Runtime, PyTorch and TensorRT) is one accelerator. ``nvidia-smi``, when
present, only adds what backends cannot say: an NVIDIA GPU's memory and driver version,
and NVIDIA GPUs no installed backend sees. Backends that only simulate a device
(``simulated = True`` on the class) add nothing: the machine has no such hardware.
A probe that raises or takes longer than ``probe_timeout_s`` is left out, never fatal.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.contract.device import Device

if TYPE_CHECKING:
    from mlpi.core.contract.backend import Backend

#: Environment variable naming the system, for ``system_name`` (never guessed).
SYSTEM_NAME_ENV = "MLPI_SYSTEM_NAME"

#: MLPerf system-description fields, in the order a submission's system JSON lists them.
MLPERF_FIELDS = (
    "division", "submitter", "status", "system_name", "system_type", "number_of_nodes",
    "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
    "host_processor_vcpu_count", "host_processor_frequency", "host_processor_caches",
    "host_processor_interconnect", "host_memory_capacity", "host_memory_configuration",
    "host_storage_type", "host_storage_capacity", "host_networking", "host_networking_topology",
    "accelerators_per_node", "accelerator_model_name", "accelerator_frequency",
    "accelerator_host_interconnect", "accelerator_interconnect", "accelerator_interconnect_topology",
    "accelerator_memory_capacity", "accelerator_memory_configuration", "accelerator_on-chip_memories",
    "cooling", "hw_notes", "framework", "other_software_stack", "operating_system", "sw_notes",
)

_CORE_DISTRIBUTIONS = ("mlpi", "mlcommons-loadgen", "numpy")
_NVIDIA_QUERY = ("--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")


@dataclass(frozen=True)
class CpuInfo:
    model: str | None
    sockets: int | None
    cores: int | None
    threads: int | None


@dataclass(frozen=True)
class Accelerator:
    """One accelerator unit: ``device`` is how mlpi names it (``cuda:0``; empty for a GPU
    only ``nvidia-smi`` reports), ``backends`` the installed backends that can use it."""

    name: str
    memory: str
    driver: str
    device: str = ""
    backends: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "memory": self.memory, "driver": self.driver,
            "device": self.device, "backends": list(self.backends),
        }


@dataclass(frozen=True)
class DeviceReport:
    """What one backend says about one of its non-CPU devices."""

    backend: str
    device: Device
    description: str


def system_info(
    distributions: tuple[str, ...] = (),
    *,
    smi_timeout_s: float = 10.0,
    backends: Iterable[Backend] | None = None,
    config: PluginsConfig | None = None,
    probe_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """The system description of this machine; ``distributions`` are the backend runtimes
    whose versions make up ``framework``.

    Accelerators come from ``backends`` (default: every installed backend, found through
    ``config``, default the packaged plugins.toml plus the user's) and ``nvidia-smi``.
    """
    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    memory = parse_meminfo(_read("/proc/meminfo"))
    if backends is None:
        backends = installed_backends(config)
    reports = probe_devices(backends, probe_timeout_s)
    accelerators = merge_accelerators(reports, nvidia_accelerators(smi_timeout_s))
    packages = package_versions((*_CORE_DISTRIBUTIONS, *distributions))
    info: dict[str, Any] = dict.fromkeys(MLPERF_FIELDS, "")
    info.update(
        system_name=os.environ.get(SYSTEM_NAME_ENV, "").strip(),
        number_of_nodes=1,
        host_processor_model_name=cpu.model or platform.processor() or "",
        host_processors_per_node=cpu.sockets or "",
        host_processor_core_count=cpu.cores or "",
        host_processor_vcpu_count=cpu.threads or os.cpu_count() or "",
        host_memory_capacity=f"{memory / 2**30:.1f} GiB" if memory else "",
        accelerators_per_node=len(accelerators) if accelerators else "",
        accelerator_model_name=_joined(a.name for a in accelerators),
        accelerator_memory_capacity=_joined(a.memory for a in accelerators),
        framework=", ".join(f"{name} {packages[name]}" for name in dict.fromkeys(distributions) if packages.get(name)),
        other_software_stack=_software_stack(packages, accelerators),
        operating_system=_operating_system(),
    )
    info.update(
        hostname=socket.gethostname(),
        machine=platform.machine(),
        python=platform.python_version(),
        host_memory_bytes=memory,
        accelerators=[a.to_json() for a in accelerators],
        packages=packages,
    )
    return info


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``, else the platform's processor string)."""
    return parse_cpuinfo(_read("/proc/cpuinfo")).model or platform.processor() or ""


def parse_cpuinfo(text: str) -> CpuInfo:
    """Model, sockets (distinct ``physical id``), physical cores (distinct socket/core pairs)
    and logical CPUs (``processor`` entries) from ``/proc/cpuinfo``; ``None`` where absent."""
    model: str | None = None
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    threads = 0
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
        if "processor" in fields and fields["processor"].isdigit():
            threads += 1
        model = model or fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or None
        if "physical id" in fields:
            sockets.add(fields["physical id"])
            if "core id" in fields:
                cores.add((fields["physical id"], fields["core id"]))
    return CpuInfo(model, len(sockets) or None, len(cores) or None, threads or None)


def parse_meminfo(text: str) -> int | None:
    """``MemTotal`` in bytes: the memory the kernel manages (a little less than installed)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            parts = value.split()
            if parts and parts[0].isdigit():
                scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                return int(parts[0]) * scale
    return None


def parse_nvidia_smi(text: str) -> list[Accelerator]:
    """One accelerator per line of ``nvidia-smi --query-gpu=name,memory.total,driver_version``."""
    found = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            found.append(Accelerator(*parts))
    return found


def nvidia_accelerators(timeout_s: float = 10.0) -> list[Accelerator]:
    """NVIDIA GPUs as ``nvidia-smi`` reports them; none when it is absent, fails or hangs."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        proc = subprocess.run(
            [binary, *_NVIDIA_QUERY], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


def installed_backends(config: PluginsConfig | None = None) -> list[Backend]:
    """One instance of every enabled, importable backend plugin; none when the
    configuration cannot be read (a system description never fails on it)."""
    from mlpi.core.contract.backend import Backend
    from mlpi.core.plugins.registry import Registry

    try:
        plugins = Registry(config if config is not None else PluginsConfig.load(None)).plugins("backends")
    except Exception:  # noqa: BLE001 - a bad plugins.toml is `mlpi run`'s business, not ours
        return []
    found: list[Backend] = []
    for info in plugins:
        if info.broken or info.disabled or not (isinstance(info.obj, type) and issubclass(info.obj, Backend)):
            continue
        try:
            found.append(info.obj())
        except Exception:  # noqa: BLE001, S112 - a backend that cannot even be created sees nothing
            continue
    return found


def probe_devices(backends: Iterable[Any], timeout_s: float = 10.0) -> list[DeviceReport]:
    """The non-CPU devices each backend probes, with its description of each, in backend order.

    Each backend is asked in its own daemon thread; one that raises, or has not answered
    within ``timeout_s`` (all backends together), contributes nothing. Backends that use only
    the CPU, or only simulate their devices (``simulated`` true on the backend), are not asked.
    """
    asked = [b for b in backends if _has_accelerators(b)]
    boxes: list[list[DeviceReport] | None] = [None] * len(asked)
    threads = []
    for position, backend in enumerate(asked):
        thread = threading.Thread(
            target=_probe_one, args=(backend, boxes, position), name="mlpi-sysinfo-probe", daemon=True
        )
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [report for box in boxes if box is not None for report in box]


def merge_accelerators(reports: Sequence[DeviceReport], smi: Sequence[Accelerator] = ()) -> list[Accelerator]:
    """One accelerator per device the backends report (``cuda:0`` seen by three backends is
    one), completed by ``nvidia-smi``'s entries: a CUDA device gets the memory and driver of
    the NVIDIA GPU whose name starts its description (the one at the same position first),
    and NVIDIA GPUs no backend reported are added as ``nvidia-smi`` lists them."""
    units: dict[tuple[str, int], list[DeviceReport]] = {}
    for report in reports:
        units.setdefault((report.device.kind, report.device.index), []).append(report)
    unused = list(range(len(smi)))
    found: list[Accelerator] = []
    for (kind, index), seen in sorted(units.items()):
        description = next((r.description for r in seen if r.description), "")
        names = tuple(dict.fromkeys(r.backend for r in seen))
        device = str(Device(kind, (index,)))
        match = _nvidia_match(kind, index, description, smi, unused) if smi else None
        if match is not None:
            unused.remove(match)
            gpu = smi[match]
            found.append(Accelerator(gpu.name, gpu.memory, gpu.driver, device, names))
        else:
            found.append(Accelerator(description or device, "", "", device, names))
    found.extend(smi[i] for i in unused)
    return found


def runtime_distributions(config: PluginsConfig) -> tuple[str, ...]:
    """Every usable backend's runtime distributions (for ``mlpi sysinfo``, where no run
    names one backend); a backend that fails to load adds nothing."""
    names: list[str] = []
    for backend in installed_backends(config):
        try:
            names.extend(backend.runtime_distributions())
        except Exception:  # noqa: BLE001, S112 - a broken plugin is `mlpi backends`' business, not ours
            continue
    return tuple(dict.fromkeys(names))


def _has_accelerators(backend: Any) -> bool:
    try:
        kinds = tuple(getattr(backend, "device_kinds", ()) or ())
        return any(kind != "cpu" for kind in kinds) and not getattr(backend, "simulated", False)
    except Exception:  # noqa: BLE001 - a backend with odd declarations is not asked
        return False


def _probe_one(backend: Any, boxes: list[list[DeviceReport] | None], position: int) -> None:
    """Fill ``boxes[position]`` with what ``backend`` reports; leave it ``None`` if it raises."""
    try:
        name = str(getattr(backend, "name", type(backend).__name__))
        reports = []
        for device in backend.probe():
            if not isinstance(device, Device) or device.kind == "cpu":
                continue
            for unit in device.units():
                try:
                    description = str(backend.describe(unit) or "").strip()
                except Exception:  # noqa: BLE001 - describe never raises per the contract; guard anyway
                    description = ""
                reports.append(DeviceReport(name, unit, description))
    except Exception:  # noqa: BLE001 - probe never raises per the contract; guard anyway
        return
    boxes[position] = reports


def _nvidia_match(kind: str, index: int, description: str, smi: Sequence[Accelerator], unused: list[int]) -> int | None:
    """The unused ``nvidia-smi`` entry that describes CUDA device ``index``, if any."""
    if kind != "cuda":
        return None
    if not description:  # nothing to compare: trust the position
        return index if index in unused else None
    for i in sorted(unused, key=lambda i: (i != index, i)):
        if description.startswith(smi[i].name):
            return i
    return None


def _software_stack(packages: dict[str, str | None], accelerators: list[Accelerator]) -> str:
    parts = [f"{name} {packages[name]}" for name in _CORE_DISTRIBUTIONS if packages.get(name)]
    parts.append(f"Python {platform.python_version()}")
    drivers = _joined(a.driver for a in accelerators)
    if drivers:
        parts.append(f"NVIDIA driver {drivers}")
    return ", ".join(parts)


def _operating_system() -> str:
    pretty = ""
    for line in _read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            pretty = value.strip().strip('"')
    kernel = f"{platform.system()} {platform.release()}".strip()
    return f"{pretty} ({kernel})" if pretty else platform.platform()


def _joined(values: Any) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v))


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
