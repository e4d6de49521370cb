"""The criteo dataset: the reference's grouping (330,067 samples of day 23), the first-half
rule, rows read back from memory-mapped files, generated data, and every refusal as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import criteo, criteo_fake
from mlpi.datasets.criteo import (
    Criteo,
    CriteoDataset,
    SampleIndexError,
    first_half,
    group_offsets,
)
from mlpi.datasets.criteo_fake import write_fake_day23
from mlpi.models import dlrm_config
from mlpi.models.dlrm_config import (
    GROUP_SIZE_QUANTILES,
    GROUPING_SEED,
    HOTNESS,
    TABLE_SIZES,
    column_offsets,
)

PARAMS = DataParams.of(hotness=HOTNESS, table_sizes=TABLE_SIZES, group_size_quantiles=GROUP_SIZE_QUANTILES,
                       grouping_seed=GROUPING_SEED)
INPUTS = [TensorSpec("dense_features", "float32", (None, 13)), TensorSpec("sparse_features", "int32", (None, 214)),
          TensorSpec("labels", "float32", (None,))]
COLUMNS = column_offsets()
#: Rows of the small files most tests use (odd, so the first-half rule rounds up).
ROWS = 3001


def _open(path: Path | None, count: int | None = None, seed: int = 0, inputs: list[TensorSpec] = INPUTS,
          params: DataParams = PARAMS, performance_count: int | None = None) -> CriteoDataset:
    request = DatasetRequest(inputs=inputs, params=params, path=path, count=count, seed=seed,
                             performance_count=performance_count)
    dataset = Criteo().open(request)
    assert isinstance(dataset, CriteoDataset)
    return dataset


def _reference_offsets(n: int) -> list[int]:
    """multihot_criteo.py's loop, one draw at a time from numpy's global generator."""
    state = np.random.get_state()
    try:
        np.random.seed(123)
        quantile = list(GROUP_SIZE_QUANTILES)
        offsets, qo = [], 0
        while True:
            offsets.append(qo)
            qs = quantile[np.random.randint(low=0, high=len(quantile))]
            qo = min(qo + qs, n)
            if qo >= n:
                break
        offsets.append(qo)
        return offsets
    finally:
        np.random.set_state(state)


def _file_rows(folder: Path, variant: str = "official") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The files' rows read plainly (dense, sparse side by side, labels), to compare with."""
    dense_name, sparse_name, labels_name = criteo.file_names(variant)
    with np.load(folder / sparse_name) as members:
        sparse = np.concatenate([members[str(k)] for k in range(len(HOTNESS))], axis=1)
    return np.load(folder / dense_name), sparse, np.load(folder / labels_name).reshape(-1)


def _rewrite_member(folder: Path, k: int, array: np.ndarray, *, compressed: bool = False, drop: int | None = None) -> None:
    """Rewrite the official npz with member ``k`` replaced (or member ``drop`` left out)."""
    path = folder / criteo.file_names("official")[1]
    with np.load(path) as old:
        members = {name: old[name] for name in old.files}
    members[str(k)] = array
    if drop is not None:
        members.pop(str(drop))
    (np.savez_compressed if compressed else np.savez)(path, **members)


