"""The ONNX node-test tier's ``isolate`` mode (mlpi.testing.onnx_node_worker): a backend whose
native code ends the process on some graph loses that case, not the run.

A fake backend wraps the built-in onnxruntime one and, by the operator in the graph, aborts
the process after an error line and a C++-style assert line (Abs), segfaults (Erf), never answers (Round),
refuses (Sign) or answers wrongly (Neg); Relu it runs. It is "installed" as a module plus a
``*.dist-info`` on sys.path (PYTHONPATH for the command line), as test_onnx_node_tier.py's
fakes are. The cases are collected once per test session into the session's MLPI_CACHE.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpi.core.contract.errors import EXIT_OK, EXIT_USAGE, UsageError
from mlpi.testing.onnx_node_cases import load_cases
from mlpi.testing.onnx_node_tier import (
    NO_REFERENCE,
    PASS,
    UNSUPPORTED,
    WRONG,
    NodeTestReport,
    run_node_tests,
)

CRASHY = '''
import ctypes
import os
import sys
import time

import numpy as np
import onnx

from mlpi.backends.ort import OnnxRuntimeBackend
from mlpi.core.contract.backend import Session
from mlpi.core.contract.errors import ModelError


def ops_of(model):
    return {node.op_type for node in onnx.load(str(model.path)).graph.node}


class PlusOne(Session):
    def __init__(self, inner):
        self.inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capabilities, self.precision = inner.capabilities, inner.precision

    def run(self, feeds):
        return {name: value + np.asarray(1, value.dtype) for name, value in self.inner.run(feeds).items()}

    def close(self):
        self.inner.close()


class CrashyBackend(OnnxRuntimeBackend):
    name = "crashy"

    def check(self, model, device, options, precision):
        super().check(model, device, options, precision)
        if "Sign" in ops_of(model):
            raise ModelError("operator Sign is not supported by this backend", "run this model on another backend")

    def load(self, model, device, options, precision, context=None):
        ops = ops_of(model)
        if "Abs" in ops:
            print("[fake >ERROR< compile] FAILED TO COMPILE, falling back", file=sys.stderr, flush=True)
            print("\\x1b[0;31mAssertion at ./src/include/fake/register_state.hpp:129\\x1b[m", file=sys.stderr, flush=True)
            os.abort()
        if "Erf" in ops:
            ctypes.string_at(0)
        if "Round" in ops:
            time.sleep(120)
        session = super().load(model, device, options, precision, context)
        return PlusOne(session) if "Neg" in ops else session
'''

#: One case each: test_abs, test_erf, test_round, test_sign; two each: Neg, Relu.
OPS = ("Abs", "Erf", "Neg", "Relu", "Round", "Sign")
#: The operators the fake neither crashes on nor hangs on: the in-process run can take them.
CALM_OPS = ("Neg", "Relu", "Sign")
TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    load_cases()  # collected once into the session's cache, before any worker needs them
    site = tmp_path_factory.mktemp("site")
    (site / "crashy_backends.py").write_text(CRASHY, encoding="utf-8")
    dist = site / "crashy_backends-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy-backends\nVersion: 0.0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[mlpi.backends]\ncrashy = crashy_backends:CrashyBackend\n", encoding="utf-8")
    return site


@pytest.fixture(scope="module")
def installed(site: Path) -> Path:
    """The fake on this process's sys.path (workers get the parent's sys.path). stevedore keeps
    the entry points it has read in memory, by group: an earlier test in this process would
    hide the fake, so that memory is cleared on the way in and out."""
    from stevedore import ExtensionManager

    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("crashy_backends", None)
    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()


@pytest.fixture(scope="module")
def isolated(installed: Path) -> tuple[NodeTestReport, list[str]]:
    """The isolated run over OPS, and the names its on_result callback got, in order."""
    seen: list[str] = []
    report = run_node_tests("crashy", ops=OPS, case_timeout_s=TIMEOUT_S, isolate=True,
                            on_result=lambda result: seen.append(result.name))
    return report, seen


def by_name(report: NodeTestReport) -> dict[str, tuple[str, str]]:
    return {r.name: (r.outcome, r.detail) for r in report.results}


def test_a_crash_is_unsupported_naming_the_signal_and_the_assert_line(isolated):
    report, _ = isolated
    outcome, detail = by_name(report)["test_abs"]
    assert outcome == UNSUPPORTED
    assert detail == ("the backend crashed the process "
                      "(SIGABRT; Assertion at ./src/include/fake/register_state.hpp:129)"), detail
    outcome, detail = by_name(report)["test_erf"]
    assert outcome == UNSUPPORTED
    assert detail.startswith("the backend crashed the process (SIGSEGV"), detail


def test_a_case_past_the_time_limit_is_unsupported_and_a_fresh_worker_goes_on(isolated):
    report, _ = isolated
    outcome, detail = by_name(report)["test_round"]
    assert outcome == UNSUPPORTED
    assert detail.startswith(f"no answer within {TIMEOUT_S:g} s"), detail
    assert report.outcome("test_sign") == UNSUPPORTED  # after the time-out: a new worker refused it
    assert by_name(report)["test_sign"][1] == "ModelError: operator Sign is not supported by this backend"


def test_the_other_cases_get_the_verdicts_of_the_run_in_process(isolated, installed):
    report, seen = isolated
    calm = {name: verdict for name, verdict in by_name(report).items() if name not in
            ("test_abs", "test_erf", "test_round")}
    in_process = run_node_tests("crashy", ops=CALM_OPS, case_timeout_s=TIMEOUT_S)
    assert calm == by_name(in_process)
    assert {name: outcome for name, (outcome, _) in calm.items()} == {
        "test_neg": WRONG, "test_neg_example": WRONG, "test_relu": PASS, "test_relu_expanded_ver18": PASS,
        "test_sign": UNSUPPORTED,
    }
    assert seen == [r.name for r in report.results] and len(seen) == 8
    data = report.to_json()
    assert data["isolated"] is True and in_process.to_json()["isolated"] is False
    assert data["counts"] == {PASS: 2, WRONG: 2, UNSUPPORTED: 4, NO_REFERENCE: 0}


def test_a_backend_class_is_rebuilt_by_its_import_name(installed):
    module = importlib.import_module("crashy_backends")
    report = run_node_tests(module.CrashyBackend, ops=("Relu",), case_timeout_s=TIMEOUT_S, isolate=True)
    assert report.isolated and {r.outcome for r in report.results} == {PASS}


def test_what_a_worker_cannot_rebuild_is_a_usage_error(site):
    spec = importlib.util.spec_from_file_location("not_on_the_path", site / "crashy_backends.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(UsageError, match="cannot be imported by that name"):
        run_node_tests(module.CrashyBackend, ops=("Relu",), isolate=True)
    with pytest.raises(UsageError, match="not from the instance"):
        run_node_tests(module.CrashyBackend(), ops=("Relu",), isolate=True)


def _conformance(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-m", "mlpi.testing.conformance", "--backend", "crashy", *args], check=False, cwd=cwd,
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_cli_isolate_reports_the_crash_and_records_isolation(site, tmp_path):
    proc = _conformance("--onnx-node-tests", "--isolate", "--op", "Abs", "--json", site=site, cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["isolated"] is True
    assert [(r["name"], r["outcome"]) for r in data["results"]] == [("test_abs", UNSUPPORTED)]
    assert data["results"][0]["detail"].startswith("the backend crashed the process (SIGABRT; Assertion at ")
    assert "the backend in a worker process" in proc.stderr

    alone = _conformance("--isolate", site=site, cwd=tmp_path)
    assert alone.returncode == EXIT_USAGE
    assert "error: --isolate runs the ONNX node test cases in a worker process" in alone.stderr
