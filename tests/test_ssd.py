"""SSD-MobileNet and SSD-ResNet34 on COCO end to end: accuracy runs on a COCO-layout folder
whose mAP is known by construction, MLCommons' accuracy-coco.py (with and without
--use-inv-map) on mlpi's logs, the random-weights graphs on every backend, the error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import only_run_dir, read_result, run_cli
from onnx import TensorProto, helper, numpy_helper

from mlpi.datasets.openimages import Finish, model_input, resized_pixels
from mlpi.models import ssd_graph

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
OFFICIAL = SHARED / "vision" / "classification_and_detection" / "tools" / "accuracy-coco.py"
pycocotools = pytest.importorskip("pycocotools", reason="pycocotools (the detection extra) is not installed")

#: Image sizes (width, height), one of them written as a grayscale JPEG.
SIZES = [(640, 480), (320, 512), (800, 600), (256, 256), (400, 300)]
GRAYSCALE = 3
#: COCO-like, non-contiguous category ids. Category 5: one box per image at [0.25, 0.75] of
#: each side, found exactly; category 9: a corner box no detection overlaps. mAP = 50.000%.
CATEGORY_IDS = (1, 5, 9, 13, 90)
FOUND, MISSED = 5, 9


def write_coco(root: Path) -> Path:
    import cv2

    data = root / "val2017"
    data.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k, (width, height) in enumerate(SIZES):
        name = f"{k:012d}.jpg"
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        assert cv2.imwrite(str(data / name), pixels[:, :, 0] if k == GRAYSCALE else pixels)
        image_id = 139 + 11 * k
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for category, (x0, y0, x1, y1) in ((FOUND, (0.25, 0.25, 0.75, 0.75)), (MISSED, (0.0, 0.0, 0.2, 0.2))):
            box = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in CATEGORY_IDS]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8"
    )
    return root


def _batch_zero(name: str, axes: list[int], cast: bool) -> list[onnx.NodeProto]:
    """``zero[N]``: 0 per image, computed from it (so each image goes through the graph)."""
    nodes = []
    source = name
    if cast:
        nodes.append(helper.make_node("Cast", [name], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes += [helper.make_node("ReduceMean", [source], ["mean"], axes=axes, keepdims=0),
              helper.make_node("Mul", ["mean", "zero"], ["batch_zero"])]
    return nodes


def mobilenet_detector(path: Path) -> Path:
    """SSD-MobileNet's signature; per image: category 5's box exactly, a category-9 box that
    overlaps nothing, then 98 padding rows past num_detections = 2 (never logged)."""
    boxes = np.zeros((100, 4), np.float32)
    boxes[0] = [0.25, 0.25, 0.75, 0.75]  # ymin, xmin, ymax, xmax
    boxes[1] = [0.8, 0.8, 1.0, 1.0]
    scores = np.zeros(100, np.float32)
    scores[:2] = [0.9, 0.8]
    classes = np.zeros(100, np.float32)
    classes[:2] = [FOUND, MISSED]
    nodes = _batch_zero("image_tensor:0", [1, 2, 3], cast=True) + [
        helper.make_node("Unsqueeze", ["batch_zero", "axes12"], ["zero3"]),
        helper.make_node("Unsqueeze", ["batch_zero", "axes1"], ["zero2"]),
        helper.make_node("Add", ["batch_zero", "two"], ["num_detections:0"]),
        helper.make_node("Add", ["zero3", "boxes_c"], ["detection_boxes:0"]),
        helper.make_node("Add", ["zero2", "scores_c"], ["detection_scores:0"]),
        helper.make_node("Add", ["zero2", "classes_c"], ["detection_classes:0"]),
    ]
    inits = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"), numpy_helper.from_array(np.array([1], np.int64), "axes1"),
             numpy_helper.from_array(boxes, "boxes_c"), numpy_helper.from_array(scores, "scores_c"),
             numpy_helper.from_array(classes, "classes_c")]
    graph = helper.make_graph(
        nodes, "ssd_mobilenet_constant_detector",
        [helper.make_tensor_value_info("image_tensor:0", TensorProto.UINT8, ["N", 300, 300, 3])],
        [helper.make_tensor_value_info("num_detections:0", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("detection_boxes:0", TensorProto.FLOAT, ["N", 100, 4]),
         helper.make_tensor_value_info("detection_scores:0", TensorProto.FLOAT, ["N", 100]),
         helper.make_tensor_value_info("detection_classes:0", TensorProto.FLOAT, ["N", 100])],
        inits,
    )
    return _save(graph, path)


def resnet34_detector(path: Path) -> Path:
    """SSD-ResNet34's signature; labels count the categories from 1 (2 -> id 5, 3 -> id 9),
    boxes xyxy; a third detection scored 0.4 (below the 0.5 cut: never logged)."""
    boxes = np.zeros((1, 200, 4), np.float32)
    boxes[0, 0] = [0.25, 0.25, 0.75, 0.75]
    boxes[0, 1] = [0.8, 0.8, 1.0, 1.0]
    boxes[0, 2] = [0.0, 0.0, 0.2, 0.2]
    scores = np.zeros((1, 200), np.float32)
    scores[0, :3] = [0.9, 0.8, 0.4]
    labels = np.zeros((1, 200), np.int64)
    labels[0, :3] = [2, 3, 3]
    nodes = _batch_zero("image", [1, 2, 3], cast=False) + [
        helper.make_node("Add", ["boxes_c", "batch_zero"], ["bboxes"]),
        helper.make_node("Add", ["scores_c", "batch_zero"], ["scores"]),
        helper.make_node("Identity", ["labels_c"], ["labels"]),
    ]
    inits = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(boxes, "boxes_c"),
             numpy_helper.from_array(scores, "scores_c"), numpy_helper.from_array(labels, "labels_c")]
    graph = helper.make_graph(
        nodes, "ssd_resnet34_constant_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1200, 1200])],
        [helper.make_tensor_value_info("bboxes", TensorProto.FLOAT, [1, 200, 4]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 200]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 200])],
        inits,
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssd")
    return {
        "data": write_coco(root / "coco"),
        "ssd-mobilenet": mobilenet_detector(root / "mobilenet.onnx"),
        "ssd-resnet34": resnet34_detector(root / "resnet34.onnx"),
    }


def official_line(log: Path, data: Path, work: Path, *extra: str) -> str:
    if not OFFICIAL.exists():
        pytest.skip(f"MLCommons' accuracy-coco.py is not at {OFFICIAL} (the shared mlcommons-inference folder is absent)")
    proc = subprocess.run(
        [sys.executable, str(OFFICIAL), "--mlperf-accuracy-file", str(log), "--coco-dir", str(data),
         "--output-file", str(work / "official-results.json"), *extra],
        capture_output=True, text=True, cwd=work, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("mAP=")][-1]


@pytest.mark.slow
@pytest.mark.parametrize("model,inv_map", [("ssd-mobilenet", False), ("ssd-resnet34", True)])
def test_accuracy_run_gives_the_known_map_as_accuracy_coco_does(setup: dict[str, Path], tmp_path: Path, model: str, inv_map: bool) -> None:
    out = tmp_path / "results"
    proc = run_cli(
        ["run", "--backend", "onnxruntime", "--model", model, "--model-path", str(setup[model]),
         "--dataset", "coco", "--dataset-path", str(setup["data"]), "--mode", "accuracy",
         "-s", "Offline", "--quick", "--output", str(out)],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test_dir = only_run_dir(out) / "Offline" / "accuracy"
    assert (test_dir / "accuracy.txt").read_text() == "mAP=50.000%\n"
    log = test_dir / "mlperf_log_accuracy.json"
    assert official_line(log, setup["data"], tmp_path, *(["--use-inv-map"] if inv_map else [])) == "mAP=50.000%"
    if inv_map:  # the label mapping matters: without it, the found boxes carry category 2, not 5
        assert official_line(log, setup["data"], tmp_path) == "mAP=0.000%"
    score = run_cli(["score", str(log), "--model", model, "--dataset", "coco", "--dataset-path", str(setup["data"])], tmp_path)
    assert score.returncode == 0 and score.stdout.splitlines()[0] == "mAP=50.000%"
    test = next(t for t in read_result(out)["tests"] if t["mode"] == "accuracy")
    assert test["accuracy"]["value"] == pytest.approx(50.0)


def test_coco_preprocessing_is_the_references(setup: dict[str, Path]) -> None:
    """uint8 pixels for SSD-MobileNet, /255 then ImageNet mean/std for SSD-ResNet34, computed
    the reference's way (float32 resize, then the finish), grayscale read as three channels."""
    import cv2

    bgr = cv2.imread(str(setup["data"] / "val2017" / f"{GRAYSCALE:012d}.jpg"))
    assert bgr.ndim == 3  # OpenCV's default colour mode, as the reference reads it
    pixels = resized_pixels(bgr, 300, 300)
    reference_u8 = np.asarray(pixels, dtype=np.uint8)
    assert np.array_equal(model_input(pixels[None], Finish("NHWC", uint8=True))[0], reference_u8)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    reference_f32 = ((pixels / 255.0 - mean) / std).transpose(2, 0, 1)
    got = model_input(pixels[None], Finish("NCHW", mean=tuple(mean.tolist()), std=tuple(std.tolist())))[0]
    assert got.dtype == np.float32 and np.array_equal(got, reference_f32.astype(np.float32))


