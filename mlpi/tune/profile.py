"""The tuned profile: what ``mlpi tune`` found for a model x backend x device, as a JSON file
that ``mlpi run --profile FILE`` (and a submission) takes.

One entry per scenario: its own settings (batch size, instances, the expectation LoadGen
gets: Offline expected QPS, Server target QPS, SingleStream/MultiStream expected latency),
the backend options, the confirming run's result, and how it was found (trials, durations,
the confirming run's id and whether it ran at full length). A run takes each scenario's
entry; explicit flags win and say so; a profile made for another model, backend, device or
precision is refused. The expectations end up in each test's ``user.conf`` as MLCommons'
``loadgen/mlperf.conf`` names them (``target_qps``, ``target_latency``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.rules import SCENARIOS
from mlpi.core.engine.scenario_settings import ScenarioSettings

PROFILE_FORMAT = "mlpi-tuned-profile"
PROFILE_VERSION = 1
#: The request fields a profile records so that ``mlpi run --profile FILE`` alone runs what
#: was tuned; each is taken from the profile only where the command line does not give it.
RUN_FIELDS = ("model", "model_path", "weights", "model_options", "dataset", "dataset_path", "dataset_count", "seed")
#: The fields that make a profile another system's: a run that gives another value is refused.
IDENTITY = ("model", "backend", "device", "precision")


@dataclass(frozen=True)
class ProfileEntry:
    """One scenario's tuned settings and how they were found."""

    scenario: str
    settings: ScenarioSettings
    backend_options: dict[str, Any]
    #: The confirming run's figure: ``metric``, ``value``, ``unit``, ``valid``.
    result: dict[str, Any]
    #: The confirming run was VALID.
    confirmed: bool
    #: How: ``method``, ``trials`` (number, run id, settings, figure, validity each),
    #: ``trial_duration_s``, ``confirm`` (run id, duration, ``full_length``, attempts).
    found_by: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.settings.to_json(), "backend_options": self.backend_options, "result": self.result,
                "confirmed": self.confirmed, "found_by": self.found_by}

    @classmethod
    def from_json(cls, scenario: str, data: Any, source: str) -> ProfileEntry:
        where = f"{source}: scenarios.{scenario}"
        if not isinstance(data, Mapping):
            raise _bad(source, f"scenarios.{scenario} is not an object")
        extra = {"backend_options", "result", "confirmed", "found_by"}
        settings = ScenarioSettings.from_json({k: v for k, v in data.items() if k not in extra}, where)
        if settings.expectation(scenario) is None:
            raise _bad(source, f"scenarios.{scenario} has no {_expectation_name(scenario)}")
        for key in ("backend_options", "result", "found_by"):
            if not isinstance(data.get(key, {}), Mapping):
                raise _bad(source, f"scenarios.{scenario}.{key} is not an object")
        if not isinstance(data.get("confirmed", False), bool):
            raise _bad(source, f"scenarios.{scenario}.confirmed is not true or false")
        return cls(scenario, settings, dict(data.get("backend_options") or {}), dict(data.get("result") or {}),
                   bool(data.get("confirmed", False)), dict(data.get("found_by") or {}))

    def describe(self) -> str:
        """``target 1,234 QPS, batch 8, 1 instance`` (what a run takes from it)."""
        value = self.settings.expectation(self.scenario)
        parts = [f"{_expectation_words(self.scenario)} {_figure(value)}" + (
            " ms" if self.scenario in ("SingleStream", "MultiStream") else " QPS")]
        if self.settings.batch_size is not None:
            parts.append(f"batch {self.settings.batch_size}")
        if self.settings.instances is not None:
            parts.append(f"{self.settings.instances} instance{'s' if self.settings.instances != 1 else ''}")
        return ", ".join(parts)


