"""SSD-MobileNet-v1 and SSD-ResNet34 on COCO, as MLPerf Inference ran them up to round v2.0.

Followed: MLCommons inference ``vision/classification_and_detection`` at tag v2.0 —
``python/main.py`` (profiles ``ssd-mobilenet-onnxruntime``: ``coco-300``, ``PostProcessCoco``;
``ssd-resnet34-onnxruntime``: ``coco-1200-onnx``, ``PostProcessCocoOnnx``, ``--use-inv-map``
scoring), ``python/dataset.py`` (``pre_process_coco_mobilenet``, ``pre_process_coco_resnet34``),
``python/coco.py`` (the response records), ``tools/accuracy-coco.py`` (the ``mAP=..%`` line)
and that round's ``mlperf.conf`` and submission rules. Both benchmarks are retired: today's
LoadGen holds no rules for ssd-resnet34, so mlpi writes their last round's values into each
test's user.conf (:func:`mlpi.core.engine.scenario.retired_rule_lines`).

- ``ssd-mobilenet``: the official file is ``ssd_mobilenet_v1_coco_2018_01_28.onnx``
  (https://zenodo.org/record/4735652, opset 11). Input ``image_tensor:0`` uint8 NHWC
  ``[N,300,300,3]`` (RGB, stretched to 300x300 with ``INTER_LINEAR``, float pixels truncated
  to uint8); outputs ``num_detections:0``, ``detection_boxes:0`` ``[N,100,4]`` (ymin, xmin,
  ymax, xmax, normalised), ``detection_scores:0``, ``detection_classes:0`` (COCO ids as
  float). Response: the first ``num_detections`` rows as ``[qsl_idx, ymin, xmin, ymax, xmax,
  score, class]`` float32, no score threshold. Target: 99% of 22.0 mAP.
- ``ssd-resnet34``: the official file is ``resnet34-ssd1200.onnx``
  (https://zenodo.org/record/3228411, opset 8). Input ``image`` float32 ``[1,3,1200,1200]``
  (RGB, stretched, ``/255``, ImageNet mean/std); outputs ``bboxes`` ``[1,200,4]`` (xmin,
  ymin, xmax, ymax, normalised), ``labels`` int64 (1..80), ``scores``. Response: detections
  until a score below 0.5, boxes reordered to ``[qsl_idx, ymin, xmin, ymax, xmax, score,
  label]``; scoring maps label k to COCO's k-th category id. Target: 99% of 20.0 mAP.

``mlpi fetch`` downloads both from zenodo. MLCommons' scripts check neither file: SSD-ResNet34's
sha256 and size are the ones OpenVINO's Open Model Zoo publishes for that same zenodo URL
(``models/public/ssd-resnet34-1200-onnx/model.yml``); no published checksum was found for
SSD-MobileNet's, so its first download is recorded and checked from then on (as RNN-T's
checkpoint). ``--model-path`` takes either file; ``--weights random`` builds a seeded graph
with the same signature and cost (:mod:`mlpi.models.ssd_graph`).
"""

from __future__ import annotations

from pathlib import Path

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists
from mlpi.models.detection import DetectionResponses, coco_map, coco_map_inv

#: Images in COCO 2017 validation: what an accuracy run covers.
COCO_IMAGES = 5000
#: v2.0's ``*.Offline.min_query_count``.
OFFLINE_MIN_SAMPLES = 24576
EDGE = ("SingleStream", "MultiStream", "Offline")

MOBILENET_ARTIFACT = Artifact(
    name="ssd-mobilenet",
    filename="ssd_mobilenet_v1_coco_2018_01_28.onnx",
    url="https://zenodo.org/record/4735652/files/ssd_mobilenet_v1_coco_2018_01_28.onnx",
    checksum=None,  # none published for this file: recorded on first download
)
RESNET34_ARTIFACT = Artifact(
    name="ssd-resnet34",
    filename="resnet34-ssd1200.onnx",
    url="https://zenodo.org/record/3228411/files/resnet34-ssd1200.onnx",
    checksum="sha256:b417a8186967f1e78670b0075aa72a10e5c7d1a6d5c08af9d13dc97f3d29ef0d",  # Open Model Zoo's model.yml
    size=80363696,
)

