"""The backend contract: everything a runtime must provide to run under mlpi.

A backend plugin is a class registered under the entry-point group ``mlpi.backends``::

    [project.entry-points."mlpi.backends"]
    mybackend = "my_package.backend:MyBackend"

Implement :class:`Backend` (a factory, cheap to create, that must import its runtime only
inside :meth:`Backend.version`, :meth:`Backend.probe` and :meth:`Backend.load`) and
:class:`Session` (one loaded model on one device). The core does the rest: datasets,
batching, padding for fixed batch sizes, LoadGen, results. Nothing in the core knows a
backend by name; what it needs to know, a backend says through these classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlpi.core.contract.device import Device

#: Precisions a backend may run; ``Session.precision`` reports the one that really runs.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one model input or output.

    ``batch_axis`` is the batch dimension: ``0`` (the first, as almost every model has it),
    another (an LSTM state ``[layers, batch, hidden]`` has 1), or ``None``: not batched, the
    tensor is the same for every batch (a scalar sample rate, a constant state) and is fed as
    it is. A dimension that is ``None`` is dynamic. Sessions always see and answer tensors in
    the file's own layout; the core moves batch axes to the front for datasets, batching and
    responses (:mod:`mlpi.core.engine.batch_axes`).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    batch_axis: int | None = 0

    @property
    def batch_dynamic(self) -> bool:
        return self.batch_axis is not None and len(self.shape) > self.batch_axis and self.shape[self.batch_axis] is None

    @property
    def batch_dim(self) -> int | None:
        """The batch dimension's size in the file (``None``: dynamic, or not batched)."""
        if self.batch_axis is None or len(self.shape) <= self.batch_axis:
            return None
        return self.shape[self.batch_axis]

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample: every dimension but the batch's (all of them, not batched)."""
        if self.batch_axis is None:
            return self.shape
        return self.shape[: self.batch_axis] + self.shape[self.batch_axis + 1 :]

    def batch_first(self) -> TensorSpec:
        """This tensor as the core batches it: the batch dimension first (a dynamic one for a
        tensor that is not batched, whose every sample holds the whole tensor)."""
        if self.batch_axis == 0:
            return self
        return TensorSpec(self.name, self.dtype, (self.batch_dim, *self.sample_shape))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.batch_axis != 0:
            data["batch_axis"] = self.batch_axis
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        axis = data.get("batch_axis", 0)
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis < 0):
            raise ValueError(f"batch_axis of {data.get('name')!r} is {axis!r}, not a dimension or null")
        return cls(data["name"], data["dtype"], tuple(data["shape"]), axis)


