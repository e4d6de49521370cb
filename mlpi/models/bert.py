"""BERT-large on SQuAD v1.1 (``bert-99``, ``bert-99.9``), as MLPerf Inference measures it.

Followed: MLCommons inference ``language/bert`` — ``onnxruntime_SUT.py`` (the feeds
``input_ids``, ``input_mask``, ``segment_ids``; the response ``np.stack([start, end],
axis=-1)``, float32 ``[384, 2]``, 3,072 bytes), ``squad_QSL.py`` (features, see
:mod:`mlpi.datasets.squad`) and ``accuracy-squad.py`` + ``evaluate_v1.1.py`` (see
:mod:`mlpi.models.squad_f1`); rules from ``loadgen/mlperf.conf`` (``bert.*``) and the
current round's submission rules.

Artifact: ``model.onnx`` (zenodo record 3733910, opset 11), inputs int64 ``[batch, 384]``,
outputs ``output_start_logits`` / ``output_end_logits`` float32 ``[batch, 384]``, with its
vocabulary ``vocab.txt`` (zenodo record 3733868, 30,522 tokens) as a companion: ``mlpi
fetch bert-99`` downloads both, checked against MLCommons' MD5s. The int8 model (zenodo
record 3750364) names the mask ``attention_mask`` and the segments ``token_type_ids``: those
names are accepted too (``GraphSpec.aliases``). The two models differ only in the quality
target: 99% and 99.9% of the FP32 reference F1, 90.874.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.postprocess import Postprocessor
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists
from mlpi.models.squad_f1 import squad_f1

SEQ_LEN = 384
VOCAB_SIZE = 30522
#: The FP32 reference F1 (percent) the quality targets are fractions of.
REFERENCE_F1 = 90.874

VOCAB = Artifact(
    name="bert",
    filename="vocab.txt",
    url="https://zenodo.org/record/3733868/files/vocab.txt",
    checksum="md5:64800d5d8528ce344256daf115d4965e",
)
ARTIFACT = Artifact(
    name="bert",
    filename="model.onnx",
    url="https://zenodo.org/record/3733910/files/model.onnx",
    checksum="md5:819b25b19cd8e59080c10892689750ca",
    companions=(VOCAB,),
)

INPUTS = tuple(TensorSpec(name, "int64", (None, SEQ_LEN)) for name in ("input_ids", "input_mask", "segment_ids"))
OUTPUTS = (
    TensorSpec("output_start_logits", "float32", (None, SEQ_LEN)),
    TensorSpec("output_end_logits", "float32", (None, SEQ_LEN)),
)
#: Other names BERT graphs give the same tensors (the int8 model's inputs; exporters' outputs).
ALIASES = {
    "input_mask": ("attention_mask",),
    "segment_ids": ("token_type_ids",),
    "output_start_logits": ("start_logits",),
    "output_end_logits": ("end_logits",),
}
GRAPH = GraphSpec(INPUTS, OUTPUTS, ALIASES)

#: The reference's features (``squad_QSL.py``) and what the squad dataset needs to build them.
DATA = DataParams.of(
    seq_len=SEQ_LEN,
    doc_stride=128,
    max_query_len=64,
    lower_case=True,
    vocab_size=VOCAB_SIZE,
    vocab={"name": VOCAB.name, "filename": VOCAB.filename, "url": VOCAB.url, "checksum": VOCAB.checksum},
    feeds={name: GRAPH.names_for(name) for name in ("input_ids", "input_mask", "segment_ids")},
    # synthetic data: real token ids, a full mask, both segments
    value_ranges={
        **dict.fromkeys(GRAPH.names_for("input_ids"), (0, VOCAB_SIZE)),
        **dict.fromkeys(GRAPH.names_for("input_mask"), (1, 2)),
        **dict.fromkeys(GRAPH.names_for("segment_ids"), (0, 2)),
    },
)


def rules(fraction: float) -> Rules:
    """BERT's rules in the current round: mlperf.conf ``bert.*`` and the submission rules
    (edge only: SingleStream and Offline; 10,833 features)."""
    return Rules(
        loadgen_key="bert",
        benchmark=f"bert-{fraction * 100:g}",
        audits=("TEST01",),
        audit_sampling_target=4096,
        response_dtype="float32",
        round="v6.1",
        quality=QualityTarget("F1", REFERENCE_F1, fraction, unit="%"),
        server_latency_ms=130,
        performance_sample_count=10833,
        offline_min_samples=10833,
        dataset_size=10833,
        required_scenarios={"edge": ("SingleStream", "Offline")},
    )


class StartEndLogits(Postprocessor):
    """Each sample's start and end logits interleaved: float32 ``[384, 2]``."""

    def __init__(self, outputs: Sequence[TensorSpec], max_batch: int) -> None:
        names = {spec.name for spec in outputs}
        self._start = _output(names, "output_start_logits")
        self._end = _output(names, "output_end_logits")
        self._buffer = np.zeros((max(max_batch, 1), SEQ_LEN, 2), dtype=np.float32)

    @property
    def sample_nbytes(self) -> int:
        return SEQ_LEN * 2 * 4

    def __call__(self, outputs: Mapping[str, np.ndarray], indices: Sequence[int]) -> np.ndarray:
        n = len(indices)
        self._buffer[:n, :, 0] = outputs[self._start][:n].reshape(n, SEQ_LEN)
        self._buffer[:n, :, 1] = outputs[self._end][:n].reshape(n, SEQ_LEN)
        return self._buffer


def _output(names: set[str], name: str) -> str:
    for candidate in GRAPH.names_for(name):
        if candidate in names:
            return candidate
    raise ModelError(f"the BERT graph has no output {name} (it has {', '.join(sorted(names))})",
                     "use a BERT graph with MLPerf's signature")


def _build_random(path: Path, seed: int) -> Path:
    from mlpi.models.bert_graph import write_bert

    return write_bert(path, seed)


def _bert(name: str, fraction: float) -> ModelSpec:
    from mlpi.models.bert_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.SQUAD,
        name=name,
        description=f"BERT-large, SQuAD v1.1 question answering, F1 >= {fraction:.1%} of FP32 (MLPerf Inference)",
        artifact=ARTIFACT,
        graphs={"model": GRAPH},
        data=DATA,
        rules=rules(fraction),
        datasets=("squad", "synthetic"),
        postprocess=StartEndLogits,
        score=squad_f1,
        repeated_responses="last",  # accuracy-squad.py maps each feature to its last result
        build_random=_build_random,
        extra={"random_graph_version": GRAPH_VERSION, "random_graph_name": "bert"},
    )


def bert_99() -> ModelSpec:
    return _bert("bert-99", 0.99)


def bert_99_9() -> ModelSpec:
    return _bert("bert-99.9", 0.999)
