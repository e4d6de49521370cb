"""`mlpi compare`: real runs side by side, speedups, warnings, refusal, every output format."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.store import read_result
from mlpi.testing import tiny_models

# Every comparison here puts one model's onnxruntime runs beside its OpenVINO runs.
pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra): compare's runs need a second backend")


def fp16_matmul(path: Path) -> Path:
    """The matmul model exported in fp16: onnxruntime then runs it in fp16."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 10)).astype(np.float16), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 10])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny_models.OPSET)])
    model.ir_version = tiny_models.IR_VERSION
    onnx.save(model, str(path))
    return path


def run(root: Path, cwd: Path, *args: str) -> str:
    before = {p.name for p in root.iterdir()} if root.exists() else set()
    proc = run_cli(["run", *args, "--duration", "0.3", "--output", str(root)], cwd=cwd)
    assert proc.returncode in (0, 3), proc.stderr
    (name,) = {p.name for p in root.iterdir() if p.is_dir()} - before
    return name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("compare")
    (base / "fp32").mkdir()
    (base / "fp16").mkdir()
    fp32 = tiny_models.matmul_model(base / "fp32" / "matmul.onnx")
    fp16 = fp16_matmul(base / "fp16" / "matmul.onnx")
    conv = tiny_models.conv_model(base / "conv.onnx")
    np.savez(base / "data.npz", x=np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32))
    classifier = tiny_models.resnet_signature_classifier(base / "classifier.onnx")
    labels = [0, 5, 999, 17, 42, 300, 7, 1, 500, 998]
    images = np.zeros((10, 3, 224, 224), np.float32)
    for i, label in enumerate(labels):
        images.reshape(10, -1)[i, (label if i not in (3, 6, 9) else label + 1) + 1] = 1.0  # 7 of 10 right
    np.savez(base / "images.npz", input_tensor_0=images, labels=np.array(labels, np.int64))
    root = base / "results"
    both = ("-s", "Offline", "-s", "SingleStream")
    names = {
        "ort": run(root, base, "--backend", "onnxruntime", "--model-path", str(fp32), *both),
        "ov": run(root, base, "--backend", "openvino", "--precision", "fp32", "--model-path", str(fp32), *both),
        "ort16": run(root, base, "--backend", "onnxruntime", "--model-path", str(fp16), "-s", "Offline"),
        "conv": run(root, base, "--backend", "null", "--model-path", str(conv), "-s", "Offline"),
        "numpy": run(root, base, "--backend", "onnxruntime", "--model-path", str(fp32), "-s", "Offline",
                     "--dataset", "numpy", "--dataset-path", str(base / "data.npz")),
        "resnet": run(root, base, "--backend", "onnxruntime", "--model", "resnet50", "--model-path", str(classifier),
                      "--dataset", "numpy", "--dataset-path", str(base / "images.npz"), "-s", "Offline", "--mode", "both"),
    }
    return {"base": base, "root": root, **names}


def compare(runs: dict[str, Any], *args: str, root: Path | None = None) -> Any:
    return run_cli(["compare", *args, "--results", str(root or runs["root"])], cwd=runs["base"], env={"COLUMNS": "400"})


def compare_json(runs: dict[str, Any], *args: str, root: Path | None = None) -> dict[str, Any]:
    proc = compare(runs, *args, "--format", "json", root=root)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [f"warning: {w}" for w in data["warnings"]] == proc.stderr.splitlines()
    return data


def value(runs: dict[str, Any], name: str, scenario: str) -> float:
    result = read_result(runs["root"] / runs[name])
    (test,) = [t for t in result.tests if t.scenario == scenario and t.mode == "performance"]
    return float(test.value)


def batch(runs: dict[str, Any], name: str, scenario: str) -> int:
    result = read_result(runs["root"] / runs[name])
    (test,) = [t for t in result.tests if t.scenario == scenario and t.mode == "performance"]
    assert test.batch_size
    return test.batch_size


def batch_warnings(runs: dict[str, Any], scenario: str, *names: str) -> list[str]:
    """The warning compare owes when the runs ran ``scenario`` at different batch sizes
    (OpenVINO picks a larger Offline batch than onnxruntime on many machines)."""
    sizes = sorted({batch(runs, name, scenario) for name in names})
    if len(sizes) < 2:
        return []
    shown = ", ".join(map(str, sizes))
    return [f"matmul {scenario}: rows differ in batch size ({shown}); a speedup between them measures batching too"]


