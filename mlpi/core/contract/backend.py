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

    ``shape[0]`` is the batch dimension. A dimension that is ``None`` is dynamic.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample: everything after the batch dimension."""
        return self.shape[1:]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


def format_shape(shape: Iterable[int | None]) -> str:
    """A shape as messages show it: ``(None, 3, 224, 224)`` -> ``[?, 3, 224, 224]``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def fixed_batch_size(specs: Iterable[TensorSpec]) -> int | None:
    """The batch size a model's inputs fix, or ``None`` when its batch is dynamic.

    ``shape[0]`` is the batch dimension (see :class:`TensorSpec`); inputs without any
    dimension have none and are ignored. When several inputs fix it, the smallest is the
    most any batch can be.
    """
    fixed = [int(spec.shape[0]) for spec in specs if spec.shape and spec.shape[0] is not None]
    return min(fixed) if fixed else None


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
    """The canonical model file (ONNX) a session is built from, with its signature."""

    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


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
]
