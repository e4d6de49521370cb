"""The contracts every benchmark builds on: responses of any size, pipelines, data
parameters, rules with the model, typed accuracy, plugin type checks, the public API."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mlpi.core.contract.accuracy import AccuracyResult
from mlpi.core.contract.backend import Capabilities, Session, TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.core.contract.pipeline import Pipeline, PipelineContext
from mlpi.core.contract.postprocess import Postprocessor, RawOutputs, Responses
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.executor import BatchExecutor
from mlpi.datasets.synthetic import Synthetic


class Response:
    def __init__(self, qid: int, data: int, size: int) -> None:
        self.id, self.data, self.size = qid, data, size


class Recorder:
    """Copies every response's bytes at call time, as LoadGen does."""

    def __init__(self) -> None:
        self.bytes: dict[int, bytes] = {}
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, responses: list[Response]) -> None:
        with self.lock:
            self.calls += 1
            for r in responses:
                self.bytes[r.id] = ctypes.string_at(r.data, r.size) if r.size else b""


class EchoSession(Session):
    """Returns its input: outputs[x][j] is sample j's features."""

    def __init__(self, spec: TensorSpec) -> None:
        self.inputs = [spec]
        self.outputs = [TensorSpec("y", spec.dtype, spec.shape)]
        self.capabilities = Capabilities(preferred_batch_size=4)
        self.precision = "fp32"

    def run(self, feeds):  # noqa: ANN001, ANN201
        return {"y": np.array(feeds["x"], copy=True)}


class FirstKValues(Postprocessor):
    """Sample i answers i % 3 float32 values (0: an empty response), its index first."""

    @property
    def sample_nbytes(self) -> None:
        return None

    def __call__(self, outputs, indices):  # noqa: ANN001, ANN201
        arrays = []
        for j, index in enumerate(indices):
            k = index % 3
            values = np.concatenate([[np.float32(index)], outputs["y"][j, : max(k - 1, 0)]]).astype(np.float32)
            arrays.append(values[:k])
        return Responses.from_arrays(arrays)


def expected(dataset, index: int) -> bytes:  # noqa: ANN001
    k = index % 3
    row = dataset.sample(index)["x"][0]
    return np.concatenate([[np.float32(index)], row[: max(k - 1, 0)]]).astype(np.float32)[:k].tobytes()


@pytest.fixture
def dataset():  # noqa: ANN201
    spec = TensorSpec("x", "float32", (None, 5))
    ds = Synthetic().open(DatasetRequest([spec], count=12, seed=3))
    ds.load(list(range(12)))
    return ds


def test_responses_of_any_size_reach_loadgen_with_their_sample(dataset) -> None:  # noqa: ANN001
    recorder = Recorder()
    errors: list[BaseException] = []
    executor = BatchExecutor(EchoSession(dataset.inputs[0]), dataset, FirstKValues(), 4, recorder, Response, errors.append)
    ids = [100 + i for i in range(12)]
    indices = [7, 3, 0, 11, 5, 9, 1, 2, 8, 4, 10, 6]
    executor.execute_chunked(ids, indices)
    assert errors == []
    assert recorder.calls == 3  # one completion per batch
    for qid, index in zip(ids, indices):
        assert recorder.bytes[qid] == expected(dataset, index), index
    assert recorder.bytes[ids[indices.index(0)]] == b""  # empty responses are allowed


def test_fixed_rows_after_ragged_responses_are_pointed_again(dataset) -> None:  # noqa: ANN001
    """One executor answering ragged, then fixed rows from a new buffer, must not keep stale pointers."""
    recorder = Recorder()

    class Switching(Postprocessor):
        calls = 0

        @property
        def sample_nbytes(self) -> int:
            return 4

        def __call__(self, outputs, indices):  # noqa: ANN001, ANN201
            Switching.calls += 1
            if Switching.calls == 1:
                return Responses.from_arrays([np.array([1, 2], np.float32)] * len(indices))
            return np.asarray(indices, dtype=np.float32) * 10

    executor = BatchExecutor(EchoSession(dataset.inputs[0]), dataset, Switching(), 4, recorder, Response, print)
    executor.execute([1, 2], [0, 1])
    executor.execute([3, 4], [5, 6])
    assert recorder.bytes[1] == np.array([1, 2], np.float32).tobytes()
    assert recorder.bytes[3] == np.float32(50).tobytes() and recorder.bytes[4] == np.float32(60).tobytes()


