"""SSD-MobileNet and SSD-ResNet34 on COCO end to end: accuracy runs on a COCO-layout folder
whose mAP is known by construction, MLCommons' accuracy-coco.py (with and without
--use-inv-map) on mlpi's logs, the random-weights graphs on every backend, the error paths.

The accuracy runs use two small ONNX detectors with the official signatures that find the one
coloured rectangle of each image in their input pixels (its box from the first and last bright
row and column, its class from the lit colour channels): a mix-up of samples, a preprocessing
step off (colour order, normalisation, layout) or a box order swapped changes the mAP."""

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

#: RGB colours of the objects; a colour's code counts its lit channels (R 1, G 2, B 4).
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "yellow": (255, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
#: Images: (width, height, the object's colour or None, its pixels x0, y0, x1, y1). Sides are
#: 300, 600 or 1200 and edges multiples of 16, so the objects sit on whole JPEG blocks and every
#: edge lands on a pixel boundary after the reference's resize to 300 (x2, x4 down) and to 1200
#: (x2, x4 up): each detection is its annotation exactly (IoU 1). Image 3 is a grayscale JPEG
#: (read as three equal channels: white); image 5 holds no object (an empty response).
IMAGES = [
    (600, 300, "red", (64, 48, 288, 208)),
    (300, 600, "green", (112, 320, 272, 560)),
    (1200, 600, "blue", (480, 64, 1040, 400)),
    (600, 600, "white", (32, 256, 224, 528)),
    (300, 1200, "yellow", (160, 96, 288, 800)),
    (600, 600, None, (0, 0, 0, 0)),
]
GRAYSCALE = 3
#: COCO-like, non-contiguous category ids, in the annotation file's order; 1 has no annotation
#: (it still shifts SSD-ResNet34's labels: label k is the k-th id of this list).
CATEGORY_IDS = (1, 7, 9, 13, 44, 62, 90)
CATEGORY_OF = {"red": 7, "green": 13, "white": 44, "yellow": 62, "blue": 90}
#: Annotated in every image (its top-left fifth), never detected: its AP is 0.
MISSED = 9
MISSED_BOX = (0.0, 0.0, 0.2, 0.2)
#: Each found category has AP 1, the missed one AP 0: mAP = found / (found + 1) = 5/6.
EXPECTED = f"mAP={100 * len(CATEGORY_OF) / (len(CATEGORY_OF) + 1):.3f}%"
#: A pixel is the object's when a channel exceeds this: the background decodes below ~40, the
#: object at 254..255, and the bilinear edges of an upscale blend at most 37.5% / at least 62.5%.
EDGE = 138.0
#: A channel is lit when its brightest pixel is full scale (255) within this: a normalisation
#: a few percent off (no mean/std, or theirs in BGR order) unlights it and changes the class.
LIT = 8.0
#: ImageNet's mean and std, SSD-ResNet34's normalisation after ``/ 255``.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def code(colour: str) -> int:
    """The colour's lit channels as the detectors read them: R 1, G 2, B 4."""
    return sum(1 << c for c, value in enumerate(COLOURS[colour]) if value == 255)


def label(category: int) -> int:
    """SSD-ResNet34's label of a COCO category: its 1-based place in the categories list."""
    return CATEGORY_IDS.index(category) + 1


def write_coco(root: Path) -> Path:
    """The COCO folder of :data:`IMAGES`: dark noise (0..16), one full-colour rectangle, JPEG
    at quality 95 without chroma subsampling; each image is read back and checked as designed."""
    import cv2

    data = root / "val2017"
    data.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k, (width, height, colour, (x0, y0, x1, y1)) in enumerate(IMAGES):
        name = f"{k:012d}.jpg"
        rgb = rng.integers(0, 17, size=(height, width, 3), dtype=np.uint8)
        if colour is not None:
            rgb[y0:y1, x0:x1] = COLOURS[colour]
        pixels = rgb[:, :, 0] if k == GRAYSCALE else rgb[:, :, ::-1]  # OpenCV writes BGR
        params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        assert cv2.imwrite(str(data / name), pixels, params)
        decoded = cv2.imread(str(data / name))[:, :, ::-1].astype(np.float32)
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = colour is not None
        assert np.array_equal(decoded.max(axis=2) > EDGE, mask), f"{name}: the JPEG blurred the object's edges"
        lit = np.abs(decoded.max(axis=(0, 1)) - 255) < LIT
        assert int(lit @ [1, 2, 4]) == (code(colour) if colour else 0), f"{name}: the JPEG changed the object's colour"
        image_id = 139 + 11 * k
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        found = [(CATEGORY_OF[colour], [x0, y0, x1 - x0, y1 - y0])] if colour else []
        missed = [MISSED_BOX[0] * width, MISSED_BOX[1] * height, (MISSED_BOX[2] - MISSED_BOX[0]) * width,
                  (MISSED_BOX[3] - MISSED_BOX[1]) * height]
        for category, box in [*found, (MISSED, missed)]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in CATEGORY_IDS]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8"
    )
    return root