def test_speedups_against_a_baseline_run(runs: dict[str, Any]) -> None:
    data = compare_json(runs, runs["ort"], runs["ov"], "--baseline", runs["ort"])
    rows = data["rows"]
    assert [(r["model"], r["scenario"], r["backend"], r["precision"]) for r in rows] == [
        ("matmul", "Offline", "onnxruntime", "fp32"), ("matmul", "Offline", "openvino", "fp32"),
        ("matmul", "SingleStream", "onnxruntime", "fp32"), ("matmul", "SingleStream", "openvino", "fp32"),
    ]
    assert [r["baseline"] for r in rows] == [True, False, True, False]
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    # Throughput: more is better. Latency: less is better. Above 1 means faster than the baseline.
    assert rows[1]["speedup"] == pytest.approx(value(runs, "ov", "Offline") / value(runs, "ort", "Offline"))
    assert rows[3]["speedup"] == pytest.approx(value(runs, "ort", "SingleStream") / value(runs, "ov", "SingleStream"))
    assert [r["metric"] for r in rows] == ["samples_per_second", "samples_per_second", "early_stopping_p90_latency",
                                           "early_stopping_p90_latency"]
    assert all(r["value"] == value(runs, "ort" if r["backend"] == "onnxruntime" else "ov", r["scenario"]) for r in rows)
    assert all(0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"] for r in rows)
    # Same model file, precision, dataset and settings: only a batch size that differs is worth a word.
    assert data["warnings"] == batch_warnings(runs, "Offline", "ort", "ov") + batch_warnings(runs, "SingleStream", "ort", "ov")
    assert [r["batch_size"] for r in rows] == [batch(runs, "ort" if r["backend"] == "onnxruntime" else "ov", r["scenario"]) for r in rows]
    assert all(r["instances"] == 1 and r["batch_unit"] is None and (r["repeat"], r["repeats"]) == (1, 1) for r in rows)


def test_filters_select_and_the_warnings_name_what_differs(runs: dict[str, Any]) -> None:
    data = compare_json(runs, "model=matmul", "scenario=Offline", "--baseline", "backend=openvino")
    by_run = {r["run"]: r for r in data["rows"]}
    assert set(by_run) == {runs["ort"], runs["ov"], runs["ort16"], runs["numpy"]}
    assert all(r["scenario"] == "Offline" for r in data["rows"])
    base = value(runs, "ov", "Offline")
    for name in ("ort", "ort16", "numpy"):
        assert by_run[runs[name]]["speedup"] == pytest.approx(value(runs, name, "Offline") / base)
    assert by_run[runs["ov"]]["baseline"] is True
    warnings = data["warnings"]
    assert "matmul Offline: rows differ in precision (fp16, fp32)" in warnings
    assert any(w.startswith("matmul Offline: rows used different datasets (") and "numpy" in w and "synthetic" in w for w in warnings)
    assert any(w.startswith("matmul Offline: rows ran different model files") for w in warnings)
    assert not any("quick" in w for w in warnings)


def test_speedups_never_cross_models(runs: dict[str, Any]) -> None:
    data = compare_json(runs, runs["conv"], runs["ort"], runs["ov"], "scenario=Offline", "--baseline", runs["ort"])
    conv = [r for r in data["rows"] if r["model"] == "conv"]
    assert len(conv) == 1 and conv[0]["speedup"] is None and conv[0]["value"] > 0
    assert f"conv Offline: the baseline {runs['ort']} did not measure it; no speedup shown" in data["warnings"]
    # A baseline that shares no model with what is compared is refused outright.
    refused = compare(runs, "model=conv", "--baseline", runs["ort"])
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 2 and "speedups across different models or scenarios mean nothing" in lines[0]
    assert lines[0].startswith(f"error: the baseline {runs['ort']} measured matmul Offline, matmul SingleStream; ")
    assert lines[1] == "hint: pick a baseline of the same model and scenario, or compare without --baseline"


def test_quick_runs_are_not_silently_compared_with_full_length_ones(runs: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(runs["root"] / runs["ort"], root / runs["ort"])
    # A full-length run takes ten minutes per test; a copy of a real run with its settings
    # marked full-length stands in for one measured on another machine.
    full = tmp_path / "elsewhere" / "full-run"
    shutil.copytree(runs["root"] / runs["ov"], full)
    result = json.loads((full / "result.json").read_text())
    result.update(run_id="full-run", submission_valid=True)
    result["settings"]["quick"] = False
    for test in result["tests"]:
        test["quick"] = False
    (full / "result.json").write_text(json.dumps(result))
    imported = run_cli(["results", "import", str(full), "--results", str(root)], cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    data = compare_json(runs, "scenario=Offline", root=root)
    assert data["warnings"] == [
        *batch_warnings(runs, "Offline", "ort", "ov"),
        f"matmul Offline: quick runs ({runs['ort']}) are compared with full-length ones; quick results are not valid for submission",
    ]
    assert "speedup" in data["rows"][0] and all(r["speedup"] is None for r in data["rows"])


def test_accuracy_joins_its_scenarios_row(runs: dict[str, Any]) -> None:
    (row,) = compare_json(runs, "model=resnet50")["rows"]
    assert row["accuracy"] == {"metric": "top-1", "value": pytest.approx(70.0), "unit": "%", "higher_is_better": True,
                               "target": pytest.approx(75.695, abs=0.01), "passed": False}
    assert row["value"] == value(runs, "resnet", "Offline") and row["valid"] is False
    table = compare(runs, "model=resnet50")
    assert table.returncode == 0, table.stderr
    assert "70.000% top-1" in table.stdout and "INVALID" in table.stdout and runs["resnet"] in table.stdout


def test_csv_markdown_and_terminal_formats(runs: dict[str, Any]) -> None:
    args = (runs["ort"], runs["ov"], "--baseline", runs["ort"])
    reference = compare_json(runs, *args)["rows"]
    as_csv = compare(runs, *args, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["run"], r["scenario"]) for r in rows] == [(r["run"], r["scenario"]) for r in reference]
    for got, want in zip(rows, reference):
        assert float(got["value"]) == want["value"] and float(got["speedup"]) == pytest.approx(want["speedup"])
        assert float(got["p90_ms"]) == want["latency_ms"]["p90"] and got["unit"] == want["unit"]
        assert got["accuracy"] == "" and got["baseline"] == str(want["baseline"])

    markdown = compare(runs, *args, "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    lines = markdown.stdout.strip().splitlines()
    assert len(lines) == 2 + len(reference)
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert len({len(c) for c in cells}) == 1
    assert cells[0][:3] == ["model", "scenario", "system"] and cells[0][-1] == "speedup"
    assert all(set(c) <= set("-:") for c in cells[1])
    assert [c[-1] for c in cells[2:]] == ["baseline", f"{reference[1]['speedup']:.2f}x", "baseline", f"{reference[3]['speedup']:.2f}x"]

    terminal = compare(runs, *args)
    assert terminal.returncode == 0, terminal.stderr
    assert runs["ov"] in terminal.stdout and "openvino" in terminal.stdout and f"{reference[1]['speedup']:.2f}x" in terminal.stdout


def test_selection_syntax_errors_are_one_line_with_a_hint(runs: dict[str, Any]) -> None:
    only_ov = compare_json(runs, runs["ort"], runs["ov"], "backend=openvino")
    assert {r["run"] for r in only_ov["rows"]} == {runs["ov"]}
    for args, message, hint in (
        (["bakend=openvino"], "error: unknown filter 'bakend' in 'bakend=openvino'", "hint: did you mean backend? filters are model"),
        (["backend="], "error: filter 'backend=' has no value", "hint: write backend=VALUE"),
        (["backend=tensorrt"], "error: no indexed run matches backend=tensorrt", "hint: the store holds models conv, matmul, resnet50"),
        (["since=yesterday"], "error: 'yesterday' is not a date", "hint: write dates as YYYY-MM-DD"),
    ):
        proc = compare(runs, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and lines[0] == message and lines[1].startswith(hint), lines


def test_latest_keeps_the_newest_run_per_configuration(runs: dict[str, Any]) -> None:
    selection = ("model=matmul", "backend=onnxruntime", "precision=fp32", "scenario=Offline")
    everything = compare_json(runs, *selection)["rows"]
    assert [r["run"] for r in everything] == [runs["ort"], runs["numpy"]]
    latest = compare_json(runs, *selection, "--latest")["rows"]
    assert [r["run"] for r in latest] == [runs["numpy"]]
