"""The tree's code folder (``src/``, ``code/`` before v6.0): how each result was made.

MLCommons asks a submission to carry what it takes to reproduce its results
(``submission_structure.md``; the checker only checks that the folder exists). mlpi's part of
that is what it knows: for every run the tree uses, its ``plan.json`` (``mlpi run --plan``
runs it again, after checking the model file's sha256, with the tuned profile's settings the
plan holds), a ``run.json`` with the mlpi, LoadGen and backend versions, options and settings it
ran with and what the plan recorded of its tuned profile (``mlpi run --profile``), the profile
file itself when it is still where the run took it, unchanged; a ``README.md`` lists the runs
and the commands.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlpi import __version__
from mlpi.core.results.store import RunRecord

#: Where mlpi's files go inside the code folder.
MLPI_FOLDER = "mlpi"
#: The tuned profile a run was made with, copied next to its plan.
PROFILE_FILE = "tuned_profile.json"


def write_src(code_dir: Path, code_name: str, records: Sequence[RunRecord], uses: dict[str, list[str]],
              command: str) -> None:
    """Fill ``code_dir`` (``code_name`` is its name in the tree, for the README's commands)
    for ``records``; ``uses`` says, per run, which tests of the tree it made."""
    folder = code_dir / MLPI_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# How these results were made",
        "",
        (f"Every result in this tree was measured by mlpi, an MLPerf Inference harness, through MLCommons' LoadGen. "
        f"The tree was built by mlpi {__version__} with:"),
        "",
        f"    {command}",
        "",
        "## Runs",
        "",
        "| run | model | backend | device | precision | mlpi | LoadGen | used for |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        result = record.result
        packages = result.system.get("packages") if isinstance(result.system.get("packages"), dict) else {}
        run_folder = folder / record.name
        run_folder.mkdir()
        plan = record.dir / "plan.json"
        if plan.is_file():
            shutil.copyfile(plan, run_folder / "plan.json")
        provenance, profile = _profile(record)
        if profile is not None:
            (run_folder / PROFILE_FILE).write_bytes(profile)
        _write_json(run_folder / "run.json", _run_facts(record, provenance, profile is not None))
        lines.append(
            f"| {record.name} | {result.model.name} | {result.backend.name} {result.backend.version or ''} | "
            f"{result.device} | {result.precision or '-'} | {packages.get('mlpi') or '-'} | "
            f"{packages.get('mlcommons-loadgen') or '-'} | {', '.join(uses.get(record.name, []))} |")
    lines += [
        "",
        "## Making a run again",
        "",
        "Install the mlpi version of the run and its backend's runtime (`run.json` lists both), then:",
        "",
        *[f"    mlpi run --plan {code_name}/{MLPI_FOLDER}/{record.name}/plan.json" for record in records],
        "",
        ("A plan names the model file and the data set by their paths on the machine that ran it: copy them to the "
        "same paths, or edit the paths in the plan. mlpi checks the model file's sha256 before it runs, and "
        "calibrates again unless the plan gives a target QPS; each scenario's `user.conf` in the results holds the "
        "settings LoadGen ran with."),
        "",
    ]
    (code_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _run_facts(record: RunRecord, provenance: dict[str, Any] | None, copied: bool) -> dict[str, Any]:
    result = record.result
    return {
        "run_id": record.name,
        "started": result.started,
        "finished": result.finished,
        "mlpi_version": (result.system.get("packages") or {}).get("mlpi"),
        "packages": result.system.get("packages") or {},
        "backend": result.backend.to_json(),
        "device": result.device,
        "precision": result.precision,
        "model": {
            "name": result.model.name, "file": Path(result.model.path).name if result.model.path else None,
            "sha256": result.model.sha256, "weights": result.model.weights, "note": result.model.note,
            "options": result.model.extra.get("options"),
        },
        "dataset": {"name": result.dataset.name, "count": result.dataset.count},
        "settings": result.settings.to_json(),
        "tests": [
            {"scenario": t.scenario, "mode": t.mode, "valid": t.valid, "metric": t.metric, "value": t.value,
             "unit": t.unit, "batch_size": t.batch_size, "instances": t.sessions, "precision": t.precision,
             "expectations": t.expectations}
            for t in result.tests
        ],
        "tuned_profile": None if provenance is None else {
            "recorded": provenance,
            "file": PROFILE_FILE if copied else "not found unchanged where the run took it when the tree was built",
        },
    }


def _profile(record: RunRecord) -> tuple[dict[str, Any] | None, bytes | None]:
    """What the run's plan recorded of the tuned profile it was made with (``mlpi run
    --profile``: the file, its sha256, the tune, the settings per scenario), and the profile
    file itself when it is still there unchanged."""
    try:
        plan = json.loads((record.dir / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    extra = plan.get("extra") if isinstance(plan, dict) else None
    provenance = extra.get("profile") if isinstance(extra, dict) else None
    if not isinstance(provenance, dict):
        return None, None
    try:
        content = Path(str(provenance.get("path"))).read_bytes()
    except OSError:
        return provenance, None
    return provenance, content if hashlib.sha256(content).hexdigest() == provenance.get("sha256") else None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
