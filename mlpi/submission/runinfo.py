"""What a submission reads from a run: its model's MLPerf rules, its setup, its weights.

A run records its model's rules as they were when it ran (``result.json``'s ``model.rules``,
:meth:`mlpi.core.contract.rules.Rules.to_json`); a submission is built from those, so a tree
keeps the round a run was made for. A run recorded by an mlpi that did not yet write a
benchmark name is read with its model plugin's current rules. Nothing here names a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi.core.results.schema import RunResult

_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BenchmarkRules:
    """The parts of a model's :class:`~mlpi.core.contract.rules.Rules` a submission needs."""

    model: str
    benchmark: str | None
    round: str
    retired: bool
    loadgen_key: str | None
    dataset_size: int | None
    performance_sample_count: int | None
    offline_min_samples: int | None
    required_scenarios: Mapping[str, tuple[str, ...]]
    audits: tuple[str, ...]

    @classmethod
    def of(cls, result: RunResult) -> BenchmarkRules | None:
        """The rules ``result`` ran under; ``None`` for a model MLPerf does not measure."""
        recorded = result.model.rules
        if isinstance(recorded, dict) and "benchmark" not in recorded:
            recorded = _current_rules(result.model.name) or recorded
        if not isinstance(recorded, dict) or not recorded.get("loadgen_key"):
            return None
        required = recorded.get("required_scenarios") or {}
        return cls(
            model=result.model.name,
            benchmark=recorded.get("benchmark") or None,
            round=str(recorded.get("round") or ""),
            retired=bool(recorded.get("retired")),
            loadgen_key=recorded.get("loadgen_key"),
            dataset_size=_whole(recorded.get("dataset_size")),
            performance_sample_count=_whole(recorded.get("performance_sample_count")),
            offline_min_samples=_whole(recorded.get("offline_min_samples")),
            required_scenarios={str(k): tuple(v) for k, v in required.items() if isinstance(v, (list, tuple))},
            audits=tuple(recorded.get("audits") or ()),
        )


@dataclass(frozen=True)
class Setup:
    """What must be the same for a performance run, the accuracy run and the audits that
    go with it: the same model file and options, backend (version and options), device and
    precision. Batch size and instances may differ (mlpi calibrates them per test)."""

    model: str
    model_sha256: str | None
    model_options: str
    backend: str
    backend_version: str | None
    backend_options: str
    device: str
    precision: str | None

    @classmethod
    def of(cls, result: RunResult, precision: str | None) -> Setup:
        return cls(
            model=result.model.name, model_sha256=result.model.sha256,
            model_options=_canonical(result.model.extra.get("options")), backend=result.backend.name,
            backend_version=result.backend.version, backend_options=_canonical(result.backend.options),
            device=result.device, precision=precision or result.precision,
        )

    def describe(self) -> str:
        return f"{self.model} on {self.backend} {self.backend_version or ''} {self.device} {self.precision or ''}".replace(
            "  ", " ").strip()


def weights_kind(result: RunResult) -> str:
    """``official`` (the model's published file, as ``mlpi fetch`` verified it), ``random``
    (seeded random weights) or ``file`` (a file the user gave)."""
    if result.model.weights == "random":
        return "random"
    official = _official_file(result.model.name)
    if official is None or result.model.path is None:
        return "file"
    if Path(result.model.path).resolve() == official.resolve():
        return "official"
    return "official" if result.model.sha256 and result.model.sha256 == _sha256(official) else "file"


def official_model(result: RunResult) -> bool:
    """False when the run configured the model away from MLPerf's (``model.official``)."""
    return result.model.extra.get("official", True) is not False


def model_file_name(result: RunResult) -> str:
    """The model file's name, as ``starting_weights_filename`` gives it."""
    return Path(result.model.path).name if result.model.path else result.model.name


def open_folder(benchmark: str, result: RunResult) -> str:
    """The open division's folder for a model file that is not MLPerf's: the benchmark and
    the file's name, e.g. ``resnet-mobilenet_v2`` (``model_mapping.json`` maps it back)."""
    stem = _FOLDER_UNSAFE.sub("-", Path(model_file_name(result)).stem).strip("-.") or "model"
    return f"{benchmark}-{stem}"


def system_identity(result: RunResult) -> tuple[str, str, str]:
    """What tells machines apart: host name, CPU and accelerators, as the run recorded them."""
    system = result.system
    accelerators = ", ".join(str(a.get("name", "")) for a in system.get("accelerators") or [] if isinstance(a, dict))
    return (str(system.get("hostname") or ""), str(system.get("host_processor_model_name") or ""), accelerators)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _canonical(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=1)
def registry() -> Any:
    """The plugins of this installation, discovered once per process; None when the
    configuration cannot be read (then nothing is compared with them)."""
    try:
        from mlpi.core.plugins.config import PluginsConfig
        from mlpi.core.plugins.registry import Registry

        return Registry(PluginsConfig.load(None))
    except Exception:  # noqa: BLE001 - a broken plugins.toml is `mlpi run`'s business, not the tree's
        return None


@functools.cache
def _spec(model: str) -> Any:
    """The model plugin's spec here; None without one."""
    plugins = registry()
    try:
        return plugins.model(model) if plugins is not None else None
    except Exception:  # noqa: BLE001 - a plugin gone since the run, or never registered
        return None


def _current_rules(model: str) -> dict[str, Any] | None:
    """The model plugin's rules today, for a run recorded before runs named their benchmark."""
    spec = _spec(model)
    return spec.rules.to_json() if spec is not None and spec.rules.official else None


def _official_file(model: str) -> Path | None:
    from mlpi.core.engine.artifacts import cached

    spec = _spec(model)
    return cached(spec.artifact) if spec is not None and spec.artifact is not None else None


_SHA_CACHE: dict[Path, str] = {}


def _sha256(path: Path) -> str:
    if path not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _SHA_CACHE[path] = digest.hexdigest()
    return _SHA_CACHE[path]
