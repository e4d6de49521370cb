"""OpenVINO backend: signatures, precision read back, thread safety, options, and agreement
with ONNX Runtime, on the real runtime (CPU plugin). Skipped where openvino is missing.

Precision checks never assume this machine's CPU: OpenVINO picks bf16 by default where the
CPU has AVX-512 BF16 or AMX, so what is expected is read from OpenVINO itself. Likewise it
quantizes activations at run time only on CPUs with VNNI, so what a session records of that
is checked against what its outputs show.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

import onnxruntime
from conftest import one_error, run_cli

from mlpi.backends import ov as ov_backend
from mlpi.backends.ov import OpenVinoBackend, OvOptions
from mlpi.core.contract.backend import ModelArtifact
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError
from mlpi.core.contract.postprocess import RawOutputs
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.sut import BatchExecutor, OfflineSUT
from mlpi.datasets.synthetic import Synthetic
from mlpi.testing import tiny_models

RTOL, ATOL = 1e-4, 1e-5
PRECISION_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("ov-models")
    return {
        "matmul": tiny_models.matmul_model(path / "matmul.onnx"),
        "matmul_b4": tiny_models.matmul_model(path / "matmul_b4.onnx", batch=4),
        "conv": tiny_models.conv_model(path / "conv.onnx"),
        "two_inputs": tiny_models.two_input_model(path / "two_inputs.onnx"),
        "argmax": tiny_models.argmax_model(path / "argmax.onnx"),
    }


def load(model: Path, precision: str | None = "fp32", device: str = "cpu", **options: object):
    return OpenVinoBackend().load(inspect_onnx(model), Device.parse(device), OvOptions(**options), precision)


def random_feeds(session, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = (rows, *spec.sample_shape)
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(-50, 50, shape).astype(spec.dtype)
    return feeds


def onnxruntime_outputs(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


# -- runtime and devices --------------------------------------------------------------------


def test_version_and_probe() -> None:
    backend = OpenVinoBackend()
    assert backend.version() == ov.get_version()
    assert Device("cpu") in backend.probe()
    assert backend.runtime_distributions() == ("openvino",)


def test_openvino_device_names_map_to_mlpi_devices() -> None:
    names = {"CPU": Device("cpu"), "GPU": Device("gpu", (0,)), "GPU.0": Device("gpu", (0,)),
             "GPU.1": Device("gpu", (1,)), "NPU": Device("npu"), "HETERO": None, "GPU.x": None}
    assert {name: ov_backend._mlpi_device(name) for name in names} == names


def test_missing_openvino_is_a_plugin_error_and_probes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    backend = OpenVinoBackend()
    with pytest.raises(PluginError) as info:
        backend.version()
    assert info.value.hint == 'pip install "mlpi[openvino]"'
    assert backend.probe() == []


def test_a_device_openvino_does_not_see_is_a_device_error(models: dict[str, Path]) -> None:
    if "GPU.7" in ov.Core().available_devices:
        pytest.skip("this machine has an eighth GPU")
    with pytest.raises(DeviceError, match="OpenVINO sees no gpu:7"):
        OpenVinoBackend().check(inspect_onnx(models["matmul"]), Device("gpu", (7,)), OvOptions(), None)


# -- signatures ------------------------------------------------------------------------------


def test_signature_dtypes_and_dynamic_batch(models: dict[str, Path]) -> None:
    session = load(models["matmul"])
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "float32", (None, 16))]
    assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [
        ("logits", "float32", (None, 10)), ("label", "int64", (None,))
    ]
    caps = session.capabilities
    assert caps.max_batch_size is None and not caps.fixed_batch and caps.concurrent
    assert caps.preferred_batch_size >= 8  # CPU with the throughput hint
    assert load(models["matmul"], performance_hint="latency").capabilities.preferred_batch_size == 1

    two = load(models["two_inputs"])
    assert [(s.name, s.dtype) for s in two.inputs] == [("a", "float32"), ("b", "int64")]
    assert [(s.name, s.dtype) for s in two.outputs] == [("sum", "float32"), ("prod", "float32")]


def test_fixed_batch_model_reports_its_batch(models: dict[str, Path]) -> None:
    session = load(models["matmul_b4"])
    assert session.inputs[0].shape == (4, 16)
    caps = session.capabilities
    assert (caps.max_batch_size, caps.fixed_batch, caps.preferred_batch_size) == (4, True, 4)
    feeds = random_feeds(session, 4)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(models["matmul_b4"], feeds))


def test_every_request_gets_a_batch_in_flight(models: dict[str, Path]) -> None:
    """The core keeps a batch in flight per request, as OpenVINO's AsyncInferQueue does: a
    fixed-batch model keeps one request busy per call (RetinaNet, batch 1, ran at half speed on
    two streams), and splitting every batch of a dynamic one over the requests left streams
    idle at each batch's end (int8 ResNet50 Offline at 0.86 of the queue's rate)."""
    fixed = load(models["matmul_b4"], num_requests=3)
    assert fixed.capabilities.max_in_flight == 3 and fixed.capabilities.concurrent
    dynamic = load(models["matmul"], num_requests=3)
    assert dynamic.capabilities.max_in_flight == 3


class _CountingRequest:
    """An infer request that records the rows of each call it starts."""

    def __init__(self, request: object, log: list[int]) -> None:
        self._request, self._log = request, log

    def start_async(self, inputs: dict, **kwargs: object) -> None:
        self._log.append(len(next(iter(inputs.values()))))
        self._request.start_async(inputs, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)


def test_a_lone_call_spreads_its_rows_and_a_concurrent_one_keeps_its_batch_whole(models: dict[str, Path]) -> None:
    import queue

    session = load(models["conv"], num_requests=3)
    log: list[int] = []
    pool: queue.SimpleQueue = queue.SimpleQueue()
    while True:
        try:
            pool.put(_CountingRequest(session._pool.get_nowait(), log))
        except queue.Empty:
            break
    session._pool = pool
    feeds = random_feeds(session, 8, seed=5)
    expected = onnxruntime_outputs(models["conv"], feeds)
    assert_same(dict(session.run(feeds)), expected)
    assert sorted(log) == [2, 3, 3]  # alone: every idle request takes a share (SingleStream latency)
    log.clear()
    session._calls = 1  # another call is running: this one keeps its batch on one request
    assert_same(dict(session.run(feeds)), expected)
    session._calls = 0
    assert log == [8]


def test_concurrent_calls_each_get_their_own_rows(models: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    session = load(models["conv"], num_requests=2)
    batches = [random_feeds(session, rows, seed=rows) for rows in (1, 3, 8, 5, 2, 7)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(session.run, batches))
    for feeds, got in zip(batches, results):
        assert_same(dict(got), onnxruntime_outputs(models["conv"], feeds))
    assert session._calls == 0


# -- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["matmul", "conv", "two_inputs"])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_outputs_agree_with_onnxruntime_in_fp32(models: dict[str, Path], model: str, rows: int) -> None:
    session = load(models[model], "fp32")
    assert session.precision == "fp32"
    feeds = random_feeds(session, rows, seed=rows)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(models[model], feeds))


def test_a_batch_spread_over_several_requests_keeps_every_row_in_place(models: dict[str, Path]) -> None:
    session = load(models["conv"], num_requests=3)
    assert session.num_requests == 3 and session._splittable
    feeds = random_feeds(session, 8, seed=5)  # 3 + 2 + 3 rows on three requests
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(models["conv"], feeds))


def test_default_precision_is_what_openvino_compiled(models: dict[str, Path]) -> None:
    session = load(models["conv"], precision=None)
    chosen = session.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert session.precision == PRECISION_NAMES[chosen]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_precision_the_cpu_lacks_is_refused_before_the_run(models: dict[str, Path], precision: str) -> None:
    artifact = inspect_onnx(models["conv"])
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if ov_backend._HINTS[precision][1] in capabilities:
        session = load(models["conv"], precision)
        assert session.precision == precision  # this CPU has it: it really runs it
    else:
        with pytest.raises(UsageError, match=f"cannot run {precision}"):
            OpenVinoBackend().check(artifact, Device("cpu"), OvOptions(), precision)


def test_a_cpu_without_bf16_is_refused_whatever_this_machine_has(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ov_backend._device_property

    def without_bf16(core: object, plugin: str, key: str) -> object:
        value = real(core, plugin, key)
        return [c for c in value if c != "BF16"] if key == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(ov_backend, "_device_property", without_bf16)
    with pytest.raises(UsageError, match="bf16 needs AVX-512 BF16 or AMX") as info:
        OpenVinoBackend().check(inspect_onnx(models["conv"]), Device("cpu"), OvOptions(), "bf16")
    assert "drop --precision" in (info.value.hint or "")


# -- threads and buffers ---------------------------------------------------------------------


def test_concurrent_runs_give_the_sequential_answers(models: dict[str, Path]) -> None:
    session = load(models["conv"])
    inputs = [random_feeds(session, 1 + k % 5, seed=k) for k in range(20)]
    expected = [dict(session.run(f)) for f in inputs]
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for k in range(20):
                results[(t, k)] = dict(session.run(inputs[(k + t) % 20]))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 80
    for (t, k), got in results.items():
        want = expected[(k + t) % 20]
        assert all(np.array_equal(got[name], want[name]) for name in want), (t, k)


def test_openvino_never_writes_into_the_callers_inputs(models: dict[str, Path]) -> None:
    session = load(models["two_inputs"])
    feeds = random_feeds(session, 4, seed=3)
    kept = {name: array.copy() for name, array in feeds.items()}
    session.run(feeds)
    session.run(random_feeds(session, 2, seed=4))
    session.run(random_feeds(session, 4, seed=5))
    assert all(np.array_equal(feeds[name], kept[name]) for name in kept)
    session.close()


def test_returned_arrays_are_not_overwritten_by_later_runs(models: dict[str, Path]) -> None:
    for options in ({}, {"num_requests": 1}):
        session = load(models["matmul"], **options)
        first_feeds = random_feeds(session, 3, seed=1)
        first = dict(session.run(first_feeds))
        kept = {name: array.copy() for name, array in first.items()}
        for seed in range(2, 8):
            session.run(random_feeds(session, 3, seed=seed))
        assert all(np.array_equal(first[name], kept[name]) for name in kept)


def test_a_closed_session_refuses_to_run(models: dict[str, Path]) -> None:
    session = load(models["matmul"])
    session.close()
    assert session.compiled is None
    with pytest.raises(RuntimeError, match="closed"):
        session.run({"x": np.ones((1, 16), np.float32)})


# -- errors, options, cache ------------------------------------------------------------------


def test_a_corrupt_model_file_is_a_model_error(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf \x00\xff" * 8)
    good = inspect_onnx(models["matmul"])
    artifact = ModelArtifact(bad, "0" * 64, good.inputs, good.outputs)
    with pytest.raises(ModelError, match="OpenVINO could not read") as info:
        OpenVinoBackend().load(artifact, Device("cpu"), OvOptions(), None)
    assert not info.value.message.split(": ", 1)[1].startswith("Exception from")


def test_an_operator_openvino_lacks_is_a_model_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    graph = helper.make_graph(
        [node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="NoSuchOp"):
        load(tmp_path / "bad.onnx")


def test_a_valid_operator_openvino_lacks_is_named_with_another_backend_to_try(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # Det is valid ONNX (the checker passes it) that OpenVINO's ONNX reader has no rule for
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "det.onnx"))
    with pytest.raises(ModelError, match="Det") as info:
        load(tmp_path / "det.onnx")
    hint = info.value.hint or ""
    assert "onnx.checker" not in hint, hint
    assert "operator Det is not supported by openvino" in hint and "--backend onnxruntime" in hint


def test_options_reach_the_compiled_model(models: dict[str, Path]) -> None:
    session = load(models["conv"], performance_hint="latency", num_streams=1, num_threads=1, num_requests=3)
    compiled = session.compiled
    assert compiled.get_property("PERFORMANCE_HINT") == "LATENCY"
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert session.num_requests == 3
    default = load(models["conv"])
    assert default.compiled.get_property("PERFORMANCE_HINT") == "THROUGHPUT"
    assert default.num_requests == default.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    assert load(models["conv"], performance_hint="none").precision == "fp32"  # no hint set: still compiles


def test_negative_option_is_a_usage_error(models: dict[str, Path]) -> None:
    from mlpi.core.plugins.options import build_options

    # the core refuses it (the field's metadata), before OpenVINO is asked
    for key in ("num_streams", "num_threads", "num_requests"):
        with pytest.raises(UsageError, match=key):
            build_options(OvOptions, [("--option", {key: "-1"})], "openvino")


def test_the_cache_folder_gets_compiled_models_only_when_asked(models: dict[str, Path], cache: Path) -> None:
    load(models["conv"], cache=False)
    assert not (cache / "openvino").exists() or not any((cache / "openvino").iterdir())
    load(models["conv"], cache=True)
    assert any((cache / "openvino").iterdir())


# -- through the executor --------------------------------------------------------------------


class Response:
    def __init__(self, qid: int, data: int, size: int) -> None:
        self.id, self.data, self.size = qid, data, size


class Recorder:
    """Stands in for LoadGen's QuerySamplesComplete: copies the bytes at call time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: dict[int, bytes] = {}
        self.duplicates = 0

    def __call__(self, responses: list[Response]) -> None:
        with self.lock:
            for r in responses:
                self.duplicates += r.id in self.bytes
                self.bytes[r.id] = ctypes.string_at(r.data, r.size)


