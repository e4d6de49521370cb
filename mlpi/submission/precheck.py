"""What mlpi looks at in a tree before MLCommons' checker does: what it misses, what stops it.

MLCommons' submission checker (``tools/submission/submission_checker``) accepts a performance
run LoadGen judged INVALID (it reads ``result_validity`` but never fails on it), cannot tell a
run of another model copied into a benchmark's folder, and stops with a Python traceback
instead of a message on some broken trees: a ``results/<system>`` without its
``systems/<system>.json`` (the loader calls ``.get`` on the missing description), a closed
division system whose ``system_type`` it does not know, a ``number_of_nodes`` or
``accelerators_per_node`` that is not a whole number (its CSV summary multiplies them), a
scenario without its ``performance/run_1`` or ``accuracy`` LoadGen log (the checks index the
missing log).
mlpi reports those itself, by path, and a tree ``mlpi submission build`` marked as a development
tree (:data:`~mlpi.submission.readme.DEVELOPMENT_MARK`). Everything else (a missing README, an untruncated accuracy
log, an empty system field, the checker's rules) is left to the checker, whose own messages
mlpi shows.

A :class:`Problem` that would stop the checker is ``blocking``: the checker is not run then.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlpi.core.engine.scenario import DetailLog
from mlpi.submission.layout import DIVISIONS, MODEL_MAPPING_FILE, Layout
from mlpi.submission.readme import DEVELOPMENT_MARK
from mlpi.submission.system import WHOLE_NUMBER_FIELDS

_DETAIL = "mlperf_log_detail.txt"
_USER_CONF = "user.conf"
#: The system types the checker knows (``Config.set_type``).
SYSTEM_TYPES: tuple[str, ...] = ("datacenter", "edge", "datacenter,edge", "edge,datacenter")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    blocking: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def precheck(root: Path, layout: Layout, loadgen_keys: dict[str, set[str]], submitter: str | None = None) -> list[Problem]:
    """The problems of the tree at ``root`` (the folder holding ``closed``/``open``), of
    ``submitter``'s folders only when given; ``loadgen_keys`` maps an MLPerf benchmark name to
    the LoadGen model names mlpi's models of it use in ``user.conf`` (a benchmark mlpi does
    not know is not compared)."""
    problems: list[Problem] = []
    for division in [d for d in (*DIVISIONS, "network") if (root / d).is_dir()]:
        for submitter_folder in _folders(root / division):
            if submitter is not None and submitter_folder != submitter:
                continue
            base = root / division / submitter_folder
            mapping = _model_mapping(base) if division == "open" else {}
            for system in _folders(base / "results"):
                problems.extend(_system(root, base, layout, system, division))
                for benchmark in _folders(base / "results" / system):
                    keys = loadgen_keys.get(mapping.get(benchmark, benchmark))
                    for scenario in _folders(base / "results" / system / benchmark):
                        problems.extend(_scenario(root, base, layout, system, benchmark, scenario, keys))
    marked = _development_readme(root, layout)
    if marked is not None:
        problems.append(Problem(_rel(root, marked), f"says {DEVELOPMENT_MARK}: a development tree, built from shortened "
                                                    "runs or part of a data set, which MLPerf does not accept"))
    return problems


def _development_readme(root: Path, layout: Layout) -> Path | None:
    """The first README of a scenario that ``mlpi submission build`` marked as a development tree."""
    for readme in sorted(root.glob("*/*/" + ("results" if layout.combined else "measurements") + "/*/*/*/README.md")):
        try:
            with open(readme, encoding="utf-8", errors="replace") as handle:
                if DEVELOPMENT_MARK in handle.readline():
                    return readme
        except OSError:
            continue
    return None


def _system(root: Path, base: Path, layout: Layout, system: str, division: str) -> list[Problem]:
    path = base / layout.system_file(system)
    shown = _rel(root, path)
    if not path.is_file():
        others = sorted(p.stem for p in (base / "systems").glob("*.json")) if (base / "systems").is_dir() else []
        named = f" (systems/ holds {', '.join(others)})" if others else ""
        return [Problem(shown, f"missing: results/{system} needs a system description of the same name{named}",
                        blocking=True)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [Problem(shown, f"is not readable JSON ({exc})", blocking=True)]
    if not isinstance(data, dict):
        return [Problem(shown, "is not a JSON object", blocking=True)]
    problems = []
    if division in ("closed", "network") and data.get("system_type") not in SYSTEM_TYPES:
        problems.append(Problem(shown, f"system_type is {data.get('system_type')!r}, not one of "
                                       f"{', '.join(SYSTEM_TYPES)}: the checker stops on it", blocking=True))
    for key in WHOLE_NUMBER_FIELDS:
        value = data.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool)) and not str(value).strip().isdigit():
            problems.append(Problem(shown, f"{key} is {value!r}, not a whole number: the checker's summary stops on it",
                                    blocking=True))
    return problems


def _scenario(root: Path, base: Path, layout: Layout, system: str, benchmark: str, scenario: str,
              keys: set[str] | None) -> list[Problem]:
    problems = []
    perf = base / layout.performance_dir(system, benchmark, scenario) / _DETAIL
    accuracy = base / layout.accuracy_dir(system, benchmark, scenario) / _DETAIL
    for log, what in ((perf, "performance"), (accuracy, "accuracy")):
        if not log.is_file():
            problems.append(Problem(_rel(root, log), f"missing: every scenario needs its {what} run's LoadGen log",
                                    blocking=True))
    if perf.is_file():
        problems.extend(_validity(root, perf))
    for audit in sorted((base / layout.audit_dir(system, benchmark, scenario, "TEST01")).parent.glob("TEST*")):
        log = audit / "performance" / "run_1" / _DETAIL
        if log.is_file():
            problems.extend(_validity(root, log))
    conf = base / layout.measurements_dir(system, benchmark, scenario) / _USER_CONF
    if keys and conf.is_file():
        used = _conf_models(conf.read_text(encoding="utf-8", errors="replace").splitlines())
        if used and not used & keys:
            problems.append(Problem(_rel(root, conf), (
                f"LoadGen ran {', '.join(sorted(used))} here, not {benchmark} (its runs use "
                f"{', '.join(sorted(keys))}): the results of another model are in this folder")))
    return problems


def _validity(root: Path, log: Path) -> list[Problem]:
    detail = DetailLog.read(log)
    if detail.valid:
        return []
    found = detail.values.get("result_validity")
    why = "; ".join(detail.invalid_reasons()) or "LoadGen gave no reason"
    state = f"LoadGen judged this run {found}" if found else "this run never finished (no result_validity)"
    return [Problem(_rel(root, log), f"{state} ({why}); MLPerf accepts VALID runs only, and the checker does not "
                                     "look at this")]


def _conf_models(lines: Iterable[str]) -> set[str]:
    """The model names of ``user.conf``'s ``model.scenario.key = value`` lines (``*``: any)."""
    names = set()
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if "=" in text and "." in text.split("=", 1)[0]:
            name = text.split("=", 1)[0].strip().split(".", 1)[0]
            if name and name != "*":
                names.add(name)
    return names


def _model_mapping(base: Path) -> dict[str, str]:
    try:
        data = json.loads((base / MODEL_MAPPING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _folders(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
