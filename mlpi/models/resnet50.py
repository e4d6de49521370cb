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

from mlpi.core.accuracy import AccuracyResult, top1
from mlpi.core.artifacts import Artifact
from mlpi.core.backend import TensorSpec
from mlpi.core.model import ModelSpec
from mlpi.core.postprocess import ClassIdResponse, Postprocessor

#: MLPerf's target: 99% of the FP32 reference top-1 (76.456%).
REFERENCE_TOP1 = 76.456
QUALITY_TARGET = 0.99 * REFERENCE_TOP1

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
    return top1(responses, dataset.labels(), "float32", target=QUALITY_TARGET)


def _build_random(path: Path, seed: int) -> Path:
    from mlpi.models.resnet50_graph import write_resnet50

    return write_resnet50(path, seed)


def resnet50() -> ModelSpec:
    from mlpi.models.resnet50_graph import GRAPH_VERSION

    return ModelSpec(
        name="resnet50",
        rules_key="resnet50",
        description="ResNet50-v1.5, ImageNet 2012 classification (MLPerf Inference)",
        artifact=ARTIFACT,
        inputs=INPUTS,
        outputs=OUTPUTS,
        datasets=("imagenet", "synthetic", "numpy"),
        postprocess=_postprocess,
        score=_score,
        quality_target=QUALITY_TARGET,
        build_random=_build_random,
        extra={"random_graph_version": GRAPH_VERSION},
    )
