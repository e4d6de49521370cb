"""Batch axes other than the first, and tensors that are not batched.

Most models batch every input and output along dimension 0, and the core assumes it:
datasets make samples, batches stack them along the front, responses are cut from the front.
Some models do not: an LSTM's state ``[layers, batch, hidden]`` is batched along dimension 1,
a sample-rate input of shape ``[]`` is not batched at all. Each tensor's
``TensorSpec.batch_axis`` says which (``None``: not batched); this module decides it for a
run and keeps the rest of the core batch-first:

- :func:`resolve_batch_axes`: from ``--batch-axis NAME=K|none``, then the model plugin's
  declaration, then the file itself: a scalar is not batched, and a tensor whose first
  dimension is not the batch's symbolic name (``batch``, ``N``...) but another of its
  dimensions is, is batched along that one.
- :class:`AxesSession`: wraps a backend's session at the edge. The core feeds and reads it
  batch-first (:meth:`TensorSpec.batch_first`); it moves each batch axis where the file has it
  and back, and feeds a tensor that is not batched as it is, the same for every batch (the first
  loaded sample's value: :meth:`AxesSession.set_constants`), and gives every sample of a batch
  an output that is not batched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlpi.core.contract.backend import (
    Capabilities,
    ModelArtifact,
    PaceRecord,
    Session,
    TensorSpec,
    fixed_batch_size,
)
from mlpi.core.contract.errors import UsageError, suggest

EXTRA_KEY = "batch_axes"
_NONE = ("none", "no", "-")


def parse_batch_axes(values: Sequence[str]) -> dict[str, int | None]:
    """``--batch-axis NAME=K`` (``K`` a dimension, or ``none``) as ``{name: axis}``."""
    parsed: dict[str, int | None] = {}
    for value in values:
        name, eq, axis = value.rpartition("=")
        if not eq or not name.strip() or not axis.strip():
            raise UsageError(f"--batch-axis {value!r} is not NAME=AXIS",
                             "write --batch-axis state=1 (the batch is dimension 1) or --batch-axis sr=none (not batched)")
        text = axis.strip().lower()
        if text in _NONE:
            parsed[name.strip()] = None
        elif text.isdigit():
            parsed[name.strip()] = int(text)
        else:
            raise UsageError(f"--batch-axis {value!r}: {axis!r} is neither a dimension nor none",
                             "give the batch's dimension (0, 1, ...) or none for a tensor that is not batched")
    return parsed


@dataclass(frozen=True)
class Resolved:
    """The signature with batch axes, and how each axis other than 0 was decided."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reasons: dict[str, str]

    def record(self) -> dict[str, Any]:
        """What plans and results keep: each tensor not batched along dimension 0, and why."""
        return {spec.name: {"axis": spec.batch_axis, "why": self.reasons.get(spec.name, "")}
                for spec in (*self.inputs, *self.outputs) if spec.batch_axis != 0}


def resolve_batch_axes(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                       dim_names: Mapping[str, Sequence[str | None]], given: Mapping[str, int | None],
                       declared: Mapping[str, int | None] | None = None) -> Resolved:
    """Each tensor's batch axis: ``given`` (``--batch-axis``) first, then ``declared`` (the
    model plugin's), then what the file says (``dim_names``: each tensor's ``dim_param`` per
    dimension). UsageError for a name the model lacks, an axis it does not have, or a model
    none of whose inputs is batched."""
    names = [s.name for s in (*inputs, *outputs)]
    for name in given:
        if name not in names:
            raise UsageError(f"--batch-axis names '{name}', which is not an input or output of the model",
                             f"{suggest(name, names)}; `mlpi run --help` shows the form")
    batch_name = _batch_symbol(inputs, dim_names)
    reasons: dict[str, str] = {}

    def decide(spec: TensorSpec) -> TensorSpec:
        if spec.name in given:
            axis, why = given[spec.name], "--batch-axis"
        elif declared and spec.name in declared:
            axis, why = declared[spec.name], "the model plugin"
        elif not spec.shape:
            axis, why = None, "a scalar"
        else:
            axis, why = _from_names(dim_names.get(spec.name, ()), batch_name), f"its dimension named '{batch_name}'"
        if axis is not None and axis >= len(spec.shape):
            raise UsageError(f"{spec.name} has {len(spec.shape)} dimension{'s' if len(spec.shape) != 1 else ''} "
                             f"{list(spec.shape)}, so its batch cannot be dimension {axis}",
                             f"pass --batch-axis {spec.name}=K with K below {len(spec.shape)}, or {spec.name}=none")
        if axis != 0:
            reasons[spec.name] = why
        return replace(spec, batch_axis=axis)

    resolved_inputs = [decide(spec) for spec in inputs]
    resolved_outputs = [decide(spec) for spec in outputs]
    if resolved_inputs and all(spec.batch_axis is None for spec in resolved_inputs):
        raise UsageError("no input of this model is batched, so there are no samples to batch",
                         "give the batch's dimension of an input with --batch-axis NAME=K")
    return Resolved(resolved_inputs, resolved_outputs, reasons)


