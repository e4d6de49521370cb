"""mlpi's public plugin API: everything a backend, model or dataset plugin may use.

Import from here, not from ``mlpi.core.*``: this module is versioned (:data:`API_VERSION`)
and changes only with a version bump; the rest of the core is free to change.

- **Backends** (entry-point group ``mlpi.backends``): subclass :class:`Backend` and
  :class:`Session`; say what a session can do with :class:`Capabilities`.
- **Models** (``mlpi.models``): register a :class:`ModelSpec` (or a function returning one)
  with its graphs (:class:`GraphSpec`), :class:`Artifact`, :class:`DataParams`,
  :class:`Rules` and :class:`QualityTarget`, a :class:`Postprocessor` (fixed-size rows or
  :class:`Responses` of any size) or a whole :class:`Pipeline` (over several graphs, or
  handing batches to :class:`Pieces` that run on every unit), and a scorer returning an
  :class:`AccuracyResult`.
- **Datasets** (``mlpi.datasets``): subclass :class:`DatasetFactory`, whose ``open`` gets a
  :class:`DatasetRequest` and returns a :class:`Dataset` (most subclass
  :class:`PreloadedDataset`).
- **Errors**: raise the :class:`MlpiError` subclass that fits, with a message and a hint.

A plugin may check ``mlpi.api.API_VERSION`` and refuse a major version it does not know.
"""

from __future__ import annotations

from mlpi.core.contract.accuracy import AccuracyResult, read_accuracy_log
from mlpi.core.contract.backend import (
    PRECISIONS,
    Backend,
    Capabilities,
    LoadContext,
    ModelArtifact,
    NoOptions,
    PaceRecord,
    Session,
    TensorSpec,
    fixed_batch_size,
    format_shape,
)
from mlpi.core.contract.dataset import (
    DataParams,
    Dataset,
    DatasetFactory,
    DatasetRequest,
    PreloadedDataset,
)
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DatasetError,
    DeviceError,
    MlpiError,
    ModelError,
    PluginError,
    UsageError,
)
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.pipeline import (
    MAIN_GRAPH,
    GatherRunPostprocess,
    PieceConsumer,
    Pieces,
    Pipeline,
    PipelineContext,
    PipelineFactory,
)
from mlpi.core.contract.postprocess import (
    ClassIdResponse,
    Postprocessor,
    RawOutputs,
    Responses,
)
from mlpi.core.contract.rules import (
    MULTISTREAM_SAMPLES_PER_QUERY,
    SCENARIOS,
    QualityTarget,
    Rules,
)
from mlpi.core.engine.artifacts import ARTIFACT_FORMATS, Artifact
from mlpi.core.results.rundir import write_bytes_atomic, write_json_atomic

#: ``major.minor``: a major bump breaks plugins written for the previous one.
#: 2.0: datasets get a DatasetRequest; models declare graphs, data parameters and rules;
#: postprocessors get sample indices and may answer Responses; pipelines; typed accuracy.
#: 2.1: several graphs per model, pieces (PipelineContext.pieces, ModelSpec.pieces and
#: sample_inputs), artifacts of several files with a format and a convert step.
#: 2.2: GraphSpec.aliases (other names a file may give a tensor), ModelSpec.repeated_responses
#: (which response of a sample logged twice is scored), DataParams' value_ranges for
#: synthetic data, read_accuracy_log(path, keep).
#: 2.3: ModelSpec.samples_in_flight; Pieces.run reads feeds[k] in the worker (a lazy sequence
#: may build each piece there); DataParams' sample_shapes for synthetic data of a dynamic
#: size; read_accuracy_log returns a Mapping that decodes LoadGen's logs on access;
#: DatasetRequest.performance_count_of(count).
#: 2.4: samples that are groups of rows (Dataset.sample_rows, ModelSpec.grouped_samples:
#: batches count rows); model options (ModelSpec.Options, configure, options, unofficial;
#: ``--model-option``); graphs placed on some units only (ModelSpec.placement,
#: PipelineContext.unit, placed and session_for).
#: 2.5: Backend.device_hint (why a device kind has no usable unit here), Backend.performance_only
#: (sessions whose outputs are not the model's: no accuracy, no audits), Session.pace and
#: PaceRecord (what set a simulated session's pace: its device model or the host),
#: Session.precision_detail (what changes the numbers beyond the session's precision).
API_VERSION = "2.5"

__all__ = [
    "API_VERSION",
    "ARTIFACT_FORMATS",
    "MAIN_GRAPH",
    "MULTISTREAM_SAMPLES_PER_QUERY",
    "PRECISIONS",
    "SCENARIOS",
    "AccuracyResult",
    "Artifact",
    "Backend",
    "Capabilities",
    "ClassIdResponse",
    "DataParams",
    "Dataset",
    "DatasetError",
    "DatasetFactory",
    "DatasetRequest",
    "Device",
    "DeviceError",
    "GatherRunPostprocess",
    "GraphSpec",
    "LoadContext",
    "MlpiError",
    "ModelArtifact",
    "ModelError",
    "ModelSpec",
    "NoOptions",
    "PaceRecord",
    "PieceConsumer",
    "Pieces",
    "Pipeline",
    "PipelineContext",
    "PipelineFactory",
    "PluginError",
    "Postprocessor",
    "PreloadedDataset",
    "QualityTarget",
    "RawOutputs",
    "Responses",
    "Rules",
    "Session",
    "TensorSpec",
    "UsageError",
    "fixed_batch_size",
    "format_shape",
    "read_accuracy_log",
    "write_bytes_atomic",
    "write_json_atomic",
]
