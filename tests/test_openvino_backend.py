"""OpenVINO backend: signatures, precision read back, thread safety, options, and agreement
with ONNX Runtime, on the real runtime (CPU plugin). Skipped where openvino is missing.

Precision checks never assume this machine's CPU: OpenVINO picks bf16 by default where the
CPU has AVX-512 BF16 or AMX, so what is expected is read from OpenVINO itself.
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

import onnxruntime  # noqa: E402

from mlpi.backends import ov as ov_backend  # noqa: E402
from mlpi.backends.ov import OpenVinoBackend, OvOptions  # noqa: E402
from mlpi.core.contract.backend import ModelArtifact  # noqa: E402
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device  # noqa: E402
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError  # noqa: E402
from mlpi.core.contract.postprocess import RawOutputs  # noqa: E402
from mlpi.core.engine.onnx_file import inspect_onnx  # noqa: E402
from mlpi.core.engine.sut import BatchExecutor, OfflineSUT  # noqa: E402
from mlpi.datasets.synthetic import Synthetic  # noqa: E402
from mlpi.testing import tiny_models  # noqa: E402

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


def test_a_batch_that_cannot_be_split_gets_a_slot_per_request(models: dict[str, Path]) -> None:
    """A fixed-batch model keeps one request busy per call: the core must keep one batch in
    flight per request, or a two-stream CPU runs at half its speed (RetinaNet, batch 1)."""
    fixed = load(models["matmul_b4"], num_requests=3)
    assert fixed.capabilities.max_in_flight == 3 and fixed.capabilities.concurrent
    dynamic = load(models["matmul"], num_requests=3)  # one call spreads its rows over the requests
    assert dynamic.capabilities.max_in_flight == 1


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
