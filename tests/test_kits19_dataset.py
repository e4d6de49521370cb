"""The kits19 dataset: MLCommons' preprocessed folder read safely, raw KiTS19 preprocessed as
the reference does (checked against a step-by-step recomputation), cached by content."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

pytest.importorskip("nibabel")
pytest.importorskip("scipy")

import nibabel
from scipy import ndimage

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import kits19
from mlpi.testing.kits19_fixture import synthetic_case, write_preprocessed, write_raw

PARAMS = {
    "roi_shape": (128, 128, 128), "overlap": 0.5, "target_spacing": (1.6, 1.2, 1.2), "clip": (-79.0, 304.0),
    "mean": 101.0, "std": 76.9, "padding_value": -2.2,
}
INPUT = TensorSpec("input", "float32", (None, 1, None, None, None))
#: Raw sizes and spacing chosen so that, at the target spacing, the volume is 110 x 200 x 180:
#: D is shorter than the window (edge-padded to 128), H's 200 % 64 = 8 < 32 (cropped to 192)
#: and W's 180 % 64 = 52 >= 32 (padded to 192).
RAW_SHAPE, RAW_SPACING = (88, 240, 144), (2.0, 1.0, 1.5)


def _open(path: Path, count: int | None = None, for_scoring: bool = False, **params: object) -> kits19.Kits19Dataset:
    request = DatasetRequest(inputs=[INPUT], params=DataParams({**PARAMS, **params}), path=path, count=count,
                             for_scoring=for_scoring)
    dataset = kits19.Kits19().open(request)
    assert isinstance(dataset, kits19.Kits19Dataset)
    return dataset


def _preprocessed_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    cases = {}
    for name, shape in (("case_00012", (128, 192, 128)), ("case_00003", (192, 128, 128)), ("case_00044", (128, 128, 192))):
        cases[name] = (rng.standard_normal(shape, dtype=np.float32), rng.integers(0, 3, shape, dtype=np.uint8))
    return cases


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    cases = _preprocessed_cases()
    return write_preprocessed(tmp_path_factory.mktemp("kits-pre"), cases), cases


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two non-inference cases, given out of order; case_00002 is small enough to be edge-padded on every axis."""
    folder = tmp_path_factory.mktemp("kits-raw")
    return write_raw(folder, {"case_00002": synthetic_case((40, 60, 60), seed=2),
                              "case_00001": synthetic_case(RAW_SHAPE, seed=1)}, RAW_SPACING)


# --------------------------------------------------------------------------- preprocessed form


