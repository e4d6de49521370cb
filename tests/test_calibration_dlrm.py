"""DLRM-v2's int8 calibration: MLCommons' Criteo rows (a README range, not a list file), the
``criteo`` dataset opening row ranges of the whole day-23 files, and the feeds calibration
gives the graph, which must be the pipeline's own."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.backend import Capabilities
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.core.contract.pipeline import PipelineContext
from mlpi.datasets.criteo import (
    CALIBRATION_CHUNK_ROWS,
    Criteo,
    CriteoDataset,
    first_half,
)
from mlpi.datasets.criteo_fake import write_fake_day23
from mlpi.models import dlrm
from mlpi.models.calibration_lists import CRITEO
from mlpi.models.dlrm_config import (
    DENSE_INPUT,
    LABEL_INPUT,
    SPARSE_INPUT,
    column_offsets,
)
from tests.conftest import run_cli

README = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference" / "calibration" / "CriteoTerabyte" / "README.md"
#: Rows of the fake official day (odd: a run reads the first 501, calibration may read any).
ROWS = 1001
#: Two ranges out of file order: one in the second half a run never reads (two samples, the
#: second short), one in the first half (one short sample).
RANGES = ("501-900", "10-19")


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("criteo-calibration")
    write_fake_day23(folder, ROWS, seed=11, variant="official")
    return folder


def file_rows(folder: Path, rows: list[int]) -> dict[str, np.ndarray]:
    """The files' own rows, read whole with numpy (the fixture is small)."""
    dense = np.load(folder / "day_23_dense.npy")
    labels = np.load(folder / "day_23_labels.npy").reshape(-1)
    with np.load(folder / "day_23_sparse_multi_hot.npz") as members:
        sparse = np.concatenate([members[f"{k}.npy"] for k in range(len(column_offsets()) - 1)], axis=1)
    return {DENSE_INPUT: dense[rows], SPARSE_INPUT: sparse[rows], LABEL_INPUT: labels[rows].astype(np.float32)}


def open_ranges(folder: Path, names: tuple[str, ...]) -> CriteoDataset:
    dataset = Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, path=folder, names=names))
    assert isinstance(dataset, CriteoDataset)
    return dataset


def ranged(names: tuple[str, ...]) -> list[int]:
    out: list[int] = []
    for name in names:
        first, last = (int(v) for v in name.split("-"))
        out += range(first, last + 1)
    return out


# --------------------------------------------------------------------------- the official set


def test_the_shipped_range_is_mlcommons_readme_rows() -> None:
    """MLCommons publishes no list file: the shipped range must be the README's rows, the first
    128,000 of day 23's second half (the half a run never reads)."""
    assert Criteo.opens_by_name and CRITEO.dataset == "criteo"
    assert CRITEO.list_file.read_bytes() == b"89137319-89265318\n"
    first, last = (int(v) for v in CRITEO.names()[0].split("-"))
    assert first == first_half(178_274_637) and last - first + 1 == 128_000
    spec = dlrm.dlrm_v2_99()
    assert spec.calibration is CRITEO and dlrm.dlrm_v2_99_9().calibration is CRITEO
    assert spec.calibration_feeds is dlrm.calibration_feeds
    if README.is_file():
        text = README.read_text().replace(",", "")
        assert re.search(rf"from the {first}-th row to the {last}-th row", text), "the README's numbers changed"
        assert "178274637 rows" in text and "first 128000 rows" in text


# --------------------------------------------------------------------------- the dataset


def test_ranges_open_those_rows_in_list_order_in_chunks(day: Path) -> None:
    dataset = open_ranges(day, RANGES)
    assert dataset.sample_rows().tolist() == [CALIBRATION_CHUNK_ROWS, 400 - CALIBRATION_CHUNK_ROWS, 10]
    dataset.load(list(range(dataset.count)))
    got = {name: np.concatenate([dataset.sample(i)[name] for i in range(dataset.count)]) for name in
           (DENSE_INPUT, SPARSE_INPUT, LABEL_INPUT)}
    want = file_rows(day, ranged(RANGES))
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert dataset.describe()["row_ranges"] == list(RANGES)
    truth = dataset.ground_truth()
    assert np.array_equal(truth.labels(2), want[LABEL_INPUT][-10:])
    # a run still reads only the first half: calibration widened nothing
    assert Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, path=day)).offsets[-1] == first_half(ROWS)


def test_the_debug_layout_is_read_whole_too(tmp_path: Path) -> None:
    write_fake_day23(tmp_path, 300, seed=2, variant="debug")
    dataset = open_ranges(tmp_path, ("299-299", "0-2"))
    dataset.load([0, 1])
    dense = np.load(tmp_path / "day_23_dense_debug.npy")
    assert np.array_equal(dataset.sample(0)[DENSE_INPUT], dense[[299]])
    assert np.array_equal(dataset.sample(1)[DENSE_INPUT], dense[0:3])


