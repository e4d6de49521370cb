"""3D-UNet: sliding windows as the reference computes them, spread over units, DICE as
accuracy_kits.py scores it, and the accuracy log read without holding it."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.backend import Capabilities, Session, TensorSpec
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.pipeline import PipelineContext
from mlpi.core.engine.pieces import PieceDispatcher
from mlpi.models import unet3d
from mlpi.models.kits_dice import dice_scores

ROI = unet3d.ROI
SCIPY = "the reference builds its Gaussian with scipy (pip install 'mlpi[kits19]')"


class NonlinearLogits(Session):
    """Three logits per voxel from its intensity and position, after a random pause (so
    pieces finish out of order); outputs live in a reused buffer, as real sessions' may."""

    def __init__(self, seed: int) -> None:
        self.inputs = [TensorSpec("input", "float32", (None, 1, ROI, ROI, ROI))]
        self.outputs = [TensorSpec("output", "float32", (None, 3, ROI, ROI, ROI))]
        self.capabilities = Capabilities(max_batch_size=None)
        self.precision = "fp32"
        self.rng = random.Random(seed)
        self.buffer = np.zeros((4, 3, ROI, ROI, ROI), np.float32)
        self.threads: set[str] = set()

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        x = feeds["input"][:, 0]
        self.threads.add(threading.current_thread().name)
        time.sleep(self.rng.random() * 0.05)
        n = len(x)
        ramp = np.linspace(-1, 1, ROI, dtype=np.float32)
        self.buffer[:n, 0] = np.sin(3 * x)
        self.buffer[:n, 1] = x * x - 0.5 + ramp
        self.buffer[:n, 2] = np.cos(2 * x) * ramp[:, None, None]
        return {"output": self.buffer[:n]}


class Volumes:
    """A dataset of whole volumes, answered by ``sample`` as the kits19 dataset does."""

    def __init__(self, volumes: Sequence[np.ndarray]) -> None:
        self.volumes = [v[None, None].astype(np.float32) for v in volumes]
        self.inputs = [TensorSpec("input", "float32", (None, 1, None, None, None))]

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        return {"input": self.volumes[index]}


