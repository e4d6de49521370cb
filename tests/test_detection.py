"""Detection responses (MLPerf's float32 records) and the COCO mAP scorer, against MLCommons' own script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlpi.core.contract.accuracy import AccuracyResult, read_accuracy_log
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import Dataset, DatasetRequest
from mlpi.core.contract.errors import DatasetError, ModelError, PluginError, RunFailed
from mlpi.core.contract.postprocess import Responses
from mlpi.datasets.openimages import OpenImages
from mlpi.models.detection import (
    COCO_STATS,
    DetectionResponses,
    coco_map,
    decode_detections,
    score_coco,
)
from mlpi.testing.openimages_fixture import (
    EMPTY,
    KNOWN_MAP,
    LOGGED,
    OpenImagesFixture,
    accuracy_log_text,
    known_map_case,
    random_case,
    records,
    write_accuracy_log,
    write_openimages,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
TOOLS = SHARED / "vision" / "classification_and_detection" / "tools"


def reference_loop(boxes, scores, labels, index, height, width, threshold=0.05):  # type: ignore[no-untyped-def]
    """MLPerf's PostProcessOpenImagesRetinanet + main.py's response bytes, written out per
    detection: stop at the first score below the threshold, box [x1,y1,x2,y2] / input size."""
    found = []
    for d in range(len(scores)):
        if scores[d] < threshold:
            break
        box = boxes[d]
        found.append([float(index), box[1] / height, box[0] / width, box[3] / height, box[2] / width, scores[d], float(int(labels[d]))])
    return np.array(found, np.float32).tobytes()


def random_outputs(rng: np.random.Generator, n: int, height: int, width: int) -> dict[str, np.ndarray]:
    corners = rng.uniform(-5, max(height, width) + 5, (n, 4)).astype(np.float32)
    scores = np.sort(rng.uniform(0, 1, n).astype(np.float32))[::-1].copy()
    if n and rng.random() < 0.3:
        scores[rng.integers(0, n)] = np.float32(0.05)  # exactly the threshold: kept
    return {"boxes": corners, "scores": scores, "labels": rng.integers(0, 264, n).astype(np.int64)}


# -- DetectionResponses -------------------------------------------------------------------


def test_records_stop_at_the_first_score_below_the_threshold() -> None:
    post = DetectionResponses(100, 200)
    outputs = {
        "boxes": np.array([[10, 20, 30, 40], [0, 0, 200, 100], [1, 1, 2, 2], [5, 5, 6, 6]], np.float32),
        "scores": np.array([0.9, 0.5, 0.04, 0.7], np.float32),  # the 0.7 after the break is dropped too
        "labels": np.array([3, 263, 1, 2], np.int64),
    }
    response = post(outputs, [17])
    assert isinstance(response, Responses) and len(response) == 1 and post.sample_nbytes is None
    got = np.frombuffer(response.sample(0), np.float32).reshape(-1, 7)
    want = np.array([[17, 20 / 100, 10 / 200, 40 / 100, 30 / 200, 0.9, 3], [17, 0, 0, 1, 1, 0.5, 263]], np.float32)
    assert np.array_equal(got, want)
    assert response.sample(0) == reference_loop(outputs["boxes"], outputs["scores"], outputs["labels"], 17, 100, 200)


@pytest.mark.parametrize(
    "scores",
    [np.array([0.01, 0.9], np.float32), np.zeros(0, np.float32), np.array([0.049999997], np.float32)],
)
def test_empty_responses(scores: np.ndarray) -> None:
    n = len(scores)
    outputs = {"boxes": np.ones((n, 4), np.float32), "scores": scores, "labels": np.zeros(n, np.int64)}
    response = DetectionResponses(800, 800)(outputs, [3])
    assert response.sample(0) == b"" and list(response.offsets) == [0, 0]


def test_bytes_equal_the_reference_loop_on_random_outputs() -> None:
    rng = np.random.default_rng(7)
    for height, width in [(800, 800), (799, 1201), (3, 7)]:
        post = DetectionResponses(height, width)
        for trial in range(40):
            n = int(rng.integers(0, 400))
            outputs = random_outputs(rng, n, height, width)
            index = int(rng.integers(0, 24781))
            got = post(outputs, [index]).sample(0)
            assert got == reference_loop(outputs["boxes"], outputs["scores"], outputs["labels"], index, height, width), (height, width, trial)


def test_float64_division_gives_the_same_bytes() -> None:
    """Under NumPy 1 the reference's ``box[1] / height`` is a float64 division rounded to float32
    by ``np.array(..., np.float32)``; under NumPy 2 a float32 division. Both round the exact
    quotient once (53 >= 2 * 24 + 2 bits), so the logged bytes are the same either way."""
    rng = np.random.default_rng(13)
    for height, width in [(800, 800), (799, 1201), (1200, 1200)]:
        outputs = random_outputs(rng, 2000, height, width)
        outputs["scores"][:] = 0.5
        as_float64 = {**outputs, "boxes": outputs["boxes"].astype(np.float64)}
        want = reference_loop(as_float64["boxes"], outputs["scores"], outputs["labels"], 1, height, width)
        assert DetectionResponses(height, width)(outputs, [1]).sample(0) == want


def test_nan_scores_are_not_below_the_threshold() -> None:
    outputs = {"boxes": np.ones((3, 4), np.float32), "scores": np.array([0.9, np.nan, 0.01], np.float32), "labels": np.arange(3)}
    got = DetectionResponses(10, 10)(outputs, [0]).sample(0)
    assert got == reference_loop(outputs["boxes"], outputs["scores"], outputs["labels"], 0, 10, 10)
    assert len(got) == 2 * 28


def test_batched_outputs_with_a_count_and_ssd_box_order() -> None:
    """The SSD form: [B, N, 4] yxyx normalised boxes, float labels, a detection count, no threshold
    (MLPerf's PostProcessCoco logs box[0..3] as they are and float(int(class)))."""
    rng = np.random.default_rng(3)
    b, m = 5, 50
    boxes = rng.uniform(0, 1, (b, m, 4)).astype(np.float32)
    scores = rng.uniform(0, 1, (b, m)).astype(np.float32)
    labels = rng.integers(1, 91, (b, m)).astype(np.float32) + np.float32(0.25)
    counts = np.array([0, 50, 7, 1, 13], np.float32)
    post = DetectionResponses(1, 1, count="num", score_threshold=None, box_order="yxyx", normalized=True, max_batch=b)
    indices = [9, 2, 40, 0, 7]
    response = post({"boxes": boxes, "scores": scores, "labels": labels, "num": counts}, indices)
    assert len(response) == b
    for j, index in enumerate(indices):
        want = [[float(index), *boxes[j, d], scores[j, d], float(int(labels[j, d]))] for d in range(int(counts[j]))]
        assert response.sample(j) == np.array(want, np.float32).tobytes(), j


def test_batched_outputs_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(11)
    batch = [random_outputs(rng, 30, 800, 800) for _ in range(4)]
    stacked = {name: np.stack([o[name] for o in batch]) for name in ("boxes", "scores", "labels")}
    together = DetectionResponses(800, 800, max_batch=4)(stacked, [4, 5, 6, 7])
    single = DetectionResponses(800, 800)
    for j, outputs in enumerate(batch):
        assert together.sample(j) == single(outputs, [4 + j]).sample(0)


def test_buffers_are_reused_and_grow() -> None:
    rng = np.random.default_rng(5)
    post = DetectionResponses(800, 800)
    first = post(random_outputs(rng, 20, 800, 800), [0])
    second = post(random_outputs(rng, 20, 800, 800), [1])
    assert first.buffer.ctypes.data == second.buffer.ctypes.data  # no allocation per call
    big = random_outputs(rng, 5000, 800, 800)
    big["scores"][:] = 0.9
    response = post(big, [2])
    assert response.sample(0) == reference_loop(big["boxes"], big["scores"], big["labels"], 2, 800, 800)


def test_factory_checks_the_output_names() -> None:
    outputs = [TensorSpec("boxes", "float32", (None, 4)), TensorSpec("scores", "float32", (None,)), TensorSpec("labels", "int64", (None,))]
    assert isinstance(DetectionResponses.factory(800, 800)(outputs, 1), DetectionResponses)
    with pytest.raises(ModelError, match="no output detection_boxes"):
        DetectionResponses.factory(800, 800, boxes="detection_boxes")(outputs, 1)


def test_postprocess_cost_per_sample_is_far_below_two_percent_of_retinanet() -> None:
    """RetinaNet takes ~1 s per image on a CPU: 2% is 20 ms. 300 detections must cost far less."""
    rng = np.random.default_rng(0)
    outputs = random_outputs(rng, 300, 800, 800)
    outputs["scores"] = np.sort(rng.uniform(0.05, 1, 300).astype(np.float32))[::-1].copy()
    post = DetectionResponses(800, 800)
    for _ in range(200):
        post(outputs, [1])
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(500):
            post(outputs, [1])
        best = min(best, (time.perf_counter() - start) / 500)
    print(f"DetectionResponses: {best * 1e6:.1f} us per sample with 300 detections")
    assert len(post(outputs, [1]).sample(0)) == 300 * 28
    assert best < 0.002  # 0.2% of a RetinaNet inference, with a wide margin for slow CI machines


# -- the LoadGen log ------------------------------------------------------------------------


def test_accuracy_log_is_written_as_loadgen_writes_it(tmp_path: Path) -> None:
    text = accuracy_log_text([(3, b"\x01\xab"), (0, b"")])
    assert text == '[\n{ "seq_id" : 0, "qsl_idx" : 3, "data" : "01AB" },\n{ "seq_id" : 1, "qsl_idx" : 0, "data" : "" }\n]\n'
    log = write_accuracy_log(tmp_path / "mlperf_log_accuracy.json", [(3, b"\x01\xab"), (3, b"\x02"), (0, b"")])
    assert json.loads(log.read_text())[1] == {"seq_id": 1, "qsl_idx": 3, "data": "02"}
    assert read_accuracy_log(log) == {3: b"\x01\xab", 0: b""}


# -- scoring ------------------------------------------------------------------------------

needs_pycocotools = pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is None, reason='pycocotools is not installed (pip install "mlpi[detection]")'
)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> OpenImagesFixture:
    return write_openimages(tmp_path_factory.mktemp("openimages"))


