"""The imagenet dataset: MLPerf ResNet50 preprocessing pixel for pixel, its cache, its errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CountingImread, one_error, only_run_dir, run_cli
from PIL import Image

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import imagenet
from mlpi.datasets.imagenet import ImageNet, ImageNetDataset
from mlpi.testing import tiny_models

NCHW = [TensorSpec("input_tensor:0", "float32", (None, 3, 224, 224))]
NHWC = [TensorSpec("image", "float32", (None, 224, 224, 3))]

# (file, Pillow mode, width, height, label): portrait, landscape, square, smaller than 224,
# larger than 256, odd sizes (odd crop offsets), greyscale and CMYK.
IMAGES = [
    ("ILSVRC2012_val_00000001.JPEG", "RGB", 500, 375, 65),
    ("ILSVRC2012_val_00000002.JPEG", "RGB", 300, 400, 970),
    ("ILSVRC2012_val_00000003.JPEG", "RGB", 256, 256, 230),
    ("ILSVRC2012_val_00000004.JPEG", "RGB", 120, 90, 809),
    ("sub/ILSVRC2012_val_00000005.JPEG", "RGB", 333, 701, 516),
    ("ILSVRC2012_val_00000006.JPEG", "RGB", 229, 227, 57),
    ("ILSVRC2012_val_00000007.JPEG", "L", 320, 240, 334),
    ("ILSVRC2012_val_00000008.JPEG", "CMYK", 260, 300, 415),
]
LABELS = [label for *_, label in IMAGES]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLPI_CACHE", str(root))
    return root


def write_image(file: Path, mode: str, width: int, height: int, seed: int) -> None:
    """Smooth gradients plus noise: realistic enough that resizing matters pixel by pixel."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (c + 1) * 255 // width + y * 255 // height) % 256 for c in range(channels)], axis=-1)
    pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(file, "JPEG", quality=90)


def make_imagenet(folder: Path) -> Path:
    for seed, (name, mode, width, height, _) in enumerate(IMAGES):
        write_image(folder / name, mode, width, height, seed)
    (folder / "val_map.txt").write_text("".join(f"{name} {label}\n" for name, *_, label in IMAGES))
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_imagenet(tmp_path / "val")


def expected(file: Path, height: int = 224, width: int = 224, nchw: bool = True) -> np.ndarray:
    """The MLPerf reference's preprocessing, written out independently of mlpi."""
    image = cv2.cvtColor(cv2.imread(str(file)), cv2.COLOR_BGR2RGB)
    rows, cols = image.shape[:2]
    target_h, target_w = int(100.0 * height / 87.5), int(100.0 * width / 87.5)
    if rows > cols:
        size = (target_w, int(target_h * rows / cols))
    else:
        size = (int(target_w * cols / rows), target_h)
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    crop = image[top : top + height, left : left + width].astype(np.float32)
    crop -= np.array([123.68, 116.78, 103.94], dtype=np.float32)
    return crop.transpose(2, 0, 1) if nchw else crop


def load_all(dataset: ImageNetDataset) -> np.ndarray:
    spec = dataset.inputs[0]
    indices = list(range(dataset.count))
    dataset.load(indices)
    out = {spec.name: np.full((dataset.count, *spec.sample_shape), np.nan, dtype=np.float32)}
    dataset.gather(indices, out)
    return out[spec.name]


# -- preprocessing ------------------------------------------------------------------------