def test_preprocessed_folder_round_trip(preprocessed: tuple[Path, dict], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cases = preprocessed
    dataset = _open(folder)
    names = list(cases)
    assert dataset.count == dataset.performance_count == 3
    assert dataset.cases == tuple(names)  # file_list's order, not sorted
    assert [spec.to_json() for spec in dataset.inputs] == [INPUT.to_json()]
    assert [dataset.shape(i) for i in range(3)] == [cases[n][0].shape for n in names]
    assert dataset.describe()["form"] == "preprocessed" and dataset.describe()["count"] == 3
    monkeypatch.setattr(kits19, "PROGRESS_AFTER_S", 0.0)
    dataset.load([2, 0])
    assert "mlpi: loading kits19 case 2/2 (case_00012)" in capsys.readouterr().err
    feeds = dataset.sample(0)
    volume = feeds["input"]
    assert volume.shape == (1, 1, *cases[names[0]][0].shape) and volume.dtype == np.float32
    assert volume.flags.c_contiguous and np.array_equal(volume[0, 0], cases[names[0]][0])
    assert dataset.sample(0)["input"] is volume  # no copy
    with pytest.raises(IndexError):
        dataset.sample(1)
    with pytest.raises(ValueError, match="sample()"):
        dataset.gather([0], {"input": np.empty((1, 1, 128, 192, 128), np.float32)})
    dataset.unload([0])
    with pytest.raises(IndexError):
        dataset.sample(0)
    truth = dataset.ground_truth()
    assert dataset.has_ground_truth and isinstance(truth, kits19.Kits19Truth)
    assert truth.cases == tuple(names) and truth.shape(1) == cases[names[1]][0].shape
    for i, name in enumerate(names):
        label = truth.label(i)
        assert label.dtype == np.uint8 and np.array_equal(label, cases[name][1])
    # the label is the same voxels as the NIfTI file accuracy_kits.py reads
    nifti = nibabel.load(str(folder / "nifti" / names[1] / "segmentation.nii.gz")).get_fdata().astype(np.uint8)
    assert np.array_equal(nifti, truth.label(1))
    assert np.array_equal(truth.affine(0), pickle.loads((folder / "preprocessed_files.pkl").read_bytes())
                          ["cases"][names[0]]["reshaped_affine"])


def test_count_takes_the_first_cases_and_scoring_reads_no_image(preprocessed: tuple[Path, dict],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cases = preprocessed
    dataset = _open(folder, count=2)
    assert dataset.count == 2 and dataset.cases == tuple(cases)[:2]
    with pytest.raises(DatasetError) as excinfo:
        _open(folder, count=4)
    one_line_error(excinfo, "--count 4")
    scoring = kits19.Kits19().open(DatasetRequest(inputs=[], params=DataParams(PARAMS), path=folder, for_scoring=True))
    truth = scoring.ground_truth()
    assert truth.cases == tuple(cases) and np.array_equal(truth.label(2), cases["case_00044"][1])


class _RunsCode:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"echo pwned > {self.target}",)


@pytest.mark.parametrize("where", ["index", "case"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, where: str) -> None:
    cases = {"case_00001": (np.zeros((128, 128, 128), np.float32), np.zeros((128, 128, 128), np.uint8))}
    folder = write_preprocessed(tmp_path / "pre", cases)
    target = tmp_path / "pwned"
    evil = pickle.dumps([_RunsCode(target), np.zeros(2)])
    (folder / ("preprocessed_files.pkl" if where == "index" else "case_00001.pkl")).write_bytes(evil)
    with pytest.raises(DatasetError) as excinfo:
        _open(folder).load([0])
    message = one_line_error(excinfo, "system", "refusing to load it", "pickles can run code")
    assert "which a KiTS19 preprocessed file never holds" in message
    assert not target.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_pickles_of_every_protocol_and_numpy_1_names_are_read(tmp_path: Path, protocol: int) -> None:
    content = [np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), np.ones((1, 2, 3, 4), np.uint8),
               {"affine": np.eye(4).T, "zoom": np.float64(1.5), "shape": (1, 2, 3, 4), "n": np.int64(3)}]
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    back = kits19.read_pickle(path)
    assert np.array_equal(back[0], content[0]) and back[0].dtype == np.float32 and back[1].dtype == np.uint8
    assert np.array_equal(back[2]["affine"], np.eye(4)) and back[2]["zoom"] == 1.5 and back[2]["n"] == 3
    if protocol == 0:  # the module names numpy 1 wrote
        path.write_bytes(pickle.dumps(content, protocol=0).replace(b"numpy._core.", b"numpy.core."))
        assert np.array_equal(kits19.read_pickle(path)[0], content[0])


def _broken_preprocessed(folder: Path, case: str) -> tuple[str, ...]:
    shape = (128, 128, 128)
    cases = {"case_00001": (np.zeros(shape, np.float32), np.zeros(shape, np.uint8)),
             "case_00002": (np.zeros(shape, np.float32), np.zeros(shape, np.uint8))}
    if case == "small":
        cases["case_00002"] = (np.zeros((128, 100, 128), np.float32), np.zeros((128, 100, 128), np.uint8))
    write_preprocessed(folder, cases)
    if case == "missing":
        (folder / "case_00002.pkl").unlink()
        return ("case_00002.pkl", "missing")
    if case == "small":
        return ("case_00002", "128x100x128", "smaller than")
    if case == "wrong-shape":
        with open(folder / "case_00002.pkl", "wb") as f:
            pickle.dump([np.zeros((1, 128, 128, 64), np.float32), np.zeros((1, 128, 128, 64), np.uint8)], f)
        return ("case_00002.pkl", "(1, 128, 128, 64)")
    if case == "not-arrays":
        with open(folder / "case_00002.pkl", "wb") as f:
            pickle.dump({"image": 1}, f)
        return ("case_00002.pkl", "[image float32, label uint8]")
    if case == "truncated":
        data = (folder / "case_00002.pkl").read_bytes()
        (folder / "case_00002.pkl").write_bytes(data[: len(data) // 2])
        return ("case_00002.pkl", "not a readable")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "small", "wrong-shape", "not-arrays", "truncated"])
def test_bad_preprocessed_data_is_one_error_line(tmp_path: Path, case: str) -> None:
    words = _broken_preprocessed(tmp_path / "pre", case)
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "pre").load([0, 1])
    one_line_error(excinfo, *words)


