"""Compliance audits: the ``audit.config`` LoadGen runs them with, and their verification.

An audit is a performance-mode LoadGen test run with an audit config (TEST01: log a sample of
the responses; TEST04: issue one sample again and again), then checked against the accuracy
and performance runs it audits. This module writes the audit config from the model's rules
(the values of MLCommons' ``compliance/TEST01/<model>/audit.config`` and
``compliance/TEST04/audit.config``) and does what MLCommons' verification scripts do, printing
what they print, so ``verify_accuracy.txt`` and ``verify_performance.txt`` read as theirs:

- TEST01: ``compliance/TEST01/run_verification.py``, ``verify_accuracy.py`` (default mode: the
  first value of each response, read as ``--dtype``, compared by ``qsl_idx``),
  ``verify_performance.py`` (scores from the detail logs, within 10%, 20% for fast
  SingleStream/MultiStream) and, where the byte comparison fails, ``create_accuracy_baseline.sh``
  plus the accuracy script on both logs (``baseline_accuracy.txt``, ``compliance_accuracy.txt``).
- TEST04: ``compliance/TEST04/run_verification.py`` and ``verify_performance.py`` (scores from
  the summaries; the audit must not be more than 10%/20% faster than the run it audits).

The scripts' log parser also writes timestamped INFO lines into ``verify_performance.txt``;
those are not written here. Where TEST01's ``verify_performance.py`` would crash (a log that
reports errors: it prints a variable it never set), a ``WARNING`` line says what it meant to.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.rules import Rules

#: The audits mlpi runs, in the order a run does them.
AUDITS: tuple[str, ...] = ("TEST01", "TEST04")
#: LoadGen's ``TestMode.PerformanceOnly``: what ``*.*.mode = 2`` selects.
_PERFORMANCE_ONLY = 2
#: TEST01's accuracy-log sampling seed (the same in every model's audit.config).
TEST01_LOG_SEED = 720381539243781796
#: TEST04 issues this loaded sample for every query.
TEST04_SAMPLE_INDEX = 3
#: ``run_verification.py --dtype`` choices.
DTYPES: Mapping[str, Any] = {"byte": np.byte, "float32": np.float32, "int32": np.int32, "int64": np.int64}

_DETAIL_SCORE = {
    "Offline": "result_samples_per_second",
    "SingleStream": "early_stopping_latency_ss",
    "MultiStream": "early_stopping_latency_ms",
    "Server": "result_completed_samples_per_sec",
}


def parse_audits(values: Sequence[str]) -> list[str]:
    """``--audit`` values, case-insensitive, in run order; an unknown name is an error."""
    chosen: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip().upper()
            if name not in AUDITS:
                raise UsageError(f"unknown audit '{item.strip()}'", f"use one of {', '.join(AUDITS)}")
            chosen.append(name)
    return [a for a in AUDITS if a in chosen]


def audit_config_text(audit: str, rules: Rules) -> str:
    """The audit config of ``audit`` for a model with ``rules``: the settings of MLCommons' file."""
    if audit == "TEST01":
        if rules.audit_sampling_target is None:
            raise UsageError("this model declares no TEST01 sampling target", "run TEST01 only for a model that needs it")
        return (
            "# TEST01: accuracy-log sampling in a performance run (MLCommons compliance/TEST01)\n"
            f"*.*.mode = {_PERFORMANCE_ONLY}\n"
            f"*.*.accuracy_log_rng_seed = {TEST01_LOG_SEED}\n"
            f"*.*.accuracy_log_sampling_target = {rules.audit_sampling_target}\n"
        )
    if audit == "TEST04":
        lines = ["# TEST04: one sample issued for every query (MLCommons compliance/TEST04)"]
        for scenario in ("MultiStream", "Offline", "SingleStream", "Server"):
            lines += [
                f"*.{scenario}.mode = {_PERFORMANCE_ONLY}",
                f"*.{scenario}.performance_issue_unique = 0",
                f"*.{scenario}.performance_issue_same = 1",
                f"*.{scenario}.performance_issue_same_index = {TEST04_SAMPLE_INDEX}",
            ]
        return "\n".join(lines) + "\n"
    raise UsageError(f"unknown audit '{audit}'", f"use one of {', '.join(AUDITS)}")


