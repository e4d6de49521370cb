"""Plan: a fully resolved, validated run, serialisable so it can be run again.

``mlpi run`` builds one from the command line and configuration, checks it before any
timing, writes it as ``plan.json``, and each test's child process reads it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.backend import ModelArtifact, TensorSpec
from mlpi.core.contract.pipeline import MAIN_GRAPH

PLAN_VERSION = 1


@dataclass
class GraphRef:
    """One graph file of a model with several: its path, hash and signature."""

    path: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def artifact(self) -> ModelArtifact:
        return ModelArtifact(Path(self.path), self.sha256, tuple(self.inputs), tuple(self.outputs))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphRef:
        return cls(
            data["path"], data["sha256"],
            [TensorSpec.from_json(s) for s in data["inputs"]], [TensorSpec.from_json(s) for s in data["outputs"]],
        )


@dataclass
class ModelRef:
    """The model a plan runs. ``path``, ``inputs`` and ``outputs`` are its main graph's
    (the one the dataset feeds). A model with several graphs lists every one in ``graphs``
    by role, and its ``sha256`` covers all of them; a one-graph model's is its file's."""

    name: str
    path: str
    sha256: str
    rules_key: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    random_weights: bool = False
    graphs: dict[str, GraphRef] = field(default_factory=dict)
    main_role: str = MAIN_GRAPH

    def artifacts(self) -> dict[str, ModelArtifact]:
        """Every graph to load, by role, the main one first."""
        if self.graphs:
            return {role: graph.artifact() for role, graph in self.graphs.items()}
        return {self.main_role: ModelArtifact(Path(self.path), self.sha256, tuple(self.inputs), tuple(self.outputs))}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        data["graphs"] = {role: graph.to_json() for role, graph in self.graphs.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        data = dict(data)
        data["inputs"] = [TensorSpec.from_json(s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec.from_json(s) for s in data["outputs"]]
        data["graphs"] = {role: GraphRef.from_json(g) for role, g in (data.get("graphs") or {}).items()}
        return cls(**data)


def combined_digest(graphs: dict[str, GraphRef]) -> str:
    """One hash over every graph of a model: role and file hash, in role order."""
    digest = hashlib.sha256()
    for role, graph in graphs.items():
        digest.update(f"{role}:{graph.sha256}\n".encode())
    return digest.hexdigest()


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
