"""Elementwise operators: arithmetic, comparisons, logic, bitwise, activations, casts.

Follows the ONNX operator specs (``onnx/defs/math/defs.py``, ``onnx/defs/logical/defs.py``,
``onnx/defs/tensor/defs.py`` for Cast/CastLike/Where) with numpy broadcasting, as
onnxruntime's CPU kernels compute them. torch has no arithmetic or comparison kernels for
uint16, uint32 and uint64: those run exactly in a wider signed type (uint64 as its int64 bit
pattern, with the sign bit flipped for comparisons), or in numpy where no wider type exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import Args, Node, Step, float_type

Fn2 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_WIDER = {torch.uint16: torch.int32, torch.uint32: torch.int64}
_SAME_WIDTH_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
_INT64_MIN = -(2**63)


def _is_wide_unsigned(x: torch.Tensor) -> bool:
    return x.dtype in _SAME_WIDTH_SIGNED


def _numpy2(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``fn`` in numpy (which has every unsigned kernel), back on ``x``'s device."""
    with np.errstate(all="ignore"):
        out = fn(x.detach().cpu().numpy(), y.detach().cpu().numpy())
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def _wrapping(fn: Fn2) -> Fn2:
    """Arithmetic whose low bits do not depend on signedness (add, sub, mul, and, or, xor)."""

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not _is_wide_unsigned(x):
            return fn(x, y)
        dtype = x.dtype
        if dtype == torch.uint64:
            return fn(x.view(torch.int64), y.view(torch.int64)).view(torch.uint64)
        wide = _WIDER[dtype]
        return fn(x.to(wide), y.to(wide)).to(dtype)

    return run


def _ordered(fn: Fn2, numpy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
             keeps_type: bool = False) -> Fn2:
    """An operation that depends on the values' order (comparisons, max, min, div, mod)."""

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not _is_wide_unsigned(x):
            return fn(x, y)
        dtype = x.dtype
        if dtype == torch.uint64:
            if numpy_fn is not None:
                return _numpy2(numpy_fn, x, y)
            # flipping the sign bit maps unsigned order onto signed order
            return fn(x.view(torch.int64) ^ _INT64_MIN, y.view(torch.int64) ^ _INT64_MIN)
        wide = _WIDER[dtype]
        out = fn(x.to(wide), y.to(wide))
        return out.to(dtype) if keeps_type else out

    return run


def _int_div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or y.is_floating_point():
        return torch.div(x, y)
    return torch.div(x, y, rounding_mode="trunc")  # C's integer division, as onnxruntime's


def _pow(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pow's output has the base's type, whatever the exponent's."""
    if not x.is_floating_point() and y.is_floating_point():
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)
    if x.is_floating_point() and not y.is_floating_point():
        return torch.pow(x, y.to(x.dtype))
    if _is_wide_unsigned(x):
        return _numpy2(np.power, x, y.to(x.dtype))
    return torch.pow(x, y.to(x.dtype))


def _matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError("MatMul needs inputs of rank 1 or more")
    if x.is_floating_point() and y.is_floating_point() and x.dtype != y.dtype:  # float16 weights, float32 activations
        common = torch.promote_types(x.dtype, y.dtype)
        return torch.matmul(x.to(common), y.to(common))
    if x.is_floating_point() or (x.device.type == "cpu" and x.dtype in (torch.int32, torch.int64)):
        return torch.matmul(x, y)
    # no kernel for this type here: exact in int64 (float64 would round), wrapping as the type does
    out = _int_matmul(x.view(torch.int64) if x.dtype == torch.uint64 else x, y.view(torch.int64) if y.dtype == torch.uint64 else y)
    return out.view(torch.uint64) if x.dtype == torch.uint64 else out.to(x.dtype)


