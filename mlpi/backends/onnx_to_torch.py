"""A small ONNX -> PyTorch converter: an ``nn.Module`` that walks the ONNX graph with torch ops.

Why not ``onnx2torch`` (PyPI 1.5.15)? It imports ``torchvision`` when it is imported
(``onnx2torch/node_converters/nms.py``), and torchvision wheels are built against one exact
torch release: PyPI's torchvision does not import beside the torch mlpi is tested with, and
installing a matching one would pull in another torch. A backend that depends on that pin
breaks whenever the two drift. The graphs mlpi runs (image classifiers, the RetinaNet
stand-in's detection post-processing and the conformance kit's tiny models) use a few dozen
standard operators, so this module converts them itself, with torch only. Where a result has
an exact reference (TopK's tie order, NonMaxSuppression's selection and order, Resize's nearest
indices) it follows onnxruntime's CPU kernels bit for bit; attribute values it does not
implement raise ModelError rather than compute something else. LSTM (RNN-T's encoder and
prediction network) runs on torch's fused LSTM kernel, with the weights reordered for it once,
at conversion.

How it works: initializers (and ``Constant`` nodes, and nodes whose inputs are all constant,
folded once at build time) become buffers, so ``module.to(device)`` and
``module.to(memory_format=...)`` move them. Every other node becomes one step: a closure
over the node's attributes (and any constant integer inputs such as a Reshape's shape,
read once here rather than on every call). ``forward`` runs the steps in graph order on a
dictionary local to the call: it keeps no state between calls, so one module may be called
from several threads at once.

An operator it does not know raises :class:`~mlpi.core.contract.errors.ModelError` naming every
unknown operator of the graph at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.errors import ModelError

Args = Sequence[Any]
Step = Callable[[Args], Any]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}

TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
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
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


class UnsupportedOperators(ModelError):
    """The graph uses operators this converter does not implement."""


class _Node:
    """What an op builder sees of one node: attributes and constant inputs."""

    def __init__(self, node: onnx.NodeProto, consts: dict[str, torch.Tensor], opset: int, float_dtype: torch.dtype) -> None:
        self.proto = node
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._consts = consts
        self.opset = opset
        self.float_dtype = float_dtype
        #: The names the step reads, in input order: the node's own unless a builder swapped
        #: a constant input for one it derived (:meth:`derive_input`) or dropped one.
        self.inputs = list(node.input)

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

    def unsupported(self, what: str) -> ModelError:
        """The error for an attribute value or input this converter does not implement."""
        return ModelError(f"{self.proto.op_type} node '{self.proto.name}' {what}, which is not supported",
                          "use the onnxruntime backend for this model")


# --------------------------------------------------------------------------- op builders

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Reciprocal": torch.reciprocal,
    "Not": torch.logical_not,
    "Identity": lambda x: x,
}

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "MatMul": torch.matmul,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
}


def _div(n: _Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x, y = a[0], a[1]
        if x.is_floating_point() or y.is_floating_point():
            return torch.div(x, y)
        return torch.div(x, y, rounding_mode="trunc")

    return run


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[_Node], Step]:
    def build(n: _Node) -> Step:
        def run(a: Args) -> torch.Tensor:
            out = a[0]
            for x in a[1:]:
                out = fn(out, x)
            return out

        return run

    return build


def _spatial_pads(n: _Node, dims: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> Callable[[torch.Tensor], list[int]]:
    """ONNX pads (begin..., end...) for one input, including auto_pad SAME_*."""
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(n.attr("pads", [0] * (2 * dims)))
        return lambda x: pads
    if auto == "VALID":
        return lambda x: [0] * (2 * dims)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ModelError(f"{n.proto.op_type} node '{n.proto.name}' has auto_pad={auto}, which is not supported")

    def same(x: torch.Tensor) -> list[int]:
        begins, ends = [], []
        for d in range(dims):
            size = int(x.shape[2 + d])
            out = -(-size // strides[d])
            total = max((out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins + ends

    return same


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX (b1, b2, ..., e1, e2, ...) over trailing dims -> F.pad's (b_last, e_last, ...)."""
    dims = len(pads) // 2
    out: list[int] = []
    for d in reversed(range(dims)):
        out += [pads[d], pads[d + dims]]
    return out


def _conv(n: _Node) -> Step:
    weight_shape = None
    # The kernel rank comes from kernel_shape or, for the usual constant weight, its shape.
    static_w = n._consts.get(n.proto.input[1])
    if static_w is not None:
        weight_shape = tuple(static_w.shape)
    kernel = n.attr("kernel_shape") or (list(weight_shape[2:]) if weight_shape else None)
    if kernel is None:
        raise ModelError(f"Conv node '{n.proto.name}' has neither kernel_shape nor a constant weight")
    dims = len(kernel)
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    group = int(n.attr("group", 1))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(dims)
    if conv is None:
        raise ModelError(f"Conv node '{n.proto.name}' is {dims}-d; only 1-d to 3-d convolutions are supported")
    pads_of = _spatial_pads(n, dims, kernel, strides, dilations)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        bias = a[2] if len(a) > 2 else None
        pads = pads_of(x)
        if pads[:dims] == pads[dims:]:
            return conv(x, a[1], bias, strides, pads[:dims], dilations, group)
        return conv(F.pad(x, _torch_pad(pads)), a[1], bias, strides, 0, dilations, group)

    return run


def _conv_transpose(n: _Node) -> Step:
    """ConvTranspose with explicit or VALID pads (asymmetric pads: computed unpadded, then cut)."""
    static_w = n._consts.get(n.proto.input[1])
    kernel = n.attr("kernel_shape") or (list(static_w.shape[2:]) if static_w is not None else None)
    if kernel is None:
        raise ModelError(f"ConvTranspose node '{n.proto.name}' has neither kernel_shape nor a constant weight")
    dims = len(kernel)
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(dims)
    if conv is None:
        raise ModelError(f"ConvTranspose node '{n.proto.name}' is {dims}-d; only 1-d to 3-d are supported")
    auto = n.attr("auto_pad", "NOTSET")
    if n.attr("output_shape") is not None or auto not in ("NOTSET", "", "VALID"):
        raise ModelError(f"ConvTranspose node '{n.proto.name}' sets output_shape or auto_pad={auto}, which is not supported")
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    output_padding = list(n.attr("output_padding", [0] * dims))
    group = int(n.attr("group", 1))
    pads = [0] * (2 * dims) if auto == "VALID" else list(n.attr("pads", [0] * (2 * dims)))
    begins, ends = pads[:dims], pads[dims:]

    def run(a: Args) -> torch.Tensor:
        bias = a[2] if len(a) > 2 else None
        if begins == ends:
            return conv(a[0], a[1], bias, strides, begins, output_padding, group, dilations)
        y = conv(a[0], a[1], bias, strides, 0, output_padding, group, dilations)
        return y[(slice(None), slice(None), *(slice(b, y.shape[2 + d] - e) for d, (b, e) in enumerate(zip(begins, ends))))]

    return run


