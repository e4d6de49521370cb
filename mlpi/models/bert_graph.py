"""A BERT-large SQuAD ONNX graph with MLPerf's signature and seeded random weights.

For performance runs where MLCommons' ``model.onnx`` (``language/bert``, zenodo 3733910,
opset 11) cannot be downloaded: the same layers, the same operators an opset-11 export of
BERT has, the same inputs and outputs and the same weight volume, so every backend does the
same work. The weights are random, so the logits mean nothing (the answers are wrong); they
do vary with the position and the inputs, and the attention mask works as the real one does
(a padded token has no effect on the others). Built with onnx + numpy only.

Signature (as the official file's):

* inputs ``input_ids``, ``input_mask``, ``segment_ids``: int64 [batch_size, 384], the batch
  dimension dynamic;
* outputs ``output_start_logits``, ``output_end_logits``: float32 [batch_size, 384].

Layers (:class:`BertConfig`, BERT-large by default: 24 layers, hidden 1024, 16 heads,
intermediate 4096, vocabulary 30522, 512 positions, 2 token types):

* embeddings: word (Gather by ``input_ids``) + position (the table's first 384 rows, a
  constant Slice) + token type (Gather by ``segment_ids``), then LayerNorm;
* the attention bias (1 - float(input_mask)) * -10000, [B, 1, 1, S], added to every layer's
  scores;
* per encoder layer: Q, K, V projections (MatMul + bias), Reshape to [B, S, 16, 64] and
  Transpose to heads first; softmax(Q K^T / 8 + bias) V; back to [B, S, 1024]; the output
  projection, residual and LayerNorm; the feed-forward 1024 -> 4096, GELU, 4096 -> 1024,
  residual and LayerNorm;
* the SQuAD head: MatMul to [B, S, 2] + bias, Split and Squeeze into the two logits.

Opset 11 has no LayerNormalization or Gelu: LayerNorm is ReduceMean, Sub, Mul, ReduceMean, Add
(epsilon 1e-12), Sqrt, Div, then the gain and bias; GELU is x * 0.5 * (1 + Erf(x / sqrt(2))).
Softmax on the last axis of a 4-D tensor is right at opset 11 (it coerces the tensor to 2-D at
``axis``). Every Reshape keeps the batch dimension dynamic (0: copy the input's dimension).

Weights: one ``numpy.random.default_rng(seed)`` draws every matrix and embedding table in turn,
normal(0, 0.02) as BERT initialises them, so each layer has weights of its own (the real
model's 1.34 GB are all distinct, and reading them is part of the cost); biases are zero,
LayerNorm gains one. At the defaults the file is 1,336,464,779 bytes (334,094,338 parameters,
see :func:`parameters`): one file, under protobuf's 2 GB limit. :func:`write_bert` streams it,
one weight in memory at a time (the word embeddings, 125 MB, are the largest), and writes the
bytes ``build_bert(...).SerializeToString()`` would give; on two cores that takes ~9 s with a
peak of ~190 MB resident, and onnxruntime runs one sample in ~2.2 s.

Cost: :func:`macs` counts the MatMuls' multiply-accumulates per sample at the sequence length:
per layer 4*S*H^2 (Q, K, V, output) + 2*S^2*H (scores, context) + 2*S*H*I (feed-forward) =
5,133,828,096 at the defaults, times 24, plus the head's S*H*2: 123,212,660,736 (123.2 GMAC)
per sample at 384 tokens. :func:`graph_macs` counts the same from any ONNX graph's MatMul and
Gemm nodes after shape inference, so the official file can be measured the same way; on this
graph the two agree exactly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Bump when the graph or the weights change, so cached copies are rebuilt.
GRAPH_VERSION = 1
INPUTS = ("input_ids", "input_mask", "segment_ids")
OUTPUTS = ("output_start_logits", "output_end_logits")
BATCH_DIM = "batch_size"
OPSET = 11
LAYER_NORM_EPSILON = 1e-12
INIT_STD = 0.02
MASK_BIAS = -10000.0


@dataclass(frozen=True)
class BertConfig:
    """The model's shape; the defaults are BERT-large with MLPerf's 384-token sequences."""

    layers: int = 24
    hidden: int = 1024
    heads: int = 16
    intermediate: int = 4096
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2
    seq_len: int = 384

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "intermediate", "vocab", "max_positions", "type_vocab", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"BertConfig.{name} must be positive, not {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.seq_len > self.max_positions:
            raise ValueError(f"seq_len ({self.seq_len}) exceeds max_positions ({self.max_positions})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class _Weight:
    """An initializer to come: ``kind`` "normal" (drawn, times INIT_STD), "zeros" or "ones"
    (float32), or "const" with its ``value``."""

    name: str
    shape: tuple[int, ...]
    kind: str
    value: np.ndarray | None = None


class _Builder:
    """Nodes and the initializers' descriptions, in the order the weights are drawn."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[_Weight] = []
        self.count = 0

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        self.count += 1
        output = output or f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def weight(self, name: str, shape: tuple[int, ...], kind: str = "normal") -> str:
        self.weights.append(_Weight(name, shape, kind))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(_Weight(name, value.shape, "const", value))
        return name

    def linear(self, x: str, name: str, n_in: int, n_out: int) -> str:
        w = self.weight(f"{name}/W", (n_in, n_out))
        b = self.weight(f"{name}/B", (n_out,), "zeros")
        return self.node("Add", [self.node("MatMul", [x, w]), b])

    def layer_norm(self, x: str, name: str, width: int) -> str:
        gain = self.weight(f"{name}/gamma", (width,), "ones")
        bias = self.weight(f"{name}/beta", (width,), "zeros")
        centred = self.node("Sub", [x, self.node("ReduceMean", [x], axes=[-1], keepdims=1)])
        var = self.node("ReduceMean", [self.node("Mul", [centred, centred])], axes=[-1], keepdims=1)
        std = self.node("Sqrt", [self.node("Add", [var, "const/ln_epsilon"])])
        return self.node("Add", [self.node("Mul", [self.node("Div", [centred, std]), gain]), bias])

    def gelu(self, x: str) -> str:
        erf = self.node("Erf", [self.node("Div", [x, "const/sqrt2"])])
        return self.node("Mul", [self.node("Mul", [x, "const/half"]), self.node("Add", [erf, "const/one"])])