def _int_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An integer matmul, exact, in int64, with MatMul's broadcasting. Where no sum can reach
    2**53 (every 8- and 16-bit quantised product) it runs as a float matmul, exact there (float32
    below 2**24); else in int64: torch's CPU kernel, or elementwise products summed elsewhere."""
    x64, y64 = x.to(torch.int64), y.to(torch.int64)
    if x64.numel() and y64.numel():
        depth = int(x64.shape[-1])
        bound = float(x64.to(torch.float64).abs().max()) * float(y64.to(torch.float64).abs().max()) * depth
        if bound < 2**53:
            exact = torch.float32 if bound < 2**24 else torch.float64
            return torch.matmul(x64.to(exact), y64.to(exact)).to(torch.int64)
    if x64.device.type == "cpu":
        return torch.matmul(x64, y64)
    squeeze_x, squeeze_y = x64.dim() == 1, y64.dim() == 1
    if squeeze_x:
        x64 = x64.unsqueeze(0)
    if squeeze_y:
        y64 = y64.unsqueeze(-1)
    out = (x64.unsqueeze(-1) * y64.unsqueeze(-3)).sum(-2)
    if squeeze_x:
        out = out.squeeze(-2)
    if squeeze_y:
        out = out.squeeze(-1)
    return out


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Reciprocal": torch.reciprocal,
    "Not": torch.logical_not,
    "Identity": lambda x: x,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Round": torch.round,  # halves to even, as ONNX asks
    "IsNaN": torch.isnan,
    "Softsign": lambda x: x / (1 + x.abs()),
    "Softplus": lambda x: torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x))),
    "Mish": lambda x: x * torch.tanh(torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))),
    "HardSwish": lambda x: x * torch.clamp(x / 6 + 0.5, 0, 1),
}


def _abs(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.uint8, *_SAME_WIDTH_SIGNED) else torch.abs(x)


def _sign(x: torch.Tensor) -> torch.Tensor:
    if _is_wide_unsigned(x):
        return (x != 0).to(x.dtype)
    return torch.sign(x)


def _bitwise_not(x: torch.Tensor) -> torch.Tensor:
    if _is_wide_unsigned(x):
        return torch.bitwise_not(x.view(_SAME_WIDTH_SIGNED[x.dtype])).view(x.dtype)
    return torch.bitwise_not(x)


_BINARY: dict[str, Fn2] = {
    "Add": _wrapping(torch.add),
    "Sub": _wrapping(torch.sub),
    "Mul": _wrapping(torch.mul),
    "Div": _ordered(_int_div, lambda x, y: np.floor_divide(x, y), keeps_type=True),
    "Pow": _pow,
    "MatMul": _matmul,
    "Equal": _ordered(torch.eq),
    "Less": _ordered(torch.lt),
    "LessOrEqual": _ordered(torch.le),
    "Greater": _ordered(torch.gt),
    "GreaterOrEqual": _ordered(torch.ge),
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": _wrapping(torch.bitwise_and),
    "BitwiseOr": _wrapping(torch.bitwise_or),
    "BitwiseXor": _wrapping(torch.bitwise_xor),
}

_maximum = _ordered(torch.maximum, np.maximum, keeps_type=True)
_minimum = _ordered(torch.minimum, np.minimum, keeps_type=True)


def _variadic(fn: Fn2, mean: bool = False) -> Callable[[Node], Step]:
    def build(n: Node) -> Step:
        def run(a: Args) -> torch.Tensor:
            out = a[0]
            for x in a[1:]:
                out = fn(out, x)
            if mean:
                out = out / len(a)
            if len(a) == 1:  # the one input broadcast with nothing: a copy all the same
                return out.clone()
            return out

        return run

    return build


def _mod(n: Node) -> Step:
    fmod = int(n.attr("fmod", 0))
    if fmod not in (0, 1):
        raise n.unsupported(f"has fmod={fmod}")

    def remainder(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if fmod == 1:
            return torch.fmod(x, y)  # the sign of the dividend, as C's fmod
        return torch.remainder(x, y)  # the sign of the divisor

    fn = _ordered(remainder, np.fmod if fmod == 1 else np.remainder, keeps_type=True)
    return lambda a: fn(a[0], a[1])


def _bit_shift(n: Node) -> Step:
    direction = n.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise n.error(f"has direction={direction!r}; it must be LEFT or RIGHT")

    def run(a: Args) -> torch.Tensor:
        x, s = a[0], a[1]
        if x.dtype == torch.uint64:
            return _numpy2(np.left_shift if direction == "LEFT" else np.right_shift, x, s)
        bits = x.element_size() * 8
        wide_x, wide_s = x.to(torch.int64), s.to(torch.int64)
        if direction == "LEFT":
            out = torch.where(wide_s >= bits, torch.zeros((), dtype=torch.int64, device=x.device), wide_x << wide_s.clamp(max=63))
        else:  # a shift past the width leaves the sign (0 for unsigned values, -1 for negative ones)
            out = wide_x >> wide_s.clamp(max=63)
        return out.to(x.dtype) if x.dtype != torch.uint8 else (out & 0xFF).to(torch.uint8)

    return run


def _elu(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.0))
    return lambda a: torch.where(a[0] > 0, a[0], alpha * torch.expm1(a[0]))


