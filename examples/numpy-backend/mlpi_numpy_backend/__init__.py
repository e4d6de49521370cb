"""``numpy-ref``: a pure-numpy reference backend for mlpi, written as a third party would.

It reads the ONNX file with the ``onnx`` package and interprets the graph node by node
with numpy, on the CPU, in fp32. It is slow and supports a small set of operators (see
:data:`OPERATORS`), which is enough for mlpi's conformance models; a model with any other
operator is rejected at load time with a :class:`~mlpi.api.ModelError` naming it.

It uses only mlpi's public plugin contract, :mod:`mlpi.api`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpi.api import (
    Backend,
    Capabilities,
    Device,
    DeviceError,
    LoadContext,
    ModelArtifact,
    ModelError,
    Session,
    TensorSpec,
    UsageError,
    fixed_batch_size,
)

__version__ = "0.1.0"

#: The oldest default-domain opset whose operator semantics this interpreter implements.
MIN_OPSET = 13

_HINT = "run this model with a full runtime (e.g. --backend onnxruntime)"


@dataclass
class NumpyOptions:
    conv_algorithm: Literal["im2col", "direct"] = field(
        default="im2col",
        metadata={"help": "Conv as one matrix product over unfolded patches (im2col) or one product per kernel tap (direct, less memory)"},
    )


@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]


# --------------------------------------------------------------------------- operators

Kernel = Callable[[_Node, list[Any], NumpyOptions], list[np.ndarray]]


def _conv(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"Conv '{node.name}': only 2-D convolutions (4-D tensors) are supported")
    group = int(node.attrs.get("group", 1))
    sh, sw = node.attrs.get("strides", (1, 1))
    dh, dw = node.attrs.get("dilations", (1, 1))
    top, left, bottom, right = node.attrs.get("pads", (0, 0, 0, 0))
    if node.attrs.get("auto_pad", "NOTSET") == "VALID":
        top = left = bottom = right = 0
    kh, kw = w.shape[2:]
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    n, c, height, width = x.shape
    ho, wo = (height - eh) // sh + 1, (width - ew) // sw + 1
    m = w.shape[0]
    cg, mg = c // group, m // group
    out = np.empty((n, m, ho, wo), dtype=np.result_type(x, w))
    for g in range(group):
        xg, wg = x[:, g * cg : (g + 1) * cg], w[g * mg : (g + 1) * mg]
        if options.conv_algorithm == "im2col":
            windows = np.lib.stride_tricks.sliding_window_view(xg, (eh, ew), axis=(2, 3))
            windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, cg, ho, wo, kh, kw]
            cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
            result = cols @ wg.reshape(mg, -1).T
            out[:, g * mg : (g + 1) * mg] = result.reshape(n, ho, wo, mg).transpose(0, 3, 1, 2)
        else:
            acc = np.zeros((n, ho, wo, mg), dtype=out.dtype)
            for i in range(kh):
                for j in range(kw):
                    patch = xg[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
                    acc += np.tensordot(patch, wg[:, :, i, j], axes=([1], [1]))
            out[:, g * mg : (g + 1) * mg] = acc.transpose(0, 3, 1, 2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return [out]


def _gemm(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = (a @ b) * a.dtype.type(node.attrs.get("alpha", 1.0))
    if c is not None:
        y = y + c * a.dtype.type(node.attrs.get("beta", 1.0))
    return [y]


def _argmax(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    x = args[0]
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    if node.attrs.get("select_last_index", 0):
        index = x.shape[axis] - 1 - np.argmax(np.flip(x, axis=axis), axis=axis)
    else:
        index = np.argmax(x, axis=axis)
    index = index.astype(np.int64)
    return [np.expand_dims(index, axis) if node.attrs.get("keepdims", 1) else index]


def _softmax(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    x = args[0]
    axis = int(node.attrs.get("axis", -1))
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return [shifted / np.sum(shifted, axis=axis, keepdims=True)]


def _flatten(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    x = args[0]
    axis = int(node.attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))]


def _reshape(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    x, shape = args[0], [int(d) for d in args[1]]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _slice(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    data, starts, ends = args[0], args[1], args[2]
    axes = args[3] if len(args) > 3 and args[3] is not None else range(len(starts))
    steps = args[4] if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis) % data.ndim] = slice(int(start), int(end), int(step))
    return [data[tuple(index)]]


def _divide(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    a, b = args
    if np.result_type(a, b).kind in "iu":  # ONNX integer division truncates toward zero
        return [np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))]
    return [np.divide(a, b)]


def _cast(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    return [args[0].astype(node.attrs["to"])]


def _constant(node: _Node, args: list[Any], options: NumpyOptions) -> list[np.ndarray]:
    return [node.attrs["value"]]


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    return lambda node, args, options: [fn(args[0])]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    return lambda node, args, options: [fn(args[0], args[1])]


#: Every ONNX operator (default domain) this backend runs.
OPERATORS: dict[str, Kernel] = {
    "Add": _binary(np.add),
    "ArgMax": _argmax,
    "Cast": _cast,
    "Constant": _constant,
    "Conv": _conv,
    "Div": _divide,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "GlobalAveragePool": _unary(lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)),
    "Identity": _unary(lambda x: x),
    "MatMul": _binary(np.matmul),
    "Mul": _binary(np.multiply),
    "Relu": _unary(lambda x: np.maximum(x, x.dtype.type(0))),
    "Reshape": _reshape,
    "Slice": _slice,
    "Softmax": _softmax,
    "Sub": _binary(np.subtract),
}


# --------------------------------------------------------------------------- session


class NumpyReferenceSession(Session):
    """A parsed graph; ``run`` walks it with numpy. Stateless between calls, so thread-safe."""

    def __init__(self, graph: _Graph, options: NumpyOptions) -> None:
        self._graph = graph
        self._options = options
        self.inputs = list(graph.inputs)
        self.outputs = list(graph.outputs)
        size = fixed_batch_size(self.inputs)
        fixed = size is not None
        self.capabilities = Capabilities(
            max_batch_size=size, fixed_batch=fixed, concurrent=True, preferred_batch_size=size or 8
        )
        self.precision = "fp32"

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        graph = self._graph
        if graph is None:
            raise RuntimeError("numpy-ref session is closed")
        values: dict[str, Any] = dict(graph.constants)
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"numpy-ref: no feed for input '{spec.name}'")
            values[spec.name] = np.asarray(feeds[spec.name], dtype=spec.dtype)
        for node in graph.nodes:
            args = [values[name] if name else None for name in node.inputs]
            while args and args[-1] is None:
                args.pop()
            results = OPERATORS[node.op](node, args, self._options)
            for name, value in zip(node.outputs, results):
                if name:
                    values[name] = value
        # fresh arrays of the declared types: never a view of a feed, a constant or a buffer
        return {spec.name: np.array(values[spec.name], dtype=spec.dtype, order="C", copy=True) for spec in self.outputs}

    def close(self) -> None:
        self._graph = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- loading


@dataclass
class _Graph:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    constants: dict[str, np.ndarray]
    nodes: list[_Node]


def _parse(path: Path) -> _Graph:
    import onnx
    from onnx import helper, numpy_helper

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise many types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"numpy-ref cannot read {path}: {type(exc).__name__}: {first[:200]}", _HINT) from None
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if opsets.get("ai.onnx", MIN_OPSET) < MIN_OPSET:
        raise ModelError(f"{path} uses ONNX opset {opsets['ai.onnx']}; numpy-ref needs {MIN_OPSET} or later", _HINT)
    graph = model.graph
    unknown = sorted({n.op_type for n in graph.node if (n.domain or "ai.onnx") != "ai.onnx" or n.op_type not in OPERATORS})
    if unknown:
        raise ModelError(
            f"numpy-ref cannot run operator{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {path.name} "
            f"(it runs: {', '.join(sorted(OPERATORS))})",
            _HINT,
        )
    constants = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        array.setflags(write=False)
        constants[init.name] = array
    nodes = []
    for node in graph.node:
        attrs: dict[str, Any] = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
            attrs[attr.name] = value
        _check_node(node.op_type, node.name, attrs, constants, node.input, path)
        if node.op_type == "Cast":
            attrs["to"] = helper.tensor_dtype_to_np_dtype(attrs["to"])
        nodes.append(_Node(node.op_type, node.name, tuple(node.input), tuple(node.output), attrs))
    inputs = [_spec(v, path) for v in graph.input if v.name not in constants]
    outputs = [_spec(v, path) for v in graph.output]
    return _Graph(inputs, outputs, constants, nodes)


def _check_node(op: str, name: str, attrs: dict[str, Any], constants: Mapping[str, np.ndarray], inputs: Sequence[str], path: Path) -> None:
    """Reject, at load time, attribute values the interpreter does not implement."""
    where = f"{op} node '{name}' in {path.name}"
    if op == "Conv":
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ModelError(f"{where}: auto_pad={attrs['auto_pad']} is not supported by numpy-ref", _HINT)
        weight = constants.get(inputs[1])
        if weight is not None and weight.ndim != 4:
            raise ModelError(f"{where}: only 2-D convolutions are supported by numpy-ref", _HINT)
    if op == "Constant" and "value" not in attrs:
        raise ModelError(f"{where}: only Constant with a 'value' tensor is supported by numpy-ref", _HINT)


def _spec(value: Any, path: Path) -> TensorSpec:
    from onnx import helper

    tensor = value.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path.name}: '{value.name}' has an element type numpy-ref cannot hold", _HINT) from None
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, dtype, shape)


# --------------------------------------------------------------------------- backend


class NumpyReferenceBackend(Backend):
    name = "numpy-ref"
    device_kinds = ("cpu",)
    precisions = ("fp32",)
    Options = NumpyOptions
    install_hint = "pip install mlpi-numpy-backend"

    def version(self) -> str:
        return __version__

    def runtime_distributions(self) -> tuple[str, ...]:
        return ("mlpi-numpy-backend", "numpy", "onnx")

    def probe(self) -> list[Device]:
        return [Device("cpu")]

    def check(self, model: ModelArtifact, device: Device, options: Any, precision: str | None) -> None:
        if device.kind != "cpu":
            raise DeviceError(f"numpy-ref runs on the CPU only, not on {device}", "pass --device cpu")
        if precision not in (None, "fp32"):
            raise UsageError(f"numpy-ref runs fp32 only, not {precision}", "drop --precision, or pass --precision fp32")

    def load(
        self, model: ModelArtifact, device: Device, options: Any, precision: str | None, context: LoadContext = LoadContext()
    ) -> Session:
        self.check(model, device, options, precision)
        return NumpyReferenceSession(_parse(Path(model.path)), options)


__all__ = ["OPERATORS", "NumpyOptions", "NumpyReferenceBackend", "NumpyReferenceSession"]
