"""Plan: a fully resolved, validated run, serialisable so it can be run again.

``mlpi run`` builds one from the command line and configuration, checks it before any
timing, writes it as ``plan.json``, and each test's child process reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.backend import TensorSpec

PLAN_VERSION = 1


@dataclass
class ModelRef:
    name: str
    path: str
    sha256: str
    rules_key: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    random_weights: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        data = dict(data)
        data["inputs"] = [TensorSpec.from_json(s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec.from_json(s) for s in data["outputs"]]
        return cls(**data)


@dataclass
class Plan:
    backend: str
    backend_options: dict[str, Any]
    device: str
    precision: str | None
    model: ModelRef
    dataset: str
    dataset_path: str | None
    dataset_count: int | None
    scenarios: list[str]
    modes: list[str]
    batch_size: int | None
    instances: int
    target_qps: float | None
    quick: bool
    duration_s: float | None
    batch_timeout_ms: float | None
    seed: int = 0
    plugins_file: str | None = None
    version: int = PLAN_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def min_duration_s(self) -> float | None:
        """The min_duration to write into user.conf, or None for the official one."""
        if self.duration_s is not None:
            return self.duration_s
        return QUICK_DURATION_S if self.quick else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')!r} is not {PLAN_VERSION}")
        data["model"] = ModelRef.from_json(data["model"])
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> Plan:
        from mlpi.core.contract.errors import UsageError

        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UsageError(f"plan file {path} does not exist", "give the plan.json of an earlier run") from None
        except PermissionError:
            raise UsageError(f"cannot read plan file {path}: permission denied", "check its permissions") from None
        except IsADirectoryError:
            raise UsageError(f"plan path {path} is a directory", "give the plan.json inside a run directory") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"{path} is not an mlpi plan ({type(exc).__name__}: {exc})",
                "give the plan.json of an earlier run made by this mlpi version",
            ) from None


#: Minimum duration of a ``--quick`` test.
QUICK_DURATION_S = 10.0
