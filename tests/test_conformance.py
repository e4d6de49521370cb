"""The conformance kit (mlpi.testing.conformance): it passes on conforming backends and
fails, naming exactly the broken checks, on deliberately broken ones.

Broken backends are "installed" like test_plugins.py's: a folder with a module and a
``*.dist-info`` prepended to PYTHONPATH of a ``python -m mlpi.testing.conformance``
subprocess, with its own XDG_CACHE_HOME/HOME so stevedore's entry-point cache cannot leak.
They wrap the built-in onnxruntime backend and break one thing each.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult

from mlpi.backends.ort import OnnxRuntimeBackend
from mlpi.core.contract.backend import Session
from mlpi.core.contract.errors import EXIT_USAGE, UsageError
from mlpi.testing.conformance import (
    FAIL,
    PASS,
    SKIP,
    STANDARD_MODELS,
    check_names,
    run_checks,
)

MODELS = [m.key for m in STANDARD_MODELS]
EXAMPLE_DIST = "mlpi-numpy-backend"

BROKEN_MODULE = '''
import time

import numpy as np

from mlpi.backends.ort import OnnxRuntimeBackend
from mlpi.core.contract.backend import Session
from mlpi.core.contract.errors import ModelError


class Wrapped(Session):
    def __init__(self, inner):
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capabilities, self.precision = inner.capabilities, inner.precision

    def run(self, feeds):
        return self.inner.run(feeds)

    def close(self):
        self.inner.close()


class Base(OnnxRuntimeBackend):
    session_class = Wrapped

    def load(self, model, device, options, precision, context=None):
        return self.session_class(super().load(model, device, options, precision, context))


class ZerosSession(Wrapped):
    """Right shapes and dtypes, wrong values: like the null backend."""

    def run(self, feeds):
        return {name: np.zeros_like(value) for name, value in self.inner.run(feeds).items()}


class WrongValuesBackend(Base):
    name = "wrong-values"
    session_class = ZerosSession


class RacySession(Wrapped):
    """Claims concurrent=True (from onnxruntime) but keeps the batch in shared state."""

    def run(self, feeds):
        self.pending = {name: np.array(value, copy=True) for name, value in feeds.items()}
        time.sleep(0.002)
        return self.inner.run(self.pending)


class RacyBackend(Base):
    name = "racy"
    session_class = RacySession


class WrongErrorBackend(Base):
    """Raises RuntimeError, not ModelError, for a file it cannot read."""

    name = "wrong-error"

    def load(self, model, device, options, precision, context=None):
        try:
            return super().load(model, device, options, precision, context)
        except ModelError:
            raise RuntimeError(f"cannot parse {model.path}") from None
'''


class Result(CliResult):

    def statuses(self) -> dict[str, str]:
        """{check name: PASS/FAIL/SKIP} from the check lines."""
        rows = {}
        for line in self.stdout.splitlines():
            status, _, rest = line.partition("  ")
            if status in (PASS, FAIL, SKIP):
                rows[rest.split()[0]] = status
        return rows

    def failed(self) -> set[str]:
        return {name for name, status in self.statuses().items() if status == FAIL}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder that looks like site-packages with the distribution broken-backends 0.0.1."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_backends.py").write_text(BROKEN_MODULE, encoding="utf-8")
    dist = site / "broken_backends-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-backends\nVersion: 0.0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[mlpi.backends]\n"
        "wrong-values = broken_backends:WrongValuesBackend\n"
        "racy = broken_backends:RacyBackend\n"
        "wrong-error = broken_backends:WrongErrorBackend\n",
        encoding="utf-8",
    )
    return site


@pytest.fixture
def kit(tmp_path: Path):
    """``kit(*args, site=None, module="mlpi.testing.conformance")`` runs ``python -m MODULE ARGS``."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str, site: Path | None = None, module: str = "mlpi.testing.conformance") -> Result:
        env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
        env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), HOME=str(home), COLUMNS="200", PYTHONUNBUFFERED="1")
        paths = ([str(site)] if site else []) + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], check=False, cwd=work, env=env, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def per_model(check: str) -> set[str]:
    return {f"{check}[{model}]" for model in MODELS}


