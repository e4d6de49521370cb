"""plugins.toml: which plugins are on, aliases, default backend per device, backend options.

Layers, lowest first: the packaged ``mlpi/plugins.toml``, then one user file: ``--plugins
FILE``, else ``$MLPI_PLUGINS``, else ``./plugins.toml`` when present. Tables merge key by
key; a list in a higher layer replaces the lower one (so a user can re-enable a plugin).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

GROUPS = ("backends", "models", "datasets")
_TOP_KEYS = ("disabled", "aliases", "default_backend", "options")


@dataclass
class PluginsConfig:
    """The merged configuration, with where each layer came from."""

    disabled: dict[str, list[str]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    aliases: dict[str, str] = field(default_factory=dict)
    default_backend: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    option_sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, user_file: str | os.PathLike[str] | None = None) -> PluginsConfig:
        packaged = resources.files("mlpi").joinpath("plugins.toml").read_text(encoding="utf-8")
        layers: list[tuple[str, dict[str, Any]]] = [("packaged plugins.toml", _parse(packaged, "packaged plugins.toml"))]
        path = _user_file(user_file)
        if path is not None:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(
                    f"cannot read plugins file {path}: {getattr(exc, 'strerror', None) or exc}",
                    "check the path given by --plugins or MLPI_PLUGINS",
                ) from None
            layers.append((str(path), _parse(text, str(path))))
        config = cls()
        for source, data in layers:
            config._apply(source, data)
        return config

    def _apply(self, source: str, data: Mapping[str, Any]) -> None:
        self.sources.append(source)
        for key in data:
            if key not in _TOP_KEYS:
                raise UsageError(f"unknown key '{key}' in {source}", f"{suggest(key, _TOP_KEYS, listing=False)}valid keys: {', '.join(_TOP_KEYS)}")
        disabled = _table(data, "disabled", source)
        for group, names in disabled.items():
            if group not in GROUPS:
                raise UsageError(f"unknown plugin group 'disabled.{group}' in {source}", f"valid groups: {', '.join(GROUPS)}")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UsageError(f"'disabled.{group}' in {source} is not a list of names", 'write e.g. backends = ["null"]')
            self.disabled[group] = list(names)
        for name, target in _table(data, "aliases", source).items():
            self.aliases[name] = _string(target, f"aliases.{name}", source)
        for kind, backend in _table(data, "default_backend", source).items():
            self.default_backend[kind] = _string(backend, f"default_backend.{kind}", source)
        for backend, opts in _table(data, "options", source).items():
            if not isinstance(opts, dict):
                raise UsageError(f"'options.{backend}' in {source} is not a table", f"write [options.{backend}] with key = value lines")
            self.options.setdefault(backend, {}).update(opts)
            self.option_sources[backend] = source

    def is_disabled(self, group: str, name: str) -> bool:
        return name in self.disabled.get(group, [])


def _user_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("MLPI_PLUGINS")
    if env:
        return Path(env)
    local = Path("plugins.toml")
    return local if local.is_file() else None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source} is not valid TOML: {exc}", "fix the line it names") from None


def _table(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"'{key}' in {source} must be a table", f"write it as [{key}]")
    return value


def _string(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"'{key}' in {source} must be a string, not {value!r}", f'write {key.split(".")[-1]} = "name"')
    return value
