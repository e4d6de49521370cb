"""The batching SUTs without LoadGen: every sample completed once, with its own bytes."""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlpi.backends.ort import OnnxRuntimeBackend, OrtOptions
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.device import Device
from mlpi.core.contract.postprocess import RawOutputs
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.sut import BatchExecutor, InlineSUT, OfflineSUT, ServerSUT
from mlpi.datasets.synthetic import Synthetic


class Response:
    def __init__(self, qid: int, data: int, size: int) -> None:
        self.id, self.data, self.size = qid, data, size


class Recorder:
    """Stands in for LoadGen's QuerySamplesComplete: copies the bytes at call time, as LoadGen does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: dict[int, bytes] = {}
        self.calls = 0
        self.duplicates = 0

    def __call__(self, responses: list[Response]) -> None:
        with self.lock:
            self.calls += 1
            for r in responses:
                if r.id in self.bytes:
                    self.duplicates += 1
                self.bytes[r.id] = ctypes.string_at(r.data, r.size)


def expected_bytes(model: Path, indices: list[int]) -> dict[int, bytes]:
    """Each sample run alone through ONNX Runtime, outputs concatenated as raw bytes."""
    import onnxruntime as ort

    artifact = inspect_onnx(model)
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=32, seed=0))
    dataset.load(list(range(32)))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = artifact.inputs[0].shape[0]
    out = {}
    for index in indices:
        feeds = {k: np.repeat(v, fixed or 1, axis=0) for k, v in dataset.sample(index).items()}
        results = session.run(names, feeds)
        out[index] = b"".join(np.ascontiguousarray(r[:1]).tobytes() for r in results)
    return out


def make_executors(model: Path, count: int, batch: int, recorder: Recorder, errors: list[BaseException]) -> list[BatchExecutor]:
    artifact = inspect_onnx(model)
    dataset = Synthetic().open(DatasetRequest(artifact.inputs, path=None, count=32, seed=0))
    dataset.load(list(range(32)))
    backend = OnnxRuntimeBackend()
    executors = []
    for _ in range(count):
        session = backend.load(artifact, Device("cpu"), OrtOptions(intra_op_threads=1), None)
        outputs = [type(o)(o.name, o.dtype, o.shape) for o in session.outputs]
        executors.append(BatchExecutor(session, dataset, RawOutputs(outputs, batch), batch, recorder, Response, errors.append))
    return executors


def query(n: int) -> tuple[list[int], list[int]]:
    ids = [1000 + k for k in range(n)]
    indices = [(k * 7) % 32 for k in range(n)]
    return ids, indices


@pytest.mark.parametrize(("model", "batch"), [("matmul.onnx", 5), ("argmax.onnx", 8), ("two_inputs.onnx", 3), ("matmul_b4.onnx", 3)])
def test_offline_completes_every_sample_with_its_own_outputs(model_dir: Path, model: str, batch: int) -> None:
    recorder, errors = Recorder(), []
    executors = make_executors(model_dir / model, 2, batch, recorder, errors)
    sut = OfflineSUT(executors)
    sut.start()
    ids, indices = query(101)
    sut.issue(ids, indices)
    deadline = time.time() + 10
    while len(recorder.bytes) < len(ids) and time.time() < deadline:
        time.sleep(0.01)
    sut.stop()
    assert not errors
    assert recorder.duplicates == 0
    expected = expected_bytes(model_dir / model, sorted(set(indices)))
    assert {qid: recorder.bytes[qid] for qid in ids} == {qid: expected[i] for qid, i in zip(ids, indices)}
    # One completion call per batch, never per sample.
    assert recorder.calls == -(-len(ids) // batch)


def test_server_batches_by_size_and_by_deadline(model_dir: Path) -> None:
    recorder, errors = Recorder(), []
    executors = make_executors(model_dir / "matmul.onnx", 1, 4, recorder, errors)
    sut = ServerSUT(executors, batch_size=4, timeout_s=0.05)
    sut.start()
    ids, indices = query(9)
    t0 = time.perf_counter()
    for qid, index in zip(ids, indices):
        sut.issue([qid], [index])
    # Two full batches leave at once; the ninth sample waits for the deadline.
    while len(recorder.bytes) < 8 and time.perf_counter() - t0 < 5:
        time.sleep(0.001)
    full_batches_at = time.perf_counter() - t0
    while len(recorder.bytes) < 9 and time.perf_counter() - t0 < 5:
        time.sleep(0.001)
    last_at = time.perf_counter() - t0
    sut.stop()
    assert not errors
    assert recorder.calls == 3
    assert full_batches_at < 0.05 <= last_at + 0.005
    expected = expected_bytes(model_dir / "matmul.onnx", sorted(set(indices)))
    assert all(recorder.bytes[q] == expected[i] for q, i in zip(ids, indices))


def test_inline_cuts_a_query_larger_than_the_batch(model_dir: Path) -> None:
    recorder, errors = Recorder(), []
    (executor,) = make_executors(model_dir / "matmul_b4.onnx", 1, 4, recorder, errors)
    sut = InlineSUT(executor, samples_per_query=8)
    ids, indices = query(8)
    sut.issue(ids, indices)
    assert recorder.calls == 2 and len(recorder.bytes) == 8 and not errors
    expected = expected_bytes(model_dir / "matmul_b4.onnx", sorted(set(indices)))
    assert all(recorder.bytes[q] == expected[i] for q, i in zip(ids, indices))


def test_a_backend_failure_goes_to_the_error_handler(model_dir: Path) -> None:
    recorder, errors = Recorder(), []
    (executor,) = make_executors(model_dir / "matmul.onnx", 1, 4, recorder, errors)

    def broken(feeds: object) -> object:
        raise RuntimeError("device lost")

    executor.session.run = broken  # type: ignore[method-assign]
    executor.execute([1, 2], [0, 1])
    assert [str(e) for e in errors] == ["device lost"]
    assert recorder.calls == 0


@pytest.mark.parametrize("n", [1, 3])
def test_a_backend_that_answers_fewer_rows_fails_the_batch(model_dir: Path, n: int) -> None:
    """A session that drops rows would otherwise pass as VALID with other samples' answers."""
    recorder, errors = Recorder(), []
    (executor,) = make_executors(model_dir / "matmul.onnx", 1, 4, recorder, errors)
    run = executor.session.run

    def short(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value[:-1] for name, value in run(feeds).items()}

    executor.session.run = short  # type: ignore[method-assign]
    executor.execute(list(range(1, n + 1)), list(range(n)))
    assert recorder.calls == 0 and len(errors) == 1
    assert f"answered {n - 1} rows of output" in str(errors[0]) and f"for a batch of {n}" in str(errors[0])


