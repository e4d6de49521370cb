"""What ``--precision`` makes of a run's model: the file as given, the backend's own method,
or a derived file (:mod:`mlpi.core.engine.precision`), with the record results keep.

The record (``plan.extra["precision"]``, then ``result.json`` ``model.precision``) says what
ran: the precision asked for, the source file and its precision, how the precision was made
(``method``: ``model file``, ``backend`` or ``transform``), the transform's tool, versions,
settings and calibration data, and ``closed_division``: whether MLPerf's closed division
allows the run's quantisation (``null`` where mlpi cannot tell: a file quantised elsewhere).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.model import ModelSpec
from mlpi.core.engine.onnx_file import sha256_of
from mlpi.core.engine.plan import ModelRef
from mlpi.core.engine.precision import (
    DATASET_CALIBRATION_COUNT,
    DERIVED,
    CalibrationData,
    PrecisionOptions,
    derive,
    user_list,
)
from mlpi.core.plugins.options import build_options
from mlpi.core.plugins.registry import Registry

EXTRA_KEY = "precision"
#: ``-P`` options that only int8 reads.
INT8_OPTIONS = ("calibration_method", "per_channel", "calibration_count")
#: ``--calibration`` values besides a list file.
OFFICIAL, RUN_DATA = "official", "dataset"


@dataclass(frozen=True)
class PrecisionRequest:
    """``--precision``, ``--calibration``, ``--calibration-path`` and ``-P`` as given."""

    precision: str | None = None
    calibration: str | None = None
    calibration_path: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def check_alone(self) -> None:
        """Calibration settings without a precision that uses them are a mistake, not a no-op."""
        given = [flag for flag, value in (("--calibration", self.calibration), ("--calibration-path",
                 self.calibration_path), ("-P", self.options)) if value]
        if given and self.precision not in DERIVED:
            raise UsageError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} how a precision is derived, and "
                             f"--precision is {self.precision or 'not given'}",
                             "add --precision int8 (or fp16, bf16), or drop them")
        if (self.calibration or self.calibration_path) and self.precision != "int8":
            raise UsageError(f"only int8 is calibrated, and --precision is {self.precision}",
                             "drop --calibration and --calibration-path, or pass --precision int8")
        int8_only = sorted(key for key in self.options if key.replace("-", "_") in INT8_OPTIONS)
        if int8_only and self.precision != "int8":
            raise UsageError(f"-P {', '.join(int8_only)} {'sets' if len(int8_only) == 1 else 'set'} how int8 is "
                             f"calibrated, and --precision is {self.precision}",
                             f"drop -P {', '.join(int8_only)}, or pass --precision int8")


def calibrates_on_run_data(request: PrecisionRequest, spec: ModelSpec) -> bool:
    """Whether int8 is calibrated on the run's own dataset (which must be open first)."""
    if request.precision != "int8":
        return False
    return request.calibration == RUN_DATA or (request.calibration is None and spec.calibration is None)


def precision_options(values: Mapping[str, str]) -> PrecisionOptions:
    return build_options(PrecisionOptions, [("-P", dict(values))], "precision transform", kind="transform")


