"""The ``deepsparse`` backend: ONNX models on Neural Magic's DeepSparse engine (CPU only).

A DeepSparse engine is compiled for one batch size. The session compiles for the model
file's own fixed batch when it has one, else for the largest batch the run will send
(``LoadContext.batch_size``, i.e. ``--batch-size`` or the scenario's), else for
:data:`PREFERRED_BATCH`; it reports a fixed batch, so the core pads partial batches.

DeepSparse 1.8 reads ONNX IR version 9 and opset 19 at most. A file with a newer IR
version (what recent ``onnx`` stamps on any model it writes), or that imports operator sets
no node uses (onnxruntime's ``quant_pre_process`` imports ``ai.onnx.ml`` 5, which DeepSparse's
bundled ONNX Runtime refuses, on every file it prepares, mlpi's derived int8 files included),
runs from a copy with the IR version lowered and those imports dropped, nodes untouched, kept
in ``<mlpi cache>/deepsparse/`` under the file's sha256; a newer opset is refused before the
run, with the fix.

``precision`` is the graph's numerics: ``int8`` when the graph quantizes (QDQ or
QLinear/Integer operators), else ``fp32``. ``fraction_of_supported_ops`` says how much of
the graph runs in DeepSparse's own kernels; the rest runs in its bundled ONNX Runtime.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpi.backends._model_hint import model_hint
from mlpi.core.contract.backend import (
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    Session,
    TensorSpec,
    fixed_batch_size,
    require_batch_first,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, ModelError, PluginError, UsageError
from mlpi.core.results.rundir import write_bytes_atomic

#: Batch size compiled when neither the model file nor the run fixes one: past 8, CPU
#: throughput per sample barely grows for the CNNs MLPerf runs, while every partial
#: Server batch pays for a full one; 8 is also a MultiStream query, so one engine shape
#: serves Offline, Server and MultiStream.
PREFERRED_BATCH = 8

#: The newest ONNX IR version and default-domain opset DeepSparse 1.8's loader accepts.
MAX_IR_VERSION = 9
MAX_OPSET = 19
#: Bump when :func:`runnable_copy` changes what it writes, so older copies are not reused.
COPY_VERSION = 2

SCHEDULERS = ("single_stream", "multi_stream", "elastic")

#: Operators that make a graph's numerics int8 (quantize/dequantize pairs or integer kernels).
_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
})

_UNSUPPORTED_INPUTS = ("float16", "bfloat16")
_CPU_HINT = (
    "DeepSparse needs Linux on an x86-64 CPU with AVX2 or AVX-512, or on ARM (NEON/SVE); "
    "use --backend onnxruntime or openvino on this machine"
)
_MODEL_HINT = "check the model with onnx.checker.check_model, or export it again"


@dataclass
class DeepSparseOptions:
    scheduler: Literal["single_stream", "multi_stream", "elastic"] = field(
        default="single_stream",
        metadata={
            "help": "single_stream: one batch at a time on all cores; multi_stream: batches from several "
            "threads in parallel streams; elastic: streams spread over NUMA nodes"
        },
    )
    num_streams: int = field(
        default=0, metadata={"help": "parallel streams for multi_stream/elastic (0: DeepSparse decides)", "threads": True}
    )
    num_cores: int = field(
        default=0, metadata={"help": "physical cores the engine uses (0: all it can see)", "threads": True}
    )


@dataclass(frozen=True)
class _GraphInfo:
    """What check() and load() need from the file, read once."""

    ir_version: int
    opset: int
    quantized: bool
    unused_domains: tuple[str, ...] = ()  # operator sets imported that no node uses
    scalar_scan_loops: tuple[str, ...] = ()  # Loop nodes with a scan output of scalars (see _scalar_scan_loops)


class DeepSparseSession(Session):
    """One compiled engine. DeepSparse's engine takes calls from several threads at once:
    its scheduler serialises them (single_stream) or runs them in parallel streams."""

    def __init__(self, engine: Any, model: ModelArtifact, model_path: Path, batch: int, quantized: bool) -> None:
        self.engine = engine
        self.model_path = model_path  # what the engine was compiled from: a converted copy for IR > 9
        self.batch_size = batch
        self.num_streams = int(engine.num_streams)
        self.scheduler = str(engine.scheduler.value)
        self.fraction_of_supported_ops = float(engine.fraction_of_supported_ops)
        self._input_names = [str(n) for n in engine.input_names]
        self._output_names = [str(n) for n in engine.output_names]
        by_name = {s.name: s for s in (*model.inputs, *model.outputs)}
        missing = [n for n in (*self._input_names, *self._output_names) if n not in by_name]
        if missing:
            raise ModelError(
                f"DeepSparse compiled {model.path} with tensors the file does not declare: {', '.join(missing)}",
                _MODEL_HINT,
            )
        self.inputs = [_with_batch(by_name[n], batch) for n in self._input_names]
        self.outputs = [_with_batch(by_name[n], batch) for n in self._output_names]
        parallel = self.num_streams if self.scheduler != "single_stream" else 1
        self.capabilities = Capabilities(
            max_batch_size=batch, fixed_batch=True, concurrent=True, preferred_batch_size=batch,
            max_in_flight=max(parallel, 1),
        )
        self.precision = "int8" if quantized else "fp32"
        # Outputs the file declares scalar: DeepSparse 1.8 returns some of them shaped [1]
        # (onnx's expanded DynamicQuantizeLinear cases); the one value is the scalar's.
        self._scalars = frozenset(n for n in self._output_names if by_name[n].shape == ())

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        engine = self.engine
        if engine is None:
            raise RuntimeError("this DeepSparse session is closed")
        # DeepSparse checks shapes and dtypes itself; val_inp only re-checks the batch in Python.
        arrays = [np.ascontiguousarray(feeds[name]) for name in self._input_names]
        outputs = dict(zip(self._output_names, engine.run(arrays, val_inp=False)))
        for name in self._scalars:
            if outputs[name].shape == (1,):
                outputs[name] = outputs[name].reshape(())
        return outputs

    def close(self) -> None:
        # The engine's memory and worker threads go with its last reference.
        self.engine = None


class DeepSparseBackend(Backend):
    name = "deepsparse"
    device_kinds = ("cpu",)
    precisions = ("fp32", "int8")
    Options = DeepSparseOptions
    install_hint = 'pip install "mlpi[deepsparse]"'

    def __init__(self) -> None:
        self._info: tuple[tuple[str, str], _GraphInfo] | None = None

    def version(self) -> str:
        return str(self._import().__version__)

    def runtime_distributions(self) -> tuple[str, ...]:
        return ("deepsparse",)

    def probe(self) -> list[Device]:
        try:
            self._import()
        except Exception:  # noqa: BLE001 - probing never raises
            return []
        return [Device("cpu")]

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        deepsparse = self._import()
        if device.kind != "cpu":
            raise DeviceError(f"backend 'deepsparse' cannot use device kind '{device.kind}'", "it runs on: cpu")
        require_batch_first(model, "deepsparse", "compiles an engine for batches")
        _check_options(options, int(deepsparse.cpu_architecture().num_available_physical_cores))
        half = [f"{s.name} ({s.dtype})" for s in model.inputs if s.dtype in _UNSUPPORTED_INPUTS]
        if half:
            raise ModelError(
                f"DeepSparse takes no float16/bfloat16 inputs; {model.path} has {', '.join(half)}",
                "export the model in fp32, or use --backend onnxruntime",
            )
        info = self._graph_info(model)
        if info.opset > MAX_OPSET:
            raise ModelError(
                f"DeepSparse 1.8 runs ONNX opset {MAX_OPSET} or lower; {model.path} uses opset {info.opset}",
                "export the model again with an older opset, e.g. torch.onnx.export(..., opset_version=17)",
            )
        if info.scalar_scan_loops:
            raise ModelError(
                f"DeepSparse 1.8 stacks a Loop's scalar scan outputs as [N, 1] where ONNX defines [N] (a wrong "
                f"answer seen in onnx's Range cases); {model.path} has such a Loop: "
                f"{', '.join(info.scalar_scan_loops[:3])}",
                "run this model on onnxruntime or openvino",
            )
        runs = model.precision or ("int8" if info.quantized else "fp32")
        if precision is not None and precision != runs:
            what = "quantized (int8) operators" if info.quantized else "no quantized operators"
            wanted = "quantized to int8" if precision == "int8" else f"exported in {precision}"
            raise UsageError(
                f"DeepSparse runs a model in its own precision: {model.path} has {what}, so it runs {runs}, not {precision}",
                f"drop --precision, or pass a model {wanted}",
            )

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        deepsparse = self._import()
        self.check(model, device, options, precision)
        info = self._graph_info(model)
        path = engine_source(model, info)
        batch = engine_batch_size(model, context)
        self._refuse_compiler_abort(deepsparse, model, path, batch, options, info)
        try:
            engine = deepsparse.compile_model(
                str(path),
                batch_size=batch,
                num_cores=options.num_cores or None,
                num_streams=options.num_streams or None,
                scheduler=options.scheduler,
            )
        except Exception as exc:  # noqa: BLE001 - DeepSparse raises plain RuntimeError/ValueError
            message = _clean(exc)
            if _CPU_PROBLEM.search(message):
                raise DeviceError(f"DeepSparse cannot run on this CPU: {message}", _CPU_HINT) from None
            raise ModelError(f"DeepSparse could not compile {model.path}: {message}",
                             model_hint(self.name, str(exc), _MODEL_HINT)) from None
        return DeepSparseSession(engine, model, path, batch, info.quantized)

    # -- helpers -------------------------------------------------------------------------

    def _refuse_compiler_abort(self, deepsparse: Any, model: ModelArtifact, path: Path, batch: int, options: Any,
                              info: _GraphInfo) -> None:
        """An int8 graph DeepSparse's AVX2 code generator would abort on is an error, not a
        crashed test process (see :mod:`mlpi.backends._deepsparse_probe`)."""
        from mlpi.backends import _deepsparse_probe as probe

        if not probe.needs_probe(info.quantized, dict(deepsparse.cpu_architecture())):
            return
        settings = {"num_cores": options.num_cores, "num_streams": options.num_streams, "scheduler": options.scheduler}
        version = str(deepsparse.__version__)
        # the runnable copy's name holds the source's sha256 and the copy's version
        identity = model.sha256 if path == model.path else path.stem
        ok, why = probe.compiles(path, identity, batch, settings, version)
        if ok:
            return
        if batch > 1 and probe.compiles(path, identity, 1, settings, version)[0]:
            hint = "pass --batch-size 1 (DeepSparse compiles this graph at batch 1 here), or run it on onnxruntime or openvino"
        else:
            hint = "run this int8 model on onnxruntime or openvino, or on a CPU with VNNI (AVX512-VNNI or AVX-VNNI)"
        raise ModelError(f"DeepSparse {version}'s compiler aborts on this int8 graph at batch {batch} on this CPU "
                         f"(AVX2 without VNNI): {why}", hint)

    def _import(self) -> Any:
        # Without this, importing sparsezoo asks a web service for this machine's country and
        # engines report their creation to an analytics service: no run should wait on either.
        os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
        try:
            import deepsparse
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "deepsparse":
                raise PluginError("DeepSparse is not installed", self.install_hint) from None
            raise PluginError(f"DeepSparse cannot be imported: {exc}", self.install_hint) from None
        except ImportError as exc:
            raise PluginError(f"DeepSparse cannot be imported: {exc}", self.install_hint) from None
        except OSError as exc:
            # deepsparse reads the CPU on import and raises OSError when it cannot run on it.
            raise DeviceError(f"DeepSparse cannot run on this CPU: {_clean(exc)}", _CPU_HINT) from None
        return deepsparse

    def _graph_info(self, model: ModelArtifact) -> _GraphInfo:
        key = (str(model.path), model.sha256)
        if self._info is not None and self._info[0] == key:
            return self._info[1]
        info = _read_graph_info(model.path)
        self._info = (key, info)
        return info


def engine_batch_size(model: ModelArtifact, context: LoadContext) -> int:
    """The batch an engine is compiled for: the file's fixed one, else the run's, else 8."""
    return fixed_batch_size(model.inputs) or int(context.batch_size or PREFERRED_BATCH)


def engine_source(model: ModelArtifact, info: _GraphInfo | None = None) -> Path:
    """The file DeepSparse compiles for ``model``: the file itself, or its runnable copy."""
    info = info or _read_graph_info(model.path)
    return runnable_copy(model) if info.ir_version > MAX_IR_VERSION or info.unused_domains else model.path


def runnable_copy(model: ModelArtifact) -> Path:
    """``model`` with its IR version lowered to what DeepSparse reads and the operator sets no
    node uses no longer imported, from the cache when there (keyed by the file's sha256), else
    written there atomically."""
    from mlpi.core.engine.cache import cache_root

    folder = cache_root() / "deepsparse"
    target = folder / f"{model.sha256}-ir{MAX_IR_VERSION}-v{COPY_VERSION}.onnx"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create DeepSparse's cache folder {folder}: {exc.strerror or exc}",
            "set MLPI_CACHE to a writable folder",
        ) from None
    import onnx

    try:
        proto = onnx.load(str(model.path))  # with any external data, so the copy stands alone
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types
        raise ModelError(f"cannot read {model.path} to convert it for DeepSparse: {exc}", _MODEL_HINT) from None
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    used = _used_domains(proto)
    kept = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    try:
        write_bytes_atomic(target, proto.SerializeToString())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot write an IR {MAX_IR_VERSION} copy of {model.path} to {folder}: {exc}",
            f"free space in {folder} (or set MLPI_CACHE), or export the model with IR version {MAX_IR_VERSION}",
        ) from None
    return target


def _read_graph_info(path: Path) -> _GraphInfo:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as exc:
        raise ModelError(f"{path} is not an ONNX model or is corrupt ({type(exc).__name__})", _MODEL_HINT) from None
    if not proto.graph.node:
        raise ModelError(f"{path} is not an ONNX model or is corrupt (no graph)", _MODEL_HINT)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    quantized = any(node.op_type in _QUANTIZED_OPS for node in proto.graph.node)
    used = _used_domains(proto)
    unused = tuple(o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx") and o.domain not in used)
    return _GraphInfo(int(proto.ir_version), int(opset), quantized, unused, _scalar_scan_loops(proto.graph))


def _scalar_scan_loops(graph: Any) -> tuple[str, ...]:
    """Loop nodes (subgraphs included) with a scan output of scalars: DeepSparse 1.8 returns
    those stacked as ``[N, 1]`` instead of ``[N]`` (onnx's ``test_range_*_expanded`` cases, a
    silent wrong shape). A scan output is of scalars where the body declares it rank 0, or
    where the graph declares the Loop's stacked output rank 1."""
    from mlpi.core.engine.onnx_file import graphs_within

    found = []
    for owner in graphs_within(graph):
        ranks = {value.name: len(value.type.tensor_type.shape.dim)
                 for value in [*owner.output, *owner.value_info]
                 if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")}
        for node in owner.node:
            body = next((a.g for a in node.attribute if a.name == "body"), None) if node.op_type == "Loop" else None
            if body is None:
                continue
            carried = max(0, len(node.input) - 2)
            inner = list(body.output)[1 + carried:]
            outer = list(node.output)[carried:]
            scalar_inside = any(out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape")
                                and len(out.type.tensor_type.shape.dim) == 0 for out in inner)
            if scalar_inside or any(ranks.get(name) == 1 for name in outer):
                found.append(node.name or f"Loop -> {node.output[0]}")
    return tuple(found)


def _used_domains(proto: Any) -> set[str]:
    """The operator sets the model's nodes and its local functions' nodes use."""
    return _node_domains(proto.graph).union(*(_node_domains(function) for function in proto.functions))


def _node_domains(graph: Any) -> set[str]:
    """The operator set of every node, subgraphs (If, Loop, Scan bodies) included."""
    from mlpi.core.engine.onnx_file import nodes_within

    return {node.domain for node in nodes_within(graph)}


def _check_options(options: Any, cores: int) -> None:
    if options.scheduler not in SCHEDULERS:
        raise UsageError(
            f"option scheduler is {options.scheduler!r}, not a DeepSparse scheduler",
            f"choose one of: {', '.join(SCHEDULERS)}",
        )
    if options.num_cores > cores:
        raise UsageError(
            f"option num_cores is {options.num_cores}, but DeepSparse sees {cores} physical cores here",
            f"give {cores} or fewer (0: all of them)",
        )
    usable = options.num_cores or cores
    if options.num_streams > 1 and options.scheduler == "single_stream":
        raise UsageError(
            f"option num_streams is {options.num_streams}, but the single_stream scheduler runs one stream",
            "add -o scheduler=multi_stream, or drop num_streams",
        )
    if options.num_streams > usable:
        raise UsageError(
            f"option num_streams is {options.num_streams}, more than the {usable} cores the engine uses",
            f"give {usable} or fewer (a stream needs at least one core)",
        )


def _with_batch(spec: TensorSpec, batch: int) -> TensorSpec:
    return TensorSpec(spec.name, spec.dtype, (batch, *spec.shape[1:])) if spec.shape else spec


#: A compile error about the processor rather than the model.
_CPU_PROBLEM = re.compile(r"instruction set|\bavx|\bisa\b|unsupported (?:cpu|processor|hardware)", re.IGNORECASE)

#: ``/path/file.cc:123 ns::Class::method(args) `` as DeepSparse's bundled ONNX Runtime prefixes its errors.
_SOURCE_PREFIX = re.compile(r"\S+\.(?:cc|cpp|h|hpp):\d+\s+[^()]*\([^()]*\)\s*(?:status\.IsOK\(\) was false\.\s*)?")


def _clean(exc: BaseException) -> str:
    """DeepSparse's message without its ``NM: error:`` tag and C++ source locations."""
    text = " ".join(str(exc).split())
    for tag in ("NM: error:", "Neural Magic:", "Failed to load model with error:"):
        text = text.replace(tag, "")
    text = _SOURCE_PREFIX.sub("", text).strip()
    return (text or type(exc).__name__)[:300]