def assert_fails_exactly(result: Result, expected: set[str]) -> None:
    assert result.rc == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert result.failed() == expected, result.stdout
    statuses = result.statuses()
    assert list(statuses) == check_names(), "every check reports one line, in order"
    counts = {status: list(statuses.values()).count(status) for status in (PASS, FAIL, SKIP)}
    summary = f"{counts[PASS]} passed, {counts[FAIL]} failed" + (f", {counts[SKIP]} skipped" if counts[SKIP] else "")
    assert result.stdout.strip().splitlines()[-1] == summary


# --------------------------------------------------------------------------- conforming backends


def test_kit_passes_on_onnxruntime_cli(kit):
    result = kit("--backend", "onnxruntime")
    assert result.rc == 0, result.output
    statuses = result.statuses()
    assert list(statuses) == check_names()
    assert set(statuses.values()) == {PASS}, result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"{len(check_names())} passed, 0 failed"


def test_kit_passes_on_onnxruntime_in_process():
    seen = []
    report = run_checks("ort", on_result=seen.append)  # an alias resolves like in `mlpi run`
    assert report.failed == []
    assert report.backend == "onnxruntime" and report.origin == "built-in"
    assert [r.name for r in report.results] == check_names() == [r.name for r in seen]
    assert report.summary() == f"{len(check_names())} passed, 0 failed"
    assert report.to_json()["failed"] == 0


def test_check_names_cover_every_model_and_contract_point():
    names = set(check_names())
    assert {"declarations", "version", "probe", "corrupt_model[random]", "corrupt_model[truncated]"} <= names
    for check in ("load", "signature", "capabilities", "precision", "outputs", "values", "batch_sizes",
                  "concurrent", "outputs_kept", "reload"):
        assert per_model(check) <= names
    assert {"conv", "matmul", "two_inputs", "matmul_fixed4"} <= set(MODELS)


def example_installed() -> bool:
    try:
        importlib.metadata.distribution(EXAMPLE_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not example_installed(), reason=f"{EXAMPLE_DIST} is not installed (pip install -e examples/numpy-backend)"
)


@needs_example
def test_kit_passes_on_example_plugin_and_lists_its_origin(kit):
    result = kit("--backend", "numpy-ref")
    assert result.rc == 0, result.output
    assert set(result.statuses().values()) == {PASS}, result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"{len(check_names())} passed, 0 failed"

    listing = kit("backends", "--json", module="mlpi")
    assert listing.rc == 0, listing.output
    row = {r["name"]: r for r in json.loads(listing.stdout)}["numpy-ref"]
    version = importlib.metadata.version(EXAMPLE_DIST)
    assert version == "0.1.0"
    assert row["origin"] == f"{EXAMPLE_DIST} {version}"
    assert row["status"] == "ok" and row["devices"] == ["cpu"] and "conv_algorithm" in row["options"]


@needs_example
def test_example_plugin_other_option_and_unknown_operator(tmp_path):
    assert run_checks("numpy-ref", options={"conv_algorithm": "direct"}).failed == []

    import onnx
    from mlpi_numpy_backend import NumpyOptions, NumpyReferenceBackend
    from onnx import TensorProto, helper

    from mlpi.core.contract.device import Device
    from mlpi.core.contract.errors import ModelError
    from mlpi.core.engine.onnx_file import inspect_onnx

    graph = helper.make_graph(
        [helper.make_node("Tanh", ["x"], ["y"])], "tanh",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "tanh.onnx"))
    with pytest.raises(ModelError, match="operator Tanh"):
        NumpyReferenceBackend().load(inspect_onnx(tmp_path / "tanh.onnx"), Device("cpu"), NumpyOptions(), None)


