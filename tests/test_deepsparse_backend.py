"""DeepSparse backend: conformance, engine batch, padding, the IR-conversion cache, options,
precision (mlpi's derived int8 files included), CPU errors and an end-to-end run, on the real
engine. Skipped where deepsparse is missing (it needs onnx<1.15, so it lives in its own
environment: see .ci/deepsparse).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

deepsparse = pytest.importorskip("deepsparse")

import onnx
import onnxruntime
from conftest import only_run_dir, read_result, run_cli
from onnx import TensorProto, helper, numpy_helper

from mlpi.backends import deepsparse_backend as ds
from mlpi.backends.deepsparse_backend import DeepSparseBackend, DeepSparseOptions
from mlpi.core.contract.backend import LoadContext
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError
from mlpi.core.contract.postprocess import RawOutputs
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.precision import CalibrationData, PrecisionOptions, derive
from mlpi.core.engine.sut import BatchExecutor
from mlpi.core.plugins.options import build_options
from mlpi.datasets.synthetic import Synthetic
from mlpi.testing import tiny_models

RTOL, ATOL = 1e-4, 1e-5
CORES = int(deepsparse.cpu_architecture().num_available_physical_cores)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("ds-models")
    return {
        "matmul": tiny_models.matmul_model(path / "matmul.onnx"),
        "matmul_b4": tiny_models.matmul_model(path / "matmul_b4.onnx", batch=4),
        "conv": tiny_models.conv_model(path / "conv.onnx"),
        "two_inputs": tiny_models.two_input_model(path / "two_inputs.onnx"),
    }


def load(model: Path, batch: int | None = None, precision: str | None = None, **options: object):
    return DeepSparseBackend().load(
        inspect_onnx(model), Device("cpu"), DeepSparseOptions(**options), precision, LoadContext(batch_size=batch)
    )


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


def with_ir_version(source: Path, target: Path, ir_version: int, opset: int | None = None) -> Path:
    """A copy of ``source`` stamped with another IR version (and opset), as newer onnx writes."""
    proto = onnx.load(str(source))
    proto.ir_version = ir_version
    if opset is not None:
        proto.opset_import[0].version = opset
    onnx.save(proto, str(target))
    return target


# -- the contract ----------------------------------------------------------------------------


def test_deepsparse_passes_the_conformance_kit() -> None:
    from mlpi.testing.conformance import check_names, run_checks

    report = run_checks(DeepSparseBackend)
    assert report.failed == [], report.summary()
    # Nothing skipped: the session is concurrent and fp32, so every check really ran.
    assert [r.name for r in report.passed] == check_names()


def test_version_probe_and_distributions() -> None:
    backend = DeepSparseBackend()
    assert backend.version() == deepsparse.__version__
    assert backend.probe() == [Device("cpu")]
    assert backend.runtime_distributions() == ("deepsparse",)


def test_missing_deepsparse_is_a_plugin_error_and_probes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepsparse", None)
    backend = DeepSparseBackend()
    with pytest.raises(PluginError, match="DeepSparse is not installed") as info:
        backend.version()
    assert info.value.hint == 'pip install "mlpi[deepsparse]"'
    assert backend.probe() == []


def test_a_cpu_deepsparse_cannot_use_is_one_device_error(tmp_path: Path) -> None:
    # NM_ARCH names the instruction set deepsparse must use; one it has no kernels for takes
    # the same path as a CPU it cannot identify: its import raises. A fresh process is needed
    # because this one has imported deepsparse already.
    script = (
        "from mlpi.backends.deepsparse_backend import DeepSparseBackend\n"
        "from mlpi.core.contract.errors import DeviceError\n"
        "backend = DeepSparseBackend()\n"
        "print('probe', backend.probe())\n"
        "try:\n"
        "    backend.version()\n"
        "except DeviceError as exc:\n"
        "    print('error', exc.message)\n"
        "    print('hint', exc.hint)\n"
    )
    env = {**os.environ, "NM_ARCH": "sse2"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, text = line.partition(" ")
        if key in ("probe", "error", "hint"):
            lines[key] = text
    assert lines["probe"] == "[]"
    assert lines["error"].startswith("DeepSparse cannot run on this CPU: ") and "sse2" in lines["error"]
    assert "AVX2 or AVX-512" in lines["hint"] and "--backend onnxruntime" in lines["hint"]
    # `mlpi run` stops on that one error before any test starts.
    cli = run_cli(["run", "--backend", "deepsparse", "--model-path", str(tiny_models.matmul_model(tmp_path / "m.onnx")),
                   "-s", "Offline", "--output", str(tmp_path / "r")], cwd=tmp_path, env={"NM_ARCH": "sse2"})
    assert cli.returncode == 1
    errors = [line for line in cli.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(errors) == 2 and errors[1] == f"hint: {lines['hint']}"
    assert errors[0].startswith("error: DeepSparse cannot run on this CPU: ") and "sse2" in errors[0]
    assert not (tmp_path / "r").exists() or not any(p.is_dir() for p in (tmp_path / "r").iterdir())


def test_an_engine_that_refuses_the_cpu_is_a_device_error(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # No processor here makes DeepSparse's compiler refuse it, so compile_model is replaced by
    # one that raises what DeepSparse raises then; a model problem stays a ModelError.
    def refuses(*args: object, **kwargs: object) -> None:
        raise RuntimeError("NM: error: this system's instruction set (sse4) is not supported")

    monkeypatch.setattr(deepsparse, "compile_model", refuses)
    with pytest.raises(DeviceError, match=r"^DeepSparse cannot run on this CPU: this system's instruction set"):
        load(models["matmul"])


class Response:
    def __init__(self, qid: int, data: int, size: int) -> None:
        self.id, self.data, self.size = qid, data, size


# -- engine batch and padding ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "batch", "expected"), [("matmul", None, 8), ("matmul", 3, 3), ("matmul", 1, 1), ("matmul_b4", 8, 4)]
)
def test_the_engine_is_compiled_for_the_file_or_the_run_batch(
    models: dict[str, Path], model: str, batch: int | None, expected: int
) -> None:
    session = load(models[model], batch)
    assert session.engine.batch_size == expected
    assert [s.shape for s in session.inputs] == [(expected, 16)]
    assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [
        ("logits", "float32", (expected, 10)), ("label", "int64", (expected,))
    ]
    caps = session.capabilities
    assert (caps.fixed_batch, caps.max_batch_size, caps.preferred_batch_size) == (True, expected, expected)
    feeds = random_feeds(session, expected, seed=expected)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(models[model], feeds))


def test_a_padded_partial_batch_gives_the_rows_of_a_full_batch(models: dict[str, Path]) -> None:
    artifact = inspect_onnx(models["two_inputs"])
    session = DeepSparseBackend().load(artifact, Device("cpu"), DeepSparseOptions(), None, LoadContext(batch_size=8))
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=16, seed=0))
    dataset.load(list(range(16)))
    executor = BatchExecutor(session, dataset, RawOutputs(session.outputs, 8), 8, lambda r: None, Response, print)
    full_indices = [9, 2, 14, 5, 0, 11, 7, 3]
    full = executor.compute(full_indices)[:8].copy()
    # The feed buffer's last five rows still hold the samples above: padding is whatever is there.
    partial = executor.compute([5, 0, 11])[:3].copy()
    assert np.array_equal(partial, full[3:6])
    # And each row is that sample's own answer.
    feeds = {name: np.repeat(values, 8, axis=0) for name, values in dataset.sample(11).items()}
    want = onnxruntime_outputs(models["two_inputs"], feeds)
    row = np.concatenate([want[s.name][0].reshape(-1).view(np.uint8) for s in session.outputs])
    assert np.array_equal(partial[2], row)


# -- ONNX IR versions ------------------------------------------------------------------------


def test_an_ir10_model_runs_from_a_converted_copy_that_is_reused(
    models: dict[str, Path], tmp_path: Path, cache: Path
) -> None:
    newer = with_ir_version(models["conv"], tmp_path / "conv_ir10.onnx", 10)
    artifact = inspect_onnx(newer)
    first = load(newer, 2)
    copy = first.model_path
    assert copy == cache / "deepsparse" / f"{artifact.sha256}-ir{ds.MAX_IR_VERSION}-v{ds.COPY_VERSION}.onnx"
    assert onnx.load(str(copy)).ir_version == 9 and onnx.load(str(newer)).ir_version == 10
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no temporary file left behind
    feeds = random_feeds(first, 2, seed=3)
    assert_same(dict(first.run(feeds)), onnxruntime_outputs(newer, feeds))

    before = copy.stat()
    second = load(newer, 2)
    assert second.model_path == copy
    after = copy.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # reused, not rewritten
    assert_same(dict(second.run(feeds)), onnxruntime_outputs(newer, feeds))

    # Another file gets its own copy; an IR 9 file runs as it is.
    other = with_ir_version(models["matmul"], tmp_path / "matmul_ir10.onnx", 10)
    assert load(other).model_path != copy
    assert load(models["conv"]).model_path == inspect_onnx(models["conv"]).path


def test_the_plain_engine_refuses_ir10_so_the_copy_is_needed(models: dict[str, Path], tmp_path: Path) -> None:
    newer = with_ir_version(models["matmul"], tmp_path / "matmul_ir10.onnx", 10)
    with pytest.raises(RuntimeError, match="IR version"):
        deepsparse.compile_model(str(newer), batch_size=1)


def with_imports(source: Path, target: Path, *imports: tuple[str, int]) -> Path:
    """A copy of ``source`` that also imports these operator sets, as quant_pre_process stamps them."""
    proto = onnx.load(str(source))
    proto.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in imports)
    onnx.save(proto, str(target))
    return target


def test_operator_sets_no_node_uses_are_dropped_from_the_copy(models: dict[str, Path], tmp_path: Path) -> None:
    stamped = with_imports(models["conv"], tmp_path / "conv_ml5.onnx", ("ai.onnx.ml", 5), ("com.microsoft", 1))
    with pytest.raises(RuntimeError, match="ai.onnx.ml"):  # what DeepSparse's own loader says of the file
        deepsparse.compile_model(str(stamped), batch_size=2)
    session = load(stamped, 2)
    copy = onnx.load(str(session.model_path))
    assert session.model_path != stamped and copy.ir_version == onnx.load(str(stamped)).ir_version == 8
    assert [(o.domain, o.version) for o in copy.opset_import] == [("", 17)]
    assert [n.op_type for n in copy.graph.node] == [n.op_type for n in onnx.load(str(stamped)).graph.node]
    feeds = random_feeds(session, 2, seed=4)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(stamped, feeds))
    # An operator set a node uses stays imported, so the copy still says what that node is.
    used = onnx.load(str(models["conv"]))
    used.graph.node[1].domain = "com.microsoft"  # Relu, as a contrib-domain operator
    used.opset_import.extend([helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 5)])
    onnx.save(used, str(tmp_path / "used.onnx"))
    kept = onnx.load(str(ds.runnable_copy(inspect_onnx(tmp_path / "used.onnx"))))
    assert [(o.domain, o.version) for o in kept.opset_import] == [("", 17), ("com.microsoft", 1)]


def test_an_opset_deepsparse_lacks_is_refused_before_the_run(models: dict[str, Path], tmp_path: Path) -> None:
    newer = with_ir_version(models["conv"], tmp_path / "conv_opset21.onnx", 10, opset=21)
    with pytest.raises(ModelError, match="opset 19 or lower.*uses opset 21") as info:
        DeepSparseBackend().check(inspect_onnx(newer), Device("cpu"), DeepSparseOptions(), None)
    assert "opset_version" in (info.value.hint or "")


# -- options ---------------------------------------------------------------------------------


def test_a_bad_scheduler_is_a_usage_error_listing_the_valid_ones(models: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="scheduler") as info:
        build_options(DeepSparseOptions, [("--option", {"scheduler": "fastest"})], "deepsparse")
    assert info.value.hint == "choose one of: single_stream, multi_stream, elastic"
    # A value that bypasses the option parser (the Python API) is refused by check() too.
    with pytest.raises(UsageError, match="'fastest', not a DeepSparse scheduler") as info:
        options = DeepSparseOptions(scheduler="fastest")  # type: ignore[arg-type]
        DeepSparseBackend().check(inspect_onnx(models["matmul"]), Device("cpu"), options, None)
    assert info.value.hint == "choose one of: single_stream, multi_stream, elastic"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_cores": CORES + 1}, "num_cores"),
        ({"num_streams": 2}, "single_stream scheduler runs one stream"),
        ({"scheduler": "multi_stream", "num_streams": CORES + 1}, "more than the"),
    ],
)
def test_options_the_engine_cannot_honour_are_refused(models: dict[str, Path], options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        DeepSparseBackend().check(inspect_onnx(models["matmul"]), Device("cpu"), DeepSparseOptions(**options), None)


@pytest.mark.parametrize("key", ["num_cores", "num_streams"])
def test_a_negative_count_is_refused_by_the_core(key: str) -> None:
    with pytest.raises(UsageError, match=f"'{key}' .* is -1; it takes 0 to"):
        build_options(DeepSparseOptions, [("--option", {key: "-1"})], "deepsparse")


def test_options_reach_the_engine(models: dict[str, Path]) -> None:
    default = load(models["conv"])
    assert default.engine.scheduler.value == "single_stream" and default.engine.num_cores == CORES
    assert default.capabilities.max_in_flight == 1 and default.capabilities.concurrent

    streams = min(2, CORES)
    session = load(models["conv"], scheduler="multi_stream", num_streams=streams, num_cores=CORES)
    assert session.engine.scheduler.value == "multi_stream"
    assert session.engine.num_streams == streams == session.num_streams
    assert session.capabilities.max_in_flight == streams
    assert load(models["conv"], num_cores=1).engine.num_cores == 1
    feeds = random_feeds(session, 8)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(models["conv"], feeds))


# -- precision -------------------------------------------------------------------------------


def qdq_conv_model(path: Path) -> Path:
    """A Conv whose input and int8 weights go through QuantizeLinear/DequantizeLinear."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8), "Wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"]),
        helper.make_node("Conv", ["xd", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 8])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_quantized_graph_reports_int8_and_a_dense_one_fp32(models: dict[str, Path], tmp_path: Path) -> None:
    quantized = qdq_conv_model(tmp_path / "qdq.onnx")
    session = load(quantized, 4)
    assert session.precision == "int8"
    feeds = random_feeds(session, 4, seed=1)
    assert_same(dict(session.run(feeds)), onnxruntime_outputs(quantized, feeds))
    assert load(models["conv"]).precision == "fp32"
    assert load(quantized, 4, precision="int8").precision == "int8"

    backend, cpu = DeepSparseBackend(), Device("cpu")
    with pytest.raises(UsageError, match="runs int8, not fp32"):
        backend.check(inspect_onnx(quantized), cpu, DeepSparseOptions(), "fp32")
    with pytest.raises(UsageError, match="runs fp32, not int8") as info:
        backend.check(inspect_onnx(models["conv"]), cpu, DeepSparseOptions(), "int8")
    assert "quantized to int8" in (info.value.hint or "")


