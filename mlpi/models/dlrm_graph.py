"""DLRM-v2 (DCNv2) as one ONNX graph, with seeded random weights or known-answer weights.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch/python/backend_pytorch_native.py``
(torchrec's ``DLRM_DCN`` with the sizes of :mod:`mlpi.models.dlrm_config`, ``torch.sigmoid``
applied to its output by the distributed backend, ``--max-ind-range`` hashing) and torchrec's
``torchrec/models/dlrm.py`` (``SparseArch``, ``DenseArch``, ``InteractionDCNArch``,
``OverArch``), ``torchrec/modules/crossnet.py`` (``LowRankCrossNet``: its xavier-normal kernels
and zero biases), ``torchrec/modules/mlp.py`` (``MLP``: ReLU after every layer) and
``torchrec/modules/embedding_configs.py`` (tables drawn from uniform(+-sqrt(1 / rows))).
torchrec is not needed: the graph is written here with onnx + numpy.

Signature (opset 17): ``dense_features`` float32 [N, 13] and ``sparse_features`` int32
[N, 214] (feature k's multi-hot indices in columns ``column_offsets()[k]:[k+1]``) ->
``prediction`` float32 [N, 1], the click probability.

Ops, in order:

* embeddings (torchrec's ``EmbeddingBag`` with sum pooling): every index modulo its table's
  row count (the reference's ``--max-ind-range`` hashing, so any index of the official range
  is valid for reduced tables), as ``Div``, ``Mul``, ``Sub`` and ``Mod`` rather than one
  ``Mod``, which OpenVINO's CPU plugin gets wrong past 2^24 (see :func:`_hash`); ``Add`` of
  the table's first row in one concatenated ``[sum(rows), 128]`` table; ``Gather`` ->
  [N, 214, 128]; ``MatMul`` by a constant 0/1 pooling matrix [26, 214] -> [N, 26, 128] (the
  sum of each feature's rows);
* bottom MLP: ``Gemm`` + ``Relu`` 13 -> 512 -> 256 -> 128;
* interaction: ``Unsqueeze`` + ``Concat`` (the dense vector FIRST, then features 0..25) +
  ``Flatten`` -> x0 [N, 3456]; three low-rank cross layers
  ``x_{l+1} = x0 * (W_l (V_l x_l) + b_l) + x_l`` (``Gemm`` without bias for V, ``Gemm``
  with bias for W, ``Mul``, ``Add``);
* top MLP: ``Gemm`` + ``Relu`` 3456 -> 1024 -> 1024 -> 512 -> 256, ``Gemm`` 256 -> 1, ``Sigmoid``.

Weights are named after torchrec's ``DLRM_DCN`` state dict (see :func:`weight_shapes`), in
torch layouts (a Linear's weight is [out, in]; cross biases are [3456] where torchrec keeps
[3456, 1]). The dense part is the official model's whatever the tables: only table rows
differ, so :func:`flops_per_row` is the official cost. Random weights are for performance
only; :func:`write_known` writes a graph of the same ops whose prediction
:func:`known_prediction` computes, to check a backend runs the real path correctly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.results.rundir import write_bytes_atomic
from mlpi.models.dlrm_config import (
    BOTTOM_MLP,
    CROSS_LAYERS,
    CROSS_RANK,
    DENSE_FEATURES,
    DENSE_INPUT,
    EMBEDDING_DIM,
    HOTNESS,
    MULTI_HOT_WIDTH,
    OUTPUT,
    SPARSE_FEATURES,
    SPARSE_INPUT,
    TOP_MLP,
    Tables,
    column_offsets,
)

#: Bump when the graph or the weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
OPSET = 17
IR_VERSION = 8
#: The interaction's width: the dense vector and the 26 pooled embeddings, flattened.
INTERACTION_WIDTH = (SPARSE_FEATURES + 1) * EMBEDDING_DIM
#: The pooled embeddings [N, 26, 128]: inside the one-graph model, the dense graph's input when split.
POOLED = "pooled_embeddings"
#: A table shard's output [N, its features, 128].
SHARD_OUTPUT = "pooled"
#: The role of the dense part when the tables are split over units.
DENSE_ROLE = "dense"
#: Largest weights a graph may hold: protobuf cannot serialise a message past 2 GiB.
MAX_WEIGHT_BYTES = 1_800_000_000


def table_name(feature: int) -> str:
    """Feature ``feature``'s table [rows_k, 128] (torchrec's ``t_cat_{k}``)."""
    return f"sparse_arch.embedding_bag_collection.embedding_bags.t_cat_{feature}.weight"


def _dense_layer(layer: int) -> str:
    return f"dense_arch.model._mlp.{layer}._linear"


def _over_layer(layer: int) -> str:
    """Top MLP layer ``layer``: the ReLU layers are torchrec's ``MLP``, the last a plain Linear."""
    return "over_arch.model.1" if layer == len(TOP_MLP) - 1 else f"over_arch.model.0._mlp.{layer}._linear"