def test_a_models_pipeline_replaces_gather_run_postprocess(dataset) -> None:  # noqa: ANN001
    """A pipeline may run its session several times per sample (a decode loop) and answer
    each sample's own bytes; the executor completes them with the right ids."""
    session = EchoSession(dataset.inputs[0])

    class Twice(Pipeline):
        def __init__(self, context: PipelineContext) -> None:
            self.context = context
            self.runs = 0

        @property
        def sample_nbytes(self) -> None:
            return None

        def __call__(self, indices):  # noqa: ANN001, ANN201
            arrays = []
            for index in indices:
                feeds = self.context.dataset.sample(index)
                first = self.context.sessions["model"].run(feeds)["y"]
                second = self.context.sessions["model"].run({"x": first * 2})["y"]
                self.runs += 2
                arrays.append(second[0, :2])
            return Responses.from_arrays(arrays)

    pipeline = Twice(PipelineContext({"model": session}, dataset, 4, session.outputs, None))
    recorder = Recorder()
    executor = BatchExecutor(session, dataset, None, 4, recorder, Response, print, pipeline=pipeline)
    executor.execute([5, 6, 7], [2, 9, 4])
    assert pipeline.runs == 6
    for qid, index in ((5, 2), (6, 9), (7, 4)):
        assert recorder.bytes[qid] == (dataset.sample(index)["x"][0, :2] * 2).tobytes()


def test_raw_outputs_keeps_the_zero_copy_path() -> None:
    post = RawOutputs([TensorSpec("y", "float32", (None, 3))], 4)
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert post({"y": y}, [0, 1, 2, 3]) is y


def test_data_params_name_what_a_dataset_needs() -> None:
    params = DataParams.of(image_size=(800, 800), layout="NCHW")
    assert params.require("image_size", "d") == (800, 800)
    with pytest.raises(DatasetError, match="needs the model to declare 'seq_len'.*declares: image_size, layout"):
        params.require("seq_len", "squad")
    assert params.to_json() == {"image_size": [800, 800], "layout": "NCHW"}


def test_quality_targets_in_any_direction() -> None:
    higher = QualityTarget("mAP", 37.55, 0.99, unit="%")
    assert higher.value == pytest.approx(37.1745)
    assert higher.met_by(37.2) and not higher.met_by(37.17)
    wer = QualityTarget("WER", 7.452, 0.99, unit="%", higher_is_better=False, complement=100.0)
    assert wer.value == pytest.approx(8.37748)
    assert wer.met_by(8.0) and not wer.met_by(8.5)
    assert wer.describe() == "WER <= 8.37748% (100 - WER >= 99% of 100 - 7.452%)"
    dice = QualityTarget("mean DICE", 0.86170, 0.999, unit="")
    result = AccuracyResult("mean DICE", 0.861, "", ("Mean Accuracy: 0.86100",)).with_target(dice.value)
    assert result.passed is True and result.to_json()["unit"] == ""
    failing = AccuracyResult("WER", 9.0, "%", ("Word Error Rate: 9.0%",), higher_is_better=False).with_target(wer.value)
    assert failing.passed is False and "FAIL" in failing.describe() and "<=" in failing.describe()


def test_the_core_names_no_model() -> None:
    core = Path(__file__).resolve().parents[1] / "mlpi" / "core"
    names = ("resnet", "retinanet", "bert", "unet", "dlrm", "rnnt", "imagenet", "openimages", "coco", "squad")
    offenders = []
    for path in sorted(core.glob("*.py")):
        text = path.read_text(encoding="utf-8").lower()
        for name in names:
            if f'"{name}' in text or f"'{name}" in text:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []
    assert Rules().official is False


def test_public_api_is_versioned_and_imports_no_runtime() -> None:
    code = (
        "import sys, mlpi.api as api; "
        "assert api.API_VERSION.split('.')[0] == '2'; "
        "missing = [n for n in api.__all__ if not hasattr(api, n)]; assert not missing, missing; "
        "heavy = [m for m in ('onnxruntime', 'torch', 'openvino', 'tensorrt', 'mlperf_loadgen') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


WRONG_TYPES = '''
class NotAFactory:
    name = "nope"

NOT_A_SPEC = 42
'''


def test_plugins_of_the_wrong_type_show_as_broken(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "wrongtypes.py").write_text(WRONG_TYPES, encoding="utf-8")
    dist = site / "wrongtypes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wrongtypes\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[mlpi.datasets]\nnope = wrongtypes:NotAFactory\n[mlpi.models]\nnomodel = wrongtypes:NOT_A_SPEC\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    env["PYTHONPATH"] = str(site)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlpi", *args], capture_output=True, text=True, env=env, cwd=tmp_path)

    datasets = {row["name"]: row for row in json.loads(run("datasets", "--json").stdout)}
    assert datasets["nope"]["status"] == "broken" and "DatasetFactory" in datasets["nope"]["error"]
    assert datasets["synthetic"]["status"] == "ok"
    models = {row["name"]: row for row in json.loads(run("models", "--json").stdout)}
    assert models["nomodel"]["status"] == "broken" and "ModelSpec" in models["nomodel"]["error"]
    assert models["retinanet"]["status"] == "ok"
    result = run("run", "--model-path", "x.onnx", "--dataset", "nope")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1


