"""The conformance kit's ONNX node-test tier (mlpi.testing.onnx_node_tier): a backend that
answers wrongly is caught, case by case and in the exit code; one that refuses is reported,
not failed; and the built-in backends give no wrong answer on a sample of the cases.

The cases are collected once per test session into the session's MLPI_CACHE (about 15 s);
the command-line runs below find them there. Fake backends wrap the built-in onnxruntime
backend and misbehave on one operator (Neg); they are "installed" for the command line like
test_conformance.py's, as a module plus a ``*.dist-info`` on PYTHONPATH.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import CliResult

from mlpi.core.contract.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    MlpiError,
    PluginError,
    UsageError,
)
from mlpi.testing.onnx_node_cases import CORE, NodeCase, load_cases, select
from mlpi.testing.onnx_node_tier import (
    NO_REFERENCE,
    PASS,
    UNSUPPORTED,
    WRONG,
    NodeTestReport,
    compare,
    run_node_tests,
)

#: The operator the fakes break, with its cases, and one they leave alone.
TARGET, TARGET_CASES, BYSTANDER = "Neg", {"test_neg", "test_neg_example"}, "Abs"
#: Cases each built-in backend runs here: 200 spread over the ~200 operators, so every
#: operator gets about one case (the full set is for people to run by hand: README).
SAMPLE = 200

FAKES = '''
import threading

import numpy as np
import onnx

from mlpi.backends.ort import OnnxRuntimeBackend
from mlpi.core.contract.backend import Session
from mlpi.core.contract.errors import ModelError

TARGET = "Neg"
RELEASE = threading.Event()


def uses_target(model):
    return any(node.op_type == TARGET for node in onnx.load(str(model.path)).graph.node)


class Wrapped(Session):
    def __init__(self, inner):
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capabilities, self.precision = inner.capabilities, inner.precision

    def run(self, feeds):
        return self.answer(self.inner.run(feeds))

    def answer(self, outputs):
        return outputs

    def close(self):
        self.inner.close()


class Base(OnnxRuntimeBackend):
    """onnxruntime, with session_class wrapped around the sessions of graphs with a Neg node."""

    session_class = Wrapped

    def load(self, model, device, options, precision, context=None):
        session = super().load(model, device, options, precision, context)
        return self.session_class(session) if uses_target(model) else session


class OffByOne(Wrapped):
    def answer(self, outputs):
        return {name: value + np.asarray(1, value.dtype) for name, value in outputs.items()}


class WrongNegBackend(Base):
    name = "wrong-neg"
    session_class = OffByOne


class RefuseNegBackend(OnnxRuntimeBackend):
    name = "refuse-neg"

    def check(self, model, device, options, precision):
        super().check(model, device, options, precision)
        if uses_target(model):
            raise ModelError("operator Neg is not supported by this backend", "run this model on another backend")


class OtherDtype(Wrapped):
    def answer(self, outputs):
        return {name: value.astype(np.float64) for name, value in outputs.items()}


class OtherShape(Wrapped):
    def answer(self, outputs):
        return {name: value.reshape(-1) if value.ndim > 1 else value[None] for name, value in outputs.items()}


class NoOutputs(Wrapped):
    def answer(self, outputs):
        return {}


class Lists(Wrapped):
    def answer(self, outputs):
        return {name: value.tolist() for name, value in outputs.items()}


class RaisesAtRun(Wrapped):
    def run(self, feeds):
        raise RuntimeError("Neg kernel missing")


class Hangs(Wrapped):
    def run(self, feeds):
        RELEASE.wait()
        return self.inner.run(feeds)


def backend(session_class):
    return type(f"{session_class.__name__}Backend", (Base,), {"name": "fake", "session_class": session_class})


class RaisesAtLoad(OnnxRuntimeBackend):
    name = "raises-at-load"

    def load(self, model, device, options, precision, context=None):
        if uses_target(model):
            raise RuntimeError("converter crashed")
        return super().load(model, device, options, precision, context)
'''


class Result(CliResult):
    def table(self) -> dict[str, tuple[int, int, int, int]]:
        """{operator: (pass, wrong, unsupported, no-reference)} from the per-operator table."""
        rows = {}
        for line in self.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) == 5 and all(p.isdigit() for p in parts[1:]):
                rows[parts[0]] = tuple(int(p) for p in parts[1:])
        return rows


@pytest.fixture(scope="module")
def cases() -> list[NodeCase]:
    """Every case of the installed onnx (collected into the session's cache on first use)."""
    return load_cases()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "node_fakes.py").write_text(FAKES, encoding="utf-8")
    dist = site / "node_fakes-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: node-fakes\nVersion: 0.0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[mlpi.backends]\nwrong-neg = node_fakes:WrongNegBackend\nrefuse-neg = node_fakes:RefuseNegBackend\n",
        encoding="utf-8",
    )
    return site


