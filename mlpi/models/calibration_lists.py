"""The MLPerf calibration lists the model plugins declare, shipped in ``calibration/``.

Each file is a byte-for-byte copy of MLCommons' list (github.com/mlcommons/inference,
``calibration/``, Apache-2.0): the only samples the closed division lets quantisation see.
A test compares every copy with the pinned MLCommons checkout. The one exception is Criteo's:
MLCommons gives it as a README sentence (rows 89,137,319 to 89,265,318 of day 23), not a
file, so ``criteo_calibration_rows.txt`` writes that range as the ``criteo`` dataset reads
names (``FIRST-LAST``, 0-based, inclusive); the test checks it against the README's numbers.
"""

from __future__ import annotations

from pathlib import Path

from mlpi.core.contract.calibration import CalibrationSet

FOLDER = Path(__file__).parent / "calibration"


def _official(file: str, dataset: str, source: str) -> CalibrationSet:
    return CalibrationSet(dataset=dataset, list_file=FOLDER / file, source=source)


#: ResNet50: ImageNet's option 1 (MLCommons' README: use one of the two lists only).
IMAGENET = _official("cal_image_list_option_1.txt", "imagenet", "calibration/ImageNet/cal_image_list_option_1.txt")
OPENIMAGES = _official("openimages_cal_images_list.txt", "openimages", "calibration/openimages/openimages_cal_images_list.txt")
COCO = _official("coco_cal_images_list.txt", "coco", "calibration/COCO/coco_cal_images_list.txt")
SQUAD = _official("bert_calibration_features.txt", "squad", "calibration/SQuAD-v1.1/bert_calibration_features.txt")
KITS = _official("calibration_cases.txt", "kits19", "calibration/KiTS/calibration_cases.txt")
LIBRISPEECH = _official("calibration_files.txt", "librispeech", "calibration/LibriSpeech/calibration_files.txt")
#: DLRM-v2: the first 128,000 rows of day 23's second half (MLCommons' README; no list file).
CRITEO = _official("criteo_calibration_rows.txt", "criteo", "calibration/CriteoTerabyte/README.md")
