"""Compliance audits: ``mlpi run --audit TEST01|TEST04`` on real LoadGen runs, checked against
MLCommons' own verification scripts (``compliance/TEST01``, ``compliance/TEST04`` in
``../shared/mlcommons-inference``) on the same logs, character for character, and against
backends that cheat the way the audits exist to catch (:mod:`mlpi.testing.audit_cheats`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_error, only_run_dir, run_cli

from mlpi.core.contract.errors import UsageError
from mlpi.core.engine import compliance
from mlpi.core.engine.audit_check import score_fallback
from mlpi.core.engine.audit_plan import check_audits
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.registry import Registry
from mlpi.testing import audit_cheats
from mlpi.testing.tiny_models import resnet_signature_classifier

MLCOMMONS = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference"
COMPLIANCE = MLCOMMONS / "compliance"
needs_mlcommons = pytest.mark.skipif(not COMPLIANCE.is_dir(), reason=f"MLCommons' compliance scripts are not at {COMPLIANCE}")
LABELS = list(range(0, 400, 20))  # 20 samples, each its own class


def classifier_data(folder: Path) -> tuple[Path, Path]:
    """A resnet50-signature classifier and 20 images it classifies right: 100% by construction."""
    model = resnet_signature_classifier(folder / "classifier.onnx")
    images = np.zeros((len(LABELS), 3, 224, 224), np.float32)
    for i, label in enumerate(LABELS):
        images.reshape(len(LABELS), -1)[i, label + 1] = 1.0  # the model's class k+1 is ImageNet's k
    data = folder / "data.npz"
    np.savez(data, input_tensor_0=images, labels=np.array(LABELS, np.int64))
    return model, data


def run_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "resnet50", "--model-path", str(model), "--dataset", "numpy", "--dataset-path", str(data),
            "--duration", "2", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One honest run on onnxruntime: Offline performance and accuracy, then TEST01 and TEST04."""
    folder = tmp_path_factory.mktemp("audit-honest")
    model, data = classifier_data(folder)
    proc = run_cli(run_args(model, data, folder / "r", "-s", "Offline", "--mode", "both", "--audit", "TEST01",
                            "--audit", "TEST04"), cwd=folder)
    assert "Traceback" not in proc.stderr, proc.stderr
    run_dir = only_run_dir(folder / "r")
    result = json.loads((run_dir / "result.json").read_text())
    return {"proc": proc, "run_dir": run_dir, "result": result, "folder": folder, "model": model, "data": data,
            "audits": {a["test"]: a for a in result["audits"]}}


def test_audits_are_recorded_after_the_tests_they_compare_with(honest: dict[str, Any]) -> None:
    result = honest["result"]
    assert [(t["scenario"], t["mode"]) for t in result["tests"]] == [("Offline", "performance"), ("Offline", "accuracy")]
    assert sorted(honest["audits"]) == ["TEST01", "TEST04"]
    for name, audit in honest["audits"].items():
        assert audit["status"] == "ok" and audit["scenario"] == "Offline" and audit["dir"] == f"Offline/{name}"
        assert audit["reference_run"] == honest["run_dir"].name
        assert audit["metric"] == "samples_per_second" and audit["value"] > 0
        assert audit["passed"] == audit["verification"]["passed"]
    # the same responses in the performance run: TEST01's byte comparison passes on a deterministic runtime
    assert honest["audits"]["TEST01"]["verification"]["accuracy_passed"] is True
    assert honest["audits"]["TEST01"]["verification"]["fallback"] is None
    assert "[3/4] Offline TEST01" in honest["proc"].stderr and "[4/4] Offline TEST04" in honest["proc"].stderr
    assert "Offline TEST01: " in honest["proc"].stdout and "Offline TEST04: " in honest["proc"].stdout


def test_audit_folders_are_laid_out_as_a_submission_holds_them(honest: dict[str, Any]) -> None:
    def files(folder: Path) -> list[str]:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.parts[-2] != "run")

    offline = honest["run_dir"] / "Offline"
    assert files(offline / "TEST01") == [
        "accuracy/mlperf_log_accuracy.json", "performance/run_1/mlperf_log_detail.txt",
        "performance/run_1/mlperf_log_summary.txt", "verify_accuracy.txt", "verify_performance.txt",
    ]
    assert files(offline / "TEST04") == [
        "performance/run_1/mlperf_log_detail.txt", "performance/run_1/mlperf_log_summary.txt", "verify_performance.txt",
    ]
    for name in ("TEST01", "TEST04"):
        run = offline / name / "run"
        assert (run / "mlperf_log_detail.txt").read_bytes() == (
            offline / name / "performance" / "run_1" / "mlperf_log_detail.txt").read_bytes()