def test_raw_outputs_concatenate_every_output_per_sample() -> None:
    from mlpi.core.contract.backend import TensorSpec

    specs = [TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "int64", (None,)), TensorSpec("c", "uint8", (None, 3))]
    post = RawOutputs(specs, 4)
    assert post.sample_nbytes == 8 + 8 + 3
    a = np.arange(8, dtype=np.float32).reshape(4, 2)
    b = np.array([10, 11, 12, 13], dtype=np.int64)
    c = np.arange(12, dtype=np.uint8).reshape(4, 3)
    rows = post({"a": a, "b": b, "c": c}, range(3))
    for k in range(3):
        assert rows[k].tobytes() == a[k].tobytes() + b[k].tobytes() + c[k].tobytes()


def test_single_output_is_answered_in_place() -> None:
    from mlpi.core.contract.backend import TensorSpec

    post = RawOutputs([TensorSpec("y", "int64", (None,))], 4)
    y = np.array([3, 1, 2, 0], dtype=np.int64)
    assert post({"y": y}, range(4)) is y
    strided = np.arange(8, dtype=np.int64)[::2]
    assert post({"y": strided}, range(4)).tobytes() == strided.tobytes()


def test_preloaded_dataset_gathers_rows_of_a_partial_load() -> None:
    from mlpi.core.contract.backend import TensorSpec

    dataset = Synthetic().open(DatasetRequest([TensorSpec("x", "float32", (None, 3))], path=None, count=10, seed=1))
    full = Synthetic().open(DatasetRequest([TensorSpec("x", "float32", (None, 3))], path=None, count=10, seed=1))
    full.load(list(range(10)))
    dataset.load([7, 2, 5])
    out = {"x": np.zeros((3, 3), np.float32)}
    dataset.gather([5, 7, 2], out)
    reference = {"x": np.zeros((3, 3), np.float32)}
    full.gather([5, 7, 2], reference)
    assert np.array_equal(out["x"], reference["x"])
    assert np.array_equal(dataset.sample(7)["x"], full.sample(7)["x"])
    assert not np.array_equal(full.sample(7)["x"], full.sample(2)["x"])
    with pytest.raises(IndexError):
        dataset.sample(3)