@pytest.mark.parametrize("case", ["no-images", "missing-image", "wrong-model"])
def test_bad_coco_data_is_one_error_line(setup: dict[str, Path], tmp_path: Path, case: str) -> None:
    import shutil

    data = tmp_path / "coco"
    shutil.copytree(setup["data"], data)
    model = "ssd-mobilenet"
    args = ["--model-path", str(setup["ssd-mobilenet"])]
    if case == "no-images":
        file = data / "annotations" / "instances_val2017.json"
        document = json.loads(file.read_text())
        del document["images"]
        file.write_text(json.dumps(document))
    elif case == "missing-image":
        (data / "val2017" / f"{2:012d}.jpg").unlink()
    else:  # a model whose data parameters coco cannot serve
        model, args = "resnet50", ["--weights", "random"]
    proc = run_cli(["run", "--model", model, *args, "--dataset", "coco", "--dataset-path", str(data),
                    "-s", "Offline", "--quick", "--output", str(tmp_path / "out")], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    expected = {"no-images": "'images'", "missing-image": f"{2:012d}.jpg", "wrong-model": "coco"}[case]
    assert expected in proc.stderr


def test_random_graphs_have_the_official_signatures_and_cost() -> None:
    mobilenet = ssd_graph.build_ssd_mobilenet(0, width=0.25)
    onnx.checker.check_model(mobilenet)
    assert [i.name for i in mobilenet.graph.input] == ["image_tensor:0"]
    assert [o.name for o in mobilenet.graph.output] == list(ssd_graph.MOBILENET_OUTPUTS)
    resnet34 = ssd_graph.build_ssd_resnet34(0, width=0.125, image_size=1200)
    assert [o.name for o in resnet34.graph.output] == list(ssd_graph.RESNET34_OUTPUTS)
    # The real models: about 1.2 GMAC (SSD-MobileNet-v1 300x300) and 216 GMAC (433 GFLOPs, SSD-ResNet34 1200x1200).
    assert 1.1e9 < ssd_graph.mobilenet_macs() < 1.35e9
    assert 0.9 * 216e9 < ssd_graph.resnet34_macs() < 1.1 * 216e9


#: Scenarios each backend runs here: the drivers are the core's, the same for every backend.
#: PyTorch runs one: its converted SSD takes ~2 s an image on two cores (conv2d and the NMS
#: in numpy), so every scenario would cost CI over three minutes.
SSD_SCENARIOS = {
    "onnxruntime": ["MultiStream", "Offline", "Server", "SingleStream"],
    "openvino": ["MultiStream", "Offline", "Server", "SingleStream"],
    "pytorch": ["SingleStream"],
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(SSD_SCENARIOS))
def test_random_ssd_mobilenet_runs_every_scenario(tmp_path: Path, backend: str) -> None:
    pytest.importorskip({"onnxruntime": "onnxruntime", "openvino": "openvino", "pytorch": "torch"}[backend])
    out = tmp_path / "out"
    scenarios = [arg for name in SSD_SCENARIOS[backend] for arg in ("-s", name)]
    proc = run_cli(["run", "--model", "ssd-mobilenet", "--weights", "random", "--backend", backend,
                    *scenarios, "--duration", "1", "--output", str(out)], tmp_path, timeout=900)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    tests = read_result(out)["tests"]
    assert sorted(t["scenario"] for t in tests) == SSD_SCENARIOS[backend]
    assert all(t["status"] == "ok" for t in tests)
