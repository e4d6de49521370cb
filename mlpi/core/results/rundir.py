"""The run directory and result.json: written atomically, never overwritten.

Layout::

    <root>/<run-id>/plan.json
    <root>/<run-id>/<Scenario>/<mode>/   LoadGen logs, user.conf, outcome.json, harness.log
    <root>/<run-id>/result.json          schema-versioned summary of the whole run

What result.json holds is defined once, in :mod:`mlpi.core.results.schema`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from mlpi.core.contract.errors import UsageError

#: Version of result.json's schema (:mod:`mlpi.core.results.schema`). 2: a test's accuracy
#: record carries its unit, direction and the official lines; the model carries its rules.
SCHEMA_VERSION = 2
RESULT_FILE = "result.json"


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(handle)`` into a file next to ``path``, flushed to disk and renamed into place,
    so a reader sees the old file or the new one, never half of one (``write`` may stream
    more than fits in memory). The file gets the usual permissions (0666 less the umask),
    as ``open()`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, content: bytes) -> None:
    """``content`` written with :func:`write_atomic`."""
    write_atomic(path, lambda handle: handle.write(content))


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written with :func:`write_bytes_atomic`."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


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
    """A test's figure the way every mlpi table prints it (``-`` when there is none).

    Performance units (``ms``, ``samples/s``) and sample counts have their own forms; any
    other unit is an accuracy metric's (``%``, ``""``...), printed by
    :func:`mlpi.core.contract.accuracy.format_value` as the run itself prints it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "samples/s":  # below 1 (3D-UNet on a CPU), three significant digits: never "0.0"
        return f"{value:,.1f} samples/s" if abs(value) >= 1 or value == 0 else f"{value:.3g} samples/s"
    if unit == "samples":
        return f"{value:,} samples" if isinstance(value, int) else f"{value:g} samples"
    if unit is None:
        return f"{value:g}"
    from mlpi.core.contract.accuracy import format_value  # numpy comes with it: only when printing one

    return format_value(value, str(unit))