@dataclass(frozen=True)
class TunedProfile:
    """Everything ``mlpi tune`` found, and for what."""

    #: ``name``, ``sha256``, ``path``, ``random_weights``: the model the trials ran.
    model: dict[str, Any]
    #: ``name`` (resolved, never an alias) and ``version``.
    backend: dict[str, Any]
    device: str
    precision: str | None
    #: The request fields to run it again (:data:`RUN_FIELDS`).
    run: dict[str, Any]
    scenarios: dict[str, ProfileEntry]
    #: ``id``, ``dir``, ``tolerance``, ``trial_duration_s``, ``confirm_duration_s``, ``official``.
    tune: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    mlpi_version: str = ""
    system: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "created": self.created,
            "mlpi_version": self.mlpi_version, "model": self.model, "backend": self.backend, "device": self.device,
            "precision": self.precision, "run": self.run, "system": self.system, "tune": self.tune,
            "scenarios": {name: entry.to_json() for name, entry in self.scenarios.items()},
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> TunedProfile:
        if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
            raise UsageError(f"{source} is not an mlpi tuned profile", "give the profile.json that `mlpi tune` wrote")
        if data.get("version") != PROFILE_VERSION:
            raise UsageError(f"{source} is a tuned profile of version {data.get('version')!r}, not {PROFILE_VERSION}",
                             "tune again with this mlpi version (`mlpi tune`)")
        for key in ("model", "backend", "run", "scenarios"):
            if not isinstance(data.get(key), Mapping):
                raise _bad(source, f"{key} is not an object")
        for key in ("name",):
            if not isinstance(data["model"].get(key), str) or not isinstance(data["backend"].get(key), str):
                raise _bad(source, f"model.{key} or backend.{key} is not a string")
        if not isinstance(data.get("device"), str):
            raise _bad(source, "device is not a string")
        if data.get("precision") is not None and not isinstance(data["precision"], str):
            raise _bad(source, "precision is not a string or null")
        unknown = [s for s in data["scenarios"] if s not in SCENARIOS]
        if unknown:
            raise _bad(source, f"scenarios has unknown scenario(s) {', '.join(map(str, unknown))} (known: {', '.join(SCENARIOS)})")
        if not data["scenarios"]:
            raise _bad(source, "scenarios is empty")
        entries = {s: ProfileEntry.from_json(s, data["scenarios"][s], source) for s in SCENARIOS if s in data["scenarios"]}
        return cls(
            model=dict(data["model"]), backend=dict(data["backend"]), device=data["device"], precision=data.get("precision"),
            run={k: v for k, v in data["run"].items() if k in RUN_FIELDS}, scenarios=entries,
            tune=dict(data.get("tune") or {}), created=str(data.get("created") or ""),
            mlpi_version=str(data.get("mlpi_version") or ""), system=dict(data.get("system") or {}),
        )

    def write(self, path: Path) -> None:
        from mlpi.core.results.rundir import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> TunedProfile:
        """Read and check a profile file; one UsageError naming the file and what is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"tuned profile {path} does not exist", "give the profile.json that `mlpi tune` wrote") from None
        except IsADirectoryError:
            raise UsageError(f"tuned profile {path} is a directory", "give the profile.json inside it") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read tuned profile {path}: {exc}", "check the file and its permissions") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})",
                             "give the profile.json that `mlpi tune` wrote") from None
        return cls.from_json(data, str(path))


def _bad(source: str, what: str) -> UsageError:
    return UsageError(f"{source}: {what}", f"fix it in {source}, or tune again (`mlpi tune`)")


def _expectation_name(scenario: str) -> str:
    return {"Offline": "expected_qps", "Server": "target_qps"}.get(scenario, "expected_latency_ms")


def _expectation_words(scenario: str) -> str:
    return {"Offline": "expected", "Server": "target"}.get(scenario, "expected latency")


def _figure(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


# -- mlpi run --profile ------------------------------------------------------------------


@dataclass
class AppliedProfile:
    """A profile put into a run's request: what to tell the user, and the profile itself."""

    profile: TunedProfile
    path: Path
    notes: list[str] = field(default_factory=list)

    def check_plan(self, plan: Any) -> list[str]:
        """Refuse a plan that resolved to another model, backend or device than the profile's
        (a ``--model-path`` file of another model); notes for another file of the same model."""
        profile = self.profile
        for key, have, want in (("model", plan.model.name, profile.model["name"]), ("backend", plan.backend, profile.backend["name"]),
                                ("device", plan.device, profile.device)):
            if have != want:
                raise _mismatch(self.path, key, want, have)
        if profile.model.get("sha256") and plan.model.sha256 != profile.model["sha256"]:
            return [(f"the profile was tuned on another file of {plan.model.name} (sha256 "
                     f"{str(profile.model['sha256'])[:12]}..., this run's is {plan.model.sha256[:12]}...): its "
                     "settings may not fit this one")]
        return []


def apply_profile(path: Path, kwargs: dict[str, Any], given: set[str], plugins_file: str | None = None) -> AppliedProfile:
    """Put the profile at ``path`` into ``kwargs`` (a RunRequest's fields, as the command line
    gave them; ``given``: the names of the flags the user gave).

    The model, backend, device and precision come from the profile unless given, and a given
    one that differs is refused. The run's scenarios (the profile's, unless ``-s``) get their
    entries' settings as ``scenario_settings``; ``--batch-size``, ``--instances``,
    ``--target-qps``, ``--batch-timeout-ms`` and ``-o`` win over them, and a note says so."""
    path = Path(path).expanduser()
    profile = TunedProfile.load(path)
    applied = AppliedProfile(profile, path)
    _check_identity(profile, path, kwargs, given, plugins_file)
    for key in ("backend", "device", "precision"):
        if key not in given:
            kwargs[key] = {"backend": profile.backend["name"], "device": profile.device, "precision": profile.precision}[key]
    for key in RUN_FIELDS:
        if key not in given and key in profile.run:
            kwargs[key] = profile.run[key]
    if "scenarios" not in given:
        kwargs["scenarios"] = list(profile.scenarios)
    from mlpi.core.engine.planning import parse_scenarios

    scenarios = parse_scenarios(list(kwargs["scenarios"]) or ["Offline"])
    entries = {s: profile.scenarios[s] for s in scenarios if s in profile.scenarios}
    missing = [s for s in scenarios if s not in profile.scenarios]
    if not entries:
        raise UsageError(f"{path} has no settings for {', '.join(scenarios)} (it tunes {', '.join(profile.scenarios)})",
                         f"run -s {' -s '.join(profile.scenarios)}, or tune {', '.join(scenarios)} with `mlpi tune`")
    applied.notes.append(f"tuned profile {path}: " + "; ".join(f"{s} {e.describe()}" for s, e in entries.items()))
    if missing:
        applied.notes.append(f"the profile has no settings for {', '.join(missing)}: calibrated as usual")
    for scenario, entry in entries.items():
        if not entry.confirmed:
            applied.notes.append(f"warning: the profile's {scenario} settings were never confirmed VALID at full length")
    settings = {s: entry.settings.to_json() for s, entry in entries.items()}
    _explicit_flags_win(settings, kwargs, given, applied.notes)
    kwargs["options"] = _merged_options(path, entries, kwargs.get("options") or {}, "options" in given, applied.notes)
    kwargs["scenario_settings"] = settings
    kwargs["profile"] = _provenance(path, profile, entries, given)
    return applied


