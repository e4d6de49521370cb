"""``mlpi submission build`` and ``mlpi submission check``: parse, call mlpi.submission, print."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from mlpi.core.contract.errors import EXIT_INVALID, MlpiError, UsageError
from mlpi.submission.layout import DEFAULT_ROUND


@click.group()
def submission() -> None:
    """Build a submission tree from runs, and check it with MLCommons' own checker."""


@submission.command(short_help="Lay out a submission tree from runs in the results store.")
@click.option("--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The tree's root: <division>/<submitter>/ is written under it.")
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results root the runs are in, as given to 'mlpi run --output'.")
@click.option("--store", "store_file", type=click.Path(dir_okay=False), envvar="MLPI_STORE", show_envvar=True,
              help="The results store file [default: RESULTS/mlpi.sqlite].")
@click.option("--division", required=True, type=click.Choice(["closed", "open"]), help="MLPerf division.")
@click.option("--submitter", required=True, help="Your organisation's name, as MLCommons knows it.")
@click.option("--system", "system", required=True, help="The system description's id: systems/<SYSTEM>.json.")
@click.option("--system-file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON object of system-description fields, merged over what the runs recorded of the machine.")
@click.option("--measurements-file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON object of measurements.json fields (retraining, weight_transformations...) mlpi cannot know.")
@click.option("--category", required=True, type=click.Choice(["edge", "datacenter"]),
              help="The system's category: which scenarios a closed submission needs.")
@click.option("--model", "models", multiple=True, help="Only runs of this model (mlpi's name or MLPerf's); repeatable.")
@click.option("--scenario", "-s", "scenarios", multiple=True, help="Only this scenario; repeatable.")
@click.option("--run", "runs", multiple=True, help="Only this run (id or unambiguous prefix); repeatable.")
@click.option("--version", "round_name", default=DEFAULT_ROUND, show_default=True, help="MLPerf round of the tree.")
@click.option("--force", is_flag=True, help="Replace an existing <division>/<submitter> once the new one is complete.")
@click.option("--allow-short-runs", is_flag=True,
              help="Development tree: accept quick and --duration runs (marked NOT FOR SUBMISSION).")
@click.option("--allow-subset", is_flag=True,
              help="Development tree: accept runs over part of the data set (marked NOT FOR SUBMISSION).")
@click.option("--dry-run", is_flag=True, help="Show what would be built; write nothing.")
def build(output: Path, results_root: str, store_file: str | None, division: str, submitter: str, system: str,
          system_file: Path | None, measurements_file: Path | None, category: str, models: tuple[str, ...],
          scenarios: tuple[str, ...], runs: tuple[str, ...], round_name: str, force: bool, allow_short_runs: bool,
          allow_subset: bool, dry_run: bool) -> None:
    """Lay out a submission tree from runs in the results store.

    For each benchmark and scenario it takes the best performance run that may go into a
    submission, the accuracy run that matches it and (closed division) the compliance audits,
    prints what it found and what is missing, and writes the tree only when nothing is
    missing or refused.
    """
    from mlpi.submission.build import BuildRequest, plan_build, write_tree
    from mlpi.submission.select import canonical_scenario

    chosen_scenarios = []
    for name in scenarios:
        canonical = canonical_scenario(name)
        if canonical is None:
            raise UsageError(f"unknown scenario '{name}'", "choose Offline, Server, SingleStream or MultiStream")
        chosen_scenarios.append(canonical)
    request = BuildRequest(
        output=output, division=division, submitter=submitter, system=system, category=category, round=round_name,
        system_file=system_file, measurements_file=measurements_file, scenarios=tuple(chosen_scenarios), force=force,
        allow_short_runs=allow_short_runs, allow_subset=allow_subset,
        command=" ".join(["mlpi", *map(shlex.quote, sys.argv[1:])]) if sys.argv[1:] else "mlpi submission build",
    )
    records, named = _records(results_root, store_file, models, runs)
    plan = plan_build(records, request, named)
    _print_selection(plan)
    if not plan.ready:
        rows = sum(1 for r in plan.selection.rows if r.status != "ok")
        count = len(plan.problems) + len(plan.selection.problems) + rows
        hints = []
        if rows or plan.selection.problems:
            hints.append("make the runs that are missing, or narrow the selection with --model, --scenario or --run")
        if plan.problems:
            hints.append("give what is named above in --system-file or --measurements-file")
        raise MlpiError(f"the tree was not built: {count} problem(s), listed above; nothing was written", "; ".join(hints))
    if dry_run:
        click.echo(f"dry run: the tree would be written to {request.target}; nothing was written")
        return
    target = write_tree(plan, say=lambda line: click.echo(f"  {line}"))
    if request.development():
        click.echo(f"warning: a development tree ({', '.join(request.development())}): every README says NOT FOR "
                   "SUBMISSION", err=True)
    click.echo(f"wrote {target}")
    click.echo(f"check it with: mlpi submission check {output} --version {round_name}")


