"""Small KiTS19 data sets on disk, in both forms the ``kits19`` dataset reads, for tests.

:func:`write_preprocessed` writes the layout MLCommons' 3d-unet-kits19 ``preprocess.py``
leaves behind, down to the pickles' content, so that the dataset's reading of it, and
MLCommons' own ``accuracy_kits.py`` (which reads ``preprocessed_files.pkl`` and
``nifti/<case>/segmentation.nii.gz``), can both be run against the same small folder.

:func:`write_raw` writes raw KiTS19 as github.com/neheller/kits19 lays it out, with a chosen
voxel spacing, so that resampling to the target spacing is exercised on volumes small
enough for a unit test. Its affine is shaped like KiTS19's own (voxel axes permuted and
negated), which is what the reference's reshaped-affine code expects.

:func:`synthetic_case` makes a CT-like volume (air, soft tissue, two bright "kidneys" with a
"tumour") and its label, smooth enough that gzip compresses it quickly.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: The affine of a volume at MLPerf's target spacing (1.6, 1.2, 1.2) mm, oriented as KiTS19's.
DEFAULT_AFFINE = np.array([
    [0.0, 0.0, -1.2, 0.0],
    [0.0, -1.2, 0.0, 0.0],
    [-1.6, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
])


def kits_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """An affine like KiTS19's for voxel ``spacing`` along (D, H, W): voxel axis 0 (the slices)
    runs along -z, axis 1 along -y, axis 2 along -x; its header's ``pixdim[1:4]`` is ``spacing``."""
    d, h, w = (float(s) for s in spacing)
    return np.array([[0.0, 0.0, -w, 0.0], [0.0, -h, 0.0, 0.0], [-d, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def write_preprocessed(folder: Path, cases: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       affine: np.ndarray | None = None) -> Path:
    """Write ``cases`` (name -> already preprocessed image and label, ``(D, H, W)`` or
    ``(1, D, H, W)``) as ``preprocess.py`` would have: ``<case>.pkl`` holding ``[image (1, D, H,
    W) float32, label (1, D, H, W) uint8]`` (``pickle.dump``, default protocol),
    ``preprocessed_files.pkl`` holding ``{"file_list": [names in the given order], "cases":
    {name: aux}}`` with aux's keys in preprocess.py's order, and ``nifti/<case>/imaging.nii.gz``
    and ``segmentation.nii.gz`` with ``affine`` (the reshaped affine). The volumes are taken
    as being at the target spacing already, so the original affine is the reshaped one and the
    zoom factor is 1. Returns ``folder``."""
    import nibabel

    affine = DEFAULT_AFFINE if affine is None else np.asarray(affine, dtype=np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict = {"file_list": list(cases), "cases": {}}
    for case, (image, label) in cases.items():
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label, dtype=np.uint8)
        image = image[np.newaxis] if image.ndim == 3 else image
        label = label[np.newaxis] if label.ndim == 3 else label
        if image.shape != label.shape or image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"{case}: image {image.shape} and label {label.shape} must be one (1, D, H, W)")
        with open(folder / f"{case}.pkl", "wb") as f:
            pickle.dump([image, label], f)
        nifti = folder / "nifti" / case
        nifti.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(image[0], affine=affine), nifti / "imaging.nii.gz")
        nibabel.save(nibabel.Nifti1Image(label[0], affine=affine), nifti / "segmentation.nii.gz")
        index["cases"][case] = {
            "original_affine": affine.copy(),
            "reshaped_affine": affine.copy(),
            "zoom_factor": np.ones(3),
            "case": case,
            "image_shape": image.shape,
        }
    with open(folder / "preprocessed_files.pkl", "wb") as f:
        pickle.dump(index, f)
    return folder


def write_raw(folder: Path, cases: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
              spacing: tuple[float, float, float]) -> Path:
    """Write ``cases`` (name -> image and label, ``(D, H, W)``; a label of None writes no
    segmentation, as KiTS19's test cases have none) as raw KiTS19:
    ``folder/<case>/imaging.nii.gz`` (the image's own dtype) and ``segmentation.nii.gz``
    (uint8), both with :func:`kits_affine` of ``spacing``. Returns ``folder``."""
    import nibabel

    affine = kits_affine(spacing)
    for case, (image, label) in cases.items():
        where = folder / case
        where.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(np.asarray(image), affine=affine), where / "imaging.nii.gz")
        if label is not None:
            nibabel.save(nibabel.Nifti1Image(np.asarray(label, dtype=np.uint8), affine=affine),
                         where / "segmentation.nii.gz")
    return folder


def synthetic_case(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in Hounsfield units and its uint8 label (0 background, 1 kidney,
    2 tumour): two ellipsoid kidneys at about 200 HU, a tumour at 80 HU inside one, soft
    tissue at 40 HU, air at -1000 HU, and a little noise (so clipping and resampling matter)."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    body = (y / 0.9) ** 2 + (x / 0.9) ** 2 < 1
    image = np.where(body, 40, -1000).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    shift = rng.uniform(-0.1, 0.1, size=2)
    for side in (-0.45, 0.45):
        kidney = ((z - shift[0]) / 0.5) ** 2 + ((y - 0.1) / 0.3) ** 2 + ((x - side - shift[1]) / 0.2) ** 2 < 1
        image[kidney] = 200
        label[kidney] = 1
    tumour = ((z - shift[0]) / 0.2) ** 2 + ((y - 0.1) / 0.15) ** 2 + ((x - 0.45 - shift[1]) / 0.1) ** 2 < 1
    image[tumour] = 80
    label[tumour] = 2
    image += rng.integers(-20, 21, size=shape, dtype=np.int16)
    return image, label
