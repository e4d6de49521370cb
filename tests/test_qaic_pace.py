"""What set the pace of a simulated card, and the performance-only mode that skips computing outputs.

A simulated ``qaic`` card holds each batch for its device model's time or for as long as the
host takes to compute the real outputs, whichever is longer. These tests check the per-batch
record of which one it was (summed per unit into ``devices``), the warning when the host
set the pace, and ``-o outputs=skip``: zeros of the outputs' shapes and dtypes, refused for
accuracy tests and audits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_error, only_run_dir
from onnx import TensorProto, helper, numpy_helper, save

from mlpi.backends.qaic import QaicBackend, QaicOptions
from mlpi.core.contract.backend import PaceRecord, Session
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import UsageError
from mlpi.core.engine.dispatch import pace_snapshot, pace_warning, record_pace
from mlpi.core.engine.onnx_file import inspect_onnx

FEATURES, HIDDEN, CLASSES = 32, 64, 10
#: Bytes one sample moves over the host link: its input, its scores and its label.
SAMPLE_BYTES = FEATURES * 4 + CLASSES * 4 + 8
WARNING = "warning: host computation set the pace on"


def pace_model(path: Path, batch: int | str = "N") -> Path:
    """x[batch, 32] -> scores[batch, 10] float32 (two MatMuls) and label[batch] int64 (ArgMax)."""
    rng = np.random.default_rng(7)
    weights = [
        numpy_helper.from_array(rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "pace", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, CLASSES]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [batch])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


def ragged_model(path: Path) -> Path:
    """x[N, T] -> y[N, T]: an output whose second dimension only running it can tell."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "ragged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pace-models")
    return {"pace": pace_model(folder / "pace.onnx"), "pace_b4": pace_model(folder / "pace_b4.onnx", batch=4),
            "ragged": ragged_model(folder / "ragged.onnx")}


def load(model: Path, card: int, **options: Any) -> Session:
    return QaicBackend().load(inspect_onnx(model), Device("qaic", (card,)), QaicOptions(**options), None)


def ones(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, FEATURES), dtype=np.float32)}


# -- the record a session keeps ------------------------------------------------------------


def test_a_session_whose_model_takes_no_time_is_host_bound_on_every_batch(models: dict[str, Path]) -> None:
    session = load(models["pace"], 0, latency_ms=0, latency_per_sample_ms=0, link_gbps=0)
    for _ in range(3):
        session.run(ones(4))
    pace = session.pace()
    assert pace is not None
    assert (pace.modelled_batches, pace.host_bound_batches, pace.modelled_s) == (3, 3, 0.0)
    assert pace.host_compute_s > 0


def test_a_session_whose_model_is_slower_than_the_host_is_not_host_bound(models: dict[str, Path]) -> None:
    session = load(models["pace"], 1, latency_ms=100, latency_per_sample_ms=0.5, link_gbps=16)
    session.run(ones(4))
    session.run(ones(2))
    pace = session.pace()
    assert pace is not None
    assert (pace.modelled_batches, pace.host_bound_batches) == (2, 0)
    # a + b*n + bytes / link, for each batch
    expected = (0.100 + 0.0005 * 4 + 4 * SAMPLE_BYTES / 16e9) + (0.100 + 0.0005 * 2 + 2 * SAMPLE_BYTES / 16e9)
    assert pace.modelled_s == pytest.approx(expected, rel=1e-9)
    assert 0 < pace.host_compute_s < pace.modelled_s


def test_a_session_of_a_backend_that_reports_no_pace_says_none() -> None:
    class Plain(Session):
        def run(self, feeds: Any) -> Any:
            return feeds

    assert Plain().pace() is None


def test_pace_records_add_and_subtract_field_by_field() -> None:
    a, b = PaceRecord(5, 3, 2.5, 1.0), PaceRecord(2, 1, 0.5, 0.25)
    assert a + b == PaceRecord(7, 4, 3.0, 1.25)
    assert a - b == PaceRecord(3, 2, 2.0, 0.75)


# -- summed per unit, the warning ----------------------------------------------------------


