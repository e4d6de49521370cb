"""LoadGen settings for one test: the user.conf mlpi writes, and the log it reads back.

Official settings come from LoadGen's built-in mlperf.conf; mlpi adds a user.conf holding
only what it must choose: expected QPS / latency (from calibration or the user) and, for
quick development runs, shorter durations. ``FromConfig`` is called once per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.rules import MULTISTREAM_SAMPLES_PER_QUERY

#: How much higher than calibration Offline's expected QPS is set: LoadGen issues
#: expected_qps * min_duration * 1.1 samples, and too few end the run early (INVALID).
#: Short runs calibrate briefly (0.5 s) and some runtimes speed up after their first
#: batches (PyTorch on ResNet50 by ~20%), so they get the wider margin.
OFFLINE_QPS_MARGIN = 1.25
OFFLINE_QPS_MARGIN_SHORT = 1.5
#: SingleStream/MultiStream expected latency below calibration, so enough queries exist.
LATENCY_MARGIN = 0.5
#: Quick runs: minimum queries, so short runs still give percentiles. MultiStream keeps
#: mlperf.conf's 662: fewer can never meet early stopping at the 99th percentile.
QUICK_MIN_QUERY_COUNT = 64
QUICK_MIN_QUERY_COUNT_MULTISTREAM = 662
#: A quick test of a slow model (RetinaNet takes ~20 s per image on two CPU cores; 662
#: MultiStream queries of 8 would take a day) is cut to about QUICK_BUDGET times the quick
#: duration, never below QUICK_MIN_QUERY_FLOOR queries. LoadGen then judges it INVALID
#: (early stopping cannot be met on so few queries) and says so; a quick run is never valid
#: for submission anyway.
QUICK_BUDGET = 6.0
QUICK_MIN_QUERY_FLOOR = 8


def quick_query_count(wanted: int, min_duration_s: float, query_latency_s: float) -> int:
    """Queries a quick SingleStream/MultiStream/Server test asks for: ``wanted`` unless that
    would take far longer than the quick duration."""
    if query_latency_s <= 0:
        return wanted
    affordable = int(QUICK_BUDGET * min_duration_s / query_latency_s)
    return max(min(QUICK_MIN_QUERY_FLOOR, wanted), min(wanted, affordable))


@dataclass(frozen=True)
class Expectations:
    """What the SUT is expected to do, from calibration or from the user."""

    throughput_qps: float  # samples/s over all sessions at the run's batch size
    latency_s: float  # seconds for one sample alone
    multistream_latency_s: float  # seconds for one MultiStream query
    server_target_qps: float
    source: str  # "calibration" or "user"

    def describe(self, scenario: str) -> str:
        """What the scenario's test is told, in words (harness.log's line)."""
        if scenario == "Offline":
            return f"{_figure(self.throughput_qps)} samples/s"
        if scenario == "Server":
            return f"{_figure(self.server_target_qps)} queries/s target (throughput {_figure(self.throughput_qps)} samples/s)"
        if scenario == "SingleStream":
            return f"{_figure(self.latency_s * 1e3)} ms a sample"
        return f"{_figure(self.multistream_latency_s * 1e3)} ms a query"


def _figure(value: float) -> str:
    """``1,329,112`` or ``0.2871``: whole numbers from 100 up, four significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def user_conf(
    model_key: str,
    scenario: str,
    expect: Expectations,
    *,
    min_duration_s: float | None,
    performance_sample_count: int | None,
    short_calibration: bool = False,
    rules: Any = None,
    equal_issue: bool = False,
) -> str:
    """The user.conf lines for one test (``min_duration_s=None`` keeps the official one).

    ``rules``: a retired model's :class:`~mlpi.core.contract.rules.Rules`, whose values
    today's LoadGen no longer holds; they are written here (later lines win over them).
    ``equal_issue``: the model's samples are issued equally often (mlperf.conf's
    ``sample_concatenate_permutation``), which rounds every test up to a multiple of the
    performance sample count; a shortened test turns it off, or 3D-UNet's quick run would
    still be 43 whole volumes per scenario.
    """
    key = f"{model_key}.{scenario}"
    lines = [f"# written by mlpi; expectations from {expect.source}"]
    if rules is not None:
        lines += retired_rule_lines(model_key, scenario, rules)
    if scenario == "Offline":
        margin = OFFLINE_QPS_MARGIN_SHORT if short_calibration else OFFLINE_QPS_MARGIN
        lines.append(f"{key}.target_qps = {expect.throughput_qps * margin:.6f}")
    elif scenario == "Server":
        lines.append(f"{key}.target_qps = {expect.server_target_qps:.6f}")
    elif scenario == "SingleStream":
        lines.append(f"{key}.target_latency = {expect.latency_s * 1e3 * LATENCY_MARGIN:.6f}")
    elif scenario == "MultiStream":
        lines.append(f"{key}.target_latency = {expect.multistream_latency_s * 1e3 * LATENCY_MARGIN:.6f}")
    if min_duration_s is not None:
        lines.append(f"{key}.min_duration = {int(min_duration_s * 1000)}")
        if scenario == "Offline":
            queries = 1
        elif scenario == "MultiStream":
            queries = quick_query_count(QUICK_MIN_QUERY_COUNT_MULTISTREAM, min_duration_s, expect.multistream_latency_s)
        elif scenario == "Server":  # queries arrive 1 / target_qps apart: that is what they cost in time
            interval = 1.0 / expect.server_target_qps if expect.server_target_qps > 0 else 0.0
            queries = quick_query_count(QUICK_MIN_QUERY_COUNT, min_duration_s, interval)
        else:
            queries = quick_query_count(QUICK_MIN_QUERY_COUNT, min_duration_s, expect.latency_s)
        lines.append(f"{key}.min_query_count = {queries}")
        if equal_issue:
            lines.append(f"{key}.sample_concatenate_permutation = 0")
        if scenario == "MultiStream":
            lines.append(f"{key}.samples_per_query = {MULTISTREAM_SAMPLES_PER_QUERY}")
    if performance_sample_count is not None:
        lines.append(f"{key}.performance_sample_count_override = {performance_sample_count}")
    return "\n".join(lines) + "\n"


