"""Plugin discovery through entry points (stevedore), built-ins exactly like third parties.

Groups: ``mlpi.backends`` (Backend subclasses), ``mlpi.models`` (ModelSpec objects or
factories), ``mlpi.datasets`` (DatasetFactory subclasses). A plugin that fails to import is
kept as *broken* with its error; it never stops another plugin or command from working.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from mlpi.core.contract.backend import Backend
from mlpi.core.contract.errors import PluginError, UsageError, suggest
from mlpi.core.plugins.config import GROUPS, PluginsConfig

OWN_DISTRIBUTION = "mlpi"


@dataclass
class PluginInfo:
    """One entry point as found on this machine."""

    group: str
    name: str
    target: str
    obj: Any = None
    error: str | None = None
    distribution: str | None = None
    distribution_version: str | None = None
    disabled: bool = False

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def origin(self) -> str:
        if self.distribution in (None, OWN_DISTRIBUTION):
            return "built-in"
        return f"{self.distribution} {self.distribution_version or ''}".strip()


class Registry:
    """The plugins of all groups, discovered once, filtered by the configuration."""

    def __init__(self, config: PluginsConfig) -> None:
        self.config = config
        self._found: dict[str, dict[str, PluginInfo]] = {}

    def plugins(self, group: str) -> list[PluginInfo]:
        if group not in self._found:
            self._found[group] = _discover(group, self.config)
        return sorted(self._found[group].values(), key=lambda p: p.name)

    def names(self, group: str) -> list[str]:
        return [p.name for p in self.plugins(group) if not p.disabled]

    def resolve(self, group: str, name: str) -> PluginInfo:
        """Find an enabled, importable plugin by name or alias, or raise a clear error."""
        found = {p.name: p for p in self.plugins(group)}
        if group == "backends":
            name = self.canonical_backend(name)
        info = found.get(name)
        if info is None:
            lowered = {k.lower(): v for k, v in found.items()}
            info = lowered.get(name.lower())
        singular = group[:-1]
        if info is None:
            known = self.names(group) + (list(self.config.aliases) if group == "backends" else [])
            raise UsageError(f"unknown {singular} '{name}'", f"{suggest(name, known)} (`mlpi {group}` lists them)")
        if info.disabled:
            raise UsageError(
                f"{singular} '{info.name}' is disabled in {', '.join(self.config.sources)}",
                f"remove it from [disabled] {group} in your plugins.toml",
            )
        if info.broken:
            raise PluginError(
                f"{singular} plugin '{info.name}' ({info.origin}) failed to import: {info.error}",
                f"reinstall or fix the package that provides '{info.target}'",
            )
        return info

    def canonical_backend(self, name: str) -> str:
        """The backend an alias stands for (aliases match in any case, like names)."""
        aliases = {alias.lower(): target for alias, target in self.config.aliases.items()}
        return self.config.aliases.get(name) or aliases.get(name.lower(), name)

    def backend_options(self, backend: str) -> list[tuple[str, dict[str, Any]]]:
        """The ``[options.X]`` layers that apply to ``backend``, by its name or any alias.

        A table for a backend that does not exist is an error, not silently ignored.
        """
        known = {p.name for p in self.plugins("backends")}
        layers = []
        for key, values in self.config.options.items():
            target = self.canonical_backend(key)
            if target not in known:
                raise UsageError(
                    f"[options.{key}] in {self.config.option_sources.get(key, 'plugins.toml')} is for an unknown backend",
                    f"{suggest(key, sorted(known))} (`mlpi backends` lists them)",
                )
            if target == backend:
                layers.append((self.config.option_sources.get(key, "plugins.toml"), values))
        return layers

    def backend(self, name: str) -> Backend:
        info = self.resolve("backends", name)
        cls = info.obj
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise PluginError(
                f"backend plugin '{info.name}' ({info.origin}) is not a mlpi Backend class",
                f"its entry point '{info.target}' must name a subclass of mlpi.core.contract.backend.Backend",
            )
        return cls()

    def dataset(self, name: str) -> Any:
        """A new instance of the dataset factory named ``name``."""
        return self.resolve("datasets", name).obj()

    def model(self, name: str) -> Any:
        """The ModelSpec of the model plugin named ``name``; a factory that fails or returns
        something else is reported as the plugin's fault."""
        from mlpi.core.contract.model import load_spec

        info = self.resolve("models", name)
        try:
            return load_spec(info.obj)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, not raised
            raise PluginError(
                f"model plugin '{info.name}' ({info.origin}) is broken: {type(exc).__name__}: {exc}",
                f"fix or reinstall the package that provides '{info.target}'",
            ) from None

    def default_backend(self, device_kind: str) -> str:
        name = self.config.default_backend.get(device_kind)
        if name:
            return name
        for info in self.plugins("backends"):
            kinds = getattr(info.obj, "device_kinds", ())
            if not info.disabled and not info.broken and device_kind in kinds:
                return info.name
        raise UsageError(
            f"no backend is configured for device kind '{device_kind}'",
            "pass --backend NAME, or set [default_backend] in plugins.toml",
        )


def _discover(group: str, config: PluginsConfig) -> dict[str, PluginInfo]:
    from stevedore import ExtensionManager

    if group not in GROUPS:
        raise ValueError(group)
    found: dict[str, PluginInfo] = {}

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        info = _info(group, entry_point, config)
        info.error = f"{type(exc).__name__}: {exc}"
        found.setdefault(info.name, info)

    manager = ExtensionManager(
        namespace=f"mlpi.{group}",
        invoke_on_load=False,
        on_load_failure_callback=on_failure,
    )
    for ext in manager.extensions:
        info = _info(group, ext.entry_point, config)
        info.obj = ext.plugin
        info.error = wrong_type(group, ext.plugin)
        found.setdefault(info.name, info)
    return found


def wrong_type(group: str, obj: Any) -> str | None:
    """Why ``obj`` cannot be a plugin of ``group`` (``None`` when it can): a plugin of the
    wrong type is shown as broken, like one that fails to import."""
    from mlpi.core.contract.dataset import DatasetFactory
    from mlpi.core.contract.model import ModelSpec

    if group == "backends":
        ok, want = isinstance(obj, type) and issubclass(obj, Backend), "a subclass of mlpi.api.Backend"
    elif group == "datasets":
        ok, want = isinstance(obj, type) and issubclass(obj, DatasetFactory), "a subclass of mlpi.api.DatasetFactory"
    else:
        ok = isinstance(obj, ModelSpec) or (callable(obj) and not isinstance(obj, type))
        want = "a mlpi.api.ModelSpec or a function returning one"
    return None if ok else f"TypeError: {obj!r} is not {want}"


def _info(group: str, entry_point: Any, config: PluginsConfig) -> PluginInfo:
    dist = getattr(entry_point, "dist", None)
    dist_name = getattr(dist, "name", None) if dist is not None else None
    dist_version = getattr(dist, "version", None) if dist is not None else None
    if dist_name is None:
        dist_name, dist_version = _owner_of(entry_point)
    return PluginInfo(
        group=group,
        name=entry_point.name,
        target=entry_point.value,
        distribution=dist_name,
        distribution_version=dist_version,
        disabled=config.is_disabled(group, entry_point.name),
    )


def _owner_of(entry_point: Any) -> tuple[str | None, str | None]:
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == entry_point.group and ep.name == entry_point.name and ep.value == entry_point.value:
                return dist.metadata["Name"], dist.version
    return None, None