@needs_example
def test_example_plugin_uses_only_the_public_contract():
    spec = importlib.util.find_spec("mlpi_numpy_backend")
    assert spec is not None and spec.origin
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    used = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    mlpi_modules = {name for name in used if name == "mlpi" or name.startswith("mlpi.")}
    assert mlpi_modules <= {"mlpi.api"}, mlpi_modules  # the versioned public plugin API, nothing else


# --------------------------------------------------------------------------- broken backends (CLI)


def test_kit_fails_values_on_wrong_outputs(kit, site):
    assert_fails_exactly(kit("--backend", "wrong-values", site=site), per_model("values"))


def test_kit_fails_concurrent_on_thread_unsafe_run(kit, site):
    assert_fails_exactly(kit("--backend", "racy", site=site), per_model("concurrent"))


def test_kit_fails_corrupt_checks_on_wrong_exception_type(kit, site):
    result = kit("--backend", "wrong-error", "--json", site=site)
    assert result.rc == 1, result.output
    report = json.loads(result.stdout)
    failed = {r["name"]: r["detail"] for r in report["results"] if r["status"] == FAIL}
    assert set(failed) == {"corrupt_model[random]", "corrupt_model[truncated]"}
    assert all("RuntimeError" in detail and "ModelError" in detail for detail in failed.values()), failed
    assert report["failed"] == 2 and report["backend"] == "wrong-error" and report["origin"] == "broken-backends 0.0.1"


def test_unknown_backend_is_a_usage_error(kit):
    result = kit("--backend", "nosuch")
    assert result.rc == EXIT_USAGE, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0] == "error: unknown backend 'nosuch'" and lines[1].startswith("hint: "), result.stderr
    assert "onnxruntime" in lines[1]
    assert result.stdout == ""


def test_bad_option_and_precision_are_usage_errors():
    with pytest.raises(UsageError, match="bogus"):
        run_checks("onnxruntime", options={"bogus": "1"})
    with pytest.raises(UsageError, match="int4"):
        run_checks("onnxruntime", precision="int4")
    with pytest.raises(UsageError, match="cannot run precision 'int8'"):
        run_checks("null", precision="int8")


# --------------------------------------------------------------------------- broken backends (in process)


class _Wrapped(Session):
    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capabilities, self.precision = inner.capabilities, inner.precision

    def run(self, feeds):
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()


class SharedBufferSession(_Wrapped):
    """Answers every call in the same arrays (honestly sequential: concurrent=False)."""

    def __init__(self, inner: Session) -> None:
        super().__init__(inner)
        self.capabilities = replace(inner.capabilities, concurrent=False)
        self._buffers: dict[int, dict[str, np.ndarray]] = {}

    def run(self, feeds):
        fresh = self.inner.run(feeds)
        n = len(next(iter(feeds.values())))
        buffers = self._buffers.setdefault(n, {name: np.empty_like(value) for name, value in fresh.items()})
        for name, value in fresh.items():
            np.copyto(buffers[name], value)
        return buffers


class SharedBufferBackend(OnnxRuntimeBackend):
    name = "shared-buffer"

    def load(self, model, device, options, precision, context=None):
        return SharedBufferSession(super().load(model, device, options, precision, context))


def test_kit_fails_outputs_kept_on_reused_output_buffers():
    report = run_checks(SharedBufferBackend)
    assert {r.name for r in report.failed} == per_model("outputs_kept")
    assert {r.name for r in report.skipped} == per_model("concurrent")
    assert "changed by a later call" in report.failed[0].detail


@needs_example
def test_value_checks_skip_without_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    report = run_checks("numpy-ref")
    assert report.failed == []
    assert {r.name for r in report.skipped} == per_model("values")
    assert {r.detail for r in report.skipped} == {"onnxruntime not installed"}


# --------------------------------------------------------------------------- reduced precisions