MOBILENET_INPUTS = (TensorSpec("image_tensor:0", "uint8", (None, 300, 300, 3)),)
MOBILENET_OUTPUTS = (
    TensorSpec("num_detections:0", "float32", (None,)),
    TensorSpec("detection_boxes:0", "float32", (None, 100, 4)),
    TensorSpec("detection_scores:0", "float32", (None, 100)),
    TensorSpec("detection_classes:0", "float32", (None, 100)),
)
MOBILENET_RULES = Rules(
    loadgen_key="ssd-mobilenet",
    benchmark="ssd-small",
    response_dtype="float32",
    round="v2.0",
    quality=QualityTarget("mAP", 22.0, 0.99, unit="%"),
    performance_sample_count=256,
    offline_min_samples=OFFLINE_MIN_SAMPLES,
    dataset_size=COCO_IMAGES,
    required_scenarios={"edge": EDGE},
    retired=True,
)
MOBILENET_DATA = DataParams.of(
    image_size=(300, 300), layout="NHWC", resize="stretch", interpolation="linear", channel_order="RGB", dtype="uint8"
)

RESNET34_INPUTS = (TensorSpec("image", "float32", (1, 3, 1200, 1200)),)
RESNET34_OUTPUTS = (
    TensorSpec("bboxes", "float32", (1, 200, 4)),
    TensorSpec("labels", "int64", (1, 200)),
    TensorSpec("scores", "float32", (1, 200)),
)
RESNET34_RULES = Rules(
    loadgen_key="ssd-resnet34",
    benchmark="ssd-large",
    response_dtype="float32",
    round="v2.0",
    quality=QualityTarget("mAP", 20.0, 0.99, unit="%"),
    server_latency_ms=100,
    performance_sample_count=64,
    offline_min_samples=OFFLINE_MIN_SAMPLES,
    dataset_size=COCO_IMAGES,
    required_scenarios={"edge": EDGE, "datacenter": ("Server", "Offline")},
    retired=True,
)
RESNET34_DATA = DataParams.of(
    image_size=(1200, 1200), layout="NCHW", resize="stretch", interpolation="linear", channel_order="RGB",
    scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)
#: PostProcessCocoOnnx's cut: a detection scored below this ends the response.
RESNET34_SCORE_THRESHOLD = 0.5


def _random_mobilenet(path: Path, seed: int) -> Path:
    from mlpi.models.ssd_graph import write_ssd_mobilenet

    return write_ssd_mobilenet(path, seed)


def _random_resnet34(path: Path, seed: int) -> Path:
    from mlpi.models.ssd_graph import write_ssd_resnet34

    return write_ssd_resnet34(path, seed)


def ssd_mobilenet() -> ModelSpec:
    from mlpi.models.ssd_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.COCO,
        name="ssd-mobilenet",
        artifact=MOBILENET_ARTIFACT,
        description="SSD-MobileNet-v1 300x300, COCO object detection (MLPerf Inference, retired after v2.0)",
        graphs={"model": GraphSpec(MOBILENET_INPUTS, MOBILENET_OUTPUTS)},
        data=MOBILENET_DATA,
        rules=MOBILENET_RULES,
        datasets=("coco", "synthetic"),
        postprocess=DetectionResponses.factory(
            300, 300, boxes="detection_boxes:0", scores="detection_scores:0", labels="detection_classes:0",
            count="num_detections:0", score_threshold=None, box_order="yxyx", normalized=True,
        ),
        score=coco_map,
        build_random=_random_mobilenet,
        extra={"random_graph_version": GRAPH_VERSION},
    )


def ssd_resnet34() -> ModelSpec:
    from mlpi.models.ssd_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.COCO,
        name="ssd-resnet34",
        artifact=RESNET34_ARTIFACT,
        description="SSD-ResNet34 1200x1200, COCO object detection (MLPerf Inference, retired after v2.0)",
        graphs={"model": GraphSpec(RESNET34_INPUTS, RESNET34_OUTPUTS)},
        data=RESNET34_DATA,
        rules=RESNET34_RULES,
        datasets=("coco", "synthetic"),
        postprocess=DetectionResponses.factory(
            1200, 1200, boxes="bboxes", scores="scores", labels="labels",
            score_threshold=RESNET34_SCORE_THRESHOLD, box_order="xyxy", normalized=True,
        ),
        score=coco_map_inv,
        build_random=_random_resnet34,
        extra={"random_graph_version": GRAPH_VERSION},
    )