def _f32(value: float | list[float]) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _i64(value: int | list[int]) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _encoder_layer(b: _Builder, x: str, i: int, c: BertConfig) -> str:
    p = f"layer{i}"
    heads_first = [0, 2, 1, 3]

    def split_heads(t: str) -> str:
        return b.node("Reshape", [t, "const/split_heads"])  # [B, S, heads, head_dim]

    q = b.node("Transpose", [split_heads(b.linear(x, f"{p}/attention/query", c.hidden, c.hidden))], perm=heads_first)
    k = b.node("Transpose", [split_heads(b.linear(x, f"{p}/attention/key", c.hidden, c.hidden))], perm=[0, 2, 3, 1])
    v = b.node("Transpose", [split_heads(b.linear(x, f"{p}/attention/value", c.hidden, c.hidden))], perm=heads_first)
    scores = b.node("Div", [b.node("MatMul", [q, k]), "const/sqrt_head_dim"])  # [B, heads, S, S]
    probs = b.node("Softmax", [b.node("Add", [scores, "mask/bias"])], axis=3)
    context = b.node("Transpose", [b.node("MatMul", [probs, v])], perm=heads_first)  # [B, S, heads, head_dim]
    context = b.node("Reshape", [context, "const/merge_heads"])
    attended = b.linear(context, f"{p}/attention/output", c.hidden, c.hidden)
    x = b.layer_norm(b.node("Add", [attended, x]), f"{p}/attention/layer_norm", c.hidden)
    hidden = b.gelu(b.linear(x, f"{p}/intermediate", c.hidden, c.intermediate))
    out = b.linear(hidden, f"{p}/output", c.intermediate, c.hidden)
    return b.layer_norm(b.node("Add", [out, x]), f"{p}/output/layer_norm", c.hidden)


