"""Precision as a model transform: fp16, bf16 and int8 files derived once, run on every backend.

The int8 proof: the random-weights ResNet50 quantised with MLPerf's official ImageNet
calibration list, read from a fixture folder of images named as the list names them, runs on
onnxruntime and openvino (and deepsparse where installed) with answers that agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.backend import ModelArtifact
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.precision import PrecisionOptions, derive
from mlpi.core.engine.precision_convert import bfloat16_bits, graph_precision
from mlpi.models.calibration_lists import CRITEO, FOLDER, IMAGENET
from mlpi.testing.tiny_models import conv_model
from tests.conftest import one_error, run_cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference" / "calibration"
#: Calibration samples the ResNet50 proof uses (the first of the official list): enough to
#: set every activation range, few enough for CI; a subset of the official set stays official.
PROOF_COUNT = 24


@pytest.fixture(scope="module")
def cache(isolated_cache: Path) -> Path:
    """The test session's cache (tests/conftest.py): derived files are reused across the
    module's tests, as across runs."""
    return isolated_cache


@pytest.fixture(scope="module")
def calibration_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a JPEG for every name of the official ImageNet calibration list."""
    import cv2

    folder = tmp_path_factory.mktemp("imagenet-calibration")
    rng = np.random.default_rng(7)
    for name in IMAGENET.names():
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def resnet_int8(cache: Path, calibration_images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``mlpi quantize`` of the random-weights ResNet50 on the official list."""
    cwd = tmp_path_factory.mktemp("quantize")
    proc = run_cli(["quantize", "--model", "resnet50", "--weights", "random", "--precision", "int8",
                    "--calibration-path", str(calibration_images), "-P", f"calibration_count={PROOF_COUNT}", "--json"],
                   cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {"out": json.loads(proc.stdout), "stderr": proc.stderr, "cwd": cwd}


def test_shipped_calibration_lists_are_mlcommons_own() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"the pinned MLCommons checkout is not at {SHARED}")
    for shipped in FOLDER.glob("*.txt"):
        if shipped == CRITEO.list_file:  # MLCommons gives Criteo's rows in a README sentence, not a file
            first, last = (int(v) for v in CRITEO.names()[0].split("-"))
            readme = (SHARED / "CriteoTerabyte" / "README.md").read_text()
            assert f"from the {first}-th row to the {last}-th row" in readme, shipped.name
            assert shipped.read_bytes() == f"{first}-{last}\n".encode() and last - first + 1 == 128_000
            continue
        originals = list(SHARED.rglob(shipped.name))
        assert len(originals) == 1, shipped.name
        assert shipped.read_bytes() == originals[0].read_bytes(), shipped.name


def test_bfloat16_rounding_is_to_nearest_even_from_fp32() -> None:
    values = np.array([1.0, 2.5, -3.0, 100.0, 1 + 2**-8, 1 + 3 * 2**-8, 70000.0], dtype=np.float32)
    assert bfloat16_bits(values).tolist() == [0x3F80, 0x4020, 0xC040, 0x42C8, 0x3F80, 0x3F82, 0x4789]
    nan = bfloat16_bits(np.array([np.nan], dtype=np.float32))
    assert (int(nan[0]) & 0x7F80) == 0x7F80 and (int(nan[0]) & 0x7F) != 0