def _celu(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.0))
    return lambda a: torch.clamp(a[0], min=0) + torch.clamp(alpha * torch.expm1(a[0] / alpha), max=0)


def _selu(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.67326319217681884765625))
    gamma = float(n.attr("gamma", 1.05070102214813232421875))
    return lambda a: gamma * torch.where(a[0] > 0, a[0], alpha * torch.expm1(a[0]))


def _leaky(n: Node) -> Step:
    alpha = float(n.attr("alpha", 0.01))
    return lambda a: torch.where(a[0] >= 0, a[0], a[0] * alpha)


def _hard_sigmoid(n: Node) -> Step:
    alpha, beta = float(n.attr("alpha", 0.2)), float(n.attr("beta", 0.5))
    return lambda a: torch.clamp(a[0] * alpha + beta, 0, 1)


def _thresholded_relu(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.0))
    return lambda a: torch.where(a[0] > alpha, a[0], torch.zeros((), dtype=a[0].dtype, device=a[0].device))


def _shrink(n: Node) -> Step:
    bias, lambd = float(n.attr("bias", 0.0)), float(n.attr("lambd", 0.5))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        if x.is_floating_point():
            return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))
        wide = x.to(torch.float64)
        out = torch.where(wide < -lambd, wide + bias, torch.where(wide > lambd, wide - bias, zero.to(torch.float64)))
        return out.to(x.dtype)

    return run


def _gelu(n: Node) -> Step:
    approximate = n.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise n.unsupported(f"has approximate={approximate!r}")
    return lambda a: F.gelu(a[0], approximate=approximate)


def _swish(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.0))
    return lambda a: a[0] * torch.sigmoid(alpha * a[0])


def _prelu(n: Node) -> Step:
    return lambda a: torch.where(a[0] >= 0, a[0], a[0] * a[1])


def _is_inf(n: Node) -> Step:
    negative, positive = bool(n.attr("detect_negative", 1)), bool(n.attr("detect_positive", 1))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        if negative and positive:
            return torch.isinf(x)
        if negative:
            return torch.isneginf(x)
        if positive:
            return torch.isposinf(x)
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)

    return run


def _clip(n: Node) -> Step:
    if n.opset < 11:
        low, high = n.attr("min", -math.inf), n.attr("max", math.inf)
        return lambda a: torch.clamp(a[0], low, high)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        low = a[1] if len(a) > 1 and a[1] is not None else None
        high = a[2] if len(a) > 2 and a[2] is not None else None
        if low is None and high is None:
            return x
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x

    return run


def _cast(n: Node) -> Step:
    to = int(n.attr("to"))
    dtype = float_type(n, to)
    return lambda a: _cast_to(a[0], dtype)


def _cast_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as ``dtype``; float to integer truncates towards zero, as C's conversion (and onnxruntime's)."""
    return x if x.dtype == dtype else x.to(dtype)


def _cast_like(n: Node) -> Step:
    return lambda a: _cast_to(a[0], a[1].dtype)


def _where(n: Node) -> Step:
    return lambda a: torch.where(a[0].to(torch.bool), a[1], a[2])


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Node], Step]:
    return lambda n: lambda a: fn(a[0])


def _binary(fn: Fn2) -> Callable[[Node], Step]:
    return lambda n: lambda a: fn(a[0], a[1])


BUILDERS: dict[str, Callable[[Node], Step]] = {
    **{op: _unary(fn) for op, fn in _UNARY.items()},
    **{op: _binary(fn) for op, fn in _BINARY.items()},
    "Abs": _unary(_abs),
    "Sign": _unary(_sign),
    "BitwiseNot": _unary(_bitwise_not),
    "Sum": _variadic(_BINARY["Add"]),
    "Mean": _variadic(torch.add, mean=True),
    "Max": _variadic(_maximum),
    "Min": _variadic(_minimum),
    "Mod": _mod,
    "BitShift": _bit_shift,
    "Elu": _elu,
    "Celu": _celu,
    "Selu": _selu,
    "LeakyRelu": _leaky,
    "HardSigmoid": _hard_sigmoid,
    "ThresholdedRelu": _thresholded_relu,
    "Shrink": _shrink,
    "Gelu": _gelu,
    "Swish": _swish,
    "PRelu": _prelu,
    "IsInf": _is_inf,
    "Clip": _clip,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Where": _where,
}
