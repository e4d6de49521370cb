"""ModelSpec: what mlpi knows about a model besides its weights.

A model plugin registers a :class:`ModelSpec` (or a zero-argument callable returning one)
under ``mlpi.models``. A model given only as a file (``--model-path any.onnx``) gets a
spec made from the file itself: no rules key (LoadGen's generic settings apply), raw
outputs as responses, any dataset that can feed it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlpi.core.backend import TensorSpec
from mlpi.core.postprocess import Postprocessor, RawOutputs


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity, artifact and the rules it is measured by.

    - ``rules_key``: its name in LoadGen's mlperf.conf (``resnet50``, ``bert``...), or
      ``None`` for a model outside MLPerf's list.
    - ``artifact_url`` / ``artifact_sha256``: where the canonical ONNX file comes from.
    - ``postprocess``: ``postprocess(outputs, max_batch)`` builds a response writer for the
      session's real outputs; each executor gets its own.
    - ``datasets``: names of datasets that fit; the first is the default.
    """

    name: str
    rules_key: str | None = None
    description: str = ""
    artifact_url: str | None = None
    artifact_sha256: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    datasets: tuple[str, ...] = ("synthetic",)
    postprocess: Callable[[Sequence[TensorSpec], int], Postprocessor] = field(default=RawOutputs)

    @classmethod
    def for_file(cls, path: Path) -> ModelSpec:
        return cls(name=model_key(path.stem), description=f"model from {path}")


def model_key(text: str) -> str:
    """A name safe for mlperf.conf keys, file names and run ids."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "model"
