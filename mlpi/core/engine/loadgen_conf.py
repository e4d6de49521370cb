"""LoadGen configuration files a user brings to ``mlpi run``: ``--user-conf`` and ``--mlperf-conf``.

Every vendor harness takes a ``user.conf``; people reproducing an earlier round bring that
round's ``mlperf.conf``. LoadGen itself reads exactly one file per process (a second
``FromConfig`` logs an error the submission checker rejects), so mlpi merges them into the one
``user.conf`` each test writes, in LoadGen's own order of precedence:

1. LoadGen's built-in mlperf.conf (applied by ``FromConfig`` itself);
2. ``--mlperf-conf FILE``: the round's rules;
3. mlpi's own lines (expectations from calibration or a profile, quick durations, a retired
   model's rules);
4. ``--user-conf FILE``: the user's, over everything.

Follows LoadGen's ``loadgen/test_settings_internal.cc`` (``TestSettings::FromConfig``): lines
``model.scenario.param = value`` with ``*`` for any model or scenario; for each setting the
exact key wins over ``*.scenario``, then ``model.*``, then ``*.*``, whatever the order of the
lines; scenario-specific settings (``target_qps`` of Offline or Server...) are looked up under
their own scenario only. Each layer is resolved that way for the test's model and scenario,
then written under the exact key, so the file LoadGen reads says plainly what applies.

Two traps of LoadGen's own parser are closed here: it silently ignores ``key=value`` written
without spaces, and it reads the seeds (``qsl_rng_seed``...) only from its built-in
mlperf.conf, never from a user.conf. mlpi accepts ``key=value``, refuses seeds in a user.conf
(naming ``--mlperf-conf``), and sets a round's seeds on the test settings directly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
#: Where a plan keeps the files: ``plan.extra[EXTRA_KEY] = {"mlperf_conf": ..., "user_conf": ...}``.
EXTRA_KEY = "loadgen_conf"
#: The command-line flag of each layer, as messages name it.
FLAGS = {"mlperf_conf": "--mlperf-conf", "user_conf": "--user-conf"}


@dataclass(frozen=True)
class Setting:
    """One setting LoadGen reads: the scenario it is looked up under (None: the test's own),
    the TestSettings attribute it sets and the factor from the file's unit to the attribute's,
    and what the MLPerf rules allow a submitter to do with it:

    - ``knob``: the submitter's to choose (expected QPS, latency, query coalescing...);
    - ``at_least`` / ``at_most``: may only be made stricter than the rules';
    - ``equal``: must stay as the rules have it;
    - ``seed``: read only from an mlperf.conf;
    - ``mode``: mlpi's ``--mode`` decides it.
    """

    scenario: str | None
    attribute: str
    policy: str
    factor: float = 1.0
    unit: str = ""


#: Every setting LoadGen's FromConfig reads, by the name a conf file gives it (a scenario-
#: specific one under ``name@Scenario``).
SETTINGS: dict[str, Setting] = {
    "mode": Setting(None, "mode", "mode"),
    "min_duration": Setting(None, "min_duration_ms", "at_least", unit=" ms"),
    "max_duration": Setting(None, "max_duration_ms", "knob", unit=" ms"),
    "min_query_count": Setting(None, "min_query_count", "at_least"),
    "max_query_count": Setting(None, "max_query_count", "knob"),
    "performance_sample_count_override": Setting(None, "performance_sample_count_override", "at_least"),
    "accuracy_sample_count_override": Setting(None, "accuracy_sample_count_override", "equal"),
    "sample_concatenate_permutation": Setting(None, "sample_concatenate_permutation", "equal"),
    "performance_issue_unique": Setting(None, "performance_issue_unique", "equal"),
    "performance_issue_same": Setting(None, "performance_issue_same", "equal"),
    "performance_issue_same_index": Setting(None, "performance_issue_same_index", "equal"),
    "accuracy_log_sampling_target": Setting(None, "accuracy_log_sampling_target", "equal"),
    "accuracy_log_rng_seed": Setting(None, "accuracy_log_rng_seed", "knob"),
    "print_timestamps": Setting(None, "print_timestamps", "knob"),
    "use_token_latencies": Setting(None, "use_token_latencies", "equal"),
    "infer_token_latencies": Setting(None, "infer_token_latencies", "equal"),
    "token_latency_scaling_factor": Setting(None, "token_latency_scaling_factor", "equal"),
    "qsl_rng_seed": Setting(None, "qsl_rng_seed", "seed"),
    "sample_index_rng_seed": Setting(None, "sample_index_rng_seed", "seed"),
    "schedule_rng_seed": Setting(None, "schedule_rng_seed", "seed"),
    "accuracy_log_probability": Setting(None, "accuracy_log_probability", "seed", 0.01),
    "test05": Setting(None, "test05", "seed"),
    "test05_qsl_rng_seed": Setting(None, "test05_qsl_rng_seed", "seed"),
    "test05_sample_index_rng_seed": Setting(None, "test05_sample_index_rng_seed", "seed"),
    "test05_schedule_rng_seed": Setting(None, "test05_schedule_rng_seed", "seed"),
    "target_latency_percentile@SingleStream": Setting("SingleStream", "single_stream_target_latency_percentile", "equal", 0.01, "%"),
    "target_latency@SingleStream": Setting("SingleStream", "single_stream_expected_latency_ns", "knob", 1e6, " ms"),
    "target_latency_percentile@MultiStream": Setting("MultiStream", "multi_stream_target_latency_percentile", "equal", 0.01, "%"),
    "target_latency@MultiStream": Setting("MultiStream", "multi_stream_expected_latency_ns", "knob", 1e6, " ms"),
    "samples_per_query@MultiStream": Setting("MultiStream", "multi_stream_samples_per_query", "equal"),
    "target_latency_percentile@Server": Setting("Server", "server_target_latency_percentile", "equal", 0.01, "%"),
    "target_latency@Server": Setting("Server", "server_target_latency_ns", "at_most", 1e6, " ms"),
    "target_qps@Server": Setting("Server", "server_target_qps", "knob"),
    "coalesce_queries@Server": Setting("Server", "server_coalesce_queries", "knob"),
    "max_async_queries@Server": Setting("Server", "server_max_async_queries", "knob"),
    "ttft_latency@Server": Setting("Server", "ttft_latency", "equal", 1e6, " ms"),
    "tpot_latency@Server": Setting("Server", "tpot_latency", "equal", 1e6, " ms"),
    "target_qps@Offline": Setting("Offline", "offline_expected_qps", "knob"),
}
_PARAMS = frozenset(name.partition("@")[0] for name in SETTINGS)
_NUMBER = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$")


@dataclass(frozen=True)
class ConfLine:
    """One ``model.scenario.param = value`` line of a conf file."""

    model: str
    scenario: str
    param: str
    value: str
    number: int  # the line's number in its file

    @property
    def key(self) -> str:
        return f"{self.model}.{self.scenario}.{self.param}"


@dataclass(frozen=True)
class ConfFile:
    """A conf file the user gave: where it was, its text (kept in the plan, so ``--plan``
    reruns it without the file) and its hash; ``role`` is ``mlperf_conf`` or ``user_conf``."""

    role: str
    path: str
    sha256: str
    text: str

    @property
    def flag(self) -> str:
        return FLAGS[self.role]

    @classmethod
    def read(cls, role: str, path: str) -> ConfFile:
        """The file at ``path``, read and checked line by line (a UsageError naming the line)."""
        flag = FLAGS[role]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})",
                             f"pass {flag} the path of a LoadGen conf file") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{flag} {path} is not a text file", f"pass {flag} the path of a LoadGen conf file") from None
        conf = cls(role, str(Path(path).resolve()), hashlib.sha256(data).hexdigest(), text)
        conf.lines()  # every line checked now, before any test
        return conf

    def lines(self) -> list[ConfLine]:
        return parse(self.text, f"{self.flag} {self.path}", mlperf_conf=self.role == "mlperf_conf")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "text": self.text}

    @classmethod
    def from_json(cls, role: str, data: Any) -> ConfFile:
        if not isinstance(data, Mapping) or not all(isinstance(data.get(k), str) for k in ("path", "sha256", "text")):
            raise UsageError(f"the plan's {EXTRA_KEY}.{role} is damaged", "start a new run without --plan")
        return cls(role, data["path"], data["sha256"], data["text"])


def parse(text: str, where: str, *, mlperf_conf: bool) -> list[ConfLine]:
    """The file's settings, in order. ``#`` starts a comment; ``key = value`` or ``key=value``;
    the value a number (LoadGen reads nothing else). A user.conf may not set what LoadGen reads
    only from mlperf.conf (the seeds) nor the test mode; an mlperf.conf of another round may
    hold settings this LoadGen no longer reads, which are skipped."""
    found: list[ConfLine] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or not key or not value or " " in key or " " in value:
            raise UsageError(f"{where} line {number}: '{raw.strip()}' is not 'model.scenario.setting = value'",
                             f"fix line {number}; '#' starts a comment")
        if not _NUMBER.match(value):
            raise UsageError(f"{where} line {number}: {key}'s value '{value}' is not a number",
                             f"LoadGen reads whole or decimal numbers only: fix line {number}")
        model, dot, rest = key.rpartition(".")
        model, dot2, scenario = model.rpartition(".")
        param = rest
        if not (dot and dot2 and model) or scenario not in (*SCENARIOS, "*"):
            raise UsageError(f"{where} line {number}: '{key}' is not model.scenario.setting",
                             f"write it as <model>.<scenario>.{param or 'setting'} with a scenario of "
                             f"{', '.join(SCENARIOS)} or *; '*' for any model")
        if param not in _PARAMS:
            if mlperf_conf:
                continue  # a setting of an earlier round's LoadGen (target_duration...)
            raise UsageError(f"{where} line {number}: LoadGen has no setting '{param}'",
                             _close_names(param))
        policy = _policy_of(param)
        if not mlperf_conf and policy == "seed":
            raise UsageError(f"{where} line {number}: LoadGen reads {param} only from an mlperf.conf, never a user.conf",
                             "put the round's seeds in a file passed with --mlperf-conf")
        if policy == "mode":
            raise UsageError(f"{where} line {number}: the test mode is mlpi's --mode (and each audit's) to set",
                             f"drop line {number}; pass --mode performance, accuracy or both")
        found.append(ConfLine(model, scenario, param, value, number))
    return found


def _policy_of(param: str) -> str:
    return next(s.policy for name, s in SETTINGS.items() if name.partition("@")[0] == param)


def _close_names(param: str) -> str:
    import difflib

    close = difflib.get_close_matches(param, sorted(_PARAMS), n=1)
    return f"did you mean {close[0]}?" if close else f"LoadGen's settings are: {', '.join(sorted(_PARAMS))}"


def resolve(lines: list[ConfLine], model: str, scenario: str) -> dict[str, ConfLine]:
    """The lines that apply to one test, by setting name, as LoadGen picks them: the exact
    key, then ``*.scenario``, ``model.*``, ``*.*``; the last line of a key wins."""
    by_key = {line.key: line for line in lines}
    chosen: dict[str, ConfLine] = {}
    for name, setting in SETTINGS.items():
        param = name.partition("@")[0]
        if setting.scenario not in (None, scenario):
            continue  # another scenario's setting: it does not change this test
        for key in lookup_keys(model, scenario, param):
            line = by_key.get(key)
            if line is not None:
                chosen[param] = line
                break
    return chosen


def lookup_keys(model: str, scenario: str, param: str) -> tuple[str, str, str, str]:
    """The keys LoadGen tries for a setting of one test, the first found winning."""
    return f"{model}.{scenario}.{param}", f"*.{scenario}.{param}", f"{model}.*.{param}", f"*.*.{param}"


def check_applies(conf: ConfFile, model: str, scenarios: list[str]) -> None:
    """Refuse a user.conf that sets nothing for this run (its lines name another model):
    LoadGen would run as if it were not there, and say nothing."""
    lines = conf.lines()
    if conf.role != "user_conf" or any(resolve(lines, model, s) for s in scenarios):
        return
    named = sorted({line.model for line in lines if line.model != "*"})
    said = f"its lines are for {', '.join(named)}" if named else "it has no setting"
    raise UsageError(f"{conf.flag} {conf.path} sets nothing for {model} in {', '.join(scenarios)}: {said}",
                     f"write its lines as {model}.<scenario>.<setting> = value, or *.<scenario>.<setting> for any model")


def merged(own: str, model: str, scenario: str, files: Mapping[str, ConfFile]) -> str:
    """The one user.conf a test gives LoadGen: ``files["mlperf_conf"]``'s settings, mlpi's own
    lines (``own``), then ``files["user_conf"]``'s, each resolved for ``model`` and ``scenario``
    and written under the exact key. A setting a later layer sets is dropped from the earlier
    ones, with a comment saying which file replaced it; seeds are not written (LoadGen would
    ignore them here: :func:`seeds` gives them)."""
    user = resolve(files["user_conf"].lines(), model, scenario) if "user_conf" in files else {}
    out: list[str] = []
    if "mlperf_conf" in files:
        conf = files["mlperf_conf"]
        chosen = resolve(conf.lines(), model, scenario)
        own_keys = {line.param for line in parse(own, "mlpi's user.conf", mlperf_conf=False)}
        out.append(f"# from {conf.flag} {conf.path} (sha256 {conf.sha256[:12]}), over LoadGen's built-in mlperf.conf")
        for param, line in chosen.items():
            if _policy_of(param) == "seed" or param in own_keys or param in user:
                continue
            out += _written(model, scenario, param, line)
    for text_line in own.splitlines():
        body = text_line.split("#", 1)[0]
        key = body.partition("=")[0].strip()
        param = key.rpartition(".")[2] if "=" in body else ""
        if param and param in user and key in lookup_keys(model, scenario, param):
            out.append(f"# {text_line.strip()}  (replaced by {FLAGS['user_conf']})")
            continue
        out.append(text_line)
    if "user_conf" in files:
        conf = files["user_conf"]
        out.append(f"# from {conf.flag} {conf.path} (sha256 {conf.sha256[:12]}), over everything above")
        for param, line in user.items():
            out += _written(model, scenario, param, line)
    return "\n".join(out) + "\n"


def _written(model: str, scenario: str, param: str, line: ConfLine) -> list[str]:
    """A resolved setting as LoadGen reads it: the exact key, and its source on a line of its
    own (LoadGen takes anything after a value for another value, a ``#`` included)."""
    return [f"# line {line.number}: {line.key}", f"{model}.{scenario}.{param} = {line.value}"]


def overridden(own: str, model: str, scenario: str, files: Mapping[str, ConfFile]) -> list[str]:
    """mlpi's own settings the user.conf replaced, in words (``target_qps 123.4 -> 500``)."""
    if "user_conf" not in files:
        return []
    user = resolve(files["user_conf"].lines(), model, scenario)
    mine = resolve(parse(own, "mlpi's user.conf", mlperf_conf=False), model, scenario)
    return [f"{param} {mine[param].value} -> {line.value}" for param, line in user.items()
            if param in mine and mine[param].value != line.value]


def seeds(files: Mapping[str, ConfFile], model: str, scenario: str) -> dict[str, float]:
    """What the mlperf.conf sets that LoadGen reads only from its built-in one, by attribute:
    the caller sets them on the TestSettings after ``FromConfig``."""
    if "mlperf_conf" not in files:
        return {}
    chosen = resolve(files["mlperf_conf"].lines(), model, scenario)
    found: dict[str, float] = {}
    for param, line in chosen.items():
        if _policy_of(param) == "seed":  # seeds apply to every scenario: their name is their key
            found[SETTINGS[param].attribute] = _scaled(_number(line.value), SETTINGS[param].factor)
    return found


def departures(own: str, model: str, scenario: str, files: Mapping[str, ConfFile], settings: Any, rules: Any) -> list[str]:
    """Where the settings the test runs with (``settings``) depart from the MLPerf rules
    (``rules``: TestSettings from the built-in mlperf.conf and the model's own rule lines), on a
    setting whose value came from a user's file (not one mlpi's own lines or the user.conf
    replaced): a result that is not valid for submission, in words."""
    mine = {line.param for line in parse(own, "mlpi's user.conf", mlperf_conf=False)}
    user = resolve(files["user_conf"].lines(), model, scenario) if "user_conf" in files else {}
    found: list[str] = []
    for role in ("mlperf_conf", "user_conf"):
        if role not in files:
            continue
        for param, line in resolve(files[role].lines(), model, scenario).items():
            if role == "mlperf_conf" and (param in mine or param in user):
                continue  # not the value that ran
            setting = SETTINGS[param if param in SETTINGS else f"{param}@{scenario}"]
            ran, rule = getattr(settings, setting.attribute), getattr(rules, setting.attribute)
            if _departs(setting.policy, ran, rule):
                found.append(f"{FLAGS[role]} line {line.number} sets {param} to {_shown(ran, setting)}, "
                             f"where the rules have {_shown(rule, setting)}")
    return found


def _departs(policy: str, ran: Any, rule: Any) -> bool:
    if policy == "at_least":
        return ran < rule
    if policy == "at_most":
        return ran > rule
    if policy == "equal":
        return ran != rule
    return False


def _shown(value: Any, setting: Setting) -> str:
    """An attribute's value in the file's unit, as a person reads it (``2,000 ms``)."""
    if isinstance(value, bool):
        return str(int(value))
    number = value / setting.factor if setting.factor != 1.0 else value
    text = f"{number:,.6g}" if isinstance(number, float) and not float(number).is_integer() else f"{int(number):,}"
    return text + setting.unit


def _scaled(value: float, factor: float) -> float | int:
    """``value`` in the attribute's unit; a whole number stays whole (a 64-bit seed would
    lose digits as a float)."""
    return value if factor == 1.0 else value * factor


def _number(value: str) -> float | int:
    try:
        return int(value, 0)
    except ValueError:
        return float(value)


def loadgen_model_key(rules_key: str | None, name: str) -> str:
    """The model name LoadGen looks up in mlperf.conf. A model outside MLPerf's list gets a
    name that cannot collide with one inside it (a file called resnet50.onnx is not ResNet50)."""
    return rules_key or f"custom_{name}"


def files_of(plan: Any) -> dict[str, ConfFile]:
    """The conf files a plan carries, by role."""
    table = plan.extra.get(EXTRA_KEY) or {}
    if not isinstance(table, Mapping):
        raise UsageError(f"the plan's {EXTRA_KEY} is damaged", "start a new run without --plan")
    return {role: ConfFile.from_json(role, table[role]) for role in FLAGS if role in table}


__all__ = ["EXTRA_KEY", "FLAGS", "SETTINGS", "ConfFile", "ConfLine", "check_applies", "departures", "files_of",
           "loadgen_model_key", "lookup_keys", "merged", "overridden", "parse", "resolve", "seeds"]
