"""Where mlpi keeps what it downloads or derives: ``$MLPI_CACHE``, else the platform's cache folder."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here): ``$MLPI_CACHE``, ``$XDG_CACHE_HOME/mlpi``,
    ``~/Library/Caches/mlpi`` on macOS, ``%LOCALAPPDATA%\\mlpi`` on Windows, ``~/.cache/mlpi``."""
    explicit = os.environ.get("MLPI_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "mlpi"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mlpi"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlpi"


@contextmanager
def staged_folder(folder: Path, keep_existing: Callable[[], bool] | None = None) -> Iterator[Path]:
    """A fresh temporary sibling of ``folder`` to build a cache in. When the block ends without
    an error it takes ``folder``'s place in one rename, so no reader ever sees half a cache;
    a folder already there is replaced, unless ``keep_existing()`` says it is good (another
    process finished the same cache first). The staging folder is removed in every case.
    ``OSError`` from creating, renaming or filling it reaches the caller."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            if keep_existing is not None and keep_existing():
                return
            shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