class Reporting(Session):
    """A session that reports a given pace record (and runs nothing)."""

    def __init__(self, record: PaceRecord | None) -> None:
        self.record = record

    def run(self, feeds: Any) -> Any:
        raise AssertionError("not run")

    def pace(self) -> PaceRecord | None:
        return self.record


def test_pace_is_summed_per_unit_from_the_snapshot_on(capsys: pytest.CaptureFixture[str]) -> None:
    warm = Reporting(PaceRecord(1, 1, 0.5, 0.0))
    other = Reporting(PaceRecord(10, 0, 1.0, 5.0))
    placed = [("qaic:0", {"model": warm}), ("qaic:0", {"model": Reporting(PaceRecord(4, 4, 2.0, 0.5))}),
              ("qaic:1", {"model": other, "shard": Reporting(None)}), ("qaic:2", {"model": Reporting(None)})]
    since = pace_snapshot(placed)
    assert since == {"qaic:0": PaceRecord(5, 5, 2.5, 0.5), "qaic:1": PaceRecord(10, 0, 1.0, 5.0)}
    warm.record = PaceRecord(9, 8, 4.5, 1.0)  # 8 batches more, 7 of them host-bound
    other.record = PaceRecord(30, 1, 3.0, 15.0)  # 20 more, 1 host-bound
    devices = [{"device": label, "batches": 1} for label in ("qaic:0", "qaic:1", "qaic:2")]
    warning = record_pace(devices, placed, since)
    assert devices[0] == {"device": "qaic:0", "batches": 1, "modelled_batches": 8, "host_bound_batches": 7,
                          "host_compute_s": 4.0, "modelled_s": 1.0}
    assert devices[1]["modelled_batches"] == 20 and devices[1]["host_bound_batches"] == 1
    assert devices[1]["host_compute_s"] == pytest.approx(2.0) and devices[1]["modelled_s"] == pytest.approx(10.0)
    assert "modelled_batches" not in devices[2]  # its sessions report nothing
    assert warning is not None
    assert warning[0].startswith("host computation set the pace on 87% of batches of qaic:0 (4 s of host compute "
                                 "against 1 s modelled)")
    assert f"mlpi: warning: {warning[0]}" in capsys.readouterr().out  # into the test's harness.log


def unit(label: str, modelled: int, bound: int, host_s: float = 1.0, modelled_s: float = 1.0) -> dict[str, Any]:
    return {"device": label, "modelled_batches": modelled, "host_bound_batches": bound, "host_compute_s": host_s,
            "modelled_s": modelled_s}


def test_host_bound_on_exactly_half_the_batches_is_no_warning() -> None:
    assert pace_warning([unit("qaic:0", 10, 5), unit("qaic:1", 10, 0)]) is None
    assert pace_warning([{"device": "cuda:0", "batches": 10}]) is None  # no pace reported
    assert pace_warning([unit("qaic:0", 0, 0)]) is None


def test_the_warning_names_the_figures_and_the_fix() -> None:
    warning = pace_warning([unit("qaic:0", 400, 390, 412.4, 35.0), unit("qaic:1", 100, 98, 100.0, 9.04)])
    assert warning is not None
    message, hint = warning
    assert message == ("host computation set the pace on 97% of batches (512 s of host compute against 44 s "
                       "modelled): this result measures the host CPU, not the simulated device")
    assert "skips computing outputs" in hint and "fewer device units" in hint
    assert "qaic" not in hint


# -- performance only: zeros, not the model's outputs ---------------------------------------


def test_skipped_outputs_are_zeros_of_the_outputs_shapes_and_dtypes(models: dict[str, Path]) -> None:
    session = load(models["pace"], 2, outputs="skip", latency_ms=1)
    outputs = session.run(ones(5))
    assert set(outputs) == {"scores", "label"}
    assert outputs["scores"].shape == (5, CLASSES) and outputs["scores"].dtype == np.float32
    assert outputs["label"].shape == (5,) and outputs["label"].dtype == np.int64
    assert not outputs["scores"].any() and not outputs["label"].any()
    assert [s.name for s in session.outputs] == ["scores", "label"]
    pace = session.pace()
    assert pace is not None and pace.modelled_batches == 1
    # the real model's outputs are not zeros: skip really skipped them
    assert load(models["pace"], 2, latency_ms=0).run(ones(5))["scores"].any()