def test_the_audit_config_is_passed_by_path_and_taken(honest: dict[str, Any]) -> None:
    assert not (honest["folder"] / "audit.config").exists()  # nothing left in the working directory
    offline = honest["run_dir"] / "Offline"
    detail01 = (offline / "TEST01" / "run" / "mlperf_log_detail.txt").read_text()
    detail04 = (offline / "TEST04" / "run" / "mlperf_log_detail.txt").read_text()
    assert "Found Audit Config file" in detail01 and "Found Audit Config file" in detail04
    assert '"key": "effective_accuracy_log_sampling_target", "value": 4096' in detail01
    assert '"key": "effective_performance_issue_same", "value": true' in detail04
    assert "Found Audit Config file" not in (offline / "performance" / "mlperf_log_detail.txt").read_text()


def official(script: Path, *args: str) -> str:
    """What an MLCommons verification script writes (standard output and error, as
    run_verification.py captures them), without its log parser's timestamped INFO lines."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=script.parent, timeout=120, check=False)
    return "".join(line for line in proc.stdout.splitlines(keepends=True) if not re.match(r"\[.* log_parser\.py:\d+ ", line))


@needs_mlcommons
def test_verification_files_equal_mlcommons_scripts_on_the_run(honest: dict[str, Any]) -> None:
    offline = honest["run_dir"] / "Offline"
    t01, t04 = offline / "TEST01", offline / "TEST04"
    assert (t01 / "verify_accuracy.txt").read_text() == official(
        COMPLIANCE / "TEST01" / "verify_accuracy.py", "--dtype", "float32",
        "-r", str(offline / "accuracy" / "mlperf_log_accuracy.json"), "-t", str(t01 / "run" / "mlperf_log_accuracy.json"))
    assert (t01 / "verify_performance.txt").read_text() == official(
        COMPLIANCE / "TEST01" / "verify_performance.py",
        "-r" + str(offline / "performance" / "mlperf_log_detail.txt"), "-t" + str(t01 / "run" / "mlperf_log_detail.txt"))
    assert (t04 / "verify_performance.txt").read_text() == official(
        COMPLIANCE / "TEST04" / "verify_performance.py",
        "-r" + str(offline / "performance" / "mlperf_log_summary.txt"), "-t" + str(t04 / "run" / "mlperf_log_summary.txt"))


def _edit_detail(path: Path, out: Path, **changes: Any) -> Path:
    """The detail log with these keys' values changed (added at the end where absent)."""
    lines, seen = [], set()
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith(":::MLLOG"):
            entry = json.loads(line[len(":::MLLOG"):])
            if entry["key"] in changes:
                entry["value"] = changes[entry["key"]]
                seen.add(entry["key"])
                line = ":::MLLOG " + json.dumps(entry) + "\n"
        lines.append(line)
    for key in changes.keys() - seen:
        lines.append(":::MLLOG " + json.dumps({"key": key, "value": changes[key], "metadata": {"is_error": False}}) + "\n")
    out.write_text("".join(lines))
    return out


def _edit_summary(path: Path, out: Path, pattern: str, replacement: str) -> Path:
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.MULTILINE)
    assert count, pattern
    out.write_text(text)
    return out


def _edit_accuracy(path: Path, out: Path, qsl_idx: int) -> Path:
    """The log with the response to ``qsl_idx`` changed (another class)."""
    entries = json.loads(path.read_text())
    for entry in entries:
        if entry["qsl_idx"] == qsl_idx:
            entry["data"] = np.array([999.0], np.float32).tobytes().hex().upper()
    out.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")
    return out


