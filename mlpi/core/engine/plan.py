"""Plan: a fully resolved, validated run, serialisable so it can be run again.

``mlpi run`` builds one from the command line and configuration, checks it before any
timing, writes it as ``plan.json``, and each test's child process reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.backend import ModelArtifact, TensorSpec
from mlpi.core.contract.pipeline import MAIN_GRAPH

PLAN_VERSION = 1


class PlanFieldError(ValueError):
    """A field of a plan read from JSON holds a value of the wrong type."""


@dataclass
class GraphRef:
    """One graph file of a model with several: its path, hash and signature."""

    path: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def artifact(self, precision: str | None = None) -> ModelArtifact:
        return ModelArtifact(Path(self.path), self.sha256, tuple(self.inputs), tuple(self.outputs), precision)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphRef:
        _check_types(cls, data, "model.graphs", skip=("inputs", "outputs"))
        for key in ("inputs", "outputs"):
            _check_tensors(data.get(key), f"model.graphs.{key}")
        return cls(
            data["path"], data["sha256"],
            [TensorSpec.from_json(s) for s in data["inputs"]], [TensorSpec.from_json(s) for s in data["outputs"]],
        )


@dataclass
class ModelRef:
    """The model a plan runs. ``path``, ``inputs`` and ``outputs`` are its main graph's
    (the one the dataset feeds). A model with several graphs lists every one in ``graphs``
    by role, and its ``sha256`` covers all of them; a one-graph model's is its file's.
    ``precision``: what the graph itself carries where ``--precision`` made it so (a derived
    file, or a file quantised before): the backend runs it as it is (``ModelArtifact.precision``)."""

    name: str
    path: str
    sha256: str
    rules_key: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    random_weights: bool = False
    graphs: dict[str, GraphRef] = field(default_factory=dict)
    main_role: str = MAIN_GRAPH
    precision: str | None = None

    def artifacts(self) -> dict[str, ModelArtifact]:
        """Every graph to load, by role, the main one first."""
        if self.graphs:
            return {role: graph.artifact(self.precision) for role, graph in self.graphs.items()}
        return {self.main_role: ModelArtifact(Path(self.path), self.sha256, tuple(self.inputs), tuple(self.outputs),
                                              self.precision)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        data["graphs"] = {role: graph.to_json() for role, graph in self.graphs.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        _check_types(cls, data, "model", skip=("inputs", "outputs"))
        data = dict(data)
        for key in ("inputs", "outputs"):
            _check_tensors(data.get(key), f"model.{key}")
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
        _check_types(cls, data, "", skip=("model",))
        if not isinstance(data.get("model"), dict):
            raise ValueError(f"model is {data.get('model')!r}, not an object")
        data["model"] = ModelRef.from_json(data["model"])
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> Plan:
        from mlpi.core.contract.errors import UsageError

        from mlpi.core.engine.planning import check_plan_values

        try:
            plan = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UsageError(f"plan file {path} does not exist", "give the plan.json of an earlier run") from None
        except PermissionError:
            raise UsageError(f"cannot read plan file {path}: permission denied", "check its permissions") from None
        except IsADirectoryError:
            raise UsageError(f"plan path {path} is a directory", "give the plan.json inside a run directory") from None
        except PlanFieldError as exc:  # a hand-edited value of the wrong type
            raise UsageError(f"{path}: {exc}", f"fix it in {path}, or start a new run without --plan") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"{path} is not an mlpi plan ({type(exc).__name__}: {exc})",
                "give the plan.json of an earlier run made by this mlpi version",
            ) from None
        check_plan_values(plan, str(path))  # a hand-edited value is refused as a command line's would be
        return plan


def _check_types(cls: type, data: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """Every field of ``data`` (a JSON object read for dataclass ``cls``) has the type the
    field is annotated with; a ValueError naming the first that does not (a JSON number for
    an ``int`` must be whole; ``true`` is no number)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the plan'} is {type(data).__name__}, not an object")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in data:
            continue  # a missing field: the constructor names it
        if not _is(data[f.name], hints[f.name]):
            key = f"{where}.{f.name}" if where else f.name
            raise PlanFieldError(f"{key} is {data[f.name]!r}, not {_type_text(hints[f.name])}")


def _is(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_is(value, arg) for arg in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " or ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is list:
        return f"a list of {_PLURAL.get(args[0], _type_text(args[0]))}" if args else "a list"
    if origin is dict:
        return "an object"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(annotation, str(annotation))


_PLURAL = {str: "strings", int: "whole numbers", float: "numbers", bool: "booleans"}


def _check_tensors(value: Any, where: str) -> None:
    """A list of tensor specs as :meth:`TensorSpec.to_json` writes them."""
    if not isinstance(value, list):
        raise PlanFieldError(f"{where} is {value!r}, not a list")
    for item in value:
        ok = (
            isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("dtype"), str)
            and isinstance(item.get("shape"), list)
            and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in item["shape"])
        )
        if not ok:
            raise PlanFieldError(f"{where} holds {item!r}, not a tensor (name, dtype, shape)")


#: Minimum duration of a ``--quick`` test.
QUICK_DURATION_S = 10.0
