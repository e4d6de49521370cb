"""A latency figure says what it is: LoadGen's early-stopping estimate (what MLPerf reports)
is named as such, and the percentile LoadGen measured is shown beside it, labelled."""

from __future__ import annotations

from mlpi.cli_output import labelled_figure
from mlpi.core.engine.scenario import DetailLog, performance_metric
from mlpi.core.results.schema import TestResult


def _log(**values: object) -> DetailLog:
    return DetailLog(values=dict(values))


def test_single_stream_reports_the_estimate_under_its_own_name() -> None:
    log = _log(early_stopping_met=True, early_stopping_latency_ss=185_578_000, **{"result_90.00_percentile_latency_ns": 146_209_000})
    metric = performance_metric("SingleStream", log)
    assert (metric.name, metric.value, metric.unit) == ("early_stopping_p90_latency", 185.578, "ms")


def test_without_an_estimate_the_measured_percentile_is_named_measured() -> None:
    log = _log(early_stopping_met=False, early_stopping_latency_ss=185_578_000,
               **{"result_90.00_percentile_latency_ns": 146_209_000})
    metric = performance_metric("SingleStream", log)
    assert (metric.name, metric.value) == ("measured_p90_latency", 146.209)


def test_multistream_estimate_is_per_query() -> None:
    log = _log(early_stopping_met=True, early_stopping_latency_ms=6_043_634_000,
               **{"result_99.00_percentile_per_query_latency_ns": 1_911_653_000})
    metric = performance_metric("MultiStream", log)
    assert (metric.name, metric.value) == ("early_stopping_p99_query_latency", 6043.634)
    log.values["early_stopping_met"] = False
    assert performance_metric("MultiStream", log).name == "measured_p99_query_latency"


def test_terminal_figure_labels_the_estimate_and_shows_the_measured_percentile() -> None:
    test = TestResult(scenario="SingleStream", mode="performance", status="ok", valid=True,
                      metric="early_stopping_p90_latency", value=185.578, unit="ms", latency_ms={"p90": 146.209})
    assert labelled_figure(test) == "185.578 ms early-stopping p90 estimate (measured p90 146.209 ms)"
    measured = TestResult(scenario="SingleStream", mode="performance", status="ok", metric="measured_p90_latency",
                          value=146.209, unit="ms", latency_ms={"p90": 146.209})
    assert labelled_figure(measured) == "146.209 ms measured p90"
    legacy = TestResult(scenario="SingleStream", mode="performance", status="ok", metric="p90_latency",
                        value=185.578, unit="ms", latency_ms={"p90": 146.209})
    assert labelled_figure(legacy) == "185.578 ms"  # an older result's name says neither: no label
    offline = TestResult(scenario="Offline", mode="performance", status="ok", metric="samples_per_second",
                         value=10.0, unit="samples/s")
    assert labelled_figure(offline) == offline.figure()
