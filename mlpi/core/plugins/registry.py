"""Plugin discovery through entry points (stevedore), built-ins exactly like third parties.

Groups: ``mlpi.backends`` (Backend subclasses), ``mlpi.models`` (ModelSpec objects or
factories), ``mlpi.datasets`` (DatasetFactory subclasses). A plugin that fails to import is
kept as *broken* with its error; it never stops another plugin or command from working.

Names are unique whatever the install order. Built-ins are the entry points of the ``mlpi``
distribution itself. When several distributions register the same name in a group, every
one of them stays reachable as ``<distribution>:<name>``; the bare name belongs to the
built-in if one of them is built in (choosing it by the bare name prints one ``warning:``
line naming the others), else to the only one not disabled, else to none (choosing it by
the bare name is an error that lists the qualified names). pluggy keeps the first entry
point found and drops the rest silently; stevedore's DriverManager refuses duplicates
(MultipleMatches): this is the refusal, with a way to pick.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

from mlpi.core.contract.backend import Backend
from mlpi.core.contract.errors import PluginError, UsageError, suggest
from mlpi.core.plugins.config import GROUPS, PluginsConfig, normalize_distribution

OWN_DISTRIBUTION = "mlpi"

#: the command-line option that chooses a plugin of each group, for hints
_FLAGS = {"backends": "--backend", "models": "--model", "datasets": "--dataset"}

#: (group, name) clashes already announced by this process (a run resolves a name often)
_warned: set[tuple[str, str]] = set()


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
    #: the name it is chosen by: ``name``, or ``qualified`` when another distribution
    #: registers the same name in this group
    key: str = ""
    #: the other entry points of this group with the same name (their ``qualified`` names)
    rivals: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def builtin(self) -> bool:
        return self.distribution is not None and normalize_distribution(self.distribution) == OWN_DISTRIBUTION

    @property
    def origin(self) -> str:
        if self.builtin:
            return "built-in"
        if self.distribution is None:
            return "unknown distribution"
        return f"{self.distribution} {self.distribution_version or ''}".strip()

    @property
    def provider(self) -> str:
        """Which distribution provides it, for messages: ``mlpi 0.1.0 (built-in)``."""
        text = f"{self.distribution or 'an unknown distribution'} {self.distribution_version or ''}".strip()
        return f"{text} (built-in)" if self.builtin else text

    @property
    def qualified(self) -> str:
        """``<distribution>:<name>`` (``<entry point target>:<name>`` when the distribution is unknown)."""
        return f"{self.distribution or self.target}:{self.name}"

    def provenance(self) -> dict[str, Any]:
        """What a result records about the plugin used: its name as chosen, entry point and
        the distribution (and version) that provides it."""
        return {
            "name": self.key or self.name,
            "entry_point": self.target,
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            "builtin": self.builtin,
        }


class Registry:
    """The plugins of all groups, discovered once, filtered by the configuration."""

    def __init__(self, config: PluginsConfig) -> None:
        self.config = config
        self._found: dict[str, dict[str, PluginInfo]] = {}
        self._ambiguous: dict[str, dict[str, list[PluginInfo]]] = {}

    def _discovered(self, group: str) -> dict[str, PluginInfo]:
        if group not in self._found:
            self._found[group], self._ambiguous[group] = _keyed(_discover(group, self.config))
        return self._found[group]

    def plugins(self, group: str) -> list[PluginInfo]:
        return sorted(self._discovered(group).values(), key=lambda p: p.key)

    def names(self, group: str) -> list[str]:
        return [p.key for p in self.plugins(group) if not p.disabled]

    def ambiguous(self, group: str) -> dict[str, list[PluginInfo]]:
        """Names that several third-party distributions register and none holds."""
        self._discovered(group)
        return self._ambiguous[group]

    def _lookup(self, group: str, name: str) -> PluginInfo | None:
        found = self._discovered(group)
        info = found.get(name)
        if info is None:
            info = {k.lower(): v for k, v in found.items()}.get(name.lower())
        if info is None and ":" in name:  # the distribution spelt another way (Foo_Bar for foo-bar)
            dist, _, entry = name.rpartition(":")
            for candidate in found.values():
                if candidate.distribution and candidate.name.lower() == entry.lower() \
                        and normalize_distribution(candidate.distribution) == normalize_distribution(dist):
                    return candidate
        return info

    def resolve(self, group: str, name: str, *, quiet: bool = False) -> PluginInfo:
        """Find an enabled, importable plugin by name, alias or ``<distribution>:<name>``,
        or raise a clear error. A bare name other distributions also register is announced
        once per process (one ``warning:`` line), unless ``quiet``."""
        asked = name
        if group == "backends":
            name = self.canonical_backend(name)
        info = self._lookup(group, name)
        singular = group[:-1]
        if info is None:
            ambiguous = self.ambiguous(group)
            rivals = ambiguous.get(name) or {k.lower(): v for k, v in ambiguous.items()}.get(name.lower())
            if rivals:
                _refuse_ambiguous(group, rivals, self.config)
            known = self.names(group)
            if group == "backends":
                # aliases that lead somewhere are worth suggesting; never the name that failed
                known += [a for a in self.config.aliases if a.lower() not in (asked.lower(), name.lower())
                          and self._alias_leads_somewhere(a)]
            known = list({k.lower(): k for k in known if k.lower() not in (asked.lower(), name.lower())}.values())
            via = f" (alias '{asked}' in [aliases] stands for it)" if name != asked else ""
            raise UsageError(f"unknown {singular} '{name}'{via}", f"{suggest(name, known)} (`mlpi {group}` lists them)")
        if not quiet:
            self._announce_clash(group, info)
        if info.disabled:
            found = self._discovered(group)
            others = [r for r in info.rivals if r in found and not found[r].disabled]
            raise UsageError(
                f"{singular} '{info.key}' is disabled in {', '.join(self.config.sources)}",
                f"remove it from [disabled] {group} in your plugins.toml"
                + (f", or choose {' or '.join(f'{_FLAGS[group]} {o}' for o in others)}" if others else ""),
            )
        if info.broken:
            raise PluginError(
                f"{singular} plugin '{info.name}' ({info.origin}) failed to import: {info.error}",
                f"reinstall or fix the package that provides '{info.target}'",
            )
        return info

    def provenance(self, group: str, name: str) -> dict[str, Any]:
        """Which entry point and distribution ``name`` resolves to, for a result record."""
        return self.resolve(group, name, quiet=True).provenance()

    def _announce_clash(self, group: str, info: PluginInfo) -> None:
        """One ``warning:`` line when a bare name is chosen that other distributions also
        register (they are enabled): which one is used and how to choose another."""
        if info.key != info.name or (group, info.key) in _warned:
            return
        found = self._discovered(group)
        others = [found[r] for r in info.rivals if r in found and not found[r].disabled]
        if not others:
            return
        _warned.add((group, info.key))
        flag = _FLAGS[group]
        picks = " or ".join(f"{flag} {o.key}" for o in others)
        silence = ", ".join(f'"{o.key}"' for o in others)
        print(
            f"warning: {group[:-1]} '{info.name}' is provided by {info.provider} and by "
            f"{', '.join(o.provider for o in others)}; using {info.provider} (choose the other with {picks}, "
            f"or add {silence} to [disabled] {group} in plugins.toml to silence this)",
            file=sys.stderr,
        )

    def canonical_backend(self, name: str) -> str:
        """The backend an alias stands for (aliases match in any case, like names).

        The name typed is always looked up in ``[aliases]`` (an alias may shadow a backend's
        name); what it stands for is looked up again only while that is not a backend's
        name, so ``a = "b"``, ``b = "null"`` reaches null and ``ort = "onnxruntime"`` stays
        onnxruntime even where ``onnxruntime`` is itself an alias. A loop (``a = "b"``,
        ``b = "a"``, or ``b = "b"``) is one UsageError that shows it."""
        chain = [name]
        current = name
        while True:
            target = self._alias_target(current)
            if target is None:
                return current
            if self._lookup("backends", target) is not None:
                return target
            if any(target.lower() == seen.lower() for seen in chain):
                shown = " -> ".join([*chain, target])
                raise UsageError(
                    f"the backend alias '{name}' loops: {shown} in [aliases] of {', '.join(self.config.sources)}",
                    "point each alias at a backend's name (`mlpi backends` lists them)",
                )
            chain.append(target)
            current = target

    def _alias_leads_somewhere(self, alias: str) -> bool:
        try:
            return self._lookup("backends", self.canonical_backend(alias)) is not None
        except UsageError:  # a loop
            return False

    def _alias_target(self, name: str) -> str | None:
        target = self.config.aliases.get(name)
        if target is None:
            target = {alias.lower(): t for alias, t in self.config.aliases.items()}.get(name.lower())
        return target

    def backend_options(self, backend: str) -> list[tuple[str, dict[str, Any]]]:
        """The ``[options.X]`` layers that apply to ``backend``, by its name or any alias.

        A table for a backend that does not exist is an error, not silently ignored.
        """
        known = {p.key for p in self.plugins("backends")}
        ambiguous = self.ambiguous("backends")
        layers = []
        for key, values in self.config.options.items():
            target = self.canonical_backend(key)
            if target in ambiguous:
                choices = " or ".join(f'[options."{p.key}"]' for p in ambiguous[target])
                raise UsageError(
                    f"[options.{key}] in {self.config.option_sources.get(key, 'plugins.toml')} names backend "
                    f"'{target}', which several distributions provide",
                    f"write {choices}",
                )
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
        backend = cls()
        if info.key != info.name:
            # chosen as <distribution>:<name>: the plan, the run's children and result.json
            # must name this one, not the plugin that holds the bare name
            try:
                backend.name = info.key
            except AttributeError:  # pragma: no cover - a backend with a read-only name
                pass
        return backend

    def dataset(self, name: str) -> Any:
        """A new instance of the dataset factory named ``name``."""
        return self.resolve("datasets", name).obj()

    def model(self, name: str) -> Any:
        """The ModelSpec of the model plugin named ``name``; a factory that fails or returns
        something else is reported as the plugin's fault."""
        from mlpi.core.contract.model import load_spec

        info = self.resolve("models", name)
        try:
            spec = load_spec(info.obj)
            # chosen as <distribution>:<name>: a plan must name this one again
            return replace(spec, name=info.key) if info.key != info.name else spec
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
                return info.key
        raise UsageError(
            f"no backend is configured for device kind '{device_kind}'",
            "pass --backend NAME, or set [default_backend] in plugins.toml",
        )


