"""What machine and software a result was measured on (what can be detected, nothing invented)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def system_info(distributions: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "host_processor_model_name": _cpu_model(),
        "host_processor_core_count": _physical_cores(),
        "host_logical_cpu_count": os.cpu_count(),
        "host_memory_bytes": _memory_bytes(),
        "operating_system": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": package_versions(("mlpi", "mlcommons-loadgen", "numpy", *distributions)),
    }


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            pairs = set()
            phys = core = None
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and phys is not None and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
            if phys is not None and core is not None:
                pairs.add((phys, core))
            return len(pairs) or None
    except OSError:
        return None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
