"""The numpy dataset: .npz files and folders of .npy files, checked against the model's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import only_run_dir, run_cli

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.numpy_files import NumpyFiles, file_stem
from mlpi.testing import tiny_models

X = [TensorSpec("x", "float32", (None, 16))]
TWO = [TensorSpec("input:0", "float32", (None, 4)), TensorSpec("ids/1", "int64", (None, 4))]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLPI_CACHE", str(root))
    return root


def gather(dataset, indices: list[int]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    dataset.load(sorted(set(indices)))
    out = {s.name: np.zeros((len(indices), *s.sample_shape), dtype=s.dtype) for s in dataset.inputs}
    dataset.gather(indices, out)
    return out


def open_error(inputs: list[TensorSpec], path: Path | None, count: int | None = None) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        NumpyFiles().open(DatasetRequest(inputs, path=path, count=count, seed=0))
    assert info.value.hint, info.value.message
    return info.value


def test_file_names_replace_unsafe_characters() -> None:
    assert file_stem("input_tensor:0") == "input_tensor_0"
    assert file_stem("serving/x y") == "serving_x_y"
    assert file_stem("a.b-c_D9") == "a.b-c_D9"


def test_npz_gathers_the_right_rows_casts_and_has_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 16))  # float64 data for a float32 input
    labels = rng.integers(0, 10, 20)
    np.savez(tmp_path / "data.npz", x=x, labels=labels, unrelated=np.arange(3))
    dataset = NumpyFiles().open(DatasetRequest(X, path=tmp_path / "data.npz", count=None, seed=0))
    assert dataset.count == 20
    assert dataset.describe() == {"kind": "numpy", "path": str(tmp_path / "data.npz"), "format": "npz", "count": 20}
    out = gather(dataset, [7, 0, 19, 7])
    assert out["x"].dtype == np.float32
    assert np.array_equal(out["x"], x[[7, 0, 19, 7]].astype(np.float32))
    assert np.array_equal(dataset.labels(), labels)

    limited = NumpyFiles().open(DatasetRequest(X, path=tmp_path / "data.npz", count=5, seed=0))
    assert limited.count == 5 and np.array_equal(limited.labels(), labels[:5])
    assert np.array_equal(gather(limited, [4])["x"][0], x[4].astype(np.float32))


def test_compressed_npz_without_labels(tmp_path: Path) -> None:
    x = np.arange(6 * 16, dtype=np.float32).reshape(6, 16)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    dataset = NumpyFiles().open(DatasetRequest(X, path=tmp_path / "c.npz", count=None, seed=0))
    assert dataset.labels() is None
    assert np.array_equal(gather(dataset, [5, 2])["x"], x[[5, 2]])


def test_folder_with_sanitised_names_is_memory_mapped(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    a = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    b = np.arange(12 * 4, dtype=np.int32).reshape(12, 4) * 10  # int32 feeds int64
    np.save(folder / "input_0.npy", a)
    np.save(folder / "ids_1.npy", b)
    np.save(folder / "labels.npy", np.arange(12)[::-1].copy())
    dataset = NumpyFiles().open(DatasetRequest(TWO, path=folder, count=None, seed=0))
    assert dataset.count == 12 and dataset.describe()["format"] == "folder"
    assert dataset.labels().tolist() == list(range(11, -1, -1))
    out = gather(dataset, [3, 11, 0])
    assert np.array_equal(out["input:0"], a[[3, 11, 0]])
    assert out["ids/1"].dtype == np.int64 and np.array_equal(out["ids/1"], b[[3, 11, 0]])
    assert isinstance(dataset._source.array("input_0"), np.memmap)  # not read into memory on open


def test_dynamic_dimensions_take_the_arrays_size(tmp_path: Path) -> None:
    x = np.ones((3, 7, 5), dtype=np.float32)
    np.savez(tmp_path / "d.npz", seq=x)
    dataset = NumpyFiles().open(DatasetRequest([TensorSpec("seq", "float32", (None, None, 5))], path=tmp_path / "d.npz", count=None, seed=0))
    assert dataset.inputs == [TensorSpec("seq", "float32", (None, 7, 5))]
    assert gather(dataset, [1])["seq"].shape == (1, 7, 5)


def test_missing_inputs_are_listed_with_what_the_data_has(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", input_0=np.zeros((4, 4), np.float32), other=np.zeros(4))
    error = open_error(TWO, tmp_path / "d.npz")
    assert "'ids/1' (ids_1)" in error.message and "input:0" not in error.message
    assert "input_0, other" in error.message

    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "wrong.npy", np.zeros((4, 4), np.float32))
    error = open_error(TWO, folder)
    assert "input_0.npy" in error.message and "ids_1.npy" in error.message and "wrong.npy" in error.message


def test_sample_counts_must_agree(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", input_0=np.zeros((4, 4), np.float32), ids_1=np.zeros((5, 4), np.int64))
    error = open_error(TWO, tmp_path / "d.npz")
    assert "5 samples" in error.message and "4" in error.message


def test_sample_shape_must_match(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 15), np.float32))
    error = open_error(X, tmp_path / "d.npz")
    assert "[15]" in error.message and "[16]" in error.message
    np.savez(tmp_path / "e.npz", x=np.zeros((4, 16, 1), np.float32))
    assert "[16, 1]" in open_error(X, tmp_path / "e.npz").message
    np.savez(tmp_path / "s.npz", x=np.float32(1))
    assert "scalar" in open_error(X, tmp_path / "s.npz").message


def test_dtype_must_cast_same_kind(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", input_0=np.zeros((4, 4), np.float32), ids_1=np.zeros((4, 4), np.float64))
    error = open_error(TWO, tmp_path / "d.npz")
    assert "float64" in error.message and "int64" in error.message
    np.savez(tmp_path / "s.npz", x=np.array([["a"] * 16] * 2))
    open_error(X, tmp_path / "s.npz")


def test_labels_must_be_one_per_sample(tmp_path: Path) -> None:
    x = np.zeros((4, 16), np.float32)
    np.savez(tmp_path / "a.npz", x=x, labels=np.zeros((4, 2)))
    assert "labels" in open_error(X, tmp_path / "a.npz").message
    np.savez(tmp_path / "b.npz", x=x, labels=np.zeros(3))
    error = open_error(X, tmp_path / "b.npz")
    assert "labels" in error.message and "4 samples" in error.message


def test_count_and_paths(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 16), np.float32))
    error = open_error(X, tmp_path / "d.npz", count=5)
    assert "5" in error.message and "4" in error.hint
    open_error(X, tmp_path / "d.npz", count=0)
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16), np.float32))
    assert "no samples" in open_error(X, tmp_path / "empty.npz").message
    assert "does not exist" in open_error(X, tmp_path / "nowhere.npz").message
    np.save(tmp_path / "x.npy", np.zeros((4, 16), np.float32))
    assert "neither a folder nor a .npz" in open_error(X, tmp_path / "x.npy").message
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    assert "bad.npz" in open_error(X, tmp_path / "bad.npz").message
    open_error(X, None)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (bytes(range(256)) * 4, ("x.npy", "is not a .npy file")),
        (b"hello, this is text\n" * 8, ("x.npy", "is not a .npy file")),
        (b"\x80\x04\x95" + bytes(40), ("x.npy", "is pickled Python data")),
    ],
    ids=["random-bytes", "text", "pickle"],
)
def test_a_file_that_is_not_npy_is_called_so(tmp_path: Path, content: bytes, words: tuple[str, ...]) -> None:
    # np.load takes any file without the .npy magic for a pickle: random bytes used to be
    # reported as "This file contains pickled (object) data"
    (tmp_path / "x.npy").write_bytes(content)
    error = open_error(X, tmp_path)
    for word in words:
        assert word in error.message, error.message
    assert "pickled (object) data" not in error.message and "allow_pickle" not in error.message
    assert "np.save" in error.hint


def test_input_names_that_collide_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a_b=np.zeros((4, 2), np.float32))
    inputs = [TensorSpec("a:b", "float32", (None, 2)), TensorSpec("a/b", "float32", (None, 2))]
    error = open_error(inputs, tmp_path / "d.npz")
    assert "a:b" in error.message and "a/b" in error.message


def test_cli_accuracy_run_on_an_npz(tmp_path: Path, cache: Path) -> None:
    model = tiny_models.matmul_model(tmp_path / "matmul.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((32, 16)).astype(np.float32), labels=rng.integers(0, 10, 32))
    proc = run_cli(
        ["run", "--model-path", str(model), "--dataset", "numpy", "--dataset-path", str(tmp_path / "data.npz"),
         "-s", "Offline", "--mode", "accuracy", "--count", "16", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
        env={"MLPI_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path / "r")
    assert (run_dir / "result.json").is_file()
    entries = json.loads((run_dir / "Offline" / "accuracy" / "mlperf_log_accuracy.json").read_text())
    assert sorted({e["qsl_idx"] for e in entries}) == list(range(16))  # --count 16 of the 32 rows