def test_nchw_matches_the_reference_pixel_for_pixel_for_every_kind_of_jpeg(data: Path) -> None:
    dataset = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert dataset.count == len(IMAGES)
    assert dataset.inputs == [TensorSpec("input_tensor:0", "float32", (None, 3, 224, 224))]
    got = load_all(dataset)
    assert got.dtype == np.float32 and got.shape == (len(IMAGES), 3, 224, 224)
    for index, (name, mode, *_) in enumerate(IMAGES):
        want = expected(data / name)
        assert np.array_equal(got[index], want), (name, mode, float(np.abs(got[index] - want).max()))
    # The greyscale JPEG feeds three identical channels (before the per-channel mean).
    grey = got[IMAGES.index(next(i for i in IMAGES if i[1] == "L"))] + imagenet.MEAN[:, None, None]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    # The CMYK JPEG is really colour, not three copies of one channel.
    cmyk = got[IMAGES.index(next(i for i in IMAGES if i[1] == "CMYK"))]
    assert not np.array_equal(cmyk[0] - cmyk[1], imagenet.MEAN[1] - imagenet.MEAN[0])


def test_nhwc_is_the_same_pixels_channels_last(data: Path) -> None:
    nchw = load_all(ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0)))
    dataset = ImageNet().open(DatasetRequest(NHWC, path=data, count=None, seed=0))
    assert dataset.inputs[0].shape == (None, 224, 224, 3)
    nhwc = load_all(dataset)
    assert nhwc.shape == (len(IMAGES), 224, 224, 3)
    assert np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    assert np.array_equal(nhwc[0], expected(data / IMAGES[0][0], nchw=False))


def test_non_square_and_dynamic_inputs(data: Path) -> None:
    # A non-square input resizes each side by its own target, like the reference.
    odd = ImageNet().open(DatasetRequest([TensorSpec("x", "float32", (1, 3, 64, 48))], path=data, count=3, seed=0))
    got = load_all(odd)
    assert odd.inputs[0].shape == (1, 3, 64, 48)
    for index in range(3):
        assert np.array_equal(got[index], expected(data / IMAGES[index][0], 64, 48))
    # Dynamic height and width: the reference 224 x 224.
    dynamic = ImageNet().open(DatasetRequest([TensorSpec("x", "float32", (None, 3, None, None))], path=data, count=2, seed=0))
    assert dynamic.inputs[0].shape == (None, 3, 224, 224)


def test_gather_labels_count_and_description(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = ImageNet().open(DatasetRequest(NCHW, path=data, count=5, seed=0))
    assert dataset.count == 5
    labels = dataset.labels()
    assert labels.dtype == np.int64 and labels.tolist() == LABELS[:5]
    assert dataset.performance_count == 5
    description = dataset.describe()
    assert description["kind"] == "imagenet" and description["count"] == 5
    assert description["path"] == str(data.resolve()) and len(description["cache_key"]) == 64

    dataset.load([3, 1])
    out = {"input_tensor:0": np.zeros((2, 3, 224, 224), dtype=np.float32)}
    dataset.gather([3, 1], out)
    assert np.array_equal(out["input_tensor:0"][0], expected(data / IMAGES[3][0]))
    assert np.array_equal(out["input_tensor:0"][1], expected(data / IMAGES[1][0]))
    assert np.array_equal(dataset.sample(1)["input_tensor:0"][0], expected(data / IMAGES[1][0]))



def test_the_dataset_knows_no_models_performance_count(data: Path, cache: Path) -> None:
    # The model's rules set LoadGen's performance sample count; the dataset offers all it has.
    assert ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0)).performance_count == len(IMAGES)


def test_a_model_declaring_other_preprocessing_is_refused(data: Path, cache: Path) -> None:
    from mlpi.core.contract.dataset import DataParams
    from mlpi.core.contract.errors import DatasetError

    params = DataParams.of(image_size=(224, 224), layout="NCHW", resize="stretch", interpolation="linear")
    with pytest.raises(DatasetError, match="cannot serve resize='stretch'"):
        ImageNet().open(DatasetRequest(NCHW, params=params, path=data))


# -- the cache ----------------------------------------------------------------------------


