"""The openimages dataset: MLPerf RetinaNet preprocessing bit for bit, its cache, its ground truth, its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CountingImread

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import openimages
from mlpi.datasets.openimages import CocoGroundTruth, OpenImages, OpenImagesDataset
from mlpi.testing.openimages_fixture import (
    IMAGE_TABLE,
    OpenImagesFixture,
    draw_image,
    write_openimages,
)

H, W = 40, 56  # small, non-square model input: fast tests, distinct height and width
NCHW = [TensorSpec("images", "float32", (1, 3, H, W))]
NHWC = [TensorSpec("images", "float32", (None, H, W, 3))]
PARAMS = dict(image_size=(H, W), layout="NCHW", resize="stretch", interpolation="linear", scale=1 / 255, channel_order="RGB")
COUNT = len(IMAGE_TABLE)


def params(**changes: object) -> DataParams:
    values = {**PARAMS, **changes}
    return DataParams({k: v for k, v in values.items() if v is not None})


def request(path: Path, inputs: list[TensorSpec] = NCHW, **options: object) -> DatasetRequest:
    options.setdefault("params", params())
    return DatasetRequest(inputs, path=path, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLPI_CACHE", str(root))
    return root


@pytest.fixture
def fixture(tmp_path: Path) -> OpenImagesFixture:
    return write_openimages(tmp_path / "openimages")


@pytest.fixture
def data(fixture: OpenImagesFixture) -> Path:
    return fixture.root


def expected(file: Path, height: int = H, width: int = W, nchw: bool = True) -> np.ndarray:
    """MLPerf's RetinaNet preprocessing written out step by step, independently of mlpi:
    imread, float32, BGR->RGB, INTER_LINEAR resize of the float image, in-place /= 255."""
    image = np.array(cv2.imread(str(file)), dtype=np.float32)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    image /= 255.0
    return image.transpose([2, 0, 1]) if nchw else image


def load_all(dataset: OpenImagesDataset) -> np.ndarray:
    spec = dataset.inputs[0]
    indices = list(range(dataset.count))
    dataset.load(indices)
    out = {spec.name: np.full((dataset.count, *spec.sample_shape), np.nan, dtype=np.float32)}
    dataset.gather(indices, out)
    return out[spec.name]


def key_dirs(cache: Path) -> list[str]:
    folder = cache / "datasets" / "openimages"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- preprocessing ------------------------------------------------------------------------


def test_nchw_is_the_reference_bit_for_bit(data: Path, fixture: OpenImagesFixture) -> None:
    dataset = OpenImages().open(request(data))
    assert dataset.count == COUNT
    assert dataset.inputs == [TensorSpec("images", "float32", (1, 3, H, W))]
    got = load_all(dataset)
    assert got.dtype == np.float32 and got.shape == (COUNT, 3, H, W)
    for index in range(COUNT):
        want = expected(fixture.image_file(index))
        assert want.dtype == np.float32
        assert np.array_equal(got[index], want), (index, float(np.abs(got[index] - want).max()))
    assert 0.0 <= got.min() and got.max() <= 1.0


def test_nhwc_is_the_same_floats_channels_last(data: Path, fixture: OpenImagesFixture) -> None:
    nchw = load_all(OpenImages().open(request(data)))
    dataset = OpenImages().open(request(data, NHWC, params=params(layout="NHWC")))
    assert dataset.inputs[0].shape == (None, H, W, 3)
    nhwc = load_all(dataset)
    assert np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    assert np.array_equal(nhwc[1], expected(fixture.image_file(1), nchw=False))


def test_the_retinanet_size_with_a_dynamic_input(data: Path, fixture: OpenImagesFixture) -> None:
    # MLPerf's RetinaNet: 800 x 800, every image stretched (upscaled here) to it.
    inputs = [TensorSpec("images", "float32", (None, 3, None, None))]
    dataset = OpenImages().open(request(data, inputs, count=2, params=params(image_size=(800, 800))))
    assert dataset.inputs[0].shape == (None, 3, 800, 800)
    got = load_all(dataset)
    for index in range(2):
        assert np.array_equal(got[index], expected(fixture.image_file(index), 800, 800))


def test_a_uint8_resize_would_not_be_the_reference(fixture: OpenImagesFixture) -> None:
    """Why the cache holds float32: the reference resizes the float image, whose bilinear
    pixels are fractional; resizing the uint8 image gives other floats."""
    bgr = cv2.imread(str(fixture.image_file(0)))
    via_uint8 = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (W, H), interpolation=cv2.INTER_LINEAR).astype(np.float32) / np.float32(255)
    reference = expected(fixture.image_file(0), nchw=False)
    assert not np.array_equal(via_uint8, reference)
    assert np.array_equal(openimages.model_input(openimages.resized_pixels(bgr, H, W)[None], "NHWC")[0], reference)


# -- samples, counts, ground truth --------------------------------------------------------


def test_count_gather_ground_truth_and_description(data: Path, fixture: OpenImagesFixture) -> None:
    dataset = OpenImages().open(request(data, count=4))
    assert dataset.count == 4 and dataset.performance_count == 4
    truth = dataset.ground_truth()
    assert isinstance(truth, CocoGroundTruth) and dataset.has_ground_truth
    assert truth.annotation_file == fixture.annotation_file.resolve()
    assert truth.data_dir == fixture.data_dir.resolve()
    # Sample i is images[i] in file order, whatever the ids (unsorted, not 0-based).
    assert [image["id"] for image in truth.images] == [row[0] for row in IMAGE_TABLE[:4]]
    assert truth.images == fixture.images[:4] and truth.count == 4
    assert dataset.labels() is None
    description = dataset.describe()
    assert description["kind"] == "openimages" and description["count"] == 4
    assert description["path"] == str(data.resolve()) and len(description["cache_key"]) == 64

    dataset.load([3, 1])
    out = {"images": np.zeros((2, 3, H, W), dtype=np.float32)}
    dataset.gather([3, 1], out)
    assert np.array_equal(out["images"][0], expected(fixture.image_file(3)))
    assert np.array_equal(out["images"][1], expected(fixture.image_file(1)))
    assert np.array_equal(dataset.sample(1)["images"][0], expected(fixture.image_file(1)))


@pytest.mark.parametrize(("model_count", "want"), [(None, COUNT), (2, 2), (64, COUNT)])
def test_performance_count_comes_from_the_model(data: Path, model_count: int | None, want: int) -> None:
    assert OpenImages().open(request(data, performance_count=model_count)).performance_count == want


# -- the cache ----------------------------------------------------------------------------


def test_cache_is_reused_without_decoding(data: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    first = OpenImages().open(request(data))
    assert f"preprocessing {COUNT} images" in capfd.readouterr().err  # progress while building...
    pixels = load_all(first)
    CountingImread(monkeypatch, fail_at=1)  # ...and nothing may be decoded again
    again = OpenImages().open(request(data))
    assert again.describe()["cache_key"] == first.describe()["cache_key"]
    assert np.array_equal(load_all(again), pixels)
    assert "preprocessing" not in capfd.readouterr().err
    # NHWC reads the same cache: the layout and the /255 are applied when loading.
    nhwc = OpenImages().open(request(data, NHWC, params=params(layout="NHWC")))
    assert np.array_equal(load_all(nhwc), pixels.transpose(0, 2, 3, 1))
    assert key_dirs(cache) == [first.describe()["cache_key"]]
    stored = np.load(Path(first.cache_file), mmap_mode="r")  # type: ignore[arg-type]
    assert stored.dtype == np.float32 and stored.shape == (COUNT, H, W, 3)


def test_cache_is_rebuilt_when_an_image_changes(data: Path, fixture: OpenImagesFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    first = OpenImages().open(request(data))
    old = load_all(first)
    file = fixture.image_file(2)
    before = os.stat(file)
    image = fixture.images[2]
    cv2.imwrite(str(file), 255 - draw_image(image["width"], image["height"], [], seed=99))
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    counter = CountingImread(monkeypatch)
    second = OpenImages().open(request(data))
    assert counter.calls == COUNT
    assert second.describe()["cache_key"] != first.describe()["cache_key"]
    new = load_all(second)
    assert np.array_equal(new[2], expected(file)) and not np.array_equal(new[2], old[2])
    assert np.array_equal(np.delete(new, 2, axis=0), np.delete(old, 2, axis=0))
    # Touching an image alone, another --count or another size: other caches too.
    assert OpenImages().open(request(data, count=3)).describe()["cache_key"] != second.describe()["cache_key"]
    assert OpenImages().open(request(data, params=params(image_size=(H, H)), inputs=[TensorSpec("images", "float32", (1, 3, H, H))])).describe()["cache_key"] != second.describe()["cache_key"]


def test_failed_build_leaves_nothing_behind(data: Path, fixture: OpenImagesFixture, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        CountingImread(patch, fail_at=3, error=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            OpenImages().open(request(data))
    assert key_dirs(cache) == []
    dataset = OpenImages().open(request(data))
    assert np.array_equal(load_all(dataset)[5], expected(fixture.image_file(5)))


def test_damaged_cache_under_the_key_is_rebuilt(data: Path, fixture: OpenImagesFixture, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = OpenImages().open(request(data)).describe()["cache_key"]
    np.save(cache / "datasets" / "openimages" / key / "images.npy", np.zeros((COUNT, H, W, 3), dtype=np.uint8))  # wrong dtype
    counter = CountingImread(monkeypatch)
    dataset = OpenImages().open(request(data))
    assert counter.calls == COUNT
    assert np.array_equal(load_all(dataset)[0], expected(fixture.image_file(0)))


def test_for_scoring_reads_only_the_annotations(data: Path, fixture: OpenImagesFixture, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CountingImread(monkeypatch, fail_at=1)
    for image in fixture.images:  # not even the images need to be there
        fixture.data_dir.joinpath(image["file_name"]).unlink()
    # Scoring needs neither the model's inputs nor its data parameters.
    dataset = OpenImages().open(DatasetRequest((), path=data, for_scoring=True))
    assert dataset.count == COUNT and dataset.ground_truth().images == fixture.images
    assert not (cache / "datasets").exists()
    with pytest.raises(DatasetError, match="scoring only"):
        dataset.load([0])
    # Its annotations are still checked.
    fixture.annotation_file.write_text("{}")
    with pytest.raises(DatasetError, match="no 'images' list"):
        OpenImages().open(DatasetRequest((), path=data, for_scoring=True))


# -- errors -------------------------------------------------------------------------------


def open_error(req: DatasetRequest) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        OpenImages().open(req)
    assert info.value.hint, info.value.message
    return info.value


def edit_annotations(fixture: OpenImagesFixture, change) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(fixture.annotation_file.read_text())
    change(document)
    fixture.annotation_file.write_text(json.dumps(document))


def test_missing_and_invalid_annotation_files(data: Path, fixture: OpenImagesFixture, cache: Path) -> None:
    fixture.annotation_file.write_text('{"images": [')
    error = open_error(request(data))
    assert str(fixture.annotation_file.resolve()) in error.message and "not valid JSON" in error.message
    fixture.annotation_file.write_text("[1, 2]")
    assert "top level is a list" in open_error(request(data)).message
    fixture.annotation_file.unlink()
    error = open_error(request(data))
    assert "openimages-mlperf.json" in error.message and "missing" in error.message
    assert "annotations/openimages-mlperf.json" in error.hint
    assert not (cache / "datasets").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("annotations"), "no 'annotations' list"),
        (lambda d: d.update(images={}), "'images' is a dict, not a list"),
        (lambda d: d.update(images=[]), "'images' is empty"),
        (lambda d: d["images"][2].pop("width"), "images[2] has no 'width'"),
        (lambda d: d["images"][1].update(height="80"), "images[1] has 'height': '80'"),
        (lambda d: d["images"][3].update(height=0), "images[3] has 'height': 0"),
        (lambda d: d["images"][0].pop("file_name"), "images[0] has no 'file_name'"),
        (lambda d: d["images"][4].update(id=d["images"][1]["id"]), "images[4] and images[1] have the same id"),
        (lambda d: d["annotations"][5].update(bbox=[1, 2, 3]), "annotations[5] has 'bbox': [1, 2, 3]"),
        (lambda d: d["annotations"][0].pop("iscrowd"), "annotations[0] has 'iscrowd'"),
        (lambda d: d["annotations"][3].update(category_id="Cat"), "annotations[3] has 'category_id': 'Cat'"),
        (lambda d: d["categories"].append({"name": "no id"}), "categories[5]"),
        (lambda d: d["images"][2].update(file_name="/etc/hostname"), "images[2] has 'file_name': '/etc/hostname', an absolute path"),
        (lambda d: d["images"][1].update(file_name="../../x.jpg"), "images[1] has 'file_name': '../../x.jpg', which climbs out"),
    ],
)
def test_bad_annotations_are_named(data: Path, fixture: OpenImagesFixture, change, named: str) -> None:  # type: ignore[no-untyped-def]
    edit_annotations(fixture, change)
    error = open_error(request(data))
    assert str(fixture.annotation_file.resolve()) in error.message and named in error.message, error.message


def test_missing_image_is_named_never_skipped(data: Path, fixture: OpenImagesFixture, cache: Path) -> None:
    fixture.image_file(3).unlink()
    error = open_error(request(data))
    assert fixture.images[3]["file_name"] in error.message and "sample 3" in error.message
    assert "never skipped" in error.hint
    assert key_dirs(cache) == []
    assert OpenImages().open(request(data, count=3)).count == 3  # not using it is fine


def test_corrupt_image_is_named_and_leaves_no_cache(data: Path, fixture: OpenImagesFixture, cache: Path) -> None:
    fixture.image_file(4).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    error = open_error(request(data))
    assert fixture.images[4]["file_name"] in error.message and "decode" in error.message
    assert key_dirs(cache) == []


def test_truncated_jpeg_is_named_and_leaves_no_cache(data: Path, fixture: OpenImagesFixture, cache: Path) -> None:
    file = fixture.image_file(4)
    file.write_bytes(file.read_bytes()[:-100])  # cv2.imread still returns an image for it
    error = open_error(request(data))
    assert fixture.images[4]["file_name"] in error.message and "truncated JPEG" in error.message
    assert "never skipped" in error.hint
    assert key_dirs(cache) == []


def test_path_problems_and_counts(data: Path, tmp_path: Path) -> None:
    assert "needs --dataset-path" in open_error(DatasetRequest(NCHW, params=params())).message
    assert "does not exist" in open_error(request(tmp_path / "nowhere")).message
    assert "not a folder" in open_error(request(data / "annotations" / "openimages-mlperf.json")).message
    error = open_error(request(data, count=COUNT + 1))
    assert str(COUNT + 1) in error.message and str(COUNT) in error.hint
    assert "no samples" in open_error(request(data, count=0)).message


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"resize": "shorter-side-crop"}, "resize='shorter-side-crop'"),
        ({"interpolation": "area"}, "interpolation='area'"),
        ({"scale": 1.0}, "scale=1.0"),
        ({"channel_order": "BGR"}, "channel_order='BGR'"),
        ({"layout": "NCWH"}, "layout='NCWH'"),
        ({"image_size": (H,)}, "image_size=(40,)"),
        ({"image_size": "800"}, "image_size='800'"),
        ({"mean": (123.68, 116.78, 103.94)}, "mean=(123.68, 116.78, 103.94)"),
        ({"std": (0.229, 0.224, 0.225)}, "std="),
        ({"image_size": None}, "'image_size'"),
        ({"scale": None}, "'scale'"),
        ({"resize": None}, "'resize'"),
    ],
)
def test_params_it_cannot_serve_are_named(data: Path, cache: Path, changes: dict, named: str) -> None:  # type: ignore[type-arg]
    error = open_error(request(data, params=params(**changes)))
    assert named in error.message and "openimages" in error.message, error.message
    assert not (cache / "datasets").exists()  # refused before anything is decoded


def test_the_resnet50_params_are_refused_by_resize(data: Path) -> None:
    resnet = DataParams.of(image_size=(224, 224), layout="NCHW", resize="shorter-side-crop", crop_fraction=0.875,
                           interpolation="area", channel_order="RGB", mean=(123.68, 116.78, 103.94), scale=1.0)
    error = open_error(request(data, [TensorSpec("input_tensor:0", "float32", (None, 3, 224, 224))], params=resnet))
    assert "resize='shorter-side-crop'" in error.message and "stretch" in error.message
    assert "needs the model to declare 'image_size'" in open_error(request(data, params=DataParams())).message


@pytest.mark.parametrize(
    "inputs",
    [
        [TensorSpec("a", "float32", (1, 3, H, W)), TensorSpec("b", "float32", (1, 3, H, W))],
        [TensorSpec("ids", "int64", (1, 3, H, W))],
        [TensorSpec("x", "float32", (1, 16))],
        [TensorSpec("x", "float32", (1, H, W, 3))],  # NHWC input, NCHW declared
        [TensorSpec("x", "float32", (1, 3, 800, 800))],  # another size than declared
        [],
    ],
)
def test_models_that_do_not_take_the_declared_image_are_refused(data: Path, cache: Path, inputs: list[TensorSpec]) -> None:
    error = open_error(request(data, inputs))
    assert "image" in error.message
    for spec in inputs:
        assert spec.name in error.message
    assert not (cache / "datasets").exists()
