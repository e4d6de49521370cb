"""plugins.toml: which plugins are on, aliases, default backend per device, backend options.

Layers, lowest first: the packaged ``mlpi/plugins.toml``, then one user file: ``--plugins
FILE``, else ``$MLPI_PLUGINS``, else ``./plugins.toml`` when present. Tables merge key by
key; a list in a higher layer replaces the lower one (so a user can re-enable a plugin).

A user file that was not named on the command line (``$MLPI_PLUGINS`` or ``./plugins.toml``)
is announced with one ``note:`` line on stderr, once per process: a file lying in the
working directory must never change a run silently.
"""

from __future__ import annotations

import os
import re
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
    #: the user file applied over the packaged one (absolute), and what chose it:
    #: "--plugins", "MLPI_PLUGINS" or "./plugins.toml"; None when there is none
    user_file: str | None = None
    user_file_from: str | None = None

    @classmethod
    def load(cls, user_file: str | os.PathLike[str] | None = None) -> PluginsConfig:
        packaged = resources.files("mlpi").joinpath("plugins.toml").read_text(encoding="utf-8")
        layers: list[tuple[str, dict[str, Any]]] = [("packaged plugins.toml", _parse(packaged, "packaged plugins.toml"))]
        path, chosen_by = _user_file(user_file)
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
        if path is not None:
            config.user_file, config.user_file_from = str(path.resolve()), chosen_by
            if chosen_by != "--plugins":
                _announce(config.user_file, chosen_by)
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

    def is_disabled(self, group: str, name: str, distribution: str | None = None) -> bool:
        """Whether ``[disabled]`` lists the plugin: by its name (every distribution's entry
        point of that name) or as ``<distribution>:<name>`` (that one only)."""
        listed = self.disabled.get(group, [])
        if name in listed:
            return True
        if distribution is None:
            return False
        wanted = f"{normalize_distribution(distribution)}:{name}"
        return any(":" in entry and _normalize_qualified(entry) == wanted for entry in listed)


#: user files already announced by this process (a run loads the configuration often)
_announced: set[str] = set()


def _announce(path: str, chosen_by: str) -> None:
    if path in _announced:
        return
    _announced.add(path)
    where = "from the working directory" if chosen_by == "./plugins.toml" else "from MLPI_PLUGINS"
    print(f"note: applying plugins file {path} ({where}) over the packaged plugins.toml", file=sys.stderr)


def normalize_distribution(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Foo_Bar`` is ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _normalize_qualified(entry: str) -> str:
    dist, _, name = entry.rpartition(":")
    return f"{normalize_distribution(dist)}:{name}"


def _user_file(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, str | None]:
    if explicit:
        return Path(explicit), "--plugins"
    env = os.environ.get("MLPI_PLUGINS")
    if env:
        return Path(env), "MLPI_PLUGINS"
    local = Path("plugins.toml")
    return (local.resolve(), "./plugins.toml") if local.is_file() else (None, None)


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
