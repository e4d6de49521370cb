"""RetinaNet end to end: `mlpi run --mode accuracy` on an OpenImages-layout folder whose mAP
is known by construction, MLCommons' own accuracy-openimages.py on mlpi's log, `mlpi score`,
and the error paths a user meets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import one_error, only_run_dir, run_cli
from onnx import TensorProto, helper, numpy_helper

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
OFFICIAL = SHARED / "vision" / "classification_and_detection" / "tools" / "accuracy-openimages.py"
pycocotools = pytest.importorskip("pycocotools", reason="pycocotools (the detection extra) is not installed")

#: Image sizes (width, height): multiples of 4, so every normalised box is exact in pixels.
SIZES = [(640, 480), (320, 512), (800, 600), (256, 256), (400, 300), (512, 384)]
#: Category 5: one box per image at [0.25, 0.75] of each side; category 9: one box in the
#: top-left corner. The constant detector answers category 5's box exactly and a category-9
#: box that overlaps nothing: AP(5) = 1, AP(9) = 0, so mAP = 50.000% by construction.
FOUND, MISSED = 5, 9


def write_dataset(root: Path) -> Path:
    import cv2

    data = root / "validation" / "data"
    data.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k, (width, height) in enumerate(SIZES):
        name = f"img{k:02d}.jpg"
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        assert cv2.imwrite(str(data / name), pixels)
        image_id = 1000 + 7 * k  # ids neither 0-based nor consecutive
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for category, (x0, y0, x1, y1) in ((FOUND, (0.25, 0.25, 0.75, 0.75)), (MISSED, (0.0, 0.0, 0.2, 0.2))):
            box = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in range(264)]
    (root / "annotations" / "openimages-mlperf.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8"
    )
    return root


def constant_detector(path: Path) -> Path:
    """RetinaNet's signature; answers the same detections for every image (in 800-px
    coordinates, score-sorted, a third one below the 0.05 threshold that must not be logged)."""
    boxes = np.array([[200, 200, 600, 600], [640, 640, 800, 800], [0, 0, 800, 800]], np.float32)
    scores = np.array([0.9, 0.8, 0.01], np.float32)
    labels = np.array([FOUND, MISSED, FOUND], np.int64)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes_c", "nothing"], ["boxes"]),
        helper.make_node("Add", ["scores_c", "nothing"], ["scores"]),
        helper.make_node("Identity", ["labels_c"], ["labels"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(0), "zero"),
        numpy_helper.from_array(boxes, "boxes_c"),
        numpy_helper.from_array(scores, "scores_c"),
        numpy_helper.from_array(labels, "labels_c"),
    ]
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 800, 800])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("retinanet")
    return {"data": write_dataset(root / "openimages"), "model": constant_detector(root / "detector.onnx"), "root": root}


def official_line(log: Path, data: Path, work: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DATASET_ANNOTATIONS_FILE_PATH"}
    proc = subprocess.run(
        [sys.executable, str(OFFICIAL), "--mlperf-accuracy-file", str(log), "--openimages-dir", str(data),
         "--output-file", str(work / "official-results.json")],
        capture_output=True, text=True, cwd=work, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("mAP=")][-1]


@pytest.mark.slow
def test_accuracy_run_gives_the_map_known_by_construction_as_the_official_script_does(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_cli(
        ["run", "--backend", "onnxruntime", "--model", "retinanet", "--model-path", str(setup["model"]),
         "--dataset", "openimages", "--dataset-path", str(setup["data"]), "--mode", "accuracy",
         "-s", "Offline", "--quick", "--output", str(out)],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(out)
    test_dir = run_dir / "Offline" / "accuracy"
    assert (test_dir / "accuracy.txt").read_text() == "mAP=50.000%\n"
    result = json.loads((run_dir / "result.json").read_text())
    accuracy = result["tests"][0]["accuracy"]
    assert accuracy["metric"] == "mAP" and accuracy["unit"] == "%" and accuracy["value"] == pytest.approx(50.0)
    assert accuracy["target"] == pytest.approx(0.99 * 37.55) and accuracy["passed"] is True
    assert "Offline accuracy: mAP=50.000%" in proc.stdout and "(target >= 37.174%) PASS" in proc.stdout and "PASS" in proc.stdout

    # Every logged sample: two records (the 0.01-scored detection is cut), its own qsl_idx first.
    log = json.loads((test_dir / "mlperf_log_accuracy.json").read_text())
    assert sorted({e["qsl_idx"] for e in log}) == list(range(len(SIZES)))
    for entry in log:
        records = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 7)
        assert records.shape == (2, 7) and (records[:, 0] == entry["qsl_idx"]).all()
        assert records[0, 1:5].tolist() == [0.25, 0.25, 0.75, 0.75]

    if not OFFICIAL.is_file():
        pytest.skip(f"MLCommons' accuracy-openimages.py is not at {OFFICIAL}")
    assert official_line(test_dir / "mlperf_log_accuracy.json", setup["data"], tmp_path) == "mAP=50.000%"

    # mlpi score re-scores the run from its plan, and writes nothing it was not asked to.
    (test_dir / "accuracy.txt").unlink()
    scored = run_cli(["score", str(run_dir)], cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[0] == "mAP=50.000%"
    assert not (test_dir / "accuracy.txt").exists()
    from_log = run_cli(["score", str(test_dir / "mlperf_log_accuracy.json")], cwd=tmp_path)  # the run's plan, found from its log
    assert from_log.returncode == 0, from_log.stderr
    assert from_log.stdout.splitlines()[0] == "mAP=50.000%"
    written = run_cli(["score", "--model", "retinanet", "--dataset", "openimages", "--dataset-path", str(setup["data"]),
                       str(test_dir / "mlperf_log_accuracy.json"), "--write"], cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert (test_dir / "accuracy.txt").read_text() == "mAP=50.000%\n"


def test_score_matches_the_official_script_on_a_log_it_did_not_write(setup: dict[str, Path], tmp_path: Path) -> None:
    """A log written by hand (out of order, a duplicate, an empty response): mlpi score and
    MLCommons' script print the same line."""
    from mlpi.testing.openimages_fixture import write_accuracy_log

    sizes = SIZES
    entries = []
    rng = np.random.default_rng(4)
    for index in (3, 0, 5, 1, 3, 2):
        width, height = sizes[index]
        n = 0 if index == 2 else 3
        boxes = np.sort(rng.uniform(0, 1, size=(n, 2, 2)), axis=1).reshape(n, 4)  # y0, x0 | y1, x1 pairs
        recs = np.zeros((n, 7), np.float32)
        recs[:, 0] = index
        recs[:, 1:5] = boxes[:, [0, 1, 2, 3]]
        recs[:, 5] = np.sort(rng.uniform(0.05, 1, size=n))[::-1]
        recs[:, 6] = rng.choice([FOUND, MISSED], size=n)
        entries.append((index, recs.tobytes()))
    log = write_accuracy_log(tmp_path / "mlperf_log_accuracy.json", entries)
    proc = run_cli(["score", "--model", "retinanet", "--dataset", "openimages", "--dataset-path", str(setup["data"]), str(log)],
                   cwd=tmp_path)
    assert proc.returncode in (0, 3), proc.stderr
    ours = proc.stdout.splitlines()[0]
    assert ours.startswith("mAP=")
    if not OFFICIAL.is_file():
        pytest.skip(f"MLCommons' accuracy-openimages.py is not at {OFFICIAL}")
    assert official_line(log, setup["data"], tmp_path) == ours