def _instance_norm(n: _Node) -> Step:
    eps = float(n.attr("epsilon", 1e-5))
    return lambda a: F.instance_norm(a[0], weight=a[1], bias=a[2], eps=eps)


def _pool(kind: str) -> Callable[[_Node], Step]:
    def build(n: _Node) -> Step:
        if len(n.proto.output) > 1 and n.proto.output[1]:
            raise ModelError(f"{n.proto.op_type} node '{n.proto.name}' asks for the Indices output, which is not supported")
        kernel = list(n.attr("kernel_shape"))
        dims = len(kernel)
        strides = list(n.attr("strides", [1] * dims))
        dilations = list(n.attr("dilations", [1] * dims))
        ceil_mode = bool(n.attr("ceil_mode", 0))
        pads_of = _spatial_pads(n, dims, kernel, strides, dilations)
        if kind == "max":
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]

            def run(a: Args) -> torch.Tensor:
                x, pads = a[0], pads_of(a[0])
                half = [p for p in pads[:dims]]
                if pads[:dims] == pads[dims:] and all(2 * p <= k for p, k in zip(half, kernel)):
                    return pool(x, kernel, strides, half, dilations, ceil_mode)
                x = F.pad(x, _torch_pad(pads), value=-math.inf)
                return pool(x, kernel, strides, 0, dilations, ceil_mode)

            return run
        if any(d != 1 for d in dilations):
            raise ModelError(f"AveragePool node '{n.proto.name}' has dilations, which are not supported")
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        include = bool(n.attr("count_include_pad", 0))

        def run_avg(a: Args) -> torch.Tensor:
            x, pads = a[0], pads_of(a[0])
            if pads[:dims] != pads[dims:]:
                raise ModelError(f"AveragePool node '{n.proto.name}' has asymmetric pads, which are not supported")
            return pool(x, kernel, strides, pads[:dims], ceil_mode, include)

        return run_avg

    return build


def _global_pool(kind: str) -> Callable[[_Node], Step]:
    def build(n: _Node) -> Step:
        def run(a: Args) -> torch.Tensor:
            x = a[0]
            dims = tuple(range(2, x.dim()))
            return x.mean(dim=dims, keepdim=True) if kind == "avg" else x.amax(dim=dims, keepdim=True)

        return run

    return build


def _gemm(n: _Node) -> Step:
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))

    def run(a: Args) -> torch.Tensor:
        x = a[0].t() if trans_a else a[0]
        w = a[1].t() if trans_b else a[1]
        if len(a) > 2 and a[2] is not None:
            return torch.addmm(a[2], x, w, beta=beta, alpha=alpha)
        out = x @ w
        return out * alpha if alpha != 1.0 else out

    return run


def _flatten(n: _Node) -> Step:
    axis = int(n.attr("axis", 1))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        k = axis if axis >= 0 else axis + x.dim()
        return x.reshape(math.prod(x.shape[:k]), -1) if k > 0 else x.reshape(1, -1)

    return run


def _reshape(n: _Node) -> Step:
    shape_of = n.ints_input(1)
    allowzero = bool(n.attr("allowzero", 0))

    def run(a: Args) -> torch.Tensor:
        x, shape = a[0], shape_of(a)
        assert shape is not None
        target = [int(x.shape[i]) if s == 0 and not allowzero else s for i, s in enumerate(shape)]
        return x.reshape(target)

    return run


def _slice(n: _Node) -> Step:
    if n.opset < 10:
        starts_of = lambda a: list(n.attr("starts"))  # noqa: E731
        ends_of = lambda a: list(n.attr("ends"))  # noqa: E731
        axes_attr = n.attr("axes")
        axes_of = lambda a: list(axes_attr) if axes_attr is not None else None  # noqa: E731
        steps_of = lambda a: None  # noqa: E731
    else:
        starts_of, ends_of, axes_of, steps_of = (n.ints_input(i) for i in (1, 2, 3, 4))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        starts, ends = starts_of(a), ends_of(a)
        axes = axes_of(a) or list(range(len(starts)))
        steps = steps_of(a) or [1] * len(starts)
        index: list[Any] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = axis + x.dim() if axis < 0 else axis
            size = int(x.shape[axis])
            if step < 0:
                # torch has no negative steps: slice forward, then flip.
                lo_excl = max(min(end + size if end < 0 else end, size - 1), -1)
                hi = max(min(start + size if start < 0 else start, size - 1), -1)
                idx = torch.arange(hi, lo_excl, step, device=x.device)
                x = x.index_select(axis, idx)
                continue
            index[axis] = slice(start, end, step)  # Python clamps out-of-range bounds as ONNX does
        return x[tuple(index)]

    return run


def _softmax(kind: str) -> Callable[[_Node], Step]:
    def build(n: _Node) -> Step:
        fn = torch.softmax if kind == "softmax" else torch.log_softmax
        if n.opset >= 13:
            axis = int(n.attr("axis", -1))
            return lambda a: fn(a[0], dim=axis)
        axis = int(n.attr("axis", 1))

        def old(a: Args) -> torch.Tensor:  # before opset 13: over the input coerced to 2-d at axis
            x = a[0]
            k = axis if axis >= 0 else axis + x.dim()
            return fn(x.reshape(math.prod(x.shape[:k]), -1), dim=1).reshape(x.shape)

        return old

    return build


def _arg(kind: str) -> Callable[[_Node], Step]:
    def build(n: _Node) -> Step:
        axis = int(n.attr("axis", 0))
        keep = bool(n.attr("keepdims", 1))
        last = bool(n.attr("select_last_index", 0))
        fn = torch.argmax if kind == "max" else torch.argmin

        def run(a: Args) -> torch.Tensor:
            x = a[0]
            if last:
                k = axis if axis >= 0 else axis + x.dim()
                return x.shape[k] - 1 - fn(x.flip(k), dim=k, keepdim=keep)
            return fn(x, dim=axis, keepdim=keep)

        return run

    return build


