"""`mlpi run` end to end: real LoadGen, real ONNX Runtime, tiny models, every scenario."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import only_run_dir, read_result, run_cli

from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.datasets.synthetic import Synthetic

SCENARIOS = ["Offline", "Server", "SingleStream", "MultiStream"]


def reference_outputs(model: Path, count: int) -> dict[int, bytes]:
    """What every sample's response must be: the model run directly, outputs concatenated."""
    artifact = inspect_onnx(model)
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=count, seed=0))
    dataset.load(list(range(count)))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = artifact.inputs[0].shape[0] or 1
    out = {}
    for index in range(count):
        feeds = {k: np.repeat(v, fixed, axis=0) for k, v in dataset.sample(index).items()}
        out[index] = b"".join(np.ascontiguousarray(r[:1]).tobytes() for r in session.run(names, feeds))
    return out


def accuracy_log(run_dir: Path, scenario: str) -> dict[int, bytes]:
    entries = json.loads((run_dir / scenario / "accuracy" / "mlperf_log_accuracy.json").read_text())
    return {e["qsl_idx"]: bytes.fromhex(e["data"]) for e in entries}


@pytest.mark.parametrize("model", ["matmul.onnx", "two_inputs.onnx", "matmul_b4.onnx"])
def test_accuracy_logs_hold_each_samples_own_outputs_in_every_scenario(model_dir: Path, tmp_path: Path, model: str) -> None:
    count = 21
    batch = "3" if model == "matmul_b4.onnx" else "5"
    proc = run_cli(
        ["run", "--model-path", str(model_dir / model), "-s", "all", "--mode", "accuracy", "--count", str(count),
         "--batch-size", batch, "--instances", "2", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path / "r")
    expected = reference_outputs(model_dir / model, count)
    for scenario in SCENARIOS:
        assert accuracy_log(run_dir, scenario) == expected, scenario
    result = json.loads((run_dir / "result.json").read_text())
    assert [(t["scenario"], t["mode"], t["status"], t["value"]) for t in result["tests"]] == [
        (s, "accuracy", "ok", count) for s in SCENARIOS
    ]


def test_performance_in_every_scenario_writes_logs_and_result(model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        ["run", "--model-path", str(model_dir / "conv.onnx"), "-s", "all", "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    result = read_result(tmp_path / "r")
    run_dir = only_run_dir(tmp_path / "r")
    tests = result["tests"]
    assert [t["scenario"] for t in tests] == SCENARIOS
    assert all(t["status"] == "ok" and t["quick"] for t in tests)
    assert proc.returncode == (3 if any(not t["valid"] for t in tests) else 0), proc.stderr
    units = {t["scenario"]: (re.sub("^(early_stopping|measured)_", "", t["metric"]), t["unit"]) for t in tests}
    assert units == {
        "Offline": ("samples_per_second", "samples/s"),
        "Server": ("completed_samples_per_second", "samples/s"),
        "SingleStream": ("p90_latency", "ms"),
        "MultiStream": ("p99_query_latency", "ms"),
    }
    assert all(t["value"] > 0 for t in tests)
    for scenario in SCENARIOS:
        folder = run_dir / scenario / "performance"
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "user.conf", "harness.log"):
            assert (folder / name).is_file(), folder / name
        assert "min_duration = 500" in (folder / "user.conf").read_text()
    assert result["schema_version"] == 2 and result["status"] == "ok"
    assert result["submission_valid"] is False
    assert result["backend"]["name"] == "onnxruntime" and result["backend"]["version"] == ort.__version__
    assert result["model"]["sha256"] == inspect_onnx(model_dir / "conv.onnx").sha256
    assert result["precision"] == "fp32"
    assert result["system"]["packages"]["mlcommons-loadgen"]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["scenarios"] == SCENARIOS and plan["backend"] == "onnxruntime"
    # The summary table names every scenario and where the results are.
    for scenario in SCENARIOS:
        assert scenario in proc.stdout
    assert str(run_dir) in proc.stdout.replace("\n", "")


def test_invalid_result_exits_3_with_loadgens_reasons(model_dir: Path, tmp_path: Path) -> None:
    # An expected QPS of 1 makes LoadGen issue 2 samples: the run ends long before min duration.
    proc = run_cli(
        ["run", "--model-path", str(model_dir / "matmul.onnx"), "-s", "Offline", "--target-qps", "1",
         "--duration", "1", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert "min duration not satisfied" in proc.stderr
    test = read_result(tmp_path / "r")["tests"][0]
    assert test["valid"] is False and test["status"] == "ok"
    assert "min duration not satisfied" in test["invalid_reasons"]


def test_user_expectations_reach_user_conf(model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        ["run", "--model-path", str(model_dir / "matmul.onnx"), "-s", "Server", "--target-qps", "500",
         "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode in (0, 3), proc.stderr
    conf = (only_run_dir(tmp_path / "r") / "Server" / "performance" / "user.conf").read_text()
    assert "custom_matmul.Server.target_qps = 500.000000" in conf
    assert "from user" in conf


def test_plan_runs_again_into_a_new_directory(model_dir: Path, tmp_path: Path) -> None:
    first = run_cli(
        ["run", "-b", "null", "--model-path", str(model_dir / "argmax.onnx"), "-s", "SingleStream",
         "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "r")
    again = run_cli(["run", "--plan", str(run_dir / "plan.json"), "--output", str(tmp_path / "r2")], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    second = only_run_dir(tmp_path / "r2")
    assert json.loads((second / "plan.json").read_text()) == json.loads((run_dir / "plan.json").read_text())
    assert read_result(tmp_path / "r2")["backend"]["name"] == "null"


def test_import_and_help_load_no_runtime() -> None:
    code = textwrap.dedent(
        """
        import sys
        from mlpi.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        try:
            main(["run", "--help"])
        except SystemExit:
            pass
        heavy = {"onnxruntime", "onnx", "torch", "openvino", "tensorrt", "mlperf_loadgen", "deepsparse"}
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


# ------------------------------------------------------------------ failures mid-run


FAULTY = textwrap.dedent(
    """
    import os, signal
    from mlpi.backends.null import NullBackend, NullSession

    class CrashSession(NullSession):
        calls = 0
        def run(self, feeds):
            CrashSession.calls += 1
            if CrashSession.calls > int(os.environ.get("FAULT_AFTER", "50")):
                if os.environ.get("FAULT_KIND") == "segv":
                    os.kill(os.getpid(), signal.SIGSEGV)
                if os.environ.get("FAULT_KIND") == "hang":
                    import time
                    time.sleep(3600)
                raise RuntimeError("simulated device error")
            return super().run(feeds)

    class FaultyBackend(NullBackend):
        name = "faulty"
        def load(self, model, device, options, precision, context=None):
            return CrashSession(model, options)
    """
)


@pytest.fixture()
def faulty_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "faulty_backend.py").write_text(FAULTY)
    info = site / "faulty_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlpi.backends]\nfaulty = faulty_backend:FaultyBackend\n")
    return site


def faulty_env(site: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        **extra,
    }


@pytest.mark.parametrize(("kind", "message"), [("segv", "crashed (signal SIGSEGV)"), ("raise", "simulated device error")])
def test_a_failing_child_is_reported_and_its_logs_kept(model_dir: Path, tmp_path: Path, faulty_site: Path, kind: str, message: str) -> None:
    proc = run_cli(
        ["run", "-b", "faulty", "--model-path", str(model_dir / "argmax.onnx"), "-s", "SingleStream", "-s", "Offline",
         "--duration", "2", "--output", str(tmp_path / "r")],
        cwd=tmp_path, env=faulty_env(faulty_site, tmp_path, FAULT_KIND=kind, FAULT_AFTER="400"),
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    result = read_result(tmp_path / "r")
    assert result["status"] == "failed"
    assert [t["status"] for t in result["tests"]] == ["failed"]  # Offline never started
    log = only_run_dir(tmp_path / "r") / "SingleStream" / "performance" / "harness.log"
    assert log.is_file() and log.stat().st_size > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_marks_the_run_interrupted_and_ends_the_child(
    model_dir: Path, tmp_path: Path, faulty_site: Path, sig: signal.Signals
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    env.update(faulty_env(faulty_site, tmp_path, FAULT_AFTER="1000000000"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpi", "run", "-b", "faulty", "--model-path", str(model_dir / "argmax.onnx"),
         "-s", "SingleStream", "--duration", "30", "--output", str(tmp_path / "r")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "r").glob("*/SingleStream/performance/user.conf")):
        time.sleep(0.1)
    time.sleep(0.5)
    log = next((tmp_path / "r").glob("*/SingleStream/performance/harness.log")).read_text()
    child_pid = int(log.split("pid ")[1].split()[0])
    proc.send_signal(sig)  # to the parent only: it must stop the child itself
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "error: interrupted" in stderr and "hint:" in stderr
    result = read_result(tmp_path / "r")
    assert result["status"] == "interrupted"
    assert result["tests"][0]["status"] == "interrupted"
    assert (only_run_dir(tmp_path / "r") / "plan.json").is_file()
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_custom_model_with_labelled_numpy_data_reports_top1(model_dir: Path, tmp_path: Path) -> None:
    model = model_dir / "matmul.onnx"
    x = np.random.default_rng(5).standard_normal((20, 16)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predicted = session.run(["logits"], {"x": x})[0].argmax(axis=1)
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % 10  # five wrong answers: 75%
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    proc = run_cli(
        ["run", "--model-path", str(model), "--dataset", "numpy", "--dataset-path", str(tmp_path / "data.npz"),
         "-s", "Offline", "--mode", "accuracy", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr  # no quality target for a custom model
    test = read_result(tmp_path / "r")["tests"][0]
    assert (test["metric"], test["value"], test["unit"]) == ("top-1", 75.0, "%")
    assert test["accuracy"]["report"] == "accuracy=75.000%, good=15, total=20"
    assert test["accuracy"]["target"] is None and test["valid"] is True


def test_fixed_batch_model_rejects_a_larger_batch_before_running(model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["run", "--model-path", str(model_dir / "matmul_b4.onnx"), "--batch-size", "8", "--output", str(tmp_path / "r")],
                   cwd=tmp_path)
    assert proc.returncode == 2 and "fixed batch dimension (4)" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_file_named_like_an_mlperf_model_is_not_given_its_rules(model_dir: Path, tmp_path: Path) -> None:
    named = tmp_path / "resnet50.onnx"
    named.write_bytes((model_dir / "argmax.onnx").read_bytes())
    proc = run_cli(["run", "-b", "null", "--model-path", str(named), "-s", "SingleStream", "--count", "37",
                    "--duration", "0.5", "--output", str(tmp_path / "r")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = only_run_dir(tmp_path / "r") / "SingleStream" / "performance"
    assert "custom_resnet50.SingleStream" in (folder / "user.conf").read_text()
    detail = (folder / "mlperf_log_detail.txt").read_text()
    assert '"effective_performance_sample_count", "value": 37' in detail


def test_batch_size_applies_to_offline_and_server_only():
    from mlpi.core.contract.backend import Capabilities
    from mlpi.core.contract.errors import ModelError
    from mlpi.core.engine.child import effective_batch_size

    # A session built for the run's batch (1 for SingleStream) must not fail on the --batch-size
    # meant for Offline and Server.
    built_for_one = Capabilities(max_batch_size=1, fixed_batch=True, preferred_batch_size=1)
    assert effective_batch_size(3, built_for_one, "SingleStream") == 1
    built_for_eight = Capabilities(max_batch_size=8, fixed_batch=True, preferred_batch_size=8)
    assert effective_batch_size(3, built_for_eight, "MultiStream") == 8
    assert effective_batch_size(None, built_for_eight, "Offline") == 8
    with pytest.raises(ModelError):
        effective_batch_size(16, built_for_eight, "Server")