@pytest.fixture(scope="module")
def day23(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("criteo")
    write_fake_day23(folder, ROWS, seed=7)
    return folder


@pytest.fixture
def copy23(day23: Path, tmp_path: Path) -> Path:
    """A private copy of the small official files, for tests that damage them."""
    for path in day23.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


# --------------------------------------------------------------------------- grouping


@pytest.mark.parametrize("n", [1, 99, 100, 101, 701, 12_345, 200_000])
@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_grouping_is_the_reference_loop_however_it_is_chunked(n: int, chunk: int | None) -> None:
    assert group_offsets(n, GROUP_SIZE_QUANTILES, GROUPING_SEED, chunk=chunk).tolist() == _reference_offsets(n)


def test_the_official_day_23_gives_330067_samples() -> None:
    rows = first_half(178_274_637)
    assert rows == 89_137_319
    offsets = group_offsets(rows, GROUP_SIZE_QUANTILES, GROUPING_SEED)
    assert len(offsets) - 1 == 330_067
    assert offsets[0] == 0 and offsets[-1] == rows and offsets.dtype == np.int64
    sizes = np.diff(offsets)
    assert set(sizes[:-1].tolist()) <= set(GROUP_SIZE_QUANTILES) and 0 < sizes[-1] <= max(GROUP_SIZE_QUANTILES)


def test_names_and_fake_layout_agree_with_the_models_constants() -> None:
    assert (criteo.DENSE_INPUT, criteo.SPARSE_INPUT, criteo.LABEL_INPUT) == (
        dlrm_config.DENSE_INPUT, dlrm_config.SPARSE_INPUT, dlrm_config.LABEL_INPUT)
    assert criteo.DENSE_WIDTH == dlrm_config.DENSE_FEATURES
    assert criteo.CriteoParams.from_params(PARAMS).column_offsets().tolist() == COLUMNS.tolist()


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("chunk_rows", [None, 7, 250])
def test_samples_read_back_equal_the_files_rows(day23: Path, chunk_rows: int | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk_rows is not None:  # loads copy in steps of this many rows, a step crossing groups
        monkeypatch.setattr(criteo, "LOAD_CHUNK_ROWS", chunk_rows)
    dataset = _open(day23)
    dense, sparse, labels = _file_rows(day23)
    offsets = dataset.offsets
    assert offsets.tolist() == _reference_offsets(first_half(ROWS))
    assert dataset.sample_rows().tolist() == np.diff(offsets).tolist() and dataset.sample_rows().dtype == np.int64
    assert dataset.inputs == INPUTS
    picked = [5, 0, 3, dataset.count - 1, 3]
    dataset.load(picked)
    for index in set(picked):
        a, b = offsets[index], offsets[index + 1]
        feeds = dataset.sample(index)
        assert feeds["dense_features"].dtype == np.float32 and np.array_equal(feeds["dense_features"], dense[a:b])
        assert feeds["sparse_features"].dtype == np.int32 and np.array_equal(feeds["sparse_features"], sparse[a:b])
        assert feeds["labels"].dtype == np.float32 and np.array_equal(feeds["labels"], labels[a:b].astype(np.float32))
        assert all(not view.flags.owndata for view in feeds.values())  # views into the loaded arrays
        assert np.array_equal(dataset.ground_truth().labels(index), labels[a:b])


def test_a_second_load_keeps_the_first_and_unload_releases(day23: Path) -> None:
    dataset = _open(day23)
    dataset.load([1, 2])
    first = dataset.sample(1)["sparse_features"].copy()
    dataset.load([4, 2])
    assert np.array_equal(dataset.sample(1)["sparse_features"], first)
    dataset.unload([1])
    with pytest.raises(SampleIndexError) as excinfo:
        dataset.sample(1)
    assert isinstance(excinfo.value, IndexError)
    one_line_error(excinfo, "sample 1", "not loaded")
    dataset.sample(4)
    with pytest.raises(DatasetError) as excinfo:
        dataset.load([dataset.count])
    one_line_error(excinfo, f"sample {dataset.count}")
    with pytest.raises(DatasetError) as excinfo:
        dataset.gather([2], {})
    one_line_error(excinfo, "cannot be gathered")


def test_first_half_only_for_the_official_names(tmp_path: Path) -> None:
    for variant in ("official", "sample", "debug"):
        folder = tmp_path / variant
        write_fake_day23(folder, 1001, seed=3, variant=variant)
        dataset = _open(folder)
        used = 501 if variant == "official" else 1001
        assert dataset.offsets[-1] == used, variant
        described = dataset.describe()
        assert (described["variant"], described["first_half"], described["rows"]) == (variant, variant == "official", used)
        assert described["groups"] == dataset.count == len(_reference_offsets(used)) - 1
        dataset.load([dataset.count - 1])
        a, b = dataset.offsets[-2], dataset.offsets[-1]
        assert np.array_equal(dataset.sample(dataset.count - 1)["dense_features"], _file_rows(folder, variant)[0][a:b])


def test_official_names_are_preferred(tmp_path: Path) -> None:
    write_fake_day23(tmp_path, 900, seed=1, variant="debug")
    assert _open(tmp_path).describe()["variant"] == "debug"
    write_fake_day23(tmp_path, 700, seed=1, variant="sample")
    assert _open(tmp_path).describe()["variant"] == "sample"
    write_fake_day23(tmp_path, 800, seed=1, variant="official")
    assert _open(tmp_path).describe()["rows_in_files"] == 800


def test_count_keeps_the_first_groups(day23: Path) -> None:
    whole = _open(day23)
    three = _open(day23, count=3, performance_count=2)
    assert three.count == 3 and three.offsets.tolist() == whole.offsets[:4].tolist()
    assert three.performance_count == 2 and whole.performance_count == whole.count
    assert len(three.ground_truth()) == 3 and len(three.ground_truth().row_labels) == whole.offsets[3]
    assert _open(day23, count=whole.count).count == whole.count
    with pytest.raises(DatasetError) as excinfo:
        _open(day23, count=0)
    one_line_error(excinfo, "--count 0", "no samples")
    with pytest.raises(DatasetError) as excinfo:
        _open(day23, count=whole.count + 1)
    one_line_error(excinfo, f"--count {whole.count + 1}", f"{whole.count} criteo samples")


def test_files_are_memory_mapped(day23: Path) -> None:
    dataset = _open(day23)
    files = dataset.source
    assert isinstance(files, criteo.DayFiles)
    assert isinstance(files.dense, np.memmap) and isinstance(files.labels, np.memmap)
    assert all(isinstance(member, np.memmap) for member in files.sparse)
    truth = dataset.ground_truth()
    assert isinstance(truth.row_labels, np.memmap) and dataset.has_ground_truth


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def large23(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """200,000 rows (about 180 MB): the memory a load costs must not follow the file's size."""
    folder = tmp_path_factory.mktemp("criteo-large")
    write_fake_day23(folder, 200_000, seed=5, variant="debug")
    return folder, sum(path.stat().st_size for path in folder.iterdir())


def test_loading_a_few_groups_allocates_only_their_rows(large23: tuple[Path, int]) -> None:
    """numpy reports its allocations to tracemalloc (mapped file pages are none): reading a
    file whole, or copying an unaligned npz member whole (np.take does), shows in the peak."""
    folder, size = large23
    tracemalloc.start()
    try:
        dataset = _open(folder)
        picked = [0, dataset.count // 2, dataset.count - 1]
        dataset.load(picked)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = int(dataset.sample_rows()[picked].sum())
    loaded = sum(a.nbytes for block in dataset._blocks for a in block.arrays.values())
    assert loaded == rows * (13 * 4 + 214 * 4 + 4)
    assert size > 150e6 and peak < size / 20, (peak, size)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_loading_a_group_keeps_the_resident_set_far_below_the_file(large23: tuple[Path, int]) -> None:
    """Generous: a page fault may map a whole large folio (up to 2 MB) of each of the 28 arrays."""
    folder, size = large23
    before = _rss()
    dataset = _open(folder)
    dataset.load([dataset.count // 2])
    assert _rss() - before < size / 2, (_rss() - before, size)


# --------------------------------------------------------------------------- generated data


def test_generated_groups_depend_only_on_seed_and_index() -> None:
    alone = _open(None, seed=11)
    assert alone.count == criteo.DEFAULT_FAKE_GROUPS and alone.has_ground_truth
    assert alone.offsets.tolist() == criteo.fake_group_offsets(criteo.DEFAULT_FAKE_GROUPS, GROUP_SIZE_QUANTILES,
                                                               GROUPING_SEED).tolist()
    assert alone.offsets.tolist()[:50] == _reference_offsets(100_000)[:50]
    alone.load([7])
    crowd = _open(None, seed=11, count=40)
    crowd.load(range(40))
    other = _open(None, seed=12, count=8)
    other.load([7])
    for name in ("dense_features", "sparse_features", "labels"):
        assert np.array_equal(alone.sample(7)[name], crowd.sample(7)[name])
        assert not np.array_equal(alone.sample(7)[name], other.sample(7)[name])
    assert not np.array_equal(crowd.sample(7)["dense_features"][:10], crowd.sample(8)["dense_features"][:10])
    assert np.array_equal(alone.ground_truth().labels(7), alone.sample(7)["labels"])
    rows = np.concatenate([crowd.sample(i)["sparse_features"] for i in range(40)])
    limits = np.repeat(TABLE_SIZES, HOTNESS)
    assert rows.min() >= 0 and (rows < limits).all() and (rows.max(axis=0) > limits // 2).any()
    dense = np.concatenate([crowd.sample(i)["dense_features"] for i in range(40)])
    assert dense.min() >= 0 and dense.max() < 9 and set(np.unique(crowd.sample(3)["labels"])) <= {0.0, 1.0}
    assert crowd.describe()["variant"] == "generated" and crowd.describe()["path"] is None
    with pytest.raises(DatasetError) as excinfo:
        _open(None, count=0)
    one_line_error(excinfo, "--count 0")


# --------------------------------------------------------------------------- refusals


def test_missing_files(tmp_path: Path, copy23: Path) -> None:
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "empty")
    one_line_error(excinfo, "not a folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "empty")
    one_line_error(excinfo, "no criteo day-23 files", "day_23_dense.npy", "day_23_sparse_multi_hot.npz", "day_23_labels.npy",
           "day_23_labels_debug.npy")
    (copy23 / "day_23_labels.npy").unlink()
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "only some", "day_23_labels.npy missing")


@pytest.mark.parametrize("keep", [10, 100, 0, -1000])
def test_truncated_npy(copy23: Path, keep: int) -> None:
    path = copy23 / "day_23_dense.npy"
    data = path.read_bytes()
    path.write_bytes(data[:keep])  # a negative keep drops the tail
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "day_23_dense.npy", "truncated or not a .npy")


def test_truncated_npz(copy23: Path) -> None:
    path = copy23 / "day_23_sparse_multi_hot.npz"
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "day_23_sparse_multi_hot.npz", "truncated")


def test_compressed_npz(copy23: Path) -> None:
    with np.load(copy23 / "day_23_sparse_multi_hot.npz") as old:
        member = old["0"]
    _rewrite_member(copy23, 0, member, compressed=True)
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "0.npy", "compressed")
    assert "np.savez" in (excinfo.value.hint or "")


def test_missing_member(copy23: Path) -> None:
    _rewrite_member(copy23, 0, np.zeros((ROWS, 3), np.int32), drop=25)
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "no member 25.npy")


@pytest.mark.parametrize(("array", "words"), [
    (np.zeros((ROWS, 2), np.int32), ("2.npy", "[3001, 2]", "feature 2 takes 1")),
    (np.zeros((ROWS, 1), np.int64), ("2.npy", "int64", "not int32")),
    (np.zeros((ROWS - 1, 1), np.int32), ("2.npy", "3000 rows", "3001")),
])
def test_member_of_the_wrong_shape_or_dtype(copy23: Path, array: np.ndarray, words: tuple[str, ...]) -> None:
    _rewrite_member(copy23, 2, array)
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, *words)


def test_dense_of_the_wrong_width(copy23: Path) -> None:
    np.save(copy23 / "day_23_dense.npy", np.zeros((ROWS, 12), np.float32))
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "day_23_dense.npy", "[3001, 12]", "float32 [N, 13]")