def _cast(n: _Node) -> Step:
    to = int(n.attr("to"))
    if to not in TORCH_DTYPES:
        raise ModelError(f"Cast node '{n.proto.name}' casts to ONNX type {to}, which is not supported")
    dtype = TORCH_DTYPES[to]
    if to == TensorProto.FLOAT and n.float_dtype != torch.float32:
        dtype = n.float_dtype  # the graph's float32 is the precision this module runs
    return lambda a: a[0].to(dtype)


def _transpose(n: _Node) -> Step:
    perm = n.attr("perm")
    return lambda a: a[0].permute(*(perm if perm is not None else reversed(range(a[0].dim()))))


def _concat(n: _Node) -> Step:
    axis = int(n.attr("axis"))
    return lambda a: torch.cat(list(a), dim=axis)


def _axes(n: _Node, input_from: int) -> Callable[[Args], list[int] | None]:
    """Axes given as an attribute (older opsets) or as input 1 (newer ones)."""
    if n.opset >= input_from:
        return n.ints_input(1)
    axes = n.attr("axes")
    return lambda a: list(axes) if axes is not None else None


def _squeeze(n: _Node) -> Step:
    axes_of = _axes(n, 13)

    def run(a: Args) -> torch.Tensor:
        axes = axes_of(a)
        if axes is None:
            return a[0].squeeze()
        return a[0].squeeze(tuple(ax + a[0].dim() if ax < 0 else ax for ax in axes))

    return run


def _unsqueeze(n: _Node) -> Step:
    axes_of = _axes(n, 13)

    def run(a: Args) -> torch.Tensor:
        axes = axes_of(a)
        assert axes is not None
        rank = a[0].dim() + len(axes)
        x = a[0]
        for ax in sorted(ax + rank if ax < 0 else ax for ax in axes):
            x = x.unsqueeze(ax)
        return x

    return run


def _reduce(kind: str, axes_input_from: int = 18) -> Callable[[_Node], Step]:
    """A Reduce op; its axes move from an attribute to input 1 at ``axes_input_from``
    (ReduceSum at opset 13, the others at 18)."""

    def build(n: _Node) -> Step:
        axes_of = _axes(n, axes_input_from)
        keep = bool(n.attr("keepdims", 1))
        noop = bool(n.attr("noop_with_empty_axes", 0))

        def run(a: Args) -> torch.Tensor:
            x, axes = a[0], axes_of(a)
            if not axes:
                if noop:
                    return x
                axes = list(range(x.dim()))
            if kind == "mean":
                return x.mean(dim=axes, keepdim=keep)
            if kind == "sum":
                return x.sum(dim=axes, keepdim=keep)
            if kind == "max":
                return x.amax(dim=axes, keepdim=keep)
            return x.amin(dim=axes, keepdim=keep)

        return run

    return build


def _gather(n: _Node) -> Step:
    axis = int(n.attr("axis", 0))

    def run(a: Args) -> torch.Tensor:
        x, idx = a[0], a[1]
        k = axis if axis >= 0 else axis + x.dim()
        idx = torch.where(idx < 0, idx + x.shape[k], idx)
        if idx.dim() == 0:
            return x.select(k, int(idx))
        out = x.index_select(k, idx.reshape(-1))
        return out.reshape(*x.shape[:k], *idx.shape, *x.shape[k + 1 :])

    return run


def _shape(n: _Node) -> Step:
    start, end = n.attr("start", 0), n.attr("end")

    def run(a: Args) -> torch.Tensor:
        return torch.tensor(list(a[0].shape)[start:end], dtype=torch.int64, device=a[0].device)

    return run


def _batch_norm(n: _Node) -> Step:
    eps = float(n.attr("epsilon", 1e-5))
    return lambda a: F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, eps)


def _clip(n: _Node) -> Step:
    if n.opset < 11:
        low, high = n.attr("min"), n.attr("max")
        return lambda a: torch.clamp(a[0], low, high)

    def run(a: Args) -> torch.Tensor:
        low = a[1] if len(a) > 1 and a[1] is not None else None
        high = a[2] if len(a) > 2 and a[2] is not None else None
        return torch.clamp(a[0], low, high)

    return run


def _pad(n: _Node) -> Step:
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(n.attr("mode", "constant"))
    if mode is None:
        raise ModelError(f"Pad node '{n.proto.name}' has mode {n.attr('mode')}, which is not supported")
    if n.opset < 11:
        static = list(n.attr("pads"))
        pads_of = lambda a: static  # noqa: E731
    else:
        pads_of = n.ints_input(1)
    if n.has_input(3):
        raise ModelError(f"Pad node '{n.proto.name}' pads only some axes, which is not supported")

    def run(a: Args) -> torch.Tensor:
        x, pads = a[0], pads_of(a)
        assert pads is not None
        value = float(a[2].reshape(-1)[0]) if n.opset >= 11 and len(a) > 2 and a[2] is not None else float(n.attr("value", 0.0))
        full = _torch_pad(pads)
        while len(full) > 2 and full[-2:] == [0, 0]:  # F.pad wants as few leading dims as needed
            full = full[:-2]
        return F.pad(x, full, mode=mode, value=value) if mode == "constant" else F.pad(x, full, mode=mode)

    return run


def _where(n: _Node) -> Step:
    return lambda a: torch.where(a[0], a[1], a[2])


def _leaky(n: _Node) -> Step:
    alpha = float(n.attr("alpha", 0.01))
    return lambda a: F.leaky_relu(a[0], alpha)


def _dropout(n: _Node) -> Step:
    if len(n.proto.output) > 1 and n.proto.output[1]:
        raise ModelError(f"Dropout node '{n.proto.name}' asks for its mask output, which is not supported")
    return lambda a: a[0]


def _mod(n: _Node) -> Step:
    fmod = int(n.attr("fmod", 0))
    if fmod not in (0, 1):
        raise n.unsupported(f"has fmod={fmod}")

    def run(a: Args) -> torch.Tensor:
        x, y = a[0], a[1]
        if fmod == 1:
            return torch.fmod(x, y)  # the sign of the dividend, as C's fmod
        if x.is_floating_point() or y.is_floating_point():
            raise ModelError(
                f"Mod node '{n.proto.name}' has fmod=0 on floating-point inputs, which ONNX does not allow"
            )
        return torch.remainder(x, y)  # the sign of the divisor

    return run


