"""``coco``: COCO 2017 validation, preprocessed as MLPerf's SSD references do, cached.

Followed: MLCommons inference ``vision/classification_and_detection`` (tag v2.0) —
``python/coco.py`` (the file layout, one sample per ``images`` entry in file order),
``python/dataset.py`` (``maybe_resize`` then ``pre_process_coco_mobilenet`` or
``pre_process_coco_resnet34``) and ``tools/accuracy-coco.py`` (sample ``i`` is
``images[i]`` of the annotation file).

``--dataset-path DIR`` holds ``DIR/annotations/instances_val2017.json`` and
``DIR/val2017/<file_name>`` (5,000 images). Everything else — the annotation checks, the
float32 resize cache, the finish the model declares (uint8 pixels for SSD-MobileNet, ``/255``
then ImageNet mean/std for SSD-ResNet34), the errors naming a missing or corrupt image —
is the COCO-format machinery :mod:`mlpi.datasets.openimages` shares with RetinaNet's data.
A grayscale JPEG is read as OpenCV's default colour mode reads it (three equal channels),
as the reference's ``cv2.imread`` does.

int8 calibration (``request.names``): MLPerf's ``coco_cal_images_list.txt`` names 500 COCO
*train2017* images (``000000391895.jpg``). MLCommons ships the list but no script that
fetches them; COCO's own ``train2017.zip`` unpacks to ``train2017/``. So
``--calibration-path DIR`` is read as a flat folder of the listed JPEGs, or else as
``DIR/train2017/`` (the folder beside ``val2017/``, so the run's ``--dataset-path`` serves),
one folder for the whole list, preprocessed and cached as the run's images are
(:func:`mlpi.datasets.openimages.calibration_folder`).
"""

from __future__ import annotations

from mlpi.datasets.openimages import CocoFormatDetection, Layout

NAME = "coco"
COCO = Layout(NAME, "annotations/instances_val2017.json", "val2017", "MLCommons' COCO download script",
              "train2017", "COCO's train2017.zip")


class Coco(CocoFormatDetection):
    name = NAME
    files = COCO
    description = "COCO 2017 validation (instances_val2017.json + val2017/*.jpg), SSD preprocessing, cached"
