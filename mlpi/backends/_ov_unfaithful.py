"""ONNX configurations that OpenVINO runs without complaint and answers wrongly: refused, or repaired exactly.

No MLCommons reference file: this follows ONNX's operator definitions (``onnx/defs``) and
their node test cases (``onnx/backend/test/case/node``). The conformance kit's node-test tier
(:mod:`mlpi.testing.onnx_node_tier`; ``python -m mlpi.testing.conformance --backend openvino
--precision fp32 --onnx-node-tests``) found every one of them on OpenVINO 2026.4.1's CPU plugin,
answering unlike onnxruntime; variants of each case, built with ``onnx.helper``, narrowed it
down to the attribute values, input types or shapes below (``tests/test_ov_unfaithful.py``
keeps one refused and one faithful model per rule).

A wrong answer that reaches the user's results is worse than a refusal, so:

- :data:`RULES` are checked by :func:`refuse_unfaithful_nodes` in ``check()``: it reads the
  ONNX graph once (subgraphs and model-local functions too), and a node in a configuration
  OpenVINO gets wrong is a :class:`~mlpi.core.contract.errors.ModelError` naming the operator,
  the attribute or input, what OpenVINO does instead, and the fix (onnxruntime).
- Three wrong answers have an exact fix in OpenVINO's own graph, which
  :func:`repair_unfaithful_ops` makes in ``load()``: TopK's ties (OpenVINO's unstable sort
  returns tied elements in any order, ONNX wants the lower index first: a stable sort);
  ReduceMax and ReduceMin over values that are all infinite, or none (OpenVINO answers
  float32's largest finite value, ONNX the infinity: a select puts it back); and
  NonMaxSuppression's IoU threshold (OpenVINO suppresses a box at IoU >= threshold, ONNX at
  IoU > threshold: the next float32 above the threshold gives ONNX's answer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpi.core.contract.backend import ModelArtifact
from mlpi.core.contract.errors import ModelError
from mlpi.core.engine.onnx_file import graphs_within, node_subgraphs

#: The OpenVINO release every rule was found and checked on.
CHECKED_ON = "OpenVINO 2026.4"
HINT = "use --backend onnxruntime, which answers as ONNX defines"

# ONNX element types (onnx.TensorProto.DataType), named here so that importing this module
# does not import onnx.
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64 = 1, 2, 3, 4, 5, 6, 7
FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16 = 10, 11, 12, 13, 16
FLOAT8E4M3FN, FLOAT8E5M2 = 17, 19
_TYPE_NAMES = {
    FLOAT: "float32", UINT8: "uint8", INT8: "int8", UINT16: "uint16", INT16: "int16", INT32: "int32",
    INT64: "int64", FLOAT16: "float16", DOUBLE: "float64", UINT32: "uint32", UINT64: "uint64",
    BFLOAT16: "bfloat16", FLOAT8E4M3FN: "float8e4m3fn", FLOAT8E5M2: "float8e5m2",
}

#: Initializers up to this many elements keep their values for shape inference (axes,
#: repeats, sizes: the ones shapes are computed from); larger ones go in as typed inputs.
_SMALL_INITIALIZER = 64


Shape = tuple[int | str | None, ...]


class Facts:
    """What a rule reads of the model beyond its node: the default domain's opset, constant
    values, element types and shapes by tensor name. Types and shapes come from the file,
    then from ONNX's shape inference, run once and only if a rule asks for a tensor the file
    does not describe."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        graphs = list(graphs_within(model.graph))
        inputs = {v.name for v in model.graph.input}
        #: the model's own inputs and outputs (subgraphs' are tensors inside the model)
        self.graph_inputs, self.graph_outputs = inputs, {v.name for v in model.graph.output}
        self._constants: dict[str, Any] = {}
        self._values: dict[str, tuple[int | None, Shape | None]] = {}
        for graph in graphs:
            for tensor in graph.initializer:
                if tensor.name not in inputs:  # an initializer also listed as an input is only a default
                    self._constants[tensor.name] = tensor
                self._values[tensor.name] = (tensor.data_type or None, tuple(int(d) for d in tensor.dims))
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                    self._constants[node.output[0]] = node
            for value in [*graph.input, *graph.output, *graph.value_info]:
                self._values.setdefault(value.name, _type_and_shape(value))
        self._inferred = False

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output; None for a computed tensor or one
        whose data is in an external file (not read here)."""
        source = self._constants.get(name)
        if source is None:
            return None
        try:
            if hasattr(source, "op_type"):
                return _constant_node_value(source)
            from onnx import numpy_helper

            return None if source.data_location == 1 else np.asarray(numpy_helper.to_array(source))
        except Exception:  # noqa: BLE001 - a value that cannot be decoded is not known
            return None

    def elem_type(self, name: str) -> int | None:
        return self._described(name)[0]

    def shape(self, name: str) -> Shape | None:
        """Dimensions as ints (known), strs (symbolic, equal when named alike) or None."""
        return self._described(name)[1]

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def _described(self, name: str) -> tuple[int | None, Shape | None]:
        known = self._values.get(name, (None, None))
        if (known[0] is None or known[1] is None) and not self._inferred:
            self._inferred = True
            for key, value in _inferred_values(self.model).items():
                old = self._values.get(key, (None, None))
                self._values[key] = (old[0] or value[0], old[1] if old[1] is not None else value[1])
            known = self._values.get(name, (None, None))
        return known


@dataclass(frozen=True)
class Rule:
    """One configuration of one operator that OpenVINO answers wrongly.

    ``wrong_when(node, facts)`` names the attribute values or inputs that make this node
    one (``"antialias=1 while downsampling"``), or returns None; ``reason`` says what
    OpenVINO does instead."""

    op: str
    wrong_when: Callable[[Any, Facts], str | None]
    reason: str
    #: The operator's domain: "" is ONNX's own (``ai.onnx``).
    domain: str = ""


# --------------------------------------------------------------------------- the rules' predicates


def _attention_window(node: Any, facts: Facts) -> str | None:
    windows = [f"{name}={value}" for name in ("left_window_size", "right_window_size")
               if (value := _attr(node, name, -1)) >= 0]
    return " and ".join(windows) or None


def _attention_causal_past(node: Any, facts: Facts) -> str | None:
    if not _attr(node, "is_causal", 0) or _input(node, 4) is None:
        return None
    queries, keys = (_sequence_length(facts.shape(node.input[k])) for k in (0, 1))
    if queries is not None and queries == keys:
        return None
    if facts.opset < 25:  # one query (decoding) sees every key in both, up to opset 24
        return None if queries == 1 else "is_causal=1 and past_key, where the query length is not 1 or the new keys' length"
    return "is_causal=1 and past_key, where the query length is not the new keys' length"


def _reduce_int64_empty_set(node: Any, facts: Facts) -> str | None:
    if facts.elem_type(node.input[0]) == INT64 and _reduces_an_empty_set(node, facts):
        return "an int64 input and a reduced axis of size 0 (an empty set)"
    return None


def _cast_infinities(node: Any, facts: Facts) -> str | None:
    """Casts between float64 and float32 or float16 where the float64 side is one of the
    model's inputs or outputs (inside the graph OpenVINO keeps infinities)."""
    source, target = facts.elem_type(node.input[0]), _cast_target(node, facts)
    if target == DOUBLE and source in (FLOAT, FLOAT16, None) and node.output[0] in facts.graph_outputs:
        return f"{'a ' + _TYPE_NAMES[source] if source else 'an'} input cast to float64, a model output"
    if (source, target) == (DOUBLE, FLOAT) and node.input[0] in facts.graph_inputs:
        return "a float64 model input cast to float32"
    return None


