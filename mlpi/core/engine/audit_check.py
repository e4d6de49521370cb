"""An audit test's verification, end to end: compare its logs with the run it audits, lay
out the submission's ``TEST0x`` folder, and for TEST01 fall back to comparing accuracy
scores where the responses differ (MLCommons ``compliance/TEST01/README.md``, part III).

The comparisons themselves are in :mod:`mlpi.core.engine.compliance`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.rules import Rules
from mlpi.core.engine.compliance import (
    Verification,
    lay_out,
    verify_accuracy_text,
    verify_performance_test01_text,
    verify_performance_test04_text,
    write_baseline_log,
)

ACCURACY_LOG = "mlperf_log_accuracy.json"
DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"

#: Scores one accuracy log with the model's scorer (an :class:`AccuracyResult`).
Scorer = Callable[[Path], Any]


def reference_files(audit: str, scenario_dir: Path) -> list[Path]:
    """The files of the audited run that ``audit`` compares with."""
    performance = scenario_dir / "performance"
    if audit == "TEST01":
        return [scenario_dir / "accuracy" / ACCURACY_LOG, performance / DETAIL_LOG]
    return [performance / SUMMARY_LOG]


def verify(audit: str, rules: Rules, reference: Path, logs: Path, folder: Path, scorer: Scorer | None) -> Verification:
    """Verify the audit whose LoadGen logs are in ``logs`` against the audited run's scenario
    folder ``reference``; write ``verify_*.txt`` and the logs into ``folder``."""
    missing = [str(path) for path in reference_files(audit, reference) if not path.is_file()]
    if missing:
        raise UsageError(f"{audit} has nothing to compare with: {', '.join(missing)} is missing",
                         "audit a run whose performance and accuracy tests of this scenario finished")
    check_applied(audit, rules, logs / DETAIL_LOG)
    performance = reference / "performance"
    if audit == "TEST04":
        text, performance_ok = verify_performance_test04_text(performance / SUMMARY_LOG, logs / SUMMARY_LOG)
        (folder / "verify_performance.txt").write_text(text, encoding="utf-8")
        lay_out(audit, logs, folder)
        return Verification(audit, performance_ok, performance_ok)
    reference_log = reference / "accuracy" / ACCURACY_LOG
    text, accuracy_ok = verify_accuracy_text(reference_log, logs / ACCURACY_LOG, rules.response_dtype)
    (folder / "verify_accuracy.txt").write_text(text, encoding="utf-8")
    text, performance_ok = verify_performance_test01_text(performance / DETAIL_LOG, logs / DETAIL_LOG)
    (folder / "verify_performance.txt").write_text(text, encoding="utf-8")
    lay_out(audit, logs, folder)
    fallback = None
    if not accuracy_ok:
        fallback = score_fallback(rules, reference_log, logs, folder / "accuracy", scorer)
        accuracy_ok = bool(fallback.get("passed"))
    return Verification(audit, accuracy_ok and performance_ok, performance_ok, accuracy_ok, fallback)


def check_applied(audit: str, rules: Rules, detail: Path) -> None:
    """Refuse an audit whose settings LoadGen did not take (its detail log says what it used)."""
    from mlpi.core.engine.scenario import DetailLog

    values = DetailLog.read(detail).values
    key, want = (("effective_performance_issue_same", True) if audit == "TEST04"
                 else ("effective_accuracy_log_sampling_target", rules.audit_sampling_target))
    if values.get(key) != want:
        raise UsageError(f"LoadGen did not run {audit}'s settings: {detail} logs {key} = {values.get(key)!r}, not {want!r}",
                         f"see the audit config next to it; this is a bug in mlpi's {audit} setup")


def score_fallback(rules: Rules, reference_log: Path, logs: Path, accuracy_dir: Path, scorer: Scorer | None) -> dict[str, Any]:
    """TEST01 part III: score the accuracy run's responses to the samples the audit logged
    (``baseline_accuracy.txt``) and the audit's own (``compliance_accuracy.txt``); they must
    agree within the model's tolerance (1% for a 99% target, 0.1% for 99.9%)."""
    if scorer is None or rules.quality is None:
        return {"passed": False, "reason": "the responses differ and the data has no ground truth to compare scores with"}
    baseline = scorer(write_baseline_log(reference_log, logs / ACCURACY_LOG, logs))
    compliance = scorer(logs / ACCURACY_LOG)
    (accuracy_dir / "baseline_accuracy.txt").write_text(baseline.report + "\n", encoding="utf-8")
    (accuracy_dir / "compliance_accuracy.txt").write_text(compliance.report + "\n", encoding="utf-8")
    (accuracy_dir / "accuracy.txt").write_text(compliance.report + "\n", encoding="utf-8")
    allowed = round((1 - rules.quality.fraction) * 100, 6)
    if not baseline.value or not compliance.value:
        return {"passed": False, "baseline": baseline.report, "compliance": compliance.report,
                "allowed_percent": allowed, "reason": "a score of 0 cannot be compared"}
    delta = abs(1 - baseline.value / compliance.value) * 100
    return {"passed": delta <= allowed, "baseline": baseline.report, "compliance": compliance.report,
            "delta_percent": delta, "allowed_percent": allowed}
