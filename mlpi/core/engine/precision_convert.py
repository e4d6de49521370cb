"""The three precision conversions of an fp32 ONNX file: fp16, bf16 and int8 (Q/DQ).

Each reads the source file and writes the derived one; none touches a runtime's own
precision flags, so the file they write runs the same on every backend that reads ONNX.
The converters are maintained tools, chosen because they install with what mlpi already
needs (the ``onnxruntime`` wheel):

- fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` (the maintained
  descendant of onnxconverter-common's converter). ``keep_io_types``: the model's inputs and
  outputs keep their fp32 types, so the dataset's preprocessing and the response bytes the
  accuracy scripts read are the fp32 model's; Casts at the edges convert. Operators in its
  default block list (TopK, NonMaxSuppression, Range, CumSum, Min, Max, Resize's Upsample...)
  and the user's stay fp32. NVIDIA ModelOpt's AutoCast, which TensorRT 11's migration guide
  points to, was the other candidate: ``pip install "nvidia-modelopt[onnx]"`` pulls torch with
  CUDA, cupy and onnxruntime-gpu, which cannot share an environment with the CPU onnxruntime.
- bf16: the fp16 conversion above decides which tensors go low precision; each of them is then
  retyped bfloat16 with its values rounded (to nearest even) from the fp32 original, never
  through fp16, whose range is smaller and whose mantissa is different.
- int8: ``onnxruntime.quantization.quantize_static`` in Q/DQ format: signed int8 activations and
  weights, both symmetric (zero points 0, as TensorRT's explicit quantization requires),
  weights per channel unless told otherwise, activation ranges from the calibration samples
  by min/max, entropy or percentile. The graph is first prepared with ONNX Runtime's
  ``quant_pre_process`` (shape inference and the basic fusions), as its documentation advises.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.engine.onnx_file import graphs_within, node_subgraphs, nodes_within

#: Calibration methods by the name users give them.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def to_float16(source: Path, target: Path, block_ops: Sequence[str]) -> None:
    import onnx

    onnx.save(_float16_model(source, block_ops), str(target))


def to_bfloat16(source: Path, target: Path, block_ops: Sequence[str]) -> None:
    """The fp16 conversion's choice of tensors, in bfloat16 rounded from the fp32 values.
    Operators whose ONNX definition at the model's opset takes no bfloat16 (Conv before opset
    22, say) stay fp32, or the file would not be valid ONNX."""
    import onnx

    original = onnx.load(str(source))
    converted = _float16_model(source, [*block_ops, *_without_bfloat16(original)])
    values = {name: array for name, array in _float_tensors(original)}
    _retype_bfloat16(converted.graph, values)
    onnx.save(converted, str(target))


def _without_bfloat16(model: Any) -> list[str]:
    """The model's standard operators whose first input cannot be bfloat16 at its opset."""
    from onnx import defs

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), defs.onnx_opset_version())
    refused = []
    for op in sorted({node.op_type for node in nodes_within(model.graph) if node.domain in ("", "ai.onnx")}):
        if not defs.has(op):  # an operator onnx does not know: the converter decides
            continue
        schema = defs.get_schema(op, opset)
        if not schema.inputs:
            continue
        first = schema.inputs[0].type_str
        allowed = next((set(c.allowed_type_strs) for c in schema.type_constraints if c.type_param_str == first),
                       {first})
        if "tensor(float)" in allowed and "tensor(bfloat16)" not in allowed:
            refused.append(op)
    return refused


#: The first default-domain opset whose DequantizeLinear takes a per-channel ``axis``.
PER_CHANNEL_OPSET = 13