def _skeleton(seed: int, c: BertConfig) -> tuple[onnx.ModelProto, list[_Weight]]:
    """The model without its initializers, and the initializers' descriptions in order."""
    b = _Builder()
    b.const("const/ln_epsilon", _f32(LAYER_NORM_EPSILON))
    b.const("const/sqrt2", _f32(math.sqrt(2.0)))
    b.const("const/half", _f32(0.5))
    b.const("const/one", _f32(1.0))
    b.const("const/sqrt_head_dim", _f32(math.sqrt(c.head_dim)))
    b.const("const/split_heads", _i64([0, 0, c.heads, c.head_dim]))
    b.const("const/merge_heads", _i64([0, 0, c.hidden]))

    # -- embeddings
    ids, mask, segments = INPUTS
    word = b.node("Gather", [b.weight("embeddings/word", (c.vocab, c.hidden)), ids], axis=0)
    table = b.weight("embeddings/position", (c.max_positions, c.hidden))
    b.const("const/zero", _i64([0]))
    b.const("const/seq_len", _i64([c.seq_len]))
    position = b.node("Slice", [table, "const/zero", "const/seq_len", "const/zero"])  # [S, hidden]
    token_type = b.node("Gather", [b.weight("embeddings/token_type", (c.type_vocab, c.hidden)), segments], axis=0)
    x = b.node("Add", [b.node("Add", [word, position]), token_type])
    x = b.layer_norm(x, "embeddings/layer_norm", c.hidden)

    # -- the attention bias, [B, 1, 1, S]
    b.const("mask/scale", _f32(MASK_BIAS))
    keep = b.node("Cast", [mask], to=TensorProto.FLOAT)
    bias = b.node("Mul", [b.node("Sub", ["const/one", keep]), "mask/scale"])
    b.node("Unsqueeze", [bias], "mask/bias", axes=[1, 2])

    for i in range(c.layers):
        x = _encoder_layer(b, x, i, c)

    # -- the SQuAD head
    logits = b.linear(x, "qa", c.hidden, 2)  # [B, S, 2]
    start, end = f"{OUTPUTS[0]}/split", f"{OUTPUTS[1]}/split"
    b.nodes.append(helper.make_node("Split", [logits], [start, end], name="qa/split", axis=-1, split=[1, 1]))
    b.node("Squeeze", [start], OUTPUTS[0], axes=[-1])
    b.node("Squeeze", [end], OUTPUTS[1], axes=[-1])

    shape = [BATCH_DIM, c.seq_len]
    graph = helper.make_graph(
        b.nodes,
        "bert_large_squad_random",
        [helper.make_tensor_value_info(name, TensorProto.INT64, shape) for name in INPUTS],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in OUTPUTS],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpi")
    model.ir_version = 6
    model.doc_string = (
        f"BERT SQuAD with random weights (seed {seed}, {c.layers} layers, hidden {c.hidden}, "
        f"{c.seq_len} tokens, graph v{GRAPH_VERSION}): performance only"
    )
    return model, b.weights


def _arrays(weights: list[_Weight], seed: int) -> Iterator[tuple[_Weight, np.ndarray]]:
    """Each initializer's value, drawn in order from one generator (one array alive at a time)."""
    rng = np.random.default_rng(seed)
    for w in weights:
        if w.kind == "normal":
            value = rng.standard_normal(w.shape, dtype=np.float32)
            value *= np.float32(INIT_STD)
        elif w.kind == "zeros":
            value = np.zeros(w.shape, np.float32)
        elif w.kind == "ones":
            value = np.ones(w.shape, np.float32)
        else:
            assert w.value is not None
            value = w.value
        yield w, value


def build_bert(seed: int, config: BertConfig = BertConfig()) -> onnx.ModelProto:
    """The graph as a ModelProto (see the module docstring). At the defaults it holds 1.34 GB:
    use :func:`write_bert` to put it on disk."""
    model, weights = _skeleton(seed, config)
    model.graph.initializer.extend(numpy_helper.from_array(value, w.name) for w, value in _arrays(weights, seed))
    return model


def parameters(config: BertConfig = BertConfig()) -> int:
    """Number of float32 weights, LayerNorm gains and biases included (334,094,338 at the defaults)."""
    _, weights = _skeleton(0, config)
    return sum(math.prod(w.shape) for w in weights if w.kind != "const")


def macs(config: BertConfig = BertConfig()) -> int:
    """Multiply-accumulates of the MatMuls for one sample of ``seq_len`` tokens
    (123,212,660,736 at the defaults)."""
    s, h, i = config.seq_len, config.hidden, config.intermediate
    per_layer = 4 * s * h * h + 2 * s * s * h + 2 * s * h * i
    return config.layers * per_layer + s * h * 2


# -- protobuf encoding, to stream the initializers without holding them all


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2)


def _split_fields(message: onnx.ModelProto | onnx.GraphProto, field: int) -> tuple[bytes, bytes]:
    """``message`` serialized as two parts: its fields numbered below ``field`` and above it.
    Protobuf writes fields in number order, so part 1 + field ``field`` + part 2 are the bytes
    the whole message serializes to."""
    below, above = type(message)(), type(message)()
    below.CopyFrom(message)
    above.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if descriptor.number >= field:
            below.ClearField(descriptor.name)
        if descriptor.number <= field:
            above.ClearField(descriptor.name)
    return below.SerializeToString(), above.SerializeToString()


_MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_TENSOR_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _dtype(w: _Weight) -> np.dtype:
    return np.dtype(np.float32) if w.value is None else w.value.dtype


def _tensor_head(w: _Weight) -> bytes:
    """A TensorProto's fields but ``raw_data`` (dims, data_type, name: all numbered below it)."""
    head = TensorProto(name=w.name, dims=w.shape, data_type=helper.np_dtype_to_tensor_dtype(_dtype(w)))
    return head.SerializeToString()


