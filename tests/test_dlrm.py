"""DLRM-v2: the rules, the pipeline's rows and responses, tables split over units, and runs.

Known answers come from :func:`mlpi.models.dlrm_graph.write_known` (a prediction that is a
known function of the features) on fake day-23 files whose labels are set from the same
feature, so the AUC is known by construction; MLCommons' ``accuracy-dlrm.py`` reads the same
log and must print the same line.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.backend import Capabilities
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import RunFailed
from mlpi.core.contract.pipeline import PipelineContext
from mlpi.datasets.criteo import Criteo
from mlpi.datasets.criteo_fake import write_fake_day23
from mlpi.models import dlrm
from mlpi.models.dlrm_config import DENSE_INPUT, LABEL_INPUT, SPARSE_INPUT, Tables

ort = pytest.importorskip("onnxruntime")

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
SCRIPT = REFERENCE / "recommendation" / "dlrm_v2" / "pytorch" / "tools" / "accuracy-dlrm.py"
SMALL = Tables(max_rows=100)


class _Session:
    """onnxruntime behind the ``Session`` interface; ``fixed`` makes it a program compiled
    for exactly that many rows; ``short`` answers one row fewer than it was sent."""

    def __init__(self, path: Path, fixed: int | None = None, short: bool = False, wide: bool = False) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs = [type("Spec", (), {"name": o.name})() for o in self.session.get_outputs()]
        self.capabilities = Capabilities(max_batch_size=fixed, fixed_batch=fixed is not None)
        self.rows_seen: list[int] = []
        self.short = short
        self.wide = wide
        self.lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        with self.lock:
            self.rows_seen.append(rows)
        if self.capabilities.fixed_batch:
            assert rows == self.capabilities.max_batch_size, "a fixed-batch program gets its full batch"
        out = dict(zip([o.name for o in self.outputs], self.session.run(None, dict(feeds))))
        if self.wide:  # two values a row
            return {k: np.concatenate([v, v], axis=1) for k, v in out.items()}
        return {k: v[:-1] for k, v in out.items()} if self.short else out


def _dataset(folder: Path | None = None, count: int | None = None, seed: int = 0) -> Any:
    dataset = Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, path=folder, count=count, seed=seed))
    dataset.load(list(range(dataset.count)))
    return dataset


def _pipeline(sessions: Mapping[str, Any], dataset: Any, batch: int, factory: Any = dlrm.GroupedRows,
              placed: Any = ()) -> Any:
    main = next(iter(sessions))
    context = PipelineContext(sessions=sessions, dataset=dataset, batch_size=batch, outputs=(), postprocess=None,
                              main_role=main, placed=placed)
    return factory(context)


def _expected(dataset: Any, indices: list[int]) -> list[np.ndarray]:
    from mlpi.models.dlrm_graph import known_prediction

    out = []
    for i in indices:
        sample = dataset.sample(i)
        prediction = known_prediction(sample[DENSE_INPUT], sample[SPARSE_INPUT], SMALL)[:, 0]
        out.append(np.stack([prediction, sample[LABEL_INPUT]], axis=1).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlpi.models.dlrm_graph import write_known

    return write_known(tmp_path_factory.mktemp("known") / "known.onnx", SMALL)


# --------------------------------------------------------------------------- the model's facts


def test_rules_are_mlperf_confs_and_the_last_rounds() -> None:
    conf = (REFERENCE / "loadgen" / "mlperf.conf").read_text() if REFERENCE.exists() else ""
    for name, fraction in (("dlrm-v2-99", 0.99), ("dlrm-v2-99.9", 0.999)):
        spec = getattr(dlrm, name.replace("-", "_").replace(".", "_"))()
        rules = spec.rules
        assert spec.name == name and rules.loadgen_key == "dlrm-v2" and rules.round == "v5.1"
        assert rules.quality is not None and rules.quality.value == pytest.approx(80.31 * fraction)
        assert (rules.server_latency_ms, rules.performance_sample_count, rules.offline_min_samples) == (60, 204800, 24576)
        assert rules.dataset_size == 330067 and dict(rules.required_scenarios) == {"datacenter": ("Server", "Offline")}
        assert spec.grouped_samples and spec.datasets == ("criteo",) and spec.repeated_responses == "first"
        if conf:
            assert "dlrm-v2.*.performance_sample_count_override = 204800" in conf
            assert "dlrm-v2.Server.target_latency = 60" in conf and "dlrm-v2.Offline.min_query_count = 24576" in conf


def test_options_configure_the_tables_and_the_shards() -> None:
    base = dlrm.dlrm_v2_99()
    assert base.options == dlrm.DlrmOptions() and base.unofficial and "10,000" in base.unofficial
    sharded = base.configure(dlrm.DlrmOptions(max_rows=500, shards=3))  # type: ignore[misc]
    assert list(sharded.graphs) == ["dense", "tables0", "tables1", "tables2"]
    assert sharded.placement is not None and sharded.placement(2) == {"tables0": (0,), "tables1": (1,), "tables2": (0,)}
    assert sharded.extra["random_graph_name"] != base.extra["random_graph_name"]
    assert "500" in (sharded.unofficial or "")


def test_shards_hold_every_table_once_and_balance_rows() -> None:
    from mlpi.models.dlrm_graph import shard_features

    tables = Tables(max_rows=10_000)
    for shards in (1, 2, 4, 8, 26):
        parts = shard_features(tables, shards)
        assert sorted(k for part in parts for k in part) == list(range(26)) and all(parts)
        held = [sum(tables.sizes[k] for k in part) for part in parts]
        assert max(held) - min(held) <= max(tables.sizes), held


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("batch", [1, 150, 700, 5000])
def test_responses_are_prediction_label_pairs_per_row(known: Path, batch: int) -> None:
    dataset = _dataset(count=12, seed=3)
    session = _Session(known)
    pipeline = _pipeline({"model": session}, dataset, batch)
    # A batch of one row costs a whole pass over the graph's weights (~20 ms): for it, three
    # samples (out of order, one repeated; 400 rows) prove the split as the five (1,100 rows) do.
    indices = [7, 0, 7] if batch == 1 else [4, 0, 7, 7, 11]
    responses = pipeline(indices)
    for j, want in enumerate(_expected(dataset, indices)):
        got = np.frombuffer(responses.sample(j), dtype=np.float32).reshape(-1, 2)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert max(session.rows_seen) <= batch and sum(session.rows_seen) == int(dataset.sample_rows()[indices].sum())


def test_one_sample_that_fits_runs_from_the_datasets_memory(known: Path) -> None:
    dataset = _dataset(count=3)
    seen: list[np.ndarray] = []
    session = _Session(known)
    inner = session.run
    session.run = lambda feeds: (seen.append(feeds[SPARSE_INPUT]), inner(feeds))[1]  # type: ignore[method-assign]
    _pipeline({"model": session}, dataset, 4096)([1])
    assert np.shares_memory(seen[0], dataset.sample(1)[SPARSE_INPUT])


def test_a_fixed_batch_program_gets_full_batches_and_the_same_answers(known: Path) -> None:
    dataset = _dataset(count=6, seed=1)
    indices = [5, 2, 3]
    want = _pipeline({"model": _Session(known)}, dataset, 64)(indices)
    fixed = _Session(known, fixed=64)
    got = _pipeline({"model": fixed}, dataset, 64)(indices)
    assert set(fixed.rows_seen) == {64}
    for j in range(len(indices)):
        np.testing.assert_array_equal(np.frombuffer(got.sample(j), np.float32), np.frombuffer(want.sample(j), np.float32))


def test_a_backend_that_answers_fewer_rows_fails_the_batch(known: Path) -> None:
    dataset = _dataset(count=2)
    with pytest.raises(RunFailed, match="rows"):
        _pipeline({"model": _Session(known, short=True)}, dataset, 100)([0, 1])


def test_a_backend_that_answers_two_values_a_row_fails_the_batch(known: Path) -> None:
    dataset = _dataset(count=2)
    with pytest.raises(RunFailed, match="one prediction a row"):
        _pipeline({"model": _Session(known, wide=True)}, dataset, 100)([0, 1])


@pytest.mark.parametrize("shards", [2, 5])
def test_tables_split_over_units_answer_as_the_one_graph_does(tmp_path: Path, shards: int) -> None:
    from mlpi.models.dlrm_graph import write_random, write_sharded

    tables = Tables(max_rows=300)
    whole = _Session(write_random(tmp_path / "whole.onnx", 4, tables))
    paths = write_sharded(tmp_path / "split", 4, tables, shards)
    sessions = {role: _Session(path) for role, path in paths.items()}
    units = [(f"unit{k}", {"dense": sessions["dense"], f"tables{k}": sessions[f"tables{k}"]}) for k in range(shards)]
    dataset = _dataset(count=5, seed=9)
    indices = [0, 3, 4]
    want = _pipeline({"model": whole}, dataset, 256)(indices)
    split = _pipeline({"dense": sessions["dense"]}, dataset, 256,
                      lambda context: dlrm.ShardedRows(context, tables, shards), placed=units)
    got = split(indices)
    for j in range(len(indices)):
        np.testing.assert_allclose(np.frombuffer(got.sample(j), np.float32), np.frombuffer(want.sample(j), np.float32),
                                   rtol=1e-5, atol=1e-6)
    assert all(sessions[f"tables{k}"].rows_seen for k in range(shards)), "every shard was asked"


# --------------------------------------------------------------------------- runs


def _mlpi(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpi", *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)


def _perfect_day(folder: Path, rows: int) -> None:
    """Fake day-23 files whose label is 1 exactly where the known graph predicts above the
    median: a perfect ranking, AUC 100% by construction."""
    dense_path, _, labels_path = write_fake_day23(folder, rows, seed=5, variant="debug")
    dense = np.load(dense_path)
    labels = (dense[:, 0] > np.median(dense[:, 0])).astype(np.int32).reshape(-1, 1)
    np.save(labels_path, labels)


@pytest.mark.slow
def test_an_accuracy_run_scores_the_known_auc_as_mlcommons_does(known: Path, tmp_path: Path) -> None:
    data = tmp_path / "day23"
    _perfect_day(data, 6000)
    done = _mlpi("run", "--model", "dlrm-v2-99", "-M", "max_rows=100", "--model-path", str(known), "--dataset", "criteo",
                 "--dataset-path", str(data), "--mode", "accuracy", "-s", "Offline", "--output", str(tmp_path / "results"),
                 cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    from conftest import only_run_dir

    run = only_run_dir(tmp_path / "results")
    line = (run / "Offline" / "accuracy" / "accuracy.txt").read_text().strip()
    assert line.startswith("AUC=100.000%, accuracy=") and "total=6000," in line, line
    result = json.loads((run / "result.json").read_text())
    assert result["model"]["options"] == {"max_rows": 100, "shards": 1} and result["model"]["official"] is False
    assert result["tests"][0]["accuracy"]["passed"] is True
    # every row's response is [known prediction, label]
    dataset = Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, path=data))
    dataset.load(list(range(dataset.count)))
    from mlpi.core.contract.accuracy import read_accuracy_log

    logged = read_accuracy_log(run / "Offline" / "accuracy" / "mlperf_log_accuracy.json", "first")
    assert sorted(logged) == list(range(dataset.count))
    for index, want in zip(range(dataset.count), _expected(dataset, list(range(dataset.count)))):
        np.testing.assert_allclose(np.frombuffer(logged[index], np.float32).reshape(-1, 2), want, rtol=1e-6, atol=1e-6)
    if importlib.util.find_spec("sklearn") is None or not SCRIPT.exists():
        pytest.skip("accuracy-dlrm.py needs scikit-learn and the pinned MLCommons scripts")
    official = subprocess.run([sys.executable, str(SCRIPT), "--mlperf-accuracy-file",
                               str(run / "Offline" / "accuracy" / "mlperf_log_accuracy.json")],
                              cwd=SCRIPT.parent, capture_output=True, text=True, timeout=600, check=False)
    assert official.returncode == 0, official.stderr[-2000:]
    theirs = [x for x in official.stdout.splitlines() if x.startswith("AUC=")]
    assert theirs == [line]
    scored = _mlpi("score", str(run), cwd=tmp_path)
    assert scored.returncode == 0 and line in scored.stdout, scored.stdout + scored.stderr


@pytest.mark.slow
def test_a_quick_run_counts_rows_in_offline_and_server(tmp_path: Path) -> None:
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "-s", "Offline", "-s",
                 "Server", "--duration", "3", "--batch-size", "1000", "--output", str(tmp_path / "results"), cwd=tmp_path)
    # 3: a test ran INVALID (a CPU misses the 60 ms Server bound; the counting is what is checked)
    assert done.returncode in (0, 3), done.stdout[-2000:] + done.stderr[-3000:]
    assert "1000 rows" in done.stdout and "not the official model" in done.stdout
    from conftest import read_result

    result = read_result(tmp_path / "results")
    assert result["dataset"]["name"] == "criteo" and result["model"]["official"] is False
    for test in result["tests"]:
        assert test["status"] == "ok" and test["batch_size"] == 1000 and test["batch_unit"] == "rows"
        (unit,) = test["devices"]
        assert unit["rows"] >= unit["samples"] * 100  # groups of 100-700 rows
        assert max(int(size) for size in unit["batch_sizes"]) <= 10  # at most 1000 rows: 10 samples


@pytest.mark.slow
def test_tables_split_over_four_simulated_cards(tmp_path: Path) -> None:
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "-M", "shards=4",
                 "--backend", "qaic", "--device", "qaic:0-3", "-o", "max_batch_size=1024", "-s", "Offline",
                 "--duration", "3", "--output", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "4 qaic session(s)" in done.stdout + done.stderr or "qaic:3" in done.stdout
    from conftest import read_result

    result = read_result(tmp_path / "results")
    assert result["model"]["options"]["shards"] == 4 and result["simulated"] is True
    (test,) = result["tests"]
    assert test["status"] == "ok" and {unit["device"] for unit in test["devices"]} == {f"qaic:{k}" for k in range(4)}


def test_synthetic_data_cannot_make_grouped_samples(tmp_path: Path) -> None:
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "--dataset", "synthetic",
                 "--quick", "--output", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "error: dataset 'synthetic' makes samples of one row each" in done.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


@pytest.mark.parametrize(("option", "words"), [
    ("max_rows=0", "it takes 1 or more"),
    ("shards=27", "1 to 26"),
    ("bogus=1", "unknown option 'bogus' for model"),
    ("max_rows=1000000", "past the 1.8 GB an ONNX file can hold"),
])
def test_bad_model_options_are_one_error(tmp_path: Path, option: str, words: str) -> None:
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", option, "--quick",
                 "--output", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], done.stderr


def test_an_index_beyond_its_table_fails_the_test_with_one_error(tmp_path: Path) -> None:
    data = tmp_path / "day23"
    write_fake_day23(data, 2000, seed=2, variant="debug")
    sparse = data / "day_23_sparse_multi_hot_debug.npz"
    members = dict(np.load(sparse))
    members["5"] = members["5"].copy()
    members["5"][7, 0] = 3  # feature 5's table has 3 rows
    np.savez(sparse, **{name.removesuffix(".npy"): value for name, value in members.items()})
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "--dataset", "criteo",
                 "--dataset-path", str(data), "-s", "Offline", "--quick", "--output", str(tmp_path / "results"),
                 cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "feature 5" in errors[0] and "3" in errors[0], done.stderr


@pytest.mark.slow
def test_random_weights_may_run_the_accuracy_path_and_say_so(tmp_path: Path) -> None:
    """No official DLRM-v2 weights can be fetched, so, as the reference's debug profile does,
    an accuracy run on random weights is allowed: scored, and marked as not the model's."""
    data = tmp_path / "day23"
    write_fake_day23(data, 3000, seed=4, variant="debug")
    done = _mlpi("run", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100", "--dataset", "criteo",
                 "--dataset-path", str(data), "--mode", "accuracy", "-s", "Offline", "--output", str(tmp_path / "results"),
                 cwd=tmp_path)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-3000:]  # random labels: the target is missed
    assert "random weights - the accuracy checks the run, not the model" in done.stdout + done.stderr
    from conftest import read_result

    result = read_result(tmp_path / "results")
    assert "not the model" in result["model"]["note"]
    line = result["tests"][0]["accuracy"]["lines"][0]
    assert line.startswith("AUC=") and "total=3000," in line