def model_precision(model_ref: ModelRef, request: PrecisionRequest, spec: ModelSpec, registry: Registry,
                    native: str | None, run_data: Any = None, run_dataset: str | None = None,
                    dataset_path: str | None = None, seed: int = 0) -> tuple[ModelRef, dict[str, Any] | None]:
    """The model the run loads for ``request.precision`` and the record of how it was made.

    ``native``: the backend's own method for that precision with the run's options (its
    ``native_precision``), or None; ``run_data``: the run's opened dataset (for
    ``--calibration dataset``)."""
    from mlpi.core.engine.precision_convert import graph_precision

    request.check_alone()
    options = precision_options(request.options)
    wanted = request.precision
    if wanted is None:
        return model_ref, None
    record: dict[str, Any] = {"requested": wanted}
    own = graph_precision(Path(model_ref.path))
    record["source"] = {"path": model_ref.path, "sha256": model_ref.sha256, "precision": own}
    if own == wanted:
        if request.calibration or request.calibration_path or request.options:
            raise UsageError(f"{Path(model_ref.path).name} is {own} already, so nothing is derived for --precision {wanted}",
                             "drop --calibration, --calibration-path and -P")
        closed = True if own == "fp32" else None
        model_ref = model_ref if own == "fp32" else dataclasses.replace(model_ref, precision=own)
        return model_ref, {**record, "method": "model file", "closed_division": closed,
                           **({} if closed else {"closed_reason": "quantised before mlpi: its calibration data is not known"})}
    if wanted == "fp32":
        raise UsageError(f"{Path(model_ref.path).name} is a {own} model, and mlpi derives lower precisions from fp32, "
                         "not fp32 from them", "drop --precision, or pass the model's fp32 file")
    if own != "fp32":
        raise UsageError(f"{Path(model_ref.path).name} is a {own} model; mlpi derives {wanted} from the fp32 file only",
                         f"pass the model's fp32 file, or --precision {own} to run this one as it is")
    if native is not None:
        if request.calibration or request.calibration_path or request.options:
            raise UsageError(f"the backend derives {wanted} itself here ({native}), so mlpi's transform settings "
                             "would be ignored", "drop --calibration, --calibration-path and -P, or the backend option")
        closed = wanted != "int8"
        return model_ref, {**record, "method": "backend", "backend_method": native, "closed_division": closed,
                           **({} if closed else {"closed_reason": "int8 derived by the backend itself: mlpi hands a "
                                                                  "backend's own calibrator the run's first samples, "
                                                                  "not the official calibration set"})}
    if len(model_ref.graphs) > 1:
        return _derive_every_graph(model_ref, request, options, record, spec, registry, run_data, run_dataset,
                                   dataset_path, seed)
    calibration, feeds, identity = None, None, None
    if wanted == "int8":
        calibration, data = _calibration(request, options, spec, registry, model_ref, run_data, run_dataset,
                                         dataset_path, seed)
        feeds, identity = _feeds(data, calibration.count, model_ref.inputs, spec.calibration_feeds), data.describe()
    derived = derive(Path(model_ref.path), model_ref.sha256, wanted, options, calibration, feeds, identity)
    if derived.reused:
        print(f"mlpi: the {wanted} model was derived before: {derived.path}", file=sys.stderr, flush=True)
    transformed = dataclasses.replace(model_ref, path=str(derived.path), sha256=derived.sha256, precision=wanted)
    closed = calibration is None or calibration.closed
    return transformed, {**record, "method": "transform", "transform": derived.record, "closed_division": closed,
                         **({} if closed else {"closed_reason": f"int8 calibrated on {calibration.describe()}, not the "
                                                                "official calibration set"})}


def _calibration(request: PrecisionRequest, options: PrecisionOptions, spec: ModelSpec, registry: Registry,
                 model_ref: ModelRef, run_data: Any, run_dataset: str | None, dataset_path: str | None,
                 seed: int) -> tuple[CalibrationData, Any]:
    """Which samples calibrate int8, opened through their dataset plugin."""
    if spec.sample_inputs is not None and spec.calibration_feeds is None and len(model_ref.graphs) <= 1:
        raise UsageError(f"{spec.name}'s samples are not its graph's inputs (it runs its own pipeline), and it does "
                         "not say how to make the graph's feeds from them, so mlpi cannot calibrate the graph",
                         "pass a model quantised to int8 with --model-path")
    choice = request.calibration or (OFFICIAL if spec.calibration is not None else RUN_DATA)
    limit = options.calibration_count or None
    if choice == RUN_DATA:
        if run_data is None:
            raise UsageError("--calibration dataset calibrates on the run's dataset, and there is none here",
                             "pass --dataset and --dataset-path, or --calibration official")
        count = min(limit or DATASET_CALIBRATION_COUNT, run_data.count)
        return CalibrationData(RUN_DATA, run_dataset or "?", dataset_path, count), run_data
    if choice == OFFICIAL:
        if spec.calibration is None:
            raise UsageError(f"{spec.name} declares no official calibration set",
                             "pass --calibration dataset (the run's data) or --calibration FILE (a list of names)")
        names, dataset_name = spec.calibration.names(), spec.calibration.dataset
        kind, list_file, sha, source = OFFICIAL, str(spec.calibration.list_file), spec.calibration.sha256(), spec.calibration.source
    else:
        path, names = user_list(choice)
        dataset_name = spec.calibration.dataset if spec.calibration is not None else (run_dataset or "")
        kind, list_file, sha, source = "list", str(path), sha256_of(path), None
    names = names[:limit] if limit else names
    folder = request.calibration_path or dataset_path
    if not folder:
        raise UsageError(f"int8 calibration reads the {len(names)} samples {source or list_file} names, and no folder "
                         "holding them is given",
                         "pass --calibration-path DIR (the folder with those samples), or --calibration dataset to "
                         "calibrate on this run's data (not valid for the closed division)")
    factory = registry.dataset(dataset_name)
    if not factory.opens_by_name:
        raise UsageError(f"dataset '{dataset_name}' cannot read samples by the names a calibration list gives",
                         "pass --calibration dataset to calibrate on this run's data (not valid for the closed division)")
    inputs = spec.sample_inputs if spec.sample_inputs is not None else model_ref.inputs
    data = factory.open(DatasetRequest(inputs=[s.batch_first() for s in inputs], params=spec.data,
                                       path=Path(folder).expanduser(), seed=seed, names=tuple(names),
                                       constant_inputs=tuple(s.name for s in inputs if s.batch_axis is None)))
    resolved = str(Path(folder).expanduser().resolve())
    # The dataset's own count: a list may name more samples than its lines (SQuAD's question ids,
    # Criteo's row ranges), and -P calibration_count bounds those too
    count = min(data.count, limit) if limit else data.count
    return CalibrationData(kind, dataset_name, resolved, count, tuple(names), list_file, sha, source), data


