"""What ``mlpi run --audit TEST01|TEST04 [--against RUN]`` needs before anything runs.

An audit compares its own LoadGen test with a performance run (and for TEST01 an accuracy
run) of the same model on the same data: the run's own tests of that scenario, or those of
an earlier run (``--against``). Which audits a model needs comes from its rules
(``Rules.audits``, as MLCommons' submission checker lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.model import ModelSpec
from mlpi.core.engine.compliance import parse_audits

#: The tests of the audited scenario each audit compares with.
NEEDS: dict[str, tuple[str, ...]] = {"TEST01": ("performance", "accuracy"), "TEST04": ("performance",)}


def check_audits(values: Sequence[str], spec: ModelSpec, modes: Sequence[str], scenarios: Sequence[str],
                 against: Path | None, plan_model: Any, dataset: tuple[str, str | None, int | None]) -> list[str]:
    """The audits to run, in order; the error naming the fix when one cannot run."""
    audits = parse_audits(values)
    if not audits:
        return []
    if not spec.rules.audits:
        raise UsageError(f"model {spec.name} has no compliance audits",
                         "audits are for a model MLPerf's submission checker knows (`mlpi models` lists them)")
    for audit in audits:
        if audit not in spec.rules.audits:
            raise UsageError(f"{spec.name} needs no {audit}: its submission needs {', '.join(spec.rules.audits)}",
                             f"use --audit {' --audit '.join(spec.rules.audits)}")
    if against is None:
        for audit in audits:
            lacking = [m for m in NEEDS[audit] if m not in modes]
            if lacking:
                raise UsageError(
                    f"{audit} compares with a {' and an '.join(NEEDS[audit])} test of the same scenario, "
                    f"and this run has no {' or '.join(lacking)} test",
                    "add --mode both, or pass --against RUN (an earlier run of this model with them)",
                )
        return audits
    _check_against(against, audits, scenarios, plan_model, dataset)
    return audits


def _check_against(run_dir: Path, audits: list[str], scenarios: Sequence[str], plan_model: Any,
                   dataset: tuple[str, str | None, int | None]) -> None:
    from mlpi.core.results.schema import load_result

    result = load_result(run_dir / "result.json")
    if result.model.sha256 != plan_model.sha256:
        raise UsageError(f"--against {run_dir.name} ran another model file ({result.model.name}, sha256 "
                         f"{(result.model.sha256 or '?')[:12]}), not this one ({plan_model.sha256[:12]})",
                         "audit a run of the same model file")
    theirs = (result.dataset.name, result.dataset.path, result.dataset.count)
    if theirs != dataset:
        raise UsageError(f"--against {run_dir.name} ran on other data ({_data(theirs)}), not {_data(dataset)}",
                         "an audit compares responses sample by sample: use the same --dataset, --dataset-path and --count")
    done = {(t.scenario, t.mode) for t in result.tests if t.status == "ok"}
    for audit in audits:
        for scenario in scenarios:
            lacking = [m for m in NEEDS[audit] if (scenario, m) not in done]
            if lacking:
                raise UsageError(f"--against {run_dir.name} has no finished {scenario} {' or '.join(lacking)} test, "
                                 f"which {audit} compares with",
                                 f"pick a run with them (`mlpi results list --model {result.model.name}`)")


def _data(data: tuple[str, str | None, int | None]) -> str:
    name, path, count = data
    return name + (f" at {path}" if path else "") + (f", {count} samples" if count is not None else "")


def resolve_against(value: str, results_root: Path) -> Path:
    """``--against``: a run directory, or a run id under the results root."""
    for candidate in (Path(value), results_root / value):
        if (candidate / "result.json").is_file():
            return candidate.resolve()
    raise UsageError(f"--against {value}: no run directory there or in {results_root}",
                     "pass a run directory or an id from `mlpi results list`")