def weight_shapes(tables: Tables) -> dict[str, tuple[int, ...]]:
    """Every named tensor of the model and its shape, in graph order: the 26 tables, the bottom
    MLP's ``.weight``/``.bias``, the cross net's ``V_kernels.l`` [512, 3456], ``W_kernels.l``
    [3456, 512] and ``bias.l`` [3456], the top MLP's ``.weight``/``.bias``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for feature, rows in enumerate(tables.sizes):
        shapes[table_name(feature)] = (rows, EMBEDDING_DIM)
    fan_in = DENSE_FEATURES
    for layer, width in enumerate(BOTTOM_MLP):
        shapes[f"{_dense_layer(layer)}.weight"] = (width, fan_in)
        shapes[f"{_dense_layer(layer)}.bias"] = (width,)
        fan_in = width
    for layer in range(CROSS_LAYERS):
        shapes[f"inter_arch.crossnet.V_kernels.{layer}"] = (CROSS_RANK, INTERACTION_WIDTH)
        shapes[f"inter_arch.crossnet.W_kernels.{layer}"] = (INTERACTION_WIDTH, CROSS_RANK)
        shapes[f"inter_arch.crossnet.bias.{layer}"] = (INTERACTION_WIDTH,)
    fan_in = INTERACTION_WIDTH
    for layer, width in enumerate(TOP_MLP):
        shapes[f"{_over_layer(layer)}.weight"] = (width, fan_in)
        shapes[f"{_over_layer(layer)}.bias"] = (width,)
        fan_in = width
    return shapes


def weight_bytes(tables: Tables) -> int:
    """The float32 bytes of every weight: what decides whether the graph can be serialised."""
    return sum(int(np.prod(shape)) * 4 for shape in weight_shapes(tables).values())


def largest_max_rows() -> int:
    """The largest ``max_rows`` whose graph stays under :data:`MAX_WEIGHT_BYTES` (for hints)."""
    low, high = 1, max(Tables().sizes)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if weight_bytes(Tables(middle)) <= MAX_WEIGHT_BYTES else (low, middle - 1)
    return low


def check_size(tables: Tables) -> None:
    """``ModelError`` before anything is allocated when the weights cannot fit one ONNX file."""
    size = weight_bytes(tables)
    if size > MAX_WEIGHT_BYTES:
        from mlpi.core.contract.errors import ModelError

        what = "the official tables" if tables.max_rows is None else f"tables of at most {tables.max_rows} rows"
        raise ModelError(
            f"a DLRM-v2 graph with {what} would hold {size / 1e9:.1f} GB of weights, past the "
            f"{MAX_WEIGHT_BYTES / 1e9:.1f} GB an ONNX file can hold",
            f"use smaller tables: max_rows of at most {largest_max_rows()} (e.g. 10000)",
        )


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float) -> np.ndarray:
    return ((rng.random(shape, dtype=np.float32) * 2.0 - 1.0) * np.float32(bound)).astype(np.float32)


def build_weights(seed: int, tables: Tables) -> dict[str, np.ndarray]:
    """Seeded random weights (names and shapes: :func:`weight_shapes`). Tables
    uniform(+-sqrt(1/rows)) and cross kernels xavier-normal with zero biases, as torchrec
    initialises them; Linear biases uniform(+-1/sqrt(fan_in)) as torch's, but Linear weights
    He-uniform (+-sqrt(6/fan_in), torch's ``kaiming_uniform_`` for ReLU) rather than torch's
    default +-1/sqrt(fan_in): with the default, eight layers shrink the logit until every
    prediction is 0.49 +- 0.001; with He's, predictions spread over about 0.1-0.7, so a backend
    that computes something else shows. Each tensor has its own generator
    (``default_rng([seed, i])``), so the dense weights do not depend on the tables."""
    check_size(tables)
    shapes = weight_shapes(tables)
    weights: dict[str, np.ndarray] = {}
    for index, (name, shape) in enumerate(shapes.items()):
        rng = np.random.default_rng([seed, index])
        if ".V_kernels." in name or ".W_kernels." in name:
            std = np.sqrt(2.0 / (shape[0] + shape[1]))
            value = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
        elif name.startswith("inter_arch.crossnet.bias."):
            value = np.zeros(shape, np.float32)
        elif name.startswith("sparse_arch."):
            value = _uniform(rng, shape, np.sqrt(1.0 / shape[0]))
        elif name.endswith(".weight"):  # a Linear's [out, in]
            value = _uniform(rng, shape, np.sqrt(6.0 / shape[1]))
        else:  # a Linear's bias: torch's bound, from its weight's fan-in
            value = _uniform(rng, shape, 1.0 / np.sqrt(shapes[name.removesuffix(".bias") + ".weight"][1]))
        weights[name] = value
    return weights


def known_weights(tables: Tables) -> dict[str, np.ndarray]:
    """Weights under which ``prediction = sigmoid(0.25 * dense[:, 0] - 1 + 1e-6 * S)``, S the sum
    over all features of their hashed indices (:func:`known_prediction`), through every op.

    Table rows hold their row number in column 0. ReLU layers carry the signed ``dense[:, 0]``
    as two channels (its positive and negative parts); the cross biases (0.5, 0.25, 0.25 with
    zero kernels) double x0, which a cross net that multiplied by x_l instead would not; the
    first top layer reads the dense pair at columns 0 and 1 and each feature at column
    128 * (k + 1), so features put before the dense vector give another answer."""
    check_size(tables)
    weights = {name: np.zeros(shape, np.float32) for name, shape in weight_shapes(tables).items()}
    for feature, rows in enumerate(tables.sizes):
        weights[table_name(feature)][:, 0] = np.arange(rows, dtype=np.float32)
    first = weights[f"{_dense_layer(0)}.weight"]
    first[0, 0], first[1, 0] = 1.0, -1.0
    for layer in range(1, len(BOTTOM_MLP)):
        weights[f"{_dense_layer(layer)}.weight"][[0, 1], [0, 1]] = 1.0
    for layer, bias in enumerate((0.5, 0.25, 0.25)[:CROSS_LAYERS]):
        weights[f"inter_arch.crossnet.bias.{layer}"][:] = bias
    # After the cross net x = 2 * x0: halve, then 0.25 * dense and 1e-6 * S.
    row = np.zeros(INTERACTION_WIDTH, np.float32)
    row[0], row[1] = 0.125, -0.125
    row[EMBEDDING_DIM::EMBEDDING_DIM] = 0.5e-6
    top = weights[f"{_over_layer(0)}.weight"]
    top[0], top[1] = row, -row
    for layer in range(1, len(TOP_MLP) - 1):
        weights[f"{_over_layer(layer)}.weight"][[0, 1], [0, 1]] = 1.0
    weights[f"{_over_layer(len(TOP_MLP) - 1)}.weight"][0, :2] = (1.0, -1.0)
    weights[f"{_over_layer(len(TOP_MLP) - 1)}.bias"][0] = -1.0
    return weights


def known_prediction(dense: np.ndarray, sparse: np.ndarray, tables: Tables) -> np.ndarray:
    """What the :func:`write_known` graph predicts, [N, 1] float32."""
    rows = np.repeat(np.asarray(tables.sizes, np.int64), HOTNESS)
    hashed_sum = (np.asarray(sparse, np.int64) % rows).sum(axis=1)
    logit = 0.25 * np.asarray(dense, np.float64)[:, 0] - 1.0 + 1e-6 * hashed_sum
    return (1.0 / (1.0 + np.exp(-logit)))[:, None].astype(np.float32)


def flops_per_row() -> int:
    """Multiply-adds of one row's dense part (bottom MLP, cross net, top MLP): the official
    model's, whatever the tables. Embedding sums and elementwise ops are not counted."""
    total, fan_in = 0, DENSE_FEATURES
    for width in BOTTOM_MLP:
        total, fan_in = total + fan_in * width, width
    total += CROSS_LAYERS * 2 * INTERACTION_WIDTH * CROSS_RANK
    fan_in = INTERACTION_WIDTH
    for width in TOP_MLP:
        total, fan_in = total + fan_in * width, width
    return total


# --------------------------------------------------------------------------- graph writing


def _lookup_constants(tables: Tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``sparse_features``: its table's rows and first row in the concatenated
    table (int32 [214] each), and the pooling matrix [26, 214] (1 where a column is feature k's)."""
    sizes = np.asarray(tables.sizes, np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    feature_of_column = np.repeat(np.arange(SPARSE_FEATURES), HOTNESS)
    pool = (feature_of_column[None, :] == np.arange(SPARSE_FEATURES)[:, None]).astype(np.float32)
    assert pool.shape == (SPARSE_FEATURES, MULTI_HOT_WIDTH) and column_offsets()[-1] == MULTI_HOT_WIDTH
    return sizes[feature_of_column].astype(np.int32), starts[feature_of_column].astype(np.int32), pool


class LazyWeights(Mapping[str, np.ndarray]):
    """Weights read when a graph takes them (a checkpoint's, which may not fit memory at once):
    ``shape_of(name)`` without reading, ``weights[name]`` reads float32."""

    def shape_of(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError


#: Initializers at least this large go to the external data file when a graph has one.
EXTERNAL_MIN_BYTES = 1024
#: Each external tensor starts on a page, so a runtime may map it rather than copy it.
EXTERNAL_ALIGN = 4096


class ExternalData:
    """ONNX external data: a graph's large initializers written to one file beside it
    (``<graph>.onnx.data``), part by part, so a graph of any size is written without holding
    its weights at once and without protobuf's 2 GiB limit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._offset = 0

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._file.close()

    def tensor(self, name: str, parts: Iterable[np.ndarray]) -> onnx.TensorProto:
        """The parts, joined along their first axis, as an external initializer."""
        pad = -self._offset % EXTERNAL_ALIGN
        self._file.write(b"\0" * pad)
        start = self._offset = self._offset + pad
        rows, tail, dtype = 0, None, None
        for part in parts:
            array = np.ascontiguousarray(part)
            if tail is not None and (array.shape[1:] != tail or array.dtype != dtype):
                raise ValueError(f"{name}: parts of shapes {tail} and {array.shape[1:]} do not join")
            tail, dtype = array.shape[1:], array.dtype
            self._file.write(memoryview(array).cast("B"))
            self._offset += array.nbytes
            rows += array.shape[0]
        if dtype is None:
            raise ValueError(f"{name}: no parts")
        tensor = onnx.TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(dtype)
        tensor.dims.extend([rows, *tail])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", start), ("length", self._offset - start)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        return tensor


class _Graph:
    def __init__(self, external: ExternalData | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.external = external

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if self.external is not None and value.nbytes >= EXTERNAL_MIN_BYTES:
            self.initializers.append(self.external.tensor(name, [value]))
        else:
            self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def const_rows(self, name: str, parts: Iterable[np.ndarray]) -> str:
        """An initializer joined from ``parts`` along the first axis; with an external data
        file, each part is taken only as it is written (a checkpoint's tables, one at a time)."""
        if self.external is not None:
            self.initializers.append(self.external.tensor(name, parts))
            return name
        return self.const(name, np.concatenate(list(parts)))

    def op(self, op: str, inputs: list[str], output: str | None = None, **attrs: float | list[int]) -> str:
        name = output or f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"{op}_{len(self.nodes)}", **attrs))
        return name

    def linear(self, x: str, weights: Mapping[str, np.ndarray], prefix: str, relu: bool, output: str | None = None) -> str:
        """torch's Linear (weight [out, in]) as ``Gemm(transB=1)``, optionally with a ReLU."""
        inputs = [x, self.const(f"{prefix}.weight", weights[f"{prefix}.weight"])]
        if f"{prefix}.bias" in weights:
            inputs.append(self.const(f"{prefix}.bias", weights[f"{prefix}.bias"]))
        y = self.op("Gemm", inputs, None if relu else output, transB=1)
        return self.op("Relu", [y], output) if relu else y


def _hash(g: _Graph, indices: str, rows: str) -> str:
    """``indices % rows`` (int32), exact on every backend: ``r = i - (i / rows) * rows``, then
    ``Mod(r, rows)``. Exact integer arithmetic gives ``r = i % rows`` and the ``Mod`` changes
    nothing; OpenVINO's CPU plugin divides int32 through float32, wrong by a few units past
    2^24 (openvinotoolkit/openvino#35830; its ``Mod`` too, so a plain ``Mod`` of a 40M-range
    index reads the wrong row), but its ``Mul`` and ``Sub`` are exact, so for indices of the
    official range (< 2^26) ``r`` is the true remainder give or take a few ``rows``, well
    under 2^24, where its ``Mod`` is exact (tests/test_dlrm_graph.py checks every backend)."""
    quotient = g.op("Div", [indices, rows])
    near = g.op("Sub", [indices, g.op("Mul", [quotient, rows])])
    return g.op("Mod", [near, rows], fmod=0)


def _checked(weights: Mapping[str, np.ndarray], tables: Tables) -> Mapping[str, np.ndarray]:
    """The weights as float32, after checking every name and shape (lazy weights: by their
    shapes, each read later, when its graph takes it)."""
    expected = weight_shapes(tables)
    lazy = isinstance(weights, LazyWeights)

    def shape(name: str) -> tuple[int, ...] | None:
        if name not in weights:
            return None
        return weights.shape_of(name) if isinstance(weights, LazyWeights) else tuple(weights[name].shape)

    wrong = [f"{name} {shape(name)} (expected {want})" for name, want in expected.items() if shape(name) != want]
    if wrong:
        raise ValueError(f"weights that do not fit the tables: {'; '.join(wrong[:3])}")
    return weights if lazy else {name: np.asarray(weights[name], np.float32) for name in expected}


def _embeddings(g: _Graph, weights: Mapping[str, np.ndarray], tables: Tables, features: Sequence[int], output: str) -> str:
    """Features ``features``' pooled embeddings [N, len(features), 128] from ``sparse_features``."""
    rows, starts, pool = _lookup_constants(tables)
    columns = np.concatenate([np.arange(column_offsets()[k], column_offsets()[k + 1]) for k in features])
    sizes = np.asarray(tables.sizes, np.int64)[list(features)]
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    feature_of_column = np.repeat(np.arange(len(features)), [HOTNESS[k] for k in features])
    local_starts = first[feature_of_column].astype(np.int32)
    local_pool = (feature_of_column[None, :] == np.arange(len(features))[:, None]).astype(np.float32)
    indices = SPARSE_INPUT
    if len(columns) != MULTI_HOT_WIDTH:  # a shard reads its own features' columns only
        indices = g.op("Gather", [SPARSE_INPUT, g.const("shard_columns", columns.astype(np.int64))], axis=1)
    hashed = _hash(g, indices, g.const("table_rows", rows[columns]))
    rows_read = g.op("Add", [hashed, g.const("table_starts", local_starts)])
    table = g.const_rows("embedding_tables", (weights[table_name(k)] for k in features))
    gathered = g.op("Gather", [table, rows_read], axis=0)  # [N, columns, 128]
    assert starts is not None and pool is not None
    return g.op("MatMul", [g.const("pooling", local_pool), gathered], output)  # [N, features, 128]


def _dense_part(g: _Graph, weights: Mapping[str, np.ndarray], pooled: str) -> None:
    """Bottom MLP, interaction with ``pooled`` [N, 26, 128], cross net, top MLP, sigmoid."""
    x = DENSE_INPUT
    for layer in range(len(BOTTOM_MLP)):
        x = g.linear(x, weights, _dense_layer(layer), relu=True)
    dense = g.op("Unsqueeze", [x, g.const("axis_1", np.asarray([1], np.int64))])
    x0 = g.op("Flatten", [g.op("Concat", [dense, pooled], axis=1)], "interaction_x0", axis=1)  # dense first

    x = x0
    for layer in range(CROSS_LAYERS):
        prefix = "inter_arch.crossnet"
        v = g.op("Gemm", [x, g.const(f"{prefix}.V_kernels.{layer}", weights[f"{prefix}.V_kernels.{layer}"])], transB=1)
        w = g.op("Gemm", [v, g.const(f"{prefix}.W_kernels.{layer}", weights[f"{prefix}.W_kernels.{layer}"]),
                          g.const(f"{prefix}.bias.{layer}", weights[f"{prefix}.bias.{layer}"])], transB=1)
        x = g.op("Add", [g.op("Mul", [x0, w]), x])

    for layer in range(len(TOP_MLP)):
        x = g.linear(x, weights, _over_layer(layer), relu=layer < len(TOP_MLP) - 1)
    g.op("Sigmoid", [x], OUTPUT)


def _model(g: _Graph, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           doc: str) -> onnx.ModelProto:
    """The graph as a model, checked (with external data, once it is written beside its data)."""
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    if g.external is None:
        onnx.checker.check_model(model)
    return model


_DENSE_IN = helper.make_tensor_value_info(DENSE_INPUT, TensorProto.FLOAT, ["N", DENSE_FEATURES])
_SPARSE_IN = helper.make_tensor_value_info(SPARSE_INPUT, TensorProto.INT32, ["N", MULTI_HOT_WIDTH])
_OUT = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])


def graph_from_weights(weights: Mapping[str, np.ndarray], tables: Tables, doc: str = "",
                       external: ExternalData | None = None) -> onnx.ModelProto:
    """The DLRM-v2 graph (see the module docstring) over ``weights`` (:func:`weight_shapes`),
    its large initializers in ``external`` where given."""
    weights = _checked(weights, tables)
    g = _Graph(external)
    pooled = _embeddings(g, weights, tables, range(SPARSE_FEATURES), POOLED)
    _dense_part(g, weights, pooled)
    return _model(g, "dlrm_v2", [_DENSE_IN, _SPARSE_IN], [_OUT], doc)


# --------------------------------------------------------------------------- tables split over units


def shard_features(tables: Tables, shards: int) -> list[list[int]]:
    """Table-wise sharding: each feature's table to the shard holding the fewest rows so far,
    largest tables first (as a table-wise planner balances memory); features ascending within
    a shard."""
    if shards < 1 or shards > SPARSE_FEATURES:
        raise ValueError(f"shards must be 1 to {SPARSE_FEATURES}, not {shards}")
    held = [0] * shards
    chosen: list[list[int]] = [[] for _ in range(shards)]
    for k in sorted(range(SPARSE_FEATURES), key=lambda k: (-tables.sizes[k], k)):
        target = min(range(shards), key=lambda s: (held[s], s))
        chosen[target].append(k)
        held[target] += tables.sizes[k]
    return [sorted(features) for features in chosen]


def shard_role(shard: int) -> str:
    return f"tables{shard}"


def shard_from_weights(weights: Mapping[str, np.ndarray], tables: Tables, features: Sequence[int], doc: str = "",
                       external: ExternalData | None = None) -> onnx.ModelProto:
    """One shard: ``sparse_features`` [N, 214] -> ``pooled`` [N, len(features), 128], the pooled
    embeddings of its features (their tables only)."""
    weights = _checked(weights, tables)
    g = _Graph(external)
    _embeddings(g, weights, tables, features, SHARD_OUTPUT)
    out = helper.make_tensor_value_info(SHARD_OUTPUT, TensorProto.FLOAT, ["N", len(features), EMBEDDING_DIM])
    return _model(g, "dlrm_v2_tables", [_SPARSE_IN], [out], doc)


def dense_from_weights(weights: Mapping[str, np.ndarray], tables: Tables, doc: str = "",
                       external: ExternalData | None = None) -> onnx.ModelProto:
    """The dense part: ``dense_features`` [N, 13] and ``pooled_embeddings`` [N, 26, 128] (every
    feature's, in feature order) -> ``prediction`` [N, 1]."""
    weights = _checked(weights, tables)
    g = _Graph(external)
    _dense_part(g, weights, POOLED)
    pooled = helper.make_tensor_value_info(POOLED, TensorProto.FLOAT, ["N", SPARSE_FEATURES, EMBEDDING_DIM])
    return _model(g, "dlrm_v2_dense", [_DENSE_IN, pooled], [_OUT], doc)


def write_sharded(folder: Path, seed: int, tables: Tables, shards: int) -> dict[str, Path]:
    """The random-weights model (the same weights as :func:`write_random`'s for ``seed``) as a
    ``dense`` graph and ``shards`` table graphs, ``{role: path}`` in ``folder``."""
    check_size(tables)
    weights = build_weights(seed, tables)
    what = f"seed {seed}, {_tables_text(tables)}, graph v{GRAPH_VERSION}"
    paths = {DENSE_ROLE: folder / f"{DENSE_ROLE}.onnx"}
    write_bytes_atomic(paths[DENSE_ROLE], dense_from_weights(
        weights, tables, f"DLRM-v2 dense part, seeded random weights ({what}): performance only").SerializeToString())
    for shard, features in enumerate(shard_features(tables, shards)):
        role = shard_role(shard)
        paths[role] = folder / f"{role}.onnx"
        doc = f"DLRM-v2 tables {features} of {shards} shards, seeded random weights ({what}): performance only"
        write_bytes_atomic(paths[role], shard_from_weights(weights, tables, features, doc).SerializeToString())
    return paths


def _tables_text(tables: Tables) -> str:
    return "official tables" if tables.max_rows is None else f"tables of at most {tables.max_rows} rows, indices hashed"


def write_random(path: Path, seed: int, tables: Tables) -> Path:
    """The seeded random-weights graph (performance only), written atomically to ``path``;
    ``ModelError`` if its tables cannot fit one ONNX file."""
    check_size(tables)
    doc = f"DLRM-v2 with seeded random weights (seed {seed}, {_tables_text(tables)}, graph v{GRAPH_VERSION}): performance only"
    write_bytes_atomic(path, graph_from_weights(build_weights(seed, tables), tables, doc).SerializeToString())
    return path


def write_known(path: Path, tables: Tables) -> Path:
    """The known-answer graph (:func:`known_weights`, :func:`known_prediction`), written atomically."""
    check_size(tables)
    doc = (f"DLRM-v2 known-answer graph ({_tables_text(tables)}, graph v{GRAPH_VERSION}): "
           "prediction = sigmoid(0.25 * dense[:, 0] - 1 + 1e-6 * sum of the hashed indices)")
    write_bytes_atomic(path, graph_from_weights(known_weights(tables), tables, doc).SerializeToString())
    return path