@submission.command(short_help="Run MLCommons' submission checker, unpatched, on a tree.")
@click.argument("tree", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mlcommons", "checkout", type=click.Path(file_okay=False),
              help="Your checkout of github.com/mlcommons/inference [default: $MLPI_MLCOMMONS_INFERENCE].")
@click.option("--version", "round_name", default=DEFAULT_ROUND, show_default=True, help="MLPerf round to check for.")
@click.option("--submitter", help="Check only this submitter's folder.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the checker writes its CSV summary [default: TREE.summary.csv, beside the tree].")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the checker's whole output goes [default: TREE.checker.log, beside the tree].")
def check(tree: Path, checkout: str | None, round_name: str, submitter: str | None, csv_file: Path | None,
          log_file: Path | None) -> int:
    """Run MLCommons' submission checker, unpatched, on TREE (the folder holding closed/ or open/).

    mlpi first looks for what the checker misses (INVALID performance runs, the results of
    another model in a benchmark's folder) or stops on (a system description missing for a
    results folder, a missing LoadGen log), then runs the checker from your checkout and
    shows its errors, its verdict and its CSV summary.
    """
    from mlpi.submission.check import find_checker, run_checker
    from mlpi.submission.layout import layout_for
    from mlpi.submission.precheck import precheck

    if not tree.is_dir():
        raise UsageError(f"{tree} is not a folder", "pass the folder that holds closed/ or open/")
    if not any((tree / d).is_dir() for d in ("closed", "open", "network")):
        raise UsageError(f"{tree} holds no closed/, open/ or network/ folder",
                         "pass the tree's root (what 'mlpi submission build --output' was given)")
    checker = find_checker(checkout)
    try:
        layout = layout_for(round_name)
    except UsageError:
        layout = None  # a round mlpi does not write: the checker alone looks at it
    problems = precheck(tree, layout, _loadgen_keys(), submitter) if layout is not None else []
    for problem in problems:
        click.echo(f"mlpi: {problem}")
    blocking = sum(p.blocking for p in problems)
    if blocking:
        raise MlpiError(f"{blocking} of the {len(problems)} problem(s) in {tree} listed above would stop MLCommons' "
                        "checker with a traceback; it was not run",
                        "fix them, or build the tree again with 'mlpi submission build'")
    base = tree.resolve()
    csv_path = csv_file or base.parent / f"{base.name}.summary.csv"
    log_path = log_file or base.parent / f"{base.name}.checker.log"
    click.echo(f"running MLCommons' submission checker ({round_name}) from {checker} on {base} ...")
    run = run_checker(checker, base, round_name, csv_path, log_path, submitter,
                      progress=lambda scenarios, seconds: click.echo(
                          f"  ... {seconds:.0f} s, {scenarios} scenario(s) checked so far", err=True))
    _print_checker(run)
    if run.crash is not None and "invalid choice" in run.crash and "--version" in run.crash:
        raise UsageError(f"this checker does not know round {round_name} ({run.crash})",
                         f"check a {round_name} tree with a checkout of MLCommons' inference repository from that "
                         "round (its git history holds each round's checker)")
    if run.crash is not None:
        raise MlpiError(f"MLCommons' checker stopped without a verdict: {run.crash}",
                        f"its whole output is in {run.log}" if run.log else "run it by hand to see its output")
    if problems or not run.ok:
        found = []
        if problems:
            found.append(f"mlpi found {len(problems)} problem(s) the checker does not catch")
        if not run.ok:
            found.append(f"the checker says: {run.verdict or 'no verdict'}")
        click.echo(f"verdict: NOT READY ({'; '.join(found)})")
        return EXIT_INVALID
    click.echo(f"verdict: {run.verdict}")
    return 0