def test_an_int8_file_derived_by_mlpi_runs_on_deepsparse(tmp_path: Path) -> None:
    """mlpi's transform (onnxruntime's quantize_static, Q/DQ) in this environment's onnx and
    onnxruntime: DeepSparse runs the file as an int8 model, with answers near the Q/DQ graph
    computed as written and not the fp32 model's. The deepsparse extra keeps onnxruntime below
    1.19, whose quantization tool still reads onnx 1.14 (1.19 on needs onnx's INT4)."""
    source = inspect_onnx(tiny_models.conv_model(tmp_path / "conv.onnx"))
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(16)]
    derived = derive(source.path, source.sha256, "int8", PrecisionOptions(), CalibrationData("dataset", "test", None, 16),
                     lambda: iter({"image": x} for x in samples), {"seed": 3})
    artifact = dataclasses.replace(inspect_onnx(derived.path), precision="int8")
    session = DeepSparseBackend().load(artifact, Device("cpu"), DeepSparseOptions(), "int8", LoadContext(batch_size=8))
    assert session.precision == "int8"
    compiled = onnx.load(str(session.model_path))
    assert {n.op_type for n in compiled.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}
    assert "ai.onnx.ml" not in {o.domain for o in compiled.opset_import}  # quant_pre_process's stray import

    feeds = {"image": np.concatenate(samples[:8])}
    got = session.run(feeds)["scores"]
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = onnxruntime.InferenceSession(str(derived.path), options, providers=["CPUExecutionProvider"])
    reference = as_written.run(None, feeds)[0]
    fp32 = onnxruntime_outputs(source.path, feeds)["scores"]
    span = float(np.abs(reference).max())
    # Fused int8 kernels round between operators where the graph as written does not (7% of
    # the range measured here; onnxruntime's own fused kernels differ as much)
    np.testing.assert_allclose(got, reference, atol=0.1 * span)
    np.testing.assert_allclose(got, fp32, atol=0.15 * span)
    assert not np.allclose(got, fp32, rtol=0, atol=1e-6)  # int8 answers, not fp32 passed through