@needs_mlcommons
@pytest.mark.parametrize("case", ["changed_response", "invalid_reference", "test_faster", "test_invalid", "other_scenario"])
def test_verdicts_equal_mlcommons_scripts_on_broken_logs(honest: dict[str, Any], tmp_path: Path, case: str) -> None:
    offline = honest["run_dir"] / "Offline"
    ref_acc, ref_detail = offline / "accuracy" / "mlperf_log_accuracy.json", offline / "performance" / "mlperf_log_detail.txt"
    ref_summary = offline / "performance" / "mlperf_log_summary.txt"
    test_acc, test_detail = offline / "TEST01" / "run" / "mlperf_log_accuracy.json", offline / "TEST01" / "run" / "mlperf_log_detail.txt"
    test_summary = offline / "TEST04" / "run" / "mlperf_log_summary.txt"
    if case == "changed_response":
        first = json.loads(test_acc.read_text())[0]["qsl_idx"]
        test_acc = _edit_accuracy(test_acc, tmp_path / "acc.json", first)
        ours, passed = compliance.verify_accuracy_text(ref_acc, test_acc, "float32")
        assert not passed and "num_perf_log_data_mismatch = 0" not in ours
        assert ours == official(COMPLIANCE / "TEST01" / "verify_accuracy.py", "--dtype", "float32",
                                "-r", str(ref_acc), "-t", str(test_acc))
        return
    if case == "invalid_reference":
        ref_detail = _edit_detail(ref_detail, tmp_path / "detail.txt", result_validity="INVALID")
        # the honest run may be INVALID already on a loaded machine: the reference ends INVALID either way
        ref_summary = _edit_summary(ref_summary, tmp_path / "summary.txt", r"^Result is : (IN)?VALID", "Result is : INVALID")
    elif case == "test_faster":
        value = json.loads(next(line for line in test_detail.read_text().splitlines()
                            if '"result_samples_per_second"' in line)[len(":::MLLOG"):])["value"]
        test_detail = _edit_detail(test_detail, tmp_path / "detail.txt", result_samples_per_second=value * 2)
        test_summary = _edit_summary(test_summary, tmp_path / "summary.txt", r"^Samples per second: .*$", "Samples per second: 99999999")
    elif case == "test_invalid":
        test_detail = _edit_detail(test_detail, tmp_path / "detail.txt", result_validity="INVALID")
        test_summary = _edit_summary(test_summary, tmp_path / "summary.txt", r"^Result is : (IN)?VALID", "Result is : INVALID")
    elif case == "other_scenario":
        test_detail = _edit_detail(test_detail, tmp_path / "detail.txt", effective_scenario="SingleStream",
                                   early_stopping_latency_ss=12345)
    ours01, passed01 = compliance.verify_performance_test01_text(ref_detail, test_detail)
    assert not passed01
    assert ours01 == official(COMPLIANCE / "TEST01" / "verify_performance.py", "-r" + str(ref_detail), "-t" + str(test_detail))
    if case != "other_scenario":
        ours04, passed04 = compliance.verify_performance_test04_text(ref_summary, test_summary)
        assert not passed04
        assert ours04 == official(COMPLIANCE / "TEST04" / "verify_performance.py", "-r" + str(ref_summary),
                                  "-t" + str(test_summary))


@needs_mlcommons
def test_audit_configs_hold_mlcommons_settings() -> None:
    registry = Registry(PluginsConfig.load(None))
    checked = 0
    for name in registry.names("models"):
        rules = registry.model(name).rules
        if "TEST01" in rules.audits:
            theirs = compliance.audit_settings((COMPLIANCE / "TEST01" / rules.loadgen_key / "audit.config").read_text())
            assert compliance.audit_settings(compliance.audit_config_text("TEST01", rules)) == theirs, name
            checked += 1
        if "TEST04" in rules.audits:
            theirs = {k: v for k, v in compliance.audit_settings((COMPLIANCE / "TEST04" / "audit.config").read_text()).items()
                      if k.startswith("*.")}
            assert compliance.audit_settings(compliance.audit_config_text("TEST04", rules)) == theirs, name
    assert checked >= 5  # resnet50, retinanet, bert-99(.9), 3d-unet-99(.9), dlrm-v2-99(.9), rnnt


def test_models_declare_the_audits_the_checker_asks_for() -> None:
    registry = Registry(PluginsConfig.load(None))
    assert registry.model("resnet50").rules.audits == ("TEST01", "TEST04")
    for name in ("bert-99", "3d-unet-99.9", "dlrm-v2-99", "retinanet"):
        assert registry.model(name).rules.audits == ("TEST01",), name


# -- cheats the audits must catch ------------------------------------------------------------