def test_cache_is_reused_without_decoding(data: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    first = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert "preprocessing" in capfd.readouterr().err  # progress is shown while building...
    pixels = load_all(first)
    CountingImread(monkeypatch, fail_at=1)  # ...and nothing may be decoded again
    again = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert again.describe()["cache_key"] == first.describe()["cache_key"]
    assert np.array_equal(load_all(again), pixels)
    assert "preprocessing" not in capfd.readouterr().err
    # NHWC uses the same cached crops: the layout and the mean are applied when loading.
    assert np.array_equal(load_all(ImageNet().open(DatasetRequest(NHWC, path=data, count=None, seed=0))), pixels.transpose(0, 2, 3, 1))
    key_dirs = [p.name for p in (cache / "datasets" / "imagenet").iterdir()]
    assert key_dirs == [first.describe()["cache_key"]]


def test_cache_is_rebuilt_when_an_image_changes(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    old = load_all(first)
    name, mode, width, height, _ = IMAGES[2]
    before = os.stat(data / name)
    write_image(data / name, mode, width, height, seed=99)
    os.utime(data / name, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    counter = CountingImread(monkeypatch)
    second = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert counter.calls == len(IMAGES)
    assert second.describe()["cache_key"] != first.describe()["cache_key"]
    new = load_all(second)
    assert np.array_equal(new[2], expected(data / name))
    assert not np.array_equal(new[2], old[2])
    assert np.array_equal(np.delete(new, 2, axis=0), np.delete(old, 2, axis=0))


def test_touching_an_image_alone_invalidates_the_cache(data: Path) -> None:
    first = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    file = data / IMAGES[0][0]
    st = os.stat(file)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0)).describe()["cache_key"] != first.describe()["cache_key"]
    # A smaller --count is another set of samples: another cache.
    assert ImageNet().open(DatasetRequest(NCHW, path=data, count=4, seed=0)).describe()["cache_key"] != first.describe()["cache_key"]


def test_failed_build_leaves_nothing_behind(data: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        CountingImread(patch, fail_at=4, error=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert list((cache / "datasets" / "imagenet").iterdir()) == []
    counter = CountingImread(monkeypatch)
    dataset = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert counter.calls == len(IMAGES)
    assert np.array_equal(load_all(dataset)[7], expected(data / IMAGES[7][0]))


def test_process_killed_mid_build_leaves_no_usable_cache(data: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys, cv2
        from pathlib import Path
        from mlpi.core.contract.backend import TensorSpec
        from mlpi.core.contract.dataset import DatasetRequest
        from mlpi.datasets.imagenet import ImageNet
        real, calls = cv2.imread, []
        def imread(*args):
            calls.append(1)
            if len(calls) == 5:
                os._exit(9)  # no cleanup at all, like a kill -9 or a power cut
            return real(*args)
        cv2.imread = imread
        ImageNet().open(DatasetRequest([TensorSpec("x", "float32", (None, 3, 224, 224))], path=Path({str(data)!r}), count=None, seed=0))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MLPI_CACHE": str(cache)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    left = list((cache / "datasets" / "imagenet").iterdir())
    assert left and all(p.name.startswith(".") for p in left)  # only the temporary build folder

    counter = CountingImread(monkeypatch)
    dataset = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert counter.calls == len(IMAGES)
    got = load_all(dataset)
    for index, (name, *_) in enumerate(IMAGES):
        assert np.array_equal(got[index], expected(data / name)), name


def test_damaged_cache_under_the_key_is_rebuilt(data: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0)).describe()["cache_key"]
    array = cache / "datasets" / "imagenet" / key / "images.npy"
    np.save(array, np.zeros((3, 224, 224, 3), dtype=np.uint8))  # wrong shape
    counter = CountingImread(monkeypatch)
    dataset = ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0))
    assert counter.calls == len(IMAGES)
    assert np.array_equal(load_all(dataset)[0], expected(data / IMAGES[0][0]))


# -- errors -------------------------------------------------------------------------------


def open_error(path: Path, count: int | None = None, inputs: list[TensorSpec] = NCHW) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        ImageNet().open(DatasetRequest(inputs, path=path, count=count, seed=0))
    assert info.value.hint, info.value.message
    return info.value


def test_missing_image_is_named_never_skipped(data: Path, cache: Path) -> None:
    (data / IMAGES[3][0]).unlink()
    error = open_error(data)
    assert IMAGES[3][0] in error.message and "line 4" in error.message
    assert not (cache / "datasets").exists() or not any((cache / "datasets" / "imagenet").iterdir())
    # Not using that image is fine.
    assert ImageNet().open(DatasetRequest(NCHW, path=data, count=3, seed=0)).count == 3


def test_bad_val_map_lines_are_named(data: Path) -> None:
    lines = (data / "val_map.txt").read_text().splitlines()
    for bad in ["ILSVRC2012_val_00000004.JPEG", "ILSVRC2012_val_00000004.JPEG dog", "ILSVRC2012_val_00000004.JPEG -3", ""]:
        (data / "val_map.txt").write_text("\n".join(lines[:3] + [bad] + lines[4:]) + "\n")
        error = open_error(data)
        assert "line 4" in error.message and repr(bad) in error.message


def set_line(data: Path, number: int, line: str) -> None:
    lines = (data / "val_map.txt").read_text().splitlines()
    lines[number - 1] = line
    (data / "val_map.txt").write_text("\n".join(lines) + "\n")


def test_val_map_entries_outside_the_folder_are_refused(data: Path, tmp_path: Path, cache: Path) -> None:
    outside = tmp_path / "outside.JPEG"  # a real JPEG next to the dataset folder: it would decode
    write_image(outside, "RGB", 300, 300, 99)
    for bad in ["/etc/hostname", str(outside), "../outside.JPEG", "sub/../../outside.JPEG", "./../outside.JPEG",
                "ILSVRC2012_val_00000004.JPEG\0x"]:
        set_line(data, 4, f"{bad} 7")
        error = open_error(data)
        assert "line 4 of" in error.message and repr(bad) in error.message, error.message
        assert "inside" in error.message and "relative to that folder" in error.hint and "symlink" in error.hint
    assert not (cache / "datasets").exists()  # refused while opening, before anything is read or cached
    # Every line is checked, not only the --count used.
    set_line(data, 4, f"{IMAGES[3][0]} {LABELS[3]}")
    set_line(data, len(IMAGES), "../outside.JPEG 7")
    assert f"line {len(IMAGES)} of" in open_error(data, count=2).message


def test_names_that_only_look_like_climbing_stay_allowed(data: Path) -> None:
    (data / "..dots..JPEG").write_bytes((data / IMAGES[0][0]).read_bytes())
    set_line(data, 1, f"./..dots..JPEG {LABELS[0]}")
    assert ImageNet().open(DatasetRequest(NCHW, path=data, count=1, seed=0)).count == 1


def test_symlinks_in_the_folder_are_followed_wherever_they_point(data: Path, tmp_path: Path) -> None:
    """The folder's owner chose the symlinks (a subset folder linking into a shared copy is
    usual); only val_map.txt's names are confined."""
    shared = tmp_path / "shared"
    shared.mkdir()
    name = IMAGES[0][0]
    (data / name).rename(shared / name)
    (data / name).symlink_to(shared / name)
    (data / "sub").rename(shared / "sub")
    (data / "sub").symlink_to(shared / "sub", target_is_directory=True)
    got = load_all(ImageNet().open(DatasetRequest(NCHW, path=data, count=None, seed=0)))
    assert np.array_equal(got[0], expected(shared / name))
    assert np.array_equal(got[4], expected(shared / IMAGES[4][0]))


def test_cli_refuses_a_val_map_entry_outside_the_folder_in_one_line(data: Path, tmp_path: Path, cache: Path) -> None:
    set_line(data, 2, "/etc/hostname 3")
    model = tiny_models.conv_model(tmp_path / "conv224.onnx", size=224, width=8)
    proc = run_cli(
        ["run", "--model-path", str(model), "--dataset", "imagenet", "--dataset-path", str(data), "-s", "SingleStream",
         "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
        env={"MLPI_CACHE": str(cache)},
    )
    one_error(proc, "line 2 of", "'/etc/hostname'", "absolute path")
    assert "preprocessing" not in proc.stderr and "[1/" not in proc.stderr


def test_empty_folder_and_empty_val_map(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert "val_map.txt" in open_error(folder).message
    (folder / "val_map.txt").write_text("\n\n")
    assert "no images" in open_error(folder).message


def test_path_that_is_a_file_or_missing(data: Path) -> None:
    assert "not a folder" in open_error(data / "val_map.txt").message
    assert "does not exist" in open_error(data / "nowhere").message


def test_corrupt_jpeg_is_named_and_leaves_no_cache(data: Path, cache: Path) -> None:
    (data / IMAGES[5][0]).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    error = open_error(data)
    assert IMAGES[5][0] in error.message and "decode" in error.message
    assert list((cache / "datasets" / "imagenet").iterdir()) == []


def test_truncated_jpeg_is_named_and_leaves_no_cache(data: Path, cache: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # libjpeg decodes a truncated file without an error (grey rows, "Premature end of JPEG
    # file" on stderr): it used to be cached as if it were the image
    file = data / IMAGES[2][0]
    whole = file.read_bytes()
    file.write_bytes(whole[: len(whole) * 2 // 3])
    assert cv2.imread(str(file)) is not None
    capfd.readouterr()
    error = open_error(data)
    assert str(file) in error.message and "line 3" in error.message and "truncated" in error.message
    assert "Premature end" not in capfd.readouterr().err  # refused before libjpeg is asked
    assert list((cache / "datasets" / "imagenet").iterdir()) == []
    file.write_bytes(whole + b"\x00" * 100 + b"trailing bytes after the image, as some cameras write")
    assert ImageNet().open(DatasetRequest(NCHW, path=data, seed=0)).count == len(IMAGES)


def test_count_out_of_range(data: Path) -> None:
    error = open_error(data, count=len(IMAGES) + 1)
    assert str(len(IMAGES) + 1) in error.message and str(len(IMAGES)) in error.hint
    assert "no samples" in open_error(data, count=0).message


@pytest.mark.parametrize(
    "inputs",
    [
        [TensorSpec("a", "float32", (None, 3, 224, 224)), TensorSpec("b", "float32", (None, 3, 224, 224))],
        [TensorSpec("ids", "int64", (None, 3, 224, 224))],
        [TensorSpec("x", "float32", (None, 16))],
        [TensorSpec("x", "float32", (None, 4, 224, 224))],
        [],
    ],
)
def test_models_that_do_not_take_one_image_are_refused(data: Path, cache: Path, inputs: list[TensorSpec]) -> None:
    error = open_error(data, inputs=inputs)
    assert "one" in error.message and "image" in error.message
    for spec in inputs:
        assert spec.name in error.message and spec.dtype in error.message
    assert not (cache / "datasets").exists()  # refused before anything is decoded


# -- end to end ---------------------------------------------------------------------------


def test_cli_run_on_imagenet(data: Path, tmp_path: Path, cache: Path) -> None:
    model = tiny_models.conv_model(tmp_path / "conv224.onnx", size=224, width=8)
    proc = run_cli(
        ["run", "--model-path", str(model), "--dataset", "imagenet", "--dataset-path", str(data), "-s", "SingleStream",
         "--duration", "0.5", "--output", str(tmp_path / "r")],
        cwd=tmp_path,
        env={"MLPI_CACHE": str(cache)},
    )
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path / "r")
    assert (run_dir / "result.json").is_file()
    assert proc.stderr.count("preprocessing 8 images") == 1  # built once, by the parent...
    logs = list(run_dir.rglob("harness.log"))
    assert logs and not any("preprocessing" in log.read_text() for log in logs)  # ...never by a test process
    assert len([p for p in (cache / "datasets" / "imagenet").iterdir() if not p.name.startswith(".")]) == 1