def audit_settings(text: str) -> dict[str, str]:
    """``model.scenario.key -> value`` of an audit config's lines (comments dropped)."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


# -- TEST01: accuracy ------------------------------------------------------------------------

def _entries(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise UsageError(f"{path} is not a LoadGen accuracy log", "audit a run whose accuracy test finished")
    return data


def _first_value(hex_data: str, dtype: Any, path: Path) -> np.ndarray:
    raw = bytes.fromhex(hex_data)
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise UsageError(f"a response of {len(raw)} bytes in {path} is not made of {np.dtype(dtype).name} values",
                         "the model's response_dtype must be the type its responses are made of")
    return np.frombuffer(raw, dtype)


def verify_accuracy_text(reference_log: Path, test_log: Path, dtype: str) -> tuple[str, bool]:
    """``verify_accuracy.py -r REFERENCE -t TEST --dtype DTYPE``'s output, and whether it passed.

    Each response of the audit's log is compared, by its first value, with the response to the
    same sample before it: the accuracy run's, or the audit's own earlier one."""
    kind = DTYPES[dtype]
    reference = _entries(reference_log)
    test = _entries(test_log)
    seen: dict[int, str] = {}
    duplicates = acc_mismatch = matched = mismatch = missing = 0
    for entry in reference:
        idx, data = entry["qsl_idx"], entry["data"]
        if idx in seen:
            duplicates += 1
            acc_mismatch += seen[idx] != data
        else:
            seen[idx] = data
    for entry in test:
        idx = entry["qsl_idx"]
        value = _first_value(entry["data"], kind, test_log)
        if idx in seen:
            matched += 1
            before = _first_value(seen[idx], kind, reference_log)
            if before.size == 0 or value.size == 0:
                mismatch += before.size != value.size
            elif value[0] != before[0]:
                mismatch += 1
        else:
            missing += 1
        seen[idx] = entry["data"]
    passed = mismatch == 0 and matched > 0
    lines = [
        "Verifying accuracy. This might take a while...",
        "Reading accuracy mode results...",
        "Reading performance mode results...",
        f"num_acc_log_entries = {len(reference)}",
        f"num_acc_log_duplicate_keys = {duplicates}",
        f"num_acc_log_data_mismatch = {acc_mismatch}",
        f"num_perf_log_entries = {len(test)}",
        f"num_perf_log_qsl_idx_match = {matched}",
        f"num_perf_log_data_mismatch = {mismatch}",
        f"num_missing_qsl_idxs = {missing}",
        "TEST PASS" if passed else "TEST FAIL",
        "",
    ]
    return "\n".join(lines) + "\n", passed


def write_baseline_log(accuracy_log: Path, test_log: Path, out: Path) -> Path:
    """``create_accuracy_baseline.sh``: the accuracy run's entries for the samples the audit
    logged, as a log of its own (``mlperf_log_accuracy_baseline.json``)."""
    wanted = {entry["qsl_idx"] for entry in _entries(test_log)}
    kept = [entry for entry in _entries(accuracy_log) if entry["qsl_idx"] in wanted]
    body = ",\n".join(
        f'{{ "seq_id" : {e["seq_id"]}, "qsl_idx" : {e["qsl_idx"]}, "data" : "{e["data"]}" }}' for e in kept
    )
    path = out / "mlperf_log_accuracy_baseline.json"
    path.write_text("[\n" + body + ("\n" if kept else "") + "]\n", encoding="utf-8")
    return path


# -- performance -----------------------------------------------------------------------------

def _first_values(path: Path) -> dict[str, Any]:
    """Each key's first value in a detail log, as MLCommons' ``MLPerfLog`` reads it."""
    values: dict[str, Any] = {}
    errors = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(":::MLLOG"):
                entry = json.loads(line[len(":::MLLOG"):])
                values.setdefault(entry["key"], entry["value"])
                errors += bool(entry.get("metadata", {}).get("is_error"))
    values.setdefault("num_errors", errors)
    return values


class _Fail(Exception):
    """A verification script's ``sys.exit(message)``."""


def _detail_score(path: Path) -> tuple[str, float, Any, list[str]]:
    log = _first_values(path)
    scenario = log.get("effective_scenario")
    if scenario not in _DETAIL_SCORE or log.get(_DETAIL_SCORE[scenario]) is None:
        raise _Fail(f"TEST FAIL: Invalid results in {path}")
    if log.get("result_validity") != "VALID":
        raise _Fail(f"TEST FAIL: Invalid results in {path}")
    warnings = [f"WARNING: {log['num_errors']} ERROR reported in {path}"] if log.get("num_errors") else []
    score = float(log[_DETAIL_SCORE[scenario]])
    return scenario, score, log.get("effective_target_latency_ns") if scenario == "Server" else None, warnings


def _threshold(scenario: str, reference_score: float) -> float:
    fast = (scenario == "SingleStream" and reference_score <= 200000) or (
        scenario == "MultiStream" and reference_score <= 1600000)
    return 0.20 if fast else 0.10


def _with_exit(lines: list[str], message: str | None) -> str:
    """A script's file: what it printed, then its exit message (Python flushes standard output
    before it writes a ``sys.exit`` message to standard error)."""
    return "".join(f"{line}\n" for line in lines + ([message] if message else []))


