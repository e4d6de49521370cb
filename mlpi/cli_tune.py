"""``mlpi tune``: parse, hand the tune to :mod:`mlpi.tune.driver`, print a line per trial and
the profile it wrote."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from mlpi.core.contract.errors import EXIT_INVALID, MlpiError, UsageError

#: CLI parameter -> RunRequest field, for what every trial's run shares.
_REQUEST = {
    "backend": "backend", "device": "device", "model": "model", "model_path": "model_path", "dataset": "dataset",
    "dataset_path": "dataset_path", "count": "dataset_count", "precision": "precision",
    "batch_timeout_ms": "batch_timeout_ms", "options": "options", "model_options": "model_options",
    "watchdog_s": "watchdog_s", "plugins_file": "plugins_file", "seed": "seed", "weights": "weights",
}
#: What --resume may still be given: where things are, and how to show them.
_RESUME_OK = {"resume", "output", "profile_out", "debug"}
#: Tuned when neither -s nor --category says which.
DEFAULT_SCENARIOS = ("Offline", "Server")


@click.command("tune")
@click.option("--model", "-m", help="A registered model name (default: resnet50).")
@click.option("--model-path", type=click.Path(dir_okay=True), help="The model's ONNX file.")
@click.option("--backend", "-b", help="Backend name or alias (default: the one configured for the device).")
@click.option("--device", "-d", help="cpu, cuda, cuda:1, qaic:0-3 ... (default: cpu, or the --backend's first device kind).")
@click.option("--scenario", "-s", "scenarios", multiple=True,
              help="Offline, Server, SingleStream, MultiStream or all; repeatable (default: Offline and Server).")
@click.option("--category", type=click.Choice(["edge", "datacenter"]),
              help="Tune the scenarios the model's rules require for this submission category.")
@click.option("--batch-sizes", multiple=True, help="Batch sizes to try for Offline and Server, comma-separated; auto for "
                                                   "the backend's preference (default: auto).")
@click.option("--instances", multiple=True, help="Sessions per device unit to try for Offline and Server, comma-separated "
                                                 "(default: 1).")
@click.option("--tolerance", type=float, default=0.05, show_default=True,
              help="The Server search ends when the highest VALID and lowest INVALID targets are this close (relative).")
@click.option("--trial-duration", "trial_duration_s", type=float, default=10.0, show_default=True,
              help="Seconds each search trial runs at least (a Server trial also runs for at least 2,048 queries).")
@click.option("--confirm-duration", "confirm_duration_s", type=float,
              help="Seconds of the confirming runs (default: the official minimum, 600 s); shorter is for development "
                   "and the profile records it as not official.")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="Server: tune to the highest VALID target lowered by this fraction (room for run-to-run noise).")
@click.option("--dataset", help="Dataset plugin name (default: synthetic, or the model's own).")
@click.option("--dataset-path", type=click.Path(), help="The dataset's folder or file.")
@click.option("--count", type=int, help="Use only this many samples of the dataset.")
@click.option("--precision", help="fp32, fp16, bf16 or int8, where the backend can.")
@click.option("--batch-timeout-ms", type=float, help="Server: longest a batch waits to fill (default: 1/20 of the latency bound).")
@click.option("--option", "-o", "options", multiple=True, help="Backend option KEY=VALUE for every trial; repeatable.")
@click.option("--model-option", "-M", "model_options", multiple=True, help="Model option KEY=VALUE; repeatable.")
@click.option("--weights", type=click.Choice(["official", "random"]), help="For --model: the official file or seeded random weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for synthetic data and random weights.")
@click.option("--watchdog-s", "watchdog_s", type=float, help="As for mlpi run: a trial whose batch stalls this long fails.")
@click.option("--output", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results root: every trial is a run there, in its results store.")
@click.option("--tune-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The tune's folder: tune.json (its state) and profile.json (default: OUTPUT/tunes/MODEL-BACKEND-DEVICE).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Go on with the tune recorded in this folder (the same command again does it too).")
@click.option("--fresh", is_flag=True, help="Start over in a folder that holds a tune (the earlier one is kept aside).")
@click.option("--profile-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the profile here (it is always in the tune's folder).")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
@click.option("--debug", is_flag=True, help="Show tracebacks and child output.")
def tune(**params: Any) -> int:
    """Find the settings that give each scenario its best VALID result, and write them as a
    tuned profile for `mlpi run --profile FILE`.

    Offline: the throughput of each batch size x instances tried; its expected QPS 5% below
    the best. Server: the highest target QPS LoadGen judges VALID, by short trials (bracket,
    then bisect to --tolerance). SingleStream/MultiStream: the expected latency a trial
    measures. Then ONE confirming run per scenario at full-length settings. Every trial is an
    ordinary run in the results store, labelled as a tune trial. Ctrl-C keeps what was
    measured; the same command again (or --resume DIR) goes on without running a finished
    trial twice. Exit code: 0 every scenario confirmed VALID, 3 one was not, 130 interrupted.
    """
    from mlpi.tune.driver import run_tune

    context = click.get_current_context()
    given = {p.name for p in context.command.params
             if p.name and context.get_parameter_source(p.name) not in (click.core.ParameterSource.DEFAULT, None)}
    output = Path(params["output"])
    printer = TunePrinter()
    if params["resume"] is not None:
        ignored = sorted(given - _RESUME_OK)
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise UsageError(f"--resume goes on with the recorded tune as it is; {flags} would be ignored",
                             "drop them, or start a new tune without --resume")
        request, settings = None, None
    else:
        request, settings = _request(params, printer), _settings(params)
    outcome = run_tune(request, settings, output, printer, tune_dir=params["tune_dir"], resume=params["resume"],
                       fresh=params["fresh"], profile_out=params["profile_out"], debug=params["debug"])
    printer.summary(outcome)
    if outcome.problems:
        error = MlpiError(
            "; ".join(f"{scenario}: {why}" for scenario, why in outcome.problems.items()),
            f"the profile holds what was found ({outcome.profile_path}); the trials are in `mlpi results list`",
        )
        error.exit_code = EXIT_INVALID
        raise error
    return 0


def _request(params: dict[str, Any], printer: TunePrinter) -> dict[str, Any]:
    """The run request every trial starts from."""
    from mlpi.cli_output import DEFAULT_MODEL
    from mlpi.core.plugins.options import parse_assignments
    from mlpi.tune.driver import resolved_request

    fields = {field: params[name] for name, field in _REQUEST.items()}
    fields["options"] = parse_assignments(params["options"])
    fields["model_options"] = parse_assignments(params["model_options"], "-M max_rows=100000")
    if not fields["model"] and not fields["model_path"]:
        fields["model"] = DEFAULT_MODEL
        printer.note(f"no model given: tuning the embedded default ({DEFAULT_MODEL})")
    return resolved_request(fields)


def _settings(params: dict[str, Any]) -> Any:
    """What the search covers: scenarios (from -s, or the model's rules for --category), the
    grid, the tolerance and the durations."""
    from mlpi.core.engine.planning import parse_scenarios
    from mlpi.tune.tuner import TuneSettings

    if params["scenarios"] and params["category"]:
        raise UsageError("-s and --category both choose the scenarios", "drop one of them")
    if params["category"]:
        scenarios = _required(params, params["category"])
    else:
        scenarios = parse_scenarios(list(params["scenarios"]) or list(DEFAULT_SCENARIOS))
    return TuneSettings(
        scenarios=scenarios, batch_sizes=_numbers(params["batch_sizes"], "--batch-sizes", auto=True) or [None],
        instances=[n for n in _numbers(params["instances"], "--instances") if n is not None] or [1],
        tolerance=params["tolerance"], trial_duration_s=params["trial_duration_s"],
        confirm_duration_s=params["confirm_duration_s"], margin=params["margin"],
    )


def _required(params: dict[str, Any], category: str) -> list[str]:
    """The scenarios a ``category`` submission of the model needs, from its rules."""
    from mlpi.cli_output import DEFAULT_MODEL
    from mlpi.core.contract.rules import SCENARIOS
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    name = params["model"] or (None if params["model_path"] else DEFAULT_MODEL)
    if name is None:
        raise UsageError("--category reads the scenarios from a registered model's rules, and no --model is given",
                         "pass --model NAME, or choose scenarios with -s")
    rules = Registry(PluginsConfig.load(params["plugins_file"])).model(name).rules
    required = list(rules.required_scenarios.get(category) or ())
    if not required:
        raise UsageError(f"model {name} names no scenarios for a {category} submission",
                         "choose scenarios with -s (`mlpi models` lists each model's)")
    return [s for s in SCENARIOS if s in required]


def _numbers(values: tuple[str, ...], flag: str, auto: bool = False) -> list[int | None]:
    out: list[int | None] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if auto and item.lower() == "auto":
                out.append(None)
                continue
            try:
                number = int(item)
            except ValueError:
                raise UsageError(f"{flag} holds '{item}', not a whole number",
                                 f"pass {flag} 1,8,32" + (" (auto: the backend's preference)" if auto else "")) from None
            if number < 1:
                raise UsageError(f"{flag} holds {number}", f"{flag} takes whole numbers of 1 or more")
            out.append(number)
    return list(dict.fromkeys(out))


class TunePrinter:
    """Prints the tune: a line per trial (number of about how many, settings, result,
    validity, time), live progress of a running trial on a terminal (and of a confirming
    run, which lasts minutes, when piped too), then the profile."""

    def __init__(self) -> None:
        from mlpi.cli_output import RunPrinter

        self.started = time.monotonic()
        self.run_printer = RunPrinter()

    def note(self, text: str) -> None:
        _err(f"mlpi: {text}")

    def trial_started(self, spec: Any, number: int, estimate: int) -> None:
        if spec.role == "confirm":
            length = "full length" if spec.duration_s is None else f"{spec.duration_s:g} s: not official"
            _err(f"trial {number} of ~{max(estimate, number)}: confirming {spec.describe()} ({length}) ...")

    def trial_finished(self, record: Any, number: int, estimate: int, recorded: bool) -> None:
        from mlpi.core.results.rundir import format_figure
        from mlpi.tune.trials import TrialSpec

        self.run_printer._clear_progress()
        spec = TrialSpec.from_json(record.spec)
        what = spec.describe()
        if record.status == "done":
            verdict = "VALID" if record.valid else "INVALID" + (f" ({record.reasons[0]})" if record.reasons else "")
            figure = f"{format_figure(record.value, record.unit)} {verdict}"
        else:
            message = (record.error or {}).get("message")
            figure = record.status.upper() + (f": {message}" if message else "")
        total = _duration(time.monotonic() - self.started)
        when = (f"recorded earlier, run {record.run_id}" if recorded
                else f"{_duration(record.elapsed_s)}, {total} so far; run {record.run_id}")
        _err(f"trial {number} of ~{max(estimate, number)}: {spec.role} {what}: {figure} ({when})")

    def run_reporter(self, spec: Any) -> Any:
        return _TrialProgress(self.run_printer, piped=spec.role == "confirm")

    def summary(self, outcome: Any) -> None:
        from rich.console import Console

        from mlpi.cli_table import Column, emit
        from mlpi.core.results.rundir import format_figure

        profile = outcome.profile
        out = Console(highlight=False, soft_wrap=True)
        rows = []
        for scenario, entry in profile.scenarios.items():
            confirm = entry.found_by.get("confirm") or {}
            validity = "VALID" if entry.confirmed else "INVALID"
            length = "full (official)" if confirm.get("full_length") else f"{confirm.get('duration_s'):g} s (not official)"
            rows.append([scenario, entry.describe(), format_figure(entry.result.get("value"), entry.result.get("unit")),
                         validity, confirm.get("run_id") or "-", length])
        columns = [Column("scenario"), Column("tuned"), Column("confirmed result"), Column("validity", whole=True),
                   Column("confirming run"), Column("length", drop=1)]
        emit(f"mlpi tune {profile.tune.get('id')}: {profile.model['name']} on {profile.backend['name']} {profile.device}",
             columns, rows)
        for scenario, why in outcome.problems.items():
            if scenario not in profile.scenarios:
                out.print(f"{scenario}: {why}", markup=False)
        out.print(f"trials: {outcome.trials_run} run now, {outcome.trials_recorded} recorded earlier; "
                  f"{_duration(time.monotonic() - self.started)} in all", markup=False)
        out.print(f"profile: {outcome.profile_path}", markup=False)
        out.print(f"run with it: mlpi run --profile {outcome.profile_path}", markup=False)


class _TrialProgress:
    """A trial's run reporter: no per-test lines (the trial has its own), its progress live on
    a terminal, and piped too when ``piped`` (a confirming run lasts minutes)."""

    def __init__(self, printer: Any, piped: bool) -> None:
        self.printer, self.piped = printer, piped

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None:
        pass

    def test_finished(self, test: Any) -> None:
        self.printer._clear_progress()

    def test_progress(self, scenario: str, mode: str, progress: dict[str, Any]) -> None:
        if self.piped or sys.stderr.isatty():
            self.printer.test_progress(scenario, mode, progress)


def _err(text: str) -> None:
    from mlpi.cli_output import printable

    click.echo(printable(text), err=True)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def take_profile(kwargs: dict[str, Any], printer: Any) -> Any:
    """``mlpi run --profile FILE``: put the profile's settings into the run's ``kwargs`` (the
    flags the user gave win) and say what it takes; None without ``--profile``."""
    path = kwargs.pop("profile_file", None)
    if not path:
        return None
    from mlpi.tune.profile import apply_profile

    context = click.get_current_context()
    given = {p.name for p in context.command.params
             if p.name and context.get_parameter_source(p.name) not in (click.core.ParameterSource.DEFAULT, None)}
    applied = apply_profile(Path(path), kwargs, given, kwargs.get("plugins_file"))
    for note in applied.notes:
        printer.note(note)
    return applied