def _batch_symbol(inputs: Sequence[TensorSpec], dim_names: Mapping[str, Sequence[str | None]]) -> str | None:
    """The batch's symbolic name (``batch``, ``N``): the one most inputs have somewhere, and of
    those, the one most inputs have first (a sequence-first LSTM's ``[seq, batch, features]``
    and states ``[layers, batch, hidden]`` give ``batch``; BERT's ``[batch, seq]`` inputs too)."""
    having = Counter(name for spec in inputs for name in set(dim_names.get(spec.name, ())) if name)
    if not having:
        return None
    firsts = Counter(names[0] for spec in inputs if (names := dim_names.get(spec.name)) and names[0])
    return max(having, key=lambda name: (having[name], firsts[name]))


def _from_names(names: Sequence[str | None], batch_name: str | None) -> int:
    """Dimension 0, unless the batch's name is another dimension's (and not the first's)."""
    if batch_name is None or not names or names[0] == batch_name:
        return 0
    where = [k for k, name in enumerate(names) if name == batch_name]
    return where[0] if len(where) == 1 else 0


def to_file_layout(batch: np.ndarray, axis: int | None) -> np.ndarray:
    """A batch-first input as the file takes it: the batch moved to ``axis``, or, for an input
    that is not batched (``None``), the first sample's value (every sample holds the same)."""
    if axis is None:
        return np.array(batch[0])  # np.array keeps a scalar 0-d
    return np.ascontiguousarray(np.moveaxis(batch, 0, axis)) if axis else batch


def needs_axes(artifact: ModelArtifact) -> bool:
    return any(spec.batch_axis != 0 for spec in (*artifact.inputs, *artifact.outputs))


class AxesSession(Session):
    """A backend's session, fed and read batch-first by the core (see the module docstring)."""

    def __init__(self, inner: Session, artifact: ModelArtifact) -> None:
        self._inner = inner
        self._in = {spec.name: spec for spec in artifact.inputs}
        self._out = {spec.name: spec for spec in artifact.outputs}
        self._batched = next(spec.name for spec in artifact.inputs if spec.batch_axis is not None)
        self._constants: dict[str, np.ndarray] = {}
        self.inputs = [spec.batch_first() for spec in artifact.inputs]
        self.outputs = [spec.batch_first() for spec in artifact.outputs]
        self.precision = inner.precision
        self.precision_detail = inner.precision_detail
        self.simulated = inner.simulated
        self.capabilities = _capabilities(inner.capabilities, artifact.inputs)

    def set_constants(self, sample: Mapping[str, np.ndarray]) -> None:
        """The tensors fed to every batch for the inputs that are not batched: ``sample`` is one
        loaded sample's feeds, batch of one (the core checks every loaded sample agrees)."""
        self._constants = {name: to_file_layout(sample[name], None)
                           for name, spec in self._in.items() if spec.batch_axis is None}

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        rows = int(feeds[self._batched].shape[0])
        real: dict[str, np.ndarray] = {}
        for name, array in feeds.items():
            axis = self._in[name].batch_axis if name in self._in else 0
            constant = self._constants.get(name) if axis is None else None
            real[name] = constant if constant is not None else to_file_layout(array, axis)
        answers = self._inner.run(real)
        out: dict[str, np.ndarray] = {}
        for name, array in answers.items():
            axis = self._out[name].batch_axis if name in self._out else 0
            if axis is None:
                out[name] = np.ascontiguousarray(np.broadcast_to(array, (rows, *np.shape(array))))
            elif axis == 0:
                out[name] = array
            else:
                out[name] = np.ascontiguousarray(np.moveaxis(array, axis, 0))
        return out

    def close(self) -> None:
        self._inner.close()

    def pace(self) -> PaceRecord | None:
        return self._inner.pace()


def _capabilities(own: Capabilities, inputs: Sequence[TensorSpec]) -> Capabilities:
    """The session's capabilities, with the batch limit read from the batch axes: a backend that
    reads its inputs' first dimension as the batch (an LSTM state's ``[2, batch, 128]`` as a
    fixed batch of 2) has its limit replaced by the batch dimension's."""
    first_dims = fixed_batch_size([TensorSpec(s.name, s.dtype, s.shape) for s in inputs])
    right = fixed_batch_size(inputs)
    if not own.fixed_batch or own.max_batch_size != first_dims or first_dims == right:
        return own
    return Capabilities(max_batch_size=right, fixed_batch=right is not None, concurrent=own.concurrent,
                        preferred_batch_size=right or 1, max_in_flight=own.max_in_flight)


def adapt(session: Session, artifact: ModelArtifact) -> Session:
    """``session`` as the core feeds it: wrapped where a tensor is not batched along dimension 0."""
    return AxesSession(session, artifact) if needs_axes(artifact) else session


def check_constants(dataset: Any, indices: Sequence[int], names: Sequence[str]) -> None:
    """Every loaded sample holds the same value for each input that is not batched (the value
    fed to every batch); a UsageError naming the input and two samples that differ."""
    if not names or not indices:
        return
    first = dataset.sample(indices[0])
    for index in indices[1:]:
        other = dataset.sample(index)
        for name in names:
            if not np.array_equal(first[name], other[name]):
                raise UsageError(
                    f"input '{name}' is not batched, so one value is fed to every batch, and the data gives samples "
                    f"{indices[0]} and {index} different values",
                    f"give every sample the same '{name}', or pass --batch-axis {name}=K if it is batched",
                )