def test_labels_of_the_wrong_length(copy23: Path) -> None:
    np.save(copy23 / "day_23_labels.npy", np.zeros((ROWS + 4, 1), np.int32))
    with pytest.raises(DatasetError) as excinfo:
        _open(copy23)
    one_line_error(excinfo, "day_23_labels.npy", "3005 labels", "3001 rows")


def test_flat_labels_are_accepted(copy23: Path) -> None:
    labels = np.load(copy23 / "day_23_labels.npy").reshape(-1)
    np.save(copy23 / "day_23_labels.npy", labels)
    dataset = _open(copy23)
    dataset.load([1])
    a, b = dataset.offsets[1], dataset.offsets[2]
    assert np.array_equal(dataset.sample(1)["labels"], labels[a:b])


@pytest.mark.parametrize("value", [TABLE_SIZES[3], -1])
def test_an_index_outside_its_table(copy23: Path, value: int) -> None:
    dataset = _open(copy23)
    group = 4
    row = int(dataset.offsets[group]) + 2
    with np.load(copy23 / "day_23_sparse_multi_hot.npz") as old:
        member = old["3"].copy()
    member[row, 1] = value
    _rewrite_member(copy23, 3, member)
    dataset = _open(copy23)
    dataset.load([0, 1])  # the bad row is not in these groups
    with pytest.raises(DatasetError) as excinfo:
        dataset.load([2, group, 5])
    one_line_error(excinfo, "feature 3", f"sample {group}", f"index {value}", f"table of {TABLE_SIZES[3]} rows", f"row {row}")
    with pytest.raises(SampleIndexError):
        dataset.sample(group)


