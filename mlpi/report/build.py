"""Build a report folder: ``report.html`` plus one PNG per chart.

The output folder is checked before anything is drawn, and files are written atomically
(the page last), so a failed build never leaves a half-written report behind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlpi import __version__
from mlpi.core.contract.errors import UsageError
from mlpi.core.results.rundir import write_bytes_atomic
from mlpi.report import charts, html
from mlpi.report.data import (
    PERCENTILES,
    Efficiency,
    RunRecord,
    latency_groups,
    load_efficiency,
    load_runs,
    throughput_groups,
)

REPORT_FILE = "report.html"
CHART_KEYS = ("throughput", "latency", "efficiency")
NO_RUNS_HINT = "pass run directories (results/<run-id>) or a results root holding them, e.g. mlpi report results"


@dataclass
class ReportOutcome:
    """What was written, and the runs that were skipped."""

    html: Path
    pngs: list[Path]
    runs: int
    warnings: list[str]


def build_report(
    inputs: list[Path],
    out: Path,
    *,
    force: bool = False,
    efficiency: Path | None = None,
    allow_no_runs: bool = False,
) -> ReportOutcome:
    """Read the runs under ``inputs`` (and an efficiency file) and write the report to ``out``."""
    target = out / REPORT_FILE
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", "pass --out DIR with a directory")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "pass --force to replace it, or --out with another directory")
    eff = load_efficiency(efficiency) if efficiency is not None else None
    loaded = load_runs(inputs)
    where = ", ".join(str(p) for p in inputs)
    if not loaded.runs and loaded.warnings:
        raise UsageError(f"no readable run in {where}: {loaded.warnings[0]}", "fix or remove the broken run directory")
    if not loaded.runs and not (allow_no_runs and eff is not None):
        raise UsageError(f"no runs found in {where} (no result.json there or one level below)", NO_RUNS_HINT)

    colors = charts.run_colors(loaded.runs)
    tput = throughput_groups(loaded.runs)
    lat = latency_groups(loaded.runs)
    drawn = [charts.throughput(tput, colors), charts.latency(lat)]
    if eff is not None:
        drawn.append(charts.efficiency(eff))
    generated = time.strftime("%Y-%m-%d %H:%M:%S %z")
    data = _data(loaded.runs, tput, lat, eff, drawn, loaded.warnings, generated)
    page = html.page(
        runs=loaded.runs,
        throughput=(drawn[0], tput),
        latency=(drawn[1], lat),
        efficiency=(drawn[2], eff) if eff is not None else None,
        warnings=loaded.warnings,
        generated=generated,
        version=__version__,
        data=data,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        pngs = []
        for chart in drawn:
            pngs.append(out / f"{chart.key}.png")
            write_bytes_atomic(pngs[-1], chart.png)
        for key in CHART_KEYS:  # a replaced report keeps no chart the new one does not have
            stale = out / f"{key}.png"
            if stale not in pngs and stale.exists():
                stale.unlink()
        write_bytes_atomic(target, page.encode("utf-8"))
    except PermissionError:
        raise UsageError(f"cannot write the report to {out}: permission denied", "pass --out DIR somewhere writable") from None
    return ReportOutcome(target, pngs, len(loaded.runs), loaded.warnings)


def _data(
    runs: list[RunRecord],
    tput: dict[tuple[str, str], list[Any]],
    lat: dict[str, list[Any]],
    eff: Efficiency | None,
    drawn: list[charts.Chart],
    warnings: list[str],
    generated: str,
) -> dict[str, Any]:
    """The report's content as plain JSON, embedded in the page for tools that read it."""
    return {
        "format": "mlpi-report/1",
        "generated": generated,
        "mlpi_version": __version__,
        "runs": [
            {**{k: v for k, v in asdict(run).items() if k not in ("tests", "path")}, "path": str(run.path),
             "tests": [asdict(t) for t in run.tests]}
            for run in runs
        ],
        "throughput": [
            {"model": model, "scenario": scenario, "run_id": bar.run.run_id, "label": bar.run.label,
             "value": bar.test.value, "unit": bar.test.unit, "valid": bar.test.valid, "quick": bar.test.quick,
             "simulated": bar.test.simulated}
            for (model, scenario), bars in tput.items() for bar in bars
        ],
        "latency": [
            {"scenario": scenario, "run_id": bar.run.run_id, "label": bar.run.label, "of": bar.test.latency_kind,
             **{f"{p}_ms": bar.test.latency_ms[p] for p in PERCENTILES}, "quick": bar.test.quick,
             "simulated": bar.test.simulated}
            for scenario, bars in lat.items() for bar in bars
        ],
        "efficiency": None if eff is None else {
            "model": eff.model, "batch_size": eff.batch_size, "duration_s": eff.duration_s, "threads": eff.threads,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in eff.rows],
        },
        "charts": [{"key": c.key, "title": c.title, "png": f"{c.key}.png", "empty": c.empty} for c in drawn],
        "warnings": warnings,
    }
