"""Multi-device dispatch in the core, and the simulated qaic cards it drives.

The qaic simulator computes every output with ONNX Runtime (real values) and shapes the
timing with its device model; these tests check both halves and the dispatch between.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_result, run_cli
from test_sut import Recorder, Response, expected_bytes, query

from mlpi.backends.qaic import QaicBackend, QaicOptions
from mlpi.core.contract.backend import LoadContext
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, UsageError
from mlpi.core.contract.postprocess import RawOutputs
from mlpi.core.engine.dispatch import Dispatcher, device_stats
from mlpi.core.engine.executor import BatchExecutor
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.sut import OfflineSUT, ServerSUT
from mlpi.datasets.synthetic import Synthetic


@pytest.fixture(scope="module")
def matmul(model_dir: Path) -> Path:
    return model_dir / "matmul.onnx"


def qaic_executors(
    model: Path, cards: list[int], batch: int, recorder: Recorder, errors: list[BaseException], **options: object
) -> list[BatchExecutor]:
    """Executors as the child process builds them: max_in_flight slots per card session."""
    artifact = inspect_onnx(model)
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=32, seed=0))
    dataset.load(list(range(32)))
    backend = QaicBackend()
    executors = []
    for index in cards:
        session = backend.load(artifact, Device("qaic", (index,)), QaicOptions(**options), None, LoadContext(batch))  # type: ignore[arg-type]
        specs = [type(o)(o.name, o.dtype, o.shape) for o in session.outputs]
        for _ in range(session.capabilities.max_in_flight):
            executors.append(
                BatchExecutor(session, dataset, RawOutputs(specs, batch), batch, recorder, Response, errors.append,
                              device=f"qaic:{index}")
            )
    return executors


def offline_rate(model: Path, cards: list[int], samples: int, batch: int = 8, **options: object) -> tuple[float, OfflineSUT, Recorder]:
    recorder, errors = Recorder(), []
    executors = qaic_executors(model, cards, batch, recorder, errors, **options)
    sut = OfflineSUT(executors)
    sut.start()
    ids, indices = query(samples)
    started = time.perf_counter()
    sut.issue(ids, indices)
    while len(recorder.bytes) < samples and time.perf_counter() - started < 60:
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    sut.stop()
    assert not errors
    assert len(recorder.bytes) == samples and recorder.duplicates == 0
    return samples / elapsed, sut, recorder


def test_simulated_card_outputs_are_the_real_model_outputs(matmul: Path) -> None:
    _, _, recorder = offline_rate(matmul, [0, 1], 40, latency_ms=0.2, latency_per_sample_ms=0.0)
    ids, indices = query(40)
    expected = expected_bytes(matmul, sorted(set(indices)))
    assert {q: recorder.bytes[q] for q in ids} == {q: expected[i] for q, i in zip(ids, indices)}


def test_a_batch_takes_the_device_models_time(matmul: Path) -> None:
    artifact = inspect_onnx(matmul)
    session = QaicBackend().load(artifact, Device("qaic", (5,)), QaicOptions(latency_ms=20, latency_per_sample_ms=5), None)
    assert session.simulated
    feeds = {s.name: np.ones((4, *s.sample_shape), dtype=s.dtype) for s in artifact.inputs}
    session.run(feeds)  # warm
    started = time.perf_counter()
    session.run(feeds)
    # a + b*n = 20 + 5*4 ms; sleeping never ends early.
    assert time.perf_counter() - started >= 0.040


def test_four_cards_give_at_least_three_and_a_half_times_one(matmul: Path) -> None:
    # The device model is the bottleneck (6 ms per batch of 8, two activations per card),
    # so throughput must scale with the cards the dispatcher keeps busy.
    model = {"latency_ms": 4.0, "latency_per_sample_ms": 0.25, "concurrency": 2, "queue_depth": 2}
    one, _, _ = offline_rate(matmul, [0], 8 * 60, **model)
    four, sut, _ = offline_rate(matmul, [0, 1, 2, 3], 8 * 240, **model)
    assert four / one >= 3.5, f"1 card {one:.0f}/s, 4 cards {four:.0f}/s"
    busy = sut.busy_seconds()
    assert set(busy) == {"qaic:0", "qaic:1", "qaic:2", "qaic:3"}
    assert all(seconds > 0 for seconds in busy.values())


def test_least_loaded_dispatch_gives_a_slower_unit_less_work(matmul: Path) -> None:
    recorder, errors = Recorder(), []
    fast = qaic_executors(matmul, [0], 4, recorder, errors, latency_ms=1.0, latency_per_sample_ms=0.0,
                          concurrency=1, queue_depth=0)
    slow = qaic_executors(matmul, [1], 4, recorder, errors, latency_ms=8.0, latency_per_sample_ms=0.0,
                          concurrency=1, queue_depth=0)
    sut = OfflineSUT(fast + slow)
    sut.start()
    ids, indices = query(4 * 90)
    sut.issue(ids, indices)
    deadline = time.time() + 30
    while len(recorder.bytes) < len(ids) and time.time() < deadline:
        time.sleep(0.001)
    sut.stop()
    assert not errors and len(recorder.bytes) == len(ids)
    stats = {unit["device"]: unit for unit in device_stats(fast + slow, sut.busy_seconds(), 1.0)}
    assert stats["qaic:0"]["samples"] + stats["qaic:1"]["samples"] == len(ids)
    # The fast card is free about eight times as often, so it must get most of the batches.
    assert stats["qaic:0"]["batches"] > 3 * stats["qaic:1"]["batches"] > 0


def test_dispatch_prefers_an_idle_unit_over_a_busy_one(matmul: Path) -> None:
    recorder, errors = Recorder(), []
    executors = qaic_executors(matmul, [0, 1], 2, recorder, errors, concurrency=1, queue_depth=1, latency_ms=50.0)
    dispatcher = Dispatcher(executors)
    with dispatcher.cond:
        first = dispatcher.take_slot()
        second = dispatcher.take_slot()
        third = dispatcher.take_slot()
    # Two lanes of two slots: the second batch goes to the other card, the third back to the first.
    assert first.lane is not second.lane
    assert third.lane is first.lane
    assert {first.lane.in_flight, second.lane.in_flight} == {2, 1}


def test_device_stats_histogram_counts_partial_batches(matmul: Path) -> None:
    _, sut, _ = offline_rate(matmul, [2, 3], 8 * 10 + 3, latency_ms=0.5, latency_per_sample_ms=0.0)
    stats = device_stats(sut.executors, sut.busy_seconds(), 10.0)
    assert [unit["device"] for unit in stats] == ["qaic:2", "qaic:3"]
    merged: dict[str, int] = {}
    for unit in stats:
        assert unit["slots"] == 2 + 4  # concurrency + queue depth (the defaults)
        assert sum(int(size) * n for size, n in unit["batch_sizes"].items()) == unit["samples"]
        for size, n in unit["batch_sizes"].items():
            merged[size] = merged.get(size, 0) + n
    assert merged == {"3": 1, "8": 10}
    assert all(0 < unit["busy_fraction"] <= 1 for unit in stats)


def test_server_spreads_batches_over_cards(matmul: Path) -> None:
    recorder, errors = Recorder(), []
    executors = qaic_executors(matmul, [0, 1, 2], 4, recorder, errors, latency_ms=5.0, concurrency=1, queue_depth=0)
    sut = ServerSUT(executors, batch_size=4, timeout_s=0.002)
    sut.start()
    ids, indices = query(120)
    for k in range(0, 120, 4):
        sut.issue(ids[k : k + 4], indices[k : k + 4])
    deadline = time.time() + 20
    while len(recorder.bytes) < 120 and time.time() < deadline:
        time.sleep(0.001)
    sut.stop()
    assert not errors and len(recorder.bytes) == 120
    per_card = {unit["device"]: unit["samples"] for unit in device_stats(executors, sut.busy_seconds(), 1.0)}
    assert sum(per_card.values()) == 120
    assert all(n > 0 for n in per_card.values()), per_card
    expected = expected_bytes(matmul, sorted(set(indices)))
    assert all(recorder.bytes[q] == expected[i] for q, i in zip(ids, indices))


def test_cards_beyond_the_simulated_machine_are_refused(matmul: Path) -> None:
    with pytest.raises(DeviceError) as caught:
        QaicBackend().check(inspect_onnx(matmul), Device("qaic", (9,)), QaicOptions(), None)
    assert "qaic:9" in caught.value.message and "qaic:0-7" in caught.value.message and "qaic:0-3" in caught.value.hint
    # option ranges are the core's (the field's metadata), for every backend alike
    from mlpi.core.plugins.options import build_options

    with pytest.raises(UsageError, match="concurrency"):
        build_options(QaicOptions, [("--option", {"concurrency": "0"})], "qaic")


def test_qaic_computes_with_the_backend_its_option_names(matmul: Path) -> None:
    artifact = inspect_onnx(matmul)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    answers = {}
    for name in ("onnxruntime", "ort", "null"):  # an alias resolves like --backend
        session = QaicBackend().load(artifact, Device("qaic", (0,)), QaicOptions(compute_backend=name, latency_ms=0), None)
        assert session.simulated
        answers[name] = {k: np.asarray(v).copy() for k, v in session.run(feeds).items()}
        session.close()
    assert np.abs(answers["onnxruntime"]["logits"]).max() > 0
    assert all(np.array_equal(answers["ort"][k], answers["onnxruntime"][k]) for k in answers["ort"])
    assert not answers["null"]["logits"].any()  # the null backend's zeros, not ONNX Runtime's answers
    assert QaicOptions().compute_backend == "onnxruntime"


@pytest.mark.parametrize("name, why", [("onxruntime", "not an installed backend"), ("qaic", "the simulator itself")])
def test_a_wrong_compute_backend_is_one_clear_error_listing_the_valid_ones(matmul: Path, name: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        QaicBackend().check(inspect_onnx(matmul), Device("qaic", (0,)), QaicOptions(compute_backend=name), None)
    error = caught.value
    assert f"compute_backend is '{name}'" in error.message and why in error.message
    listed = error.hint.split("choose one of: ")[1]
    assert {"onnxruntime", "null"} <= set(listed.split(" (")[0].split(", "))
    assert "qaic" not in listed.split(" (")[0].split(", ")
    if name == "onxruntime":
        assert "did you mean onnxruntime?" in error.hint


def test_qaic_finds_its_compute_backend_through_the_registry_only() -> None:
    import ast

    from mlpi.backends import qaic

    tree = ast.parse(Path(qaic.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m.startswith("mlpi.backends") or m == "onnxruntime"}, imported


def test_qaic_passes_the_conformance_kit() -> None:
    from mlpi.testing.conformance import run_checks

    report = run_checks("qaic", device="qaic:0", options={"latency_ms": 0.1, "latency_per_sample_ms": 0.0})
    assert report.failed == [], report.summary()
    assert len(report.passed) > 40


@pytest.mark.slow
def test_four_simulated_cards_through_the_cli(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    result = run_cli(
        ["run", "--backend", "qaic", "--device", "qaic:0-3", "--model-path", str(model_dir / "matmul.onnx"),
         "--scenario", "Offline", "--duration", "1", "--batch-size", "8", "--output", str(out)],
        cwd=tmp_path, env={"COLUMNS": "200"},
    )
    # What is checked is how the batches spread over the cards; a short Offline run may end
    # INVALID (3: LoadGen outran the calibration) on a busy machine, which says nothing of that.
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert "SIMULATED" in result.stdout, result.stdout
    saved = read_result(out)
    assert saved["simulated"] is True
    (test,) = saved["tests"]
    assert test["status"] == "ok" and test["simulated"] is True and test["slots"] == 4 * 6
    devices = {unit["device"]: unit for unit in test["devices"]}
    assert set(devices) == {"qaic:0", "qaic:1", "qaic:2", "qaic:3"}
    assert all(unit["batches"] > 0 and unit["busy_s"] > 0 for unit in devices.values())
    assert sum(unit["samples"] for unit in devices.values()) > 0