@pytest.mark.parametrize(("inputs", "words"), [
    ([TensorSpec("dense", "float32", (None, 13)), *INPUTS[1:]], ("unknown", "dense", "missing: dense_features")),
    (INPUTS[:1], ("missing: sparse_features",)),
    ([INPUTS[0], TensorSpec("sparse_features", "int64", (None, 214))], ("'sparse_features'", "int64", "int32")),
    ([INPUTS[0], TensorSpec("sparse_features", "int32", (None, 26))], ("'sparse_features'", "[?, 26]", "[?, 214]")),
    ([*INPUTS, INPUTS[2]], ("repeated: labels",)),
])
def test_inputs_it_cannot_feed(day23: Path, inputs: list[TensorSpec], words: tuple[str, ...]) -> None:
    for path in (day23, None):
        with pytest.raises(DatasetError) as excinfo:
            _open(path, inputs=inputs)
        one_line_error(excinfo, *words)


def test_labels_input_is_optional(day23: Path) -> None:
    dataset = _open(day23, inputs=INPUTS[:2])
    dataset.load([0])
    assert set(dataset.sample(0)) == {"dense_features", "sparse_features"}


def test_model_without_the_data_parameters() -> None:
    with pytest.raises(DatasetError) as excinfo:
        _open(None, params=DataParams.of(hotness=HOTNESS))
    one_line_error(excinfo, "table_sizes")
    with pytest.raises(DatasetError) as excinfo:
        _open(None, params=DataParams.of(**{**PARAMS.values, "group_size_quantiles": (100, 0)}))
    one_line_error(excinfo, "group_size_quantiles")
    with pytest.raises(DatasetError) as excinfo:
        _open(None, params=DataParams.of(**{**PARAMS.values, "table_sizes": TABLE_SIZES[:-1]}))
    one_line_error(excinfo, "26 hotness values but 25 table sizes")


