"""The ``null`` backend: answers at once with correctly shaped zeros.

It runs no model, so a run with it measures mlpi itself: LoadGen, batching, gathering,
postprocessing and responses. Outputs take the model's output shapes (a dynamic
non-batch dimension becomes 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
)
from mlpi.core.contract.device import Device


@dataclass
class NullOptions:
    preferred_batch_size: int = field(
        default=64, metadata={"help": "batch size when --batch-size is not given", "min": 1}
    )


class NullSession(Session):
    def __init__(self, model: ModelArtifact, options: NullOptions) -> None:
        self.inputs = list(model.inputs)
        self.outputs = list(model.outputs)
        self.capabilities = Capabilities(concurrent=True, preferred_batch_size=options.preferred_batch_size)
        self.precision = "fp32"
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        first = next((s for s in self.inputs if s.batch_axis is not None), None)
        n = int(np.shape(feeds[first.name])[first.batch_axis or 0]) if first is not None else 1
        outputs = self._cache.get(n)
        if outputs is not None:
            return outputs
        outputs = self._cache[n] = {spec.name: np.zeros(_layout(spec, n), dtype=_dtype(spec.dtype)) for spec in self.outputs}
        return outputs


def _layout(spec: TensorSpec, rows: int) -> tuple[int, ...]:
    """``spec``'s shape in the file's layout for a batch of ``rows`` (dynamic dimensions 1)."""
    shape = [d or 1 for d in spec.shape]
    if spec.batch_axis is not None and spec.batch_axis < len(shape):
        shape[spec.batch_axis] = rows
    return tuple(shape)


class NullBackend(Backend):
    name = "null"
    device_kinds = ("cpu",)
    precisions = ("fp32",)
    Options = NullOptions

    def version(self) -> str:
        from mlpi import __version__

        return __version__

    def probe(self) -> list[Device]:
        return [Device("cpu")]

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        return NullSession(model, options)


def _dtype(name: str) -> np.dtype[Any]:
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype("float32")