def _cast_float8_saturating(node: Any, facts: Facts) -> str | None:
    target = _cast_target(node, facts)
    if target in (FLOAT8E4M3FN, FLOAT8E5M2) and _attr(node, "saturate", 1):
        return f"saturate=1 (the default) to {_TYPE_NAMES[target]}"
    return None


def _bitshift(node: Any, facts: Facts) -> str | None:
    kind, direction = facts.elem_type(node.input[0]), _attr(node, "direction", "")
    if kind == UINT16 or (kind == INT16 and direction == "LEFT"):
        return None
    return f"direction={direction} on {_TYPE_NAMES.get(kind or 0, 'an input of unknown type')}"


def _dft(node: Any, facts: Facts) -> str | None:
    if _attr(node, "onesided", 0):
        return "onesided=1"
    if facts.opset < 20:
        axis = _attr(node, "axis", 1)
        return f"axis={axis}" if axis < 0 else None
    name = _input(node, 2)
    if name is None:
        axis = -2
    else:
        value = facts.constant(name)
        if value is None:
            return f"axis given at run time (input '{name}')"
        axis = int(value.reshape(-1)[0])
    rank = facts.rank(node.input[0])
    normal = axis + rank if axis < 0 and rank is not None else axis
    return None if normal == 1 else f"axis={axis}" + (" (the default)" if name is None else "")