def _random_resnet50_int8(folder: Path, per_channel: bool) -> Path:
    """The random-weights ResNet50, quantised as ``mlpi quantize`` does, on 8 noise images."""
    from mlpi.models.resnet50_graph import write_resnet50

    folder.mkdir(parents=True, exist_ok=True)
    source = inspect_onnx(write_resnet50(folder / "resnet50.onnx", 0))
    rng = np.random.default_rng(5)
    samples = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(8)]
    options = PrecisionOptions(per_channel=per_channel, calibration_count=8)
    return derive(source.path, source.sha256, "int8", options, CalibrationData("dataset", "test", None, 8),
                  lambda: iter({"input_tensor:0": x} for x in samples), {"seed": 5}).path


def test_int8_resnet50_runs_on_deepsparse_or_is_refused_before_the_compiler_aborts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 ResNet50 on DeepSparse: it runs, agreeing with the Q/DQ graph as written; or,
    only where DeepSparse 1.8's AVX2 code generator (no VNNI) aborts on it, the load is one
    ModelError naming the abort, raised before any engine is compiled in this process, not a
    crashed process. Seen on an AMD EPYC without VNNI: mlpi's int8 ResNet50 aborts at batch 8,
    and at batch 1 too, depending on the calibrated scales."""
    import deepsparse

    from mlpi.backends import _deepsparse_probe

    no_vnni = _deepsparse_probe.needs_probe(True, dict(deepsparse.cpu_architecture()))
    int8 = dataclasses.replace(inspect_onnx(_random_resnet50_int8(tmp_path, per_channel=True)), precision="int8")
    backend, cpu = DeepSparseBackend(), Device("cpu")
    try:
        session = backend.load(int8, cpu, DeepSparseOptions(), "int8", LoadContext(batch_size=8))
    except ModelError as exc:
        assert no_vnni, f"refused on a CPU with VNNI: {exc}"
        assert "compiler aborts on this int8 graph at batch 8 on this CPU (AVX2 without VNNI)" in exc.message
        assert "register_state.hpp" in exc.message and "onnxruntime or openvino" in (exc.hint or "")

        def no_second_probe(*args: object, **kwargs: object) -> None:
            raise AssertionError("the probe ran again: its verdict was not kept")

        monkeypatch.setattr(subprocess, "run", no_second_probe)
        with pytest.raises(ModelError, match="at batch 8"):
            backend.load(int8, cpu, DeepSparseOptions(), "int8", LoadContext(batch_size=8))
        return
    images = np.random.default_rng(6).standard_normal((8, 3, 224, 224)).astype(np.float32)
    got = session.run({"input_tensor:0": images})["softmax_tensor:0"]
    session.close()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = onnxruntime.InferenceSession(str(int8.path), options, providers=["CPUExecutionProvider"])
    reference = as_written.run(["softmax_tensor:0"], {"input_tensor:0": images})[0]
    np.testing.assert_allclose(got, reference, atol=0.1 * float(np.abs(reference).max()))


def _counting_loop(path: Path, scan_rank: int) -> Path:
    """A Loop that counts 0, 1, 2... for ``n`` iterations and stacks the counter as its scan
    output: each element a scalar (``scan_rank`` 0: the stacked output is ``[n]``) or a
    one-element vector (``[n, 1]``)."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    body_nodes = [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["prev", "one"], ["next"])]
    scan = "prev"
    if scan_rank == 1:
        body_nodes.append(helper.make_node("Unsqueeze", ["prev", "axes0"], ["prev_1"]))
        scan = "prev_1"
    body_nodes.append(helper.make_node("Identity", [scan], ["scan_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("prev", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("next", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [1] if scan_rank else [])],
        [one, numpy_helper.from_array(np.array([0], np.int64), "axes0")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "start"], ["last", "stacked"], body=body)], "loop",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []), helper.make_tensor_value_info("start", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("last", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("stacked", TensorProto.FLOAT, ["n"] + ([1] if scan_rank else []))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_loop_stacking_scalars_is_refused_and_one_stacking_vectors_is_not(tmp_path: Path) -> None:
    """DeepSparse 1.8 stacks a Loop's scalar scan outputs as [N, 1] (onnx's Range cases): such a
    model is refused before the run; the same Loop stacking one-element vectors is fine."""
    backend, cpu = DeepSparseBackend(), Device("cpu")
    scalars = inspect_onnx(_counting_loop(tmp_path / "scalars.onnx", 0))
    with pytest.raises(ModelError, match=r"stacks a Loop's scalar scan outputs as \[N, 1\]") as info:
        backend.check(scalars, cpu, DeepSparseOptions(), None)
    assert "onnxruntime or openvino" in (info.value.hint or "")
    vectors = inspect_onnx(_counting_loop(tmp_path / "vectors.onnx", 1))
    backend.check(vectors, cpu, DeepSparseOptions(), None)
    assert ds._scalar_scan_loops(onnx.load(str(vectors.path)).graph) == ()


def test_float16_inputs_are_a_model_error(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((16, 10), np.float16), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 10])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "half.onnx"))
    with pytest.raises(ModelError, match=r"no float16/bfloat16 inputs.*x \(float16\)"):
        load(tmp_path / "half.onnx")