def split_row(row: bytes, specs: list) -> list[np.ndarray]:
    out, start = [], 0
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        size = dtype.itemsize * int(np.prod([d or 1 for d in spec.sample_shape]))
        out.append(np.frombuffer(row[start : start + size], dtype=dtype))
        start += size
    return out


@pytest.mark.parametrize(("model", "batch"), [("matmul", 8), ("argmax", 5), ("two_inputs", 3), ("matmul_b4", 3)])
def test_offline_over_two_openvino_sessions_answers_every_sample_like_onnxruntime(
    models: dict[str, Path], model: str, batch: int
) -> None:
    artifact = inspect_onnx(models[model])
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=32, seed=0))
    dataset.load(list(range(32)))
    recorder, errors = Recorder(), []
    backend = OpenVinoBackend()
    sessions = [backend.load(artifact, Device("cpu"), OvOptions(), "fp32") for _ in range(2)]
    executors = [
        BatchExecutor(s, dataset, RawOutputs(s.outputs, batch), batch, recorder, Response, errors.append) for s in sessions
    ]
    sut = OfflineSUT(executors)
    sut.start()
    ids = [1000 + k for k in range(101)]
    indices = [(k * 7) % 32 for k in range(101)]
    sut.issue(ids, indices)
    deadline = time.time() + 20
    while len(recorder.bytes) < len(ids) and time.time() < deadline:
        time.sleep(0.01)
    sut.stop()
    assert not errors and recorder.duplicates == 0 and len(recorder.bytes) == len(ids)

    reference = onnxruntime.InferenceSession(str(models[model]), providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    fixed = artifact.inputs[0].shape[0]
    specs = sessions[0].outputs
    assert [s.name for s in specs] == names
    for qid, index in zip(ids, indices):
        feeds = {k: np.repeat(v, fixed or 1, axis=0) for k, v in dataset.sample(index).items()}
        want = [np.ascontiguousarray(r[:1]).reshape(-1) for r in reference.run(names, feeds)]
        got = split_row(recorder.bytes[qid], specs)
        for spec, g, w in zip(specs, got, want):
            if np.issubdtype(w.dtype, np.floating):
                np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{qid} {spec.name}")
            else:
                assert g.tobytes() == w.tobytes(), (qid, spec.name)


def test_openvino_passes_the_conformance_kit() -> None:
    from mlpi.testing.conformance import run_checks

    report = run_checks("openvino")
    assert report.failed == [], report.summary()
    assert len(report.passed) > 50


def test_a_bfloat16_output_is_refused_not_returned_as_float16_bits(tmp_path: Path) -> None:
    """OpenVINO's Python API returns a bf16 output as float16 holding the raw bits ([1, 2.5,
    -3, 100] read back as [1.875, 2.06, -2.125, 3.39]): a silent wrong answer, so refused."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)
    graph = helper.make_graph([node], "to_bf16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bf16.onnx"))
    with pytest.raises(ModelError, match="'y' is bfloat16"):
        load(tmp_path / "bf16.onnx", precision=None)


# -- precision end to end: dynamic quantization, read-only inputs ------------------------------


def int8_weights_model(path: Path, depth: int = 256, width: int = 32) -> Path:
    """x @ DequantizeLinear(int8 W): a layer OpenVINO may run with int8 activations."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).integers(-127, 128, (depth, width), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
        "int8_weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", depth])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(weights, "w_q"), numpy_helper.from_array(np.array(0.02, np.float32), "w_scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def spread_activations(rows: int = 16, depth: int = 256) -> np.ndarray:
    """Activations from 1e-3 to 1e3 side by side: int8 groups of them lose the small ones."""
    rng = np.random.default_rng(1)
    return (rng.standard_normal((rows, depth)) * np.logspace(-3, 3, depth)).astype(np.float32)


def onnxruntime_fp32(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """ONNX Runtime's answer in f32. Its extended graph optimizations fuse DequantizeLinear and
    MatMul into MatMulNBits, which quantizes activations too, so only the basic ones run."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def scale_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference over the largest output: f32 rounding is ~1e-7 of it, int8 ~1e-2."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return int8_weights_model(tmp_path_factory.mktemp("ov-int8") / "int8_weights.onnx")


def test_fp32_is_f32_end_to_end_and_agrees_with_onnxruntime(int8_model: Path) -> None:
    feeds = {"x": spread_activations()}
    want = onnxruntime_fp32(int8_model, feeds)
    for attempt in ("compiled", "from the model cache"):
        session = load(int8_model, "fp32")
        compiled = session.compiled
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32", attempt
        assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0, attempt
        assert compiled.get_property("EXECUTION_MODE_HINT").name == "ACCURACY", attempt
        for key in ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION"):
            assert compiled.get_property(key).get_type_name() == "f32", (attempt, key)
        assert (session.precision, session.precision_detail) == ("fp32", None)
        assert ov_backend._compressed_layers(compiled) == 1  # the layer dynamic quantization would touch
        assert scale_error(session.run(feeds)["y"], want) < 1e-5, attempt


def test_dynamic_quantization_on_and_off_are_recorded_as_they_ran(int8_model: Path) -> None:
    feeds = {"x": spread_activations()}
    on = load(int8_model, None, dynamic_quantization="on")
    off = load(int8_model, None, dynamic_quantization="off")
    assert on.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 32
    assert off.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
    assert off.precision_detail is None and off.precision == on.precision
    # What is recorded is what ran: OpenVINO quantizes only on some CPUs (VNNI, f32 compute),
    # so the outputs decide which of the two this machine must report.
    moved = scale_error(on.run(feeds)["y"], off.run(feeds)["y"].astype(np.float64))
    if on.precision_detail is None:
        assert moved < 1e-6, moved
    else:
        assert moved > 1e-3, moved
        assert on.precision_detail == "int8 dynamic quantization of activations (groups of 32) in 1 layer with integer weights"


def test_quantization_at_work_is_described_and_refused_for_fp32(
    int8_model: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever this CPU does: where OpenVINO quantizes, the session says so, and fp32 is refused
    when the compiled model does not report the setting that would turn it off."""
    monkeypatch.setattr(ov_backend, "_quantizes_activations", lambda core, plugin, settings: True)
    assert load(int8_model, None, dynamic_quantization="on").precision_detail == (
        "int8 dynamic quantization of activations (groups of 32) in 1 layer with integer weights"
    )
    assert load(int8_model, None, dynamic_quantization="off").precision_detail is None
    assert load(models["matmul"], None, dynamic_quantization="on").precision_detail is None  # no integer weights

    real = ov_backend._read_properties
    monkeypatch.setattr(ov_backend, "_read_properties",
                        lambda compiled: {k: v for k, v in real(compiled).items() if k != "DYNAMIC_QUANTIZATION_GROUP_SIZE"})
    with pytest.raises(UsageError, match="still quantize activations to int8") as info:
        load(int8_model, "fp32")
    assert "drop --precision fp32" in (info.value.hint or "")
    monkeypatch.setattr(ov_backend, "_quantizes_activations", lambda core, plugin, settings: None)
    assert load(int8_model, None, dynamic_quantization="on").precision_detail == (
        "int8 dynamic quantization of activations (group size not reported) may apply in 1 layer with integer weights "
        "(checking it failed)"
    )


def test_fp32_is_refused_when_the_compiled_model_kept_a_lower_setting(
    int8_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ov_backend._read_properties
    monkeypatch.setattr(ov_backend, "_read_properties",
                        lambda compiled: {**real(compiled), "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32, "KV_CACHE_PRECISION": "u8"})
    with pytest.raises(UsageError, match="DYNAMIC_QUANTIZATION_GROUP_SIZE=32, KV_CACHE_PRECISION=u8: not f32 end to end"):
        load(int8_model, "fp32")
    with pytest.raises(UsageError, match="not as -o dynamic_quantization=off asks"):
        load(int8_model, None, dynamic_quantization="off")


def test_the_activation_check_says_no_when_off_and_unknown_without_a_device() -> None:
    """The check itself where its answer is known on any CPU: with the group size 0 nothing is
    quantized; a device that cannot run it is unknown, not 'no'."""
    core = ov.Core()
    assert ov_backend._quantizes_activations(core, "CPU", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}) is False
    assert ov_backend._quantizes_activations(core, "NO_SUCH_DEVICE", {}) is None


def test_dynamic_quantization_option_errors(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpi.core.plugins.options import build_options

    with pytest.raises(UsageError, match="choose one of: default, off, on"):
        build_options(OvOptions, [("--option", {"dynamic_quantization": "maybe"})], "openvino")
    artifact = inspect_onnx(models["matmul"])
    with pytest.raises(UsageError, match="rules out") as info:
        OpenVinoBackend().check(artifact, Device("cpu"), OvOptions(dynamic_quantization="on"), "fp32")
    assert "drop one" in (info.value.hint or "")
    real = ov_backend._device_property

    def without_it(core: object, plugin: str, key: str) -> object:
        value = real(core, plugin, key)
        return {k: v for k, v in value.items() if k != "DYNAMIC_QUANTIZATION_GROUP_SIZE"} if key == "SUPPORTED_PROPERTIES" else value

    monkeypatch.setattr(ov_backend, "_device_property", without_it)
    with pytest.raises(UsageError, match="has no DYNAMIC_QUANTIZATION_GROUP_SIZE setting"):
        OpenVinoBackend().check(artifact, Device("cpu"), OvOptions(dynamic_quantization="off"), None)


def test_mlpi_run_refuses_fp32_with_dynamic_quantization_in_one_error(int8_model: Path, tmp_path: Path) -> None:
    proc = run_cli(["run", "--backend", "openvino", "--model-path", str(int8_model), "--precision", "fp32",
                    "-o", "dynamic_quantization=on", "-s", "Offline", "--quick", "--output", str(tmp_path / "out")], tmp_path)
    one_error(proc, "dynamic_quantization=on", "--precision fp32")
    assert any(line.startswith("hint: ") for line in proc.stderr.splitlines())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def scalar_input_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array


def test_read_only_inputs_run(tmp_path: Path) -> None:
    """A scalar from a constant, a broadcast and a read-only memmap: OpenVINO refused the
    read-only 0-d ones ('array is not writeable')."""
    session = load(scalar_input_model(tmp_path / "scaled.onnx"), num_requests=2)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    rows.tofile(tmp_path / "rows.bin")
    mapped = np.memmap(tmp_path / "rows.bin", np.float32, "r", shape=(3, 4))
    for x in (rows, read_only(rows), mapped, np.broadcast_to(rows[:1], (3, 4))):
        for scale in (read_only(np.float32(2.5)), np.broadcast_to(np.float32(2.5), ()), np.array(2.5, np.float32)):
            np.testing.assert_array_equal(session.run({"x": x, "scale": scale})["y"], np.asarray(x) * np.float32(2.5))


def test_only_read_only_scalars_are_copied() -> None:
    writeable, matrix = np.array(2.5, np.float32), read_only(np.ones((2, 2), np.float32))
    assert ov_backend._shareable(writeable) is writeable  # shared, as before
    assert ov_backend._shareable(matrix) is matrix  # OpenVINO copies these itself
    scalar = read_only(np.float32(2.5))
    copied = ov_backend._shareable(scalar)
    assert copied is not scalar and copied.flags.writeable and copied == scalar


def test_the_model_cache_is_off_unless_asked_for_it_answers_wrongly(tmp_path: Path, cache: Path) -> None:
    """OpenVINO 2026.4's CPU model cache: a rotary-embedding graph (ONNX RotaryEmbedding,
    interleaved) answers right when compiled and wrong once loaded from the cache. By default
    the backend never writes or reads that cache, so the second load is as right as the first;
    with ``cache=true`` the second load shows the bug this default avoids (where OpenVINO has it)."""
    import onnx
    from onnx import TensorProto, helper

    batch, seq, heads, size = 2, 3, 4, 8
    graph = helper.make_graph(
        [helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=1, num_heads=heads)], "rope",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, heads * size]),
         helper.make_tensor_value_info("cos", TensorProto.FLOAT, [50, size // 2]),
         helper.make_tensor_value_info("sin", TensorProto.FLOAT, [50, size // 2]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, heads * size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 11
    onnx.save(model, str(tmp_path / "rope.onnx"))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((batch, seq, heads * size)).astype(np.float32),
             "cos": rng.standard_normal((50, size // 2)).astype(np.float32),
             "sin": rng.standard_normal((50, size // 2)).astype(np.float32),
             "pos": rng.integers(0, 50, (batch, seq)).astype(np.int64)}
    expected = onnxruntime.InferenceSession(str(tmp_path / "rope.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert OvOptions().cache is False
    for _ in range(2):
        assert np.abs(load(tmp_path / "rope.onnx").run(feeds)["y"] - expected).max() < 1e-4
    assert not (cache / "openvino").exists() or not any((cache / "openvino").iterdir())