def _dynamic_quantize(node: Any, facts: Facts) -> str | None:
    return "a scale computed from the data at run time"


def _int8_weights(node: Any, facts: Facts) -> str | None:
    return "int8 weights"


def _qoperator(node: Any, facts: Facts) -> str | None:
    return "8-bit operands"


def _quantize_runtime_scale(node: Any, facts: Facts) -> str | None:
    scale = node.input[1]
    return None if facts.constant(scale) is not None else f"y_scale computed at run time (input '{scale}')"


def _lstm_peepholes(node: Any, facts: Facts) -> str | None:
    name = _input(node, 7)
    if name is None:
        return None
    value = facts.constant(name)
    return None if value is not None and not value.any() else f"peephole weights (input P, '{name}')"


def _maxpool_ceil(node: Any, facts: Facts) -> str | None:
    """ONNX drops a ceil_mode window that would start in the end padding; OpenVINO keeps it.
    That happens for some input size exactly when the stride exceeds the kernel's reach
    minus the end padding; with the size known, exactly when the last window starts at or
    past the input's end."""
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if not _attr(node, "ceil_mode", 0) or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return None
    kernel = list(_attr(node, "kernel_shape", []))
    count = len(kernel)
    strides = list(_attr(node, "strides", None) or [1] * count)
    dilations = list(_attr(node, "dilations", None) or [1] * count)
    pads = [0] * (2 * count) if auto_pad == "VALID" else list(_attr(node, "pads", None) or [0] * (2 * count))
    shape = facts.shape(node.input[0])
    spatial = list(shape[2:]) if shape is not None and len(shape) == count + 2 else [None] * count
    for axis, (size, k, stride, dilation) in enumerate(zip(spatial, kernel, strides, dilations)):
        begin, end = pads[axis], pads[axis + count]
        reach = (k - 1) * dilation + 1
        if isinstance(size, int):
            last_start = stride * -(-(size + begin + end - reach) // stride)
            if last_start >= size + begin:
                return f"ceil_mode=1, whose last window along spatial axis {axis} starts past the input"
        elif stride > reach - end:
            return f"ceil_mode=1 and a stride ({stride}) past the kernel's reach, whose last window may start past the input"
    return None


def _resize_antialias(node: Any, facts: Facts) -> str | None:
    if not _attr(node, "antialias", 0):
        return None
    scales = _resize_scales(node, facts)
    if scales is not None and all(scale >= 1 for scale in scales):
        return None
    return "antialias=1 while downsampling" if scales is not None else "antialias=1 with scales or sizes not known ahead"


def _resize_cubic_exclude_outside(node: Any, facts: Facts) -> str | None:
    if _attr(node, "mode", "nearest") == "cubic" and _attr(node, "exclude_outside", 0):
        return "mode=cubic and exclude_outside=1"
    return None


def _resize_aspect_policy(node: Any, facts: Facts) -> str | None:
    policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy == "stretch" or _input(node, 3) is None:
        return None
    scales = _resize_scales(node, facts)
    if scales is not None and len(set(scales)) <= 1:
        return None  # sizes that keep the aspect ratio already: the policy changes nothing
    return f"keep_aspect_ratio_policy={policy}"


def _space_to_depth_crd(node: Any, facts: Facts) -> str | None:
    if _attr(node, "mode", "DCR") != "CRD" or _attr(node, "blocksize", 1) == 1:
        return None
    shape = facts.shape(node.input[0])
    if shape is not None and len(shape) > 1 and shape[1] == 1:
        return None  # one channel: both modes give the same order
    return "mode=CRD"


def _tile_runtime_repeats(node: Any, facts: Facts) -> str | None:
    repeats = node.input[1]
    if facts.constant(repeats) is not None:
        return None
    rank = facts.rank(node.input[0])
    if rank is None:
        length = facts.shape(repeats)
        rank = length[0] if length is not None and len(length) == 1 and isinstance(length[0], int) else None
    if rank is not None and rank < 4:
        return None
    return f"repeats given at run time (input '{repeats}') for an input of rank {rank or 'unknown'}"


_QUANTIZE_REASON = ("OpenVINO multiplies by the scale's reciprocal where ONNX divides by the scale: a value at or "
                    "next to the midpoint of two steps, common with a scale taken from the data, rounds to the other")
_FLOAT64_REASON = ("OpenVINO's CPU plugin runs float64 as float32, and where float64 enters or leaves the model "
                   "+-inf (and any value beyond float32's range) becomes +-3.4e38")

#: The configurations refused, each with the node-test cases that found it on OpenVINO 2026.4.1.
RULES: tuple[Rule, ...] = (
    # test_attention_local_window, _rank1_boolean_mask, _with_past, _ext_cache_rank{2,3,4}_*,
    # _gqa_rank4_mask, test_attention_3d_local_window, test_attention_bidirectional_window
    Rule("Attention", _attention_window,
         "OpenVINO ignores the window: each query attends to every key the mask and causality allow"),
    # test_attention_4d_with_past_and_present_qk_matmul_bias_{3d,4d}_mask_causal (opset 23); one
    # query over past and new keys by variants at opset 25, where onnxruntime's diagonal moved
    Rule("Attention", _attention_causal_past,
         "OpenVINO places the causal diagonal at the end of past and new keys, ONNX after the past keys"),
    # int64 variants of test_reduce_max_empty_set (float ones are repaired: repair_unfaithful_ops)
    Rule("ReduceMax", _reduce_int64_empty_set,
         "OpenVINO answers int32's lowest value where ONNX answers int64's"),
    Rule("ReduceMin", _reduce_int64_empty_set,
         "OpenVINO answers int32's largest value where ONNX answers int64's"),
    # test_cast_FLOAT_to_DOUBLE, test_cast_DOUBLE_to_FLOAT, test_cast_FLOAT16_to_DOUBLE
    Rule("Cast", _cast_infinities, _FLOAT64_REASON),
    Rule("CastLike", _cast_infinities, _FLOAT64_REASON),
    # test_cast_FLOAT_to_FLOAT8E4M3FN, test_cast_FLOAT16_to_FLOAT8E4M3FN (E5M2: onnx's reference evaluator)
    Rule("Cast", _cast_float8_saturating,
         "OpenVINO ignores saturate: values beyond the format's range become NaN or inf, not its largest value"),
    Rule("CastLike", _cast_float8_saturating,
         "OpenVINO ignores saturate: values beyond the format's range become NaN or inf, not its largest value"),
    # test_bitshift_{left,right}_int{8,32}_* (9 cases); uint8, uint32, uint64, int64 and int16
    # right shifts by variants (overflow, shifts of the width or more, negative values)
    Rule("BitShift", _bitshift,
         "OpenVINO saturates or keeps bits where ONNX wraps, and shifts negative values unlike ONNX"),
    # test_dft_axis, test_dft_rfft, test_dft_rfft_opset19, test_dft_irfft, test_dft_irfft_opset19
    Rule("DFT", _dft,
         "OpenVINO transforms axis 1 whatever the axis input says (opset 20), reads a negative axis "
         "attribute wrongly (opset 17 and 19) and gives one-sided transforms another shape"),
    # test_dynamicquantizelinear, test_dynamicquantizelinear_expanded. A constant scale rounds
    # the same way, for about 1 value in 100,000 of random data: not refused, as OpenVINO's
    # whole int8 path (and every --precision int8 model) rests on it, within the int8 tolerance.
    Rule("DynamicQuantizeLinear", _dynamic_quantize, _QUANTIZE_REASON),
    Rule("QuantizeLinear", _quantize_runtime_scale, _QUANTIZE_REASON),
    # com.microsoft's DynamicQuantizeLSTM (onnxruntime's int8 LSTM; no node-test case): a
    # bidirectional one of hidden size 6 came out up to 3% of its largest value apart.
    Rule("DynamicQuantizeLSTM", _int8_weights,
         "OpenVINO runs it as a float LSTM on the dequantised weights, leaving out the quantisation of X and H "
         "to uint8 at every product that onnxruntime's definition makes", "com.microsoft"),
    # com.microsoft's DynamicQuantizeMatMul: a [2, 8, 16] x [16, 6] int8 product came out 5e-3
    # of the largest value apart (its other transformer operators, Attention, FastGelu,
    # SkipLayerNormalization and the like, agreed within 3e-7).
    Rule("DynamicQuantizeMatMul", _int8_weights,
         "OpenVINO multiplies by the dequantised weights, leaving out the quantisation of the float input to "
         "uint8 that onnxruntime's definition makes", "com.microsoft"),
    # com.microsoft's QOperator int8 operators (onnxruntime's quantize_static writes them; no
    # node-test case): alone, on uint8 data with scales that saturate nothing, QLinearLeakyRelu
    # and QLinearAveragePool came out up to 180 steps from onnxruntime's, QLinearAdd and
    # QLinearMul wrap a result past 255 around to 0 instead of saturating, and QLinearAdd,
    # QLinearSigmoid and QLinearConcat put about half their values one step off.
    *(Rule(op, _qoperator, "OpenVINO's conversion of onnxruntime's int8 operator answers unlike onnxruntime: "
                           "values up to the whole 8-bit range apart", "com.microsoft")
      for op in ("QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearAveragePool")),
    *(Rule(op, _qoperator, "OpenVINO rounds about half of the values to the neighbouring step", "com.microsoft")
      for op in ("QLinearSigmoid", "QLinearConcat")),
    # test_lstm_with_peepholes
    Rule("LSTM", _lstm_peepholes, "OpenVINO's LSTM with peepholes answers unlike ONNX's equations"),
    # test_maxpool_2d_ceil_output_size_reduce_by_one
    Rule("MaxPool", _maxpool_ceil,
         "OpenVINO keeps an output for a window that starts in the end padding, which ONNX drops"),
    # test_resize_downsample_{scales,sizes}_{linear,cubic}_antialias
    Rule("Resize", _resize_antialias, "OpenVINO's antialiasing filter differs from ONNX's"),
    # test_resize_{up,down}sample_scales_cubic_A_n0p5_exclude_outside
    Rule("Resize", _resize_cubic_exclude_outside,
         "OpenVINO still weighs the taps outside the input, which ONNX leaves out"),
    # test_resize_{up,down}sample_sizes_nearest_not_{larger,smaller}
    Rule("Resize", _resize_aspect_policy,
         "OpenVINO ignores the policy and stretches to the sizes given"),
    # test_spacetodepth_crd_mode_example
    Rule("SpaceToDepth", _space_to_depth_crd, "OpenVINO orders the output channels as in DCR mode"),
    # test_tile (repeats 7, 6, 4, 2: uninitialised values); three or more repeated axes of
    # a 4-d or larger input by variants
    Rule("Tile", _tile_runtime_repeats,
         "OpenVINO fills the output with stray values when three or more axes repeat"),
)

_RULES_BY_OP: dict[tuple[str, str], tuple[Rule, ...]] = {
    key: tuple(rule for rule in RULES if (rule.domain, rule.op) == key) for key in {(rule.domain, rule.op) for rule in RULES}
}


# --------------------------------------------------------------------------- entry points


def refuse_unfaithful_nodes(model: ModelArtifact) -> None:
    """A ModelError for the first node of ``model`` in a configuration OpenVINO answers
    wrongly (:data:`RULES`); the message counts the others."""
    found = _unfaithful_nodes(str(model.path), model.sha256)
    if not found:
        return
    more = len(found) - 1
    others = f"; and {more} more node{'s' if more > 1 else ''} OpenVINO would answer wrongly" if more else ""
    raise ModelError(f"{model.path.name}: {found[0]}{others}", HINT)


def unfaithful_nodes(onnx_model: Any) -> list[str]:
    """One sentence per node of ``onnx_model`` (an ``onnx.ModelProto``) that a rule refuses."""
    facts = Facts(onnx_model)
    found = []
    for where, index, node in _nodes(onnx_model):
        domain = "" if node.domain == "ai.onnx" else node.domain
        for rule in _RULES_BY_OP.get((domain, node.op_type), ()):
            detail = rule.wrong_when(node, facts)
            if detail:
                name = f"'{node.name}'" if node.name else f"#{index}"
                found.append(f"{node.op_type} node {name}{where} with {detail}: {rule.reason} ({CHECKED_ON})")
                break
    return found


def repair_unfaithful_ops(ov_model: Any) -> None:
    """Make OpenVINO's graph (``openvino.Model``, subgraphs too) answer as ONNX does where an
    exact change exists: every TopK sorts stably (ties keep the lower index first; an unsorted
    TopK is sorted, an order ONNX allows), float ReduceMax and ReduceMin answer the infinity
    for values all infinite or none, and each NonMaxSuppression compares IoUs with the next
    float32 above its threshold."""
    for model in list(_ov_models(ov_model)):
        for op in list(model.get_ordered_ops()):
            kind = op.get_type_name()
            if kind == "TopK" and "stable" in op.get_attributes():
                if op.get_attributes()["sort"] == "none":
                    op.set_attribute("sort", "value")
                op.set_attribute("stable", True)
            elif kind in ("ReduceMax", "ReduceMin") and op.get_output_element_type(0).is_real():
                _answer_infinity_for_empty_or_infinite_sets(op)
            elif kind == "NonMaxSuppression" and op.get_input_size() > 3:
                _raise_iou_threshold(op)


# --------------------------------------------------------------------------- reading the graph


@functools.lru_cache(maxsize=16)
def _unfaithful_nodes(path: str, sha256: str) -> tuple[str, ...]:
    """:func:`unfaithful_nodes` of the file (read once per file and content: ``check()``
    runs at planning and again in each ``load()``)."""
    import onnx

    try:
        onnx_model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is OpenVINO's to report, with its own words
        return ()
    return tuple(unfaithful_nodes(onnx_model))


def _nodes(model: Any) -> Iterator[tuple[str, int, Any]]:
    """(where, index in its graph, node) for every node: the main graph's, its subgraphs', and
    those of the model's local functions (which OpenVINO inlines)."""
    for depth, graph in enumerate(graphs_within(model.graph)):
        where = f" in subgraph '{graph.name}'" if depth else ""
        for index, node in enumerate(graph.node):
            yield where, index, node
    for function in model.functions:
        bodies = [function, *(graph for node in function.node for sub in node_subgraphs(node) for graph in graphs_within(sub))]
        for body in bodies:
            for index, node in enumerate(body.node):
                yield f" in function '{function.name}'", index, node


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: Any, index: int) -> str | None:
    """The name of optional input ``index``, or None where it is left out."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _type_and_shape(value: Any) -> tuple[int | None, Shape | None]:
    tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor is None:
        return None, None
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
    return tensor.elem_type or None, shape


def _inferred_values(model: Any) -> dict[str, tuple[int | None, Shape | None]]:
    """Types and shapes by tensor name from ONNX's shape inference, run on a copy of the graph
    without its large initializers' data (a 1 GB model infers in a second, and under
    protobuf's 2 GB limit); {} where inference fails."""
    import onnx
    from onnx import helper

    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) <= _SMALL_INITIALIZER and tensor.data_location != 1:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    inferred = None
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001, S112 - data propagation fails on some graphs; plain inference may not
            continue
    if inferred is None:
        return {}
    values: dict[str, tuple[int | None, Shape | None]] = {}
    for sub in graphs_within(inferred.graph):
        for value in [*sub.input, *sub.output, *sub.value_info]:
            values.setdefault(value.name, _type_and_shape(value))
    return values