# -- errors and lifetime ---------------------------------------------------------------------


def test_an_operator_deepsparse_lacks_is_a_model_error_without_engine_noise(tmp_path: Path) -> None:
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    graph = helper.make_graph(
        [node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="DeepSparse could not compile .*NoSuchOp") as info:
        load(tmp_path / "bad.onnx")
    assert "NM: error" not in info.value.message


def test_engine_source_locations_are_cut_from_messages() -> None:
    raw = RuntimeError(
        "NM: error: Failed to load model with error: /home/b/onnxruntime/core/graph/model.cc:149 "
        "onnxruntime::Model::Model(onnx::ModelProto&&, const PathString&) "
        "Unsupported model IR version: 10, max supported IR version: 9\n"
    )
    assert ds._clean(raw) == "Unsupported model IR version: 10, max supported IR version: 9"


def test_a_closed_session_refuses_to_run(models: dict[str, Path]) -> None:
    session = load(models["matmul"], 2)
    session.close()
    assert session.engine is None
    with pytest.raises(RuntimeError, match="closed"):
        session.run({"x": np.ones((2, 16), np.float32)})


# -- end to end ------------------------------------------------------------------------------


def test_mlpi_run_offline_with_deepsparse_records_the_precision(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(
        ["run", "--backend", "deepsparse", "--model-path", str(models["conv"]), "--scenario", "Offline",
         "--quick", "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    result = read_result(tmp_path / "r")
    (test,) = result["tests"]
    assert proc.returncode == (0 if test["valid"] else 3), proc.stderr
    assert result["status"] == "ok" and test["status"] == "ok" and test["value"] > 0
    assert result["backend"]["name"] == "deepsparse" and result["backend"]["version"] == deepsparse.__version__
    assert result["precision"] == "fp32" and test["precision"] == "fp32"
    assert test["batch_size"] == ds.PREFERRED_BATCH


def test_offline_and_server_answer_each_sample_with_its_own_outputs(models: dict[str, Path], tmp_path: Path) -> None:
    # Batches of 3 over 21 samples: partial batches reach the engine padded to 3 rows.
    count = 21
    proc = run_cli(
        ["run", "--backend", "deepsparse", "--model-path", str(models["matmul"]), "-s", "Offline,Server",
         "--mode", "accuracy", "--count", str(count), "--batch-size", "3", "--instances", "2",
         "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    artifact = inspect_onnx(models["matmul"])
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=count, seed=0))
    dataset.load(list(range(count)))
    reference = onnxruntime.InferenceSession(str(models["matmul"]), providers=["CPUExecutionProvider"])
    expected = {
        i: b"".join(np.ascontiguousarray(r).tobytes() for r in reference.run(None, dataset.sample(i))) for i in range(count)
    }
    run_dir = only_run_dir(tmp_path / "r")
    for scenario in ("Offline", "Server"):
        entries = json.loads((run_dir / scenario / "accuracy" / "mlperf_log_accuracy.json").read_text())
        got = {e["qsl_idx"]: bytes.fromhex(e["data"]) for e in entries}
        assert set(got) == set(expected), scenario
        for index, data in got.items():
            want = np.frombuffer(expected[index][:40], np.float32)
            np.testing.assert_allclose(np.frombuffer(data[:40], np.float32), want, rtol=RTOL, atol=ATOL)
            assert data[40:] == expected[index][40:], (scenario, index)  # the int64 label, exactly


def test_a_bad_scheduler_on_the_command_line_fails_before_any_test(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(
        ["run", "--backend", "deepsparse", "--model-path", str(models["matmul"]), "-s", "Offline",
         "-o", "scheduler=fastest", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith("error: option 'scheduler' of backend 'deepsparse'") and "fastest" in lines[-2]
    assert lines[-1] == "hint: choose one of: single_stream, multi_stream, elastic"
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
