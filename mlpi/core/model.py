"""ModelSpec: what mlpi knows about a model besides its weights.

A model plugin registers a :class:`ModelSpec` (or a zero-argument callable returning one)
under ``mlpi.models``. A model given only as a file (``--model-path any.onnx``) gets a
spec made from the file itself: no rules key (LoadGen's generic settings apply), raw
outputs as responses, and top-1 scoring when the dataset has labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpi.core.backend import TensorSpec
from mlpi.core.postprocess import Postprocessor, RawOutputs

if TYPE_CHECKING:
    from mlpi.core.accuracy import AccuracyResult
    from mlpi.core.artifacts import Artifact
    from mlpi.core.dataset import Dataset

#: ``score(responses_by_sample_index, dataset, outputs) -> AccuracyResult``
AccuracyScorer = Callable[[Mapping[int, bytes], "Dataset", Sequence[TensorSpec]], "AccuracyResult"]


def _score_raw(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    from mlpi.core.accuracy import raw_top1

    return raw_top1(responses, dataset.labels(), outputs[0])


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity, artifact and the rules it is measured by.

    - ``rules_key``: its name in LoadGen's mlperf.conf (``resnet50``, ``bert``...), or
      ``None`` for a model outside MLPerf's list.
    - ``artifact``: the canonical ONNX file (where to download it, its checksum).
    - ``inputs`` / ``outputs``: the signature the artifact must have.
    - ``build_random``: ``build_random(path, seed)`` writes an ONNX file with the same
      signature and seeded random weights, for performance-only runs without the download.
    - ``postprocess``: ``postprocess(outputs, max_batch)`` builds a response writer for the
      session's real outputs; each executor gets its own.
    - ``score``: computes accuracy from the accuracy log's responses (None: not scored).
    - ``quality_target``: the accuracy (percent) a valid result must reach.
    - ``datasets``: names of datasets that fit; the first is the default for accuracy.
    """

    name: str
    rules_key: str | None = None
    description: str = ""
    artifact: Artifact | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    datasets: tuple[str, ...] = ("synthetic",)
    postprocess: Callable[[Sequence[TensorSpec], int], Postprocessor] = field(default=RawOutputs)
    score: AccuracyScorer | None = _score_raw
    quality_target: float | None = None
    build_random: Callable[[Path, int], Path] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_file(cls, path: Path) -> ModelSpec:
        return cls(name=model_key(path.stem), description=f"model from {path}")


def load_spec(obj: Any) -> ModelSpec:
    """An entry point's object as a ModelSpec (it may be the spec or a factory of one)."""
    spec = obj if isinstance(obj, ModelSpec) else obj() if callable(obj) else obj
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{obj!r} is not a ModelSpec or a callable returning one")
    return spec


def model_key(text: str) -> str:
    """A name safe for mlperf.conf keys, file names and run ids."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "model"