@pytest.fixture(scope="module")
def dataset(fixture: OpenImagesFixture) -> Dataset:
    return OpenImages().open(DatasetRequest((), path=fixture.root, for_scoring=True))


def score(dataset: Dataset, entries: list[tuple[int, bytes]]) -> AccuracyResult:
    """coco_map of log entries, the first per sample kept as read_accuracy_log does."""
    responses: dict[int, bytes] = {}
    for index, data in entries:
        responses.setdefault(index, data)
    return coco_map(responses, dataset, ())


def official(tmp_path: Path, log: Path, root: Path, script: str = "accuracy-openimages.py", *extra: str) -> subprocess.CompletedProcess[str]:
    """MLCommons' script, run as its README says, in a folder of its own."""
    if not (TOOLS / script).is_file():
        pytest.skip(f"MLCommons' {script} is not at {TOOLS} (the shared mlcommons-inference folder is absent)")
    work = tmp_path / f"official-{log.stem}"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DATASET_ANNOTATIONS_FILE_PATH"}
    dir_flag = "--openimages-dir" if "openimages" in script else "--coco-dir"
    return subprocess.run(
        [sys.executable, str(TOOLS / script), "--mlperf-accuracy-file", str(log), dir_flag, str(root), "--output-file", str(work / "results.json"), *extra],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )


def official_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("mAP=")]
    assert len(lines) == 1, proc.stdout
    return lines[0]


@needs_pycocotools
def test_known_map_by_construction(fixture: OpenImagesFixture, dataset: Dataset) -> None:
    case = known_map_case(fixture)
    assert case.value == KNOWN_MAP and case.notes == {"present": [0, 3, 7, 12], "perfect": [0, 3, 7]}
    result = score(dataset, case.entries)
    assert result.value == 75.0 and result.lines == ("mAP=75.000%",) == (case.line,)
    assert result.metric == "mAP" and result.unit == "%" and result.higher_is_better
    details = result.details
    assert list(details["coco_stats"]) == list(COCO_STATS) and details["coco_stats"]["AP"] == 0.75
    first: dict[int, bytes] = {}
    for index, data in case.entries:
        first.setdefault(index, data)
    assert details["images"] == len(LOGGED) and details["images_without_detections"] == 1
    assert details["detections"] == sum(len(data) for data in first.values()) // 28
    assert "Average Precision" in details["summary"] and "warnings" not in details
    assert json.dumps(result.to_json())  # everything is JSON for result.json


@needs_pycocotools
def test_the_known_case_holds_its_traps(fixture: OpenImagesFixture, dataset: Dataset) -> None:
    """Each trap in the fixture changes the value when a scorer falls into it."""
    entries = known_map_case(fixture).entries
    assert score(dataset, entries).value == 75.0
    # Dropping the empty response drops category 12's only ground truth: 3 of 3.
    assert score(dataset, [e for e in entries if e[0] != EMPTY]).value == 100.0
    # The duplicate of sample 0 instead of the first entry: sample 0's true boxes are lost.
    assert score(dataset, list(dict(entries).items())).value < 75.0
    # Evaluating the unlogged sample 5 too: category 0's box there is missed.
    assert score(dataset, [*entries, (5, b"")]).value < 75.0
    # Other perfect sets give what the construction says (12 is never found: its box is in the empty response).
    for perfect, value in [((0, 3, 7, 12), 75.0), ((0, 3), 50.0), ((7,), 25.0), ((), 0.0), ((3, 20), 25.0)]:
        case = known_map_case(fixture, perfect)
        assert case.value == value and score(dataset, case.entries).value == value, perfect