def _check_identity(profile: TunedProfile, path: Path, kwargs: dict[str, Any], given: set[str],
                    plugins_file: str | None) -> None:
    if "model" in given and kwargs.get("model") and kwargs["model"] != profile.model["name"]:
        raise _mismatch(path, "model", profile.model["name"], kwargs["model"])
    if "backend" in given and kwargs.get("backend"):
        from mlpi.core.plugins.config import PluginsConfig
        from mlpi.core.plugins.registry import Registry

        name = Registry(PluginsConfig.load(plugins_file)).backend(kwargs["backend"]).name
        if name != profile.backend["name"]:
            raise _mismatch(path, "backend", profile.backend["name"], name)
    if "device" in given and kwargs.get("device"):
        from mlpi.core.contract.device import Device

        device = str(Device.parse(kwargs["device"]))
        if device != profile.device:
            raise _mismatch(path, "device", profile.device, device)
    if "precision" in given and kwargs.get("precision") != profile.precision:
        raise _mismatch(path, "precision", profile.precision or "the backend's default", kwargs.get("precision"))


def _mismatch(path: Path, key: str, want: Any, have: Any) -> UsageError:
    return UsageError(
        f"{path} was tuned for {key} {want}, not {have}",
        f"drop --{key} to run the profile's {key}, or tune {key} {have} with `mlpi tune --{key} {have}` and use "
        "that profile",
    )


#: The flag that replaces each scenario setting, and the settings it replaces.
_OVERRIDES = {
    "batch_size": ("--batch-size", ("batch_size",)),
    "instances": ("--instances", ("instances",)),
    "target_qps": ("--target-qps", ("target_qps", "expected_qps")),
    "batch_timeout_ms": ("--batch-timeout-ms", ("batch_timeout_ms",)),
}


def _explicit_flags_win(settings: dict[str, dict[str, Any]], kwargs: dict[str, Any], given: set[str],
                        notes: list[str]) -> None:
    for name, (flag, keys) in _OVERRIDES.items():
        if name not in given:
            continue
        replaced = [f"{s} {k} {_figure(v)}" for s, values in settings.items() for k, v in values.items() if k in keys]
        for values in settings.values():
            for key in keys:
                values.pop(key, None)
        if replaced:
            notes.append(f"{flag} {kwargs.get(name):g} given: it replaces the profile's {', '.join(replaced)}")


def _merged_options(path: Path, entries: Mapping[str, ProfileEntry], given_options: Mapping[str, Any],
                    explicit: bool, notes: list[str]) -> dict[str, Any]:
    """The backend options of the run: the profile's (every scenario run together must agree),
    with each ``-o KEY=VALUE`` over them."""
    distinct = {json.dumps(entry.backend_options, sort_keys=True) for entry in entries.values()}
    if len(distinct) > 1:
        raise UsageError(f"{path} tunes {', '.join(entries)} with different backend options, and one run has one set",
                         "run those scenarios separately (-s)")
    options = dict(next(iter(entries.values())).backend_options)
    replaced = [f"{key}={options[key]}" for key in given_options if key in options and str(options[key]) != str(given_options[key])]
    if explicit and replaced:
        notes.append(f"-o given: it replaces the profile's backend option(s) {', '.join(replaced)}")
    options.update(given_options)
    return options


def _provenance(path: Path, profile: TunedProfile, entries: Mapping[str, ProfileEntry], given: set[str]) -> dict[str, Any]:
    """What the plan records of the profile (a submission shows it): the file and its hash,
    the tune, and per scenario the settings and the run that confirmed them."""
    return {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "created": profile.created, "tune": profile.tune,
        "scenarios": {s: {**e.settings.to_json(), "confirmed": e.confirmed, "confirm": e.found_by.get("confirm")}
                      for s, e in entries.items()},
        "overridden_by": sorted(f"--{name.replace('_', '-')}" for name in _OVERRIDES if name in given)
        + (["-o"] if "options" in given else []),
    }


__all__ = ["PROFILE_FORMAT", "PROFILE_VERSION", "AppliedProfile", "ProfileEntry", "TunedProfile", "apply_profile"]
