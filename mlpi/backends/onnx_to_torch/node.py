"""What an operator builder sees of one ONNX node, and the types every builder shares.

A builder (``Node -> Step``) reads the node's attributes and constant inputs once, at
conversion, and returns the step that runs it: a function of the node's input tensors (None
for an absent optional input) returning one tensor or a tuple, one per output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from mlpi.core.contract.errors import ModelError

Args = Sequence[Any]
Step = Callable[[Args], Any]

TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.UINT16: torch.uint16,
    TensorProto.INT32: torch.int32,
    TensorProto.UINT32: torch.uint32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
}

#: numpy dtype name (as TensorSpec spells it) -> torch dtype.
NUMPY_TO_TORCH: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "uint16": torch.uint16,
    "int32": torch.int32,
    "uint32": torch.uint32,
    "int64": torch.int64,
    "uint64": torch.uint64,
    "bool": torch.bool,
}


class Node:
    """One node as a builder sees it: attributes, constant inputs, the model's opset."""

    def __init__(self, node: onnx.NodeProto, consts: dict[str, torch.Tensor], opset: int, float_dtype: torch.dtype,
                 subgraph: Callable[[onnx.GraphProto], Any] | None = None) -> None:
        self.proto = node
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._consts = consts
        self.opset = opset
        self.float_dtype = float_dtype
        #: Converts a subgraph attribute (If, Loop, Scan) with this graph's scope around it.
        self.subgraph = subgraph
        #: The names the step reads, in input order: the node's own unless a builder swapped
        #: a constant input for one it derived (:meth:`derive_input`), dropped one, or added
        #: the outer values its subgraphs read (:meth:`add_input`).
        self.inputs = list(node.input)

    @property
    def name(self) -> str:
        return self.proto.name

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def const_ints(self, i: int) -> list[int] | None:
        """Input ``i`` as a list of ints when it is a constant (None when absent or computed)."""
        names = self.proto.input
        if i >= len(names) or not names[i] or names[i] not in self._consts:
            return None
        return [int(v) for v in self._consts[names[i]].reshape(-1).tolist()]

    def has_input(self, i: int) -> bool:
        return i < len(self.proto.input) and bool(self.proto.input[i])

    def wants_output(self, i: int) -> bool:
        return i < len(self.proto.output) and bool(self.proto.output[i])

    def ints_input(self, i: int) -> Callable[[Args], list[int] | None]:
        """A reader for integer input ``i``: baked in when constant, read from the tensor otherwise."""
        static = self.const_ints(i)
        if static is not None or not self.has_input(i):
            return lambda args: static
        return lambda args: [int(v) for v in args[i].reshape(-1).tolist()]

    def floats_input(self, i: int) -> Callable[[Args], list[float] | None]:
        """As :meth:`ints_input`, for a float input (thresholds, scales): None when absent."""
        if not self.has_input(i):
            return lambda args: None
        const = self._consts.get(self.proto.input[i])
        if const is not None:
            static = [float(v) for v in const.reshape(-1).tolist()]
            return lambda args: static
        return lambda args: [float(v) for v in args[i].reshape(-1).tolist()]

    def const(self, i: int) -> torch.Tensor | None:
        """Input ``i`` when it is a constant (None when absent or computed)."""
        return self._consts.get(self.proto.input[i]) if self.has_input(i) else None

    def derive_input(self, i: int, value: torch.Tensor) -> None:
        """Have the step read ``value`` as input ``i``: a constant computed once, here, from
        constant inputs (weights in the layout torch wants). It becomes a buffer as any constant
        does, and the original stops being one unless another step reads it."""
        name = f"\0derived{len(self._consts)}"  # no ONNX name has a NUL; consts only grows
        self._consts[name] = value
        self.inputs[i] = name

    def drop_input(self, i: int) -> None:
        """The step no longer reads input ``i`` (it gets None): folded into a derived input."""
        if i < len(self.inputs):
            self.inputs[i] = ""

    def add_input(self, name: str) -> int:
        """Have the step also read ``name`` (an outer value a subgraph uses); its position in the args."""
        self.inputs.append(name)
        return len(self.inputs) - 1

    def unsupported(self, what: str) -> ModelError:
        """The error for an attribute value or input this converter does not implement."""
        return ModelError(f"{self.proto.op_type} node '{self.proto.name}' {what}, which is not supported",
                          "use the onnxruntime backend for this model")

    def error(self, what: str) -> ModelError:
        """The error for a node or input that ONNX itself does not allow."""
        return ModelError(f"{self.proto.op_type} node '{self.proto.name}' {what}",
                          "check the model with onnx.checker.check_model, or export it again")


def axis_of(axis: int, rank: int) -> int:
    """A possibly negative ONNX axis as an index in [0, rank)."""
    return axis + rank if axis < 0 else axis


def float_type(n: Node, onnx_type: int) -> torch.dtype:
    """The torch dtype for ONNX type ``onnx_type`` in this module: float32 is the precision it runs."""
    if onnx_type not in TORCH_DTYPES:
        raise n.unsupported(f"uses ONNX type {TensorProto.DataType.Name(onnx_type) if onnx_type in TensorProto.DataType.values() else onnx_type}")
    if onnx_type == TensorProto.FLOAT:
        return n.float_dtype
    return TORCH_DTYPES[onnx_type]