def _records(results_root: str, store_file: str | None, models: tuple[str, ...], runs: tuple[str, ...]) -> Any:
    """The runs to choose from, and the names of those the user named. A run named with
    ``--run`` brings the audits made against it (``mlpi run --audit ... --against RUN``)."""
    from mlpi.core.results.store import RunFilter, Store, store_path
    from mlpi.submission.runinfo import BenchmarkRules

    root = Path(results_root)
    path = store_path(root, store_file)
    if not root.is_dir() and not path.is_file():
        raise UsageError(f"no results at {root}", "run 'mlpi run' first, or pass --results DIR or --store FILE")
    with Store(path) as store:
        for warning in store.sync(root):
            click.echo(f"warning: {warning}", err=True)
        if not runs:
            records, named = store.runs(RunFilter()), []
        else:
            records = [store.find(ref) for ref in runs]
            named = [r.name for r in records]
            ids = set(named) | {r.run_id for r in records}
            records += [r for r in store.runs(RunFilter()) if r.name not in ids and any(
                isinstance(a, dict) and a.get("reference_run") in ids for a in r.result.extra.get("audits") or [])]
    wanted = {m.lower() for m in models}
    if wanted:
        def matches(record: Any) -> bool:
            rules = BenchmarkRules.of(record.result)
            names = {record.model.lower(), (rules.benchmark or "").lower() if rules else ""}
            return bool(names & wanted)
        for record in records:
            if record.name in named and not matches(record):
                raise UsageError(f"run {record.name} is a run of {record.model}, not of {', '.join(models)}",
                                 "name runs of the model you select, or drop --model")
        records = [r for r in records if matches(r)]
    return records, named


def _loadgen_keys() -> dict[str, set[str]]:
    """Per MLPerf benchmark, the LoadGen model names mlpi's models of it run under."""
    from mlpi.submission.runinfo import registry

    keys: dict[str, set[str]] = {}
    plugins = registry()
    try:
        names = plugins.names("models") if plugins is not None else []
    except Exception:  # noqa: BLE001 - without plugins nothing is compared
        return keys
    for name in names:
        try:
            rules = plugins.model(name).rules
        except Exception:  # noqa: BLE001, S112 - a broken plugin compares nothing
            continue
        if rules.benchmark and rules.loadgen_key:
            keys.setdefault(rules.benchmark, set()).add(rules.loadgen_key)
    return keys


def _print_selection(plan: Any) -> None:
    from mlpi.cli_output import printable
    from mlpi.core.results.rundir import format_figure

    selection = plan.selection
    request = plan.request
    click.echo(f"{request.division} division, {request.category}, round {request.round}: "
               f"{request.target}")
    header = ["benchmark", "scenario", "status", "performance", "accuracy"] + (["audits"] if request.division == "closed" else [])
    rows = []
    for row in selection.rows:
        perf = row.performance
        acc = row.accuracy
        cells = [
            row.folder,
            row.scenario,
            row.status,
            f"{perf.run_id} {format_figure(perf.test.value, perf.test.unit)}" if perf else "-",
            f"{acc.run_id} {acc.test.accuracy.figure() if acc.test.accuracy else '-'}" if acc else "-",
        ]
        if request.division == "closed":
            cells.append(", ".join(f"{name} {'ok' if pick else 'missing'}" for name, pick in row.audits.items()) or "-")
        rows.append([printable(c) for c in cells])
    if rows:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for line in [header, *rows]:
            click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    for row in selection.rows:
        where = f"{row.folder} {row.scenario}"
        for problem in row.problems:
            click.echo(f"refused: {where}: {printable(problem)}")
        if row.status == "missing":
            click.echo(f"missing: {where}: {', '.join(row.missing())}")
        if row.status != "ok":
            for unused in row.unused:
                click.echo(f"  not used: {printable(unused)}")
    for problem in [*selection.problems, *plan.problems]:
        click.echo(f"refused: {printable(problem)}")
    for note in selection.notes:
        click.echo(f"note: {printable(note)}")


def _print_checker(run: Any) -> None:
    from mlpi.cli_output import printable

    for error in run.errors:
        click.echo(f"checker error: {printable(error)}")
    if run.warnings:
        click.echo(f"checker warnings: {len(run.warnings)}" + (f" (in {run.log})" if run.log else ""))
    if run.rows:
        from mlpi.submission.check import CSV_COLUMNS

        columns = [c for c in CSV_COLUMNS if any(c in row for row in run.rows)]
        table = [columns] + [[printable(row.get(c, "")) for c in columns] for row in run.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        click.echo(f"results the checker accepted (CSV summary {run.csv}):")
        for line in table:
            click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    elif run.verdict is not None:
        click.echo("results the checker accepted: none")
    if run.log is not None:
        click.echo(f"checker output: {run.log}")
    if run.verdict is not None:
        click.echo(f"checker: {run.verdict}")
