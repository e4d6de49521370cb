"""The ``qaic`` backend: a QAIC-style multi-card accelerator, in simulation mode.

A Cloud AI 100-class card runs a compiled program on a few parallel activations and
queues further requests in front of them; a server holds several cards
(``--device qaic:0-3``). Without the vendor runtime this backend **simulates** such a
machine: every virtual card runs the real model on the CPU through another mlpi backend,
its *compute backend* (``-o compute_backend=NAME``, ONNX Runtime by default), so the
outputs (and accuracy) are real, while a device model shapes the timing:

- ``concurrency`` activations per card run batches in parallel;
- ``queue_depth`` more requests wait in the card's queue; beyond that, submitting blocks;
- a batch of ``n`` occupies its activation for ``latency_ms + latency_per_sample_ms * n``
  plus the time its inputs and outputs take over the host link (``link_gbps``; a model
  whose tables are split over cards pays for every pooled embedding that leaves a card),
  or for as long as the CPU really takes, if that is longer.

The compute backend is found through mlpi's plugin registry like any ``--backend`` (never
imported by name), and is loaded on ``cpu`` with its default options; ``threads`` goes
to its thread-count option when it has one (``intra_op_threads``, ``num_threads`` or
``threads``). The four device-model knobs are options, so ``plugins.toml`` can describe
the card being modelled::

    [options.qaic]
    concurrency = 4
    latency_ms = 0.8

Where the host is slower than the device model, the host, not the card, sets the pace: each
session reports, per batch, its host compute time against the modelled time
(:meth:`QaicSimSession.pace`), results record it per card, and the core warns when most
batches were host-bound. ``-o outputs=skip`` times the device model alone: a card then
computes nothing and returns zeros of the outputs' shapes and dtypes after the modelled
time, a performance-only mode the core refuses for accuracy tests and audits
(:meth:`QaicBackend.performance_only`).

Sessions are marked ``simulated``: every result says so. Sessions set ``max_in_flight`` to
concurrency + queue depth and leave placement to the core's multi-device dispatch — the
same path a real multi-card runtime takes. The vendor runtime path itself is not
implemented; where it is installed the backend still simulates, and says that too.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    PaceRecord,
    Session,
    TensorSpec,
    fixed_batch_size,
    format_shape,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DeviceError,
    MlpiError,
    PluginError,
    UsageError,
    suggest,
)

#: Virtual cards the simulator exposes: qaic:0 to qaic:7.
SIMULATED_CARDS = 8
#: Where the vendor's platform SDK installs itself.
VENDOR_RUNTIME = Path("/opt/qti-aic")
#: The compute backend when ``-o compute_backend`` is not given.
DEFAULT_COMPUTE_BACKEND = "onnxruntime"
#: Options of a compute backend that take ``threads``, the first one it has.
_THREAD_OPTIONS = ("intra_op_threads", "num_threads", "threads")
#: What ``load`` assumes when the run says nothing of its batches.
_NO_CONTEXT = LoadContext()


@dataclass
class QaicOptions:
    # each activation and each queued request is a batch in flight, with its own thread
    concurrency: int = field(
        default=2, metadata={"help": "activations per card: batches one card runs at once", "min": 1, "threads": True}
    )
    queue_depth: int = field(
        default=4, metadata={"help": "requests a card queues behind its busy activations", "threads": True}
    )
    latency_ms: float = field(
        default=1.0, metadata={"help": "device model: fixed time per batch (a in a + b*batch)", "min": 0}
    )
    latency_per_sample_ms: float = field(
        default=0.25, metadata={"help": "device model: time per sample in a batch (b in a + b*batch)", "min": 0}
    )
    link_gbps: float = field(
        default=16.0,
        metadata={"help": "device model: host-card link in GB/s, charged for a batch's inputs and outputs (0: free)",
                  "min": 0},
    )
    max_batch_size: int = field(default=64, metadata={"help": "largest batch the card program accepts", "min": 1})
    preferred_batch_size: int = field(default=8, metadata={"help": "batch size when --batch-size is not given", "min": 1})
    threads: int = field(
        default=1, metadata={"help": "CPU threads that compute one virtual card's outputs", "min": 1, "threads": True}
    )
    compute_backend: str = field(
        default=DEFAULT_COMPUTE_BACKEND,
        metadata={"help": "installed mlpi backend that computes the outputs on the CPU (`mlpi backends` lists them)"},
    )
    outputs: Literal["compute", "skip"] = field(
        default="compute",
        metadata={"help": "compute: each card computes the real outputs on the CPU; skip: it returns zeros of the "
                          "outputs' shapes and dtypes after the modelled time (performance only: no accuracy "
                          "test, no audit)"},
    )


class _Card:
    """One virtual card's shared state: its queue and its activations, across all sessions on it."""

    def __init__(self, concurrency: int, queue_depth: int) -> None:
        self.accepting = threading.BoundedSemaphore(concurrency + queue_depth)
        self.activations = threading.BoundedSemaphore(concurrency)