def reference_segmentation(volume: np.ndarray, infer: Any) -> np.ndarray:
    """base_SUT.infer_single_query and inference_utils.finalize, step by step: float32 sums
    in window order, division by the weight map of every class, arg-max as uint8."""
    gaussian = pytest.importorskip("scipy.signal.windows", reason=SCIPY).gaussian
    image = volume[None, None].astype(np.float32)
    result = np.zeros((1, 3, *volume.shape), np.float32)
    norm_map = np.zeros_like(result)
    line = gaussian(ROI, 0.125 * ROI)
    patch = np.cbrt(np.outer(np.outer(line, line), line).reshape(ROI, ROI, ROI))
    patch = (patch / patch.max()).astype(np.float32)
    sizes = [(d - ROI) // 64 + 1 for d in volume.shape]
    for i in range(0, 64 * sizes[0], 64):
        for j in range(0, 64 * sizes[1], 64):
            for k in range(0, 64 * sizes[2], 64):
                window = (..., slice(i, i + ROI), slice(j, j + ROI), slice(k, k + ROI))
                result[window] += infer(image[window]) * patch
                norm_map[window] += patch
    with np.errstate(invalid="ignore"):
        result /= norm_map
    return np.argmax(result, axis=1).astype(np.uint8).reshape(-1)


def test_the_gaussian_patch_is_scipys_as_the_reference_builds_it() -> None:
    gaussian = pytest.importorskip("scipy.signal.windows", reason=SCIPY).gaussian

    line = gaussian(ROI, 0.125 * ROI)
    expected = np.cbrt(np.outer(np.outer(line, line), line).reshape(ROI, ROI, ROI))
    expected /= expected.max()
    assert np.array_equal(unet3d.gaussian_patch(), expected.astype(np.float32))


@pytest.mark.parametrize("shape", [(128, 128, 128), (192, 128, 256), (256, 320, 320), (150, 200, 129)])
def test_windows_start_where_the_references_do(shape: tuple[int, int, int]) -> None:
    sizes = [(d - ROI) // 64 + 1 for d in shape]
    expected = [(i, j, k) for i in range(0, 64 * sizes[0], 64) for j in range(0, 64 * sizes[1], 64)
                for k in range(0, 64 * sizes[2], 64)]
    assert unet3d.window_starts(shape) == expected


def test_a_volume_smaller_than_a_window_is_refused() -> None:
    with pytest.raises(ModelError, match="smaller than the 128"):
        unet3d.window_starts((127, 256, 256))


@pytest.mark.parametrize("batch", [1, 2])
def test_windows_on_several_units_blend_to_the_references_bytes(batch: int) -> None:
    """Pieces finish out of order on three units, yet the response is the reference's loop's,
    byte for byte: sums are made in window order."""
    pytest.importorskip("scipy", reason=SCIPY)
    rng = np.random.default_rng(0)
    # The third is no multiple of 64: voxels no window reaches are 0/0 there too, class 0.
    volumes = [rng.standard_normal(shape).astype(np.float32) for shape in ((192, 256, 192), (128, 192, 128), (150, 128, 200))]
    sessions = [NonlinearLogits(seed) for seed in range(3)]
    dispatcher = PieceDispatcher([(f"u:{k}", {"model": s}) for k, s in enumerate(sessions)], batch_size=batch)
    dispatcher.start()
    try:
        dataset = Volumes(volumes)
        pipeline = unet3d.SlidingWindows(PipelineContext({}, dataset, 1, [], None, dispatcher))  # type: ignore[arg-type]
        expected = []
        for volume in volumes:
            single = NonlinearLogits(99)
            expected.append(reference_segmentation(volume, lambda w, s=single: np.array(s.run({"input": w})["output"])).tobytes())
        # The sums and weight maps are reused from call to call, whatever the order of shapes.
        for order in ([0, 1, 2], [1, 0], [1, 0], [0, 0], [2]):
            responses = pipeline(order)
            assert [responses.sample(j) for j in range(len(order))] == [expected[i] for i in order]
        assert len(set(np.frombuffer(expected[0], np.uint8))) == 3, "every class should appear"
        assert all(s.threads for s in sessions), "every unit should have run windows"
        assert pipeline.blend_s > 0 and pipeline.finish_s > 0
    finally:
        dispatcher.stop()


def reference_dice(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """accuracy_kits.get_dice_score's arithmetic: one-hot float64, background dropped."""
    def one_hot(labels: np.ndarray) -> np.ndarray:
        hot = np.eye(3)[labels.reshape(-1)].reshape([*labels.shape, 3])
        return np.transpose(hot, (0, 4, 1, 2, 3)).astype(np.float64)[:, 1:]

    p, t = one_hot(prediction[None]), one_hot(target[None])
    axes = (2, 3, 4)
    dice = (2.0 * np.sum(t * p, axis=axes) + 1e-6) / (np.sum(t, axis=axes) + np.sum(p, axis=axes) + 1e-6)
    return float(dice[0][0]), float(dice[0][1])


@pytest.mark.parametrize("seed", range(4))
def test_dice_is_the_references_arithmetic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (20, 24, 28)
    target = rng.choice(3, size=shape, p=[0.8, 0.15, 0.05]).astype(np.uint8)
    prediction = np.where(rng.random(shape) < 0.3, rng.integers(0, 3, shape), target).astype(np.uint8)
    if seed == 3:  # no tumour anywhere: the smoothing makes it 1.0, as the reference's
        target[target == 2] = 0
        prediction[prediction == 2] = 1
    assert dice_scores(prediction, target) == reference_dice(prediction, target)


def test_accuracy_log_is_indexed_and_decoded_lazily(tmp_path: Path) -> None:
    """LoadGen's layout is indexed in place (first or last of a repeated sample); any other
    JSON is parsed as before; both give the same mapping."""
    from mlpi.core.contract.accuracy import read_accuracy_log

    rng = np.random.default_rng(1)
    records = [(k % 5, rng.integers(0, 255, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()) for k in range(12)]
    lines = [f'{{ "seq_id" : {n}, "qsl_idx" : {index}, "data" : "{data.hex().upper()}" }}' for n, (index, data) in enumerate(records)]
    loadgen = tmp_path / "loadgen.json"
    loadgen.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"qsl_idx": index, "data": data.hex()} for index, data in records]))
    for keep in ("first", "last"):
        expected: dict[int, bytes] = {}
        for index, data in records:
            if keep == "last" or index not in expected:
                expected[index] = data
        indexed = read_accuracy_log(loadgen, keep)
        assert not isinstance(indexed, dict), "LoadGen's layout should be indexed, not parsed"
        assert dict(indexed) == expected == dict(read_accuracy_log(other, keep))
    (tmp_path / "empty.json").write_text("[]\n")
    assert len(read_accuracy_log(tmp_path / "empty.json")) == 0
    from mlpi.core.contract.errors import RunFailed

    cut = tmp_path / "cut.json"
    cut.write_text(loadgen.read_text()[:200])  # a test that died mid-log
    with pytest.raises(RunFailed, match="cannot read the accuracy log .*cut short"):
        read_accuracy_log(cut)
    odd = tmp_path / "odd.json"
    odd.write_text('[\n{ "seq_id" : 0, "qsl_idx" : 3, "data" : "ABC" }\n]\n')
    with pytest.raises(RunFailed, match="entry 0 of .* is not a LoadGen accuracy record"):
        read_accuracy_log(odd)
    assert 0 in read_accuracy_log(loadgen) and 7 not in read_accuracy_log(loadgen)


