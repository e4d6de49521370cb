"""Start, resume or redo a tune in its folder: check everything first, then run the phases.

The folder (``--tune-dir``, default ``<results>/tunes/<model>-<backend>-<device>``) holds
``tune.json`` (:mod:`mlpi.tune.state`) and the ``profile.json`` the tune writes. Running the
same command again after a stop resumes it there (trials already recorded are not run
again); other settings in a folder that holds a tune are refused, unless ``--fresh`` sets the
earlier tune aside (kept as ``tune-<stamp>.json``). Every batch size x instances of the grid
is planned (and so checked: runtime, device, model file, dataset, memory) before a trial runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import EXIT_INVALID, MlpiError, UsageError
from mlpi.core.engine.plan import Plan
from mlpi.core.engine.planning import RunRequest, build_plan
from mlpi.core.engine.runner import signals_interrupt
from mlpi.tune.state import TuneState
from mlpi.tune.trials import TrialRunner, TuneInterrupted
from mlpi.tune.tuner import TuneOutcome, Tuner, TuneSettings, check_settings, profile_of

PROFILE_FILE = "profile.json"
TUNES_FOLDER = "tunes"


def plans_for(request: dict[str, Any], settings: TuneSettings) -> dict[tuple[int | None, int], Plan]:
    """One checked plan per batch size x instances of the grid (trials start from these)."""
    plans = {}
    for batch_size, instances in settings.cells:
        fields = {**request, "scenarios": list(settings.scenarios), "batch_size": batch_size, "instances": instances,
                  "mode": "performance", "quick": False, "duration_s": settings.trial_duration_s, "target_qps": None}
        plans[(batch_size, instances)] = build_plan(RunRequest(**fields))
    return plans


def default_dir(output_root: Path, plan: Plan) -> Path:
    """``<results>/tunes/<model>-<backend>-<device>[-<precision>]``: the same for the same
    system, so running a tune's command again finds it."""
    name = "-".join(part for part in (plan.model.name, plan.backend, plan.device, plan.precision) if part)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return output_root / TUNES_FOLDER / safe


def run_tune(request: dict[str, Any] | None, settings: TuneSettings | None, output_root: Path, reporter: Any, *,
             tune_dir: Path | None = None, resume: Path | None = None, fresh: bool = False,
             profile_out: Path | None = None, debug: bool = False) -> TuneOutcome:
    """Run (or resume) a tune; ``reporter`` is a :class:`~mlpi.tune.trials.TrialReporter` that
    can also ``note(text)``. With ``resume``, ``request`` and ``settings`` come from its state."""
    state: TuneState | None = None
    if resume is not None:
        state = TuneState.load(resume)
        if state is None:
            raise UsageError(f"no tune recorded in {resume} (no {resume / 'tune.json'})",
                             "give the folder of a tune (its tune.json), or start one without --resume")
        request, settings = dict(state.settings["request"]), TuneSettings.from_json(state.settings["search"])
    assert request is not None and settings is not None
    check_settings(settings)
    plans = plans_for(request, settings)
    directory = (resume or tune_dir or default_dir(output_root, next(iter(plans.values())))).resolve()
    wanted = {"request": request, "search": settings.to_json()}
    if state is None:
        state = _state_in(directory, wanted, fresh, reporter)
    runner = TrialRunner(state, output_root, plans, reporter, debug=debug)
    tuner = Tuner(settings, plans)
    with signals_interrupt():
        state.claim()
        try:
            entries, problems = tuner.run(runner)
        except TuneInterrupted:
            state.release("interrupted")
            raise
        except KeyboardInterrupt:
            state.release("interrupted")
            done = sum(1 for t in state.trials if t.status == "done")
            raise TuneInterrupted("interrupted between trials",
                                  f"{done} finished trial(s) are kept in {state.path}; run the same command again "
                                  f"(or `mlpi tune --resume {directory}`) to go on from there") from None
        except MlpiError:
            state.release("failed")
            raise
        if not entries:
            state.release("invalid")
            error = MlpiError("; ".join(f"{scenario}: {why}" for scenario, why in problems.items()),
                              f"no profile was written; the trials are kept in {state.path} and `mlpi results list`")
            error.exit_code = EXIT_INVALID
            raise error
        profile = profile_of(state, settings, plans, request, entries)
        path = directory / PROFILE_FILE
        profile.write(path)
        if profile_out is not None:
            profile.write(profile_out)
        state.profile = str(profile_out.resolve() if profile_out is not None else path)
        state.release("done" if not problems else "invalid")
    return TuneOutcome(profile, profile_out or path, problems, runner.ran, runner.count - runner.ran)


def _state_in(directory: Path, wanted: dict[str, Any], fresh: bool, reporter: Any) -> TuneState:
    """The tune to run in ``directory``: the one recorded there when it has these settings
    (resumed), else a new one (``fresh`` sets a recorded one aside first)."""
    existing = TuneState.load(directory)
    if existing is not None and fresh:
        existing.claim()  # refuses while another process runs it
        kept = existing.set_aside()
        reporter.note(f"--fresh: the earlier tune in {directory} is kept as {kept.name}")
        existing = None
    if existing is None:
        state = TuneState.create(directory, wanted)
        reporter.note(f"tune {state.tune_id}: state in {state.path}")
        return state
    differ = existing.differences(wanted)
    if differ:
        raise UsageError(
            f"{directory} holds a tune of other settings (they differ in {', '.join(differ)})",
            "run the same command as that tune to resume it, pass --fresh to start over there (the earlier tune is "
            "kept), or --tune-dir DIR for another folder",
        )
    done = sum(1 for t in existing.trials if t.status == "done")
    if existing.status == "done":
        reporter.note(f"the tune in {directory} is complete: its {done} trials are recorded and not run again "
                      "(--fresh tunes again)")
    else:
        reporter.note(f"resuming the tune in {directory}: {done} finished trial(s) recorded, not run again")
    return existing


def resolved_request(fields: dict[str, Any]) -> dict[str, Any]:
    """The run request a tune records: paths made absolute, so the same command from another
    folder resumes the same tune."""
    out = dict(fields)
    for key in ("model_path", "dataset_path", "plugins_file"):
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    known = {f.name for f in dataclasses.fields(RunRequest)}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ValueError(f"not run request fields: {unknown}")
    return out


__all__ = ["PROFILE_FILE", "default_dir", "plans_for", "resolved_request", "run_tune"]
