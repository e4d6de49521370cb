"""TensorRT backend: engine cache, profiles, precision, int8 calibration, contexts, errors.

TensorRT and the CUDA driver cannot exist on the machines this suite runs on (no NVIDIA
GPU), so most tests run the backend against FAKES of ``tensorrt`` and of cuda-python's
runtime (``tests/fakes/``). The fakes are loaded from their files and put into
``sys.modules`` by the ``fake`` fixture only, and removed after each test. Their numbers
are real: the fake engine runs the ONNX graph with onnxruntime on the bytes the backend
copied into fake device memory. The ``fake`` fixture runs each test twice, against the
fake as TensorRT 10 and as TensorRT 11 (whose removed APIs raise AttributeError);
``fake10`` is for the builder-flag path only TensorRT 10 has, ``fake11`` for what only 11
refuses. The tests marked ``gpu`` at the end run the same checks on the real runtime and
skip unless TensorRT and an NVIDIA GPU are there. Tests of the machine as it is (no
TensorRT) use no fake at all.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mlpi.backends import tensorrt_backend
from mlpi.backends._trt_calibrator import pad_rows
from mlpi.backends._trt_cuda import Cuda, CudaError
from mlpi.backends._trt_engine import (
    engine_key,
    plan_profile,
    read_engine,
    write_engine,
)
from mlpi.backends.tensorrt_backend import TensorRTBackend, TrtOptions
from mlpi.core.contract.backend import LoadContext
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DatasetError,
    DeviceError,
    ModelError,
    PluginError,
    UsageError,
)
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.testing import tiny_models
from mlpi.testing.conformance import TOLERANCES, check_names, run_checks

FAKES = Path(__file__).parent / "fakes"
INSTALL_HINT = 'pip install "mlpi[tensorrt]"'


# --------------------------------------------------------------------------- fixtures


@dataclass
class FakeGpu:
    trt: types.ModuleType
    cuda: types.ModuleType
    engines: Path  # <mlpi cache>/tensorrt

    @property
    def major(self) -> int:
        return int(self.trt.MAJOR)

    def engine_files(self) -> set[Path]:
        return set(self.engines.glob("*.engine")) if self.engines.exists() else set()


def _load_fake(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, major: int) -> FakeGpu:
    """A fake GPU: fake ``tensorrt`` (as TensorRT ``major``) and ``cuda.bindings.runtime`` in
    sys.modules, for this test only."""
    monkeypatch.setenv("FAKE_TENSORRT_MAJOR", str(major))
    runtime = _load_fake(monkeypatch, "cuda.bindings.runtime", FAKES / "cuda_runtime.py")
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []  # type: ignore[attr-defined]
    bindings.runtime = runtime  # type: ignore[attr-defined]
    package = types.ModuleType("cuda")
    package.__path__ = []  # type: ignore[attr-defined]
    package.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda", package)
    trt = _load_fake(monkeypatch, "tensorrt", FAKES / "tensorrt" / "__init__.py")
    # The driver (libcuda) the probe asks cannot exist here either: it counts the fake's GPUs.
    monkeypatch.setattr(tensorrt_backend, "cuda_device_count", lambda: len(runtime.DEVICES))
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    return FakeGpu(trt, runtime, tmp_path / "cache" / "tensorrt")


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGpu:
    """The fake GPU with TensorRT 10, then with TensorRT 11: what both must do alike."""
    return _fake_gpu(monkeypatch, tmp_path, request.param)


@pytest.fixture
def fake10(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGpu:
    """The fake GPU with TensorRT 10: its builder flags and int8 calibrator (-o builder_precision)."""
    return _fake_gpu(monkeypatch, tmp_path, 10)


@pytest.fixture
def fake11(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGpu:
    """The fake GPU with TensorRT 11, which removed weak typing."""
    return _fake_gpu(monkeypatch, tmp_path, 11)


# Graphs as mlpi's precision transform derives them: fp32 inputs and outputs, the precision inside.

def _save_graph(path: Path, nodes: list, initializers: list, features: int = 16, classes: int = 10,
                io_type: int = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("x", io_type, ["N", features])],
        [helper.make_tensor_value_info("logits", io_type, ["N", classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _weights(seed: int = 0, features: int = 16, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((features, classes)).astype(np.float32), rng.standard_normal(classes).astype(np.float32)


def fp16_graph(path: Path) -> Path:
    """Cast to fp16, MatMul + Add in fp16, Cast back: what an fp16 transform gives."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = _weights()
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits16"]),
        helper.make_node("Cast", ["logits16"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    inits = [numpy_helper.from_array(weight.astype(np.float16), "W"), numpy_helper.from_array(bias.astype(np.float16), "B")]
    return _save_graph(path, nodes, inits)


def qdq_graph(path: Path) -> Path:
    """QuantizeLinear/DequantizeLinear on the activation, int8 weights dequantized, MatMul in
    between: what an int8 transform gives (the scales are in the graph)."""
    from onnx import helper, numpy_helper

    weight, bias = _weights()
    w_scale = np.float32(np.abs(weight).max() / 127)
    w_int8 = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "w_scale", "zero"], ["W"]),
        helper.make_node("MatMul", ["xd", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array(4.0 / 127, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(w_int8, "Wq"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(bias, "B"),
    ]
    return _save_graph(path, nodes, inits)


def bf16_graph(path: Path) -> Path:
    """The input rounded through bfloat16 before an fp32 MatMul + Add."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = _weights()
    nodes = [
        helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
        helper.make_node("Cast", ["xb"], ["xr"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["xr", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return _save_graph(path, nodes, [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])


def fp16_file(path: Path) -> Path:
    """A model exported in fp16 end to end (fp16 inputs and outputs), given as it is."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = _weights()
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    inits = [numpy_helper.from_array(weight.astype(np.float16), "W"), numpy_helper.from_array(bias.astype(np.float16), "B")]
    return _save_graph(path, nodes, inits, io_type=TensorProto.FLOAT16)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("trt-models")
    return {
        "matmul": tiny_models.matmul_model(path / "matmul.onnx"),
        "matmul_seed1": tiny_models.matmul_model(path / "matmul_seed1.onnx", seed=1),
        "matmul_b4": tiny_models.matmul_model(path / "matmul_b4.onnx", batch=4),
        "two_inputs": tiny_models.two_input_model(path / "two_inputs.onnx"),
        "conv": tiny_models.conv_model(path / "conv.onnx"),
        "fp16_graph": fp16_graph(path / "fp16_graph.onnx"),
        "qdq_graph": qdq_graph(path / "qdq_graph.onnx"),
        "bf16_graph": bf16_graph(path / "bf16_graph.onnx"),
        "fp16_file": fp16_file(path / "fp16_file.onnx"),
    }


def artifact(model: Path, derived: str | None = None):
    """The model's artifact; ``derived``: the precision mlpi's transform derived the graph for."""
    found = inspect_onnx(model)
    return dataclasses.replace(found, precision=derived) if derived else found


def load(model: Path, precision: str | None = None, batch: int | None = 8, device: str = "cuda",
         calibration=None, derived: str | None = None, **options: object):
    return TensorRTBackend().load(
        artifact(model, derived), Device.parse(device), TrtOptions(**options), precision, LoadContext(batch, calibration)
    )


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def feeds_for(session, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in session.inputs:
        shape = (rows, *spec.sample_shape)
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(-5, 5, shape).astype(spec.dtype)
    return out


def assert_same(got, want, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol, err_msg=name)


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlpi: tensorrt:")]


# --------------------------------------------------------------------------- helpers without any runtime


def test_plan_profile_covers_batch_one_to_the_run_batch(tmp_path: Path):
    artifact = inspect_onnx(tiny_models.matmul_model(tmp_path / "p.onnx"))
    profile = plan_profile(artifact, 16, 3)
    assert profile.shapes == (("x", ((1, 16), (16, 16), (16, 16))),)
    assert (profile.count, profile.low, profile.high, profile.dynamic) == (3, 1, 16, True)
    assert profile.describe() == "batch 1-16"


def test_plan_profile_fixed_batch_and_unsupported_shapes(tmp_path: Path):
    fixed = plan_profile(inspect_onnx(tiny_models.matmul_model(tmp_path / "f.onnx", batch=4)), 16, 2)
    assert (fixed.dynamic, fixed.count, fixed.high, fixed.describe()) == (False, 0, 4, "batch 4")

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(ModelError, match=r"input 'x' has shape \[\?, \?\]"):
        plan_profile(inspect_onnx(tmp_path / "relu.onnx"), 8, 2)


def test_engine_key_is_canonical_and_covers_every_field():
    base = {"artifact": "a", "tensorrt": "10.9", "gpu": "H100", "precision": "fp16", "profile": {"x": [1, 8]}}
    assert engine_key(base) == engine_key(dict(reversed(list(base.items()))))
    keys = {engine_key({**base, field: "other"}) for field in base}
    assert len(keys) == len(base) and engine_key(base) not in keys


def test_engine_file_round_trip_and_damage_detection(tmp_path: Path):
    path = tmp_path / "e.engine"
    assert read_engine(path) == (None, "missing")
    write_engine(path, b"payload" * 100)
    assert read_engine(path) == (b"payload" * 100, "")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    payload, why = read_engine(path)
    assert payload is None and "truncated" in why
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert read_engine(path) == (None, "checksum mismatch")
    path.write_bytes(b"short")
    assert read_engine(path)[0] is None
    path.write_bytes(b"X" * len(data))
    assert read_engine(path) == (None, "not an mlpi engine file")


def test_engine_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "e.engine"
    write_engine(path, b"old engine")

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_engine(path, b"new engine that never lands")
    assert read_engine(path) == (b"old engine", "")
    assert [p.name for p in tmp_path.iterdir()] == ["e.engine"], "no temporary file is left behind"


def test_pad_rows_repeats_the_batch_own_rows():
    batch = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(pad_rows(batch, 5), batch[[0, 1, 2, 0, 1]])
    np.testing.assert_array_equal(pad_rows(batch, 2), batch[:2])
    assert pad_rows(batch, 3) is batch


# --------------------------------------------------------------------------- the machine as it is: no TensorRT


def test_version_and_probe_without_tensorrt(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    backend = TensorRTBackend()
    with pytest.raises(PluginError) as raised:
        backend.version()
    assert "TensorRT is not installed" in raised.value.message
    assert raised.value.hint.endswith(INSTALL_HINT)  # led by what the machine lacks, where it has no GPU
    assert backend.probe() == []


def test_version_and_probe_without_cuda_python(fake: FakeGpu, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(PluginError, match="cuda-python is not installed") as raised:
        TensorRTBackend().version()
    assert raised.value.hint == INSTALL_HINT
    assert TensorRTBackend().probe() == []


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0.1", "unknown"])
def test_other_tensorrt_major_versions_are_refused(fake: FakeGpu, monkeypatch: pytest.MonkeyPatch, version: str):
    assert TensorRTBackend().version() == fake.trt.__version__ and fake.trt.__version__.startswith(f"{fake.major}.")
    monkeypatch.setattr(fake.trt, "__version__", version)
    with pytest.raises(PluginError, match=f"TensorRT {version} is installed; the tensorrt backend needs TensorRT 10 or 11"):
        TensorRTBackend().version()
    assert TensorRTBackend().probe() == []


def test_probe_without_a_driver_is_empty_and_never_raises(fake: FakeGpu, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tensorrt_backend, "cuda_device_count", lambda: 0)
    assert TensorRTBackend().probe() == []

    def broken() -> int:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(tensorrt_backend, "cuda_device_count", broken)
    assert TensorRTBackend().probe() == []


tensorrt_installed = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(tensorrt_installed, reason="TensorRT is installed here")


@pytest.fixture
def entry_point_site(tmp_path: Path) -> Path:
    """The ``tensorrt`` entry point as a throwaway distribution, until pyproject.toml declares it."""
    site = tmp_path / "site"
    dist = site / "mlpi_tensorrt_entry-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlpi-tensorrt-entry\nVersion: 0.0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[mlpi.backends]\ntensorrt = mlpi.backends.tensorrt_backend:TensorRTBackend\n", encoding="utf-8"
    )
    return site


def run_mlpi(tmp_path: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "xdg"), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "mlpi", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, check=False,
    )


@needs_no_tensorrt
def test_backends_lists_tensorrt_as_not_installed_with_the_hint(tmp_path: Path, entry_point_site: Path):
    proc = run_mlpi(tmp_path, entry_point_site, "backends", "--json")
    assert proc.returncode == 0, proc.stderr
    row = {r["name"]: r for r in json.loads(proc.stdout)}["tensorrt"]
    assert row["status"] == "not installed"
    assert "TensorRT is not installed" in row["error"]
    assert row["hint"].endswith(INSTALL_HINT)
    assert row["device_kinds"] == ["cuda"] and row["precisions"] == ["fp32", "fp16", "bf16", "int8"]
    assert {"contexts", "workspace_mib", "builder_optimization_level", "builder_precision",
            "calibration_cache"} <= set(row["options"])
    assert "TensorRT 11 removed" in row["options"]["builder_precision"]
    assert "default 2" in row["options"]["contexts"]


@needs_no_tensorrt
def test_run_without_tensorrt_ends_in_one_error_and_one_hint(tmp_path: Path, entry_point_site: Path):
    model = tiny_models.argmax_model(tmp_path / "tiny.onnx")
    out = tmp_path / "results"
    proc = run_mlpi(tmp_path, entry_point_site, "run", "--backend", "tensorrt", "--device", "cuda",
                    "--model-path", str(model), "-s", "SingleStream", "--duration", "0.5", "--output", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("error: TensorRT is not installed")
    assert lines[1].startswith("hint: ") and lines[1].endswith(INSTALL_HINT)
    assert proc.stdout.strip() == "" and not out.exists()


# --------------------------------------------------------------------------- with the fake GPU


def test_cuda_wrapper_raises_with_the_call_and_error_name(fake: FakeGpu):
    cuda = Cuda.load()
    assert cuda.rt is fake.cuda
    with pytest.raises(CudaError, match="cudaSetDevice failed: cudaErrorInvalidDevice"):
        cuda.set_device(7)
    info = cuda.device_info(0)
    assert (info.name, info.compute_capability) == ("NVIDIA Fake GPU", "9.0")


def _conformance(fake: FakeGpu, precision: str | None, options: dict[str, str]) -> None:
    report = run_checks(TensorRTBackend, device="cuda", precision=precision, options=options)
    assert report.failed == [], [r.line() for r in report.failed]
    assert [r.name for r in report.passed] == check_names(), [r.line() for r in report.skipped]
    assert fake.cuda.live() == {"device": 0, "pinned": 0, "streams": 0}, "close() frees every buffer and stream"
    assert fake.cuda.PAGEABLE_ASYNC_COPIES == 0, "asynchronous copies go through pinned host memory"


def test_conformance_kit_passes_on_the_fake_gpu(fake: FakeGpu):
    _conformance(fake, None, {})
    assert fake.trt.BUILDS and all(b["strongly_typed"] and b["flags"] == [] for b in fake.trt.BUILDS)


def test_conformance_kit_passes_with_tensorrt_10_builder_fp16(fake10: FakeGpu):
    _conformance(fake10, "fp16", {"builder_precision": "true"})
    assert fake10.trt.BUILDS and all(not b["strongly_typed"] and b["flags"] == ["FP16"] for b in fake10.trt.BUILDS)


def test_conformance_kit_passes_fp16_on_the_derived_files(fake: FakeGpu):
    """Without builder flags (TensorRT 10) or with none to use (11), fp16 is mlpi's derived file,
    built strongly typed as it is; the engines stay in the kit's own cache."""
    _conformance(fake, "fp16", {})
    builds = fake.trt.BUILDS
    assert builds and all(b["strongly_typed"] and b["flags"] == [] for b in builds)
    assert all(Path(b["onnx"]).parent.parent.name == "precision" and Path(b["onnx"]).name == "model.onnx"
               for b in builds if "corrupt" not in b["onnx"]), [b["onnx"] for b in builds]
    assert not fake.engine_files(), "the kit's engines are not left in the user's cache"


def test_engine_is_built_once_then_reused(fake: FakeGpu, models, capsys):
    first = load(models["matmul"])
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("mlpi: tensorrt: built engine for matmul fp32 batch 1-8 on NVIDIA Fake GPU in ")
    assert f"(cached at {first.engine_path})" in lines[0]
    assert len(fake.trt.BUILDS) == 1 and first.engine_reused is False
    assert fake.engine_files() == {first.engine_path}
    feeds = feeds_for(first, 5)
    want = reference(models["matmul"], feeds)
    assert_same(dict(first.run(feeds)), want)
    first.close()

    second = load(models["matmul"])
    assert stderr_lines(capsys) == [f"mlpi: tensorrt: reused engine for matmul fp32 batch 1-8 on NVIDIA Fake GPU from {first.engine_path}"]
    assert len(fake.trt.BUILDS) == 1, "no second build"
    assert second.engine_reused is True and second.engine_path == first.engine_path
    assert_same(dict(second.run(feeds)), want)
    second.close()


CHANGES = {
    "derived fp16 graph": lambda fake, run: run.update(model="fp16_graph", precision="fp16", derived="fp16"),
    "batch profile": lambda fake, run: run.update(batch=16),
    "profile count (contexts)": lambda fake, run: run.update(contexts=3),
    "GPU name": lambda fake, run: setattr(fake.cuda.DEVICES[0], "name", "NVIDIA Other GPU"),
    "compute capability": lambda fake, run: setattr(fake.cuda.DEVICES[0], "minor", 1),
    "TensorRT version": lambda fake, run: setattr(fake.trt, "__version__", f"{fake.major}.9.1.0"),
    "workspace_mib": lambda fake, run: run.update(workspace_mib=256),
    "builder_optimization_level": lambda fake, run: run.update(builder_optimization_level=5),
    "tf32": lambda fake, run: run.update(tf32=True),
    "model weights": lambda fake, run: run.update(model="matmul_seed1"),
}
#: Changes only TensorRT 10 can make: the same file, its precision derived by the builder flags.
TENSORRT_10_CHANGES = {
    "builder fp16": lambda fake, run: run.update(precision="fp16", builder_precision=True),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_input_gives_a_new_key_and_the_stale_engine_is_not_used(fake: FakeGpu, models, capsys, change):
    _assert_new_engine(fake, models, capsys, CHANGES[change])


@pytest.mark.parametrize("change", list(TENSORRT_10_CHANGES))
def test_builder_precision_gives_a_new_key(fake10: FakeGpu, models, capsys, change):
    _assert_new_engine(fake10, models, capsys, TENSORRT_10_CHANGES[change])


def _assert_new_engine(fake: FakeGpu, models, capsys, change) -> None:
    run: dict[str, object] = {"model": "matmul"}

    def load_now():
        kwargs = dict(run)
        return load(models[kwargs.pop("model")], **kwargs)  # type: ignore[arg-type]

    old = load_now()
    old.close()
    old_bytes = old.engine_path.read_bytes()
    capsys.readouterr()

    change(fake, run)
    new = load_now()
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("mlpi: tensorrt: built engine for "), lines
    assert len(fake.trt.BUILDS) == 2
    assert new.engine_path != old.engine_path and fake.engine_files() == {old.engine_path, new.engine_path}
    assert old.engine_path.read_bytes() == old_bytes, "the stale engine is left alone"
    engine = fake.trt.ENGINES[-1]
    assert engine.doc["version"] == fake.trt.__version__ and engine.doc["gpu"] == fake.cuda.DEVICES[0].name
    feeds = feeds_for(new, 3)
    rtol, atol = TOLERANCES[new.precision]
    assert_same(dict(new.run(feeds)), reference(models[str(run["model"])], feeds), rtol, atol)
    new.close()


def test_a_truncated_engine_is_rebuilt_not_loaded(fake: FakeGpu, models, capsys):
    session = load(models["matmul"])
    session.close()
    path = session.engine_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()

    again = load(models["matmul"])
    lines = stderr_lines(capsys)
    assert lines[0] == f"mlpi: tensorrt: cached engine {path} is damaged ({len(data) // 2 - 56} of {len(data) - 56} bytes (truncated)); building it again"
    assert lines[1].startswith("mlpi: tensorrt: built engine for matmul")
    assert len(fake.trt.BUILDS) == 2 and again.engine_reused is False
    assert read_engine(path)[0] is not None and path.read_bytes() == data
    feeds = feeds_for(again, 2)
    assert_same(dict(again.run(feeds)), reference(models["matmul"], feeds))
    again.close()


def test_an_engine_tensorrt_refuses_is_rebuilt(fake: FakeGpu, models, capsys):
    session = load(models["matmul"])
    session.close()
    write_engine(session.engine_path, b"an intact file that is no engine")
    capsys.readouterr()
    again = load(models["matmul"])
    lines = stderr_lines(capsys)
    assert lines[0].startswith("mlpi: tensorrt: reused engine")
    assert lines[1].startswith(f"mlpi: tensorrt: cached engine {session.engine_path} was refused by TensorRT (")
    assert "magic tag does not match" in lines[1]
    assert lines[2].startswith("mlpi: tensorrt: built engine")
    assert len(fake.trt.BUILDS) == 2
    again.close()


def test_without_cache_every_load_builds_and_nothing_is_written(fake: FakeGpu, models, capsys):
    for _ in range(2):
        session = load(models["matmul"], cache=False)
        assert session.engine_path is None
        session.close()
    assert len(fake.trt.BUILDS) == 2 and fake.engine_files() == set()
    assert all("(not cached: -o cache=false)" in line for line in stderr_lines(capsys))


def test_profile_follows_the_run_and_the_contexts(fake: FakeGpu, models):
    session = load(models["matmul"], batch=16, contexts=3)
    build = fake.trt.BUILDS[-1]
    assert build["profiles"] == [{"x": [[1, 16], [16, 16], [16, 16]]}] * 3
    caps = session.capabilities
    assert (caps.max_batch_size, caps.preferred_batch_size, caps.fixed_batch) == (16, 16, False)
    assert (caps.concurrent, caps.max_in_flight) == (True, 3)
    with pytest.raises(ModelError, match="a batch of 17 is outside the engine's batch 1-16"):
        session.run(feeds_for(session, 17))
    with pytest.raises(ModelError, match=r"input 'x' has shape \(2, 15\)"):
        session.run({"x": np.zeros((2, 15), np.float32)})
    session.close()

    default = load(models["matmul"], batch=None, default_batch_size=24)
    assert fake.trt.BUILDS[-1]["profiles"][0] == {"x": [[1, 16], [24, 16], [24, 16]]}
    assert default.capabilities.max_batch_size == 24
    default.close()

    fixed = load(models["matmul_b4"], batch=16)
    assert fake.trt.BUILDS[-1]["profiles"] == []
    assert (fixed.capabilities.fixed_batch, fixed.capabilities.max_batch_size) == (True, 4)
    feeds = feeds_for(fixed, 4)
    assert_same(dict(fixed.run(feeds)), reference(models["matmul_b4"], feeds))
    fixed.close()


def test_builder_options_reach_the_builder(fake: FakeGpu, models):
    load(models["matmul"], workspace_mib=64, builder_optimization_level=5, tf32=True).close()
    build = fake.trt.BUILDS[-1]
    assert (build["workspace"], build["opt_level"]) == (64 << 20, 5)
    assert "TF32" in build["flags"]
    load(models["matmul"]).close()
    assert (fake.trt.BUILDS[-1]["workspace"], fake.trt.BUILDS[-1]["opt_level"]) == (None, 3)
    assert "TF32" not in fake.trt.BUILDS[-1]["flags"], "fp32 means fp32 unless -o tf32=true"


def test_default_build_is_strongly_typed_with_no_precision_flags(fake: FakeGpu, models):
    for precision in (None, "fp32"):
        session = load(models["conv"], precision=precision)
        build = fake.trt.BUILDS[-1]
        assert build["strongly_typed"] and build["flags"] == [] and build["scales"] is None
        assert session.precision == "fp32" and fake.trt.ENGINES[-1].doc["strongly_typed"]
        feeds = feeds_for(session, 3)
        assert_same(dict(session.run(feeds)), reference(models["conv"], feeds))
        session.close()
    assert not (fake.engines / "calibration").exists()


def test_a_derived_fp16_graph_runs_as_it_is_typed(fake: FakeGpu, models):
    session = load(models["fp16_graph"], precision="fp16", derived="fp16")
    build = fake.trt.BUILDS[-1]
    assert build["strongly_typed"] and build["flags"] == [], "the graph's types decide, no FP16 flag"
    assert session.precision == "fp16"
    assert [(t.name, t.dtype) for t in session.inputs] == [("x", "float32")], "the transform keeps fp32 inputs"
    feeds = feeds_for(session, 5)
    got = dict(session.run(feeds))
    assert_same(got, reference(models["fp16_graph"], feeds), rtol=0, atol=0)
    weight, bias = _weights()
    fp32_logits = feeds["x"] @ weight + bias
    np.testing.assert_allclose(got["logits"], fp32_logits, *TOLERANCES["fp16"])
    assert not np.array_equal(got["logits"], fp32_logits), "the engine really ran the fp16 graph"
    session.close()


def test_a_derived_int8_graph_carries_its_scales_and_is_not_calibrated(fake: FakeGpu, models):
    data = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)
    source, calls = calibration_source(data)
    session = load(models["qdq_graph"], precision="int8", derived="int8", batch=4, calibration=source)
    build = fake.trt.BUILDS[-1]
    assert build["strongly_typed"] and build["flags"] == [] and build["scales"] is None
    assert build["calibration_batches"] == [] and calls == [], "the Q/DQ nodes hold the scales: no calibrator"
    assert not (fake.engines / "calibration").exists()
    assert session.precision == "int8"
    feeds = feeds_for(session, 4)
    assert_same(dict(session.run(feeds)), reference(models["qdq_graph"], feeds), rtol=0, atol=0)
    session.close()
    again = load(models["qdq_graph"], precision="int8", derived="int8", batch=4)  # no calibration data needed
    assert again.engine_reused and len(fake.trt.BUILDS) == 1
    again.close()


def test_a_bf16_graph_needs_compute_capability_8(fake: FakeGpu, models):
    session = load(models["bf16_graph"], precision="bf16", derived="bf16")
    assert session.precision == "bf16" and fake.trt.BUILDS[-1]["strongly_typed"] and fake.trt.BUILDS[-1]["flags"] == []
    feeds = feeds_for(session, 3)
    assert_same(dict(session.run(feeds)), reference(models["bf16_graph"], feeds), rtol=0, atol=0)
    session.close()
    fake.cuda.DEVICES[0].major, fake.cuda.DEVICES[0].minor = 7, 5
    with pytest.raises(DeviceError, match=r"bf16 needs a GPU of compute capability 8.0 or newer; GPU 0 .* is 7.5") as raised:
        load(models["bf16_graph"], precision="bf16", derived="bf16")
    assert raised.value.hint == "run --precision fp16 on this GPU"
    assert len(fake.trt.BUILDS) == 1


def test_a_file_given_as_it_is_runs_and_reports_its_own_types(fake: FakeGpu, models):
    session = load(models["fp16_file"])
    assert session.precision == "fp16" and fake.trt.BUILDS[-1]["strongly_typed"] and fake.trt.BUILDS[-1]["flags"] == []
    feeds = feeds_for(session, 3)
    assert feeds["x"].dtype == np.float16
    assert_same(dict(session.run(feeds)), reference(models["fp16_file"], feeds), rtol=0, atol=0)
    session.close()
    load(models["fp16_file"], precision="fp16").close()  # asking for the precision the file carries is fine
    with pytest.raises(UsageError, match="fp16_file.onnx is fp16, not fp32"):
        TensorRTBackend().check(artifact(models["fp16_file"]), Device("cuda"), TrtOptions(), "fp32")


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_a_precision_the_graph_was_not_derived_for_is_refused(fake: FakeGpu, models, precision: str):
    backend = TensorRTBackend()
    with pytest.raises(UsageError) as raised:
        backend.check(artifact(models["matmul"]), Device("cuda"), TrtOptions(), precision)
    assert raised.value.message == (f"backend 'tensorrt' runs the precision its graph carries, and matmul.onnx is fp32, "
                                    f"not {precision} (the graph was not derived for it)")
    hint = raised.value.hint or ""
    assert f"`mlpi run --precision {precision}`" in hint
    assert ("-o builder_precision=true" in hint) == (fake.major == 10 and precision != "bf16")
    other = "int8" if precision == "fp16" else precision
    with pytest.raises(UsageError, match=f"fp16_graph.onnx was derived for fp16, and the run asks for {other}"):
        backend.check(artifact(models["fp16_graph"], "fp16"), Device("cuda"), TrtOptions(), other)
    with pytest.raises(UsageError, match="cannot run precision 'fp8'"):
        backend.check(artifact(models["matmul"]), Device("cuda"), TrtOptions(), "fp8")
    assert fake.trt.BUILDS == []


def test_calibration_cache_belongs_to_the_builder_int8_path(fake: FakeGpu, models, tmp_path: Path):
    given = tmp_path / "given.cache"
    given.write_text("scales\n")
    options = TrtOptions(calibration_cache=str(given))
    backend = TensorRTBackend()
    for model, derived, precision, runs in ((models["qdq_graph"], "int8", "int8", "runs its int8 graph as it is typed"),
                                            (models["matmul"], None, None, "runs its fp32 graph as it is typed")):
        with pytest.raises(UsageError) as raised:
            backend.check(artifact(model, derived), Device("cuda"), options, precision)
        assert raised.value.message == ("option calibration_cache holds scales for TensorRT 10's int8 calibrator, used only "
                                        f"with -o builder_precision=true --precision int8, and this run {runs}")
        assert "drop -o calibration_cache" in (raised.value.hint or "")
    assert fake.trt.BUILDS == []


def test_native_precision_names_tensorrt_10_builder_flags():
    backend = TensorRTBackend()  # needs no runtime: the core asks while it plans
    native = TrtOptions(builder_precision=True)
    assert backend.native_precision(native, "fp16") == (
        "TensorRT 10 builder flag FP16 (TensorRT picks fp16 or fp32 kernels layer by layer)")
    assert backend.native_precision(native, "int8") == "TensorRT 10 builder flags FP16+INT8 with its entropy calibrator"
    assert backend.native_precision(native, "bf16") is None, "bf16 comes from mlpi's transform"
    assert backend.native_precision(native, "fp32") is None
    assert all(backend.native_precision(TrtOptions(), p) is None for p in ("fp16", "bf16", "int8"))


def test_tensorrt_11_refuses_builder_precision(fake11: FakeGpu, models):
    for precision in (None, "fp16", "int8"):
        with pytest.raises(UsageError) as raised:
            TensorRTBackend().check(artifact(models["matmul"]), Device("cuda"), TrtOptions(builder_precision=True), precision)
        assert raised.value.message == ("-o builder_precision=true derives precision with TensorRT 10's builder flags "
                                        "and calibrator, which TensorRT 11 removed")
        assert raised.value.hint == ("drop -o builder_precision: mlpi's --precision transform gives the same precision in "
                                     "the graph itself")
    with pytest.raises(UsageError, match="which TensorRT 11 removed"):
        load(models["fp16_graph"], precision="fp16", derived="fp16", builder_precision=True)
    assert fake11.trt.BUILDS == [] and fake11.trt.REMOVED_REACHED == []


def test_tensorrt_11_builds_reach_no_removed_api(fake11: FakeGpu, models):
    trt = fake11.trt
    runs = [("matmul", None, None), ("fp16_graph", "fp16", "fp16"), ("qdq_graph", "int8", "int8"),
            ("bf16_graph", "bf16", "bf16"), ("fp16_file", None, None), ("conv", "fp32", None)]
    for name, precision, derived in runs:
        session = load(models[name], precision=precision, derived=derived, tf32=name == "conv")
        feeds = feeds_for(session, 2)
        assert_same(dict(session.run(feeds)), reference(models[name], feeds), rtol=0, atol=0)
        session.close()
    assert len(trt.BUILDS) == len(runs) and all(b["strongly_typed"] for b in trt.BUILDS)
    assert trt.REMOVED_REACHED == [], "the backend reached APIs TensorRT 11 removed"
    # The check above can fail: in 11.x mode every removed name raises and is recorded.
    probes = [lambda: trt.BuilderFlag.FP16, lambda: trt.BuilderFlag.INT8, lambda: trt.BuilderFlag["BF16"],
              lambda: trt.IInt8EntropyCalibrator2, lambda: trt.Builder(None).platform_has_fast_fp16,
              lambda: trt.IBuilderConfig().set_calibration_profile, lambda: trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH,
              lambda: setattr(trt.IBuilderConfig(), "int8_calibrator", object())]
    for probe in probes:
        with pytest.raises((AttributeError, KeyError)):
            probe()
    assert trt.REMOVED_REACHED == ["BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "IInt8EntropyCalibrator2",
                                   "Builder.platform_has_fast_fp16", "IBuilderConfig.set_calibration_profile",
                                   "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "IBuilderConfig.int8_calibrator"]
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0 and trt.BuilderFlag.TF32


def test_a_strongly_typed_network_refuses_precision_flags(fake10: FakeGpu, models):
    """The fake holds TensorRT 10 to its rule, so a backend setting FP16 on the default path fails."""
    trt = fake10.trt
    builder = trt.Builder(trt.ILogger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, builder.logger).parse_from_file(str(models["matmul_b4"]))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    weak = builder.create_network(0)
    assert not weak.strongly_typed and network.strongly_typed


def test_the_engine_key_holds_the_major_version_and_the_network(fake: FakeGpu, models, monkeypatch: pytest.MonkeyPatch):
    keys: list[dict] = []
    real = tensorrt_backend.engine_key
    monkeypatch.setattr(tensorrt_backend, "engine_key", lambda fields: keys.append(fields) or real(fields))
    load(models["fp16_graph"], precision="fp16", derived="fp16").close()
    fields = keys[-1]
    assert fields["tensorrt_major"] == fake.major and fields["tensorrt"] == fake.trt.__version__
    assert (fields["precision"], fields["artifact_precision"]) == ("fp16", "fp16")
    assert fields["builder"]["network"] == "strongly typed"


def test_builder_precision_fp16_sets_the_flag_on_a_weakly_typed_network(fake10: FakeGpu, models):
    fp32 = load(models["conv"], builder_precision=True)  # no --precision: nothing for the builder to derive
    assert fake10.trt.BUILDS[-1]["flags"] == [] and fake10.trt.BUILDS[-1]["strongly_typed"] and fp32.precision == "fp32"
    fp16 = load(models["conv"], precision="fp16", builder_precision=True)
    assert fake10.trt.BUILDS[-1]["flags"] == ["FP16"] and not fake10.trt.BUILDS[-1]["strongly_typed"]
    assert fp16.precision == "fp16"
    feeds = feeds_for(fp16, 3)
    want = reference(models["conv"], feeds)
    assert_same(dict(fp32.run(feeds)), want)
    got = dict(fp16.run(feeds))
    assert got["scores"].dtype == np.float32, "outputs keep the ONNX file's types"
    assert_same(got, want, *TOLERANCES["fp16"])
    assert not np.array_equal(got["scores"], want["scores"]), "the fp16 engine really ran in fp16"
    fp32.close()
    fp16.close()


def calibration_source(data: np.ndarray):
    """``calibration(batch)`` like the core's: the data in batches, the last one short."""
    calls: list[int] = []

    def batches(batch_size: int):
        calls.append(batch_size)
        for start in range(0, len(data), batch_size):
            yield {"x": data[start : start + batch_size]}

    return batches, calls


def test_builder_int8_calibrates_then_reuses_the_calibration_cache(fake10: FakeGpu, models, capsys):
    fake = fake10
    data = (np.random.default_rng(3).standard_normal((10, 16)) * 2).astype(np.float32)
    source, calls = calibration_source(data)
    session = load(models["matmul"], precision="int8", batch=4, calibration=source, builder_precision=True)
    build = fake.trt.BUILDS[-1]
    assert build["flags"] == ["FP16", "INT8"] and not build["strongly_typed"] and session.precision == "int8"
    batches = [b["x"] for b in build["calibration_batches"]]
    assert calls == [4] and len(batches) == 3 and all(b.shape == (4, 16) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches[:2]), data[:8])
    np.testing.assert_array_equal(batches[2], data[[8, 9, 8, 9]])  # the short batch padded with its own rows
    caches = list((fake.engines / "calibration").glob("*.cache"))
    assert len(caches) == 1
    header, line = caches[0].read_text().splitlines()
    assert header == f"FAKE-TRT-{fake.trt.__version__}-EntropyCalibration2"
    assert line == f"x: {float(np.abs(data.astype(np.float64)).max())!r}"
    lines = stderr_lines(capsys)
    assert lines[0] == f"mlpi: tensorrt: calibrated int8 on 3 batches of 4 (calibration cache at {caches[0]})"
    assert lines[1].startswith("mlpi: tensorrt: built engine for matmul int8 batch 1-4")
    labels = dict(session.run({"x": data[:4]}))["label"]
    assert labels.dtype == np.int64 and labels.shape == (4,)
    session.close()

    again = load(models["matmul"], precision="int8", batch=4, calibration=source, builder_precision=True)
    assert again.engine_reused and len(fake.trt.BUILDS) == 1 and calls == [4], "no new calibration, no new build"
    again.close()

    # Another profile needs another engine, but the scales come from the calibration cache.
    bigger = load(models["matmul"], precision="int8", batch=8, calibration=None, builder_precision=True)
    build = fake.trt.BUILDS[-1]
    assert len(fake.trt.BUILDS) == 2 and build["calibration_from_cache"] and build["calibration_batches"] == []
    assert build["scales"] == {"x": float(np.abs(data.astype(np.float64)).max())} and calls == [4]
    bigger.close()


def test_builder_int8_needs_calibration_data_or_a_cache(fake10: FakeGpu, models, tmp_path: Path):
    fake = fake10
    backend = TensorRTBackend()
    fp32 = inspect_onnx(models["matmul"])
    backend.check(fp32, Device("cuda"), TrtOptions(builder_precision=True), "int8")  # the data only shows up in load
    with pytest.raises(UsageError, match="int8 needs calibration data or a calibration cache") as raised:
        load(models["matmul"], precision="int8", batch=4, builder_precision=True)
    assert "-o calibration_cache=FILE" in (raised.value.hint or "")
    missing = TrtOptions(builder_precision=True, calibration_cache=str(tmp_path / "missing.cache"))
    with pytest.raises(UsageError, match="calibration cache .*missing.cache does not exist"):
        backend.check(fp32, Device("cuda"), missing, "int8")
    given = tmp_path / "given.cache"
    given.write_text(f"FAKE-TRT-{fake.trt.__version__}-EntropyCalibration2\nx: 4.0\n")
    with pytest.raises(UsageError, match="and this run derives fp16 with the builder flags"):
        backend.check(fp32, Device("cuda"), TrtOptions(builder_precision=True, calibration_cache=str(given)), "fp16")

    session = load(models["matmul"], precision="int8", batch=4, calibration_cache=str(given), builder_precision=True)
    assert fake.trt.BUILDS[-1]["scales"] == {"x": 4.0} and fake.trt.BUILDS[-1]["calibration_batches"] == []
    session.close()
    assert given.read_text().endswith("x: 4.0\n"), "a given calibration cache is only read"


def test_broken_calibration_data_is_reported_as_such(fake10: FakeGpu, models):
    fake = fake10

    def wrong_shape(batch_size: int):
        yield {"x": np.zeros((batch_size, 15), np.float32)}

    with pytest.raises(ModelError, match=r"int8 calibration failed: ValueError: calibration input 'x' has shape \(4, 15\)"):
        load(models["matmul"], precision="int8", batch=4, calibration=wrong_shape, builder_precision=True)

    def dataset_gone(batch_size: int):
        raise DatasetError("the dataset folder is gone", "pass --dataset-path")
        yield  # a generator, like the core's

    with pytest.raises(DatasetError, match="the dataset folder is gone"):
        load(models["matmul"], precision="int8", batch=4, calibration=dataset_gone, builder_precision=True)
    assert fake.trt.BUILDS == [] and fake.engine_files() == set()
    assert fake.cuda.live()["device"] == 0, "calibration buffers are freed after a failed build"


@pytest.mark.parametrize(
    ("options", "device", "error", "text"),
    [
        ({}, "cuda:0,1", UsageError, "one TensorRT session runs on one GPU"),
        ({}, "cpu", DeviceError, "cannot use device kind 'cpu'"),
    ],
)
def test_check_rejects_what_load_would_reject(fake: FakeGpu, models, options, device, error, text):
    with pytest.raises(error, match=text):
        TensorRTBackend().check(inspect_onnx(models["matmul"]), Device.parse(device), TrtOptions(**options), None)
    assert fake.trt.BUILDS == []


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"contexts": "0"}, r"option 'contexts' of backend 'tensorrt' \(from --option\) is 0; it takes 1 to 32"),
        ({"contexts": "33"}, "'contexts' .* is 33; it takes 1 to 32"),
        ({"workspace_mib": "-1"}, "'workspace_mib' .* is -1; it takes 0 or more"),
        ({"builder_optimization_level": "6"}, "'builder_optimization_level' .* is 6; it takes 0 to 5"),
        ({"default_batch_size": "0"}, "'default_batch_size' .* is 0; it takes 1 or more"),
    ],
)
def test_option_ranges_are_refused_by_the_core(fake: FakeGpu, options, text):
    from mlpi.core.plugins.options import build_options

    with pytest.raises(UsageError, match=text):
        build_options(TrtOptions, [("--option", options)], "tensorrt")
    assert fake.trt.BUILDS == []


def test_options_come_from_the_command_line_like_any_backend(fake: FakeGpu):
    from mlpi.core.plugins.options import build_options

    options = build_options(TrtOptions, [("--option", {"contexts": "4", "tf32": "true", "workspace_mib": "512"})], "tensorrt")
    assert (options.contexts, options.tf32, options.workspace_mib) == (4, True, 512)
    with pytest.raises(UsageError, match="unknown option 'context'"):
        build_options(TrtOptions, [("--option", {"context": "4"})], "tensorrt")


def test_threads_each_get_a_free_context(fake: FakeGpu, models):
    fake.cuda.EXECUTION_DELAY_S = 0.01  # a batch stays on its stream long enough for others to start
    session = load(models["matmul"], contexts=2)
    jobs = {(t, r): feeds_for(session, 1 + (t + r) % 8, seed=10 * t + r) for t in range(4) for r in range(5)}
    want = {job: reference(models["matmul"], feeds) for job, feeds in jobs.items()}
    got: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(t: int) -> None:
        try:
            barrier.wait(30)
            for r in range(5):
                got[(t, r)] = dict(session.run(jobs[(t, r)]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for job in jobs:
        assert_same(got[job], want[job])
    engine = fake.trt.ENGINES[-1]
    assert len(engine.contexts) == 2 and engine.executions == 20
    assert sorted(c.profile for c in engine.contexts) == [0, 1], "contexts used at once never share a profile"
    assert engine.peak_working == 2, "two batches were on the GPU at once, never more than the contexts"
    assert all(c.misuse == 0 for c in engine.contexts), "no context was touched while its batch was running"
    assert fake.cuda.PAGEABLE_ASYNC_COPIES == 0
    session.close()
    assert fake.cuda.live() == {"device": 0, "pinned": 0, "streams": 0}
    with pytest.raises(RuntimeError, match="closed"):
        session.run(jobs[(0, 0)])
    session.close()  # twice is fine


def test_the_named_gpu_is_used_from_any_thread(fake: FakeGpu, models, capsys):
    fake.cuda.DEVICES[:] = [fake.cuda.FakeDevice("NVIDIA Fake A", 9, 0), fake.cuda.FakeDevice("NVIDIA Fake B", 8, 9)]
    assert TensorRTBackend().probe() == [Device("cuda", (0,)), Device("cuda", (1,))]
    session = load(models["two_inputs"], device="cuda:1")
    assert fake.trt.BUILDS[-1]["device"] == 1 and fake.trt.ENGINES[-1].doc["compute_capability"] == [8, 9]
    assert "on NVIDIA Fake B" in stderr_lines(capsys)[0]
    feeds = feeds_for(session, 3)
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(out=dict(session.run(feeds))))  # its current GPU is 0
    thread.start()
    thread.join(30)
    assert_same(box["out"], reference(models["two_inputs"], feeds))  # type: ignore[arg-type]
    session.close()
    with pytest.raises(DeviceError, match="CUDA cannot use GPU 2"):
        load(models["two_inputs"], device="cuda:2")


def test_too_little_gpu_memory_is_a_device_error_and_leaks_nothing(fake: FakeGpu, models):
    fake.cuda.DEVICES[0].total_memory = 256  # bytes: less than one batch of 8 inputs
    with pytest.raises(DeviceError, match="CUDA could not set up execution context 1 on GPU 0: cudaMalloc failed: "
                                          "cudaErrorMemoryAllocation") as raised:
        load(models["matmul"])
    assert "-o contexts=1" in (raised.value.hint or "")
    assert fake.cuda.live() == {"device": 0, "pinned": 0, "streams": 0}


def test_a_model_tensorrt_cannot_parse_is_a_model_error(fake: FakeGpu, models, tmp_path: Path):
    broken = tmp_path / "broken.onnx"
    data = models["matmul"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    from mlpi.core.contract.backend import ModelArtifact

    artifact = ModelArtifact(broken, "0" * 64, inspect_onnx(models["matmul"]).inputs, inspect_onnx(models["matmul"]).outputs)
    with pytest.raises(ModelError, match="TensorRT's ONNX parser rejected"):
        TensorRTBackend().load(artifact, Device("cuda"), TrtOptions(), None, LoadContext(8))
    assert fake.engine_files() == set()


# --------------------------------------------------------------------------- real GPU


def _real_gpu_missing() -> str | None:
    """Why the real-GPU tests cannot run here (None when they can)."""
    if not tensorrt_installed:
        return "TensorRT is not installed"
    if not TensorRTBackend().probe():
        return "no NVIDIA GPU that TensorRT and cuda-python can use"
    return None


real_gpu = pytest.mark.skipif(_real_gpu_missing() is not None, reason=str(_real_gpu_missing()))


def _real_major() -> int:
    import tensorrt

    return int(str(tensorrt.__version__).split(".")[0])


@pytest.mark.gpu
@real_gpu
def test_conformance_kit_on_a_real_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    report = run_checks(TensorRTBackend, device="cuda")
    assert report.failed == [], [r.line() for r in report.failed]


@pytest.mark.gpu
@real_gpu
@pytest.mark.parametrize(("name", "precision"), [("fp16_graph", "fp16"), ("qdq_graph", "int8"), ("bf16_graph", "bf16")])
def test_derived_graphs_on_a_real_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models, name: str, precision: str):
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    session = load(models[name], precision=precision, derived=precision)
    assert session.precision == precision
    data = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    got = dict(session.run({"x": data}))
    want = reference(models[name], {"x": data})
    np.testing.assert_allclose(got["logits"], want["logits"], *TOLERANCES["fp16"])
    assert (got["label"] == want["label"]).mean() >= 0.75, (got["label"], want["label"])
    session.close()


@pytest.mark.gpu
@real_gpu
def test_builder_fp16_conformance_on_a_real_tensorrt_10_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if _real_major() != 10:
        pytest.skip("-o builder_precision needs TensorRT 10")
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    report = run_checks(TensorRTBackend, device="cuda", precision="fp16", options={"builder_precision": "true"})
    assert report.failed == [], [r.line() for r in report.failed]


@pytest.mark.gpu
@real_gpu
def test_builder_int8_calibration_and_engine_reuse_on_a_real_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models,
                                                                 capsys):
    if _real_major() != 10:
        pytest.skip("-o builder_precision needs TensorRT 10")
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    data = np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32)
    source, calls = calibration_source(data)
    session = load(models["matmul"], precision="int8", batch=8, calibration=source, builder_precision=True)
    assert session.precision == "int8" and calls == [8]
    assert list((tmp_path / "cache" / "tensorrt" / "calibration").glob("*.cache"))
    labels = dict(session.run({"x": data[:8]}))["label"]
    want = reference(models["matmul"], {"x": data[:8]})["label"]
    assert (labels == want).mean() >= 0.75, (labels, want)
    session.close()
    again = load(models["matmul"], precision="int8", batch=8, calibration=source, builder_precision=True)
    assert again.engine_reused and calls == [8]
    assert any(line.startswith("mlpi: tensorrt: reused engine") for line in stderr_lines(capsys))
    again.close()