def test_models_declare_mlperfs_rules_and_artifact() -> None:
    for name, fraction, target in (("3d-unet-99", 0.99, 0.853083), ("3d-unet-99.9", 0.999, 0.860838)):
        spec = unet3d.unet3d_99() if fraction == 0.99 else unet3d.unet3d_99_9()
        assert spec.name == name and spec.pieces and spec.rules.loadgen_key == "3d-unet"
        assert spec.quality_target == pytest.approx(target, abs=5e-7)
        assert spec.rules.performance_sample_count == 43 == spec.rules.offline_min_samples
        assert spec.rules.equal_issue and spec.rules.server_latency_ms is None
        assert spec.artifact is not None and spec.artifact.checksum == "md5:82f0618fde78f9839e7c712274019b4a"
        assert spec.artifact.filename == "3dunet_kits19_128x128x128_dynbatch.onnx"
        assert [(s.name, s.shape) for s in spec.inputs] == [("input", (None, 1, 128, 128, 128))]
        assert [(s.name, s.shape) for s in spec.outputs] == [("output", (None, 3, 128, 128, 128))]


# -- a whole accuracy run whose DICE is known by construction ------------------------------------

KITS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference" / "vision" / "medical_imaging" / "3d-unet-kits19"


def known_cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (image, label, the labels the threshold graph gives the image): one case
    segmented exactly, one with kidney and tumour voxels mislabelled in blocks, one with no
    tumour at all (its tumour DICE is 1 by the smoothing)."""
    from mlpi.testing.unet3d_known import image_for

    rng = np.random.default_rng(7)
    cases = {}
    for name, shape in (("case_00010", (128, 128, 128)), ("case_00011", (192, 128, 192)), ("case_00012", (128, 192, 128))):
        label = np.zeros(shape, np.uint8)
        label[20:100, 30:90, 10:80] = 1
        label[40:70, 40:60, 20:50] = 2
        predicted = label.copy()
        if name == "case_00011":
            predicted[rng.random(shape) < 0.1] = 1
            predicted[150:180, 10:60, 100:190] = 2
            predicted[20:40, 30:50, 10:30] = 0
        if name == "case_00012":
            label[label == 2] = 1
            predicted[label == 1] = 1
            predicted[60:128, 100:190, 0:128] = 1
        cases[name] = (image_for(predicted), label, predicted)
    return cases


def expected_line(cases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    rows = np.array([[*reference_dice(pred, label), np.mean(reference_dice(pred, label))] for _, label, pred in cases.values()])
    kidney, tumour, composite = (float(np.sum(rows[:, c]) / len(rows)) for c in range(3))
    return f"Accuracy: mean = {composite:.5f}, kidney = {kidney:.4f}, tumor = {tumour:.4f}"


def reference_python() -> Path | str:
    """An interpreter MLCommons' accuracy_kits.py runs in (numpy<2, pandas<2, nibabel), made
    once per machine; or why there is none."""
    import subprocess
    import sys
    import tempfile

    if not (KITS_DIR / "accuracy_kits.py").is_file():
        return f"MLCommons' accuracy_kits.py is not at {KITS_DIR} (the shared mlcommons-inference folder is absent)"
    venv = Path(tempfile.gettempdir()) / "mlpi-kits-reference-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import numpy, pandas, nibabel; assert numpy.__version__ < '2' and pandas.__version__ < '2'"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True, check=False)
    if made.returncode == 0:
        made = subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy<2", "pandas<2", "nibabel"],
                              capture_output=True, text=True, timeout=600, check=False)
    if made.returncode != 0 or subprocess.run(check, capture_output=True, check=False).returncode != 0:
        return f"accuracy_kits.py needs numpy<2, pandas<2 and nibabel, which could not be installed: {made.stderr.strip()[-300:]}"
    return python


def official_kits_line(python: Path, log: Path, data: Path, work: Path) -> str:
    import subprocess

    proc = subprocess.run(
        [str(python), str(KITS_DIR / "accuracy_kits.py"), "--log_file", str(log), "--preprocessed_data_dir", str(data),
         "--postprocessed_data_dir", str(work / "postprocessed"), "--num_proc", "1"],
        cwd=work, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if line.startswith("Accuracy:"))


def test_accuracy_run_scores_the_dice_known_by_construction_as_accuracy_kits_does(tmp_path: Path) -> None:
    """The threshold graph's segmentation is known, so is its DICE: the accuracy run (on one
    ONNX Runtime session, and spread over four simulated cards), `mlpi score` and MLCommons'
    accuracy_kits.py all print the same line, and the responses are the same bytes."""
    pytest.importorskip("nibabel", reason="the kits19 fixture writes NIfTI files (pip install 'mlpi[kits19]')")
    from conftest import only_run_dir, run_cli

    from mlpi.core.contract.accuracy import read_accuracy_log
    from mlpi.testing.kits19_fixture import write_preprocessed
    from mlpi.testing.unet3d_known import write_threshold_graph

    cases = known_cases()
    data = write_preprocessed(tmp_path / "kits", {name: (image, label) for name, (image, label, _) in cases.items()})
    graph = write_threshold_graph(tmp_path / "threshold.onnx")
    line = expected_line(cases)
    logs = []
    for backend, device in (("onnxruntime", "cpu"), ("qaic", "qaic:0-3")):
        out = tmp_path / f"r-{backend}"
        proc = run_cli(["run", "--model", "3d-unet-99", "--model-path", str(graph), "--dataset", "kits19", "--dataset-path",
                        str(data), "--mode", "accuracy", "-s", "Offline", "--backend", backend, "--device", device,
                        "--output", str(out)], cwd=tmp_path)
        assert proc.returncode in (0, 3), proc.stderr
        test_dir = only_run_dir(out) / "Offline" / "accuracy"
        assert (test_dir / "accuracy.txt").read_text(encoding="utf-8").strip() == line
        logs.append(test_dir / "mlperf_log_accuracy.json")
        responses = read_accuracy_log(logs[-1])
        for index, (_, _, predicted) in enumerate(cases.values()):
            assert responses[index] == predicted.tobytes()
    scored = run_cli(["score", str(only_run_dir(tmp_path / "r-qaic"))], cwd=tmp_path)
    assert scored.stdout.splitlines()[0] == line, scored.stderr
    python = reference_python()
    if isinstance(python, str):
        pytest.skip(python)
    assert official_kits_line(python, logs[0], data, tmp_path) == line


def test_a_shortened_run_turns_equal_issue_off_and_an_official_one_keeps_it() -> None:
    from mlpi.core.engine.scenario import Expectations, user_conf

    expect = Expectations(0.1, 10.0, 80.0, 0.05, "user")
    quick = user_conf("3d-unet", "Offline", expect, min_duration_s=10.0, performance_sample_count=None, equal_issue=True)
    official = user_conf("3d-unet", "Offline", expect, min_duration_s=None, performance_sample_count=None, equal_issue=True)
    other = user_conf("bert", "Offline", expect, min_duration_s=10.0, performance_sample_count=None)
    assert "3d-unet.Offline.sample_concatenate_permutation = 0" in quick.splitlines()
    assert "sample_concatenate_permutation" not in official + other


def test_synthetic_volumes_run_as_pieces_in_a_short_single_stream_test(tmp_path: Path) -> None:
    """No dataset: synthetic volumes of the model's declared 128³; LoadGen is told to drop
    equal issue for the shortened test, and each volume's labels come back."""
    from conftest import only_run_dir, run_cli

    from mlpi.testing.unet3d_known import write_threshold_graph

    graph = write_threshold_graph(tmp_path / "threshold.onnx")
    out = tmp_path / "r"
    proc = run_cli(["run", "--model", "3d-unet-99", "--model-path", str(graph), "-s", "SingleStream", "--duration", "2",
                    "--output", str(out)], cwd=tmp_path)
    # 3: INVALID, which a 2 s test of 188 ms volumes may be on a loaded machine (early stopping)
    assert proc.returncode in (0, 3), proc.stderr
    test_dir = only_run_dir(out) / "SingleStream" / "performance"
    detail = (test_dir / "mlperf_log_detail.txt").read_text(encoding="utf-8")
    assert '"key": "effective_sample_concatenate_permutation", "value": false' in detail
    result = json.loads((only_run_dir(out) / "result.json").read_text())["tests"][0]
    assert result["status"] == "ok" and result["devices"][0]["work"] == "pieces" and result["devices"][0]["batches"] > 0