#: The kit's reduced-precision runs on CPU backends, done once for the module: (backend,
#: precision, options) -> report. openvino's only where it is installed.
DERIVED_RUNS = [("onnxruntime", "fp16"), ("onnxruntime", "int8"), ("openvino", "fp16"), ("openvino", "int8"),
                ("openvino", "bf16")]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install \"mlpi[openvino]\")")


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every run in DERIVED_RUNS (and onnxruntime's own int8), with the user's cache pointed at
    a folder that must stay absent and MLPI_CACHE as it was after each run."""
    user_cache = tmp_path_factory.mktemp("user") / "cache"
    runs: dict = {"user_cache": user_cache, "env_after": []}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPI_CACHE", str(user_cache))
        for backend, precision in DERIVED_RUNS:
            if backend == "openvino" and not HAS_OPENVINO:
                continue
            runs[(backend, precision)] = run_checks(backend, precision=precision)
            runs["env_after"].append(os.environ.get("MLPI_CACHE"))
        runs["dynamic_int8"] = run_checks("onnxruntime", precision="int8", options={"dynamic_int8": "true"})
        runs["env_after"].append(os.environ.get("MLPI_CACHE"))
    return runs


def by_name(report) -> dict:
    return {r.name: r for r in report.results}


def derived_params():
    return [pytest.param(b, p, marks=[needs_openvino] if b == "openvino" else [], id=f"{b}-{p}") for b, p in DERIVED_RUNS]


@pytest.mark.parametrize(("backend", "precision"), derived_params())
def test_reduced_precision_runs_the_derived_file_on_cpu_backends(precision_runs, backend: str, precision: str):
    report = precision_runs[(backend, precision)]
    results = by_name(report)
    assert report.failed == [], [r.line() for r in report.failed]
    derived = [m for m in MODELS if results[f"load[{m}]"].status == PASS]
    assert {"conv", "matmul", "two_inputs", "matmul_fixed4"} <= set(derived), [results[f"load[{m}]"].line() for m in MODELS]
    for m in MODELS:
        load = results[f"load[{m}]"]
        if load.status == SKIP:  # only what the transform cannot derive, with its reason; nothing of it runs
            assert load.detail.startswith(f"mlpi's transform cannot derive the {precision} file: could not derive"), load
            assert all(results[f"{check}[{m}]"].status == SKIP for check in ("precision", "values", "reload"))
            continue
        assert f"Session on the derived {precision} file (transform " in load.detail, load
        assert results[f"precision[{m}]"].detail == precision
        values = results[f"values[{m}]"]
        assert values.status == PASS, values
        if precision == "bf16":  # ONNX Runtime's CPU kernels cannot run the bf16 file: its fp32 source stands in
            assert values.detail.endswith("on the fp32 file (it cannot run the derived bf16 one)"), values
        else:
            assert f"({precision}) within rtol" in values.detail and "on the same derived file" in values.detail, values
            assert ("as written" in values.detail) == (precision == "int8"), values


@pytest.mark.parametrize(("backend", "precision"), derived_params())
def test_each_derived_file_is_named_by_its_own_transform_key(precision_runs, backend: str, precision: str):
    results = by_name(precision_runs[(backend, precision)])
    keys = [results[f"load[{m}]"].detail.rsplit("(transform ", 1)[-1].rstrip(")") for m in MODELS
            if results[f"load[{m}]"].status == PASS]
    assert len(set(keys)) == len(keys) and all(len(k) == 12 and int(k, 16) >= 0 for k in keys), keys


def test_int8_values_are_compared_not_skipped(precision_runs):
    results = by_name(precision_runs[("onnxruntime", "int8")])
    assert results["values[matmul]"].detail.startswith("batch 3 (int8) within rtol 0.05 atol 0.05 of ONNX Runtime CPU "
                                                       "on the same derived file, as written")
    assert results["values[matmul_fixed4]"].detail.startswith("batch 4 (int8)")


def test_kit_runs_leave_the_users_cache_and_environment_alone(precision_runs):
    assert not precision_runs["user_cache"].exists(), list(precision_runs["user_cache"].rglob("*"))
    assert set(precision_runs["env_after"]) == {str(precision_runs["user_cache"])}


def test_backends_own_int8_runs_the_fp32_file(precision_runs):
    report = precision_runs["dynamic_int8"]
    results = by_name(report)
    for m in MODELS:
        assert results[f"load[{m}]"].detail == "OrtSession on the fp32 file; the backend derives int8 itself"
        assert results[f"precision[{m}]"].status == PASS and results[f"precision[{m}]"].detail == "int8"
        assert results[f"values[{m}]"].status == SKIP
        assert results[f"values[{m}]"].detail.startswith("int8 the backend derives itself")
    # onnxruntime's dynamic quantization takes activation ranges per batch, so a sample's answer
    # may depend on its batch mates; the kit says so where it does, and nothing else fails.
    assert {r.name for r in report.failed} <= per_model("batch_sizes")


class ScaledSession(_Wrapped):
    """Float outputs 10% off: what a backend that mis-scales an int8 output would answer."""

    def run(self, feeds):
        return {name: value * np.float32(1.1) if value.dtype.kind == "f" else value
                for name, value in self.inner.run(feeds).items()}


class ScaledBackend(OnnxRuntimeBackend):
    name = "scaled"

    def load(self, model, device, options, precision, context=None):
        return ScaledSession(super().load(model, device, options, precision, context))


def test_values_fails_a_backend_that_answers_a_derived_int8_file_wrongly():
    report = run_checks(ScaledBackend, precision="int8")
    failed = {r.name: r.detail for r in report.failed}
    # Outputs that reach 5 and more (matmul's logits, two_inputs' sum and product) are off by
    # 0.5; conv's and classifier's stay below 1, where 10% is within the int8 tolerance.
    assert {"values[matmul]", "values[two_inputs]", "values[matmul_fixed4]"} <= set(failed), failed
    assert set(failed) <= per_model("values"), failed
    assert all("differ from ONNX Runtime CPU on the same derived file, as written" in d for d in failed.values()), failed
    results = by_name(report)
    assert all(results[f"load[{m}]"].status in (PASS, SKIP) for m in MODELS)


def test_a_model_the_transform_cannot_derive_skips_with_the_reason(monkeypatch):
    from mlpi.core.engine import precision_convert

    real = precision_convert.to_float16

    def refuse_matmul(source, target, block_ops):
        if source.name == "matmul.onnx":
            raise RuntimeError("operator X has no float16 form")
        return real(source, target, block_ops)

    monkeypatch.setattr(precision_convert, "to_float16", refuse_matmul)
    report = run_checks("onnxruntime", precision="fp16")
    results = by_name(report)
    assert report.failed == [], [r.line() for r in report.failed]
    assert results["load[matmul]"].status == SKIP
    assert results["load[matmul]"].detail == (
        "mlpi's transform cannot derive the fp16 file: could not derive the fp16 model from matmul.onnx: "
        "operator X has no float16 form")
    assert all(results[f"{c}[matmul]"].status == SKIP for c in ("signature", "values", "reload"))
    assert "mlpi cannot derive its fp16 file" in results["values[matmul]"].detail
    assert results["values[matmul_fixed4]"].status == PASS  # the other models still run


class RaisingNativeBackend(OnnxRuntimeBackend):
    name = "raising-native"

    def native_precision(self, options, precision):
        raise RuntimeError("no idea")


def test_native_precision_that_raises_fails_declarations_and_the_kit_derives():
    report = run_checks(RaisingNativeBackend, precision="fp16")
    assert {r.name for r in report.failed} == {"declarations"}
    assert "native_precision() raised RuntimeError: no idea" in report.failed[0].detail
    assert "derived fp16 file" in by_name(report)["load[conv]"].detail
