"""Where mlpi keeps what it downloads or derives: ``$MLPI_CACHE``, else the platform's cache folder."""

from __future__ import annotations

import os
import sys
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
