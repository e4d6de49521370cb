"""ResNet50-v1.5 on ImageNet, as MLPerf Inference measures it.

Artifact: the ONNX file MLCommons publishes for the reference implementation (opset 11),
checked against the MD5 that MLCommons' own download scripts use. It takes
``input_tensor:0`` [N,3,224,224] (mean-subtracted RGB, see the imagenet dataset) and gives
``ArgMax:0`` (classes 1..1000, 0 being "background") and ``softmax_tensor:0`` [N,1001].
Responses are one float32 class id per sample, shifted by -1 onto ImageNet's 0..999, the
format MLPerf's accuracy-imagenet.py reads by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlpi.core.contract.accuracy import AccuracyResult, top1
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.postprocess import ClassIdResponse, Postprocessor
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists

#: The FP32 reference top-1 (percent) the quality target is a fraction of.
REFERENCE_TOP1 = 76.456

#: Rules of the current round (mlperf.conf ``resnet50.*`` and the submission rules' table).
RULES = Rules(
    loadgen_key="resnet50",
    benchmark="resnet",
    audits=("TEST01", "TEST04"),
    audit_sampling_target=4096,
    response_dtype="float32",
    round="v6.1",
    quality=QualityTarget("top-1", REFERENCE_TOP1, 0.99, unit="%"),
    server_latency_ms=15,
    performance_sample_count=1024,
    offline_min_samples=24576,
    dataset_size=50000,
    required_scenarios={
        "edge": ("SingleStream", "MultiStream", "Offline"),
        "datacenter": ("Server", "Offline"),
    },
)
#: MLPerf's target: 99% of the reference top-1.
QUALITY_TARGET = RULES.quality.value  # type: ignore[union-attr]

#: The reference's ``pre_process_vgg``: what the imagenet dataset must do for this model.
DATA = DataParams.of(
    image_size=(224, 224),
    layout="NCHW",
    resize="shorter-side-crop",
    crop_fraction=0.875,
    interpolation="area",
    channel_order="RGB",
    mean=(123.68, 116.78, 103.94),
    scale=1.0,
)

ARTIFACT = Artifact(
    name="resnet50",
    filename="resnet50_v1.onnx",
    url="https://zenodo.org/record/4735647/files/resnet50_v1.onnx",
    checksum="md5:f6a4da60cd5f084d97efc2c1ddb10beb",
)

INPUTS = (TensorSpec("input_tensor:0", "float32", (None, 3, 224, 224)),)
OUTPUTS = (TensorSpec("ArgMax:0", "int64", (None,)), TensorSpec("softmax_tensor:0", "float32", (None, 1001)))


def _postprocess(outputs: Sequence[TensorSpec], max_batch: int) -> Postprocessor:
    names = [o.name for o in outputs]
    if "ArgMax:0" in names:
        return ClassIdResponse("ArgMax:0", -1, max_batch)
    return ClassIdResponse("softmax_tensor:0", -1, max_batch, argmax=True)


def _score(responses: Mapping[int, bytes], dataset: Any, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    return top1(responses, dataset.ground_truth(), "float32")


def _build_random(path: Path, seed: int) -> Path:
    from mlpi.models.resnet50_graph import write_resnet50

    return write_resnet50(path, seed)


def resnet50() -> ModelSpec:
    from mlpi.models.resnet50_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.IMAGENET,
        name="resnet50",
        description="ResNet50-v1.5, ImageNet 2012 classification (MLPerf Inference)",
        artifact=ARTIFACT,
        graphs={"model": GraphSpec(INPUTS, OUTPUTS)},
        data=DATA,
        rules=RULES,
        datasets=("imagenet", "synthetic", "numpy"),
        postprocess=_postprocess,
        score=_score,
        build_random=_build_random,
        extra={"random_graph_version": GRAPH_VERSION},
    )
