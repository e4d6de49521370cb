"""``mlpi submission build``: the ``<division>/<submitter>`` tree of a round, whole or not at all.

The layout is :mod:`~mlpi.submission.layout`'s (MLCommons' ``submission_structure.md`` and
the checker's path tables); per scenario it holds the performance run's LoadGen logs
(``performance/run_1``), the accuracy run's logs with the accuracy log truncated and its
``hash=`` line added as ``tools/submission/truncate_accuracy_log.py`` does
(:mod:`~mlpi.submission.truncate`), each compliance audit's folder as the audit wrote it (the
raw audit run under ``run/`` is left out; TEST01's accuracy log is truncated where the tool
would), ``measurements.json``, the performance run's ``user.conf`` and a ``README.md``. Beside
them: ``systems/<system>.json``, the code folder (:mod:`~mlpi.submission.src`) and, in the open
division, ``model_mapping.json`` for folders that are not MLPerf's benchmark names.

Everything is decided first (:func:`plan_build`): a build that would be refused writes
nothing. The tree is then written into a hidden folder next to its place and renamed into
place when whole; an existing ``<division>/<submitter>`` is replaced only with ``force``, and
only once the new one is complete. Other divisions and submitters in the output folder stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError, UsageError
from mlpi.core.results.store import RunRecord
from mlpi.submission.layout import DIVISIONS, MODEL_MAPPING_FILE, Layout, layout_for
from mlpi.submission.measurements import measurements
from mlpi.submission.readme import scenario_readme
from mlpi.submission.select import Request, Row, Selection, select
from mlpi.submission.src import write_src
from mlpi.submission.system import SYSINFO_DETAILS, describe_system, read_user_file
from mlpi.submission.truncate import truncate

#: A submitter's or system's name: it becomes a folder and a file name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
_ACCURACY_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
#: An audit's raw LoadGen run, kept in the run directory, not in the tree.
_AUDIT_RAW_RUN = "run"


@dataclass(frozen=True)
class BuildRequest:
    output: Path
    division: str
    submitter: str
    system: str
    category: str
    round: str
    system_file: Path | None = None
    measurements_file: Path | None = None
    scenarios: tuple[str, ...] = ()
    force: bool = False
    allow_short_runs: bool = False
    allow_subset: bool = False
    command: str = "mlpi submission build"

    def selection_request(self, layout: Layout) -> Request:
        return Request(self.division, self.category, self.round, self.scenarios, self.allow_short_runs,
                       self.allow_subset, layout.seeds)

    @property
    def target(self) -> Path:
        return self.output / self.division / self.submitter

    def development(self) -> list[str]:
        return [flag for flag, on in (("--allow-short-runs", self.allow_short_runs),
                                      ("--allow-subset", self.allow_subset)) if on]


@dataclass
class BuildPlan:
    """What the build would write, and every reason it may not (``problems``)."""

    request: BuildRequest
    layout: Layout
    selection: Selection
    system: dict[str, Any] = field(default_factory=dict)
    measurements: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.selection.ready and not self.problems

    def model_mapping(self) -> dict[str, str]:
        if self.request.division != "open":
            return {}
        return {row.folder: row.benchmark for row in self.selection.rows if row.folder != row.benchmark}


def check_request(request: BuildRequest) -> Layout:
    """The options alone: names that can be folders, a known division and round."""
    if request.division not in DIVISIONS:
        raise UsageError(f"unknown division '{request.division}'", f"choose one of {', '.join(DIVISIONS)}")
    for what, name in (("--submitter", request.submitter), ("--system", request.system)):
        if not _NAME.match(name or ""):
            raise UsageError(f"{what} '{name}' cannot name a folder of the tree",
                             f"give {what} with letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    layout = layout_for(request.round)
    if request.target.exists() and not request.force:
        raise UsageError(f"{request.target} exists already; nothing was written",
                         "pass --force to replace it once the new tree is complete, or choose another --output")
    return layout


def plan_build(records: Sequence[RunRecord], request: BuildRequest, named: Sequence[str] = ()) -> BuildPlan:
    """Everything the tree needs, decided before anything is written."""
    layout = check_request(request)
    selection = select(records, request.selection_request(layout), named=named)
    plan = BuildPlan(request, layout, selection)
    user_system = read_user_file(request.system_file, "--system-file", SYSINFO_DETAILS)  # sysinfo --json's output fits
    user_measurements = read_user_file(request.measurements_file, "--measurements-file")
    chosen = selection.records() or list(records)  # nothing usable: still say what the system lacks
    recorded = chosen[0].result.system if chosen else {}
    plan.system, system_problems = describe_system(recorded, user_system, division=request.division,
                                                   submitter=request.submitter, category=request.category)
    plan.problems.extend(f"systems/{request.system}.json: {p}" for p in system_problems)
    for row in selection.rows:
        if row.performance is None:
            continue
        values, empty = measurements(row.performance, user_measurements)
        plan.measurements[(row.folder, row.scenario)] = values
        if empty:
            plan.problems.append(
                f"{row.folder} {row.scenario} measurements.json: {', '.join(empty)} empty (mlpi cannot know them for "
                f"this model file; write them into a JSON file and pass --measurements-file FILE)")
        if not (row.performance.folder / "user.conf").is_file():
            plan.problems.append(f"{row.performance.folder / 'user.conf'} is missing (the tree needs LoadGen's settings)")
    return plan


def write_tree(plan: BuildPlan, say: Callable[[str], None] = lambda _line: None) -> Path:
    """Write the planned tree into place; returns ``<output>/<division>/<submitter>``."""
    if not plan.ready:
        raise MlpiError("the tree cannot be built (see the problems above); nothing was written")
    request = plan.request
    try:
        request.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {request.output}: {exc.strerror}", "pass --output DIR somewhere writable") from None
    staging = request.output / f".mlpi-build-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        new = staging / "tree"
        _write(plan, new, say)
        _swap_into_place(new, request.target, staging, request.force)
    except OSError as exc:
        raise MlpiError(f"cannot write the tree under {request.output}: {exc}",
                        "free some disk space or choose another --output; nothing was left half-written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return request.target


def _write(plan: BuildPlan, root: Path, say: Callable[[str], None]) -> None:
    request, layout = plan.request, plan.layout
    system = request.system
    root.mkdir()
    _json(root / layout.system_file(system), plan.system)
    uses: dict[str, list[str]] = {}
    for row in plan.selection.rows:
        say(f"writing {row.folder} {row.scenario}")
        _write_row(plan, row, root)
        for pick in row.picks():
            uses.setdefault(pick.run_id, []).append(f"{row.folder} {row.scenario} {pick.audit or pick.test.mode}")
    code = root / layout.code_dir()
    write_src(code, layout.code_folder, plan.selection.records(), uses, request.command)
    mapping = plan.model_mapping()
    if mapping:
        _json(root / MODEL_MAPPING_FILE, mapping)


def _write_row(plan: BuildPlan, row: Row, root: Path) -> None:
    layout, system = plan.layout, plan.request.system
    perf, accuracy = row.performance, row.accuracy
    assert perf is not None and accuracy is not None
    perf_dir = _mkdir(root / layout.performance_dir(system, row.folder, row.scenario))
    for name in _PERF_FILES:
        shutil.copyfile(perf.folder / name, perf_dir / name)
    acc_dir = _mkdir(root / layout.accuracy_dir(system, row.folder, row.scenario))
    for name in _ACCURACY_FILES:
        shutil.copyfile(accuracy.folder / name, acc_dir / name)
    cut = truncate(accuracy.folder / "mlperf_log_accuracy.json", (accuracy.folder / "accuracy.txt").read_bytes())
    (acc_dir / "mlperf_log_accuracy.json").write_bytes(cut.log)
    (acc_dir / "accuracy.txt").write_bytes(cut.accuracy_txt)
    for name, audit in row.audits.items():
        assert audit is not None
        target = root / layout.audit_dir(system, row.folder, row.scenario, name)
        shutil.copytree(audit.folder, target, ignore=_skip_raw_run(audit.folder), symlinks=False)
        _truncate_audit_log(target)
    measured = _mkdir(root / layout.measurements_dir(system, row.folder, row.scenario))
    _json(root / layout.measurements_file(system, row.folder, row.scenario), plan.measurements[(row.folder, row.scenario)])
    shutil.copyfile(perf.folder / "user.conf", measured / "user.conf")
    readme = scenario_readme(row, system, layout.code_folder, plan.request.development())
    (measured / "README.md").write_text(readme, encoding="utf-8")


def _truncate_audit_log(audit_dir: Path) -> None:
    """TEST01's accuracy log, cut as the tool cuts it: only where the audit wrote an
    ``accuracy.txt`` (its byte comparison failed and the scores were compared)."""
    folder = audit_dir / "accuracy"
    log, text = folder / "mlperf_log_accuracy.json", folder / "accuracy.txt"
    if log.is_file() and text.is_file():
        cut = truncate(log, text.read_bytes())
        log.write_bytes(cut.log)
        text.write_bytes(cut.accuracy_txt)


def _skip_raw_run(top: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {_AUDIT_RAW_RUN} if Path(folder) == top and _AUDIT_RAW_RUN in names else set()
    return ignore


def _swap_into_place(new: Path, target: Path, staging: Path, force: bool) -> None:
    """Rename ``new`` to ``target``; an existing target (``force``) is moved aside first and
    put back if the rename fails, then removed."""
    made_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    old = staging / "old"
    if target.exists():
        if not force:
            raise UsageError(f"{target} appeared while the tree was being written; nothing was replaced",
                             "run the build again, with --force to replace it")
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if old.exists():
            os.rename(old, target)
        elif made_parent:
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
