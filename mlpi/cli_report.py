"""``mlpi report``: parse, build the report, print where it is. No logic of its own."""

from __future__ import annotations

from pathlib import Path

import click

#: Where ``mlpi run`` writes runs by default, read when no path is given.
DEFAULT_ROOT = "results"


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Directory for report.html and the chart PNGs.")
@click.option("--efficiency", type=click.Path(path_type=Path),
              help="JSON written by benchmarks/backend_efficiency.py --json; adds the efficiency chart.")
@click.option("--force", is_flag=True, help="Replace an existing report in --out.")
def report(paths: tuple[Path, ...], out: Path, efficiency: Path | None, force: bool) -> None:
    """Write a self-contained HTML report (and PNG charts) of runs.

    PATHS are run directories (results/<run-id>) or results roots holding them
    (default: ./results). Unreadable runs are skipped with a warning.
    """
    from mlpi.report import build_report

    default = Path(DEFAULT_ROOT)
    inputs = list(paths) or ([default] if default.exists() or efficiency is None else [])
    outcome = build_report(inputs, out, force=force, efficiency=efficiency, allow_no_runs=not paths)
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"report: {outcome.html} ({outcome.runs} run(s))")
    for png in outcome.pngs:
        click.echo(f"chart: {png}")