def _constant_node_value(node: Any) -> np.ndarray | None:
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name in ("value", "sparse_value") and hasattr(value, "data_type"):
            return np.asarray(numpy_helper.to_array(value))
        if attribute.name in ("value_float", "value_floats"):
            return np.asarray(value, np.float32)
        if attribute.name in ("value_int", "value_ints"):
            return np.asarray(value, np.int64)
    return None


def _reduces_an_empty_set(node: Any, facts: Facts) -> bool:
    shape = facts.shape(node.input[0])
    if shape is None or 0 not in shape:
        return False
    if facts.opset < 18:
        axes = _attr(node, "axes", None)
    else:
        name = _input(node, 1)
        value = None if name is None else facts.constant(name)
        if name is not None and value is None:
            return True  # axes chosen at run time: any of them may be the empty one
        axes = [] if value is None else [int(a) for a in value.reshape(-1)]
        if not axes and _attr(node, "noop_with_empty_axes", 0):
            return False  # no axes and noop: the input comes back as it is
    if not axes:
        axes = list(range(len(shape)))
    return any(shape[a % len(shape)] == 0 for a in axes)


def _cast_target(node: Any, facts: Facts) -> int | None:
    if node.op_type == "CastLike":
        return facts.elem_type(node.input[1])
    return _attr(node, "to", None)


