"""An accuracy log cut down for a submission, and its ``hash=`` line, as MLCommons' tool writes them.

Follows ``tools/submission/truncate_accuracy_log.py`` of MLCommons' inference repository: the
submission keeps the first and last 4,096 characters of ``mlperf_log_accuracy.json`` joined by
``"\\n\\n...\\n\\n"`` (a log shorter than 4,096 bytes stays whole), and ``accuracy.txt`` gets
``"\\nhash=<sha256 of the whole log>\\n"`` appended, so the full log can be matched later. A log
that already has a hash line in its ``accuracy.txt`` and is under 10 KiB is left as it is.

The tool reads the log as text, so it counts characters; LoadGen writes its accuracy log in
ASCII with ``\\n`` line ends, where characters are bytes. mlpi works on bytes and refuses a log
holding anything else (it would not be LoadGen's), so what it writes is byte for byte what the
tool writes. The whole log is read once, in chunks, for its hash; never held in memory.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from mlpi.core.contract.errors import MlpiError

#: Characters kept from each end of a long accuracy log.
VIEWABLE_SIZE = 4096
#: The largest accuracy log the checker takes as truncated (``MAX_ACCURACY_LOG_SIZE``).
MAX_ACCURACY_LOG_SIZE = 10 * 1024
#: What joins the kept start and end.
ELLIPSIS = b"\n\n...\n\n"
_HASH_LINE = re.compile(rb"^hash=([\w\d]+)$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Truncated:
    """What goes into the tree: the cut log and ``accuracy.txt`` (with its hash line), and
    the hash of the whole log (``None`` where the tool would have left both files alone)."""

    log: bytes
    accuracy_txt: bytes
    sha256: str | None


def log_sha256(path: Path) -> str:
    """The sha256 of the whole log, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def has_hash_line(accuracy_txt: bytes) -> bool:
    """Whether ``accuracy.txt`` holds a ``hash=`` line (what the checker looks for)."""
    return any(_HASH_LINE.match(line) for line in accuracy_txt.splitlines())


def truncate(log_path: Path, accuracy_txt: bytes) -> Truncated:
    """The submission's copy of the accuracy log at ``log_path`` and of its ``accuracy.txt``
    (given as bytes); :class:`MlpiError` for a log that is not LoadGen's ASCII."""
    size = log_path.stat().st_size
    if has_hash_line(accuracy_txt) and size < MAX_ACCURACY_LOG_SIZE:
        return Truncated(log_path.read_bytes(), accuracy_txt, None)  # the tool leaves it: done already
    sha = log_sha256(log_path)
    with open(log_path, "rb") as handle:
        if size < VIEWABLE_SIZE:
            log = handle.read()
            _ascii(log, log_path)
        else:
            start = handle.read(VIEWABLE_SIZE)
            handle.seek(size - VIEWABLE_SIZE)
            end = handle.read(VIEWABLE_SIZE)
            _ascii(start + end, log_path)
            log = start + ELLIPSIS + end
    return Truncated(log, accuracy_txt + b"\nhash=" + sha.encode("ascii") + b"\n", sha)


def looks_truncated(log_size: int, accuracy_txt: bytes) -> bool:
    """What the checker accepts: a log under 10 KiB and a hash line in ``accuracy.txt``."""
    return log_size <= MAX_ACCURACY_LOG_SIZE and has_hash_line(accuracy_txt)


def _ascii(data: bytes, path: Path) -> None:
    if not data.isascii() or b"\r" in data:
        raise MlpiError(
            f"{path} is not a LoadGen accuracy log (it holds non-ASCII bytes or carriage returns)",
            "use the mlperf_log_accuracy.json LoadGen wrote; copy the run directory again if it was damaged",
        )
