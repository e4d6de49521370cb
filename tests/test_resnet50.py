"""ResNet50: the registered spec, the random-weights graph, responses, scoring, the default run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import only_run_dir, read_result, run_cli

from mlpi.core.contract.accuracy import read_accuracy_log, top1
from mlpi.core.contract.postprocess import ClassIdResponse
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.models.resnet50 import QUALITY_TARGET, resnet50
from mlpi.models.resnet50_graph import write_resnet50


@pytest.fixture(scope="module")
def random_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resnet50(tmp_path_factory.mktemp("r50") / "r50.onnx", seed=0)


def test_random_graph_has_the_official_signature(random_resnet: Path) -> None:
    spec = resnet50()
    artifact = inspect_onnx(random_resnet)
    assert {(t.name, t.dtype, t.shape) for t in artifact.inputs} == {(t.name, t.dtype, t.shape) for t in spec.inputs}
    assert {(t.name, t.dtype, t.shape) for t in artifact.outputs} == {(t.name, t.dtype, t.shape) for t in spec.outputs}


def test_random_graph_is_deterministic_and_depends_on_the_seed(random_resnet: Path, tmp_path: Path) -> None:
    again = write_resnet50(tmp_path / "again.onnx", seed=0)
    other = write_resnet50(tmp_path / "other.onnx", seed=1)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(again) == digest(random_resnet)
    assert digest(other) != digest(random_resnet)


def test_random_graph_gives_finite_varied_answers(random_resnet: Path) -> None:
    session = ort.InferenceSession(str(random_resnet), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((12, 3, 224, 224)).astype(np.float32) * 60
    classes, probs = session.run(["ArgMax:0", "softmax_tensor:0"], {"input_tensor:0": x})
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert np.array_equal(classes, probs.argmax(axis=1))
    assert len(set(classes.tolist())) >= 3  # a degenerate graph would answer one class for everything


def test_class_id_response_shifts_and_writes_float32() -> None:
    post = ClassIdResponse("ArgMax:0", -1, 4)
    rows = post({"ArgMax:0": np.array([1, 1000, 5, 7], dtype=np.int64)}, range(3))
    assert post.sample_nbytes == 4
    assert rows[:3].tolist() == [0.0, 999.0, 4.0] and rows.dtype == np.float32
    scores = np.zeros((2, 1001), np.float32)
    scores[0, 10] = scores[1, 1] = 1
    post = ClassIdResponse("softmax_tensor:0", -1, 2, argmax=True)
    assert post({"softmax_tensor:0": scores}, range(2)).tolist() == [9.0, 0.0]


def test_top1_counts_each_sample_once_like_the_official_script(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    entries = [
        {"seq_id": 0, "qsl_idx": 0, "data": np.float32(3).tobytes().hex()},
        {"seq_id": 1, "qsl_idx": 1, "data": np.float32(2).tobytes().hex()},
        {"seq_id": 2, "qsl_idx": 0, "data": np.float32(9).tobytes().hex()},  # duplicate: ignored
        {"seq_id": 3, "qsl_idx": 2, "data": np.float32(4).tobytes().hex()},
        {"seq_id": 4, "qsl_idx": 4, "data": np.float32(5).tobytes().hex()},
    ]
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text(json.dumps(entries))
    result = top1(read_accuracy_log(log), labels, "float32").with_target(QUALITY_TARGET)
    assert (result.details["good"], result.details["total"]) == (3, 4)
    assert result.report == "accuracy=75.000%, good=3, total=4"
    assert result.passed is False and result.target == pytest.approx(0.99 * 76.456)


def test_models_lists_resnet50_with_its_artifact(tmp_path: Path) -> None:
    proc = run_cli(["models", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    row = rows["resnet50"]
    assert row["origin"] == "built-in" and row["status"] == "ok"
    assert row["artifact"]["url"].endswith("resnet50_v1.onnx")
    assert row["artifact"]["checksum"] == "md5:f6a4da60cd5f084d97efc2c1ddb10beb"
    assert row["artifact_cached"] is None
    assert row["performance_sample_count"] == 1024 and row["server_latency_ms"] == 15
    assert {"name": "synthetic", "installed": True} in row["datasets"]
    table = run_cli(["models"], cwd=tmp_path)
    assert table.returncode == 0 and "resnet50" in table.stdout


def test_fetch_without_network_names_both_ways_on(tmp_path: Path) -> None:
    proc = run_cli(["fetch", "resnet50"], cwd=tmp_path, env={"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: cannot download resnet50") and "Traceback" not in proc.stderr
    assert "--model-path" in lines[1] and "--weights random" in lines[1]


def test_embedded_default_runs_resnet50_with_random_weights(tmp_path: Path) -> None:
    # The real default uses onnxruntime; null keeps this test fast and exercises the same path.
    proc = run_cli(["run", "--backend", "null", "--duration", "0.5", "--output", str(tmp_path / "r")], cwd=tmp_path)
    # What is checked is what ran; a 0.5 s Offline run of the null backend may end INVALID (3:
    # LoadGen outran the calibration) on a busy machine, which says nothing of that.
    assert proc.returncode in (0, 3), proc.stderr
    assert "embedded default" in proc.stderr
    result = read_result(tmp_path / "r")
    assert result["model"]["name"] == "resnet50" and result["model"]["weights"] == "random"
    assert "performance only" in result["model"]["note"]
    assert [(t["scenario"], t["mode"], t["status"]) for t in result["tests"]] == [("Offline", "performance", "ok")]
    assert "performance only" in proc.stdout


def official_style_accuracy(log: Path, labels: list[int]) -> str:
    """An independent re-statement of MLPerf's accuracy-imagenet.py (float32 class ids)."""
    seen: set[int] = set()
    good = 0
    for entry in json.loads(log.read_text()):
        idx = entry["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        if labels[idx] == int(np.frombuffer(bytes.fromhex(entry["data"]), np.float32)[0]):
            good += 1
    return f"accuracy={100.0 * good / len(seen):.3f}%, good={good}, total={len(seen)}"


def test_accuracy_known_by_construction_offset_included(tmp_path: Path) -> None:
    from mlpi.testing.tiny_models import resnet_signature_classifier

    model = resnet_signature_classifier(tmp_path / "classifier.onnx")
    labels = [0, 5, 999, 17, 42, 300, 7, 1, 500, 998]
    wrong = {3: 18, 6: 8, 9: 0}  # three samples whose image points at another class
    images = np.zeros((len(labels), 3, 224, 224), np.float32)
    for i, label in enumerate(labels):
        answer = wrong.get(i, label)
        images.reshape(len(labels), -1)[i, answer + 1] = 1.0  # the model's class k+1 is ImageNet's k
    data = tmp_path / "data.npz"
    np.savez(data, input_tensor_0=images, labels=np.array(labels, np.int64))
    proc = run_cli(
        ["run", "--model", "resnet50", "--model-path", str(model), "--dataset", "numpy", "--dataset-path", str(data),
         "-s", "Offline", "-s", "SingleStream", "--mode", "accuracy", "--batch-size", "4", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr  # 70% is below the 75.69% target
    run_dir = only_run_dir(tmp_path / "r")
    result = json.loads((run_dir / "result.json").read_text())
    for test in result["tests"]:
        folder = run_dir / test["scenario"] / "accuracy"
        line = (folder / "accuracy.txt").read_text().strip()
        assert line == "accuracy=70.000%, good=7, total=10"
        assert line == official_style_accuracy(folder / "mlperf_log_accuracy.json", labels)
        assert test["metric"] == "top-1" and test["value"] == pytest.approx(70.0) and test["unit"] == "%"
        assert test["accuracy"]["passed"] is False and test["valid"] is False
    assert "accuracy=70.000%, good=7, total=10" in proc.stdout and "FAIL" in proc.stdout


def test_a_file_without_the_models_signature_is_refused(tmp_path: Path, model_dir: Path) -> None:
    proc = run_cli(["run", "--model", "resnet50", "--model-path", str(model_dir / "matmul.onnx"), "--output", str(tmp_path / "r")],
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "is not a resnet50 model" in proc.stderr and "input_tensor:0" in proc.stderr
    assert not (tmp_path / "r").exists()