def _sequence_length(shape: Shape | None) -> int | str | None:
    """An Attention input's sequence length: [batch, heads, seq, size] or [batch, seq, hidden]."""
    if shape is None or len(shape) not in (3, 4):
        return None
    return shape[2] if len(shape) == 4 else shape[1]


def _resize_scales(node: Any, facts: Facts) -> list[float] | None:
    """The scale of each resized axis where the graph fixes it (constant scales, or constant
    sizes over known dimensions); None otherwise."""
    if facts.opset < 11:
        value = facts.constant(node.input[1]) if len(node.input) > 1 else None
        return None if value is None else [float(s) for s in value.reshape(-1)]
    scales_name, sizes_name = _input(node, 2), _input(node, 3)
    if scales_name is not None:
        value = facts.constant(scales_name)
        if value is not None and value.size:
            return [float(s) for s in value.reshape(-1)]
    if sizes_name is None:
        return None
    sizes, shape = facts.constant(sizes_name), facts.shape(node.input[0])
    if sizes is None or shape is None:
        return None
    axes = list(_attr(node, "axes", None) or range(len(shape)))
    dims = [shape[a % len(shape)] for a in axes]
    if len(dims) != sizes.size or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return [int(size) / int(dim) for size, dim in zip(sizes.reshape(-1), dims)]