def _weights_model(path: Path, weights: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_fp16_keeps_the_io_types_runs_and_is_reused(cache: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    source = inspect_onnx(conv_model(tmp_path / "conv.onnx"))
    derived = derive(source.path, source.sha256, "fp16", PrecisionOptions())
    model = onnx.load(str(derived.path))
    onnx.checker.check_model(model, full_check=True)  # valid ONNX: nodes in order, types the operators take
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [TensorProto.FLOAT] * 2
    assert graph_precision(derived.path) == "fp16" and graph_precision(source.path) == "fp32"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(str(source.path)).run(None, {"image": x})[0]
    got = ort.InferenceSession(str(derived.path)).run(None, {"image": x})[0]
    assert got.dtype == np.float32 and not np.array_equal(got, want)  # computed in fp16, not passed through
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * float(np.abs(want).max()))

    again = derive(source.path, source.sha256, "fp16", PrecisionOptions())
    assert again.reused and again.path == derived.path and again.sha256 == derived.sha256
    blocked = derive(source.path, source.sha256, "fp16", PrecisionOptions(block_ops="Conv"))
    assert not blocked.reused and blocked.path != derived.path
    kept = onnx.load(str(blocked.path))
    conv_weights = {n.input[1] for n in kept.graph.node if n.op_type == "Conv"}
    assert {t.data_type for t in kept.graph.initializer if t.name in conv_weights} == {TensorProto.FLOAT}


def test_bf16_rounds_each_weight_from_its_fp32_value(cache: Path, tmp_path: Path) -> None:
    weights = np.array([[70000.0, 1 + 2**-8], [1 + 3 * 2**-8, -3.0]], dtype=np.float32)  # 70000 is past fp16's range
    source = inspect_onnx(_weights_model(tmp_path / "w.onnx", weights))
    derived = derive(source.path, source.sha256, "bf16", PrecisionOptions())
    model = onnx.load(str(derived.path))
    onnx.checker.check_model(model, full_check=True)
    (tensor,) = [t for t in model.graph.initializer if t.name == "w"]
    assert tensor.data_type == TensorProto.BFLOAT16
    assert np.frombuffer(tensor.raw_data, dtype=np.uint16).tolist() == bfloat16_bits(weights).ravel().tolist()
    types = {v.type.tensor_type.elem_type for v in model.graph.value_info} | {
        a.i for n in model.graph.node for a in n.attribute if n.op_type == "Cast" and a.name == "to"}
    assert TensorProto.FLOAT16 not in types and TensorProto.BFLOAT16 in types
    assert graph_precision(derived.path) == "bf16"
    # Conv takes no bfloat16 before opset 22: it stays fp32, so the file is valid ONNX at opset 17
    conv = inspect_onnx(conv_model(tmp_path / "conv.onnx"))
    with_conv = onnx.load(str(derive(conv.path, conv.sha256, "bf16", PrecisionOptions()).path))
    onnx.checker.check_model(with_conv, full_check=True)
    assert {t.data_type for t in with_conv.graph.initializer} == {TensorProto.FLOAT}


def test_int8_resnet50_from_the_official_list(resnet_int8: dict) -> None:
    record = resnet_int8["out"]["record"]
    calibration = record["transform"]["calibration"]
    assert record["method"] == "transform" and record["closed_division"] is True
    assert calibration["kind"] == "official" and calibration["count"] == PROOF_COUNT
    assert calibration["source"] == "calibration/ImageNet/cal_image_list_option_1.txt"
    assert calibration["list_sha256"] == hashlib.sha256(IMAGENET.list_file.read_bytes()).hexdigest()
    assert record["source"]["precision"] == "fp32" and record["source"]["sha256"] != resnet_int8["out"]["sha256"]
    path = Path(resnet_int8["out"]["path"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert graph_precision(path) == "int8"
    assert f"calibrating: {PROOF_COUNT}/{PROOF_COUNT} samples" in resnet_int8["stderr"]


def _imagenet_feeds(folder: Path, count: int) -> np.ndarray:
    from mlpi.core.contract.backend import TensorSpec
    from mlpi.core.contract.dataset import DatasetRequest
    from mlpi.datasets.imagenet import ImageNet

    spec = TensorSpec("input_tensor:0", "float32", (None, 3, 224, 224))
    data = ImageNet().open(DatasetRequest(inputs=[spec], path=folder, names=IMAGENET.names()[:count]))
    data.load(list(range(count)))
    return np.concatenate([data.sample(i)["input_tensor:0"] for i in range(count)])


def _int8_sessions(path: Path) -> dict:
    """The derived int8 file loaded on every installed CPU backend that reads it."""
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    found = inspect_onnx(path)
    artifact = ModelArtifact(found.path, found.sha256, found.inputs, found.outputs, "int8")
    sessions = {}
    for name in ("onnxruntime", "openvino", "deepsparse"):
        backend = registry.backend(name)
        try:
            backend.version()
        except MlpiError:  # a runtime not installed here
            continue
        sessions[name] = backend.load(artifact, Device("cpu"), backend.Options(), "int8")
    if "openvino" not in sessions:  # the environment the README installs has onnxruntime only
        for session in sessions.values():
            session.close()
        pytest.skip("openvino is not installed (pip install \"mlpi[openvino]\"): the int8 file is compared across "
                    "onnxruntime and openvino")
    return sessions


def _as_written(path: Path, feeds: dict) -> list:
    """The Q/DQ graph computed as written (onnxruntime with no fusion: every DequantizeLinear,
    float operator and QuantizeLinear in turn), the yardstick the backends' int8 kernels meet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options).run(None, feeds)


def test_int8_per_channel_lifts_an_older_opset_to_13(cache: Path, tmp_path: Path) -> None:
    """SSD-MobileNet's file is opset 11, SSD-ResNet34's 8: DequantizeLinear takes the per-channel
    axis only from opset 13, and onnxruntime's quantizer writes it anyway, so the graph is
    converted first, or no runtime loads the result. Per-tensor weights need no conversion."""
    import onnxruntime as ort

    from mlpi.core.engine.precision import CalibrationData

    rng = np.random.default_rng(4)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "opset11", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    path = tmp_path / "opset11.onnx"
    onnx.save(model, str(path))
    source = inspect_onnx(path)
    samples = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    feeds = {"x": np.concatenate(samples)}
    fp32 = ort.InferenceSession(str(path)).run(None, feeds)[0]
    for per_channel in (True, False):
        derived = derive(source.path, source.sha256, "int8", PrecisionOptions(per_channel=per_channel),
                         CalibrationData("dataset", "test", None, 4), lambda: iter({"x": x} for x in samples), {"seed": 4})
        opset = {o.domain: o.version for o in onnx.load(str(derived.path)).opset_import}[""]
        assert (opset >= 13) if per_channel else (opset == 11), (per_channel, opset)
        assert ("converted to 13" in derived.record["prepared_with"]) is per_channel
        assert ort.InferenceSession(str(derived.path)).run(None, feeds)[0].shape == fp32.shape  # it loads
        # the Q/DQ graph as written is near fp32 (within 1.5% of the range here; onnxruntime's
        # fused kernels round further from it on a few values)
        np.testing.assert_allclose(_as_written(derived.path, feeds)[0], fp32, atol=0.05 * float(np.abs(fp32).max()))


def test_int8_agrees_across_backends_on_a_shallow_model(cache: Path, tmp_path: Path) -> None:
    """Where rounding cannot compound (two convolutions), every backend's int8 answer is near the
    Q/DQ graph computed as written, and near the fp32 answer."""
    import onnxruntime as ort

    source = inspect_onnx(conv_model(tmp_path / "conv.onnx"))
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(16)]
    from mlpi.core.engine.precision import CalibrationData

    derived = derive(source.path, source.sha256, "int8", PrecisionOptions(),
                     CalibrationData("dataset", "test", None, 16), lambda: iter({"image": x} for x in samples), {"seed": 3})
    feeds = {"image": np.concatenate(samples[:8])}
    reference = _as_written(derived.path, feeds)[0]
    fp32 = ort.InferenceSession(str(source.path)).run(None, feeds)[0]
    span = float(np.abs(reference).max())
    for name, session in _int8_sessions(derived.path).items():
        assert session.precision == "int8"
        got = next(iter(session.run(feeds).values()))
        session.close()
        # onnxruntime's fused kernels (QLinearConv, QLinearGlobalAveragePool) round between
        # operators where the graph as written does not: up to 7% of the range measured here
        np.testing.assert_allclose(got, reference, atol=0.1 * span, err_msg=name)
        np.testing.assert_allclose(got, fp32, atol=0.15 * span, err_msg=name)
        assert not np.allclose(got, fp32, rtol=0, atol=1e-6), name  # int8 answers, not fp32 passed through


def test_int8_resnet50_runs_on_every_backend(resnet_int8: dict, calibration_images: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The derived ResNet50 on onnxruntime and openvino (deepsparse where installed). Its weights
    are random and its fixture images noise, so int8 rounding compounds over 50 layers: onnxruntime's
    own fused kernels and the graph computed as written agree on 83% of top-1 answers here. Each
    backend must agree with the as-written answer at least as often as half the images; the
    agreements, and with fp32, are reported."""
    import onnxruntime as ort

    path = Path(resnet_int8["out"]["path"])
    feeds = {"input_tensor:0": _imagenet_feeds(calibration_images, 16)}
    reference = _as_written(path, feeds)[0]
    fp32 = ort.InferenceSession(resnet_int8["out"]["record"]["source"]["path"]).run(["ArgMax:0"], feeds)[0]
    report = []
    for name, session in _int8_sessions(path).items():
        assert session.precision == "int8"
        top1 = session.run(feeds)["ArgMax:0"]
        session.close()
        agree = float(np.mean(top1 == reference))
        report.append(f"{name}: {agree:.0%} with the Q/DQ graph as written, {float(np.mean(top1 == fp32)):.0%} with fp32")
        assert agree >= 0.5, (name, agree)
    with capsys.disabled():
        print(f"\nint8 ResNet50 (random weights), top-1 agreement on {len(reference)} fixture images: " + "; ".join(report))


def test_the_same_request_reuses_the_file_and_a_change_rebuilds(resnet_int8: dict, calibration_images: Path,
                                                                 tmp_path: Path) -> None:
    base = ["quantize", "--model", "resnet50", "--weights", "random", "--precision", "int8",
            "--calibration-path", str(calibration_images), "--json"]
    same = run_cli([*base, "-P", f"calibration_count={PROOF_COUNT}"], tmp_path, timeout=600)
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["path"] == resnet_int8["out"]["path"]
    assert "derived before" in same.stderr and "calibrating" not in same.stderr
    names = tmp_path / "mine.txt"
    names.write_text("\n".join(IMAGENET.names()[:8]) + "\n")
    other = run_cli([*base, "--calibration", str(names)], tmp_path, timeout=600)
    assert other.returncode == 0, other.stderr
    record = json.loads(other.stdout)["record"]
    assert json.loads(other.stdout)["path"] != resnet_int8["out"]["path"]
    assert record["closed_division"] is False and "not the official calibration set" in record["closed_reason"]
    assert record["transform"]["calibration"]["kind"] == "list"


def test_missing_calibration_images_are_named(cache: Path, calibration_images: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    names = IMAGENET.names()
    for name in names[:20]:
        (partial / name).symlink_to(calibration_images / name)
    proc = run_cli(["quantize", "--model", "resnet50", "--weights", "random", "--precision", "int8",
                    "--calibration-path", str(partial)], tmp_path)
    line = one_error(proc, "480 of the 500 images", str(partial), names[20], names[29], "and 470 more")
    assert names[19] not in line
    assert not list((cache / "precision").glob("*/.model.onnx.tmp-*"))


def test_a_run_records_what_ran(cache: Path, tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    proc = run_cli(["run", "--backend", "onnxruntime", "--model-path", str(model), "--precision", "int8",
                    "--calibration", "dataset", "-P", "calibration_count=8", "--quick", "--duration", "0.5",
                    "--output", str(tmp_path / "results")], tmp_path)
    assert proc.returncode in (0, 3), proc.stderr  # 3: a 0.5 s run a loaded machine judges INVALID; it is recorded alike
    assert "not valid for the closed division" in proc.stderr
    (result_file,) = (tmp_path / "results").glob("*/result.json")
    result = json.loads(result_file.read_text())
    record = result["model"]["precision"]
    assert record["requested"] == "int8" and record["method"] == "transform"
    assert record["closed_division"] is False and record["transform"]["calibration"]["kind"] == "dataset"
    assert result["model"]["sha256"] == record["transform"]["sha256"] != record["source"]["sha256"]
    assert [t["precision"] for t in result["tests"]] == ["int8"]


@pytest.mark.parametrize(("args", "words"), [
    (["--calibration", "dataset"], ("--calibration", "--precision is not given")),
    (["-P", "per_channel=false", "--precision", "fp32"], ("-P", "--precision is fp32")),
    (["--precision", "fp16", "--calibration", "dataset"], ("only int8 is calibrated",)),
    (["--precision", "fp16", "-P", "calibration_count=8"], ("-P calibration_count", "--precision is fp16")),
    (["--precision", "int8", "-P", "calibration_method=kl"], ("calibration_method",)),
    (["--precision", "int8", "-o", "dynamic_int8=true", "--calibration", "dataset"], ("the backend derives int8 itself",)),
    (["--precision", "fp16", "-o", "dynamic_int8=true"], ("-o dynamic_int8 derives --precision int8",)),
])
def test_precision_settings_that_cannot_apply_are_refused(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    proc = run_cli(["run", "--backend", "onnxruntime", "--model-path", str(model), "--quick", *args], tmp_path)
    one_error(proc, *words)


def test_a_file_already_in_the_precision_runs_as_it_is(cache: Path, resnet_int8: dict, tmp_path: Path) -> None:
    derived = resnet_int8["out"]["path"]
    fp32 = run_cli(["run", "--backend", "onnxruntime", "--model-path", derived, "--precision", "fp32", "--quick"], tmp_path)
    one_error(fp32, "int8 model", "not fp32 from them")
    fp16 = run_cli(["run", "--backend", "onnxruntime", "--model-path", derived, "--precision", "fp16", "--quick"], tmp_path)
    one_error(fp16, "int8 model", "from the fp32 file only")
    from mlpi.core.engine.planning import RunRequest, build_plan

    plan = build_plan(RunRequest(backend="onnxruntime", model_path=derived, precision="int8", quick=True))
    record = plan.extra["precision"]
    assert record["method"] == "model file" and record["closed_division"] is None
    assert plan.model.path == str(Path(derived).resolve()) and plan.model.precision == "int8"
