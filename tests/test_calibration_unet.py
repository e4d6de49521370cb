"""int8 calibration for 3D-UNet: the kits19 dataset opened by MLPerf's calibration case names
(the folder the reference's ``preprocess.py --calibration`` writes, or raw KiTS19), and each
case's sliding windows fed to the graph exactly as the pipeline cuts them."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

pytest.importorskip("nibabel", reason="the kits19 fixture writes NIfTI files (pip install 'mlpi[kits19]')")
pytest.importorskip("scipy", reason="raw KiTS19 is resampled with scipy (pip install 'mlpi[kits19]')")

from mlpi.core.contract.backend import Capabilities, Session, TensorSpec
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.core.contract.pipeline import PipelineContext
from mlpi.core.engine.pieces import PieceDispatcher
from mlpi.datasets import kits19
from mlpi.models import unet3d
from mlpi.testing.kits19_fixture import synthetic_case, write_preprocessed, write_raw

ROI = unet3d.ROI
#: Calibration cases as the reference's calibration folder lists them; their windows: 2 and 4.
CALIBRATION = {"case_00050": (128, 128, 192), "case_00117": (192, 192, 128)}
RAW_SPACING = (2.0, 1.0, 1.5)


def _volumes(shapes: Mapping[str, tuple[int, int, int]], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {case: (rng.standard_normal(shape, dtype=np.float32), np.zeros(shape, np.uint8))
            for case, shape in shapes.items()}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference Makefile's build folder: the run's cases in ``preprocessed_data``, the
    calibration cases (``preprocess.py --calibration``) in ``calibration_data``."""
    folder = tmp_path_factory.mktemp("kits-build")
    write_preprocessed(folder / "calibration_data", _volumes(CALIBRATION, 1))
    write_preprocessed(folder / "preprocessed_data", _volumes({"case_00000": (128, 128, 128)}, 2))
    return folder


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kits-raw")
    return write_raw(folder, {"case_00117": synthetic_case((40, 60, 60), seed=3),
                              "case_00050": synthetic_case((50, 70, 60), seed=4)}, RAW_SPACING)


def _open(path: Path, names: tuple[str, ...] | None = None) -> kits19.Kits19Dataset:
    spec = unet3d.unet3d_99()
    request = DatasetRequest(inputs=[s.batch_first() for s in spec.sample_inputs or ()], params=spec.data, path=path,
                             names=names)
    dataset = kits19.Kits19().open(request)
    assert isinstance(dataset, kits19.Kits19Dataset)
    return dataset


def _images(dataset: kits19.Kits19Dataset) -> list[np.ndarray]:
    indices = list(range(dataset.count))
    dataset.load(indices)
    return [np.array(dataset.sample(i)["input"]) for i in indices]


# --------------------------------------------------------------------------- kits19 by name


@pytest.mark.parametrize("where", ["calibration_data", "."])
def test_named_cases_open_in_list_order_equal_to_a_normal_open(build: Path, where: str) -> None:
    """By name, from the calibration folder itself or the build folder holding it: the list's
    cases in the list's order (not the folder's), the voxels a normal open gives, no ground truth."""
    assert kits19.Kits19.opens_by_name
    normal = _open(build / "calibration_data")
    assert normal.cases == ("case_00050", "case_00117")
    named = _open(build / where, ("case_00117", "case_00050"))
    assert named.cases == ("case_00117", "case_00050") and named.count == 2
    assert named.ground_truth() is None and not named.has_ground_truth
    assert named.describe()["selected_by"] == "names"
    by_case = dict(zip(normal.cases, _images(normal), strict=True))
    images = _images(named)
    assert [image.shape for image in images] == [(1, 1, 192, 192, 128), (1, 1, 128, 128, 192)]
    for case, image in zip(named.cases, images, strict=True):
        assert np.array_equal(image, by_case[case])


def test_named_raw_cases_are_preprocessed_as_for_a_run(raw: Path) -> None:
    normal = _open(raw)
    assert normal.cases == ("case_00050", "case_00117")
    named = _open(raw, ("case_00117", "case_00050"))
    assert named.cases == ("case_00117", "case_00050") and named.ground_truth() is None
    by_case = dict(zip(normal.cases, _images(normal), strict=True))
    for case, image in zip(named.cases, _images(named), strict=True):
        assert np.array_equal(image, by_case[case])
    cache = Path(named.describe()["cache"])
    assert cache.parent == Path(normal.describe()["cache"]).parent  # the run's cache
    assert not list(cache.glob("*.label.npy")), "calibration needs no labels"


def test_missing_named_cases_are_one_error_naming_the_first_ten(build: Path, raw: Path) -> None:
    absent = tuple(f"case_{n:05d}" for n in range(300, 311))  # 11 cases no folder holds
    for folder in (build, raw):
        with pytest.raises(DatasetError) as caught:
            _open(folder, ("case_00050", *absent))
        message = one_line_error(caught)
        assert "11 of the 12 KiTS19 cases" in message and message.endswith(
            ", ".join(absent[:10]) + " and 1 more"), message
        assert "case_00050" not in message and absent[10] not in message


def test_an_indexed_case_without_its_pickle_is_missing(tmp_path: Path) -> None:
    folder = write_preprocessed(tmp_path / "cal", _volumes({"case_00050": (128, 128, 128)}, 5))
    (folder / "case_00050.pkl").unlink()
    with pytest.raises(DatasetError) as caught:
        _open(folder, ("case_00050",))
    assert one_line_error(caught).endswith(f"is not in {folder}: case_00050")


