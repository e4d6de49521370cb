"""The ONNX node test cases of the installed ``onnx`` package, collected once and kept on disk.

Follows onnx's ``onnx/backend/test/case/node/__init__.py``: ``collect_testcases()`` builds
every case (a one-node model, its inputs and expected outputs) by running onnx's own case
definitions; this onnx wheel ships no data files for them. That takes about 15 s (the
pooling cases compute their expected outputs in Python), so the first collection writes
each case in the layout of onnx's ``backend/test/cmd_tools.py generate-data``
(``<case>/model.onnx``, ``<case>/input_<j>.pb``, ``<case>/output_<j>.pb``) plus an index, into mlpi's cache under
the onnx version; later runs read only the cases they use.

Each case is classified:

- ``op``: the operator it tests: the node's ``op_type`` (``domain.op_type`` outside the
  default domain). An ``_expanded`` case (the operator's ONNX function body, inlined:
  ``test_softmax_example_expanded`` runs ReduceMax, Sub, Exp...) counts as the function's
  operator, the one of the case it expands, and is marked ``expanded``: the row for an
  operator says how a backend does on it, however the graph spells it.
- ``random``: its outputs are random draws (Bernoulli, RandomNormal..., Dropout in training
  mode): another backend's correct answer differs from onnxruntime's.
- ``category``: ``core``, or the first of the kinds below that the case's inputs, outputs,
  Cast targets or constants use (a core rate leaves them out: they are types few
  accelerators have, or values that are not tensors): ``float8``, ``low-bit`` (int4, uint4,
  int2, uint2, float4, float6), ``bfloat16``, ``complex``, ``string``, ``sequence``,
  ``optional``, ``map``. A case whose operator works on optional values or sequences
  (``Optional*``, ``*Sequence*``: OptionalHasElement with its input left out,
  SequenceEmpty) is ``optional`` or ``sequence`` whatever its tensors.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError, UsageError, suggest

CORE = "core"
#: Categories left out of the core rate, in the order a case is given the first that fits.
EXCLUDED_CATEGORIES = ("float8", "low-bit", "bfloat16", "complex", "string", "sequence", "optional", "map")

#: Bumped when the cached layout or the classification changes (a new folder is written).
_FORMAT = 4
_INDEX = "cases.json"
_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@dataclass(frozen=True)
class NodeCase:
    """One node test case: its model file and inputs in ``folder``, what it tests, how to feed it."""

    name: str
    op: str
    expanded: bool
    category: str
    folder: Path
    input_names: tuple[str, ...]
    input_kinds: tuple[str, ...]
    output_names: tuple[str, ...] = ()
    output_kinds: tuple[str, ...] = ()
    random: bool = False

    @property
    def model_path(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def core(self) -> bool:
        return self.category == CORE

    def inputs(self) -> dict[str, Any]:
        """The inputs by graph input name: numpy arrays (ml_dtypes ones for float8, bfloat16
        and low-bit tensors), lists of them for sequences, ``None`` for an empty optional."""
        return {
            name: _read_value(self.folder / f"input_{j}.pb", kind)
            for j, (name, kind) in enumerate(zip(self.input_names, self.input_kinds))
        }

    def expected(self) -> dict[str, Any]:
        """The outputs onnx's case definition expects, by graph output name (read like the inputs)."""
        return {
            name: _read_value(self.folder / f"output_{j}.pb", kind)
            for j, (name, kind) in enumerate(zip(self.output_names, self.output_kinds))
        }


def onnx_version() -> str:
    import onnx

    return str(onnx.__version__)


def cache_folder() -> Path:
    """Where the installed onnx's cases are kept: one folder per onnx version."""
    from mlpi.core.engine.cache import cache_root

    return cache_root() / "onnx-node-cases" / f"onnx-{onnx_version()}-v{_FORMAT}"


def load_cases(on_collect: Callable[[str], None] | None = None) -> list[NodeCase]:
    """Every case of the installed onnx, sorted by name. The first call for an onnx version
    collects them (``on_collect`` is told, with a sentence to show) and writes the cache."""
    folder = cache_folder()
    index = _read_index(folder)
    if index is None:
        if on_collect is not None:
            on_collect(f"collecting the node test cases of onnx {onnx_version()} (once; about 15 s) into {folder}")
        _write_cache(folder)
        index = _read_index(folder)
        if index is None:  # pragma: no cover - written a moment ago
            raise MlpiError(f"the node test cases written to {folder} cannot be read back", f"remove {folder} and try again")
    return [
        NodeCase(
            name=row["name"], op=row["op"], expanded=row["expanded"], category=row["category"], folder=folder / row["name"],
            input_names=tuple(row["input_names"]), input_kinds=tuple(row["input_kinds"]),
            output_names=tuple(row["output_names"]), output_kinds=tuple(row["output_kinds"]), random=row["random"],
        )
        for row in index
    ]