def retired_rule_lines(model_key: str, scenario: str, rules: Any) -> list[str]:
    """A retired model's mlperf.conf lines for one scenario, from its last round's rules."""
    key = f"{model_key}.{scenario}"
    lines = [f"# {model_key}'s rules from round {rules.round} (retired: not in this LoadGen's mlperf.conf)"]
    if rules.performance_sample_count:
        lines.append(f"{key}.performance_sample_count_override = {rules.performance_sample_count}")
    if scenario == "Server" and rules.server_latency_ms:
        lines.append(f"{key}.target_latency = {rules.server_latency_ms:g}")
    if scenario == "Offline" and rules.offline_min_samples:
        lines.append(f"{key}.min_query_count = {rules.offline_min_samples}")
    return lines


@dataclass
class DetailLog:
    """The parsed ``mlperf_log_detail.txt``: last value per key, plus every error."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> DetailLog:
        log = cls()
        if not path.exists():
            return log
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                _, marker, payload = line.partition(":::MLLOG ")
                if not marker:
                    continue
                try:
                    entry = json.loads(payload)
                except json.JSONDecodeError:
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                    continue  # not a record LoadGen writes (a damaged or crafted line)
                key = entry["key"]
                log.values[key] = entry.get("value")
                metadata = entry.get("metadata")
                if isinstance(metadata, dict) and metadata.get("is_error"):
                    log.errors.append(f"{key}: {entry.get('value')}")
        return log

    @property
    def complete(self) -> bool:
        return "result_validity" in self.values

    @property
    def valid(self) -> bool:
        return self.values.get("result_validity") == "VALID"

    def invalid_reasons(self) -> list[str]:
        reasons: list[str] = []
        checks = {
            "result_min_duration_met": "min duration not satisfied",
            "result_min_queries_met": "min queries not satisfied",
            "early_stopping_met": "early stopping not satisfied",
            "result_perf_constraints_met": "latency constraint not met",
        }
        for key, text in checks.items():
            if self.values.get(key) is False:
                reasons.append(text)
        advice = str(self.values.get("result_invalid_reason") or "").strip()
        if advice:
            reasons.append(f"LoadGen: {advice}")
        reasons.extend(self.errors)
        return reasons


@dataclass(frozen=True)
class Metric:
    name: str
    value: float | None
    unit: str


def performance_metric(scenario: str, log: DetailLog) -> Metric:
    """The figure MLPerf reports for a scenario, from the detail log."""
    v = log.values
    if scenario == "Offline":
        return Metric("samples_per_second", _num(v.get("result_samples_per_second")), "samples/s")
    if scenario == "Server":
        return Metric("completed_samples_per_second", _num(v.get("result_completed_samples_per_sec")), "samples/s")
    if scenario == "SingleStream":
        estimate = v.get("early_stopping_latency_ss") if v.get("early_stopping_met") else None
        if estimate is not None:
            return Metric("early_stopping_p90_latency", _ms(estimate), "ms")
        return Metric("measured_p90_latency", _ms(v.get("result_90.00_percentile_latency_ns")), "ms")
    estimate = v.get("early_stopping_latency_ms") if v.get("early_stopping_met") else None
    if estimate is not None:
        return Metric("early_stopping_p99_query_latency", _ms(estimate), "ms")
    return Metric("measured_p99_query_latency", _ms(v.get("result_99.00_percentile_per_query_latency_ns")), "ms")


#: What each performance metric is, in words: the latency MLPerf reports is LoadGen's
#: early-stopping estimate of the percentile (a bound from the queries run), not the
#: percentile it measured, which ``latency_ms`` keeps beside it. (Results written before
#: these names say ``p90_latency``/``p99_query_latency`` for either; they get no label.)
METRIC_LABELS = {
    "samples_per_second": "samples/s",
    "completed_samples_per_second": "completed samples/s",
    "early_stopping_p90_latency": "early-stopping p90 estimate",
    "measured_p90_latency": "measured p90",
    "early_stopping_p99_query_latency": "early-stopping p99 per-query estimate",
    "measured_p99_query_latency": "measured p99 per query",
}
#: The measured percentile (a ``latency_ms`` key) beside each latency metric.
MEASURED_BESIDE = {"early_stopping_p90_latency": "p90", "early_stopping_p99_query_latency": "p99"}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _ms(ns: Any) -> float | None:
    return float(ns) / 1e6 if isinstance(ns, (int, float)) else None


#: Latency percentiles kept in result.json, and the LoadGen key fragment of each.
LATENCY_PERCENTILES = (("p50", "50.00"), ("p90", "90.00"), ("p95", "95.00"), ("p97", "97.00"), ("p99", "99.00"),
                       ("p99.9", "99.90"))


def latency_percentiles_ms(log: DetailLog, scenario: str) -> dict[str, float]:
    """A performance test's latency percentiles and mean in ms, as MLPerf reports them:
    per query for MultiStream, per sample otherwise. Empty when the log has none."""
    per_query = scenario == "MultiStream" and "result_99.00_percentile_per_query_latency_ns" in log.values
    infix = "_per_query" if per_query else ""
    out: dict[str, float] = {}
    for name, pct in LATENCY_PERCENTILES:
        value = log.values.get(f"result_{pct}_percentile{infix}_latency_ns")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value / 1e6
    mean = log.values.get(f"result_mean{'_query' if per_query else ''}_latency_ns")
    if isinstance(mean, (int, float)) and not isinstance(mean, bool):
        out["mean"] = mean / 1e6
    return out

