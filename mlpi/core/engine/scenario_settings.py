"""Settings a plan gives one scenario only: a tuned profile's batch size, instances and the
LoadGen expectation that scenario's ``user.conf`` gets, exactly.

A plan has one ``batch_size``, ``instances`` and ``target_qps`` for all its scenarios, yet the
best Server batch is rarely the best Offline one, and each scenario has its own expectation
(Offline expected QPS, Server target QPS, SingleStream/MultiStream expected latency). The plan
keeps these under ``extra["scenario_settings"][<scenario>]``; the test's process applies them
before anything loads (:func:`for_scenario`), and writes the expectation into user.conf as it
is, with none of the calibration margins (:func:`exact_conf`). LoadGen's own names for them
are in MLCommons' ``loadgen/mlperf.conf`` (``target_qps``, ``target_latency``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpi.core.contract.errors import UsageError

#: Where a plan keeps them: ``plan.extra[EXTRA_KEY][scenario]``.
EXTRA_KEY = "scenario_settings"
#: The expectation each scenario takes, and the user.conf key LoadGen reads it from.
EXPECTATION = {
    "Offline": ("expected_qps", "target_qps"),
    "Server": ("target_qps", "target_qps"),
    "SingleStream": ("expected_latency_ms", "target_latency"),
    "MultiStream": ("expected_latency_ms", "target_latency"),
}
_WHOLE = ("batch_size", "instances")
_RATES = ("target_qps", "expected_qps", "expected_latency_ms", "batch_timeout_ms")


@dataclass(frozen=True)
class ScenarioSettings:
    """One scenario's own settings; ``None`` leaves the plan's (or calibration's) in place.

    ``target_qps`` is Server's target, ``expected_qps`` Offline's expected QPS and
    ``expected_latency_ms`` SingleStream's expected latency per sample or MultiStream's per
    query: each is written into user.conf exactly as given."""

    batch_size: int | None = None
    instances: int | None = None
    target_qps: float | None = None
    expected_qps: float | None = None
    expected_latency_ms: float | None = None
    batch_timeout_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def expectation(self, scenario: str) -> float | None:
        """The expectation this scenario's user.conf takes from these settings (None: calibrated)."""
        field = EXPECTATION.get(scenario, ("", ""))[0]
        return getattr(self, field, None) if field else None

    @classmethod
    def from_json(cls, data: Any, where: str) -> ScenarioSettings:
        """Read and check them (``where`` names them in an error: a file and a scenario)."""
        if not isinstance(data, Mapping):
            raise UsageError(f"{where} is {type(data).__name__}, not an object", f"fix {where}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{where} has unknown settings: {', '.join(unknown)}",
                             f"the settings a scenario takes are {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key in _WHOLE:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise UsageError(f"{where}: {key} is {value!r}, not a whole number of 1 or more", f"fix {key} in {where}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
                raise UsageError(f"{where}: {key} is {value!r}, not a positive, finite number", f"fix {key} in {where}")
            values[key] = float(value) if key in _RATES else value
        return cls(**values)


def settings_of(plan: Any, scenario: str) -> ScenarioSettings | None:
    """The plan's own settings for ``scenario`` (None when it has none); a hand-edited plan
    with a bad value is one UsageError naming it."""
    table = plan.extra.get(EXTRA_KEY) or {}
    if not isinstance(table, Mapping):
        raise UsageError(f"the plan's {EXTRA_KEY} is {type(table).__name__}, not an object",
                         "fix it in plan.json, or start a new run without --plan")
    if scenario not in table:
        return None
    return ScenarioSettings.from_json(table[scenario], f"the plan's {EXTRA_KEY}.{scenario}")


def for_scenario(plan: Any, scenario: str) -> Any:
    """``plan`` as one scenario's test runs it: its batch size, instances and Server batch
    timeout in place of the plan's, and its expectation as ``target_qps`` (Offline, Server),
    so the test does not calibrate a rate it is given."""
    own = settings_of(plan, scenario)
    if own is None:
        return plan
    changes: dict[str, Any] = {}
    for key in ("batch_size", "instances", "batch_timeout_ms"):
        if getattr(own, key) is not None:
            changes[key] = getattr(own, key)
    rate = own.expectation(scenario) if scenario in ("Offline", "Server") else None
    if rate is not None:
        changes["target_qps"] = rate
    return dataclasses.replace(plan, **changes) if changes else plan


def tuned_expectations(plan: Any, scenario: str, expect: Any) -> Any:
    """``expect`` (calibration's :class:`~mlpi.core.engine.scenario.Expectations`) with the
    plan's own expectation for ``scenario`` in place, saying where it came from."""
    own = settings_of(plan, scenario)
    value = own.expectation(scenario) if own is not None else None
    if value is None:
        return expect
    source = f"the {_origin(plan)}"
    if scenario == "Offline":
        return dataclasses.replace(expect, throughput_qps=value, source=source)
    if scenario == "Server":
        return dataclasses.replace(expect, server_target_qps=value, source=source)
    if scenario == "SingleStream":
        return dataclasses.replace(expect, latency_s=value / 1e3, source=source)
    return dataclasses.replace(expect, multistream_latency_s=value / 1e3, source=source)


def exact_conf(text: str, plan: Any, model_key: str, scenario: str) -> str:
    """user.conf ``text`` with the line of ``scenario``'s expectation set to the plan's own
    value, as given: calibration's margins (Offline x1.25, latency x0.5) are for guesses,
    and this value is not one."""
    own = settings_of(plan, scenario)
    value = own.expectation(scenario) if own is not None else None
    if value is None:
        return text
    conf_key = f"{model_key}.{scenario}.{EXPECTATION[scenario][1]}"
    line = f"{conf_key} = {value:.6f}"
    lines = text.splitlines()
    kept = [ln for ln in lines if not ln.replace(" ", "").startswith(conf_key + "=")]
    at = next((i for i, ln in enumerate(lines) if ln.replace(" ", "").startswith(conf_key + "=")), len(lines))
    kept[min(at, len(kept)):min(at, len(kept))] = [f"# {EXPECTATION[scenario][1]} from the {_origin(plan)}, as given", line]
    return "\n".join(kept) + "\n"


def _origin(plan: Any) -> str:
    """Where the settings came from, in words: the tuned profile's file, or the plan."""
    profile, tune = plan.extra.get("profile"), plan.extra.get("tune")
    if isinstance(profile, Mapping) and profile.get("path"):
        return f"tuned profile {profile['path']}"
    if isinstance(tune, Mapping) and tune.get("id"):
        return f"settings tune {tune['id']} is confirming"
    return "plan's scenario_settings"


__all__ = ["EXPECTATION", "EXTRA_KEY", "ScenarioSettings", "exact_conf", "for_scenario", "settings_of", "tuned_expectations"]