def _feeds(data: Any, count: int, inputs: Sequence[TensorSpec],
           sample_feeds: Callable[[Any, int], Iterable[Mapping[str, np.ndarray]]] | None = None,
           ) -> Callable[[], Iterator[Mapping[str, np.ndarray]]]:
    """``feeds()``: the feeds of the first ``count`` samples, each in the file's own layout
    (each batch axis where the file has it; an input that is not batched as it is), loaded
    when first asked: a sample itself as a batch of one, or what the model's
    ``sample_feeds(data, index)`` makes of it (``ModelSpec.calibration_feeds``). A progress
    line goes to stderr every tenth of the samples."""
    from mlpi.core.engine.batch_axes import to_file_layout

    axes = {spec.name: spec.batch_axis for spec in inputs}
    step = max(1, count // 10)

    def feeds() -> Iterator[Mapping[str, np.ndarray]]:
        indices = list(range(count))
        data.load(indices)
        try:
            for done, index in enumerate(indices, start=1):
                made = sample_feeds(data, index) if sample_feeds is not None else (data.sample(index),)
                for feed in made:  # copies: a sample's arrays are views of the loaded data
                    yield {name: np.array(to_file_layout(array, axes.get(name, 0))) for name, array in feed.items()}
                if done % step == 0 or done == count:
                    print(f"mlpi: calibrating: {done}/{count} samples", file=sys.stderr, flush=True)
        finally:
            data.unload(indices)

    return feeds


def _derive_every_graph(model_ref: ModelRef, request: PrecisionRequest, options: PrecisionOptions,
                        record: dict[str, Any], spec: ModelSpec, registry: Registry, run_data: Any,
                        run_dataset: str | None, dataset_path: str | None, seed: int) -> tuple[ModelRef, dict[str, Any]]:
    """A model of several graphs (RNN-T): each graph derived on its own, as a one-graph
    model's is. For int8, the calibration samples go through the model's pipeline on the fp32
    graphs, and each graph is calibrated on what the pipeline fed it
    (:mod:`mlpi.core.engine.calibration_record`)."""
    from mlpi.core.engine.calibration_record import (
        MAX_FEEDS_PER_GRAPH,
        record_graph_feeds,
    )
    from mlpi.core.engine.plan import combined_digest

    wanted = str(request.precision)
    calibration, recorded, identity = None, {}, None
    if wanted == "int8":
        calibration, data = _calibration(request, options, spec, registry, model_ref, run_data, run_dataset,
                                         dataset_path, seed)
        recorded = record_graph_feeds(spec, model_ref.artifacts(), data, calibration.count, model_ref.main_role)
        identity = data.describe()
    graphs, records = {}, {}
    for role, graph in model_ref.graphs.items():
        feeds = recorded.get(role, [])
        derived = derive(Path(graph.path), graph.sha256, wanted, options, calibration,
                         (lambda feeds=feeds: iter(feeds)) if calibration is not None else None,
                         {**identity, "graph": role, "most_calls": MAX_FEEDS_PER_GRAPH} if identity is not None else None)
        if derived.reused:
            print(f"mlpi: the {wanted} {role} graph was derived before: {derived.path}", file=sys.stderr, flush=True)
        graphs[role] = dataclasses.replace(graph, path=str(derived.path), sha256=derived.sha256)
        records[role] = derived.record
    main = graphs[model_ref.main_role]
    transformed = dataclasses.replace(model_ref, path=main.path, sha256=combined_digest(graphs), graphs=graphs,
                                      precision=wanted)
    first = records[model_ref.main_role]
    transform: dict[str, Any] = {"tool": first.get("tool"), "graphs": records}
    if calibration is not None:
        transform["calibration"] = calibration.to_json()
        transform["calibrated_through"] = (f"the model's pipeline on the fp32 graphs: each graph on the feeds it was "
                                           f"given (at most {MAX_FEEDS_PER_GRAPH} calls, evenly spaced)")
    closed = calibration is None or calibration.closed
    return transformed, {**record, "method": "transform", "transform": transform, "closed_division": closed,
                         **({} if closed or calibration is None else
                            {"closed_reason": f"int8 calibrated on {calibration.describe()}, not the official "
                                              "calibration set"})}
