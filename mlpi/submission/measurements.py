"""``measurements.json``: what a scenario's result was measured with, from what the run recorded.

The fields are those MLCommons' checker requires filled (``SYSTEM_IMP_REQUIRED_FILES`` in
``tools/submission/submission_checker/constants.py``, checked by ``checks/measurements_checks.py``):

- ``starting_weights_filename``: the model file the run loaded;
- ``weight_data_types``: the precision the run really ran in (result.json records it);
- ``input_data_types``: the element types of the model's inputs (plan.json), as MLPerf writes
  them (``fp32``, ``int64``...);
- ``retraining``: ``No`` for the model's official file, which ``mlpi fetch`` verified and mlpi
  runs as it is; for any other file only its maker knows, so it comes from the user's file;
- ``weight_transformations``: ``No`` for the official file run in fp32 (the precision it is
  published in); otherwise from the user's file.

The user's file (``--measurements-file``, one JSON object) is merged over these. A field still
empty refuses the build, named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlpi.submission.runinfo import model_file_name, weights_kind
from mlpi.submission.select import TestPick

FIELDS: tuple[str, ...] = (
    "input_data_types", "retraining", "starting_weights_filename", "weight_data_types", "weight_transformations",
)
#: numpy element types as MLPerf's measurements name them.
_MLPERF_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def measurements(performance: TestPick, user: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The measurements of the scenario whose performance test is ``performance``, and the
    fields left empty (named in the build's refusal)."""
    result = performance.record.result
    precision = performance.test.precision or result.precision
    official = weights_kind(result) == "official"
    values: dict[str, Any] = {
        "starting_weights_filename": model_file_name(result),
        "weight_data_types": precision or "",
        "input_data_types": _input_types(performance),
        "retraining": "No" if official else "",
        "weight_transformations": "No" if official and precision == "fp32" else "",
    }
    for key, value in user.items():
        if value is not None:
            values[key] = value
    empty = [key for key in FIELDS if not str(values.get(key) or "").strip()]
    return values, empty


def _input_types(performance: TestPick) -> str:
    try:
        plan = json.loads((performance.record.dir / "plan.json").read_text(encoding="utf-8"))
        inputs = plan["model"]["inputs"]
        types = [str(spec["dtype"]) for spec in inputs]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return ", ".join(dict.fromkeys(_MLPERF_TYPES.get(t, t) for t in types))