def test_a_missing_case_file_is_one_error_line(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the kits19 fixture writes NIfTI files (pip install 'mlpi[kits19]')")
    from conftest import one_error, run_cli

    from mlpi.testing.kits19_fixture import write_preprocessed
    from mlpi.testing.unet3d_known import write_threshold_graph

    cases = known_cases()
    data = write_preprocessed(tmp_path / "kits", {name: (image, label) for name, (image, label, _) in cases.items()})
    (data / "case_00011.pkl").unlink()
    graph = write_threshold_graph(tmp_path / "threshold.onnx")
    proc = run_cli(["run", "--model", "3d-unet-99", "--model-path", str(graph), "--dataset", "kits19", "--dataset-path",
                    str(data), "--mode", "accuracy", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "case_00011.pkl", "missing")


def test_a_call_that_fails_leaves_nothing_the_next_call_reuses() -> None:
    """A batch whose second volume is too small fails before any window runs; the first
    volume's weight map was never summed, and the next call must not take it as known."""
    pytest.importorskip("scipy", reason=SCIPY)
    rng = np.random.default_rng(5)
    volumes = [rng.standard_normal((192, 128, 128)).astype(np.float32), np.zeros((100, 128, 128), np.float32)]
    dispatcher = PieceDispatcher([("u:0", {"model": NonlinearLogits(0)})], batch_size=2)
    dispatcher.start()
    try:
        pipeline = unet3d.SlidingWindows(PipelineContext({}, Volumes(volumes), 1, [], None, dispatcher))  # type: ignore[arg-type]
        with pytest.raises(ModelError, match="smaller than the 128"):
            pipeline([0, 1])
        single = NonlinearLogits(9)
        expected = reference_segmentation(volumes[0], lambda w: np.array(single.run({"input": w})["output"]))
        assert pipeline([0]).sample(0) == expected.tobytes()
    finally:
        dispatcher.stop()