def format_shape(shape: Iterable[int | None]) -> str:
    """A shape as messages show it: ``(None, 3, 224, 224)`` -> ``[?, 3, 224, 224]``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def fixed_batch_size(specs: Iterable[TensorSpec]) -> int | None:
    """The batch size a model's inputs fix, or ``None`` when its batch is dynamic.

    Each input's ``batch_axis`` is its batch dimension (see :class:`TensorSpec`); inputs that
    are not batched, or have no dimension, are ignored. When several inputs fix it, the
    smallest is the most any batch can be.
    """
    fixed = [int(dim) for spec in specs if (dim := spec.batch_dim) is not None]
    return min(fixed) if fixed else None


def require_batch_first(model: ModelArtifact, backend: str, why: str) -> None:
    """For a backend that builds for batches along every tensor's first dimension (an engine
    per batch size): a UsageError naming the tensors the model batches along another dimension,
    or not at all (``why``: what the backend builds)."""
    from mlpi.core.contract.errors import UsageError

    other = [f"'{s.name}' ({'not batched' if s.batch_axis is None else f'batched along dimension {s.batch_axis}'})"
             for s in (*model.inputs, *model.outputs) if s.batch_axis != 0]
    if other:
        raise UsageError(f"backend '{backend}' {why} along each tensor's first dimension, and this model has "
                         f"{', '.join(other)}",
                         "use --backend onnxruntime or openvino, or export the model with the batch first")


@dataclass(frozen=True)
class Capabilities:
    """What a session can do; the core adapts batching and threading to it.

    - ``max_batch_size``: the largest batch :meth:`Session.run` accepts (``None``: any).
    - ``fixed_batch``: ``run`` accepts only exactly ``max_batch_size`` rows; the core pads
      partial batches and ignores the padded rows of the outputs.
    - ``concurrent``: ``run`` may be called from several threads at once on this session.
    - ``preferred_batch_size``: the batch size used when the user gives none.
    - ``max_in_flight``: how many batches the session works on at once (execution contexts,
      infer requests, a card's activations plus its queue). The core keeps up to this many
      in flight, each from its own thread, so ``max_in_flight > 1`` needs ``concurrent``.
    """

    max_batch_size: int | None = None
    fixed_batch: bool = False
    concurrent: bool = False
    preferred_batch_size: int = 1
    max_in_flight: int = 1

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or (self.max_in_flight > 1 and not self.concurrent):
            raise ValueError("max_in_flight must be 1, or more on a concurrent session")


@dataclass(frozen=True)
class ModelArtifact:
    """The canonical model file (ONNX) a session is built from, with its signature.

    ``precision``: the precision the graph itself carries where ``--precision`` asked for it:
    a file mlpi derived from the model's fp32 file (:mod:`mlpi.core.engine.precision`: fp16/bf16
    types, or int8 Q/DQ nodes, in the graph), or a file quantised before. The backend runs the
    graph as it is, with no precision flags or calibrator of its own. ``None``: no precision
    was asked for, or the backend derives it itself (``Backend.native_precision``).
    """

    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str | None = None


@dataclass(frozen=True)
class LoadContext:
    """What the run will ask of a session, for backends that build ahead of time
    (engines with optimisation profiles, engines compiled for one batch size, int8 calibration).

    - ``batch_size``: the largest batch the run will send (partial batches are smaller);
      ``None`` when the user gave none and the session's ``preferred_batch_size`` decides.
    - ``calibration``: ``calibration(batch_size)`` yields feed dicts of representative inputs
      (the model's calibration set), for int8 builds; ``None`` when the run has no data for it.
    """

    batch_size: int | None = None
    calibration: Callable[[int], Iterator[Mapping[str, np.ndarray]]] | None = None


@dataclass(frozen=True)
class PaceRecord:
    """What set the pace of a simulated session's batches: its device model, or the host.

    A simulated device (``Session.simulated``) that also computes the real outputs on the
    host holds each batch for the time its device model asks for, or for as long as the host
    takes, if longer; when the host is the slower one, the result measures the host CPU, not
    the device being modelled. Figures are totals since the session was loaded (the core
    subtracts what warm-up and calibration ran):

    - ``modelled_batches``: batches the device model timed;
    - ``host_bound_batches``: those of them for which host computation took longer than the model;
    - ``host_compute_s``: seconds of host computation, summed over those batches;
    - ``modelled_s``: seconds the device model asked for, summed over the same batches.
    """

    modelled_batches: int = 0
    host_bound_batches: int = 0
    host_compute_s: float = 0.0
    modelled_s: float = 0.0

    def __add__(self, other: PaceRecord) -> PaceRecord:
        return PaceRecord(self.modelled_batches + other.modelled_batches,
                          self.host_bound_batches + other.host_bound_batches,
                          self.host_compute_s + other.host_compute_s, self.modelled_s + other.modelled_s)

    def __sub__(self, other: PaceRecord) -> PaceRecord:
        return PaceRecord(self.modelled_batches - other.modelled_batches,
                          self.host_bound_batches - other.host_bound_batches,
                          self.host_compute_s - other.host_compute_s, self.modelled_s - other.modelled_s)


class Session(ABC):
    """One model loaded on one device unit, ready to run batches.

    Instances must set ``inputs``, ``outputs``, ``capabilities`` and ``precision``; a session
    whose timing comes from a device model rather than real hardware sets ``simulated``,
    and every result it produces says so. ``precision_detail`` says what changes the numbers
    beyond ``precision`` (a runtime quantizing activations of an fp32 run on its own, say);
    results record it and the run's summary prints it.
    ``run`` receives one C-contiguous array per input with the batch as the first
    dimension and returns one array per output, batch first. The core never calls
    ``run`` concurrently on one session unless ``capabilities.concurrent`` is true.
    """

    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    capabilities: Capabilities
    precision: str
    simulated: bool = False
    precision_detail: str | None = None

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run one batch synchronously."""

    def close(self) -> None:
        """Release the device memory and runtime objects this session holds."""

    def pace(self) -> PaceRecord | None:
        """Optional, for a simulated session that also computes on the host: what set the pace
        of its batches so far (:class:`PaceRecord`, totals since load). The core sums it per
        device unit into each test's ``devices`` and warns when the host, not the device model,
        set the pace. ``None`` (the default): nothing to report. Safe to call while batches run."""
        return None


@dataclass
class NoOptions:
    """For backends without options."""


class Backend(ABC):
    """A runtime that can load a :class:`ModelArtifact` onto a :class:`Device`.

    Class attributes:

    - ``name``: the entry-point name users type after ``--backend``.
    - ``device_kinds``: device kinds this backend can ever use, e.g. ``("cpu", "cuda")``.
    - ``precisions``: precisions it can run (a subset of :data:`PRECISIONS`).
    - ``Options``: a dataclass of its knobs with defaults; users set them with
      ``-o key=value`` or in ``plugins.toml``; unknown keys are rejected by the core.
      A field's ``metadata["help"]`` documents it for ``mlpi backends``. The core checks
      numbers, so a backend does not: a float must be finite; ``metadata["min"]`` and
      ``metadata["max"]`` bound a number (inclusive); ``metadata["threads"] = True`` marks a
      count of host threads (or of things that each take one: streams, requests in flight),
      0 or more unless ``"min"`` says otherwise and at most
      :func:`mlpi.core.plugins.options.thread_limit`.
    - ``install_hint``: the command that installs the runtime, shown when it is missing.
    - ``simulated``: its devices are a simulation (timing from a device model); a system
      description never lists them as hardware.
    """

    name: ClassVar[str]
    device_kinds: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    Options: ClassVar[type] = NoOptions
    install_hint: ClassVar[str] = ""
    simulated: ClassVar[bool] = False

    @abstractmethod
    def version(self) -> str:
        """The runtime's version. Raises :class:`~mlpi.core.contract.errors.PluginError` with the
        install hint when the runtime is not installed."""

    @abstractmethod
    def probe(self) -> list[Device]:
        """Device units really usable on this machine now. Never raises: an absent driver
        or runtime simply yields no devices of that kind."""

    @abstractmethod
    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        """Load ``model`` on one unit of ``device`` with ``options`` (an ``Options`` instance).

        ``precision`` is what the user asked for, or ``None`` for the backend's default;
        ``context`` says what the run will send, for backends that build for it.
        Raise :class:`~mlpi.core.contract.errors.DeviceError` when the device cannot be used and
        :class:`~mlpi.core.contract.errors.ModelError` when the runtime rejects the model.
        """

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        """Optional: reject, before any test starts, what ``load`` would reject later
        (options that do not fit the device, a precision the model cannot run...).

        Must be cheap: it runs while the plan is checked. Raise the same errors ``load`` would.
        """

    def describe(self, device: Device) -> str:
        """Optional: what one probed unit is, for ``mlpi backends`` (a GPU's name and memory,
        "simulated card"...). Never raises; empty when there is nothing to add."""
        return ""

    def runtime_distributions(self) -> tuple[str, ...]:
        """Python distributions whose versions belong in results (e.g. ``("onnxruntime",)``)."""
        return ()

    def native_precision(self, options: Any, precision: str) -> str | None:
        """Optional: where ``options`` ask this backend to derive ``precision`` from the fp32
        model itself (its builder's flags and calibrator, a runtime quantizer), that method in
        words, for results ("TensorRT 10 builder flags FP16+INT8, entropy calibrator");
        ``None`` (the default): the core derives ``precision`` as a model transform
        (:mod:`mlpi.core.engine.precision`) and the backend is given the transformed graph, an
        artifact whose ``precision`` is set. Must be cheap and never raise for options the
        backend accepts; ``check`` refuses a native method the installed runtime lacks."""
        return None

    def performance_only(self, options: Any) -> str | None:
        """Optional: with ``options``, why this backend's sessions return outputs that are not the
        model's (zeros of the outputs' shapes and dtypes, say, in a mode that times the device
        alone), naming the option; ``None`` (the default) when they compute the real outputs.
        The core refuses accuracy tests and compliance audits of such a run before it starts,
        and its results say so."""
        return None

    def device_hint(self, kind: str) -> str | None:
        """Optional: why this machine has no usable unit of device ``kind`` for this backend,
        and the fix ("no NVIDIA driver was found...", "this is the CPU-only package: ..."),
        for the error that refuses the device. None when the backend cannot tell. Never raises."""
        return None


__all__ = [
    "PRECISIONS",
    "Backend",
    "Capabilities",
    "LoadContext",
    "ModelArtifact",
    "NoOptions",
    "PaceRecord",
    "Session",
    "TensorSpec",
    "fixed_batch_size",
    "format_shape",
    "require_batch_first",
]
