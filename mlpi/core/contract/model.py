"""ModelSpec: everything that makes a benchmark a benchmark, besides its weights.

A model plugin registers a :class:`ModelSpec` (or a zero-argument callable returning one)
under ``mlpi.models``. It declares its graphs by role with their signatures, its artifact,
what its data must look like (:class:`~mlpi.core.contract.dataset.DataParams`), its
:class:`~mlpi.core.contract.rules.Rules`, how responses are made (a postprocessor, or a whole
pipeline) and how they are scored. A model given only as a file (``--model-path any.onnx``)
gets a spec made from the file itself: no rules (LoadGen's generic settings apply), raw
outputs as responses, and top-1 scoring when the dataset has labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpi.core.contract.accuracy import REPEATED_RESPONSES
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.calibration import CalibrationSet
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.pipeline import MAIN_GRAPH, PipelineFactory
from mlpi.core.contract.postprocess import Postprocessor, RawOutputs
from mlpi.core.contract.rules import NO_RULES, Rules

if TYPE_CHECKING:
    import numpy as np

    from mlpi.core.contract.accuracy import AccuracyResult
    from mlpi.core.contract.dataset import Dataset
    from mlpi.core.engine.artifacts import Artifact

#: ``score(responses_by_sample_index, dataset, outputs) -> AccuracyResult``: reads the
#: ground truth from ``dataset.ground_truth()``; the core adds the target from the rules.
AccuracyScorer = Callable[[Mapping[int, bytes], "Dataset", Sequence[TensorSpec]], "AccuracyResult"]
#: ``postprocess(outputs, max_batch) -> Postprocessor``: one per executor slot.
PostprocessFactory = Callable[[Sequence[TensorSpec], int], Postprocessor]


def _score_raw(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    from mlpi.core.contract.accuracy import raw_top1

    return raw_top1(responses, dataset.labels(), outputs[0])


@dataclass(frozen=True)
class GraphSpec:
    """The signature one graph of a model must have.

    ``aliases``: other names a file may give an input or output (the int8 BERT calls
    ``input_mask`` ``attention_mask``); a file with an alias in place of a name still
    has the signature, and the run feeds and reads the file's own names.
    """

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def names_for(self, name: str) -> tuple[str, ...]:
        """``name`` and the other names a file may give it."""
        return (name, *self.aliases.get(name, ()))


@dataclass(frozen=True)
class CheckpointFormat:
    """A framework checkpoint ``--model-path`` may name instead of the model's graphs: the form
    MLCommons publishes a model's weights in where it publishes no ONNX (DLRM-v2's torchrec
    snapshot).

    - ``describes``: what it is, for messages ("torchrec checkpoint": "converting the torchrec
      checkpoint model_weights into ...");
    - ``recognises(path)``: whether ``path`` is one (cheap: a marker file, never the weights);
    - ``identity(path)``: a digest of what the checkpoint holds, keying its converted graphs
      (a checkpoint changed in place converts afresh);
    - ``convert(path, folder) -> {role: onnx_path}``: writes the graphs into ``folder``, once.
    """

    describes: str
    recognises: Callable[[Path], bool]
    identity: Callable[[Path], str]
    convert: Callable[[Path, Path], Mapping[str, Path]]


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity, artifact, data, rules, inference step and scoring.

    - ``graphs``: role -> :class:`GraphSpec` (``"model"`` for a one-graph model). The first
      role is the graph the dataset feeds; every role is loaded as a session on every unit.
    - ``artifact``: where the official file(s) come from and their checksums.
    - ``convert``: for an artifact that is not the graphs themselves (a framework
      checkpoint), ``convert(fetched_file, folder) -> {role: onnx_path}`` writes them once;
      the result is cached under the artifact's checksum.
    - ``checkpoint``: a checkpoint format ``--model-path`` may name (:class:`CheckpointFormat`),
      converted once into graphs kept under its identity and the model's options.
    - ``data``: what the dataset must produce for it.
    - ``sample_inputs``: what one LoadGen sample holds, where that is not the main graph's
      inputs (a whole volume cut into windows, a group of rows, raw audio); the dataset is
      asked for these, and the pipeline makes the graphs' feeds from them.
    - ``rules``: quality target, latency bounds, sample counts, required scenarios, round.
    - ``datasets``: names of datasets that fit; the first is the default for accuracy.
    - ``postprocess``: ``postprocess(outputs, max_batch)`` builds a response writer for the
      main session's outputs (``RawOutputs``: every output's bytes).
    - ``pipeline``: a factory of the model's own inference step, or ``None`` for the
      default gather -> run -> postprocess (see :mod:`mlpi.core.contract.pipeline`); a model
      with several graphs needs its own.
    - ``pieces``: the pipeline hands its batches to ``PipelineContext.pieces`` (one sample
      spread over every unit and slot) instead of running sessions itself.
      ``samples_in_flight``: with pieces, the most samples Offline and Server work on at once
      (``None``: one per piece worker). A sample that is already enough pieces for every
      worker and holds hundreds of MB while in flight (a 3D-UNet volume) sets a small number.
    - ``grouped_samples``: one LoadGen sample is a group of rows (DLRM's user-item pairs): a
      dataset must say how many each has (``Dataset.sample_rows``), and batches count rows.
    - ``outputs_batch_first``: whether every output has the batch as its first dimension
      (checked on the first sample); a model whose graph answers one sample's detections
      as ``[N, 4]`` says False and reads them in its postprocessor.
    - ``score``: computes accuracy from the accuracy log's responses (None: not scored);
      ``repeated_responses``: which response of a sample logged twice it is given ("first",
      or "last" where the model's official script keeps the last, as BERT's does).
      An accuracy run of a model with a scorer needs a dataset with ground truth, unless
      ``scoring_optional`` (a model given only as a file: top-1 when the data has labels).
    - ``build_random``: ``build_random(path, seed)`` writes a graph with the same signature
      and seeded random weights, for performance-only runs without the download, and
      returns its path; a model with several graphs is given a folder and returns
      ``{role: path}``.
    - ``placement``: for a model whose graphs are not all wanted on every unit (embedding
      tables split over cards), ``placement(units) -> {role: unit positions}`` says where each
      listed role is loaded (positions in ``--device``'s units, 0-based); roles it does not
      list, and always the main role, load on every unit. The pipeline reaches a graph
      placed on another unit through ``PipelineContext.placed``.
    - ``Options``: a dataclass of the model's own settings, set with ``--model-option
      KEY=VALUE`` (fields with defaults; ``metadata`` ``help``, ``min``, ``max`` as backend
      options have); ``configure(options)`` returns the spec for those values (its random
      graph, data parameters...) and ``options`` holds the values a spec was made for.
      Results record them. ``unofficial``: why this configuration is not the official
      MLPerf model (DLRM's tables capped in rows), ``None`` where it is.
    - ``calibration``: the benchmark's official calibration set, the only data the closed
      division lets int8 quantisation see (:class:`CalibrationSet`); ``None``: none declared.
    - ``calibration_feeds``: for a model with ``sample_inputs``, how int8 calibration reaches
      its graph: ``calibration_feeds(dataset, index)`` yields the main graph's feeds for loaded
      sample ``index`` (batch first, each a batch of one or more rows: a volume's windows, a
      group's rows), as its pipeline would make them. Without it such a model is not derived.
    """

    name: str
    description: str = ""
    graphs: Mapping[str, GraphSpec] = field(default_factory=lambda: {MAIN_GRAPH: GraphSpec()})
    artifact: Artifact | None = None
    data: DataParams = field(default_factory=DataParams)
    sample_inputs: tuple[TensorSpec, ...] | None = None
    rules: Rules = NO_RULES
    datasets: tuple[str, ...] = ("synthetic",)
    postprocess: PostprocessFactory = field(default=RawOutputs)
    pipeline: PipelineFactory | None = None
    pieces: bool = False
    samples_in_flight: int | None = None
    grouped_samples: bool = False
    outputs_batch_first: bool = True
    score: AccuracyScorer | None = _score_raw
    repeated_responses: str = "first"
    scoring_optional: bool = False
    build_random: Callable[[Path, int], Path | Mapping[str, Path]] | None = None
    convert: Callable[[Path, Path], Mapping[str, Path]] | None = None
    checkpoint: CheckpointFormat | None = None
    placement: Callable[[int], Mapping[str, Sequence[int]]] | None = None
    Options: type | None = None
    configure: Callable[[Any], ModelSpec] | None = None
    options: Any = None
    unofficial: str | None = None
    calibration: CalibrationSet | None = None
    calibration_feeds: Callable[[Any, int], Iterable[Mapping[str, np.ndarray]]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.graphs:
            raise ValueError(f"model {self.name} declares no graph")
        if self.pipeline is None and (len(self.graphs) > 1 or self.pieces or self.sample_inputs is not None):
            raise ValueError(
                f"model {self.name} has several graphs, pieces or samples of its own, so it needs its own pipeline"
            )
        if self.samples_in_flight is not None and (not self.pieces or self.samples_in_flight < 1):
            raise ValueError(f"model {self.name}: samples_in_flight needs pieces and must be at least 1")
        if self.repeated_responses not in REPEATED_RESPONSES:
            raise ValueError(f"model {self.name}: repeated_responses must be one of {', '.join(REPEATED_RESPONSES)}")
        if (self.Options is None) != (self.configure is None):
            raise ValueError(f"model {self.name}: Options and configure go together")
        if self.artifact is not None and self.convert is None and (self.artifact.format == "checkpoint" or len(self.graphs) > 1):
            raise ValueError(f"model {self.name}'s artifact is not its graph: it needs a convert function")

    @property
    def roles(self) -> tuple[str, ...]:
        """The graph roles, the one the dataset feeds first."""
        return tuple(self.graphs)

    @property
    def main_role(self) -> str:
        return next(iter(self.graphs))

    @property
    def main_graph(self) -> GraphSpec:
        return self.graphs[self.main_role]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.main_graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.main_graph.outputs

    @property
    def rules_key(self) -> str | None:
        return self.rules.loadgen_key

    @property
    def quality_target(self) -> float | None:
        return None if self.rules.quality is None else self.rules.quality.value

    @classmethod
    def for_file(cls, path: Path) -> ModelSpec:
        return cls(name=model_key(path.stem), description=f"model from {path}", scoring_optional=True)


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