@needs_pycocotools
def test_mlpi_prints_the_official_line_on_the_known_case(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path) -> None:
    log = write_accuracy_log(tmp_path / "known.json", known_map_case(fixture).entries)
    result = coco_map(read_accuracy_log(log), dataset, ())
    assert official_line(official(tmp_path, log, fixture.root)) == result.lines[0] == "mAP=75.000%"


@needs_pycocotools
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlpi_prints_the_official_line_on_random_detections(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path, seed: int) -> None:
    case = random_case(fixture, seed)
    indices = [index for index, _ in case.entries]
    assert len(indices) > len(set(indices))  # a duplicate entry...
    assert any(not data for _, data in case.entries)  # ...and an image without results
    log = write_accuracy_log(tmp_path / f"random{seed}.json", case.entries)
    result = coco_map(read_accuracy_log(log), dataset, ())
    proc = official(tmp_path, log, fixture.root)
    line = official_line(proc)
    assert result.lines[0] == line, (result.lines, line)
    assert result.value not in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert result.lines[0] == f"mAP={100 * result.details['coco_stats']['AP']:.3f}%"
    # Not only the line: the same detection floats go into pycocotools, and all 12 figures agree.
    theirs = json.loads((tmp_path / f"official-{log.stem}" / "results.json").read_text())
    for detection in theirs:
        del detection["image_loc"]
    ours = decode_detections(read_accuracy_log(log), fixture.images).detections
    assert theirs == ours and len(ours) == result.details["detections"]
    assert result.details["summary"] in proc.stdout


@needs_pycocotools
def test_payload_index_disagreement_is_recorded_not_fatal(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path) -> None:
    entries = known_map_case(fixture).entries
    index, data = entries[0]
    wrong = np.frombuffer(data, np.float32).reshape(-1, 7).copy()
    wrong[1, 0] = index + 1  # one record claims another sample
    entries[0] = (index, wrong.tobytes())
    log = write_accuracy_log(tmp_path / "mismatch.json", entries)
    with pytest.warns(RuntimeWarning, match="disagree on image_idx"):
        result = coco_map(read_accuracy_log(log), dataset, ())
    assert result.lines == ("mAP=75.000%",) and result.details["payload_mismatches"] == 1
    proc = official(tmp_path, log, fixture.root)
    assert f"ERROR: loadgen({index}) and payload({index + 1}) disagree on image_idx" in proc.stdout
    assert official_line(proc) == result.lines[0]


@needs_pycocotools
def test_inverse_label_map_as_accuracy_coco(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path) -> None:
    """accuracy-coco.py --use-inv-map: labels 1..K name the K categories in id order."""
    coco_dir = tmp_path / "coco"
    (coco_dir / "annotations").mkdir(parents=True)
    annotations = coco_dir / "annotations" / "instances_val2017.json"
    annotations.write_text(fixture.annotation_file.read_text())
    position = {c["id"]: k + 1 for k, c in enumerate(sorted(fixture.categories, key=lambda c: c["id"]))}
    entries = []
    for index, data in random_case(fixture, 4).entries:
        values = np.frombuffer(data, np.float32).reshape(-1, 7).copy()
        values[:, 6] = [position[int(v)] for v in values[:, 6]]
        entries.append((index, values.tobytes()))
    log = write_accuracy_log(tmp_path / "coco.json", entries)
    result = score_coco(read_accuracy_log(log), annotations, use_inv_map=True)
    assert official_line(official(tmp_path, log, coco_dir, "accuracy-coco.py", "--use-inv-map")) == result.lines[0]
    assert result.value == score(dataset, random_case(fixture, 4).entries).value


@needs_pycocotools
def test_a_log_without_any_detection(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path) -> None:
    entries = [(index, b"") for index in LOGGED]
    with pytest.warns(RuntimeWarning, match="no response holds a detection"):
        result = score(dataset, entries)
    assert result.lines == ("mAP=0.000%",) and result.details["detections"] == 0
    # MLCommons' script has no answer for it: pycocotools' loadRes fails on an empty list.
    proc = official(tmp_path, write_accuracy_log(tmp_path / "none.json", entries), fixture.root)
    assert proc.returncode != 0 and "IndexError" in proc.stderr


