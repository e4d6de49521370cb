"""The ``mlpi`` command line: parse, call the core, print. No logic of its own."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from mlpi import __version__
from mlpi.core.contract.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    MlpiError,
)



def _debug_requested(args: list[str]) -> bool:
    return "--debug" in args


#: Click 8.2+ raises this for a group given no command (earlier ones printed the help).
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", type("_Never", (click.UsageError,), {}))


class MlpiGroup(click.Group):
    """Maps every failure to ``error:`` + ``hint:`` lines and an exit code; no traceback
    unless ``--debug``."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        debug = _debug_requested(argv)
        try:
            code = super().main(args=argv, prog_name=prog_name or "mlpi", standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # `mlpi` or `mlpi results` alone: its help, as asked
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:
            where = f"mlpi {exc.ctx.command_path.partition(' ')[2]}".strip() if exc.ctx else "mlpi"
            _fail(exc.format_message(), f"see '{where} --help'", EXIT_USAGE)
        except click.Abort:
            _fail("interrupted", "nothing was being measured; no results were written", EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            _fail("interrupted", "nothing was being measured; no results were written", EXIT_INTERRUPTED)
        except MlpiError as exc:
            if debug:
                traceback.print_exc()
            _fail(exc.message, exc.hint, exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc}", "re-run with --debug and report the traceback", EXIT_FAILURE)
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, hint: str | None, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


@click.group(cls=MlpiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlpi", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks and child output.")
def main(debug: bool) -> None:
    """mlpi: one MLPerf Inference harness for every accelerator."""


@main.command()
@click.option("--backend", "-b", help="Backend name or alias (default: the one configured for the device).")
@click.option(
    "--device", "-d", default=None,
    help="cpu, cuda, cuda:1, cuda:0,1, rocm:0, qaic:0-3 ... (default: cpu, or the --backend's first device kind)",
)
@click.option("--model", "-m", help="A registered model name.")
@click.option("--model-path", type=click.Path(dir_okay=True), help="The model's ONNX file.")
@click.option("--dataset", default=None, help="Dataset plugin name (default: synthetic, or the model's own where synthetic data cannot serve it).")
@click.option("--dataset-path", type=click.Path(), help="The dataset's folder or file.")
@click.option("--count", "dataset_count", type=int, help="Use only this many samples of the dataset.")
@click.option("--scenario", "-s", "scenarios", multiple=True, help="Offline, Server, SingleStream, MultiStream or all; repeatable.")
@click.option("--mode", default="performance", show_default=True, help="performance, accuracy or both.")
@click.option("--batch-size", type=int, help="Samples per batch (default: the backend's preference).")
@click.option("--instances", type=int, default=1, show_default=True, help="Sessions per device unit.")
@click.option("--precision", help="fp32, fp16, bf16 or int8: mlpi derives fp16/bf16/int8 from the fp32 model "
                                    "(cached), unless a backend option asks for the backend's own method.")
@click.option("--calibration", help="int8: official (the benchmark's calibration list; the default where the model "
                                    "has one), dataset (this run's first samples) or FILE (a list of names); only "
                                    "official is valid for the closed division.")
@click.option("--calibration-path", type=click.Path(), help="int8: the folder holding the calibration samples "
                                                            "(default: --dataset-path).")
@click.option("--precision-option", "-P", "precision_options", multiple=True,
              help="How the precision is derived, KEY=VALUE: calibration_method=minmax|entropy|percentile, "
                   "per_channel=true, block_ops=OP,OP, calibration_count=N; repeatable.")
@click.option("--target-qps", type=float, help="Offline expected QPS / Server target QPS (default: calibrated).")
@click.option("--quick", is_flag=True, help="Short development run (10 s per test); not valid for submission.")
@click.option("--duration", "duration_s", type=float, help="Minimum test duration in seconds (implies not valid for submission).")
@click.option("--watchdog-s", "watchdog_s", type=float,
              help="A test whose batch in flight has not finished for this long ends as failed (default: 300 s until "
                   "a batch is measured, then 20 batch times, at least 60 s; 0: off).")
@click.option("--batch-timeout-ms", type=float, help="Server: longest a batch waits to fill (default: 1/20 of the latency bound).")
@click.option("--option", "-o", "options", multiple=True, help="Backend option KEY=VALUE; repeatable.")
@click.option("--model-option", "-M", "model_options", multiple=True,
              help="Model option KEY=VALUE (`mlpi models` lists each model's); repeatable.")
@click.option("--audit", "audits", multiple=True,
              help="Compliance audit to run after the tests: TEST01 or TEST04 (`mlpi models` lists what each model "
                   "needs); repeatable. It compares with this run's tests, or --against's.")
@click.option("--against", help="With --audit: the run (directory or id) whose tests the audits compare with; only the audits run.")
@click.option("--output", default="results", show_default=True, type=click.Path(file_okay=False), help="Results root.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
@click.option("--plan", "plan_file", type=click.Path(), help="Run an earlier run's plan.json again.")
@click.option("--profile", "profile_file", type=click.Path(dir_okay=False),
              help="A tuned profile from `mlpi tune`: each scenario's batch size, instances and expected QPS or "
                   "latency (flags given win, and say so).")
@click.option("--shape", "shapes", multiple=True,
              help="Fix dynamic dimensions: INPUT=1x3x640x640 (? keeps one dynamic) or DIM_NAME=128 for every "
                   "dimension the file names so; repeatable.")
@click.option("--batch-axis", "batch_axes", multiple=True,
              help="An input's or output's batch dimension: NAME=1 (an LSTM state [layers, batch, hidden]) or "
                   "NAME=none (not batched: one value fed to every batch). Default: 0, none for a scalar, or the "
                   "dimension the file names like the others' batch; repeatable.")
@click.option("--user-conf", "user_conf", type=click.Path(dir_okay=False),
              help="A LoadGen user.conf merged over mlpi's own settings (its lines win); each test's user.conf "
                   "shows the merge.")
@click.option("--mlperf-conf", "mlperf_conf", type=click.Path(dir_okay=False),
              help="A round's mlperf.conf applied over LoadGen's built-in one, seeds included (to rerun an "
                   "earlier round's rules).")
@click.option("--weights", type=click.Choice(["official", "random"]), help="For --model: the official file, or seeded random weights (performance only). Default: official if downloaded, else random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for synthetic data and random weights.")
@click.option("--debug", is_flag=True, help="Show tracebacks and child output.")
def run(plan_file: str | None, output: str, debug: bool, **kwargs: Any) -> int:
    """Run MLPerf LoadGen tests and write a result directory.

    With no model given, runs the embedded default: ResNet50 (official weights if
    downloaded, random otherwise) on synthetic data, Offline, a quick performance run.
    """
    from mlpi.cli_output import DEFAULT_MODEL, RunPrinter
    from mlpi.core.contract.errors import UsageError
    from mlpi.core.engine.plan import Plan
    from mlpi.core.engine.planning import RunRequest, build_plan, recheck_plan
    from mlpi.core.engine.runner import execute
    from mlpi.core.plugins.options import parse_assignments
    from mlpi.core.results.rundir import check_results_root

    check_results_root(Path(output))  # a root no run could be written into: refused before anything starts
    printer = RunPrinter()
    if plan_file:
        context = click.get_current_context()
        ignored = [
            param.opts[0] for param in context.command.params
            if param.name in kwargs and context.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT
        ]
        if ignored:
            raise UsageError(
                f"--plan runs the saved plan as it is; {', '.join(ignored)} would be ignored",
                "drop them, or start a new run without --plan",
            )
        plan = recheck_plan(Plan.read(Path(plan_file)))
    else:
        kwargs["options"] = parse_assignments(kwargs["options"])
        kwargs["model_options"] = parse_assignments(kwargs["model_options"], "-M max_rows=100000")
        kwargs["precision_options"] = parse_assignments(kwargs["precision_options"], "-P calibration_method=entropy")
        from mlpi.cli_tune import take_profile

        profile = take_profile(kwargs, printer)  # --profile: a tuned profile's settings, under the flags given
        kwargs["scenarios"] = list(kwargs["scenarios"]) or ["Offline"]
        kwargs["audits"] = list(kwargs["audits"])
        kwargs["shapes"] = list(kwargs["shapes"])
        kwargs["batch_axes"] = list(kwargs["batch_axes"])
        if kwargs["against"] is not None:
            from mlpi.core.engine.audit_plan import resolve_against

            if not kwargs["audits"]:
                raise UsageError("--against names the run an audit compares with, and no --audit was given",
                                 "add --audit TEST01 (or TEST04), or drop --against")
            kwargs["against"] = str(resolve_against(kwargs["against"], Path(output)))
        if not kwargs["model"] and not kwargs["model_path"]:
            kwargs["model"] = DEFAULT_MODEL
            kwargs["quick"] = kwargs["quick"] or kwargs["duration_s"] is None
            printer.note(f"no model given: running the embedded default ({DEFAULT_MODEL}, quick unless --duration)")
        plan = build_plan(RunRequest(**kwargs))
        if profile is not None:
            for note in profile.check_plan(plan):
                printer.note(note)
    printer.plan(plan)
    outcome = execute(plan, Path(output), printer, keep_child_output=debug)
    try:
        printer.summary(outcome)
    except KeyboardInterrupt:
        if outcome.interruption is None:
            outcome.interruption = MlpiError("interrupted while the summary was printed",
                                             f"the run had ended: its results are kept in {outcome.run_dir}")
            outcome.interruption.exit_code = EXIT_INTERRUPTED
    if outcome.error is not None:
        raise outcome.error
    if outcome.interruption is not None:  # it says what was measured and kept
        raise outcome.interruption
    return outcome.exit_code


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
def backends(as_json: bool, plugins_file: str | None) -> None:
    """List backends: version, origin, devices usable here, status."""
    from mlpi.cli_output import print_backends
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.inventory import backend_inventory

    rows = backend_inventory(PluginsConfig.load(plugins_file))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_backends(rows)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
def models(as_json: bool, plugins_file: str | None) -> None:
    """List models: artifact, whether it is downloaded here, datasets that fit, rules."""
    from mlpi.cli_output import print_models
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.inventory import model_inventory

    rows = model_inventory(PluginsConfig.load(plugins_file))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_models(rows)


@main.command()
@click.argument("model")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
def fetch(model: str, plugins_file: str | None) -> None:
    """Download a model's official file(s) into the cache (resumes, verifies every published
    checksum and records the sha256 of a file that has none; a checkpoint is converted into
    the model's graphs once)."""
    from mlpi.core.contract.errors import UsageError
    from mlpi.core.engine.artifacts import fetch as fetch_artifact
    from mlpi.core.engine.planning import official_graphs
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    spec = Registry(PluginsConfig.load(plugins_file)).model(model)
    if spec.artifact is None:
        raise UsageError(f"model {spec.name} has no downloadable file",
                         str(spec.extra.get("download_hint") or "pass --model-path FILE to mlpi run"))
    fetched = fetch_artifact(spec.artifact)
    graphs = official_graphs(spec, fetched)
    if list(graphs.values()) == [fetched]:
        click.echo(str(fetched))
    else:
        for role, path in graphs.items():
            click.echo(f"{role}: {path}")


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--model", "model", help="Registered model whose scorer to use (default: the run's).")
@click.option("--model-path", help="The model file, for a model given only as a file.")
@click.option("--dataset", "dataset", help="Dataset plugin holding the ground truth (default: the run's).")
@click.option("--dataset-path", help="The dataset's folder or file (default: the run's).")
@click.option("--count", type=int, help="Samples of the dataset the run used (default: the run's, else all).")
@click.option("--write", is_flag=True, help="Write accuracy.txt next to each log.")
@click.option("--force", is_flag=True, help="With --write: replace an accuracy.txt that says something else.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
@click.option("--debug", is_flag=True, hidden=True)
def score(target: Path, model: str | None, model_path: str | None, dataset: str | None, dataset_path: str | None,
          count: int | None, write: bool, force: bool, as_json: bool, plugins_file: str | None, debug: bool) -> int:
    """Re-score an accuracy log (a run directory or mlperf_log_accuracy.json) as MLPerf's script does."""
    from mlpi.core.contract.errors import EXIT_INVALID, EXIT_OK
    from mlpi.core.engine.scoring import ScoreRequest
    from mlpi.core.engine.scoring import score as score_logs

    scored = score_logs(ScoreRequest(target, model, model_path, dataset, dataset_path, count, plugins_file, write, force))
    if as_json:
        click.echo(json.dumps([{"log": str(s.log), "accuracy": s.result.to_json(),
                                "written": str(s.written) if s.written else None} for s in scored], indent=2))
    else:
        for item in scored:
            if len(scored) > 1:
                click.echo(f"{item.log}:")
            click.echo(item.result.report)
            click.echo(f"mlpi: {item.result.describe()}" + (f"; wrote {item.written}" if item.written else ""))
    return EXIT_INVALID if any(s.result.passed is False for s in scored) else EXIT_OK


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
def datasets(as_json: bool, plugins_file: str | None) -> None:
    """List dataset plugins."""
    from mlpi.cli_output import print_plain_plugins
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.inventory import plugin_inventory

    rows = plugin_inventory(PluginsConfig.load(plugins_file), "datasets")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_plain_plugins(rows, "datasets")


from mlpi.cli_report import report as _report_command  # noqa: E402 - registered after the group is defined

main.add_command(_report_command)


from mlpi.cli_results import compare, results, sysinfo  # noqa: E402 - commands defined in their own module

main.add_command(results)
main.add_command(sysinfo)
main.add_command(compare)


from mlpi.cli_sweep import sweep as _sweep  # noqa: E402 - registered after the group is defined

main.add_command(_sweep)


from mlpi.cli_submission import submission as _submission  # noqa: E402 - registered after the group is defined

main.add_command(_submission)


from mlpi.cli_quantize import quantize as _quantize  # noqa: E402 - registered after the group is defined

main.add_command(_quantize)


from mlpi.cli_tune import tune as _tune  # noqa: E402 - registered after the group is defined

main.add_command(_tune)


if __name__ == "__main__":  # pragma: no cover
    main()