def _nd_index(idx: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The last axis of ONNX ND indices as one index tensor per data axis, negatives wrapped."""
    bounds = torch.tensor(list(shape), dtype=idx.dtype, device=idx.device)
    idx = torch.where(idx < 0, idx + bounds, idx)
    return tuple(idx.unbind(-1))


def _gathernd(n: _Node) -> Step:
    batch_dims = int(n.attr("batch_dims", 0))

    def run(a: Args) -> torch.Tensor:
        data, idx = a[0], a[1].to(torch.int64)
        b, k = batch_dims, int(idx.shape[-1])
        batch_shape = tuple(data.shape[:b])
        count = int(np.prod(batch_shape, dtype=np.int64)) if b else 1
        flat = data.reshape(count, *data.shape[b:])
        rows = idx.reshape(count, -1, k)
        batch = torch.arange(count, device=data.device).reshape(count, 1).expand(count, rows.shape[1])
        picked = flat[(batch, *_nd_index(rows, flat.shape[1 : 1 + k]))]
        return picked.reshape(*batch_shape, *idx.shape[b:-1], *flat.shape[1 + k :])

    return run


def _scatternd(n: _Node) -> Step:
    reduction = n.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise ModelError(f"ScatterND node '{n.proto.name}' uses reduction '{reduction}', which this converter lacks")

    def run(a: Args) -> torch.Tensor:
        data, idx, updates = a[0], a[1].to(torch.int64), a[2]
        k = int(idx.shape[-1])
        rows = idx.reshape(-1, k)
        out = data.clone()
        out.index_put_(_nd_index(rows, data.shape[:k]), updates.reshape(rows.shape[0], *data.shape[k:]).to(data.dtype),
                       accumulate=reduction == "add")
        return out

    return run


def _nonzero(n: _Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = a[0]
        if x.dim() == 0:  # as onnxruntime: a scalar counts as a 1-element vector
            x = x.reshape(1)
        return torch.nonzero(x).t().contiguous()

    return run


def _sorted_topk(x: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` along the last axis in ONNX's order: by value, equal values lowest index first.

    ``torch.topk`` breaks ties in no documented order, so its k-th value only bounds the
    candidates: the strictly better ones plus the lowest-indexed ties make exactly ``k`` per
    row, which a stable sort then orders.
    """
    n = x.shape[-1]
    if k == 0:
        return x[..., :0], torch.zeros((*x.shape[:-1], 0), dtype=torch.int64, device=x.device)
    if n <= 4096 or 4 * k >= n:
        values, indices = torch.sort(x, dim=-1, descending=largest, stable=True)
        return values[..., :k].contiguous(), indices[..., :k].contiguous()
    kth = torch.topk(x, k, dim=-1, largest=largest, sorted=True).values[..., -1:]
    candidates = x >= kth if largest else x <= kth
    if not bool((candidates.sum(-1) == k).all()):  # ties at the k-th value: the lowest indices win
        strict = x > kth if largest else x < kth
        ties = x == kth
        candidates = strict | (ties & (ties.cumsum(-1) <= k - strict.sum(-1, keepdim=True)))
    indices = candidates.nonzero()[:, -1].reshape(*x.shape[:-1], k)
    values, order = torch.sort(x.gather(-1, indices), dim=-1, descending=largest, stable=True)
    return values, indices.gather(-1, order)


def _topk(n: _Node) -> Step:
    axis = int(n.attr("axis", -1))
    largest = bool(n.attr("largest", 1))
    # sorted=0 leaves the order to the runtime: sorted output is one valid answer.
    if n.opset < 10:
        k_attr = int(n.attr("k"))
        k_of: Callable[[Args], int] = lambda a: k_attr  # noqa: E731
    else:
        reader = n.ints_input(1)

        def k_of(a: Args) -> int:
            k = reader(a)
            if not k or len(k) != 1:
                raise ModelError(f"TopK node '{n.proto.name}' needs K as a single integer")
            return k[0]

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
        x, k = a[0], k_of(a)
        dim = axis + x.dim() if axis < 0 else axis
        if not 0 <= dim < x.dim():
            raise ModelError(f"TopK node '{n.proto.name}' has axis {axis} for a rank-{x.dim()} input")
        if not 0 <= k <= x.shape[dim]:
            raise ModelError(f"TopK node '{n.proto.name}' asks for k={k} of {x.shape[dim]} elements")
        values, indices = _sorted_topk(x.movedim(dim, -1), k, largest)
        return values.movedim(-1, dim), indices.movedim(-1, dim)

    return run


def _split(n: _Node) -> Step:
    """Split along ``axis`` into the given sizes, else into equal parts (opset 18's
    ``num_outputs``: parts of ceil(size / n), the last one smaller)."""
    axis = int(n.attr("axis", 0))
    parts = len(n.proto.output)
    sizes_of = (lambda a: n.attr("split")) if n.opset < 13 else n.ints_input(1)

    def run(a: Args) -> tuple[torch.Tensor, ...]:
        x = a[0]
        dim = axis + x.dim() if axis < 0 else axis
        if not 0 <= dim < x.dim():
            raise ModelError(f"Split node '{n.proto.name}' has axis {axis} for a rank-{x.dim()} input")
        sizes = sizes_of(a)
        length = x.shape[dim]
        if sizes:
            sizes = [int(v) for v in sizes]
            if len(sizes) != parts or sum(sizes) != length or min(sizes) < 0:
                raise ModelError(f"Split node '{n.proto.name}' splits {length} elements into {sizes} for {parts} outputs")
        elif n.opset >= 18 and n.attr("num_outputs") is not None:
            chunk = -(-length // parts)
            sizes = [min(chunk, max(length - k * chunk, 0)) for k in range(parts)]
        else:
            if length % parts:
                raise ModelError(f"Split node '{n.proto.name}' cannot split {length} elements into {parts} equal parts")
            sizes = [length // parts] * parts
        return tuple(torch.split(x, sizes, dim=dim))

    return run


def _range(n: _Node) -> Step:
    """Range as onnxruntime's CPU kernel computes it: ceil((limit - start) / delta) elements,
    counted in double (a float32 count can differ by one); a float range accumulates
    (``value += delta`` in the inputs' type) rather than computing start + i * delta, so its
    rounding is the kernel's too."""

    def run(a: Args) -> torch.Tensor:
        start, limit = a[0], a[1]
        delta = a[2] if len(a) > 2 and a[2] is not None else torch.ones((), dtype=start.dtype)
        if start.numel() != 1 or limit.numel() != 1 or delta.numel() != 1:
            raise ModelError(f"Range node '{n.proto.name}' needs scalar start, limit and delta; got shapes "
                             f"{tuple(start.shape)}, {tuple(limit.shape)}, {tuple(delta.shape)}")
        if start.is_floating_point():
            dtype = start.dtype
            np_type = np.float64 if dtype == torch.float64 else np.float32  # float16/bfloat16: computed in float32
            s, l, d = (np.array(t.detach().reshape(()).to(torch.float64).cpu().item(), dtype=np_type) for t in (start, limit, delta))
            if d == 0:
                raise ModelError(f"Range node '{n.proto.name}' has delta 0")
            count = max(math.ceil((float(l) - float(s)) / float(d)), 0)
            values = np.full(count, d, dtype=np_type)
            if count:
                values[0] = s
            return torch.from_numpy(np.add.accumulate(values, dtype=np_type)).to(dtype=dtype, device=start.device)
        s, l, d = (int(t.reshape(())) for t in (start, limit, delta))
        if d == 0:
            raise ModelError(f"Range node '{n.proto.name}' has delta 0")
        count = max(-((s - l) // d), 0)  # exact ceil((l - s) / d)
        return torch.arange(s, s + count * d, d, dtype=start.dtype, device=start.device)[:count]

    return run


# ONNX stacks an LSTM's gate blocks as i, o, f, c; torch as i, f, g (the cell's c), o.
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)
_LSTM_DIRECTIONS = ("forward", "reverse", "bidirectional")


def _lstm_params(w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, hidden: int) -> torch.Tensor:
    """ONNX LSTM weights W [dirs, 4H, I], R [dirs, 4H, H], B [dirs, 8H] (or None: zeros) as one
    flat tensor holding, per direction, torch's w_ih [4H, I], w_hh [4H, H], b_ih [4H], b_hh [4H]
    with the gates in torch's order (see :func:`_lstm_unflatten`)."""
    dirs = w.shape[0]
    order = torch.cat([torch.arange(g * hidden, (g + 1) * hidden) for g in _ONNX_TO_TORCH_GATES]).to(w.device)
    if b is None:
        b = torch.zeros((dirs, 8 * hidden), dtype=w.dtype, device=w.device)
    parts = []
    for d in range(dirs):
        parts += [w[d].index_select(0, order).reshape(-1), r[d].index_select(0, order).reshape(-1),
                  b[d, : 4 * hidden].index_select(0, order), b[d, 4 * hidden :].index_select(0, order)]
    return torch.cat(parts)


def _lstm_unflatten(flat: torch.Tensor, dirs: int, inputs: int, hidden: int) -> list[torch.Tensor]:
    """Views into :func:`_lstm_params`' tensor, in the order torch's fused LSTM takes them."""
    sizes = [4 * hidden * inputs, 4 * hidden * hidden, 4 * hidden, 4 * hidden]
    shapes = [(4 * hidden, inputs), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    views, offset = [], 0
    for _ in range(dirs):
        for size, shape in zip(sizes, shapes):
            views.append(flat.narrow(0, offset, size).view(shape))
            offset += size
    return views


def _reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` [seq, batch, ...] with each batch entry's first ``lengths[b]`` steps in reverse order
    (the steps after them stay where they are)."""
    seq = x.shape[0]
    t = torch.arange(seq, device=x.device).unsqueeze(1)
    lens = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(0, index.reshape(seq, -1, *([1] * (x.dim() - 2))).expand_as(x))


def _lstm(n: _Node) -> Step:
    """ONNX LSTM on torch's fused LSTM kernel (the one ``nn.LSTM`` calls).

    Supported: forward, reverse and bidirectional; layout 0 and 1; B, sequence_lens,
    initial_h and initial_c given or absent; any outputs asked for. With sequence_lens the
    sequences are packed, as ``nn.LSTM`` runs a PackedSequence, which is onnxruntime's
    semantics exactly: each direction runs over each sequence's own steps (reverse from its
    last valid one), Y is zero after a sequence's end, Y_h and Y_c are the states at its last
    step, and a sequence of length 0 gives zeros throughout, initial states or not.
    Refused (ModelError): activations other than the default Sigmoid, Tanh, Tanh, clip,
    input_forget=1 and non-zero peepholes P, which the fused kernel does not compute.
    """
    direction = n.attr("direction", "forward")
    if direction not in _LSTM_DIRECTIONS:
        raise n.unsupported(f"has direction={direction}")
    dirs = 2 if direction == "bidirectional" else 1
    layout = int(n.attr("layout", 0))
    if layout not in (0, 1):
        raise n.unsupported(f"has layout={layout}")
    activations = n.attr("activations")
    if activations is not None:
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in activations]
        if [v.lower() for v in names] != ["sigmoid", "tanh", "tanh"] * dirs:
            raise n.unsupported(f"has activations={names} (only the default Sigmoid, Tanh, Tanh)")
    # activation_alpha/beta parametrise activations such as Affine or LeakyRelu; Sigmoid and
    # Tanh take none, so with the default activations they change nothing.
    if n.attr("clip") is not None:
        raise n.unsupported(f"has clip={n.attr('clip')}")
    if int(n.attr("input_forget", 0)) != 0:
        raise n.unsupported(f"has input_forget={n.attr('input_forget')}")
    peephole_check: Callable[[Args], None] = lambda a: None  # noqa: E731
    if n.has_input(7):
        p = n.const(7)
        if p is not None:
            if bool((p != 0).any()):
                raise n.unsupported("has non-zero peephole weights P")
            n.drop_input(7)
        else:

            def peephole_check(a: Args) -> None:
                if a[7] is not None and bool((a[7] != 0).any()):
                    raise n.unsupported("has non-zero peephole weights P")

    hidden_attr = n.attr("hidden_size")

    def hidden_of(r: torch.Tensor) -> int:
        hidden = int(r.shape[-1])
        if hidden_attr is not None and int(hidden_attr) != hidden:
            raise ModelError(f"LSTM node '{n.proto.name}' has hidden_size={hidden_attr} but R of shape {tuple(r.shape)}")
        return hidden

    def checked(w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> tuple[int, int]:
        hidden = hidden_of(r)
        if w.dim() != 3 or tuple(r.shape) != (dirs, 4 * hidden, hidden) or tuple(w.shape[:2]) != (dirs, 4 * hidden) \
                or (b is not None and tuple(b.shape) != (dirs, 8 * hidden)):
            raise ModelError(f"LSTM node '{n.proto.name}' ({direction}) has W {tuple(w.shape)}, R {tuple(r.shape)}"
                             f"{'' if b is None else f', B {tuple(b.shape)}'}, which do not fit together")
        return int(w.shape[2]), hidden

    w, r, b = n.const(1), n.const(2), n.const(3)
    if w is not None and r is not None and (b is not None or not n.has_input(3)):
        # Constant weights (the usual case): reordered for torch once, here, as one buffer.
        size, hidden_static = checked(w, r, b)
        n.derive_input(1, _lstm_params(w, r, b, hidden_static))
        n.drop_input(2)
        n.drop_input(3)

        def params_of(a: Args) -> tuple[list[torch.Tensor], int, int]:
            return _lstm_unflatten(a[1], dirs, size, hidden_static), size, hidden_static
    else:

        def params_of(a: Args) -> tuple[list[torch.Tensor], int, int]:
            bias = a[3] if len(a) > 3 else None
            size, hidden = checked(a[1], a[2], bias)
            return _lstm_unflatten(_lstm_params(a[1], a[2], bias, hidden), dirs, size, hidden), size, hidden

    def state(a: Args, i: int, batch: int, hidden: int, like: torch.Tensor) -> torch.Tensor:
        value = a[i] if len(a) > i else None
        if value is None:
            return torch.zeros((dirs, batch, hidden), dtype=like.dtype, device=like.device)
        value = value.transpose(0, 1) if layout == 1 else value  # -> [dirs, batch, H]
        if tuple(value.shape) != (dirs, batch, hidden):
            raise ModelError(f"LSTM node '{n.proto.name}' got an initial state of shape {tuple(a[i].shape)} "
                             f"for {dirs} direction(s), batch {batch}, hidden size {hidden} (layout {layout})")
        return value.to(like.dtype).contiguous()

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        peephole_check(a)
        params, size, hidden = params_of(a)
        x = a[0]
        if x.dim() != 3 or x.shape[2] != size:
            raise ModelError(f"LSTM node '{n.proto.name}' got X of shape {tuple(x.shape)} for input size {size}")
        x = x.transpose(0, 1) if layout == 1 else x  # -> [seq, batch, I]
        seq, batch = int(x.shape[0]), int(x.shape[1])
        hx = [state(a, 5, batch, hidden, x), state(a, 6, batch, hidden, x)]
        lengths = a[4] if len(a) > 4 else None
        if lengths is not None:
            lengths = lengths.detach().reshape(-1).to(device="cpu", dtype=torch.int64)
            if lengths.shape[0] != batch or bool(((lengths < 0) | (lengths > seq)).any()):
                raise ModelError(f"LSTM node '{n.proto.name}' got sequence_lens {lengths.tolist()} for batch {batch}, "
                                 f"sequence length {seq}: each must be in [0, {seq}]")
            if bool((lengths == seq).all()):
                lengths = None
        bidirectional = dirs == 2
        if lengths is None and seq == 1:
            # One step (a decoder's prediction network, called per symbol): the fused cell, one
            # per direction. The sequence kernel's oneDNN path costs ~1 ms a call on the CPU to
            # set up, several times the step itself; the cell is the same arithmetic.
            steps = [torch._VF.lstm_cell(x[0], (hx[0][d], hx[1][d]), *params[4 * d : 4 * d + 4]) for d in range(dirs)]
            h, c = torch.stack([s[0] for s in steps]), torch.stack([s[1] for s in steps])
            y = torch.cat([s[0] for s in steps], dim=-1).unsqueeze(0)
        elif lengths is None:
            if direction == "reverse":
                x = x.flip(0)
            y, h, c = torch._VF.lstm(x, hx, params, True, 1, 0.0, False, bidirectional, False)
            if direction == "reverse":
                y = y.flip(0)
        else:
            y, h, c = _packed_lstm(x, lengths, hx, params, direction)
        y = y.view(seq, batch, dirs, hidden)
        if layout == 1:  # Y [batch, seq, dirs, H]; Y_h, Y_c [batch, dirs, H]
            return y.transpose(0, 1), h.transpose(0, 1), c.transpose(0, 1)
        return y.permute(0, 2, 1, 3), h, c

    return run


def _packed_lstm(x: torch.Tensor, lengths: torch.Tensor, hx: list[torch.Tensor], params: list[torch.Tensor],
                 direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused LSTM over sequences of the given lengths (on the CPU, int64), as nn.LSTM runs a
    PackedSequence; lengths of 0 run one step (packing allows no empty sequence) and are zeroed."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    seq = x.shape[0]
    steps = lengths.clamp(min=1)
    if direction == "reverse":
        x = _reverse_within(x, steps)
    packed = pack_padded_sequence(x, steps, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = [s.index_select(1, order.to(s.device)) for s in hx]
    data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, hx, params, True, 1, 0.0, False, direction == "bidirectional")
    y, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, unorder), total_length=seq)
    h, c = (s.index_select(1, unorder.to(s.device)) for s in (h, c))
    if direction == "reverse":
        y = _reverse_within(y, steps)
    empty = lengths == 0
    if bool(empty.any()):
        keep = (~empty).to(y.device).reshape(1, -1, 1)
        y, h, c = (torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device)) for s in (y, h, c))
    return y, h, c


_COORDINATE_MODES = ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _nearest_indices(in_len: int, out_len: int, scale: float, coordinate: str, nearest: str) -> np.ndarray:
    """Source index of each output index along one axis, in float32 as onnxruntime computes it."""
    if scale == 1.0:  # onnxruntime maps one to one, whatever the coordinate mode
        return np.arange(out_len, dtype=np.int64)
    f32 = np.float32
    x = np.arange(out_len, dtype=np.float32)
    s = f32(scale)
    if coordinate == "asymmetric":
        orig = x / s
    elif coordinate == "half_pixel":
        orig = (x + f32(0.5)) / s - f32(0.5)
    elif coordinate == "pytorch_half_pixel":
        orig = (x + f32(0.5)) / s - f32(0.5) if out_len > 1 else np.zeros_like(x)
    elif coordinate == "tf_half_pixel_for_nn":
        orig = (x + f32(0.5)) / s
    else:  # align_corners
        orig = np.zeros_like(x) if out_len == 1 else x * f32(in_len - 1) / f32(out_len - 1)
    wide = orig.astype(np.float64)
    away = np.where(wide >= 0, np.floor(wide + 0.5), np.ceil(wide - 0.5))  # C's round(): halves away from 0
    if nearest == "floor":
        idx = np.floor(wide)
    elif nearest == "ceil":
        idx = np.ceil(wide)
    elif nearest == "round_prefer_ceil":
        idx = away
    else:  # round_prefer_floor: halves go down
        halfway = orig == (np.trunc(orig) + f32(0.5))
        idx = np.where(halfway, np.floor(wide), away)
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _resize(n: _Node) -> Step:
    if n.opset < 11:
        raise n.unsupported(f"is opset {n.opset} (Resize before opset 11)")
    mode = n.attr("mode", "nearest")
    if mode != "nearest":
        raise n.unsupported(f"has mode={mode}")
    coordinate = n.attr("coordinate_transformation_mode", "half_pixel")
    if coordinate not in _COORDINATE_MODES:
        raise n.unsupported(f"has coordinate_transformation_mode={coordinate}")
    nearest = n.attr("nearest_mode", "round_prefer_floor")
    if nearest not in _NEAREST_MODES:
        raise n.unsupported(f"has nearest_mode={nearest}")
    if int(n.attr("exclude_outside", 0)) != 0:
        raise n.unsupported("has exclude_outside=1")
    if int(n.attr("antialias", 0)) != 0:
        raise n.unsupported("has antialias=1")
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise n.unsupported(f"has keep_aspect_ratio_policy={policy}")
    axes_attr = n.attr("axes")
    scales_of = n.floats_input(2)
    sizes_of = n.ints_input(3)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        rank = x.dim()
        axes = [ax + rank if ax < 0 else ax for ax in axes_attr] if axes_attr else list(range(rank))
        scales, sizes = scales_of(a) or None, sizes_of(a) or None
        if (scales is None) == (sizes is None):
            raise ModelError(f"Resize node '{n.proto.name}' needs exactly one of scales and sizes")
        given = scales if scales is not None else sizes
        if len(given) != len(axes):
            raise ModelError(f"Resize node '{n.proto.name}' has {len(given)} scales or sizes for {len(axes)} axes")
        for axis, value in zip(axes, given):
            in_len = int(x.shape[axis])
            if sizes is not None:
                out_len = int(value)
                scale = 1.0 if in_len == 0 else float(np.float32(out_len) / np.float32(in_len))
            else:
                scale = float(np.float32(value))
                if scale <= 0:
                    raise ModelError(f"Resize node '{n.proto.name}' has scale {value}")
                out_len = int(np.float32(scale) * np.float32(in_len))
            if out_len == in_len and scale == 1.0:
                continue
            index = _nearest_indices(in_len, out_len, scale, coordinate, nearest)
            x = x.index_select(axis, torch.from_numpy(index).to(x.device))
        return x

    return run


def _nms_numpy(boxes: np.ndarray, scores: np.ndarray, max_out: int, iou_threshold: float,
               score_threshold: float | None, center_point_box: int) -> np.ndarray:
    """ONNX NonMaxSuppression as onnxruntime's CPU kernel computes it, float32 throughout.

    Per batch, per class: the boxes above the score threshold by score descending (equal
    scores: lower index first); a box is kept unless its IoU with a box kept before it is
    above the threshold; at most ``max_out`` per class. Rows (batch, class, box) in that order.
    """
    f32 = np.float32
    rows: list[tuple[int, int, int]] = []
    threshold = f32(iou_threshold)
    for b in range(boxes.shape[0]):
        box = boxes[b]
        if center_point_box == 0:  # [y1, x1, y2, x2], any two opposite corners
            y_lo, y_hi = np.minimum(box[:, 0], box[:, 2]), np.maximum(box[:, 0], box[:, 2])
            x_lo, x_hi = np.minimum(box[:, 1], box[:, 3]), np.maximum(box[:, 1], box[:, 3])
            area = (y_hi - y_lo) * (x_hi - x_lo)
        else:  # [x_center, y_center, width, height]
            half_w, half_h = box[:, 2] / f32(2), box[:, 3] / f32(2)
            x_lo, x_hi = box[:, 0] - half_w, box[:, 0] + half_w
            y_lo, y_hi = box[:, 1] - half_h, box[:, 1] + half_h
            area = box[:, 2] * box[:, 3]
        for c in range(scores.shape[1]):
            s = scores[b, c]
            if score_threshold is None:
                candidates = np.arange(s.shape[0])
            else:
                candidates = np.flatnonzero(s > f32(score_threshold))
            order = candidates[np.argsort(-s[candidates], kind="stable")]
            bx0, bx1, by0, by1, barea = x_lo[order], x_hi[order], y_lo[order], y_hi[order], area[order]
            suppressed = np.zeros(order.shape[0], dtype=bool)
            kept = 0
            for i in range(order.shape[0]):
                if suppressed[i]:
                    continue
                rows.append((b, c, int(order[i])))
                kept += 1
                if kept >= max_out:
                    break
                rest = slice(i + 1, None)
                ix0, ix1 = np.maximum(bx0[i], bx0[rest]), np.minimum(bx1[i], bx1[rest])
                iy0, iy1 = np.maximum(by0[i], by0[rest]), np.minimum(by1[i], by1[rest])
                inter = (ix1 - ix0) * (iy1 - iy0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = inter / ((barea[rest] + barea[i]) - inter)
                suppressed[rest] |= (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (iou > threshold)
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _nms(n: _Node) -> Step:
    center = int(n.attr("center_point_box", 0))
    if center not in (0, 1):
        raise n.unsupported(f"has center_point_box={center}")
    max_of = n.ints_input(2)
    iou_of = n.floats_input(3)
    score_of = n.floats_input(4)

    def run(a: Args) -> torch.Tensor:
        boxes, scores = a[0], a[1]
        if boxes.dim() != 3 or scores.dim() != 3 or boxes.shape[2] != 4 or boxes.shape[0] != scores.shape[0] \
                or boxes.shape[1] != scores.shape[2]:
            raise ModelError(f"NonMaxSuppression node '{n.proto.name}' got boxes {tuple(boxes.shape)} "
                             f"and scores {tuple(scores.shape)}")
        max_out = max(int((max_of(a) or [0])[0]), 0)
        iou = (iou_of(a) or [0.0])[0]
        if not 0.0 <= iou <= 1.0:
            raise ModelError(f"NonMaxSuppression node '{n.proto.name}' has iou_threshold {iou}, outside [0, 1]")
        score = score_of(a)
        if max_out == 0:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        selected = _nms_numpy(
            boxes.detach().to(torch.float32).cpu().numpy(), scores.detach().to(torch.float32).cpu().numpy(),
            max_out, iou, score[0] if score else None, center,
        )
        return torch.from_numpy(selected).to(boxes.device)

    return run


BUILDERS: dict[str, Callable[[_Node], Step]] = {
    **{op: (lambda fn: lambda n: lambda a: fn(a[0]))(fn) for op, fn in _UNARY.items()},
    **{op: (lambda fn: lambda n: lambda a: fn(a[0], a[1]))(fn) for op, fn in _BINARY.items()},
    "Div": _div,
    "Sum": _variadic(torch.add),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "InstanceNormalization": _instance_norm,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "Gemm": _gemm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Slice": _slice,
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "ArgMax": _arg("max"),
    "ArgMin": _arg("min"),
    "Cast": _cast,
    "Transpose": _transpose,
    "Concat": _concat,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum", 13),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "Gather": _gather,
    "Shape": _shape,
    "BatchNormalization": _batch_norm,
    "Clip": _clip,
    "Pad": _pad,
    "Where": _where,
    "LeakyRelu": _leaky,
    "Dropout": _dropout,
    "Mod": _mod,
    "NonZero": _nonzero,
    "GatherND": _gathernd,
    "ScatterND": _scatternd,
    "TopK": _topk,
    "Split": _split,
    "Resize": _resize,
    "NonMaxSuppression": _nms,
    "Range": _range,
    "LSTM": _lstm,
}

SUPPORTED_OPS = frozenset(BUILDERS) | {"Constant"}


# --------------------------------------------------------------------------- the module


def _constant_value(node: onnx.NodeProto) -> torch.Tensor:
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return _tensor(value)
    if attr.name in ("value_float", "value_floats"):
        return torch.tensor(value, dtype=torch.float32)
    if attr.name in ("value_int", "value_ints"):
        return torch.tensor(value, dtype=torch.int64)
    raise ModelError(f"Constant node '{node.name}' uses {attr.name}, which is not supported")


def _tensor(proto: onnx.TensorProto) -> torch.Tensor:
    if proto.data_type == TensorProto.BFLOAT16:
        as_float = numpy_helper.to_array(proto).astype(np.float32)
        return torch.from_numpy(as_float).to(torch.bfloat16)
    array = numpy_helper.to_array(proto)
    return torch.from_numpy(np.array(array, copy=True))


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch module: ``forward(*inputs)`` returns a tuple of outputs.

    ``float_dtype`` is the precision floating tensors run in: float initializers are stored
    in it and casts to float32 inside the graph cast to it instead. The caller casts float
    inputs to it and outputs back to their ONNX types.
    """

    def __init__(self, model: onnx.ModelProto, float_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        unknown = sorted(
            {f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
             for n in graph.node
             if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS}
        )
        if unknown:
            raise UnsupportedOperators(
                f"the ONNX-to-torch converter does not support operator{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                "use the onnxruntime backend for this model",
            )
        consts: dict[str, torch.Tensor] = {init.name: _tensor(init) for init in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in consts]
        self.output_names = [v.name for v in graph.output]
        self.float_dtype = float_dtype
        steps: list[tuple[Step, list[str], list[str], str]] = []
        for node in graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = _constant_value(node)
                continue
            n = _Node(node, consts, opset, float_dtype)
            try:
                fn = BUILDERS[node.op_type](n)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed node, reported with its name
                raise ModelError(f"cannot convert {node.op_type} node '{node.name}': {exc}") from None
            inputs, outputs = list(n.inputs), [o for o in node.output]
            if all(not i or i in consts for i in inputs) and node.op_type != "Shape":
                # Constant folding in full precision, once, here.
                try:
                    with torch.inference_mode():
                        result = fn([consts[i] if i else None for i in inputs])
                except Exception as exc:  # noqa: BLE001 - as above
                    raise ModelError(f"cannot evaluate {node.op_type} node '{node.name}': {exc}") from None
                for name, value in zip(outputs, result if isinstance(result, tuple) else (result,)):
                    consts[name] = value.clone()
                continue
            steps.append((fn, inputs, outputs, node.op_type))
        used = {i for _, ins, _, _ in steps for i in ins} | set(self.output_names)
        self._const_attr: dict[str, str] = {}
        for k, name in enumerate(sorted(n for n in consts if n in used)):
            value = consts[name]
            if value.is_floating_point() and value.dtype == torch.float32:
                value = value.to(float_dtype)
            attr = f"const{k}"
            self.register_buffer(attr, value.contiguous(), persistent=False)
            self._const_attr[name] = attr
        missing = [o for o in self.output_names if o not in consts and not any(o in outs for _, _, outs, _ in steps)
                   and o not in self.input_names]
        if missing:
            raise ModelError(f"graph output '{missing[0]}' is produced by no node")
        self._steps = steps
        self._release = _last_uses(steps, set(self.output_names) | set(self._const_attr))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for name, attr in self._const_attr.items():
            env[name] = getattr(self, attr)
        for (fn, ins, outs, _), done in zip(self._steps, self._release):
            result = fn([env[i] if i else None for i in ins])
            if isinstance(result, tuple):
                env.update(zip(outs, result))
            else:
                env[outs[0]] = result
            for name in done:  # an intermediate no later step reads: freed now, not at the end
                env.pop(name, None)
        return tuple(env[o] for o in self.output_names)


def _last_uses(steps: list[tuple[Step, list[str], list[str], str]], keep: set[str]) -> list[tuple[str, ...]]:
    """For each step, the values (inputs read or outputs made) no later step reads and
    ``keep`` does not hold: a 24-layer BERT would otherwise keep every activation alive."""
    last: dict[str, int] = {}
    for k, (_, ins, outs, _) in enumerate(steps):
        for name in (*ins, *outs):
            if name:
                last[name] = k
    release: list[list[str]] = [[] for _ in steps]
    for name, k in last.items():
        if name not in keep:
            release[k].append(name)
    return [tuple(names) for names in release]


def convert(model: onnx.ModelProto, float_dtype: torch.dtype = torch.float32) -> OnnxModule:
    """``model`` as an :class:`OnnxModule` in eval mode (ModelError when it cannot be converted)."""
    return OnnxModule(model, float_dtype).eval()


__all__ = ["NUMPY_TO_TORCH", "SUPPORTED_OPS", "TORCH_DTYPES", "OnnxModule", "UnsupportedOperators", "convert"]