@needs_pycocotools
def test_end_to_end_from_model_outputs_to_the_official_line(fixture: OpenImagesFixture, dataset: Dataset, tmp_path: Path) -> None:
    """Model-like outputs for every image -> DetectionResponses -> LoadGen log -> both scorers."""
    post = DetectionResponses(800, 800)
    entries = []
    for index, image in enumerate(fixture.images):
        sx, sy = 800 / image["width"], 800 / image["height"]
        truth = [a for a in fixture.boxes(index) if not a["iscrowd"]]
        corners = [[x * sx, y * sy, (x + w) * sx, (y + h) * sy] for x, y, w, h in (a["bbox"] for a in truth)]
        outputs = {
            "boxes": np.array(corners, np.float32).reshape(-1, 4),
            "scores": np.linspace(0.9, 0.1, len(truth)).astype(np.float32),
            "labels": np.array([a["category_id"] for a in truth], np.int64),
        }
        entries.append((index, post(outputs, [index]).sample(0)))
    log = write_accuracy_log(tmp_path / "e2e.json", entries)
    result = coco_map(read_accuracy_log(log), dataset, ())
    assert result.lines == ("mAP=100.000%",)  # every box found, through float32 scaling both ways
    assert official_line(official(tmp_path, log, fixture.root)) == result.lines[0]


@pytest.mark.parametrize("precision", [np.float32, np.float64])
def test_decoding_follows_the_script_in_either_numpy(fixture: OpenImagesFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: type) -> None:
    """The script scales ``ymin *= height`` on float32 scalars: float32 arithmetic under NumPy 2,
    float64 under NumPy 1. mlpi asks NumPy which, and computes the same floats vectorised."""
    import mlpi.models.detection as detection

    monkeypatch.setattr(detection, "_scalar_dtype", lambda: np.dtype(precision))
    responses = read_accuracy_log(write_accuracy_log(tmp_path / "log.json", random_case(fixture, 5).entries))
    want = []
    for index, data in responses.items():
        values = np.frombuffer(data, np.float32)
        image = fixture.images[index]
        for i in range(0, len(values) if len(values) >= 7 else 0, 7):
            _, ymin, xmin, ymax, xmax, score, label = (precision(v) for v in values[i : i + 7])
            ymin, xmin = ymin * precision(image["height"]), xmin * precision(image["width"])
            ymax, xmax = ymax * precision(image["height"]), xmax * precision(image["width"])
            bbox = [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)]
            want.append({"image_id": image["id"], "category_id": int(label), "bbox": bbox, "score": float(score)})
    assert decode_detections(responses, fixture.images).detections == want
    assert detection._scalar_dtype() == precision


class NoTruth:
    def ground_truth(self) -> None:
        return None


class ClassLabels:
    def ground_truth(self) -> np.ndarray:
        return np.zeros(3, np.int64)


def test_scoring_needs_coco_ground_truth_and_pycocotools(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="no COCO ground truth") as info:
        coco_map({0: b""}, NoTruth(), ())
    assert "--dataset openimages" in (info.value.hint or "")
    with pytest.raises(DatasetError, match="ndarray, not COCO annotations"):
        coco_map({0: b""}, ClassLabels(), ())
    # pycocotools is imported only when scoring, and its absence says how to install it.
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(PluginError, match="needs pycocotools") as missing:
        coco_map({0: b""}, dataset, ())
    assert missing.value.hint == 'pip install "mlpi[detection]"'


@needs_pycocotools
def test_bad_logs_are_named(dataset: Dataset) -> None:
    with pytest.raises(DatasetError, match="names sample 6, but"):
        coco_map({6: b""}, dataset, ())
    with pytest.raises(DatasetError, match="no responses"):
        coco_map({}, dataset, ())
    with pytest.raises(RunFailed, match="sample 1 has 5 bytes"):
        coco_map({1: b"12345"}, dataset, ())
    with pytest.raises(RunFailed, match="sample 2 holds 10 float32 values"):
        coco_map({2: np.zeros(10, np.float32).tobytes()}, dataset, ())
    nan_label = records(0, [[1, 1, 5, 5]], [0.9], [0], 64, 96)
    nan_label[0, 6] = np.nan
    with pytest.raises(RunFailed, match="label"):
        coco_map({0: nan_label.tobytes()}, dataset, ())
    # A response shorter than one record is an image without results, as in the official script.
    with pytest.warns(RuntimeWarning, match="no response holds a detection"):
        result = coco_map({0: np.zeros(3, np.float32).tobytes(), 1: b""}, dataset, ())
    assert result.details["images_without_detections"] == 2 and result.details["images"] == 2
