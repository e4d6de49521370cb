"""``mlpi score``: re-score an existing accuracy log the way MLCommons' script does.

Nothing runs: the model's scorer reads the log's responses and the dataset's ground truth
(opened for scoring only, so no preprocessing cache is built). Given a run directory, the
model and dataset default to the run's plan and every accuracy test in it is scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi.core.contract.accuracy import AccuracyResult, read_accuracy_log
from mlpi.core.contract.errors import UsageError
from mlpi.core.results.rundir import write_bytes_atomic

ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_TXT = "accuracy.txt"


@dataclass(frozen=True)
class ScoreRequest:
    target: Path  # a run directory, a test directory, or an accuracy log
    model: str | None = None
    model_path: str | None = None
    dataset: str | None = None
    dataset_path: str | None = None
    count: int | None = None
    plugins_file: str | None = None
    write: bool = False
    force: bool = False


@dataclass(frozen=True)
class Scored:
    log: Path
    result: AccuracyResult
    written: Path | None


def score(request: ScoreRequest) -> list[Scored]:
    """Score every accuracy log ``request.target`` names; write accuracy.txt when asked."""
    from mlpi.core.engine.child import score_responses
    from mlpi.core.engine.planning import open_dataset
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    logs, plan = find_logs(request.target)
    registry = Registry(PluginsConfig.load(request.plugins_file or (plan or {}).get("plugins_file")))
    spec, outputs, inputs = _model(registry, request, plan)
    dataset_name = request.dataset or (plan or {}).get("dataset")
    dataset_path = request.dataset_path or (plan or {}).get("dataset_path")
    if not dataset_name:
        raise UsageError("no dataset given", f"pass --dataset NAME (for {spec.name}: {', '.join(spec.datasets)}) and --dataset-path DIR")
    count = request.count if request.count is not None else (plan or {}).get("dataset_count")
    dataset = open_dataset(registry, spec, inputs, dataset_name, dataset_path, count, for_scoring=True)
    if spec.score is None:
        raise UsageError(f"model {spec.name} has no scorer", "its accuracy log cannot be scored by mlpi")
    if not dataset.has_ground_truth:
        raise UsageError(f"dataset '{dataset_name}' has no ground truth to score against", f"pass a dataset that has one: {', '.join(spec.datasets)}")
    scored = []
    for log in logs:
        responses = read_accuracy_log(log, spec.repeated_responses)
        if responses and max(responses) >= dataset.count:
            raise UsageError(
                f"{log} names sample {max(responses)}, but dataset '{dataset_name}' has {dataset.count} samples",
                "pass the --dataset-path (and --count) the run used",
            )
        result = score_responses(spec, responses, dataset, outputs)
        written = _write(log.parent / ACCURACY_TXT, result.report + "\n", request.force) if request.write else None
        scored.append(Scored(log, result, written))
    return scored


def find_logs(target: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """The accuracy logs ``target`` names, and the plan of the run they belong to (if any)."""
    target = target.expanduser()
    if not target.exists():
        raise UsageError(f"{target} does not exist", "give a run directory or an mlperf_log_accuracy.json")
    if target.is_file():
        logs = [target]
    elif (target / ACCURACY_LOG).is_file():
        logs = [target / ACCURACY_LOG]
    else:
        logs = sorted(target.glob(f"*/accuracy/{ACCURACY_LOG}"))
        if not logs:
            raise UsageError(f"{target} holds no {ACCURACY_LOG}", "give the directory of a run made with --mode accuracy, or the log itself")
    # A run keeps its logs in <run>/<Scenario>/<mode>/: its plan is at most three folders up.
    plan = None
    for folder in logs[0].parents[:3]:
        candidate = folder / "plan.json"
        if candidate.is_file():
            try:
                plan = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                plan = None
            break
    return logs, plan if isinstance(plan, dict) else None


def _model(registry: Any, request: ScoreRequest, plan: dict[str, Any] | None) -> tuple[Any, list[Any], list[Any]]:
    from mlpi.core.contract.backend import TensorSpec
    from mlpi.core.contract.model import ModelSpec

    plan_model = (plan or {}).get("model") or {}
    registered = (plan or {}).get("extra", {}).get("registered_model")
    name = request.model or (plan_model.get("name") if registered else None)
    if name:
        spec = registry.model(name)
        return spec, list(spec.outputs), list(spec.inputs)
    path = request.model_path or plan_model.get("path")
    if not path:
        raise UsageError("no model given", "pass --model NAME (see `mlpi models`), or give a run directory whose plan names it")
    spec = ModelSpec.for_file(Path(path))
    try:
        outputs = [TensorSpec.from_json(t) for t in plan_model["outputs"]]
        inputs = [TensorSpec.from_json(t) for t in plan_model["inputs"]]
    except (KeyError, TypeError):
        from mlpi.core.engine.onnx_file import inspect_onnx

        artifact = inspect_onnx(Path(path))
        outputs, inputs = list(artifact.outputs), list(artifact.inputs)
    return spec, outputs, inputs


def _write(path: Path, text: str, force: bool) -> Path:
    """Write ``text`` atomically; an existing different file is kept unless ``force``."""
    if path.exists() and not force:
        try:
            if path.read_text(encoding="utf-8") == text:
                return path
        except (OSError, UnicodeDecodeError):
            pass
        raise UsageError(f"{path} exists and says something else", "pass --force to replace it, or leave out --write")
    try:
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", "check the folder's permissions") from None
    return path
