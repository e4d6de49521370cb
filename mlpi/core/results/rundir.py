"""The run directory and result.json: written atomically, never overwritten.

Layout::

    <root>/<run-id>/plan.json
    <root>/<run-id>/<Scenario>/<mode>/   LoadGen logs, user.conf, outcome.json, harness.log
    <root>/<run-id>/result.json          schema-versioned summary of the whole run

What result.json holds is defined once, in :mod:`mlpi.core.results.schema`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import tempfile
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
    """Make a new, empty run directory under ``root``; an existing one is never reused. A
    results root that cannot hold it (not a folder, not writable, its disk full) is one
    :class:`UsageError` naming the folder."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"results root {root} exists and is not a directory", "pass --output DIR with a directory") from None
    except PermissionError:
        raise UsageError(f"cannot create results root {root}: permission denied", "pass --output DIR somewhere writable") from None
    except OSError as exc:
        raise UsageError(f"cannot create results root {root}: {describe_os_error(exc)}", unwritable_hint(exc)) from None
    for attempt in range(1000):
        name = stem if attempt == 0 else f"{stem}-{attempt + 1}"
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except PermissionError:
            raise UsageError(f"cannot write to results root {root}: permission denied", "pass --output DIR somewhere writable") from None
        except OSError as exc:
            raise UsageError(f"cannot write to results root {root}: {describe_os_error(exc)}", unwritable_hint(exc)) from None
        return path
    raise UsageError(f"too many runs named {stem} in {root}", "pass --output DIR with a fresh directory")


def check_results_root(root: Path) -> None:
    """Refuse, before a run starts, a results root it could not be written into: one
    :class:`UsageError` naming the folder. The root, or when it does not exist yet the nearest
    folder above it that does, must be a folder this process can make folders in: tried, by
    making a hidden one and removing it at once, which also finds a read-only mount, a full
    disk or a file system that refuses (``/proc``). The root itself is not made here: a run
    that fails its checks leaves nothing behind."""
    root = Path(root)
    here = root
    while not os.path.lexists(here) and here.parent != here:
        here = here.parent
    if not here.is_dir():
        if here == root:
            raise UsageError(f"results root {root} exists and is not a directory", "pass --output DIR with a directory")
        raise UsageError(f"cannot create results root {root}: {here} is not a directory", "pass --output DIR with a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mlpi-write-check-", dir=here))
    except OSError as exc:
        if here == root:
            raise UsageError(f"cannot write to results root {root}: {describe_os_error(exc)}", unwritable_hint(exc)) from None
        raise UsageError(f"cannot create results root {root}: {here} is not writable ({describe_os_error(exc)})",
                         unwritable_hint(exc)) from None


#: Errors that mean "this disk is full" rather than "this folder may not be written".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def unwritable_hint(exc: BaseException) -> str:
    """What to do about a write that failed: free space, or write somewhere else."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return "free some disk space, or pass --output DIR on another disk"
    return "pass --output DIR somewhere writable"


def describe_os_error(exc: OSError) -> str:
    """``permission denied``, ``no space left on device``...: the OS's words, lower case."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


# ------------------------------------------------------------------ who is writing a run


def process_owner() -> dict[str, Any]:
    """Who writes a running run's result.json: this host (its name and machine id), this
    process and when it started (so a pid reused later is told apart), the boot and the pid
    namespace it counts in. Recorded as the run's ``owner``; see :func:`owner_gone`."""
    pid = os.getpid()
    owner: dict[str, Any] = {"hostname": socket.gethostname(), "pid": pid}
    started = process_start(pid)
    if started is not None:
        owner["process_start"] = started
    machine = _machine_id()
    if machine is not None:
        owner["machine_id"] = machine
    boot = _boot_id()
    if boot is not None:
        owner["boot_id"] = boot
    namespace = _pid_namespace()
    if namespace is not None:
        owner["pid_namespace"] = namespace
    return owner


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque text that differs for a later process given
    the same pid: ``linux:<clock ticks after boot>`` (``/proc/<pid>/stat`` field 22), else
    ``psutil:<seconds>`` where psutil is installed; None when it cannot be told (or there is no
    such process)."""
    stat_line = _proc_stat(pid)
    if stat_line is not None:
        fields = stat_line[1]
        return f"linux:{fields[19]}" if len(fields) > 19 else None
    if os.path.isdir("/proc/self"):
        return None  # Linux, and the process is gone
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return f"psutil:{psutil.Process(pid).create_time():.2f}"
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied...: cannot tell
        return None


def owner_gone(owner: Any) -> str | None:
    """Why the process that wrote a ``running`` run is surely gone (the run was abandoned:
    killed, or its machine restarted, before it could write its end), or None when it may
    still run or it cannot be told: a run from another host (another name or machine id),
    another container's pid namespace, a result.json without an owner (an older mlpi).

    On this host it is gone when the machine has restarted since (another boot id), when no
    process has its pid (or only a zombie does), or when the process with its pid started at
    another time (the pid was reused)."""
    if not isinstance(owner, dict):
        return None
    host, pid = owner.get("hostname"), owner.get("pid")
    if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if host != socket.gethostname() or owner.get("machine_id") != _machine_id():
        return None  # another machine (or one whose name is shared): its processes cannot be seen
    process = f"its process {pid} on {host}"
    boot, this_boot = owner.get("boot_id"), _boot_id()
    if isinstance(boot, str) and this_boot is not None and boot != this_boot:
        return f"{process} is gone (the machine restarted since)"
    if owner.get("pid_namespace") != _pid_namespace():
        return None  # pids of another container (or ours cannot be read): cannot tell
    alive = _pid_state(pid)
    if alive is None:
        return None
    if not alive:
        return f"{process} is gone"
    started, now = owner.get("process_start"), process_start(pid)
    if isinstance(started, str) and now is not None and started.split(":")[0] == now.split(":")[0] and started != now:
        return f"{process} is gone (that pid is another process now)"
    return None


def _proc_stat(pid: int) -> tuple[str, list[str]] | None:
    """``/proc/<pid>/stat``: the state letter and the fields after it (field 3 on); None
    without /proc or without that process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    rest = text[text.rfind(")") + 1:].split()  # the command name (field 2) may hold spaces and ')'
    return (rest[0], rest[1:]) if rest else None


def _pid_state(pid: int) -> bool | None:
    """Whether process ``pid`` is alive here (a zombie is not); None when it cannot be told."""
    if os.name == "nt":  # os.kill(pid, 0) would send it CTRL_C_EVENT
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:
            return None
        return bool(psutil.pid_exists(pid))
    stat_line = _proc_stat(pid)
    if stat_line is not None:
        return stat_line[0] not in ("Z", "X")
    try:  # no /proc, or one that hides other users' processes
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def _machine_id() -> str | None:
    """``/etc/machine-id``: the same across restarts, another on another installed system."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_text(encoding="ascii").strip() or None
        except OSError:
            continue
    return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        return None


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
    from mlpi.core.contract.accuracy import (
        format_value,  # numpy comes with it: only when printing one
    )

    return format_value(value, str(unit))