def test_skipped_outputs_keep_a_fixed_batch(models: dict[str, Path]) -> None:
    session = load(models["pace_b4"], 3, outputs="skip", latency_ms=0)
    assert session.capabilities.fixed_batch and session.capabilities.max_batch_size == 4
    assert session.run(ones(4))["scores"].shape == (4, CLASSES)


def test_skipping_outputs_needs_every_dimension_but_the_batch(models: dict[str, Path]) -> None:
    with pytest.raises(UsageError) as caught:
        QaicBackend().check(inspect_onnx(models["ragged"]), Device("qaic", (0,)), QaicOptions(outputs="skip"), None)
    assert "'y'" in caught.value.message and "[?, ?]" in caught.value.message
    assert "outputs=compute" in (caught.value.hint or "")
    QaicBackend().check(inspect_onnx(models["ragged"]), Device("qaic", (0,)), QaicOptions(), None)  # computed: fine


def test_only_the_skip_option_is_performance_only() -> None:
    assert QaicBackend().performance_only(QaicOptions()) is None
    assert "outputs=skip" in (QaicBackend().performance_only(QaicOptions(outputs="skip")) or "")


def test_an_audit_of_a_performance_only_run_is_refused_before_anything_is_written(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """An audit against an earlier run (``--against``) has no accuracy test of its own."""
    from mlpi.core.engine.planning import RunRequest, build_plan
    from mlpi.core.engine.runner import execute

    plan = build_plan(RunRequest(backend="qaic", device="qaic:0", model_path=str(models["pace"]),
                                 options={"outputs": "skip"}, quick=True))
    audited = dataclasses.replace(plan, extra={**plan.extra, "audits": ["TEST04"]})
    with pytest.raises(UsageError) as caught:
        execute(audited, tmp_path / "R", reporter=None)  # type: ignore[arg-type]
    assert "outputs=skip" in caught.value.message and "a TEST04 audit needs" in caught.value.message
    assert "--mode performance" in (caught.value.hint or "")
    assert not (tmp_path / "R").exists()


# -- through the CLI -----------------------------------------------------------------------

COMMON = ["-s", "Offline", "--duration", "1", "--batch-size", "8"]
RUNS: dict[str, list[str]] = {
    # the device model takes no time: the host sets the pace of every batch, on both cards
    "host_bound": ["-d", "qaic:0-1", "--target-qps", "400", "-o", "latency_ms=0", "-o", "latency_per_sample_ms=0",
                   "-o", "link_gbps=0", *COMMON],
    # 100 ms a batch: far longer than the host takes for this model
    "model_bound": ["-d", "qaic:0", "--target-qps", "80", "-o", "latency_ms=100", *COMMON],
    "skip": ["-d", "qaic:0", "--target-qps", "400", "-o", "outputs=skip", "-o", "latency_ms=2", *COMMON],
    "skip_accuracy": ["-d", "qaic:0", "--mode", "accuracy", "-o", "outputs=skip", "--quick"],
}


@pytest.fixture(scope="module")
def runs(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every CLI run of this file at once (they are processes, mostly waiting), and their results."""
    root = tmp_path_factory.mktemp("pace-runs")
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"} | {"COLUMNS": "200"}
    commands = {name: ["run", "-b", "qaic", "--model-path", str(models["pace"]), *args, "--output", str(root / name)]
                for name, args in RUNS.items()}
    # TEST01 needs a registered model: DLRM-v2's random graph, its tables cut to 100 rows
    commands["skip_audit"] = ["run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "-b", "qaic",
                              "-d", "qaic:0", "-o", "outputs=skip", "--mode", "both", "--audit", "TEST01", "--quick",
                              "--output", str(root / "skip_audit")]
    procs = {name: subprocess.Popen([sys.executable, "-m", "mlpi", *args], cwd=root, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in commands.items()}
    done: dict[str, Any] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    done["root"] = root
    return done


def result_of(runs: dict[str, Any], name: str) -> dict[str, Any]:
    return json.loads((only_run_dir(runs["root"] / name) / "result.json").read_text())


@pytest.mark.parametrize("name", ["host_bound", "model_bound", "skip"])
def test_the_performance_runs_finish(runs: dict[str, Any], name: str) -> None:
    proc = runs[name]
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr  # 3: a one-second run may be INVALID
    assert "Traceback" not in proc.stderr
    (test,) = result_of(runs, name)["tests"]
    assert test["status"] == "ok" and test["simulated"] is True


def test_a_host_bound_run_warns_once_with_the_fix(runs: dict[str, Any]) -> None:
    lines = runs["host_bound"].stderr.splitlines()
    warnings = [line.strip() for line in lines if WARNING in line]
    assert len(warnings) == 1, runs["host_bound"].stderr
    assert warnings[0].startswith(f"{WARNING} 100% of batches (")
    assert "s modelled): this result measures the host CPU, not the simulated device" in warnings[0]
    hint = lines[lines.index(next(line for line in lines if WARNING in line)) + 1].strip()
    assert hint.startswith("hint: ") and "skips computing outputs" in hint


def test_a_host_bound_run_records_the_pace_of_every_card(runs: dict[str, Any]) -> None:
    (test,) = result_of(runs, "host_bound")["tests"]
    units = {unit["device"]: unit for unit in test["devices"]}
    assert set(units) == {"qaic:0", "qaic:1"}
    for unit in units.values():
        # the LoadGen test's batches only: the warm-up batch before it is not counted
        assert unit["modelled_batches"] == unit["host_bound_batches"] == unit["batches"] > 0
        assert unit["modelled_s"] == 0.0 and unit["host_compute_s"] > 0
    assert "host-bound" in runs["host_bound"].stdout  # the per-device line of the summary


def test_the_warning_is_in_the_tests_log(runs: dict[str, Any]) -> None:
    log = (only_run_dir(runs["root"] / "host_bound") / "Offline" / "performance" / "harness.log").read_text()
    assert f"mlpi: {WARNING}" in log and "mlpi: hint: " in log


def test_a_model_bound_run_does_not_warn_and_sums_the_modelled_time(runs: dict[str, Any]) -> None:
    assert "warning:" not in runs["model_bound"].stderr, runs["model_bound"].stderr
    (test,) = result_of(runs, "model_bound")["tests"]
    (unit,) = test["devices"]
    assert unit["host_bound_batches"] == 0 and unit["modelled_batches"] == unit["batches"] > 0
    expected = sum(count * (0.100 + 0.00025 * int(size) + int(size) * SAMPLE_BYTES / 16e9)
                   for size, count in unit["batch_sizes"].items())
    assert unit["modelled_s"] == pytest.approx(expected, rel=1e-4)
    assert 0 < unit["host_compute_s"] < unit["modelled_s"]


def test_a_performance_only_run_says_so(runs: dict[str, Any]) -> None:
    proc = runs["skip"]
    assert "warning:" not in proc.stderr
    assert "PERFORMANCE ONLY: with -o outputs=skip the simulated cards return zeros" in proc.stdout
    assert "outputs were not computed" in proc.stdout  # among the reasons it is not valid for submission
    saved = result_of(runs, "skip")
    assert saved["backend"]["options"]["outputs"] == "skip"
    assert "outputs=skip" in saved["backend"]["performance_only"]
    assert saved["submission_valid"] is False
    assert "performance_only" not in result_of(runs, "model_bound")["backend"]


def test_an_accuracy_test_of_a_performance_only_run_is_refused(runs: dict[str, Any]) -> None:
    proc = runs["skip_accuracy"]
    assert proc.returncode == 2
    one_error(proc, "outputs=skip", "an accuracy test needs the model's real outputs")
    assert any(line.startswith("hint: ") and "--mode performance" in line for line in proc.stderr.splitlines())
    assert not (runs["root"] / "skip_accuracy").exists() or not any((runs["root"] / "skip_accuracy").iterdir())


def test_an_audit_of_a_performance_only_run_is_refused(runs: dict[str, Any]) -> None:
    proc = runs["skip_audit"]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    one_error(proc, "outputs=skip", "a TEST01 audit", "real outputs")
    assert any(line.startswith("hint: ") and "no --audit" in line for line in proc.stderr.splitlines())