@pytest.fixture(scope="module")
def cheats_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cheats-site")
    dist = folder / "mlpi_audit_cheats-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlpi-audit-cheats\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(audit_cheats.ENTRY_POINTS)
    return folder


def _cheat_env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]),
            "COLUMNS": "300"}


def test_test01_fails_a_backend_whose_performance_answers_differ(honest: dict[str, Any], cheats_site: Path,
                                                                 tmp_path: Path) -> None:
    proc = run_cli(run_args(honest["model"], honest["data"], tmp_path / "r", "-b", "unsteady", "-o", f"state_dir={tmp_path / 's'}",
                            "-o", "every=2", "-s", "Offline", "--mode", "both", "--audit", "TEST01"),
                   cwd=tmp_path, env=_cheat_env(cheats_site))
    assert proc.returncode == 3, proc.stderr  # INVALID: the audit failed
    result = json.loads((only_run_dir(tmp_path / "r") / "result.json").read_text())
    assert [t["accuracy"]["value"] for t in result["tests"] if t["mode"] == "accuracy"] == [100.0]  # honest there
    (audit,) = result["audits"]
    check = audit["verification"]
    assert audit["passed"] is False and check["accuracy_passed"] is False
    folder = only_run_dir(tmp_path / "r") / "Offline" / "TEST01"
    assert "TEST FAIL" in (folder / "verify_accuracy.txt").read_text()
    # the fallback scored both logs, as MLCommons' TEST01 part III does, and they disagree
    assert (folder / "accuracy" / "baseline_accuracy.txt").read_text() == "accuracy=100.000%, good=20, total=20\n"
    compliance_line = (folder / "accuracy" / "compliance_accuracy.txt").read_text()
    assert compliance_line.startswith("accuracy=") and compliance_line != "accuracy=100.000%, good=20, total=20\n"
    assert (folder / "accuracy" / "accuracy.txt").read_text() == compliance_line
    assert check["fallback"]["delta_percent"] > check["fallback"]["allowed_percent"] == 1
    assert "Offline TEST01: FAIL" in proc.stdout


def test_test04_fails_a_backend_that_caches_results(honest: dict[str, Any], cheats_site: Path, tmp_path: Path) -> None:
    # 20 ms a batch it computes, nothing for one it answers from its cache: a gap no load on the
    # machine closes (at 3 ms, a loaded 2-core machine's own delays hid it now and then)
    proc = run_cli(run_args(honest["model"], honest["data"], tmp_path / "r", "-b", "caching", "-o", "delay_ms=20",
                            "-s", "SingleStream", "--audit", "TEST04"),
                   cwd=tmp_path, env=_cheat_env(cheats_site))
    assert proc.returncode == 3, proc.stderr
    result = json.loads((only_run_dir(tmp_path / "r") / "result.json").read_text())
    (audit,) = result["audits"]
    assert audit["passed"] is False and audit["verification"]["performance_passed"] is False
    (performance,) = result["tests"]
    assert audit["value"] < performance["value"] / 2  # one sample again and again: answered from the cache
    text = (only_run_dir(tmp_path / "r") / "SingleStream" / "TEST04" / "verify_performance.txt").read_text()
    # much faster than calibrated: either LoadGen ran out of queries before the min duration
    # (INVALID), or the score is more than 20% above the run's
    assert text.rstrip().splitlines()[-1] in ("TEST FAIL: Test results are invalid", "TEST FAIL: Test score invalid"), text


def test_an_audit_against_an_earlier_run_runs_only_the_audit(honest: dict[str, Any], tmp_path: Path) -> None:
    proc = run_cli(run_args(honest["model"], honest["data"], tmp_path / "r", "-s", "Offline", "--audit", "TEST04",
                            "--against", str(honest["run_dir"])), cwd=tmp_path)
    assert proc.returncode in (0, 3), proc.stderr
    result = json.loads((only_run_dir(tmp_path / "r") / "result.json").read_text())
    assert result["tests"] == []
    (audit,) = result["audits"]
    assert audit["reference_run"] == honest["run_dir"].name and audit["status"] == "ok"
    assert "[1/1] Offline TEST04" in proc.stderr


# -- what cannot run is refused before anything does -------------------------------------------