class _Graph:
    """Nodes and initialisers of a hand-built ONNX graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def _find_object(g: _Graph, pixels: str, size: int, table: np.ndarray) -> tuple[dict[str, str], str, str, str]:
    """From ``pixels`` ``[N, size, size, 3]`` (float, 0..255): per image, the edges of the bright
    pixels' bounding box as ``[N, 1]`` fractions of ``size`` (top, left, bottom, right), the
    score (the share of the box that is bright: 1 for a rectangle, 0 for none), whether
    anything is bright (``[N]``), and the class ``table[lit channels' code]`` (``[N, 1]``)."""
    over = g.op("Cast", [g.op("Greater", [pixels, g.const("edge", np.float32(EDGE))], "over_bool")], "over", to=TensorProto.FLOAT)
    mask = g.op("ReduceMax", [over], "mask", axes=[3], keepdims=0)  # [N, H, W]
    lines = {"rows": g.op("ReduceMax", [mask], "rows", axes=[2], keepdims=0), "cols": g.op("ReduceMax", [mask], "cols", axes=[1], keepdims=0)}
    size_f = g.const("size", np.float32(size))
    one = g.const("one", np.float32(1))
    edges, ends = {}, {}
    for first, last, line in (("top", "bottom", "rows"), ("left", "right", "cols")):
        for name, last_index in ((first, 0), (last, 1)):
            index = g.op("ArgMax", [lines[line]], f"{name}_index", axis=1, keepdims=1, select_last_index=last_index)
            ends[name] = g.op("Cast", [index], f"{name}_pixel", to=TensorProto.FLOAT)
        ends[last] = g.op("Add", [ends[last], one], f"{last}_end")  # the pixel past the last bright one
        for name in (first, last):
            edges[name] = g.op("Div", [ends[name], size_f], f"{name}_fraction")
    height = g.op("Sub", [ends["bottom"], ends["top"]], "box_height")
    width = g.op("Sub", [ends["right"], ends["left"]], "box_width")
    area = g.op("Squeeze", [g.op("Mul", [height, width], "box_area"), g.const("axis1", np.array([1], np.int64))], "area")
    bright = g.op("ReduceSum", [mask, g.const("axes12", np.array([1, 2], np.int64))], "bright", keepdims=0)
    score = g.op("Div", [bright, area], "score")  # [N]; an image without object: 0 / 1
    found = g.op("ReduceMax", [mask], "found", axes=[1, 2], keepdims=0)
    brightest = g.op("ReduceMax", [pixels], "brightest", axes=[1, 2], keepdims=0)  # [N, 3]
    off = g.op("Abs", [g.op("Sub", [brightest, g.const("full", np.float32(255))], "from_full")], "off_full")
    lit = g.op("Cast", [g.op("Less", [off, g.const("lit_band", np.float32(LIT))], "lit_bool")], "lit", to=TensorProto.FLOAT)
    code_f = g.op("MatMul", [lit, g.const("bits", np.array([[1], [2], [4]], np.float32))], "code_f")  # [N, 1]
    code_i = g.op("Cast", [code_f], "code", to=TensorProto.INT64)
    cls = g.op("Gather", [g.const("table", table), code_i], "class", axis=0)
    return edges, score, found, cls


def _rows(g: _Graph, first: str, padding: np.ndarray, output: str) -> str:
    """``output`` = the detection ``first`` (``[N, 1, ...]``) then ``padding`` (``[1, P, ...]``)
    repeated for each image."""
    pad = g.op("Expand", [g.const(f"{output}_pad", padding), g.op("Shape", [first], f"{output}_shape")], f"{output}_rows")
    return g.op("Concat", [first, pad], output, axis=1)


def _table(values: dict[int, int], dtype: type) -> np.ndarray:
    """The class of each colour code 0..7 (0 where no colour is drawn)."""
    table = np.zeros(8, dtype)
    for key, value in values.items():
        table[key] = value
    return table


def mobilenet_detector(path: Path) -> Path:
    """SSD-MobileNet's signature (uint8 NHWC, dynamic batch) finding each image's rectangle:
    boxes ymin, xmin, ymax, xmax, classes COCO ids; ``num_detections`` is 1 (0 without object)
    and the padding row after it is a category-9 box on the missed annotation: logged, it would
    lift the mAP."""
    g = _Graph()
    pixels = g.op("Cast", ["image_tensor:0"], "pixels", to=TensorProto.FLOAT)
    table = _table({code(c): CATEGORY_OF[c] for c in CATEGORY_OF}, np.float32)
    edges, score, found, cls = _find_object(g, pixels, 300, table)
    box = g.op("Concat", [edges[e] for e in ("top", "left", "bottom", "right")], "box", axis=1)  # [N, 4]
    box = g.op("Unsqueeze", [box, g.const("axes1", np.array([1], np.int64))], "box_row")
    score = g.op("Unsqueeze", [score, "axes1"], "score_row")
    trap_boxes = np.zeros((1, 99, 4), np.float32)
    trap_boxes[0, 0] = [MISSED_BOX[1], MISSED_BOX[0], MISSED_BOX[3], MISSED_BOX[2]]
    trap_scores, trap_classes = np.zeros((1, 99), np.float32), np.zeros((1, 99), np.float32)
    trap_scores[0, 0], trap_classes[0, 0] = 0.8, MISSED
    _rows(g, box, trap_boxes, "detection_boxes:0")
    _rows(g, score, trap_scores, "detection_scores:0")
    _rows(g, cls, trap_classes, "detection_classes:0")
    g.op("Identity", [found], "num_detections:0")
    graph = helper.make_graph(
        g.nodes, "ssd_mobilenet_rectangle_detector",
        [helper.make_tensor_value_info("image_tensor:0", TensorProto.UINT8, ["N", 300, 300, 3])],
        [helper.make_tensor_value_info("num_detections:0", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("detection_boxes:0", TensorProto.FLOAT, ["N", 100, 4]),
         helper.make_tensor_value_info("detection_scores:0", TensorProto.FLOAT, ["N", 100]),
         helper.make_tensor_value_info("detection_classes:0", TensorProto.FLOAT, ["N", 100])],
        g.inits,
    )
    return _save(graph, path)


def resnet34_detector(path: Path) -> Path:
    """SSD-ResNet34's signature (float32 NCHW 1200x1200, ImageNet-normalised, undone in the
    graph) finding the rectangle: boxes xmin, ymin, xmax, ymax, labels 1..N (the place of the
    category in the file: the inverse map); then a missed-category box scored 0.4, below the
    0.5 cut, that must never be logged."""
    g = _Graph()
    std = g.const("std", np.array(STD, np.float32).reshape(1, 3, 1, 1))
    mean = g.const("mean", np.array(MEAN, np.float32).reshape(1, 3, 1, 1))
    unit = g.op("Add", [g.op("Mul", ["image", std], "scaled"), mean], "unit")
    nchw = g.op("Mul", [unit, g.const("max", np.float32(255))], "nchw")
    pixels = g.op("Transpose", [nchw], "pixels", perm=[0, 2, 3, 1])
    table = _table({code(c): label(CATEGORY_OF[c]) for c in CATEGORY_OF}, np.int64)
    edges, score, _, cls = _find_object(g, pixels, 1200, table)
    box = g.op("Concat", [edges[e] for e in ("left", "top", "right", "bottom")], "box", axis=1)
    box = g.op("Unsqueeze", [box, g.const("axes1", np.array([1], np.int64))], "box_row")
    score = g.op("Unsqueeze", [score, "axes1"], "score_row")
    trap_boxes = np.zeros((1, 199, 4), np.float32)
    trap_boxes[0, 0] = MISSED_BOX
    trap_scores, trap_labels = np.zeros((1, 199), np.float32), np.zeros((1, 199), np.int64)
    trap_scores[0, 0], trap_labels[0, 0] = 0.4, label(MISSED)
    _rows(g, box, trap_boxes, "bboxes")
    _rows(g, score, trap_scores, "scores")
    _rows(g, cls, trap_labels, "labels")
    graph = helper.make_graph(
        g.nodes, "ssd_resnet34_rectangle_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1200, 1200])],
        [helper.make_tensor_value_info("bboxes", TensorProto.FLOAT, [1, 200, 4]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 200]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 200])],
        g.inits,
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
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


def expected_records(k: int, inv_map: bool) -> np.ndarray:
    """Sample ``k``'s records as the detector must log them: its own rectangle (normalised
    ymin, xmin, ymax, xmax), score ~1, its category (or label); none for the empty image."""
    width, height, colour, (x0, y0, x1, y1) = IMAGES[k]
    if colour is None:
        return np.zeros((0, 7), np.float32)
    category = CATEGORY_OF[colour]
    return np.array([[k, y0 / height, x0 / width, y1 / height, x1 / width, 1.0, label(category) if inv_map else category]], np.float32)


def logged_records(log: Path) -> dict[int, np.ndarray]:
    """Each sample's records ``[n, 7]`` in a LoadGen accuracy log (its first entry)."""
    records: dict[int, np.ndarray] = {}
    for entry in json.loads(log.read_text()):
        records.setdefault(entry["qsl_idx"], np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 7))
    return records


