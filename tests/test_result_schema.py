"""result.json's typed schema: round trips, version 1 files, one clear error for a damaged
file, accuracy in its own unit and direction, and old run directories through the CLI."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from conftest import run_cli

from mlpi.core.contract.errors import MlpiError, ResultError
from mlpi.core.results.rundir import (
    SCHEMA_VERSION,
    format_figure,
    write_bytes_atomic,
    write_json_atomic,
)
from mlpi.core.results.schema import (
    AccuracyRecord,
    BackendInfo,
    ErrorRecord,
    ModelInfo,
    RunResult,
    TestResult,
    load_result,
)

#: A result.json as mlpi wrote it before the schema had a version 2 (``git show
#: 077b787:mlpi/core/runner.py``): a real resnet50 run, its system description trimmed.
V1_RESULT: dict[str, Any] = {
    "schema_version": 1,
    "run_id": "20261129-190648-resnet50-onnxruntime-cpu",
    "status": "ok",
    "started": "2026-11-29T19:06:48+0000",
    "finished": "2026-11-29T19:06:53+0000",
    "backend": {"name": "onnxruntime", "version": "1.32.0",
                "options": {"intra_op_threads": 0, "inter_op_threads": 0, "graph_optimization_level": "all",
                            "execution_mode": "sequential", "provider": "default"}},
    "device": "cpu",
    "precision": "fp32",
    "model": {"name": "resnet50", "path": "/tmp/v1work/classifier.onnx",
              "sha256": "871ee6e8d4d1c25df7de9dd9b7498761e97d32b9dac29b7d79b2bc1db4510049",
              "rules_key": "resnet50", "weights": "given", "note": None},
    "dataset": {"name": "numpy", "path": "/tmp/v1work/images.npz", "count": None},
    "settings": {"batch_size": None, "instances": 1, "target_qps": None, "quick": False, "duration_s": 0.3,
                 "batch_timeout_ms": None},
    "submission_valid": False,
    "simulated": False,
    "system": {"system_name": "", "hostname": "old-machine", "host_processor_model_name": "AMD EPYC"},
    "tests": [
        {"scenario": "Offline", "mode": "performance", "status": "ok", "valid": True, "metric": "samples_per_second",
         "value": 8927.5, "unit": "samples/s", "quick": True, "dir": "Offline/performance", "error": None,
         "batch_size": 1, "sessions": 1, "slots": 1, "precision": "fp32", "simulated": False,
         "devices": [{"device": "cpu", "slots": 1, "batches": 4229, "samples": 4229, "batch_sizes": {"1": 4229},
                      "busy_s": 0.473227, "busy_fraction": 0.9229}],
         "expectations": {"throughput_qps": 8545.000498461633, "latency_s": 0.0, "multistream_latency_s": 0.0,
                          "server_target_qps": 2553.01503849548, "source": "calibration"},
         "latency_ms": {"p50": 243.398291, "p90": 423.654667, "p95": 447.914765, "p97": 456.839257,
                        "p99": 467.073996, "p99.9": 473.421052, "mean": 239.338195}},
        {"scenario": "Offline", "mode": "accuracy", "status": "ok", "valid": False, "metric": "top-1", "value": 70.0,
         "unit": "%", "quick": True, "dir": "Offline/accuracy", "error": None, "batch_size": 1, "sessions": 1,
         "slots": 1, "precision": "fp32", "simulated": False,
         "devices": [{"device": "cpu", "slots": 1, "batches": 10, "samples": 10, "batch_sizes": {"1": 10},
                      "busy_s": 0.001003, "busy_fraction": 0.0308}],
         "expectations": {"throughput_qps": 11969.22217332249, "latency_s": 0.0, "multistream_latency_s": 0.0,
                          "server_target_qps": 3246.8160262135934, "source": "calibration"},
         "accuracy": {"metric": "top-1", "value": 70.0, "good": 7, "total": 10,
                      "report": "accuracy=70.000%, good=7, total=10", "target": 75.69144, "passed": False},
         "invalid_reasons": ["top-1 70.000% is below the target 75.691%"]},
    ],
}

#: An early version 1 file: no simulated flag, no model weights, tests without the per-device
#: and latency figures later runs kept, and an interrupted test.
V1_EARLY: dict[str, Any] = {
    "schema_version": 1, "run_id": "20250301-101010-conv-null-cpu", "status": "interrupted",
    "started": "2025-03-01T10:10:10+0100", "finished": "2025-03-01T10:11:00+0100",
    "backend": {"name": "null", "version": "0.1", "options": {}}, "device": "cpu", "precision": "fp32",
    "model": {"name": "conv", "path": "/m/conv.onnx", "sha256": "ab" * 32, "rules_key": None},
    "dataset": {"name": "synthetic", "path": None, "count": None},
    "settings": {"batch_size": 8, "instances": 2, "target_qps": None, "quick": True, "duration_s": None,
                 "batch_timeout_ms": None},
    "submission_valid": False, "system": {"hostname": "old-machine", "host_processor_model_name": "Xeon"},
    "tests": [
        {"scenario": "Offline", "mode": "performance", "status": "ok", "valid": True, "metric": "samples_per_second",
         "value": 1234.5, "unit": "samples/s", "quick": True, "dir": "Offline/performance", "error": None},
        {"scenario": "Server", "mode": "performance", "status": "interrupted", "valid": None, "metric": None,
         "value": None, "unit": None, "quick": True, "dir": "Server/performance", "error": None},
    ],
}


def dice_run() -> RunResult:
    """A version 2 run whose accuracy is a plain fraction (mean DICE), not a percent."""
    accuracy = AccuracyRecord(
        metric="mean DICE", value=0.8617, unit="", higher_is_better=True, target=0.853083, passed=True,
        report="Mean DICE: 0.86170", lines=("Mean DICE: 0.86170",), extra={"per_class": [0.85, 0.87]},
    )
    return RunResult(
        run_id="20261201-080000-3d-unet-onnxruntime-cpu", status="ok", started="2026-12-01T08:00:00+0000",
        finished="2026-12-01T08:10:00+0000", backend=BackendInfo("onnxruntime", "1.32.0", {"provider": "default"}),
        device="cpu", precision="fp32",
        model=ModelInfo("3d-unet", "/m/unet.onnx", "cd" * 32, "3d-unet", {"loadgen_key": "3d-unet", "round": "v6.0"},
                        "given", None),
        system={"hostname": "new-machine", "host_processor_model_name": "Xeon"},
        tests=(
            TestResult("Offline", "performance", "ok", valid=True, metric="samples_per_second", value=2.5,
                       unit="samples/s", quick=True, latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0}),
            TestResult("Offline", "accuracy", "ok", valid=True, metric="mean DICE", value=0.8617, unit="", quick=True,
                       accuracy=accuracy),
        ),
    )


def write_run(root: Path, data: dict[str, Any], name: str | None = None) -> Path:
    run_dir = root / (name or data["run_id"])
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(data, indent=2))
    return run_dir


# ------------------------------------------------------------------ the schema


def test_version_1_reads_with_the_defaults_version_2_implies() -> None:
    result = RunResult.from_json(copy.deepcopy(V1_RESULT))
    assert result.schema_version == 1 and result.model.rules is None
    performance, accuracy_test = result.tests
    assert performance.latency_ms is not None and performance.latency_ms["p99"] == 467.073996
    assert performance.accuracy is None and performance.invalid_reasons == ()
    accuracy = accuracy_test.accuracy
    assert accuracy is not None
    assert (accuracy.metric, accuracy.value, accuracy.unit, accuracy.higher_is_better) == ("top-1", 70.0, "%", True)
    assert accuracy.lines == ("accuracy=70.000%, good=7, total=10",) and accuracy.passed is False
    assert accuracy.extra == {"good": 7, "total": 10}  # what version 2 does not name is kept
    assert accuracy_test.invalid_reasons == ("top-1 70.000% is below the target 75.691%",)

    written = result.to_json()
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert written["model"]["rules"] is None
    assert written["tests"][1]["accuracy"] == {
        "metric": "top-1", "value": 70.0, "unit": "%", "higher_is_better": True, "target": 75.69144, "passed": False,
        "report": "accuracy=70.000%, good=7, total=10", "lines": ["accuracy=70.000%, good=7, total=10"],
        "good": 7, "total": 10,
    }
    # Nothing of the version 1 file is lost: each of its values is where it was.
    for key, value in V1_RESULT.items():
        if key not in ("schema_version", "tests", "model"):
            assert written[key] == value, key
    for old, new in zip(V1_RESULT["tests"], written["tests"]):
        assert {k: v for k, v in new.items() if k in old and k != "accuracy"} == {k: v for k, v in old.items() if k != "accuracy"}
    assert RunResult.from_json(json.loads(json.dumps(written))).to_json() == written


def test_early_version_1_files_take_defaults_for_what_they_lack() -> None:
    result = RunResult.from_json(copy.deepcopy(V1_EARLY))
    assert result.simulated is False and result.model.weights is None and result.status == "interrupted"
    offline, server = result.tests
    assert (offline.sessions, offline.devices, offline.latency_ms, offline.simulated) == (None, None, None, False)
    assert server.status == "interrupted" and server.figure() == "-"
    assert result.quick and result.settings.batch_size == 8 and result.settings.instances == 2


def test_what_the_runner_writes_reads_back_unchanged() -> None:
    result = dice_run()
    data = json.loads(json.dumps(result.to_json()))
    again = RunResult.from_json(data)
    assert again == result and again.to_json() == data
    # Every test carries every field, null where it has none: one shape for every reader.
    keys = [list(t) for t in data["tests"]]
    assert keys[0] == keys[1] and keys[0][:10] == ["scenario", "mode", "status", "valid", "metric", "value", "unit",
                                                    "quick", "dir", "error"]
    assert data["tests"][1]["accuracy"]["per_class"] == [0.85, 0.87]
    # Keys a reader does not know (added by hand, or by a tool) survive a round trip too.
    data["comment"] = "rerun after the driver update"
    data["tests"][0]["note"] = {"by": "someone"}
    assert RunResult.from_json(data).to_json() == data


def test_the_accuracy_result_a_scorer_writes_is_read_whole() -> None:
    from mlpi.core.contract.accuracy import AccuracyResult

    if "lines" not in AccuracyResult.__dataclass_fields__:
        pytest.skip("mlpi.core.contract.accuracy still writes the version 1 record")
    written = AccuracyResult("mAP", 37.57, "%", ("mAP=37.570%",), target=37.175, details={"iou": 0.5}).to_json()
    record = AccuracyRecord.from_json(written)
    assert record.to_json() == written and record.passed is True and record.extra == {"iou": 0.5}


def test_lower_is_better_accuracy_fails_above_its_target() -> None:
    wer = AccuracyRecord.from_json({"metric": "WER", "value": 8.1, "unit": "%", "higher_is_better": False,
                                    "target": 7.527, "report": "Word Error Rate: 8.1%"})
    assert wer.passed is False  # not given: judged as the run would have, lower being better
    assert wer.failure() == "WER 8.100% is above the target 7.527%"
    assert wer.target_text() == "<= 7.527%" and wer.figure() == "8.100%"
    assert wer.lines == ("Word Error Rate: 8.1%",)
    dice = dice_run().tests[1].accuracy
    assert dice is not None and dice.failure() is None and dice.figure() == "0.86170" and dice.target_text() == ">= 0.85308"
    failing = AccuracyRecord("mean DICE", 0.84, "", True, 0.853083, False)
    assert failing.failure() == "mean DICE 0.84000 is below the target 0.85308"


def test_figures_are_printed_in_their_unit() -> None:
    assert format_figure(70.0, "%") == "70.000%"
    assert format_figure(0.8617, "") == "0.86170"
    assert format_figure(1234.5, "samples/s") == "1,234.5 samples/s"
    assert format_figure(0.0345678, "samples/s") == "0.0346 samples/s" and format_figure(0.0, "samples/s") == "0.0 samples/s"
    assert format_figure(1.5, "ms") == "1.500 ms"
    assert format_figure(20, "samples") == "20 samples" and format_figure(89137319, "samples") == "89,137,319 samples"
    assert format_figure(None, "ms") == "-" and format_figure(True, "%") == "-"
    assert dice_run().tests[1].figure() == "0.86170" and dice_run().tests[0].figure() == "2.5 samples/s"


DAMAGE: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("no run id", lambda d: d.pop("run_id"), "(run_id is missing)"),
    ("null model", lambda d: d.update(model=None), "(model is null, not a JSON object)"),
    ("model name", lambda d: d["model"].update(name=3), "(model.name is 3, not a string)"),
    ("tests", lambda d: d.update(tests={"Offline": 1}), '(tests is {"Offline": 1}, not a list)'),
    ("a test", lambda d: d["tests"].__setitem__(0, 5), "(tests[0] is 5, not a JSON object)"),
    ("value", lambda d: d["tests"][1].update(value="fast"), '(tests[1].value is "fast", not a number)'),
    ("valid", lambda d: d["tests"][0].update(valid="yes"), '(tests[0].valid is "yes", not true or false)'),
    ("status", lambda d: d.update(status="done"), '(status is "done", not one of running, ok, failed, interrupted)'),
    ("mode", lambda d: d["tests"][0].update(mode="perf"), '(tests[0].mode is "perf", not one of performance, accuracy)'),
    ("latency", lambda d: d["tests"][0]["latency_ms"].update(p50="1 ms"), '(tests[0].latency_ms.p50 is "1 ms", not a number)'),
    ("devices", lambda d: d["tests"][0]["devices"].append(7), "(tests[0].devices[1] is 7, not a JSON object)"),
    ("accuracy", lambda d: d["tests"][1]["accuracy"].pop("value"), "(tests[1].accuracy.value is missing)"),
    ("reasons", lambda d: d["tests"][1]["invalid_reasons"].append(1), "(tests[1].invalid_reasons[1] is 1, not a string)"),
    ("count", lambda d: d["dataset"].update(count=1.5), "(dataset.count is 1.5, not a whole number)"),
    ("version", lambda d: d.update(schema_version="2"), '(schema_version is "2", not a schema version)'),
]


@pytest.mark.parametrize(("what", "damage", "detail"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_file_is_one_error_naming_the_file_and_field(
    tmp_path: Path, what: str, damage: Callable[[dict[str, Any]], Any], detail: str
) -> None:
    data = copy.deepcopy(V1_RESULT)
    damage(data)
    path = write_run(tmp_path, data, "run") / "result.json"
    with pytest.raises(ResultError) as caught:
        load_result(path)
    assert caught.value.message == f"{path} is damaged {detail}"
    assert caught.value.hint == "copy the run directory again"
    assert isinstance(caught.value, MlpiError) and caught.value.exit_code == 1


def test_unreadable_and_newer_files(tmp_path: Path) -> None:
    with pytest.raises(ResultError) as caught:
        load_result(tmp_path)
    assert caught.value.message == f"{tmp_path / 'result.json'} is missing"
    path = tmp_path / "result.json"
    path.write_text('{"run_id": ')
    with pytest.raises(ResultError) as caught:
        load_result(tmp_path)  # the run directory, or the file itself
    assert caught.value.message == f"{path} is damaged (Expecting value at line 1)"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ResultError) as caught:
        load_result(path)
    assert caught.value.message.startswith(f"cannot read {path}: ")
    path.write_text("[1, 2]")
    with pytest.raises(ResultError) as caught:
        load_result(path)
    assert caught.value.message == f"{path} is damaged (the file is [1, 2], not a JSON object)"
    path.write_text(json.dumps(dict(V1_RESULT, schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(ResultError) as caught:
        load_result(path)
    assert caught.value.message == f"{path} has result schema 3, newer than this mlpi reads (2)"
    assert caught.value.hint == "upgrade mlpi"


def test_atomic_writes_keep_the_umask_and_leave_nothing_behind(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "a" / "page.html", b"<html>")
        write_json_atomic(tmp_path / "a" / "result.json", {"x": Path("/p")})
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "page.html").read_bytes() == b"<html>"
    assert json.loads((tmp_path / "a" / "result.json").read_text()) == {"x": "/p"}
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "a").iterdir()} == {0o640}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["page.html", "result.json"]

    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "a" / "page.html", "not bytes")  # type: ignore[arg-type]
    assert (tmp_path / "a" / "page.html").read_bytes() == b"<html>"  # the old file, whole
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["page.html", "result.json"]


# ------------------------------------------------------------------ the runner's side


def collect(tmp_path: Path, outcome: dict[str, Any], mode: str = "accuracy") -> TestResult:
    from mlpi.core.engine import runner

    out = tmp_path / "Offline" / mode
    out.mkdir(parents=True)
    (out / "outcome.json").write_text(json.dumps(outcome))
    plan = SimpleNamespace(quick=True, duration_s=None)
    return runner._readable(runner._collect(plan, out, "Offline", mode, 0), out / "outcome.json")  # type: ignore[arg-type]


def test_the_runner_records_a_lower_is_better_failure_as_above_its_target(tmp_path: Path) -> None:
    accuracy = {"metric": "WER", "value": 8.1, "unit": "%", "higher_is_better": False, "target": 7.527, "passed": False,
                "report": "Word Error Rate: 8.1%", "lines": ["Word Error Rate: 8.1%"]}
    test = collect(tmp_path, {"status": "ok", "accuracy": accuracy, "batch_size": 4, "sessions": 1, "slots": 1,
                              "precision": "fp32", "simulated": False, "devices": [], "expectations": {}})
    assert test.status == "ok" and test.valid is False
    assert (test.metric, test.value, test.unit) == ("WER", 8.1, "%")
    assert test.invalid_reasons == ("WER 8.100% is above the target 7.527%",)
    assert test.accuracy == AccuracyRecord.from_json(accuracy) and test.batch_size == 4


def test_the_runner_never_writes_a_test_it_could_not_read_back(tmp_path: Path) -> None:
    test = collect(tmp_path, {"status": "ok", "batch_size": "eight", "accuracy": None}, mode="performance")
    assert test.status == "failed" and test.valid is None and test.metric is None
    assert test.error is not None and test.error.type == "RunFailed"
    assert test.error.message == f"{tmp_path / 'Offline' / 'performance' / 'outcome.json'} is damaged (batch_size is \"eight\", not a whole number)"
    broken = collect(tmp_path / "b", {"status": "ok", "accuracy": {"metric": "top-1"}})
    assert broken.status == "failed" and broken.error is not None and "accuracy.value is missing" in broken.error.message
    failed = collect(tmp_path / "c", {"status": "failed", "error": {"type": "ModelError", "message": "no", "hint": "h", "exit_code": 2}})
    assert failed.error == ErrorRecord("ModelError", "no", "h", 2)


def test_a_sweep_keeps_each_tests_figure_and_markers(tmp_path: Path) -> None:
    from mlpi.core.engine.runner import RunOutcome
    from mlpi.sweep.cellrun import summarize

    result = RunResult.from_json(copy.deepcopy(V1_RESULT))
    summary = summarize(RunOutcome(tmp_path / result.run_id, result, 3))
    assert summary["status"] == "done" and summary["error"] is None
    assert summary["tests"][1] == {"scenario": "Offline", "mode": "accuracy", "status": "ok", "metric": "top-1",
                                   "value": 70.0, "unit": "%", "valid": False, "quick": True, "simulated": False}


# ------------------------------------------------------------------ old and new runs through the CLI


def cli(args: list[str], cwd: Path) -> Any:
    return run_cli(args, cwd=cwd, env={"COLUMNS": "300"})


def test_version_1_run_directories_import_list_show_compare_and_report(tmp_path: Path) -> None:
    carried = tmp_path / "from-an-old-machine"
    write_run(carried, V1_RESULT)
    write_run(carried, V1_EARLY)
    root = tmp_path / "results"
    proc = cli(["results", "import", str(carried), "--results", str(root)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 imported, 0 already in the store, 0 skipped" in proc.stdout and proc.stderr == ""

    proc = cli(["results", "list", "--results", str(root), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = json.loads(proc.stdout)
    assert [(x["run"], x["scenario"], x["mode"], x["value"], x["unit"], x["valid"], x["status"]) for x in lines] == [
        (V1_EARLY["run_id"], "Offline", "performance", 1234.5, "samples/s", True, "ok"),
        (V1_EARLY["run_id"], "Server", "performance", None, None, None, "interrupted"),
        (V1_RESULT["run_id"], "Offline", "performance", 8927.5, "samples/s", True, "ok"),
        (V1_RESULT["run_id"], "Offline", "accuracy", 70.0, "%", False, "ok"),
    ]
    table = cli(["results", "list", "--results", str(root)], tmp_path)
    assert table.returncode == 0, table.stderr
    assert "70.000%" in table.stdout and "8,927.5 samples/s" in table.stdout and "INTERRUPTED" in table.stdout

    shown = cli(["results", "show", V1_RESULT["run_id"], "--results", str(root), "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)  # as indexed: in the current schema
    assert data == RunResult.from_json(V1_RESULT).to_json() and data["schema_version"] == 2
    text = cli(["results", "show", V1_RESULT["run_id"], "--results", str(root)], tmp_path)
    assert text.returncode == 0, text.stderr
    assert "Offline accuracy: top-1 70.000% is below the target 75.691%" in text.stdout
    assert "243.398" in text.stdout  # p50 kept in the version 1 file

    compared = cli(["compare", "model=resnet50", "--results", str(root), "--format", "json"], tmp_path)
    assert compared.returncode == 0, compared.stderr
    (row,) = json.loads(compared.stdout)["rows"]
    assert row["accuracy"] == {"metric": "top-1", "value": 70.0, "unit": "%", "higher_is_better": True,
                               "target": 75.69144, "passed": False}
    assert row["valid"] is False and row["latency_ms"]["p90"] == 423.654667

    from mlpi.report import html
    from mlpi.report.data import load_runs

    loaded = load_runs([root])
    assert loaded.warnings == [] and [r.model for r in loaded.runs] == ["conv", "resnet50"]
    assert loaded.runs[0].setting == "bs8 x2" and loaded.runs[0].simulated is False
    assert [(t.mode, t.value, t.unit, t.valid) for t in loaded.runs[1].tests] == [
        ("performance", 8927.5, "samples/s", True), ("accuracy", 70.0, "%", False)]
    assert "70.000%" in html._tests_table(loaded.runs)


def test_a_store_indexed_by_an_older_mlpi_still_lists(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_run(root, V1_RESULT)
    assert cli(["results", "list", "--results", str(root)], tmp_path).returncode == 0
    with sqlite3.connect(root / "mlpi.sqlite") as db:  # what mlpi 0.x kept: the file's own JSON
        db.execute("UPDATE runs SET result = ?", (json.dumps(V1_RESULT),))
    proc = cli(["results", "show", V1_RESULT["run_id"][:12], "--results", str(root), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tests"][1]["accuracy"]["lines"] == ["accuracy=70.000%, good=7, total=10"]


def test_accuracy_that_is_not_a_percent_is_printed_in_its_own_unit(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_run(root, dice_run().to_json())
    listed = cli(["results", "list", "--results", str(root)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "0.86170" in listed.stdout and "86.170%" not in listed.stdout and "0.862%" not in listed.stdout
    table = cli(["compare", "model=3d-unet", "--results", str(root)], tmp_path)
    assert table.returncode == 0, table.stderr
    assert "0.86170 mean DICE" in table.stdout and "%" not in table.stdout.split("mean DICE")[0].splitlines()[-1]
    as_csv = cli(["compare", "model=3d-unet", "--results", str(root), "--format", "csv"], tmp_path)
    head, row = as_csv.stdout.strip().splitlines()
    values = dict(zip(head.split(","), row.split(",")))
    assert (values["accuracy_metric"], values["accuracy"], values["accuracy_unit"]) == ("mean DICE", "0.8617", "")
    assert values["accuracy_higher_is_better"] == "True"

    from mlpi.report import html
    from mlpi.report.data import load_runs

    assert "<td class=\"num\">0.86170</td>" in html._tests_table(load_runs([root]).runs)


def test_a_damaged_result_is_one_warning_line_not_a_traceback(tmp_path: Path) -> None:
    data = copy.deepcopy(V1_RESULT)
    data["tests"][1]["value"] = "fast"
    carried = tmp_path / "carried"
    bad = write_run(carried, data)
    proc = cli(["results", "import", str(bad), "--results", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f'warning: skipped: {bad / "result.json"} is damaged (tests[1].value is "fast", not a number)',
        "error: 1 of 1 result directories could not be imported",
        "hint: fix or copy again the directories named above; the others were imported",
    ]
    root = tmp_path / "root"
    write_run(root, data)
    listed = cli(["results", "list", "--results", str(root), "--json"], tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert listed.stderr.splitlines() == [
        f'warning: {root / data["run_id"] / "result.json"} is damaged (tests[1].value is "fast", not a number); not indexed'
    ]


def test_an_error_rate_is_shown_as_lower_is_better(tmp_path: Path) -> None:
    root = tmp_path / "results"
    data = dice_run().to_json()
    data["run_id"] = "20261201-080000-rnnt-onnxruntime-cpu"
    data["model"]["name"] = data["model"]["rules_key"] = "rnnt"
    record = data["tests"][1]["accuracy"]
    record.update(metric="WER", value=7.452, unit="%", higher_is_better=False, target=8.37748, passed=True,
                  report="Word Error Rate: 7.452%, accuracy=92.548%", lines=["Word Error Rate: 7.452%, accuracy=92.548%"])
    data["tests"][1].update(metric="WER", value=7.452, unit="%")
    write_run(root, data)
    table = cli(["compare", "model=rnnt", "--results", str(root), "--format", "markdown"], tmp_path)
    assert table.returncode == 0, table.stderr
    assert "7.452% WER (lower is better)" in table.stdout
    as_csv = cli(["compare", "model=rnnt", "--results", str(root), "--format", "csv"], tmp_path)
    head, row = as_csv.stdout.strip().splitlines()
    values = dict(zip(head.split(","), row.split(",")))
    assert (values["accuracy_metric"], values["accuracy"], values["accuracy_higher_is_better"]) == ("WER", "7.452", "False")
    shown = cli(["results", "show", data["run_id"][:15], "--results", str(root)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Offline accuracy: WER 7.452% (target <= 8.377%) PASS" in shown.stdout
