"""Reduced precision as a model transform: one derived ONNX file that every backend runs.

``--precision fp16|bf16|int8`` (and ``mlpi quantize``, which does it ahead of time) derives
a new ONNX file from the model's fp32 file (:mod:`mlpi.core.engine.precision_convert`), so
that an int8 run on one architecture and an int8 run on another compare the same model. The
backend is handed that file with ``ModelArtifact.precision`` set and runs it as it is. A
backend whose options ask for its own method (``Backend.native_precision``: TensorRT 10's
builder flags, a runtime's quantizer) gets the fp32 file instead, and the results say so.

int8 is calibrated on the benchmark's official calibration set (``ModelSpec.calibration``,
read through the dataset plugin that reads it by name) unless the user names other data:
``--calibration dataset`` (the run's own first samples) or ``--calibration FILE`` (a list of
names). MLPerf's closed division allows only the official set, so a run calibrated on
anything else is marked not valid for it (``closed_division: false`` with the reason).

The derived file is cached in ``<mlpi cache>/precision/<key>/model.onnx`` with
``transform.json``; the key covers the source file's sha256, the precision, the settings,
the calibration data (its list's sha256, the dataset's identity and the sample count) and
the versions of onnx and onnxruntime. The same request reuses it; any change builds anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mlpi.core.contract.calibration import read_names
from mlpi.core.contract.errors import ModelError, UsageError
from mlpi.core.engine.cache import cache_root, staged_folder

#: The precisions a transform derives from fp32.
DERIVED = ("fp16", "bf16", "int8")
#: Calibration samples ``--calibration dataset`` takes when ``-P calibration_count`` gives none
#: (the size of MLPerf's ImageNet, COCO and LibriSpeech lists).
DATASET_CALIBRATION_COUNT = 500
MODEL_FILE = "model.onnx"
RECORD_FILE = "transform.json"
#: Bump when a conversion changes in a way that changes the file it writes.
TRANSFORM_VERSION = 3


@dataclass
class PrecisionOptions:
    """How a precision is derived; set with ``-P KEY=VALUE`` on ``mlpi run`` and ``mlpi quantize``."""

    calibration_method: Literal["minmax", "entropy", "percentile"] = field(
        default="minmax", metadata={"help": "int8: how activation ranges are taken from the calibration samples"})
    per_channel: bool = field(default=True, metadata={"help": "int8: one scale per output channel of each weight"})
    block_ops: str = field(
        default="", metadata={"help": "operator types kept in fp32, comma-separated (Softmax,LayerNormalization)"})
    calibration_count: int = field(
        default=0, metadata={"min": 0, "help": "int8: calibration samples used (0: the whole list; with --calibration "
                                               f"dataset, {DATASET_CALIBRATION_COUNT} or the dataset's count)"})

    def blocked(self) -> tuple[str, ...]:
        return tuple(op.strip() for op in self.block_ops.split(",") if op.strip())


@dataclass(frozen=True)
class CalibrationData:
    """The samples an int8 transform is calibrated on, and whether MLPerf's closed division
    allows them: ``kind`` official (the benchmark's list), list (a user's list of names) or
    dataset (the run's own first samples)."""

    kind: str
    dataset: str
    path: str | None
    count: int
    names: tuple[str, ...] | None = None
    list_file: str | None = None
    list_sha256: str | None = None
    source: str | None = None  # the official list's place in MLCommons' repository

    @property
    def closed(self) -> bool:
        return self.kind == "official"

    def describe(self) -> str:
        if self.kind == "official":
            return f"the official calibration set ({self.source}, {self.count} samples)"
        if self.kind == "list":
            return f"the list {self.list_file} ({self.count} samples)"
        return f"the first {self.count} samples of dataset '{self.dataset}'"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("names")
        return {key: value for key, value in data.items() if value is not None}


@dataclass(frozen=True)
class Derived:
    """A derived file and what made it (``record``: transform.json's content)."""

    path: Path
    sha256: str
    record: dict[str, Any]
    reused: bool


def transform_key(source_sha256: str, precision: str, options: PrecisionOptions,
                  calibration: CalibrationData | None, data_identity: Mapping[str, Any] | None) -> str:
    """The cache key of a derived file: everything that decides its bytes."""
    payload = {
        "version": TRANSFORM_VERSION, "source": source_sha256, "precision": precision,
        "options": _options_for(precision, options), "versions": tool_versions(),
        "calibration": None if calibration is None else {**calibration.to_json(), "path": None},
        "data": dict(data_identity or {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _options_for(precision: str, options: PrecisionOptions) -> dict[str, Any]:
    """The options that matter to ``precision`` (calibration settings only for int8)."""
    if precision == "int8":
        return dataclasses.asdict(options)
    return {"block_ops": options.block_ops}


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in ("onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def derive(source: Path, source_sha256: str, precision: str, options: PrecisionOptions,
           calibration: CalibrationData | None = None, feeds: Any = None,
           data_identity: Mapping[str, Any] | None = None) -> Derived:
    """The file ``precision`` derives from ``source``, from the cache or built now.

    ``feeds()`` (int8) yields the calibration samples' feed dicts, one sample each; it is only
    called when the file must be built. A failure leaves nothing in the cache."""
    if precision not in DERIVED:
        raise UsageError(f"mlpi derives fp16, bf16 and int8 from fp32, not {precision}", "pass --precision fp16, bf16 or int8")
    key = transform_key(source_sha256, precision, options, calibration, data_identity)
    folder = cache_root() / "precision" / key
    done = _read_record(folder)
    if done is not None:
        return Derived(folder / MODEL_FILE, done["sha256"], done, reused=True)
    record: dict[str, Any] = {
        "precision": precision, "key": key,
        "source": {"path": str(source), "sha256": source_sha256, "precision": "fp32"},
        "settings": _options_for(precision, options), "versions": tool_versions(),
    }
    print(f"mlpi: deriving the {precision} model from {source.name} (once; kept in {folder})", file=sys.stderr, flush=True)
    from mlpi.core.engine import precision_convert as convert
    from mlpi.core.engine.onnx_file import sha256_of

    try:
        with staged_folder(folder) as staging:
            target = staging / MODEL_FILE
            if precision == "fp16":
                convert.to_float16(source, target, options.blocked())
                record["tool"] = "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)"
            elif precision == "bf16":
                convert.to_bfloat16(source, target, options.blocked())
                record["tool"] = ("onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types), "
                                  "retyped bfloat16 from the fp32 values")
            else:
                assert calibration is not None and feeds is not None
                prepared = convert.to_int8(source, target, feeds(), options.calibration_method,
                                           options.per_channel, options.blocked())
                record["tool"] = "onnxruntime.quantization.quantize_static (QDQ, int8 symmetric activations and weights)"
                record["prepared_with"] = prepared
                record["calibration"] = calibration.to_json()
            record["sha256"] = sha256_of(target)
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except (UsageError, ModelError):
        raise
    except (ImportError, AttributeError) as exc:  # the converter and this environment's onnx do not fit
        versions = ", ".join(f"{name} {version}" for name, version in tool_versions().items())
        raise ModelError(f"onnxruntime's {precision} tools cannot run with this environment's packages ({versions}): "
                         f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                         f"install onnxruntime<1.19 beside onnx<1.16 (or onnx>=1.16), or derive the file elsewhere "
                         f"(`mlpi quantize ... --json` prints its path) and run it here with --model-path FILE "
                         f"--precision {precision}") from None
    except Exception as exc:  # noqa: BLE001 - the converters raise whatever their passes raise
        text = str(exc).strip()
        first = (text.splitlines()[0] if text else type(exc).__name__)[:300]
        raise ModelError(f"could not derive the {precision} model from {source.name}: {first}",
                         f"-P block_ops=OP keeps an operator in fp32; or pass a model exported in {precision}") from None
    return Derived(folder / MODEL_FILE, record["sha256"], record, reused=False)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or not (folder / MODEL_FILE).is_file():
        return None
    return record


def user_list(path: str) -> tuple[Path, tuple[str, ...]]:
    """A user's calibration list: its resolved path and names (one per line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"calibration list {path} is not a file",
                         "pass --calibration official, dataset, or a text file with one sample name per line")
    try:
        names = read_names(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read calibration list {path}: {exc}", "pass a UTF-8 text file, one name per line") from None
    if not names:
        raise UsageError(f"calibration list {path} names no sample", "put one sample name per line")
    return file.resolve(), names