@pytest.fixture(scope="module")
def fakes(site: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_fakes", site / "node_fakes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.RELEASE.set()  # let a hung fake's thread finish


@pytest.fixture
def kit(tmp_path: Path, cases: list[NodeCase]):
    """``kit(*args, site=None)`` runs ``python -m mlpi.testing.conformance ARGS`` with the
    session's cache (so the cases are not collected again)."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, site: Path | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
        env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), HOME=str(home), PYTHONUNBUFFERED="1")
        if site is not None:
            env["PYTHONPATH"] = str(site)
        proc = subprocess.run(
            [sys.executable, "-m", "mlpi.testing.conformance", *args], check=False, cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


# --------------------------------------------------------------------------- cases and their classes


def test_cases_are_classified_by_operator_and_type(cases):
    by_name = {case.name: case for case in cases}
    assert len(cases) > 1000 and [c.name for c in cases] == sorted(by_name)
    abs_case = by_name["test_abs"]
    assert (abs_case.op, abs_case.expanded, abs_case.category) == ("Abs", False, CORE)
    # an expanded case counts as the function's operator, though its graph has no Softmax node
    expanded = by_name["test_softmax_example_expanded"]
    assert (expanded.op, expanded.expanded, expanded.category) == ("Softmax", True, CORE)
    assert by_name["test_cast_FLOAT_to_BFLOAT16"].category == "bfloat16"
    assert by_name["test_cast_FLOAT_to_FLOAT8E4M3FN"].category == "float8"
    assert by_name["test_string_concat"].category == "string"
    assert by_name["test_sequence_insert_at_back"].category == "sequence"
    assert by_name["test_optional_has_element_empty_no_input_tensor_input"].category == "optional"
    assert by_name["test_ai_onnx_ml_binarizer"].op == "ai.onnx.ml.Binarizer"
    feeds = by_name["test_neg_example"].inputs()
    assert list(feeds) == ["x"] and np.array_equal(feeds["x"], np.array([-4, 2], dtype=np.float32))


def test_sample_spreads_over_operators_and_is_the_same_every_time(cases):
    ops = {case.op for case in cases}
    sample = select(cases, sample=50)
    assert len(sample) == 50 and len({case.op for case in sample}) == 50
    assert [c.name for c in select(cases, sample=50)] == [c.name for c in sample]
    assert len({case.op for case in select(cases, sample=len(ops) + 10)}) == len(ops)
    assert select(cases, sample=len(cases) + 1) == cases


def test_op_filter_takes_any_case_and_commas_and_refuses_unknown_operators(cases):
    chosen = select(cases, ["neg,ABS"])
    assert {c.name for c in chosen} == TARGET_CASES | {"test_abs"}
    assert {c.op for c in select(cases, ["Softmax"])} == {"Softmax"}
    assert any(c.expanded for c in select(cases, ["Softmax"]))
    with pytest.raises(UsageError, match="no ONNX node test case tests operator 'Sofmax'") as caught:
        select(cases, ["Sofmax"])
    assert caught.value.hint is not None and "Softmax" in caught.value.hint


# --------------------------------------------------------------------------- judging one answer


def test_compare_is_exact_for_integers_and_tolerant_for_floats_by_dtype():
    f32 = np.array([1.0, 100.0], np.float32)
    assert compare({"y": f32 * (1 + 5e-4)}, {"y": f32}) is None
    assert "1 of 2 values differ" in compare({"y": f32 + np.float32([0, 1])}, {"y": f32})
    f16 = np.array([1.0, 2.0], np.float16)
    assert compare({"y": f16 * np.float16(1.004)}, {"y": f16}) is None  # a few units in the last place
    assert compare({"y": f16 * np.float16(1.004)}, {"y": f16.astype(np.float32)}) is not None  # and its dtype
    ints = np.array([3, 4], np.int64)
    assert "must be equal" in compare({"y": ints + np.int64([0, 1])}, {"y": ints})
    nan = np.array([np.nan, np.inf], np.float32)
    assert compare({"y": nan.copy()}, {"y": nan}) is None
    assert "infinities or NaNs" in compare({"y": np.array([np.nan, -np.inf], np.float32)}, {"y": nan})
    assert compare({"y": f32 * 1.02}, {"y": f32}, precision="bf16") is None  # a session that says it runs bf16
    assert compare({"y": f32 * 1.02}, {"y": f32}, precision="fp32") is not None
    # near zero, the absolute tolerance is a share of the output's largest value (rounding in sums)
    assert compare({"y": np.float32([1000, 4e-3])}, {"y": np.float32([1000, 0])}) is None
    assert "atol 0.0005" in compare({"y": np.float32([100, 4e-3])}, {"y": np.float32([100, 0])})


def test_compare_names_structure_problems():
    want = {"y": np.zeros((2, 3), np.float32)}
    assert "float64, onnxruntime gives float32" in compare({"y": np.zeros((2, 3))}, want)
    assert "shape [6], onnxruntime gives [2, 3]" in compare({"y": np.zeros(6, np.float32)}, want)
    assert "no output 'y'" in compare({"z": np.zeros((2, 3), np.float32)}, want)
    assert "not a numpy array" in compare({"y": [[0.0] * 3] * 2}, want)
    assert "not a mapping" in compare([np.zeros((2, 3), np.float32)], want)
    seq = {"s": [np.zeros(2, np.float32), np.ones(2, np.float32)]}
    assert compare({"s": [v.copy() for v in seq["s"]]}, seq) is None
    assert "item 1" in compare({"s": [seq["s"][0], seq["s"][0]]}, seq)
    assert "sequence of 1 tensors, onnxruntime gives 2" in compare({"s": seq["s"][:1]}, seq)


# --------------------------------------------------------------------------- fake backends


def test_wrong_values_for_one_operator_are_wrong_for_exactly_its_cases(fakes):
    report = run_node_tests(fakes.WrongNegBackend, ops=[TARGET, BYSTANDER])
    assert {r.name for r in report.wrong} == TARGET_CASES
    assert {r.name for r in report.passed} == {"test_abs"}
    assert all("values differ from onnxruntime's" in r.detail for r in report.wrong)
    assert report.core_pass_rate() == pytest.approx(1 / 3)
    counts = {c.op: (c.passed, c.wrong, c.unsupported, c.no_reference) for c in report.by_operator()}
    assert counts == {"Abs": (1, 0, 0, 0), "Neg": (0, 2, 0, 0)}
    data = report.to_json()
    assert data["counts"] == {PASS: 1, WRONG: 2, UNSUPPORTED: 0, NO_REFERENCE: 0}
    assert data["summary"].startswith("core: 1 of 3 passed (33.3%), 2 wrong, 0 unsupported, 0 no reference; 3 cases in ")


@pytest.mark.parametrize(
    ("session_class", "detail"),
    [
        ("OtherDtype", "output 'y': is float64, onnxruntime gives float32"),
        ("OtherShape", "output 'y': has shape"),
        ("NoOutputs", "no output 'y' (run() returned: nothing)"),
        ("Lists", "output 'y': is a list, not a numpy array"),
    ],
)
def test_answers_of_another_form_are_wrong(fakes, session_class, detail):
    report = run_node_tests(fakes.backend(getattr(fakes, session_class)), ops=[TARGET])
    assert {r.name for r in report.wrong} == TARGET_CASES
    assert all(detail in r.detail for r in report.wrong), report.wrong


def test_refusals_are_unsupported_never_wrong(fakes):
    refused = run_node_tests(fakes.RefuseNegBackend, ops=[TARGET, BYSTANDER])
    assert {r.name for r in refused.unsupported} == TARGET_CASES and refused.wrong == []
    assert {r.detail for r in refused.unsupported} == {"ModelError: operator Neg is not supported by this backend"}
    assert refused.core_pass_rate() == pytest.approx(1 / 3)

    at_run = run_node_tests(fakes.backend(fakes.RaisesAtRun), ops=[TARGET])
    assert {r.detail for r in at_run.unsupported} == {"run() raised RuntimeError: Neg kernel missing"}
    at_load = run_node_tests(fakes.RaisesAtLoad, ops=[TARGET])
    assert {r.detail for r in at_load.unsupported} == {"check()/load() raised RuntimeError: converter crashed"}


def test_a_case_that_never_answers_is_unsupported_and_the_run_goes_on(fakes):
    report = run_node_tests(fakes.backend(fakes.Hangs), ops=["Neg", "Abs"], case_timeout_s=2)
    assert {r.name for r in report.unsupported} == TARGET_CASES
    assert all(r.detail.startswith("no answer within 2 s") for r in report.unsupported)
    assert report.outcome("test_abs") == PASS


def test_no_onnxruntime_is_an_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PluginError, match="compare every answer with onnxruntime") as caught:
        run_node_tests("null", ops=[TARGET])
    assert "pip install" in (caught.value.hint or "")


# --------------------------------------------------------------------------- the command line


def test_cli_exit_code_is_1_on_a_wrong_answer_and_names_the_cases(kit, site):
    result = kit("--backend", "wrong-neg", "--onnx-node-tests", "--op", TARGET, "--op", BYSTANDER, site=site)
    assert result.rc == EXIT_FAILURE, result.output
    assert "Traceback" not in result.output
    assert result.table() == {"Abs": (1, 0, 0, 0), "Neg": (0, 2, 0, 0)}
    named = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  test_")]
    assert sorted(named) == sorted(TARGET_CASES)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("core: 1 of 3 passed (33.3%), 2 wrong, 0 unsupported, 0 no reference; 3 cases in ")
    assert "backend wrong-neg" in result.stderr and "node-fakes 0.0.1" in result.stderr


def test_cli_exit_code_is_0_when_the_backend_only_refuses(kit, site):
    result = kit("--backend", "refuse-neg", "--onnx-node-tests", "--op", f"{TARGET},{BYSTANDER}", "--json", site=site)
    assert result.rc == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {PASS: 1, WRONG: 0, UNSUPPORTED: 2, NO_REFERENCE: 0}
    assert data["operators"] == {"Abs": {PASS: 1, WRONG: 0, UNSUPPORTED: 0, NO_REFERENCE: 0},
                                 "Neg": {PASS: 0, WRONG: 0, UNSUPPORTED: 2, NO_REFERENCE: 0}}
    assert data["backend"] == "refuse-neg" and data["origin"] == "node-fakes 0.0.1" and data["ops"] == ["Neg,Abs"]
    assert data["reference"].startswith("onnxruntime ") and data["reference"].endswith(" CPU")


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (["--sample", "5"], "error: --sample and --op choose ONNX node test cases", "hint: add --onnx-node-tests"),
        (["--onnx-node-tests", "--op", "Sofmax"], "error: no ONNX node test case tests operator 'Sofmax'",
         "hint: did you mean Softmax"),
        (["--onnx-node-tests", "--sample", "0"], "error: Invalid value for '--sample'", "hint: see "),
    ],
)
def test_cli_usage_errors(kit, args, error, hint):
    result = kit("--backend", "onnxruntime", *args)
    assert result.rc == EXIT_USAGE, result.output
    lines = result.err_lines
    assert lines[-2].startswith(error) and lines[-1].startswith(hint), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


# --------------------------------------------------------------------------- the built-in backends


def _builtin_backends() -> list[str]:
    return sorted(
        ep.name for ep in importlib.metadata.entry_points(group="mlpi.backends")
        if ep.dist is not None and ep.dist.metadata["Name"] == "mlpi"
    )


#: Cases of the sample where a built-in backend answers unlike onnxruntime: real bugs,
#: reported with the full run's list in the README (onnx 1.23.2). The sampled run must find
#: no other wrong answer, and each of these is an xfail of its own.
KNOWN_WRONG: dict[str, dict[str, str]] = {}
#: Cases of the sample a built-in backend refuses because it would answer them wrongly
#: (OpenVINO 2026.4: mlpi/backends/_ov_unfaithful.py), with the operator the refusal names.
KNOWN_REFUSED: dict[str, dict[str, str]] = {
    "openvino": {
        "test_attention_local_window_rank1_boolean_mask": "Attention",  # ignores left_window_size
        "test_maxpool_2d_ceil_output_size_reduce_by_one": "MaxPool",  # keeps a window past the input
    },
}
#: Precisions the sampled runs ask for where the backend's default depends on the CPU
#: (OpenVINO picks bf16 where the CPU has it): the tier judges fp32 answers.
PRECISION = {"openvino": "fp32"}
_sampled: dict[str, NodeTestReport] = {}


def sampled_report(name: str) -> NodeTestReport:
    """The sampled run on built-in backend ``name`` (once per module; skips where it cannot run)."""
    if name == "null":
        pytest.skip("the null backend answers zeros by design (it measures the harness): comparing its values is moot")
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    backend = Registry(PluginsConfig.load(None)).backend(name)
    if "cpu" not in backend.device_kinds:
        pytest.skip(f"{name} runs on {', '.join(backend.device_kinds)}, not on the CPU these tests use")
    try:
        backend.version()
    except MlpiError as exc:
        pytest.skip(f"{name}'s runtime is not installed here: {exc.message}")
    if name not in _sampled:
        _sampled[name] = run_node_tests(name, precision=PRECISION.get(name), sample=SAMPLE)
    return _sampled[name]


@pytest.mark.parametrize("name", _builtin_backends())
def test_builtin_backend_gives_no_other_wrong_answer_on_a_sample(cases, name):
    report = sampled_report(name)
    assert [r.name for r in report.results] == [c.name for c in select(cases, sample=SAMPLE)]
    known = KNOWN_WRONG.get(name, {})
    assert {r.name: r.detail for r in report.wrong if r.name not in known} == {}
    rate = report.core_pass_rate()
    assert rate is not None and rate > 0
    if name == "onnxruntime":  # the reference itself: every core case it can run, it runs the same
        assert report.having(UNSUPPORTED, core=True) == [] and rate == 1.0


@pytest.mark.parametrize(
    ("name", "case"),
    [
        pytest.param(name, case, marks=pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError))
        for name, known in KNOWN_WRONG.items() for case, reason in known.items()
    ],
)
def test_known_wrong_answer(name, case):
    report = sampled_report(name)
    assert report.outcome(case) == PASS, next(r.detail for r in report.results if r.name == case)


@pytest.mark.parametrize(
    ("name", "case", "op"), [(name, case, op) for name, known in KNOWN_REFUSED.items() for case, op in known.items()]
)
def test_a_case_the_backend_would_answer_wrongly_is_refused_naming_the_operator(name, case, op):
    result = next(r for r in sampled_report(name).results if r.name == case)
    assert result.outcome == UNSUPPORTED, result
    assert result.detail.startswith(f"ModelError: {case}.onnx: {op} node "), result.detail