def select(cases: Sequence[NodeCase], ops: Iterable[str] = (), sample: int | None = None) -> list[NodeCase]:
    """The cases of the operators ``ops`` (any case; all when empty), then ``sample`` of them.

    A sample is spread over as many operators as it can: each operator's cases in a seeded
    order, one from each operator in turn, so the same onnx version gives the same sample.
    UsageError for an operator no case tests.
    """
    wanted = [op.strip() for spec in ops for op in spec.split(",") if op.strip()]
    chosen = list(cases)
    if wanted:
        known = {case.op.lower(): case.op for case in cases}
        unknown = [op for op in wanted if op.lower() not in known]
        if unknown:
            raise UsageError(
                f"no ONNX node test case tests operator '{unknown[0]}' (onnx {onnx_version()})",
                suggest(unknown[0], sorted(set(known.values()))),
            )
        keep = {op.lower() for op in wanted}
        chosen = [case for case in cases if case.op.lower() in keep]
    if sample is None or sample >= len(chosen):
        return chosen
    if sample < 1:
        raise UsageError(f"--sample {sample} would run no case", "pass --sample 1 or more, or leave it out to run every case")
    by_op: dict[str, list[NodeCase]] = {}
    for case in chosen:
        by_op.setdefault(case.op, []).append(case)
    rng = random.Random(0)
    for op in sorted(by_op):
        rng.shuffle(by_op[op])
    order = sorted(by_op)
    rng.shuffle(order)
    picked: list[NodeCase] = []
    turn = 0
    while len(picked) < sample:
        for op in order:
            if turn < len(by_op[op]) and len(picked) < sample:
                picked.append(by_op[op][turn])
        turn += 1
    return sorted(picked, key=lambda case: case.name)


# --------------------------------------------------------------------------- classification


def operator_of(model: Any) -> str:
    """The tested operator of a one-node model (the first node of an expanded one is not it)."""
    node = model.graph.node[0]
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def category_of(model: Any) -> str:
    """``core`` or the first of :data:`EXCLUDED_CATEGORIES` the model uses."""
    found = set()
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        found |= _type_kinds(value.type)
    found |= _graph_kinds(graph)
    for category in EXCLUDED_CATEGORIES:
        if category in found:
            return category
    return CORE


def _elem_kind(elem_type: int) -> str | None:
    from onnx import TensorProto as T

    kinds = {
        T.BFLOAT16: "bfloat16", T.STRING: "string", T.COMPLEX64: "complex", T.COMPLEX128: "complex",
        T.FLOAT8E4M3FN: "float8", T.FLOAT8E4M3FNUZ: "float8", T.FLOAT8E5M2: "float8", T.FLOAT8E5M2FNUZ: "float8",
    }
    for name, kind in (("FLOAT8E8M0", "float8"), ("UINT4", "low-bit"), ("INT4", "low-bit"), ("FLOAT4E2M1", "low-bit"),
                       ("UINT2", "low-bit"), ("INT2", "low-bit"), ("FLOAT6E2M3", "low-bit"), ("FLOAT6E3M2", "low-bit")):
        if hasattr(T, name):  # newer types than the oldest onnx mlpi supports
            kinds[getattr(T, name)] = kind
    return kinds.get(elem_type)


def _type_kinds(type_proto: Any) -> set[str]:
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        kind = _elem_kind(type_proto.tensor_type.elem_type)
        return {kind} if kind else set()
    if which == "sequence_type":
        return {"sequence"} | _type_kinds(type_proto.sequence_type.elem_type)
    if which == "optional_type":
        return {"optional"} | _type_kinds(type_proto.optional_type.elem_type)
    if which == "map_type":
        return {"map"} | _type_kinds(type_proto.map_type.value_type)
    if which == "sparse_tensor_type":
        kind = _elem_kind(type_proto.sparse_tensor_type.elem_type)
        return {kind} if kind else set()
    return set()


def _graph_kinds(graph: Any) -> set[str]:
    """Kinds that Cast targets, tensor attributes (Constant values), subgraphs and the
    operators of optional values and sequences (OptionalHasElement with its input left out,
    SequenceEmpty...) use."""
    from onnx import AttributeProto

    found: set[str] = set()
    for node in graph.node:
        if node.op_type.startswith("Optional"):
            found.add("optional")
        elif "Sequence" in node.op_type:
            found.add("sequence")
        for attr in node.attribute:
            if attr.name == "to" and attr.type == AttributeProto.INT:
                kind = _elem_kind(attr.i)
                found |= {kind} if kind else set()
            elif attr.type == AttributeProto.TENSOR:
                kind = _elem_kind(attr.t.data_type)
                found |= {kind} if kind else set()
            elif attr.type == AttributeProto.GRAPH:
                found |= _graph_kinds(attr.g) | {k for v in [*attr.g.input, *attr.g.output] for k in _type_kinds(v.type)}
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found |= _graph_kinds(sub) | {k for v in [*sub.input, *sub.output] for k in _type_kinds(v.type)}
    return found


#: Operators whose outputs are random draws: two correct backends answer differently.
RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})