def test_fallback_passes_scores_within_the_models_tolerance(tmp_path: Path) -> None:
    from mlpi.core.contract.accuracy import AccuracyResult

    registry = Registry(PluginsConfig.load(None))
    rules = registry.model("resnet50").rules
    log = tmp_path / "run"
    log.mkdir()
    entry = '{ "seq_id" : 0, "qsl_idx" : 4, "data" : "0000803F" }'
    (log / "mlperf_log_accuracy.json").write_text(f"[\n{entry}\n]\n")
    reference = tmp_path / "ref.json"
    reference.write_text(f"[\n{entry},\n" + '{ "seq_id" : 1, "qsl_idx" : 5, "data" : "00000040" }\n]\n')
    scores = iter([76.0, 75.5])  # baseline, then the audit's: 0.66% apart, 1% allowed

    def scorer(path: Path) -> AccuracyResult:
        value = next(scores)
        return AccuracyResult("top-1", value, "%", (f"accuracy={value:.3f}%",))

    accuracy_dir = tmp_path / "accuracy"
    accuracy_dir.mkdir()
    found = score_fallback(rules, reference, log, accuracy_dir, scorer)
    assert found["passed"] is True and found["delta_percent"] == pytest.approx(abs(1 - 76.0 / 75.5) * 100)
    baseline = json.loads((log / "mlperf_log_accuracy_baseline.json").read_text())
    assert [e["qsl_idx"] for e in baseline] == [4]  # only the samples the audit logged
    assert (accuracy_dir / "baseline_accuracy.txt").read_text() == "accuracy=76.000%\n"
    assert score_fallback(rules, reference, log, accuracy_dir, None)["passed"] is False


def test_audit_requests_are_checked_before_anything_runs() -> None:
    registry = Registry(PluginsConfig.load(None))
    resnet, bert = registry.model("resnet50"), registry.model("bert-99")
    data = ("numpy", None, None)
    assert check_audits(["test04", "TEST01"], resnet, ["performance", "accuracy"], ["Offline"], None, None, data) == [
        "TEST01", "TEST04"]
    with pytest.raises(UsageError, match="bert-99 needs no TEST04: its submission needs TEST01"):
        check_audits(["TEST04"], bert, ["performance"], ["Offline"], None, None, data)
    with pytest.raises(UsageError, match="TEST01 compares with a performance and an accuracy test") as info:
        check_audits(["TEST01"], resnet, ["performance"], ["Offline"], None, None, data)
    assert "--mode both" in (info.value.hint or "") and "--against" in (info.value.hint or "")
    assert check_audits(["TEST04"], resnet, ["performance"], ["Offline"], None, None, data) == ["TEST04"]
    with pytest.raises(UsageError, match="unknown audit 'TEST05'"):
        check_audits(["TEST05"], resnet, ["performance"], ["Offline"], None, None, data)
    with pytest.raises(UsageError, match="has no compliance audits"):
        check_audits(["TEST01"], registry.model("ssd-mobilenet"), ["performance", "accuracy"], ["Offline"], None, None, data)


def test_against_another_model_or_missing_tests_is_refused(honest: dict[str, Any], tmp_path: Path, model_dir: Path) -> None:
    base = ["run", "--model", "resnet50", "--dataset", "numpy", "--dataset-path", str(honest["data"]),
            "--output", str(tmp_path / "r")]
    import onnx

    graph = onnx.load(str(honest["model"]))
    graph.doc_string = "another file of the same signature"
    other = tmp_path / "other.onnx"
    onnx.save(graph, str(other))
    proc = run_cli([*base, "--model-path", str(other), "--audit", "TEST01", "--against", str(honest["run_dir"])], cwd=tmp_path)
    one_error(proc, "ran another model file")
    proc = run_cli([*base, "--model-path", str(honest["model"]), "-s", "SingleStream", "--audit", "TEST01",
                    "--against", str(honest["run_dir"])], cwd=tmp_path)
    one_error(proc, "has no finished SingleStream performance or accuracy test")
    proc = run_cli([*base, "--model-path", str(honest["model"]), "--against", str(honest["run_dir"])], cwd=tmp_path)
    one_error(proc, "no --audit was given")
    proc = run_cli([*base, "--model-path", str(honest["model"]), "--audit", "TEST01", "--against", "no-such-run"], cwd=tmp_path)
    one_error(proc, "--against no-such-run")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # nothing ran
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
