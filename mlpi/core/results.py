"""The run directory and result.json: written atomically, never overwritten.

Layout::

    <root>/<run-id>/plan.json
    <root>/<run-id>/<Scenario>/<mode>/   LoadGen logs, user.conf, outcome.json, harness.log
    <root>/<run-id>/result.json          schema-versioned summary of the whole run
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlpi.core.errors import UsageError

SCHEMA_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it into place, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_run_dir(root: Path, stem: str) -> Path:
    """Make a new, empty run directory under ``root``; an existing one is never reused."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"results root {root} exists and is not a directory", "pass --output DIR with a directory") from None
    except PermissionError:
        raise UsageError(f"cannot create results root {root}: permission denied", "pass --output DIR somewhere writable") from None
    for attempt in range(1000):
        name = stem if attempt == 0 else f"{stem}-{attempt + 1}"
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except PermissionError:
            raise UsageError(f"cannot write to results root {root}: permission denied", "pass --output DIR somewhere writable") from None
        return path
    raise UsageError(f"too many runs named {stem} in {root}", "pass --output DIR with a fresh directory")


def run_stem(model: str, backend: str, device: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{model}-{backend}-{device}")
    return f"{stamp}-{safe}"


def test_dir(run_dir: Path, scenario: str, mode: str) -> Path:
    return run_dir / scenario / mode


def format_figure(value: Any, unit: Any) -> str:
    """A test's figure the way every mlpi table prints it (``-`` when there is none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "%":
        return f"{value:.3f}%"
    if unit == "samples/s":
        return f"{value:,.1f} samples/s"
    return f"{value:g} {unit or ''}".strip()