_cards: dict[tuple[int, int, int], _Card] = {}
_cards_lock = threading.Lock()


def _card(index: int, concurrency: int, queue_depth: int) -> _Card:
    with _cards_lock:
        key = (index, concurrency, queue_depth)
        card = _cards.get(key)
        if card is None:
            card = _cards[key] = _Card(concurrency, queue_depth)
        return card


class QaicSimSession(Session):
    """The real model on the CPU (or, with ``outputs=skip``, zeros), timed by the card's device model."""

    simulated = True

    def __init__(self, compute: Session | None, card: _Card, options: QaicOptions, model: ModelArtifact) -> None:
        self._compute = compute
        self._card = card
        self._fixed_s = options.latency_ms / 1e3
        self._per_sample_s = options.latency_per_sample_ms / 1e3
        self._s_per_byte = 0.0 if options.link_gbps <= 0 else 1.0 / (options.link_gbps * 1e9)
        # A card runs several activations at once; a compute session that is not concurrent
        # still gets one batch at a time.
        self._compute_lock = None if compute is None or compute.capabilities.concurrent else threading.Lock()
        self._pace = PaceRecord()
        self._pace_lock = threading.Lock()
        if compute is not None:
            self.inputs, self.outputs, self.precision = compute.inputs, compute.outputs, compute.precision
            own = compute.capabilities
            fixed, own_limit = own.fixed_batch, own.max_batch_size
        else:  # nothing computes: the model file's own signature, its fixed batch if it has one
            self.inputs, self.outputs, self.precision = list(model.inputs), list(model.outputs), model.precision or "fp32"
            own_limit = fixed_batch_size(model.inputs)
            fixed = own_limit is not None
        # a model with a fixed batch keeps it on the card too
        limit = own_limit if fixed and own_limit else options.max_batch_size
        self.capabilities = Capabilities(
            max_batch_size=limit,
            fixed_batch=fixed,
            concurrent=True,
            preferred_batch_size=limit if fixed else min(options.preferred_batch_size, limit),
            max_in_flight=options.concurrency + options.queue_depth,
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        if rows > self.capabilities.max_batch_size:  # type: ignore[operator]
            raise UsageError(
                f"batch of {rows} is larger than the card program's {self.capabilities.max_batch_size}",
                "lower --batch-size or raise -o max_batch_size",
            )
        card = self._card
        with card.accepting, card.activations:
            started = time.monotonic()
            outputs = self._outputs(feeds, rows)
            host_s = time.monotonic() - started
            moved = sum(v.nbytes for v in feeds.values()) + sum(np.asarray(v).nbytes for v in outputs.values())
            modelled_s = self._fixed_s + self._per_sample_s * rows + moved * self._s_per_byte
            remaining = started + modelled_s - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
        with self._pace_lock:
            self._pace += PaceRecord(1, int(host_s > modelled_s), host_s, modelled_s)
        return outputs

    def _outputs(self, feeds: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
        """The compute backend's outputs; with ``outputs=skip``, zeros of their shapes and dtypes."""
        if self._compute is None:
            return {spec.name: np.zeros(_rows_shape(spec, rows), dtype=spec.dtype) for spec in self.outputs}
        if self._compute_lock is None:
            return self._compute.run(feeds)
        with self._compute_lock:
            return self._compute.run(feeds)

    def pace(self) -> PaceRecord:
        """Batches so far, and those the host (computing outputs) held longer than the device model."""
        with self._pace_lock:
            return self._pace

    def close(self) -> None:
        if self._compute is not None:
            self._compute.close()


def _rows_shape(spec: TensorSpec, rows: int) -> tuple[int, ...]:
    """An output's shape for a batch of ``rows``: its dynamic batch dimension set to ``rows``
    (``check`` refused any other dynamic one)."""
    return tuple(rows if d is None else d for d in spec.shape)


class QaicBackend(Backend):
    name = "qaic"
    device_kinds = ("qaic",)
    precisions = ("fp32", "fp16", "bf16", "int8")
    Options = QaicOptions
    install_hint = 'pip install "mlpi[onnxruntime]" (the simulator computes outputs with ONNX Runtime by default)'
    #: Its cards are simulated: a system description lists no qaic hardware because of it.
    simulated = True

    def __init__(self) -> None:
        self._registry: Any = None

    def version(self) -> str:
        """``simulator (<compute backend> <its version>)`` for the default compute backend."""
        try:
            compute = self._compute(DEFAULT_COMPUTE_BACKEND)
            inner = compute.version()
        except MlpiError as exc:
            raise PluginError(
                f"the qaic simulator computes with {DEFAULT_COMPUTE_BACKEND}: {exc.message}", exc.hint or self.install_hint
            ) from None
        return f"simulator ({compute.name} {inner})"

    def runtime_distributions(self) -> tuple[str, ...]:
        try:
            return tuple(self._compute(DEFAULT_COMPUTE_BACKEND).runtime_distributions())
        except Exception:  # noqa: BLE001 - a missing compute backend has no versions to record
            return ()

    def probe(self) -> list[Device]:
        try:
            if Device("cpu") not in self._compute(DEFAULT_COMPUTE_BACKEND).probe():
                return []
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        return [Device("qaic", (i,)) for i in range(SIMULATED_CARDS)]

    def describe(self, device: Device) -> str:
        where = f"; vendor runtime found at {VENDOR_RUNTIME} but not used" if VENDOR_RUNTIME.exists() else ""
        return f"simulated card{where}"

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        index = device.index
        if index >= SIMULATED_CARDS:
            raise DeviceError(
                f"there is no card qaic:{index}: the simulator has qaic:0-{SIMULATED_CARDS - 1}",
                f"use cards 0 to {SIMULATED_CARDS - 1}, e.g. --device qaic:0-3",
            )
        if precision not in (None, "fp32", model.precision):
            raise UsageError(f"the qaic simulator runs a model in its own precision, not {precision}",
                             "drop --precision, or let mlpi derive that precision (the default)")
        if options.outputs == "skip":
            _check_zero_outputs(model)
        self._compute(options.compute_backend)

    def performance_only(self, options: Any) -> str | None:
        if options.outputs != "skip":
            return None
        return "with -o outputs=skip the simulated cards return zeros, not the model's outputs"

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = _NO_CONTEXT
    ) -> Session:
        self.check(model, device, options, precision)
        card = _card(device.index, options.concurrency, options.queue_depth)
        if options.outputs == "skip":
            return QaicSimSession(None, card, options, model)
        compute = self._compute(options.compute_backend)
        compute_options = _compute_options(compute.Options, options.threads)
        session = compute.load(model, Device("cpu"), compute_options, model.precision, LoadContext(context.batch_size))
        return QaicSimSession(session, card, options, model)

    # -- helpers -------------------------------------------------------------------------

    def _compute(self, name: str) -> Backend:
        """The compute backend ``name`` (or an alias of it), from the plugin registry.

        UsageError listing the usable ones for a name that is not one of them.
        """
        if self._registry is None:
            from mlpi.core.plugins.config import PluginsConfig
            from mlpi.core.plugins.registry import Registry

            self._registry = Registry(PluginsConfig.load(None))
        registry = self._registry
        usable = _cpu_backends(registry, exclude=self.name)
        canonical = registry.canonical_backend(name)
        if canonical.lower() not in {n.lower() for n in usable}:
            found = {p.name.lower(): p for p in registry.plugins("backends")}.get(canonical.lower())
            if canonical.lower() == self.name:
                why = "is the simulator itself"
            elif found is None:
                why = "is not an installed backend"
            elif found.disabled:
                why = f"is disabled in {', '.join(registry.config.sources)}"
            elif found.broken:
                why = f"failed to import ({found.error})"
            else:
                why = "does not run on the cpu"
            listed = ", ".join(usable) or "none are installed"
            example = DEFAULT_COMPUTE_BACKEND if DEFAULT_COMPUTE_BACKEND in usable else (usable or ["NAME"])[0]
            raise UsageError(
                f"qaic option compute_backend is '{name}', which {why}",
                f"{suggest(name, usable, listing=False)}choose one of: {listed} (e.g. -o compute_backend={example})",
            )
        try:
            return registry.backend(canonical)
        except MlpiError as exc:
            raise type(exc)(f"qaic's compute backend: {exc.message}", exc.hint) from None


def _cpu_backends(registry: Any, exclude: str) -> list[str]:
    """Enabled, importable backends that can run on the cpu, sorted by name."""
    names = []
    for info in registry.plugins("backends"):
        if info.disabled or info.broken or info.name == exclude:
            continue
        if "cpu" in tuple(getattr(info.obj, "device_kinds", ()) or ()):
            names.append(info.key or info.name)  # a clashing plugin by its qualified name
    return names


def _check_zero_outputs(model: ModelArtifact) -> None:
    """``outputs=skip`` makes zeros of each output's shape: every dimension but the batch must
    be known, and its element type one numpy has."""
    for spec in model.outputs:
        unknown = any(d is None for d in spec.shape[1:])
        try:
            np.dtype(spec.dtype)
        except TypeError:
            unknown = True
        if unknown:
            raise UsageError(
                f"-o outputs=skip cannot make zeros for output '{spec.name}' ({spec.dtype} {format_shape(spec.shape)}): "
                "only its batch dimension may be dynamic",
                "drop -o outputs=skip (outputs=compute computes them)",
            )


def _compute_options(options_cls: type, threads: int) -> Any:
    """The compute backend's default options, with ``threads`` in its thread-count option."""
    options = options_cls()
    if dataclasses.is_dataclass(options):
        fields = {f.name for f in dataclasses.fields(options)}
        key = next((k for k in _THREAD_OPTIONS if k in fields), None)
        if key is not None:
            options = dataclasses.replace(options, **{key: threads})
    return options