def _refuse_ambiguous(group: str, rivals: list[PluginInfo], config: PluginsConfig) -> None:
    name, singular = rivals[0].name, group[:-1]
    enabled = [p for p in rivals if not p.disabled]
    if not enabled:
        raise UsageError(
            f"{singular} '{name}' is disabled in {', '.join(config.sources)}",
            f"remove it from [disabled] {group} in your plugins.toml",
        )
    picks = " or ".join(f"{_FLAGS[group]} {p.key}" for p in enabled)
    raise UsageError(
        f"{singular} '{name}' is provided by {len(enabled)} distributions: "
        f"{', '.join(p.provider for p in enabled)}",
        f"choose one with {picks}, or add all but one to [disabled] {group} in plugins.toml",
    )


def _keyed(infos: list[PluginInfo]) -> tuple[dict[str, PluginInfo], dict[str, list[PluginInfo]]]:
    """Give every entry point the name it is chosen by (see the module's docstring), the
    same whatever order the distributions were installed or found in; and the bare names
    that no one holds."""
    by_name: dict[str, list[PluginInfo]] = {}
    for info in infos:
        same = by_name.setdefault(info.name, [])
        if not any(_provider_key(o) == _provider_key(info) for o in same):
            same.append(info)  # one distribution found twice on the path counts once
    keyed: dict[str, PluginInfo] = {}
    ambiguous: dict[str, list[PluginInfo]] = {}
    for name, same in by_name.items():
        same.sort(key=lambda p: (not p.builtin, normalize_distribution(p.distribution or ""),
                                 p.distribution_version or "", p.target))
        if len(same) == 1:
            owner: PluginInfo | None = same[0]
        elif same[0].builtin:
            owner = same[0]
        else:
            enabled = [p for p in same if not p.disabled]
            owner = enabled[0] if len(enabled) == 1 else None
        for info in same:
            info.key = name if info is owner else info.qualified
            info.rivals = [o.qualified for o in same if o is not info]
            keyed[info.key] = info
        if owner is None:
            ambiguous[name] = same
    return keyed, ambiguous


def _provider_key(info: PluginInfo) -> str:
    return normalize_distribution(info.distribution) if info.distribution else f"?{info.target}"


def _discover(group: str, config: PluginsConfig) -> list[PluginInfo]:
    from stevedore import ExtensionManager

    if group not in GROUPS:
        raise ValueError(group)
    found: list[PluginInfo] = []

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        info = _info(group, entry_point, config)
        info.error = f"{type(exc).__name__}: {exc}"
        found.append(info)

    manager = ExtensionManager(
        namespace=f"mlpi.{group}",
        invoke_on_load=False,
        on_load_failure_callback=on_failure,
    )
    for ext in manager.extensions:
        info = _info(group, ext.entry_point, config)
        info.obj = ext.plugin
        info.error = wrong_type(group, ext.plugin)
        found.append(info)
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
        disabled=config.is_disabled(group, entry_point.name, dist_name),
    )


def _owner_of(entry_point: Any) -> tuple[str | None, str | None]:
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == entry_point.group and ep.name == entry_point.name and ep.value == entry_point.value:
                return dist.metadata["Name"], dist.version
    return None, None