def test_a_missing_image_is_one_error_naming_it(setup: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "broken"
    shutil.copytree(setup["data"], data)
    (data / "validation" / "data" / "img03.jpg").unlink()
    proc = run_cli(["run", "--model", "retinanet", "--model-path", str(setup["model"]), "--dataset", "openimages",
                    "--dataset-path", str(data), "--mode", "accuracy", "--quick", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "img03.jpg")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_bad_annotation_file_is_one_error_naming_it(setup: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "broken"
    shutil.copytree(setup["data"], data)
    (data / "annotations" / "openimages-mlperf.json").write_text('{"images": [', encoding="utf-8")
    proc = run_cli(["run", "--model", "retinanet", "--model-path", str(setup["model"]), "--dataset", "openimages",
                    "--dataset-path", str(data), "--mode", "accuracy", "--quick", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "openimages-mlperf.json")


def test_a_dataset_that_does_not_fit_the_model_is_refused_while_planning(setup: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "val_map.txt").write_text("a.jpg 1\n", encoding="utf-8")
    proc = run_cli(["run", "--model", "retinanet", "--model-path", str(setup["model"]), "--dataset", "imagenet",
                    "--dataset-path", str(folder), "--quick", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "imagenet", "resize")


def test_an_accuracy_run_without_ground_truth_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(["run", "--model", "retinanet", "--model-path", str(setup["model"]), "--dataset", "synthetic",
                    "--mode", "accuracy", "--quick", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "no ground truth")


def test_score_errors_are_one_line(setup: dict[str, Path], tmp_path: Path) -> None:
    one_error(run_cli(["score", str(tmp_path / "nope.json")], cwd=tmp_path), "does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    one_error(run_cli(["score", "--model", "retinanet", "--dataset", "openimages", "--dataset-path", str(setup["data"]), str(bad)],
                       cwd=tmp_path), "bad.json")
    one_error(run_cli(["score", str(bad)], cwd=tmp_path), "no model given")