def test_models_lists_retinanet_with_its_rules(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mlpi", "models", "--json"], capture_output=True, text=True, cwd=tmp_path)
    row = {r["name"]: r for r in json.loads(result.stdout)}["retinanet"]
    assert row["quality_target"] == pytest.approx(0.99 * 37.55)
    assert row["server_latency_ms"] == 100 and row["multistream_latency_ms"] == 528
    assert row["performance_sample_count"] == 64 and row["offline_min_samples"] == 24576
    assert row["dataset_size"] == 24781 and row["round"] == "v6.0"
    assert row["required_scenarios"]["datacenter"] == ["Server", "Offline"]
    assert row["data"]["image_size"] == [800, 800] and row["data"]["resize"] == "stretch"
    assert [d["name"] for d in row["datasets"]][0] == "openimages"
    table = subprocess.run([sys.executable, "-m", "mlpi", "models"], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "COLUMNS": "200"})
    assert "retinanet: mAP >= 99% of 37.55%" in table.stdout


def test_quick_runs_of_slow_models_are_cut_to_a_bounded_time() -> None:
    from mlpi.core.engine.scenario import QUICK_MIN_QUERY_FLOOR, quick_query_count

    assert quick_query_count(662, 10.0, 0.002) == 662  # a fast model keeps mlperf.conf's count
    assert quick_query_count(64, 10.0, 0.5) == 64
    cut = quick_query_count(64, 10.0, 5.0)  # 64 queries of 5 s would take 5 minutes
    assert QUICK_MIN_QUERY_FLOOR <= cut < 64 and cut * 5.0 <= 6 * 10.0 + 5.0 * QUICK_MIN_QUERY_FLOOR
    assert quick_query_count(662, 10.0, 160.0) == QUICK_MIN_QUERY_FLOOR  # never below the floor


def test_a_quick_server_test_of_a_slow_model_is_cut_too() -> None:
    """Server queries arrive 1 / target_qps apart: 64 of them at 0.12 QPS took 9 minutes."""
    from mlpi.core.engine.scenario import QUICK_MIN_QUERY_COUNT, Expectations, user_conf

    def count(server_qps: float) -> int:
        expect = Expectations(0.3, 0.0, 0.0, server_qps, "calibration")
        text = user_conf("ssd-resnet34", "Server", expect, min_duration_s=10.0, performance_sample_count=None)
        return int(next(line for line in text.splitlines() if ".min_query_count" in line).split("=")[1])

    assert count(0.12) < QUICK_MIN_QUERY_COUNT and count(0.12) / 0.12 <= 6 * 10.0 + 8 / 0.12
    assert count(1000.0) == QUICK_MIN_QUERY_COUNT  # a fast model keeps the full count


def test_the_performance_sample_count_comes_from_the_rules_or_a_memory_bound() -> None:
    from types import SimpleNamespace

    from mlpi.core.contract.rules import NO_RULES
    from mlpi.core.engine.child import PRELOAD_BUDGET_BYTES, PRELOAD_SAMPLES, performance_count_limit

    images = SimpleNamespace(performance_count=50000, inputs=[TensorSpec("x", "float32", (None, 3, 224, 224))])
    ruled = SimpleNamespace(spec=SimpleNamespace(rules=Rules(performance_sample_count=1024)), dataset=images)
    assert performance_count_limit(ruled) == 1024
    few = SimpleNamespace(performance_count=5, inputs=images.inputs)
    assert performance_count_limit(SimpleNamespace(spec=ruled.spec, dataset=few)) == 5
    custom = SimpleNamespace(spec=SimpleNamespace(rules=NO_RULES), dataset=images)
    assert performance_count_limit(custom) == PRELOAD_BUDGET_BYTES // (3 * 224 * 224 * 4)
    tiny = SimpleNamespace(performance_count=1_000_000, inputs=[TensorSpec("x", "float32", (None, 16))])
    assert performance_count_limit(SimpleNamespace(spec=custom.spec, dataset=tiny)) == PRELOAD_SAMPLES