def _tensor_size(head: bytes, nbytes: int) -> int:
    return len(head) + len(_key(_TENSOR_RAW_DATA)) + len(_varint(nbytes)) + nbytes


def _stream(handle: BinaryIO, seed: int, config: BertConfig) -> None:
    """Write ``build_bert(seed, config).SerializeToString()`` to ``handle``, one weight at a time."""
    model, weights = _skeleton(seed, config)
    model_below, model_above = _split_fields(model, _MODEL_GRAPH)
    graph_below, graph_above = _split_fields(model.graph, _GRAPH_INITIALIZER)
    heads = [_tensor_head(w) for w in weights]
    graph_size = len(graph_below) + len(graph_above)
    for w, head in zip(weights, heads):
        tensor = _tensor_size(head, math.prod(w.shape) * _dtype(w).itemsize)
        graph_size += len(_key(_GRAPH_INITIALIZER)) + len(_varint(tensor)) + tensor

    handle.write(model_below + _key(_MODEL_GRAPH) + _varint(graph_size) + graph_below)
    for (_, value), head in zip(_arrays(weights, seed), heads):
        value = np.ascontiguousarray(value)
        if sys.byteorder != "little":  # raw_data is little-endian
            value = value.byteswap()
        tensor = _tensor_size(head, value.nbytes)
        handle.write(_key(_GRAPH_INITIALIZER) + _varint(tensor) + head + _key(_TENSOR_RAW_DATA) + _varint(value.nbytes))
        handle.write(memoryview(value).cast("B"))
    handle.write(graph_above + model_above)


def write_bert(path: Path, seed: int, config: BertConfig = BertConfig()) -> Path:
    """Write the graph to ``path`` atomically (a temporary file in the same folder, flushed
    and renamed into place), streaming the weights: the bytes are
    ``build_bert(seed, config).SerializeToString()``, without ever holding them all."""
    from mlpi.core.results.rundir import write_atomic

    path = Path(path)
    write_atomic(path, lambda handle: _stream(handle, seed, config))
    return path


# -- counting any graph's MatMuls

#: Initializers up to this many elements keep their values for shape inference (Reshape
#: targets, Slice bounds); larger ones are replaced by typed inputs, so counting a 1.3 GB
#: model does not copy its weights.
_SMALL_INITIALIZER = 4096


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return None if any(d < 0 for d in dims) else dims


def _shapes_only(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` fit for shape inference: the inputs' first dimension fixed to
    ``batch`` where it is not a number, the large initializers as typed inputs without data."""
    g = model.graph
    initializers = {t.name for t in g.initializer}
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.graph.name = g.name
    light.graph.node.extend(g.node)
    light.graph.output.extend(g.output)
    for value_info in g.input:
        if value_info.name in initializers:
            continue
        fixed = light.graph.input.add()
        fixed.CopyFrom(value_info)
        dims = fixed.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    for tensor in g.initializer:
        if math.prod(tensor.dims) <= _SMALL_INITIALIZER:
            light.graph.initializer.append(tensor)
        else:
            light.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return light


def graph_macs(model: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-accumulates of the MatMul and Gemm nodes of ``model``'s main graph for one run
    at ``batch`` (the first dimension of every input where it is not fixed), from onnx's shape
    inference. Raises ValueError where an operand's shape stays unknown."""
    inferred = onnx.shape_inference.infer_shapes(_shapes_only(model, batch), data_prop=True)
    g = inferred.graph
    shapes: dict[str, tuple[int, ...] | None] = {t.name: tuple(t.dims) for t in g.initializer}
    for value_info in [*g.input, *g.value_info, *g.output]:
        shapes[value_info.name] = _dims(value_info)

    def shape(node: onnx.NodeProto, i: int) -> tuple[int, ...]:
        found = shapes.get(node.input[i])
        if found is None:
            raise ValueError(f"{node.op_type} node {node.name or node.output[0]!r}: the shape of "
                             f"{node.input[i]!r} is unknown after shape inference")
        return found

    total = 0
    for node in g.node:
        if node.op_type == "MatMul":
            a, b = shape(node, 0), shape(node, 1)
            a = (1, *a) if len(a) == 1 else a
            b = (*b, 1) if len(b) == 1 else b
            stack = math.prod(np.broadcast_shapes(a[:-2], b[:-2]))
            total += stack * a[-2] * a[-1] * b[-1]
        elif node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            a, b = shape(node, 0), shape(node, 1)
            m, k = (a[1], a[0]) if attrs.get("transA", 0) else a
            n = b[0] if attrs.get("transB", 0) else b[1]
            total += m * k * n
    return total