@pytest.mark.parametrize(("name", "words"), [
    ("900-1001", "runs past the 1001 rows"),
    ("1001-1001", "runs past the 1001 rows"),
    ("20-10", "ends before it starts"),
    ("17", "is not a row range"),
    ("-1-5", "is not a row range"),
    ("a-b", "is not a row range"),
    ("1 - 5", "is not a row range"),
])
def test_a_bad_range_is_one_error_naming_it_and_the_row_count(day: Path, name: str, words: str) -> None:
    with pytest.raises(DatasetError) as caught:
        open_ranges(day, ("0-9", name))
    error = caught.value
    assert words in error.message and repr(name) in error.message and "1001" in error.message, error.message
    assert "\n" not in error.message and error.hint and "\n" not in error.hint


def test_ranges_need_the_files(day: Path) -> None:
    with pytest.raises(DatasetError, match="no folder is given"):
        Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, names=RANGES))


# --------------------------------------------------------------------------- the feeds


class Recorder:
    """A session that keeps what it is fed (copies) and answers zeros, one a row."""

    def __init__(self) -> None:
        self.outputs = [type("Spec", (), {"name": "prediction"})()]
        self.capabilities = Capabilities()
        self.fed: list[dict[str, np.ndarray]] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.fed.append({name: np.array(value) for name, value in feeds.items()})
        return {"prediction": np.zeros((len(next(iter(feeds.values()))), 1), np.float32)}


def test_calibration_feeds_are_what_the_pipeline_feeds(day: Path) -> None:
    dataset = open_ranges(day, RANGES)
    dataset.load(list(range(dataset.count)))
    session = Recorder()
    context = PipelineContext(sessions={"model": session}, dataset=dataset, batch_size=CALIBRATION_CHUNK_ROWS,
                              outputs=(), postprocess=None, main_role="model")
    pipeline = dlrm.GroupedRows(context)
    for index in range(dataset.count):
        pipeline([index])
        (fed,) = session.fed[-1:]
        (feed,) = list(dlrm.calibration_feeds(dataset, index))
        assert sorted(feed) == sorted(fed) == [DENSE_INPUT, SPARSE_INPUT]
        for name, value in fed.items():
            assert feed[name].dtype == value.dtype and np.array_equal(feed[name], value), (index, name)
    assert len(session.fed) == dataset.count  # one batch a sample: a chunk is at most one run


def test_int8_planning_reads_a_users_ranges_and_refuses_the_official_rows_a_small_day_lacks(
        day: Path, tmp_path: Path) -> None:
    from mlpi.core.engine.plan import ModelRef
    from mlpi.core.engine.precision import PrecisionOptions
    from mlpi.core.engine.precision_plan import PrecisionRequest, _calibration, _feeds
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model("dlrm-v2-99").configure(dlrm.DlrmOptions(max_rows=100))
    graph = spec.main_graph
    ref = ModelRef(spec.name, str(tmp_path / "unused.onnx"), "0" * 64, None, list(graph.inputs), list(graph.outputs))
    listed = tmp_path / "rows.txt"
    listed.write_text("\n".join(RANGES) + "\n")
    request = PrecisionRequest("int8", calibration=str(listed), calibration_path=str(day))
    calibration, data = _calibration(request, PrecisionOptions(), spec, registry, ref, None, None, None, 0)
    assert calibration.kind == "list" and not calibration.closed and calibration.dataset == "criteo"
    assert calibration.names == RANGES and calibration.count == data.count == 3
    feeds = list(_feeds(data, calibration.count, ref.inputs, spec.calibration_feeds)())
    want = file_rows(day, ranged(RANGES))
    assert [len(f[DENSE_INPUT]) for f in feeds] == data.sample_rows().tolist()
    for name in (DENSE_INPUT, SPARSE_INPUT):
        assert np.array_equal(np.concatenate([f[name] for f in feeds]), want[name]), name
    official = PrecisionRequest("int8", calibration_path=str(day))
    with pytest.raises(DatasetError, match=r"'89137319-89265318' runs past the 1001 rows"):
        _calibration(official, PrecisionOptions(), spec, registry, ref, None, None, None, 0)


def test_mlpi_quantize_derives_an_int8_dlrm_from_listed_rows(day: Path, tmp_path: Path) -> None:
    import onnx

    listed = tmp_path / "rows.txt"
    listed.write_text("501-900\n")
    proc = run_cli(["quantize", "--model", "dlrm-v2-99", "--weights", "random", "-M", "max_rows=100",
                    "--precision", "int8", "--calibration", str(listed), "--calibration-path", str(day), "--json"],
                   tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    calibration = out["record"]["transform"]["calibration"]
    assert calibration["kind"] == "list" and calibration["dataset"] == "criteo" and calibration["count"] == 2
    ops = {node.op_type for node in onnx.load(out["path"], load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