def verify_performance_test01_text(reference_detail: Path, test_detail: Path) -> tuple[str, bool]:
    """TEST01's ``verify_performance.py -r REFERENCE_DETAIL -t TEST_DETAIL`` output, and
    whether it passed: the audit's score within 10% (20%) of the run's, both VALID."""
    printed = ["Verifying performance."]
    try:
        ref_scenario, ref_score, ref_latency, warned = _detail_score(reference_detail)
        printed += warned
        test_scenario, test_score, test_latency, warned = _detail_score(test_detail)
        printed += warned
        if test_scenario != ref_scenario:
            raise _Fail("TEST FAIL: Test and reference scenarios do not match!")
        if ref_scenario == "Server" and test_latency != ref_latency:
            raise _Fail("TEST FAIL: Server target latency mismatch")
    except _Fail as fail:
        return _with_exit(printed, str(fail)), False
    printed += [f"Reference score = {ref_score}", f"Test score = {test_score}"]
    threshold = _threshold(ref_scenario, ref_score)
    passed = ref_score * (1 - threshold) <= test_score <= ref_score * (1 + threshold)
    printed.append("TEST PASS" if passed else "TEST FAIL: Test score invalid")
    return _with_exit(printed, None), passed


@dataclass
class _Summary:
    mode: str = ""
    score: Any = 0
    target_latency: str | None = None
    warnings: list[str] = field(default_factory=list)


def _summary_score(path: Path, which: str, reference_latency: str | None = None) -> _Summary:
    """One summary log as TEST04's ``verify_performance.py`` reads it, line by line; its
    ``sys.exit`` messages raise :class:`_Fail`."""
    found = _Summary()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if re.match("Scenario", line):
                found.mode = line.split(": ", 1)[1].strip()
                continue
            percentile = {"SingleStream": "(90th|90.0th|99.9th)", "MultiStream": "(99th|99.0th)"}.get(found.mode)
            if percentile and re.match(f".*Early stopping {percentile} percentile estimate", line):
                found.score = 1e9 / float(line.split(": ", 1)[1].strip())
                continue
            if found.mode == "Server" and re.match("Completed samples per second", line):
                found.score = line.split(": ", 1)[1].strip()
                continue
            if found.mode == "Offline" and re.match("Samples per second", line):
                found.score = line.split(": ", 1)[1].strip()
                continue
            if re.match("Result is", line) and line.split(": ", 1)[1].strip() == "INVALID":
                raise _Fail(f"TEST FAIL: {which} results are invalid")
            if re.match("\\d+ ERROR", line):
                error = line.split(" ", 1)[0].strip()
                found.warnings.append(f"WARNING: {error} ERROR reported in {which.lower()} results")
    return found


def verify_performance_test04_text(reference_summary: Path, test_summary: Path) -> tuple[str, bool]:
    """TEST04's ``verify_performance.py -r REFERENCE_SUMMARY -t TEST_SUMMARY`` output, and
    whether it passed: the audit, one sample issued again and again, no more than 10% (20%)
    faster than the run (a SUT that caches results is)."""
    printed = ["Verifying performance."]
    try:
        ref = _summary_score(reference_summary, "Reference")
        printed += ref.warnings
        test = _summary_score(test_summary, "Test")
        printed += test.warnings
        if test.mode != ref.mode:
            raise _Fail("Test and reference scenarios do not match!")
    except _Fail as fail:
        return _with_exit(printed, str(fail)), False
    printed += [f"reference score = {ref.score}", f"test score = {test.score}"]
    threshold = _threshold(ref.mode, float(ref.score))
    passed = float(test.score) < float(ref.score) * (1 + threshold)
    printed.append("TEST PASS" if passed else "TEST FAIL: Test score invalid")
    return _with_exit(printed, None), passed


# -- the audit's folder, as a submission holds it --------------------------------------------

@dataclass
class Verification:
    """What an audit's verification found; ``accuracy_passed`` is None for TEST04."""

    audit: str
    passed: bool
    performance_passed: bool
    accuracy_passed: bool | None = None
    fallback: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"test": self.audit, "passed": self.passed, "performance_passed": self.performance_passed,
                "accuracy_passed": self.accuracy_passed, "fallback": self.fallback}


def lay_out(audit: str, run_logs: Path, folder: Path) -> None:
    """Copy the audit run's logs where a submission's ``TEST0x`` folder holds them
    (``performance/run_1``; TEST01's accuracy log in ``accuracy``), as run_verification.py does."""
    performance = folder / "performance" / "run_1"
    performance.mkdir(parents=True, exist_ok=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(run_logs / name, performance / name)
    if audit == "TEST01":
        accuracy = folder / "accuracy"
        accuracy.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_logs / "mlperf_log_accuracy.json", accuracy / "mlperf_log_accuracy.json")


__all__ = [
    "AUDITS", "DTYPES", "Verification", "audit_config_text", "audit_settings", "lay_out", "parse_audits",
    "verify_accuracy_text", "verify_performance_test01_text", "verify_performance_test04_text", "write_baseline_log",
]
