"""RetinaNet (ResNeXt50-32x4d FPN) on OpenImages, as MLPerf Inference measures it.

Followed: MLCommons inference ``vision/classification_and_detection`` — ``python/main.py``
(the ``retinanet`` ONNX profile: 800x800 input, ``PostProcessOpenImagesRetinanet(False, 0.05,
800, 800, False)``), ``python/openimages.py`` (the response records) and
``tools/accuracy-openimages.py`` (the mAP line); rules from ``loadgen/mlperf.conf``
(``retinanet.*``) and the v6.0 submission rules (RetinaNet's last round).

Artifact: ``resnext50_32x4d_fpn.onnx`` (zenodo record 6617879), checked against the MD5
MLCommons' download scripts use. Batch 1 in the file: input ``images`` float32
[1,3,800,800] (RGB / 255; the ImageNet normalisation is inside the graph), outputs
``boxes`` [N,4] (x1, y1, x2, y2 in input pixels), ``scores`` [N], ``labels`` [N] int64 in
0..263, after the in-graph decode and NMS. The response of a sample is, per detection in
score order until a score below 0.05, float32 ``[qsl_idx, y1/800, x1/800, y2/800, x2/800,
score, label]``; none is an empty response.
"""

from __future__ import annotations

from pathlib import Path

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists
from mlpi.models.detection import SCORE_THRESHOLD, DetectionResponses, coco_map

IMAGE_SIZE = 800
#: The FP32 reference mAP (percent) the quality target is a fraction of.
REFERENCE_MAP = 37.55

ARTIFACT = Artifact(
    name="retinanet",
    filename="resnext50_32x4d_fpn.onnx",
    url="https://zenodo.org/record/6617879/files/resnext50_32x4d_fpn.onnx",
    checksum="md5:4544f4e56e0a4684215831cc937ea45c",
)

INPUTS = (TensorSpec("images", "float32", (1, 3, IMAGE_SIZE, IMAGE_SIZE)),)
OUTPUTS = (
    TensorSpec("boxes", "float32", (None, 4)),
    TensorSpec("scores", "float32", (None,)),
    TensorSpec("labels", "int64", (None,)),
)

#: RetinaNet's rules in its last round (v6.0): mlperf.conf ``retinanet.*`` and the
#: submission rules' table (24,781 OpenImages validation images).
RULES = Rules(
    loadgen_key="retinanet",
    benchmark="retinanet",
    audits=("TEST01",),
    audit_sampling_target=256,
    response_dtype="float32",
    round="v6.0",
    quality=QualityTarget("mAP", REFERENCE_MAP, 0.99, unit="%"),
    server_latency_ms=100,
    multistream_latency_ms=528,
    performance_sample_count=64,
    offline_min_samples=24576,
    dataset_size=24781,
    required_scenarios={
        "edge": ("SingleStream", "MultiStream", "Offline"),
        "datacenter": ("Server", "Offline"),
    },
)

#: The reference's ``pre_process_openimages_retinanet``: what the openimages dataset must do.
DATA = DataParams.of(
    image_size=(IMAGE_SIZE, IMAGE_SIZE),
    layout="NCHW",
    resize="stretch",
    interpolation="linear",
    scale=1 / 255,
    channel_order="RGB",
)


def _build_random(path: Path, seed: int) -> Path:
    from mlpi.models.retinanet_graph import write_retinanet

    return write_retinanet(path, seed)


def retinanet() -> ModelSpec:
    from mlpi.models.retinanet_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.OPENIMAGES,
        name="retinanet",
        description="RetinaNet ResNeXt50-32x4d FPN, OpenImages object detection (MLPerf Inference)",
        artifact=ARTIFACT,
        graphs={"model": GraphSpec(INPUTS, OUTPUTS)},
        data=DATA,
        rules=RULES,
        datasets=("openimages", "synthetic"),
        postprocess=DetectionResponses.factory(IMAGE_SIZE, IMAGE_SIZE, score_threshold=SCORE_THRESHOLD),
        outputs_batch_first=False,
        score=coco_map,
        build_random=_build_random,
        extra={"random_graph_version": GRAPH_VERSION},
    )
