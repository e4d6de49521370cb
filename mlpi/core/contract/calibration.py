"""CalibrationSet: the samples a benchmark lets quantisation see.

MLPerf's closed division allows a model to be quantised only with statistics of the
benchmark's official calibration set, a list of samples MLCommons publishes beside the
reference (``calibration/<dataset>/...`` in the inference repository: ImageNet's
``cal_image_list_option_1.txt``, COCO's, OpenImages', SQuAD's features, KiTS' cases...).
A model plugin declares its set on its :class:`~mlpi.core.contract.model.ModelSpec`, with a
copy of the list shipped in the plugin, and names the dataset plugin that reads the samples
by name (``DatasetRequest.names``). Quantising on anything else is allowed, and marks the
run as not valid for the closed division.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CalibrationSet:
    """A benchmark's official calibration list.

    - ``dataset``: the dataset plugin that reads the listed samples by name;
    - ``list_file``: one sample name per line (a copy of MLCommons' list, shipped with the plugin);
    - ``source``: where MLCommons keeps that list, for results (``calibration/ImageNet/cal_image_list_option_1.txt``).
    """

    dataset: str
    list_file: Path
    source: str

    def names(self) -> tuple[str, ...]:
        return read_names(self.list_file)

    def sha256(self) -> str:
        return hashlib.sha256(self.list_file.read_bytes()).hexdigest()


def read_names(path: Path) -> tuple[str, ...]:
    """The sample names of a calibration list: one per line, blank lines ignored."""
    text = path.read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