def reference_input(path: Path, size: int, uint8: bool) -> np.ndarray:
    """The reference's preprocessing, spelled out: OpenCV BGR, float32, RGB, bilinear resize,
    then uint8 truncation (NHWC) or ``/ 255``, ImageNet mean/std (NCHW)."""
    import cv2

    pixels = cv2.resize(cv2.cvtColor(np.asarray(cv2.imread(str(path)), np.float32), cv2.COLOR_BGR2RGB), (size, size),
                        interpolation=cv2.INTER_LINEAR)
    if uint8:
        return np.asarray(pixels, dtype=np.uint8)[None]
    normalised = (pixels / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def test_detectors_find_each_rectangle_in_the_references_preprocessing(setup: dict[str, Path]) -> None:
    """The detectors alone, on the reference's inputs: every box is the image's annotation and
    every class its category, SSD-MobileNet in one batch (each image answered on its own)."""
    ort = pytest.importorskip("onnxruntime")
    files = [setup["data"] / "val2017" / f"{k:012d}.jpg" for k in range(len(IMAGES))]
    mobilenet = ort.InferenceSession(str(setup["ssd-mobilenet"]), providers=["CPUExecutionProvider"])
    batch = np.concatenate([reference_input(file, 300, uint8=True) for file in files])
    count, boxes, scores, classes = mobilenet.run(None, {"image_tensor:0": batch})
    resnet34 = ort.InferenceSession(str(setup["ssd-resnet34"]), providers=["CPUExecutionProvider"])
    for k, file in enumerate(files):
        expected = expected_records(k, inv_map=False)
        assert count[k] == len(expected), k
        bboxes, labels, resnet_scores = resnet34.run(None, {"image": reference_input(file, 1200, uint8=False)})
        # Row 0 passes the 0.5 cut only for an object; row 1 (0.4, a missed-category box) never does.
        assert (resnet_scores[0, 0] >= 0.5) == (len(expected) == 1) and resnet_scores[0, 1] == pytest.approx(0.4), k
        for row in expected:
            np.testing.assert_allclose(boxes[k, 0], row[1:5], atol=1e-6, err_msg=f"image {k}")
            np.testing.assert_allclose(bboxes[0, 0], row[[2, 1, 4, 3]], atol=1e-6, err_msg=f"image {k}")
            assert classes[k, 0] == row[6] and labels[0, 0] == label(int(row[6])), k
            assert scores[k, 0] == pytest.approx(1.0, abs=1e-4) and resnet_scores[0, 0] == pytest.approx(1.0, abs=1e-4), k


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
    assert (test_dir / "accuracy.txt").read_text() == EXPECTED + "\n"
    log = test_dir / "mlperf_log_accuracy.json"
    # Sample k answers image k's own rectangle: a mix-up of samples, images, layout or box order fails here.
    records = logged_records(log)
    assert sorted(records) == list(range(len(IMAGES)))
    for k, got in records.items():
        want = expected_records(k, inv_map)
        assert got.shape == want.shape, (k, got)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"sample {k}")
    assert official_line(log, setup["data"], tmp_path, *(["--use-inv-map"] if inv_map else [])) == EXPECTED
    if inv_map:  # the label mapping matters: without it, labels 2..7 name no annotated category's images
        assert official_line(log, setup["data"], tmp_path) == "mAP=0.000%"
    score = run_cli(["score", str(log), "--model", model, "--dataset", "coco", "--dataset-path", str(setup["data"])], tmp_path)
    assert score.returncode == 0 and score.stdout.splitlines()[0] == EXPECTED
    test = next(t for t in read_result(out)["tests"] if t["mode"] == "accuracy")
    assert test["accuracy"]["value"] == pytest.approx(100 * len(CATEGORY_OF) / (len(CATEGORY_OF) + 1))


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