# --------------------------------------------------------------------------- OpenVINO's graph


def _ov_models(ov_model: Any) -> Iterator[Any]:
    """``ov_model`` and the bodies of its If, Loop and TensorIterator operations, depth first."""
    yield ov_model
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "If":
            yield from _ov_models(op.get_then_body())
            yield from _ov_models(op.get_else_body())
        elif kind in ("Loop", "TensorIterator"):
            yield from _ov_models(op.get_function())


def _answer_infinity_for_empty_or_infinite_sets(op: Any) -> None:
    """After ReduceMax (ReduceMin) ``op``: -inf (+inf) where no value along the reduced axes
    differs from it, which is also the answer over none, else OpenVINO's own answer. OpenVINO
    starts from float32's lowest (largest) finite value and answers that there, which is the
    right answer only when it is one of the values: the select keeps those. (float64 stays
    wrong: OpenVINO's CPU plugin runs it as float32 and clamps infinities where it converts.)"""
    from openvino import opset13 as ops

    data, axes = op.input_value(0), op.input_value(1)
    infinity = -np.inf if op.get_type_name() == "ReduceMax" else np.inf
    extreme = ops.convert(ops.constant(np.float32(infinity)), data.get_element_type())
    differs = ops.convert(ops.not_equal(data, extreme), np.float32)
    # a ReduceMax of 0/1 flags, not ReduceLogicalOr: the CPU plugin runs that one only with constant axes
    any_differs = ops.greater(
        ops.reduce_max(differs, axes, op.get_attributes()["keep_dims"]), ops.constant(np.float32(0.5))
    )
    answer = op.output(0)
    fixed = ops.select(any_differs, extreme, extreme)  # its second input becomes ``answer`` below
    answer.replace(fixed.output(0))  # every consumer, and the tensor names, move to the select
    fixed.input(1).replace_source_output(answer)