# --------------------------------------------------------------------------- the writer


def test_writer_layout(tmp_path: Path) -> None:
    dense_path, sparse_path, labels_path = write_fake_day23(tmp_path, 500, seed=2, variant="sample", index_limit=3)
    assert [p.name for p in (dense_path, sparse_path, labels_path)] == list(criteo.file_names("sample"))
    assert np.load(dense_path).dtype == np.float32 and np.load(dense_path).shape == (500, 13)
    labels = np.load(labels_path)
    assert labels.dtype == np.int32 and labels.shape == (500, 1) and set(np.unique(labels)) == {0, 1}
    with zipfile.ZipFile(sparse_path) as archive:
        assert [i.filename for i in archive.infolist()] == [f"{k}.npy" for k in range(26)]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    with np.load(sparse_path) as members:
        for k, hot in enumerate(HOTNESS):
            member = members[str(k)]
            assert member.dtype == np.int32 and member.shape == (500, hot)
            assert member.min() >= 0 and member.max() < min(3, TABLE_SIZES[k])
    again = tmp_path / "again"
    write_fake_day23(again, 500, seed=2, variant="sample", index_limit=3)
    assert (again / sparse_path.name).read_bytes() == sparse_path.read_bytes()


def test_writer_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert criteo_fake.main([str(tmp_path / "out"), "--rows", "50", "--variant", "debug", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "day_23_dense_debug.npy" in printed and "50 rows" in printed
    assert _open(tmp_path / "out").offsets[-1] == 50
    for argv in ([str(tmp_path)], [str(tmp_path), "--rows", "0"], [str(tmp_path), "--rows", "5", "--variant", "full"],
                 [str(tmp_path), "--rows", "5", "--index-limit", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            criteo_fake.main(argv)
        assert exit_info.value.code != 0
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_writer_runs_as_a_module(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlpi.datasets.criteo_fake", str(tmp_path), "--rows", "20"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "day_23_sparse_multi_hot.npz" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "mlpi.datasets.criteo_fake", str(tmp_path), "--rows", "-3"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--rows" in bad.stderr