def to_int8(source: Path, target: Path, feeds: Iterator[Mapping[str, np.ndarray]], method: str, per_channel: bool,
            block_ops: Sequence[str]) -> str:
    """Quantize ``source`` to a Q/DQ int8 graph calibrated on ``feeds``; returns how the graph
    was prepared first (``quant_pre_process``, or why it was skipped)."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return dict(next(feeds, None) or {}) or None

    with tempfile.TemporaryDirectory(prefix="mlpi-quantize-") as work, _quiet():
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared))
            how = "onnxruntime quant_pre_process"
        except Exception as exc:  # noqa: BLE001 - its passes raise what they raise; quantizing still works without
            prepared = source
            how = f"quant_pre_process skipped ({_first_line(exc)})"
        model = onnx.load(str(prepared), load_external_data=False)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if per_channel and opset < PER_CHANNEL_OPSET:
            # DequantizeLinear takes a per-channel axis from opset 13: onnxruntime's quantizer
            # writes one into an older graph anyway, which no runtime then loads
            upgraded = Path(work) / "upgraded.onnx"
            onnx.save(onnx.version_converter.convert_version(onnx.load(str(prepared)), PER_CHANNEL_OPSET), str(upgraded))
            prepared = upgraded
            how += f"; opset {opset} converted to {PER_CHANNEL_OPSET} (per-channel Q/DQ needs DequantizeLinear's axis)"
            model = onnx.load(str(prepared), load_external_data=False)
        excluded = [node.name for node in model.graph.node if node.op_type in set(block_ops) and node.name]
        import inspect

        cpu_only = ({"calibration_providers": ["CPUExecutionProvider"]}  # onnxruntime 1.21 and later
                    if "calibration_providers" in inspect.signature(quantize_static).parameters else {})
        quantize_static(
            str(prepared), str(target), Reader(),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded or None,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            **cpu_only,
        )
    return how


def graph_precision(path: Path) -> str:
    """The precision a file's graph itself carries: int8 where it quantizes activations (Q/DQ
    pairs or integer operators), fp16/bf16 where its floating tensors are of that type, else fp32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in nodes_within(model.graph)}
    if ops & _INT8_OPS:
        return "int8"
    types = {tensor.data_type for tensor in _all_initializers(model.graph)}
    types |= {value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


#: Operators that quantize activations. DequantizeLinear alone (int8-stored weights dequantized
#: before an fp32 MatMul) and MatMulNBits are weight compression: the model computes in float.
_INT8_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QGemm",
             "QAttention", "QLinearAdd", "QLinearMul"}


def _float16_model(source: Path, block_ops: Sequence[str]) -> Any:
    import onnx
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    with _quiet():
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True,
                                             op_block_list=[*DEFAULT_OP_BLOCK_LIST, *block_ops])
    _sort_nodes(converted.graph)
    return converted


def _sort_nodes(graph: Any) -> None:
    """Put ``graph``'s nodes in an order where each comes after what it reads: the converter
    appends the Casts it adds at the inputs after the nodes that read them, which ONNX
    forbids (onnx.checker and some parsers refuse the file). Stable: nodes already in order
    keep it. A name a node's subgraphs read from the outer graph counts as its input."""
    nodes = list(graph.node)
    produced = {out: index for index, node in enumerate(nodes) for out in node.output if out}
    needs = [{produced[name] for name in _reads(node) if name in produced and produced[name] != index}
             for index, node in enumerate(nodes)]
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(nodes):
        ready = next((i for i in range(len(nodes)) if i not in placed and needs[i] <= placed), None)
        if ready is None:  # a cycle: leave the graph as the converter wrote it
            return
        order.append(ready)
        placed.add(ready)
    if order != list(range(len(nodes))):
        graph.ClearField("node")
        graph.node.extend(nodes[i] for i in order)


def _reads(node: Any) -> set[str]:
    names = {name for name in node.input if name}
    for sub in node_subgraphs(node):
        for inner in nodes_within(sub):
            names.update(name for name in inner.input if name)
    return names


def _float_tensors(graph_owner: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Every float32 constant of a model by the name the fp16 converter keeps: initializers by
    their name, Constant nodes by their output."""
    from onnx import TensorProto, numpy_helper

    graph = graph_owner.graph if hasattr(graph_owner, "graph") else graph_owner
    for tensor in _all_initializers(graph):
        if tensor.data_type == TensorProto.FLOAT:
            yield tensor.name, numpy_helper.to_array(tensor)
    for node in nodes_within(graph):
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    yield node.output[0], numpy_helper.to_array(attribute.t)


def _retype_bfloat16(graph: Any, originals: Mapping[str, np.ndarray]) -> None:
    from onnx import TensorProto

    def retype(tensor: Any, name: str) -> None:
        if tensor.data_type != TensorProto.FLOAT16:
            return
        if name in originals:
            values = originals[name]
        else:  # a constant the converter made itself (a clamp bound): exact in fp16 already
            from onnx import numpy_helper

            values = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.ClearField("int32_data")
        tensor.ClearField("raw_data")
        tensor.data_type = TensorProto.BFLOAT16
        tensor.raw_data = bfloat16_bits(values).tobytes()

    for tensor in _all_initializers(graph):
        retype(tensor, tensor.name)
    for node in nodes_within(graph):
        for attribute in node.attribute:
            if attribute.name == "to" and node.op_type == "Cast" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.BFLOAT16
            if attribute.type == attribute.TENSOR:
                retype(attribute.t, node.output[0] if node.output else "")
    for value in _all_values(graph):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values.astype(np.float32))
    rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def _all_initializers(graph: Any) -> Iterator[Any]:
    for sub in graphs_within(graph):
        yield from sub.initializer


def _all_values(graph: Any) -> Iterator[Any]:
    for sub in graphs_within(graph):
        yield from (*sub.input, *sub.output, *sub.value_info)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


@contextmanager
def _quiet() -> Iterator[None]:
    """The converters log advice and progress to the root logger; the run's output is mlpi's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
