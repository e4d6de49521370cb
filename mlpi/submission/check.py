"""``mlpi submission check``: MLCommons' submission checker, unpatched, from the user's checkout.

Every submitter has a checkout of github.com/mlcommons/inference; its
``tools/submission/submission_checker`` is the checker MLCommons runs on submissions. mlpi
runs that code as it is, in a child process (``python -m submission_checker.main`` from
``tools/submission``, the way its README says), with an absolute ``--input`` (a relative one
fails), an explicit ``--version`` (its default is an older round) and ``--csv`` into a file of
mlpi's choosing, and reads what it prints: its ``ERROR`` and ``WARNING`` lines, its
``SUMMARY:`` verdict, and the CSV summary of the results it accepted. mlpi copies none of its
code. The whole output is kept in a log file; a checker that stops with a traceback is reported
with its last line.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlpi.core.contract.errors import MlpiError, UsageError

#: The environment variable naming the checkout when ``--mlcommons`` does not.
CHECKOUT_ENV = "MLPI_MLCOMMONS_INFERENCE"
CLONE_HINT = ("get MLCommons' inference repository (git clone https://github.com/mlcommons/inference) and pass "
              f"--mlcommons DIR, or set {CHECKOUT_ENV}=DIR")
#: The checker's package, inside a checkout.
CHECKER_DIR = Path("tools") / "submission"
OK_VERDICT = "SUMMARY: submission looks OK"
_LEVEL = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b[\]:]\s*(?:[\w.]+:)?\s*(.*)$")
_SUMMARY = re.compile(r"(SUMMARY: .*)$")
#: What the checker logs as it starts on a scenario's performance log.
_STARTED_SCENARIO = "Starting performance checks for:"
PROGRESS_EVERY_S = 10.0
#: CSV columns shown (the checker writes more).
CSV_COLUMNS = ("Organization", "Division", "Platform", "Model", "MlperfModel", "Scenario", "Result", "Units",
               "Accuracy")


@dataclass
class CheckerRun:
    """What the checker said."""

    command: list[str]
    returncode: int
    verdict: str | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    crash: str | None = None
    log: Path | None = None
    csv: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.verdict == OK_VERDICT and self.crash is None


def find_checker(checkout: str | None) -> Path:
    """``tools/submission`` of the checkout given (``--mlcommons``, else ``$MLPI_MLCOMMONS_INFERENCE``);
    :class:`UsageError` saying how to get one when there is none."""
    chosen = checkout or os.environ.get(CHECKOUT_ENV)
    if not chosen:
        raise UsageError("no checkout of MLCommons' inference repository was given, and mlpi does not carry the "
                         "submission checker", CLONE_HINT)
    root = Path(chosen).expanduser()
    for candidate in (root / CHECKER_DIR, root):
        if (candidate / "submission_checker" / "main.py").is_file():
            return candidate.resolve()
    where = "--mlcommons" if checkout else CHECKOUT_ENV
    raise UsageError(f"{root} ({where}) holds no {CHECKER_DIR / 'submission_checker' / 'main.py'}",
                     "point it at the root of a checkout of github.com/mlcommons/inference")


def run_checker(checker: Path, tree: Path, version: str, csv_path: Path, log_path: Path,
                submitter: str | None = None, progress: Callable[[int, float], None] | None = None) -> CheckerRun:
    """Run the checker on ``tree`` and read what it says; ``progress(scenarios, seconds)`` is
    called at most every :data:`PROGRESS_EVERY_S` seconds while it works."""
    if importlib.util.find_spec("yaml") is None:
        raise MlpiError("MLCommons' submission checker needs PyYAML, which is not installed here",
                        "pip install pyyaml")
    command = [sys.executable, "-m", "submission_checker.main", "--input", str(tree.resolve()), "--version", version,
               "--csv", str(csv_path.resolve())]
    if submitter:
        command += ["--submitter", submitter]
    csv_path.unlink(missing_ok=True)
    lines: list[str] = []
    started = last = time.monotonic()
    checked = 0
    with subprocess.Popen(command, cwd=checker, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", env=_child_env()) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            checked += _STARTED_SCENARIO in line
            now = time.monotonic()
            if progress is not None and now - last >= PROGRESS_EVERY_S:
                progress(checked, now - started)
                last = now
    output = "\n".join(lines)
    try:
        log_path.write_text(" ".join(command) + "\n" + output + "\n", encoding="utf-8")
        log: Path | None = log_path
    except OSError:
        log = None
    run = CheckerRun(command, proc.returncode, None, log=log, csv=csv_path if csv_path.is_file() else None)
    for line in output.splitlines():
        summary = _SUMMARY.search(line)
        if summary:
            run.verdict = summary.group(1).strip()
            continue
        level = _LEVEL.search(line)
        if level and level.group(1) in ("ERROR", "CRITICAL"):
            run.errors.append(level.group(2).strip())
        elif level:
            run.warnings.append(level.group(2).strip())
    if "Traceback (most recent call last)" in output:
        run.crash = next((line for line in reversed(output.splitlines()) if line.strip()), "a traceback")
    elif proc.returncode != 0 and run.verdict is None:
        run.crash = next((line for line in reversed(output.splitlines()) if line.strip()),
                         f"exit status {proc.returncode}")
    if run.csv is not None:
        with open(run.csv, newline="", encoding="utf-8") as handle:
            run.rows = [dict(row) for row in csv.DictReader(handle)]
    return run


def _child_env() -> dict[str, str]:
    """The checker's environment: this one, with Python's output unbuffered so its log lines
    and tracebacks come in the order they happened."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