# --------------------------------------------------------------------------- forms and case selection


def test_a_folder_of_neither_form_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path)
    one_line_error(excinfo, "neither", "preprocessed_files.pkl", "case_XXXXX")
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "nothing-here")
    one_line_error(excinfo, "nothing-here")


def test_raw_cases_are_the_inference_cases_all_or_none(tmp_path: Path) -> None:
    for case in ("case_00300", *kits19.INFERENCE_CASES[::-1]):
        (tmp_path / "all" / case).mkdir(parents=True)
    assert kits19.select_raw_cases(tmp_path / "all") == list(kits19.INFERENCE_CASES)
    assert len(kits19.INFERENCE_CASES) == 43 and kits19.INFERENCE_CASES[-1] == "case_00400"
    for case in ("case_00210", "case_00001"):
        (tmp_path / "none" / case).mkdir(parents=True)
    assert kits19.select_raw_cases(tmp_path / "none") == ["case_00001", "case_00210"]
    for case in ("case_00000", "case_00003", "case_00001"):
        (tmp_path / "some" / case).mkdir(parents=True)
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "some")
    message = one_line_error(excinfo, "2 of the 43", "case_00005, case_00006, case_00012, case_00024, case_00034")
    assert "and 36 more" in message and "case_00041" not in message
    # the kits19 repository's root holds them under data/
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "some").rename(tmp_path / "repo" / "data" / "some")
    (tmp_path / "repo" / "data" / "some" / "case_00000").rename(tmp_path / "repo" / "data" / "case_00000")
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "repo")
    one_line_error(excinfo, str(tmp_path / "repo" / "data"), "1 of the 43")


