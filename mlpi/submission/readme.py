"""A scenario's ``README.md``: which runs made its result, how, and how to make them again.

MLCommons' checker requires the file, not empty, next to ``user.conf`` (``REQUIRED_MEASURE_FILES``
in ``tools/submission/submission_checker/constants.py``). A tree built from runs that MLPerf
would not accept (shortened, or over part of the data set) says so in its first line, with
:data:`DEVELOPMENT_MARK`, so it is never mistaken for a submission.
"""

from __future__ import annotations

from mlpi.core.results.rundir import format_figure
from mlpi.submission.select import Row, TestPick
from mlpi.submission.src import MLPI_FOLDER

#: What starts the README of every scenario of a development tree.
DEVELOPMENT_MARK = "NOT FOR SUBMISSION"


def scenario_readme(row: Row, system: str, code_name: str, development: list[str]) -> str:
    perf = row.performance
    assert perf is not None
    result = perf.record.result
    lines = []
    if development:
        lines += [(f"**{DEVELOPMENT_MARK}**: a development tree, built with {' and '.join(development)}. "
                  "MLPerf does not accept these results."), ""]
    lines += [
        f"# {row.folder} {row.scenario} on {system}",
        "",
        "Measured by mlpi through MLCommons' LoadGen.",
        "",
        "| part | run | result |",
        "|---|---|---|",
        f"| performance | {perf.run_id} | {_figure(perf)} {'VALID' if perf.test.valid else 'INVALID'} |",
    ]
    if row.accuracy is not None and row.accuracy.test.accuracy is not None:
        lines.append(f"| accuracy | {row.accuracy.run_id} | {row.accuracy.test.accuracy.report} |")
    for name, audit in row.audits.items():
        if audit is not None:
            lines.append(f"| {name} | {audit.run_id} | passed |")
    settings = [f"batch size {perf.test.batch_size}" if perf.test.batch_size else "",
                f"{result.settings.instances} instance(s) per device unit" if result.settings.instances else ""]
    expectations = perf.test.expectations or {}
    lines += [
        "",
        f"Model {result.model.name} ({_file(perf)}, sha256 {result.model.sha256 or '-'}, weights: {result.model.weights}); "
        f"backend {result.backend.name} {result.backend.version or ''} on {result.device}, precision "
        f"{perf.test.precision or result.precision or '-'}"
        + "".join(f", {s}" for s in settings if s) + ".",
        f"LoadGen's settings are in `user.conf` (expectations from {expectations.get('source', 'the run')}).",
        "",
        "To make the runs again (see the tree's code folder):",
        "",
        *[f"    mlpi run --plan {code_name}/{MLPI_FOLDER}/{run}/plan.json" for run in dict.fromkeys(
            p.run_id for p in row.picks())],
        "",
    ]
    return "\n".join(lines)


def _figure(pick: TestPick) -> str:
    return format_figure(pick.test.value, pick.test.unit)


def _file(pick: TestPick) -> str:
    path = pick.record.result.model.path
    return path.rsplit("/", 1)[-1] if path else "no file"
