"""The detection datasets read MLPerf's calibration lists by name (int8 calibration).

``openimages`` (RetinaNet's ``openimages_cal_images_list.txt``) and ``coco`` (the SSD models'
``coco_cal_images_list.txt``, COCO train2017 images) open exactly the listed images, in list
order, from a flat folder or from where the calibration download puts them
(``DIR/calibration/data``, ``DIR/train2017``), through the same preprocessing and cache as the
run's annotated images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.calibration import CalibrationSet
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.coco import COCO, Coco
from mlpi.datasets.openimages import (
    OPENIMAGES,
    CocoFormatDetection,
    Finish,
    Layout,
    OpenImages,
    OpenImagesDataset,
    calibration_folder,
    model_input,
    resized_pixels,
)
from mlpi.models import calibration_lists

H, W = 24, 32  # small, non-square: fast, and height and width cannot be swapped unnoticed
STRETCH = {"image_size": (H, W), "resize": "stretch", "interpolation": "linear", "channel_order": "RGB"}
#: (dataset, its official list, the model's data parameters, the input it feeds): RetinaNet's
#: float /255 NCHW, SSD-MobileNet's uint8 NHWC, SSD-ResNet34's /255 then mean/std NCHW.
CASES = {
    "retinanet": (OPENIMAGES, calibration_lists.OPENIMAGES,
                  DataParams.of(**STRETCH, layout="NCHW", scale=1 / 255),
                  TensorSpec("images", "float32", (None, 3, H, W))),
    "ssd-mobilenet": (COCO, calibration_lists.COCO, DataParams.of(**STRETCH, layout="NHWC", dtype="uint8"),
                      TensorSpec("image_tensor:0", "uint8", (1, H, W, 3))),
    "ssd-resnet34": (COCO, calibration_lists.COCO,
                     DataParams.of(**STRETCH, layout="NCHW", scale=1 / 255, mean=(0.485, 0.456, 0.406),
                                   std=(0.229, 0.224, 0.225)),
                     TensorSpec("image", "float32", (1, 3, H, W))),
}
#: Image sizes (width, height) of the fixture JPEGs: all different, none the model's.
SIZES = [(40, 30), (28, 52), (64, 36), (33, 33), (50, 20)]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLPI_CACHE", str(root))
    return root


def factory(files: Layout) -> CocoFormatDetection:
    return Coco() if files is COCO else OpenImages()


def write_images(folder: Path, names: Sequence[str], seed: int = 0) -> None:
    """Noise JPEGs named as the list names them, each of another size (so each sample differs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        width, height = SIZES[k % len(SIZES)]
        assert cv2.imwrite(str(folder / name), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_annotated(root: Path, files: Layout, names: Sequence[str], source: Path) -> None:
    """The run's own layout (annotations + images folder) holding ``names``, copied from ``source``."""
    data = root / files.images
    data.mkdir(parents=True)
    images = []
    for k, name in enumerate(names):
        (data / name).write_bytes((source / name).read_bytes())
        height, width = cv2.imread(str(data / name)).shape[:2]
        images.append({"id": 500 + k, "file_name": name, "height": height, "width": width})
    (root / files.annotations).parent.mkdir(parents=True)
    (root / files.annotations).write_text(json.dumps({"images": images, "annotations": [], "categories": []}))


def samples(dataset: OpenImagesDataset) -> np.ndarray:
    spec = dataset.inputs[0]
    indices = list(range(dataset.count))
    dataset.load(indices)
    out = {spec.name: np.zeros((dataset.count, *spec.sample_shape), dtype=spec.dtype)}
    dataset.gather(indices, out)
    return out[spec.name]


def open_by_name(files: Layout, params: DataParams, spec: TensorSpec, path: Path, names: Sequence[str]) -> OpenImagesDataset:
    dataset = factory(files).open(DatasetRequest([spec], params=params, path=path, names=tuple(names)))
    assert isinstance(dataset, OpenImagesDataset)
    return dataset


def finish_of(params: DataParams) -> Finish:
    mean, std = params.get("mean"), params.get("std")
    return Finish(params.get("layout"), params.get("dtype") == "uint8", mean, std)


# -- the listed images, as the run's images ------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "download-layout"])
def test_listed_images_are_the_runs_samples_in_list_order(case: str, flat: bool, tmp_path: Path, cache: Path) -> None:
    files, official, params, spec = CASES[case]
    names = official.names()[:3]
    given = tmp_path / "calibration"
    folder = given if flat else given / files.calibration
    write_images(folder, names)
    dataset = open_by_name(files, params, spec, given, names)
    assert dataset.count == 3 and dataset.ground_truth() is None and not dataset.has_ground_truth
    assert dataset.root == folder.resolve() and dataset.describe()["annotations"] is None
    got = samples(dataset)
    assert got.dtype == np.dtype(spec.dtype)

    # The same files through the run's annotated path, listed in the reverse order.
    run = tmp_path / "run"
    write_annotated(run, files, names[::-1], folder)
    run_data = factory(files).open(DatasetRequest([spec], params=params, path=run))
    assert isinstance(run_data, OpenImagesDataset) and run_data.has_ground_truth
    annotated = samples(run_data)
    finish = finish_of(params)
    for index, name in enumerate(names):
        assert np.array_equal(got[index], annotated[2 - index]), (case, name)
        pixels = resized_pixels(cv2.imread(str(folder / name)), H, W)
        assert np.array_equal(got[index], model_input(pixels[None], finish)[0]), (case, name)
    assert not np.array_equal(got[0], got[1])  # distinct samples: the order is checked
    # One cache for both: the same dataset folder, the same preprocessing parameters.
    assert dataset.cache_file is not None and run_data.cache_file is not None
    assert dataset.cache_file.parent.parent == run_data.cache_file.parent.parent == cache / "datasets" / files.name


def test_the_official_lists_name_files_in_both_layouts() -> None:
    # What the fixtures stand for: MLPerf's own names (OpenImages ids, COCO train2017 numbers).
    assert calibration_lists.OPENIMAGES.names()[0] == "dd51a1780bcb3d28.jpg"
    assert len(calibration_lists.OPENIMAGES.names()) == 500
    assert calibration_lists.COCO.names()[0] == "000000391895.jpg" and len(calibration_lists.COCO.names()) == 500
    assert (OPENIMAGES.calibration, COCO.calibration) == ("calibration/data", "train2017")
    assert Coco.opens_by_name and OpenImages.opens_by_name


def test_the_folder_is_chosen_once_for_the_whole_list(tmp_path: Path) -> None:
    names = calibration_lists.COCO.names()[:3]
    root, sub = tmp_path / "d", tmp_path / "d" / "train2017"
    write_images(sub, names)
    write_images(root, names[:2])  # a partial flat copy: the download layout holds them all
    assert calibration_folder(root, names, COCO) == sub
    write_images(root, names[2:])
    assert calibration_folder(root, names, COCO) == root  # both hold all: the flat folder
    (root / names[0]).unlink()
    (sub / names[0]).unlink()
    (sub / names[1]).unlink()
    assert calibration_folder(root, names, COCO) == root  # neither: the one holding more
    assert calibration_folder(tmp_path / "empty", names, COCO) == tmp_path / "empty"  # a tie: the flat folder


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [OPENIMAGES, COCO], ids=["openimages", "coco"])
def test_missing_images_are_one_error_naming_them(files: Layout, tmp_path: Path, cache: Path) -> None:
    case = "retinanet" if files is OPENIMAGES else "ssd-mobilenet"
    _, official, params, spec = CASES[case]
    names = official.names()[:13]
    write_images(tmp_path / "d" / files.calibration, names[:1])
    with pytest.raises(DatasetError) as caught:
        open_by_name(files, params, spec, tmp_path / "d", names)
    message, hint = caught.value.message, caught.value.hint or ""
    assert "12 of the 13 images" in message and str(tmp_path / "d" / files.calibration) in message
    assert all(name in message for name in names[1:11]) and "and 2 more" in message
    assert names[0] not in message and names[11] not in message
    assert files.calibration in hint and "--calibration-path" in hint
    assert not (cache / "datasets").exists()  # nothing decoded, nothing cached


def test_a_name_outside_the_folder_is_refused(tmp_path: Path) -> None:
    _, _, params, spec = CASES["ssd-mobilenet"]
    write_images(tmp_path / "d", ["a.jpg"])
    with pytest.raises(DatasetError, match="climbs out"):
        open_by_name(COCO, params, spec, tmp_path / "d", ["a.jpg", "../a.jpg"])


def test_the_model_is_checked_before_the_folder(tmp_path: Path) -> None:
    _, _, params, _ = CASES["retinanet"]
    wrong = TensorSpec("images", "float32", (1, 3, H + 1, W))
    with pytest.raises(DatasetError, match="image_size"):
        open_by_name(OPENIMAGES, params, wrong, tmp_path / "nowhere", ["x.jpg"])


# -- through int8 calibration's planning ---------------------------------------------------


@pytest.mark.parametrize("model", ["retinanet", "ssd-mobilenet"])
def test_official_calibration_opens_the_list_through_the_dataset(model: str, tmp_path: Path) -> None:
    """What ``--precision int8`` plans: the model's official list, cut to ``calibration_count``,
    read by its dataset plugin from ``--calibration-path``; one feed per listed image, in order."""
    from mlpi.core.engine.plan import ModelRef
    from mlpi.core.engine.precision import PrecisionOptions
    from mlpi.core.engine.precision_plan import PrecisionRequest, _calibration, _feeds
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model(model)
    official: CalibrationSet = spec.calibration
    (graph,) = spec.graphs.values()
    names = official.names()[:2]
    files = OPENIMAGES if official.dataset == "openimages" else COCO
    write_images(tmp_path / "d" / files.calibration, names)
    ref = ModelRef(model, str(tmp_path / "unused.onnx"), "0" * 64, None, list(graph.inputs), list(graph.outputs))
    request = PrecisionRequest("int8", calibration_path=str(tmp_path / "d"))
    calibration, data = _calibration(request, PrecisionOptions(calibration_count=2), spec, registry, ref,
                                     None, None, None, 0)
    assert calibration.kind == "official" and calibration.closed and calibration.names == names
    assert data.count == 2 and not data.has_ground_truth
    feeds = list(_feeds(data, calibration.count, ref.inputs)())
    height, width = spec.data.get("image_size")
    for name, feed in zip(names, feeds, strict=True):
        (value,) = feed.values()
        pixels = resized_pixels(cv2.imread(str(tmp_path / "d" / files.calibration / name)), height, width)
        assert np.array_equal(value, model_input(pixels[None], finish_of(spec.data)))