def test_a_name_that_is_no_case_name_is_refused(build: Path) -> None:
    with pytest.raises(DatasetError, match="'../case_00050', which is not a KiTS19 case name"):
        _open(build / "calibration_data", ("../case_00050",))


# --------------------------------------------------------------------------- the windows


class Recording(Session):
    """Keeps a copy of every feed it is given; answers zero logits."""

    def __init__(self) -> None:
        self.inputs = [TensorSpec("input", "float32", (None, 1, ROI, ROI, ROI))]
        self.outputs = [TensorSpec("output", "float32", (None, 3, ROI, ROI, ROI))]
        self.capabilities = Capabilities(max_batch_size=None)
        self.precision = "fp32"
        self.fed: list[np.ndarray] = []
        self.lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        with self.lock:
            self.fed.append(np.array(feeds["input"]))
        return {"output": np.zeros((len(feeds["input"]), 3, ROI, ROI, ROI), np.float32)}


def _reference_windows(volume: np.ndarray) -> list[np.ndarray]:
    """The reference's loops (base_SUT.infer_single_query): 128³ windows every 64 voxels, z, y, x."""
    d, h, w = volume.shape[2:]
    return [volume[..., i : i + ROI, j : j + ROI, k : k + ROI]
            for i in range(0, d - ROI + 1, 64) for j in range(0, h - ROI + 1, 64) for k in range(0, w - ROI + 1, 64)]


@pytest.mark.parametrize("batch", [1, 3])
def test_calibration_feeds_are_the_windows_the_pipeline_feeds(build: Path, batch: int) -> None:
    dataset = _open(build, tuple(CALIBRATION))
    dataset.load([0, 1])
    session = Recording()
    dispatcher = PieceDispatcher([("u:0", {"model": session})], batch_size=batch)
    dispatcher.start()
    try:
        pipeline = unet3d.SlidingWindows(PipelineContext({}, dataset, 1, [], None, dispatcher))  # type: ignore[arg-type]
        for index in (1, 0):
            session.fed.clear()
            pipeline([index])
            piped = np.concatenate(session.fed)  # one unit: pieces run in order
            feeds = list(unet3d.calibration_feeds(dataset, index))
            assert all(set(feed) == {"input"} and feed["input"].shape == (1, 1, ROI, ROI, ROI)
                       and feed["input"].dtype == np.float32 for feed in feeds)
            made = np.concatenate([feed["input"] for feed in feeds])
            assert made.shape[0] == (4 if index == 1 else 2)
            assert np.array_equal(made, piped)
            reference = _reference_windows(dataset.sample(index)["input"])
            assert np.array_equal(made, np.concatenate(reference))
            assert not np.array_equal(made[0], made[1])
    finally:
        dispatcher.stop()


def test_int8_planning_calibrates_the_real_spec_on_a_users_list(build: Path, tmp_path: Path) -> None:
    """What ``--precision int8 --calibration FILE`` plans for 3d-unet-99: the listed cases read
    by kits19, and the graph's feeds their windows, case by case, each a batch of one."""
    from mlpi.core.engine.plan import ModelRef
    from mlpi.core.engine.precision import PrecisionOptions
    from mlpi.core.engine.precision_plan import PrecisionRequest, _calibration, _feeds
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model("3d-unet-99")
    assert spec.calibration_feeds is unet3d.calibration_feeds and spec.calibration.dataset == "kits19"
    (graph,) = spec.graphs.values()
    ref = ModelRef(spec.name, str(tmp_path / "unused.onnx"), "0" * 64, None, list(graph.inputs), list(graph.outputs))
    listed = tmp_path / "cases.txt"
    listed.write_text("case_00117\ncase_00050\n", encoding="utf-8")
    request = PrecisionRequest("int8", calibration=str(listed), calibration_path=str(build / "calibration_data"))
    calibration, data = _calibration(request, PrecisionOptions(), spec, registry, ref, None, None, None, 0)
    assert calibration.kind == "list" and not calibration.closed
    assert calibration.names == ("case_00117", "case_00050") and calibration.count == data.count == 2
    feeds = list(_feeds(data, calibration.count, ref.inputs, spec.calibration_feeds)())
    expected = _volumes(CALIBRATION, 1)
    windows = [w for case in ("case_00117", "case_00050") for w in _reference_windows(expected[case][0][None, None])]
    assert len(feeds) == len(windows) == 6
    for feed, window in zip(feeds, windows, strict=True):
        assert list(feed) == ["input"] and feed["input"].dtype == np.float32
        assert np.array_equal(feed["input"], window)


def test_the_official_list_names_the_cases_a_folder_lacks(build: Path, tmp_path: Path) -> None:
    from mlpi.core.engine.plan import ModelRef
    from mlpi.core.engine.precision import PrecisionOptions
    from mlpi.core.engine.precision_plan import PrecisionRequest, _calibration
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model("3d-unet-99")
    (graph,) = spec.graphs.values()
    ref = ModelRef(spec.name, str(tmp_path / "unused.onnx"), "0" * 64, None, list(graph.inputs), list(graph.outputs))
    official = spec.calibration.names()
    request = PrecisionRequest("int8", calibration_path=str(build / "preprocessed_data"))
    with pytest.raises(DatasetError) as caught:
        _calibration(request, PrecisionOptions(), spec, registry, ref, None, None, None, 0)
    message = one_line_error(caught)
    assert message.startswith("20 of the 20 KiTS19 cases") and message.endswith(
        ", ".join(official[:10]) + " and 10 more"), message