def test_raw_data_without_nibabel_says_what_to_install(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(DatasetError) as excinfo:
        _open(raw)
    one_line_error(excinfo, "nibabel")
    assert excinfo.value.hint == "pip install 'mlpi[kits19]'"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_nifti_is_one_error_line_naming_it(tmp_path: Path, damage: str) -> None:
    folder = write_raw(tmp_path / "raw", {"case_00001": synthetic_case((40, 40, 40))}, RAW_SPACING)
    bad = folder / "case_00001" / "imaging.nii.gz"
    bad.write_bytes(b"not a nifti" if damage == "garbage" else bad.read_bytes()[:2000])
    with pytest.raises(DatasetError) as excinfo:
        _open(folder)
    one_line_error(excinfo, str(bad), "not a readable NIfTI")


# --------------------------------------------------------------------------- raw preprocessing


def _reference_steps(case: Path, target: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """preprocess.py's steps for one case, recomputed here directly with nibabel/scipy/numpy
    on (1, D, H, W) arrays; also the resampled shape, to show which branches ran."""
    roi, overlap, (low, high), mean, std, fill = (128, 128, 128), 0.5, (-79.0, 304.0), 101.0, 76.9, -2.2
    image_file, label_file = nibabel.load(str(case / "imaging.nii.gz")), nibabel.load(str(case / "segmentation.nii.gz"))
    spacing = image_file.header["pixdim"][1:4].tolist()
    image = image_file.get_fdata().astype(np.float32)
    label = label_file.get_fdata().astype(np.uint8)
    if spacing != list(target):
        factors = np.array(spacing) / np.array(target)
        image = ndimage.zoom(image, factors, order=1, mode="constant", cval=image.min(), grid_mode=False)
        label = ndimage.zoom(label, factors, order=0, mode="constant", cval=label.min(), grid_mode=False)
    resampled = image.shape
    image, label = image[np.newaxis], label[np.newaxis]
    image = (np.clip(image, low, high) - mean) / std
    # 1. edge padding up to the window
    extra = [max(0, r - n) for r, n in zip(roi, image.shape[1:])]
    widths = [(0, 0)] + [(e // 2, e - e // 2) for e in extra]
    image, label = np.pad(image, widths, mode="edge"), np.pad(label, widths, mode="edge")
    # 2. remainders under half a stride are cut away
    stride = [int(r * (1 - overlap)) for r in roi]
    sizes = image.shape[1:]
    cut = [n % s if n % s < s // 2 else 0 for n, s in zip(sizes, stride)]
    window = (Ellipsis, *(slice(c // 2, n - (c - c // 2)) for c, n in zip(cut, sizes)))
    image, label = image[window], label[window]
    # 3. the rest is padded with a constant up to a multiple of the stride (and the window)
    sizes = image.shape[1:]
    grow = [(s - n % s) % s for n, s in zip(sizes, stride)]
    grow = [g if n + g >= r else g + s for g, n, s, r in zip(grow, sizes, stride, roi)]
    widths = [(0, 0)] + [(g // 2, g - g // 2) for g in grow]
    image = np.pad(image, widths, mode="constant", constant_values=[fill])
    label = np.pad(label, widths, mode="constant", constant_values=[0])
    return image.astype(np.float32)[0], label.astype(np.uint8)[0], resampled


@pytest.mark.parametrize("target", [(1.6, 1.2, 1.2), RAW_SPACING])
def test_raw_preprocessing_equals_the_reference_steps(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      target: tuple[float, float, float]) -> None:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    dataset = _open(raw, target_spacing=target)
    assert dataset.cases == ("case_00001", "case_00002") and dataset.describe()["form"] == "raw"
    truth = dataset.ground_truth()
    dataset.load([0, 1])
    for i, case in enumerate(dataset.cases):
        image, label, resampled = _reference_steps(raw / case, target)
        if case == "case_00001":  # every branch: edge pad, crop, constant pad (or, unresampled, pad and crop)
            assert resampled == ((110, 200, 180) if target != RAW_SPACING else RAW_SHAPE)
            assert image.shape == ((128, 192, 192) if target != RAW_SPACING else (128, 256, 128))
        else:
            assert image.shape == (128, 128, 128)
        assert dataset.shape(i) == truth.shape(i) == image.shape
        assert np.array_equal(dataset.sample(i)["input"][0, 0], image)
        assert np.array_equal(truth.label(i), label)
        assert 1 in label and 2 in label
    if target != RAW_SPACING:
        # the padded border holds the padding value, the resampled volume kidneys
        assert np.all(dataset.sample(0)["input"][0, 0, :, :, :6] == np.float32(-2.2))
        assert np.allclose(truth.affine(0), [[0, 0, -1.2, 0], [0, -1.2, 0, 0], [-1.6, 0, 0, 0], [0, 0, 0, 1]])


def test_raw_cache_is_hit_then_rebuilt_when_damaged(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    real = kits19._preprocess_into

    def counting(staging: Path, root: Path, case: str, *args: object) -> object:
        calls.append(case)
        return real(staging, root, case, *args)

    monkeypatch.setattr(kits19, "_preprocess_into", counting)
    first = _open(raw)
    assert calls == ["case_00001", "case_00002"]
    assert "mlpi: preprocessing kits19 case 2/2 (case_00002)" in capsys.readouterr().err
    cache = Path(first.describe()["cache"])
    assert cache.parent == tmp_path / "cache" / "datasets" / "kits19"
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no staging folder left
    first.load([0])
    reference = first.sample(0)["input"].copy()

    calls.clear()
    second = _open(raw)
    assert calls == [] and second.describe()["cache"] == str(cache)
    second.load([0])
    assert np.array_equal(second.sample(0)["input"], reference)
    assert np.load(cache / "case_00001.image.npy", allow_pickle=False, mmap_mode="r").shape == reference.shape[2:]

    # scoring alone reads the cache, and builds none when there is none
    assert _open(raw, for_scoring=True).describe()["cache"] == str(cache)

    damaged = cache / "case_00002.label.npy"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    third = _open(raw)
    assert calls == ["case_00001", "case_00002"] and third.describe()["cache"] == str(cache)
    third.load([0])
    assert np.array_equal(third.sample(0)["input"], reference)

    calls.clear()
    (cache / "cases.json").write_text("{", encoding="utf-8")
    _open(raw)
    assert calls == ["case_00001", "case_00002"]

    # --count 1 keys its own cache of one case
    calls.clear()
    assert _open(raw, count=1).cases == ("case_00001",) and calls == ["case_00001"]


def test_scoring_raw_data_without_a_cache_preprocesses_labels_on_demand(raw: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    scoring = kits19.Kits19().open(DatasetRequest(inputs=[], params=DataParams(PARAMS), path=raw, for_scoring=True))
    assert not (tmp_path / "cache").exists()
    truth = scoring.ground_truth()
    for i, case in enumerate(truth.cases):
        _, label, _ = _reference_steps(raw / case, (1.6, 1.2, 1.2))
        assert truth.shape(i) == label.shape  # known from the headers alone
        assert np.array_equal(truth.label(i), label)
    assert not (tmp_path / "cache").exists()


def test_parameters_come_from_the_model(preprocessed: tuple[Path, dict]) -> None:
    folder, _ = preprocessed
    params = {k: v for k, v in PARAMS.items() if k != "padding_value"}
    with pytest.raises(DatasetError) as excinfo:
        kits19.Kits19().open(DatasetRequest(inputs=[INPUT], params=DataParams(params), path=folder))
    one_line_error(excinfo, "padding_value")
    with pytest.raises(DatasetError) as excinfo:
        kits19.Kits19().open(DatasetRequest(inputs=[TensorSpec("input", "float32", (None, 3, 224, 224))],
                                            params=DataParams(PARAMS), path=folder))
    one_line_error(excinfo, "'input'")


def test_a_pickle_building_an_object_array_over_its_own_bytes_is_refused(tmp_path: Path) -> None:
    """numpy.ndarray(shape, "O", buffer=...) would read the file's bytes as object pointers:
    the class cannot be called, and no dtype or array of Python objects is built."""
    class ObjectsOverBytes:
        def __reduce__(self) -> tuple:
            return (np.ndarray, ((2,), np.dtype("O"), b"\x00" * 16))

    class ObjectDtype:
        def __reduce__(self) -> tuple:
            return (np.dtype, ("O",))

    for name, payload in (("call", ObjectsOverBytes()), ("dtype", ObjectDtype()),
                          ("array", np.array([1, "x"], dtype=object))):
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps({"file_list": ["case_00000"], "cases": {"case_00000": {"reshaped_affine": payload}}}))
        with pytest.raises(DatasetError) as excinfo:
            kits19.read_pickle(path)
        assert "refusing to load it" in one_line_error(excinfo, str(path))