#: Multiplying by this and adding gives a positive float32 t its successor exactly (t >= 2**-102,
#: so that the product is a normal number; rounding to nearest, with or without a fused
#: multiply-add): t * 2**-24 * (1 + 2**-23) lies strictly between half and one and a half of t's
#: unit in the last place.
_NEXT_UP = np.float32(2.0**-24 * (1 + 2.0**-23))


def _raise_iou_threshold(op: Any) -> None:
    """NonMaxSuppression ``op`` compares IoUs with t' instead of its threshold t: the next
    float32 above t (float32's smallest normal number for 0, as the CPU flushes subnormal ones
    to 0; a negative t keeps only each class's best box either way). For the float32 IoU that
    OpenVINO computes (the same as onnxruntime's), IoU >= t' exactly when IoU > t, ONNX's
    condition for suppressing a box. A constant threshold is folded when the model compiles."""
    from openvino import opset13 as ops

    threshold = op.input_value(3)
    kind = threshold.get_element_type()
    up = ops.add(threshold, ops.multiply(threshold, ops.convert(ops.constant(_NEXT_UP), kind)))
    zero = ops.convert(ops.constant(np.float32(0)), kind)
    smallest = ops.convert(ops.constant(np.finfo(np.float32).tiny), kind)
    op.input(3).replace_source_output(ops.select(ops.equal(threshold, zero), smallest, up).output(0))
