"""What plugins are installed and what each can do here (``mlpi backends``, ``mlpi datasets``)."""

from __future__ import annotations

from typing import Any

from mlpi.core.contract.backend import Backend
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, MlpiError
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.options import option_help
from mlpi.core.plugins.registry import PluginInfo, Registry
from mlpi.core.results.sysinfo import cpu_model_name


def backend_inventory(config: PluginsConfig) -> list[dict[str, Any]]:
    """One row per backend entry point; a broken or missing runtime is a row, never a crash."""
    registry = Registry(config)
    aliases: dict[str, list[str]] = {}
    for alias, target in config.aliases.items():
        aliases.setdefault(target, []).append(alias)
    defaults = {kind: name for kind, name in config.default_backend.items()}
    rows = []
    for info in registry.plugins("backends"):
        row = _base_row(info)
        row.update(aliases=aliases.get(info.key, []), default_for=[k for k, n in defaults.items() if n == info.key])
        row.update(version=None, device_kinds=[], devices=[], precisions=[], options={})
        if info.broken or info.disabled:
            rows.append(row)
            continue
        cls = info.obj
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            row.update(status="broken", error=f"'{info.target}' is not a mlpi Backend class")
            rows.append(row)
            continue
        row.update(
            device_kinds=list(cls.device_kinds),
            precisions=list(cls.precisions),
            options=option_help(cls.Options),
        )
        try:
            backend = cls()
            row["version"] = backend.version()
        except DeviceError as exc:  # installed, but this machine cannot run it (e.g. the CPU lacks an ISA)
            row.update(status="unusable here", error=exc.message, hint=exc.hint)
            rows.append(row)
            continue
        except MlpiError as exc:
            row.update(status="not installed", error=exc.message, hint=exc.hint)
            rows.append(row)
            continue
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, not raised
            row.update(status="broken", error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        try:
            probed = backend.probe()
        except Exception as exc:  # noqa: BLE001 - probe must not raise; say so if it does
            row.update(status="broken", error=f"probe() raised {type(exc).__name__}: {exc}")
            probed = []
        row["devices"] = [str(d) for d in probed]
        row["device_groups"] = device_groups(backend, probed)
        rows.append(row)
    return rows


def device_groups(backend: Backend, devices: list[Device]) -> list[str]:
    """Probed units as people read them: units of one kind with the same description
    together, e.g. ``cuda:0,1 (NVIDIA H100 80GB HBM3, 79.6 GiB)`` or ``qaic:0-7 (simulated card)``."""
    groups: dict[tuple[str, str], list[int]] = {}
    plain: list[str] = []
    for device in devices:
        try:
            about = backend.describe(device) or ""
        except Exception:  # noqa: BLE001 - a description is decoration: never fatal
            about = ""
        if device.kind == "cpu" and not about:
            about = cpu_model_name()
        if not device.indices:
            plain.append(f"{device} ({about})" if about else str(device))
            continue
        groups.setdefault((device.kind, about), []).extend(device.indices)
    for (kind, about), indices in groups.items():
        text = str(Device(kind, tuple(indices)))
        plain.append(f"{text} ({about})" if about else text)
    return plain


def plugin_inventory(config: PluginsConfig, group: str) -> list[dict[str, Any]]:
    rows = []
    for info in Registry(config).plugins(group):
        row = _base_row(info)
        row["description"] = getattr(info.obj, "description", "") if info.obj is not None else ""
        rows.append(row)
    return rows


def _base_row(info: PluginInfo) -> dict[str, Any]:
    status = "disabled" if info.disabled else "broken" if info.broken else "ok"
    return {
        "name": info.key or info.name,
        "origin": info.origin,
        "distribution": info.distribution,
        "distribution_version": info.distribution_version,
        "entry_point": info.target,
        "status": status,
        "error": info.error,
        "hint": _clash_hint(info),
        # the other distributions' entry points with the same name, as <distribution>:<name>
        "clash": list(info.rivals),
    }


def _clash_hint(info: PluginInfo) -> str | None:
    if not info.rivals or info.key == info.name:
        return None
    flag = {"backends": "--backend", "models": "--model", "datasets": "--dataset"}[info.group]
    return f"another distribution also provides '{info.name}': choose this one with {flag} {info.key}"


def _model_options(spec: Any) -> list[dict[str, Any]]:
    """A model's ``-M`` options: name, default, help."""
    import dataclasses

    if spec.Options is None:
        return []
    return [{"name": f.name, "default": getattr(spec.options, f.name, f.default), "help": f.metadata.get("help", "")}
            for f in dataclasses.fields(spec.Options)]


def model_inventory(config: PluginsConfig) -> list[dict[str, Any]]:
    """One row per model plugin: its artifact, what is cached here, which datasets fit."""
    from mlpi.core.contract.model import load_spec
    from mlpi.core.engine.artifacts import cached
    from mlpi.core.engine.planning import random_weights_path

    registry = Registry(config)
    installed = set(registry.names("datasets"))
    rows = []
    for info in registry.plugins("models"):
        row = _base_row(info)
        if info.broken or info.disabled:
            rows.append(row)
            continue
        try:
            spec = load_spec(info.obj)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, not raised
            row.update(status="broken", error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        random_path = random_weights_path(spec, 0) if spec.build_random else None
        artifact_path = cached(spec.artifact) if spec.artifact else None
        row.update(
            description=spec.description,
            rules_key=spec.rules_key,
            artifact=None if spec.artifact is None else {
                "url": spec.artifact.url, "checksum": spec.artifact.checksum, "filename": spec.artifact.filename,
            },
            artifact_cached=str(artifact_path) if artifact_path else None,
            random_weights=spec.build_random is not None,
            random_weights_cached=str(random_path) if random_path and random_path.exists() else None,
            inputs=[t.to_json() for t in spec.inputs],
            outputs=[t.to_json() for t in spec.outputs],
            datasets=[{"name": d, "installed": d in installed} for d in spec.datasets],
            graphs={role: {"inputs": [t.to_json() for t in g.inputs], "outputs": [t.to_json() for t in g.outputs]}
                    for role, g in spec.graphs.items()},
            data=spec.data.to_json(),
            options=_model_options(spec),
            unofficial=spec.unofficial,
            quality_target=spec.quality_target,
            quality=None if spec.rules.quality is None else spec.rules.quality.describe(),
            round=spec.rules.round or None,
            retired=spec.rules.retired,
            server_latency_ms=spec.rules.server_latency_ms,
            multistream_latency_ms=spec.rules.multistream_latency_ms,
            performance_sample_count=spec.rules.performance_sample_count,
            offline_min_samples=spec.rules.offline_min_samples,
            dataset_size=spec.rules.dataset_size,
            required_scenarios={k: list(v) for k, v in spec.rules.required_scenarios.items()},
            benchmark=spec.rules.benchmark,
            audits=list(spec.rules.audits),
        )
        rows.append(row)
    return rows