def is_random(model: Any, inputs: Sequence[Any]) -> bool:
    """Whether the case's outputs are random draws: a random operator, or Dropout in
    training mode with a ratio above 0."""
    import numpy as np

    fed = {info.name: value for info, value in zip(model.graph.input, inputs)}
    for node in model.graph.node:
        if node.op_type in RANDOM_OPS:
            return True
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] in fed:
            ratio = fed.get(node.input[1]) if len(node.input) > 1 else None
            if bool(np.asarray(fed[node.input[2]])) and (ratio is None or float(np.asarray(ratio)) != 0.0):
                return True
    return False


# --------------------------------------------------------------------------- the cache


def _read_index(folder: Path) -> list[dict[str, Any]] | None:
    try:
        data = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("onnx") != onnx_version() or not isinstance(data.get("cases"), list):
        return None
    return data["cases"]


def _collect() -> list[Any]:
    """onnx's TestCase objects, with its case definitions' warnings and prints kept off the
    screen and numpy's global random state (they reseed it) put back."""
    import numpy as np

    state = np.random.get_state()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            from onnx.backend.test.case.node import collect_testcases

            return list(collect_testcases(None))  # None: every operator (onnx before 1.16 has no default)
    except Exception as exc:  # noqa: BLE001 - a broken case definition of the installed onnx
        raise MlpiError(
            f"onnx {onnx_version()} could not build its node test cases ({type(exc).__name__}: {str(exc)[:200]})",
            "reinstall onnx (pip install --force-reinstall onnx)",
        ) from None
    finally:
        np.random.set_state(state)


def _write_cache(folder: Path) -> None:
    from mlpi.core.engine.cache import staged_folder

    # onnx before 1.16 may define a case name twice (and appends on every call): the first counts
    cases = list({case.name: case for case in reversed(_collect())}.values())[::-1]
    ops = {case.name: operator_of(case.model) for case in cases if not _EXPANDED.search(case.name)}
    rows = []
    try:
        with staged_folder(folder, keep_existing=lambda: _read_index(folder) is not None) as staging:
            for case in sorted(cases, key=lambda c: c.name):
                expanded = bool(_EXPANDED.search(case.name))
                model = case.model
                inputs, outputs = case.data_sets[0]
                case_dir = staging / case.name
                case_dir.mkdir()
                (case_dir / "model.onnx").write_bytes(model.SerializeToString())
                kinds = []
                for j, (value, info) in enumerate(zip(inputs, model.graph.input)):
                    kind, proto = _to_proto(value, info)
                    (case_dir / f"input_{j}.pb").write_bytes(proto.SerializeToString())
                    kinds.append(kind)
                output_kinds = []
                for j, (value, info) in enumerate(zip(outputs, model.graph.output)):
                    kind, proto = _to_proto(value, info)
                    (case_dir / f"output_{j}.pb").write_bytes(proto.SerializeToString())
                    output_kinds.append(kind)
                rows.append({
                    "name": case.name,
                    "op": ops.get(_EXPANDED.sub("", case.name), operator_of(model)) if expanded else operator_of(model),
                    "expanded": expanded,
                    "category": category_of(model),
                    "input_names": [info.name for info in model.graph.input][: len(kinds)],
                    "input_kinds": kinds,
                    "output_names": [info.name for info in model.graph.output][: len(output_kinds)],
                    "output_kinds": output_kinds,
                    "random": is_random(model, inputs),
                })
            index = {"onnx": onnx_version(), "format": _FORMAT, "cases": rows}
            (staging / _INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write the node test cases into {folder}: {exc.strerror or exc}",
            "set MLPI_CACHE to a writable folder",
        ) from None


def _to_proto(value: Any, info: Any) -> tuple[str, Any]:
    """(kind, proto) of one input or output value, as onnx's ``generate-data`` writes it."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    which = info.type.WhichOneof("value")
    if which == "sequence_type":
        return "sequence", numpy_helper.from_list(value, info.name)
    if which == "optional_type":
        return "optional", numpy_helper.from_optional(value, info.name)
    if which == "map_type":
        return "map", numpy_helper.from_dict(value, info.name)
    if isinstance(value, TensorProto):
        return "tensor", value
    return "tensor", numpy_helper.from_array(np.asarray(value), info.name)


def _read_value(path: Path, kind: str) -> Any:
    """One stored value, its arrays writeable copies (onnx's readers give read-only views of
    the proto's bytes; mlpi's datasets hand sessions arrays of their own)."""
    import numpy as np
    from onnx import MapProto, OptionalProto, SequenceProto, TensorProto, numpy_helper

    proto_type, convert = {
        "tensor": (TensorProto, numpy_helper.to_array),
        "sequence": (SequenceProto, numpy_helper.to_list),
        "optional": (OptionalProto, numpy_helper.to_optional),
        "map": (MapProto, numpy_helper.to_dict),
    }[kind]
    proto = proto_type()
    proto.ParseFromString(path.read_bytes())
    value = convert(proto)
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, list):
        return [np.array(item, copy=True) if isinstance(item, np.ndarray) else item for item in value]
    return value
