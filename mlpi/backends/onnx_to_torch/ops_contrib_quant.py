"""onnxruntime's ``com.microsoft`` int8 operators: what ``quantize_static`` writes in its
QOperator format (QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearConcat,
QLinearAveragePool, QLinearGlobalAveragePool, QGemm) and the fused matmuls of dynamic
quantisation (DynamicQuantizeMatMul, MatMulIntegerToFloat).

Follows onnxruntime's contrib operator specs (``docs/ContribOperators.md``) and its CPU kernels'
arithmetic (``onnxruntime/contrib_ops/cpu/quantization/``, MLAS): a quantised value is
``(q - zero_point) * scale``; a result is quantised as round-half-to-even of value / scale,
plus the zero point, saturated to the type. QLinearAdd and QLinearMul scale each operand by its
scale over the output's, as MLAS does; the elementwise activations go through the float
function (onnxruntime tabulates it for the 256 inputs; the same values); pooling and concat
dequantise, compute in float32 and quantise again; integer products are exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch import ops_nn
from mlpi.backends.onnx_to_torch.node import Args, Node, Step
from mlpi.backends.onnx_to_torch.ops_math import _int_matmul
from mlpi.backends.onnx_to_torch.ops_quant import (
    _QUANTISED,
    _dynamic_quantize,
    _limits,
    _zero_pointed,
)

_SCALAR_ERROR = "has a scale or zero point of shape {shape}; this operator takes one per tensor"


def _per_tensor(n: Node, value: torch.Tensor | None) -> torch.Tensor | None:
    if value is not None and value.numel() != 1:
        raise n.unsupported(_SCALAR_ERROR.format(shape=tuple(value.shape)))
    return None if value is None else value.reshape(())


def _dequantize(n: Node, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    if q.dtype not in _QUANTISED:
        raise n.unsupported(f"takes {str(q.dtype).removeprefix('torch.')} input (only 8- and 16-bit integers)")
    return _less_zero(n, q, zero) * _per_tensor(n, scale).to(torch.float32)


def _less_zero(n: Node, q: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """Quantised values less their (per-tensor) zero point, in float32."""
    return q.to(torch.float32) - (0.0 if zero is None else _per_tensor(n, zero).to(torch.float32))


def _saturated(n: Node, scaled: torch.Tensor, zero: torch.Tensor | None, default: torch.dtype,
               zero_before_rounding: bool = False) -> torch.Tensor:
    """round(scaled) + zero point, saturated to the zero point's type (else ``default``);
    ``zero_before_rounding``: round(scaled + zero point), as onnxruntime's pooling does (a value
    halfway between two steps may go to the other one: halves round to even)."""
    dtype = zero.dtype if zero is not None else default
    low, high = _limits(dtype)
    shift = 0.0 if zero is None else _per_tensor(n, zero).to(torch.float32)
    q = torch.round(scaled + shift) if zero_before_rounding else torch.round(scaled) + shift
    return q.clamp(low, high).to(dtype)


def _quantize(n: Node, value: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
              default: torch.dtype, zero_before_rounding: bool = False) -> torch.Tensor:
    """value / scale, rounded, plus the zero point, saturated (see :func:`_saturated`)."""
    return _saturated(n, value / _per_tensor(n, scale).to(torch.float32), zero, default, zero_before_rounding)


def _binary(combine: str) -> Callable[[Node], Step]:
    """QLinearAdd or QLinearMul: inputs A, A_scale, A_zero_point, B, B_scale, B_zero_point,
    C_scale, C_zero_point (zero points optional), with broadcasting."""

    def build(n: Node) -> Step:
        def run(a: Args) -> torch.Tensor:
            x, y = a[0], a[3]
            xs, ys, out_scale = (_per_tensor(n, a[i]).to(torch.float32) for i in (1, 4, 6))
            xc, yc = (_less_zero(n, q, a[i] if len(a) > i else None) for q, i in ((x, 2), (y, 5)))
            if combine == "add":  # MLAS: each operand times its scale over the output's
                value = xc * (xs / out_scale) + yc * (ys / out_scale)
            else:
                value = (xc * yc) * (xs * ys / out_scale)
            return _saturated(n, value, a[7] if len(a) > 7 else None, x.dtype)

        return run

    return build


def _activation(fn: Callable[[Node], Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[Node], Step]:
    """QLinearSigmoid or QLinearLeakyRelu: X, X_scale, X_zero_point, Y_scale, Y_zero_point."""

    def build(n: Node) -> Step:
        f = fn(n)

        def run(a: Args) -> torch.Tensor:
            x_zero = a[2] if len(a) > 2 else None
            y_zero = a[4] if len(a) > 4 else None
            return _quantize(n, f(_dequantize(n, a[0], a[1], x_zero)), a[3], y_zero, a[0].dtype)

        return run

    return build


def _leaky(n: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    alpha = float(n.attr("alpha", 0.01))
    return lambda v: torch.where(v >= 0, v, v * alpha)


def _concat(n: Node) -> Step:
    """Y_scale, Y_zero_point, then (tensor, scale, zero point) per input."""
    axis = int(n.attr("axis"))

    def run(a: Args) -> torch.Tensor:
        parts = a[2:]
        if len(parts) % 3 or not parts:
            raise n.error(f"has {len(parts)} inputs after Y_scale and Y_zero_point; they come in threes")
        values = [_dequantize(n, parts[i], parts[i + 1], parts[i + 2]) for i in range(0, len(parts), 3)]
        return _quantize(n, torch.cat(values, dim=axis), a[0], a[1], parts[0].dtype)

    return run


def _pooled(pool: Callable[[Node], Step], zero_before_rounding: bool) -> Callable[[Node], Step]:
    """QLinearAveragePool or QLinearGlobalAveragePool: X, x_scale, x_zero_point, y_scale,
    y_zero_point; ``channels_last`` puts the channels last (NHWC)."""

    def build(n: Node) -> Step:
        channels_last = bool(int(n.attr("channels_last", 0)))
        float_pool = pool(n)

        def run(a: Args) -> torch.Tensor:
            x = _dequantize(n, a[0], a[1], a[2] if len(a) > 2 else None)
            if channels_last:
                x = x.movedim(-1, 1)
            y = float_pool([x])
            if channels_last:
                y = y.movedim(1, -1)
            return _quantize(n, y, a[3], a[4] if len(a) > 4 else None, a[0].dtype, zero_before_rounding)

        return run

    return build


def _column_scale(scale: torch.Tensor) -> torch.Tensor:
    """A scale per tensor, or per output column (the last dimension)."""
    return scale.to(torch.float32).reshape(()) if scale.numel() == 1 else scale.to(torch.float32).reshape(-1)


def _qgemm(n: Node) -> Step:
    """A, a_scale, a_zero_point, B, b_scale, b_zero_point, C (int32), y_scale, y_zero_point:
    alpha * A' B' + C with A', B' transposed as asked; float output without y_scale."""
    alpha = float(n.attr("alpha", 1.0))
    trans_a, trans_b = bool(int(n.attr("transA", 0))), bool(int(n.attr("transB", 0)))

    def run(a: Args) -> torch.Tensor:
        x = _zero_pointed(a[0], a[2], 0)
        w = _zero_pointed(a[3], a[5], 0 if trans_b else 1)  # a zero point per output column
        x = x.t() if trans_a else x
        w = w.t() if trans_b else w
        acc = _int_matmul(x, w)
        if len(a) > 6 and a[6] is not None:
            acc = acc + a[6].to(torch.int64)
        multiplier = _per_tensor(n, a[1]).to(torch.float32) * _column_scale(a[4]) * alpha
        y_scale = a[7] if len(a) > 7 else None
        if y_scale is None:
            return acc.to(torch.float32) * multiplier
        scaled = acc.to(torch.float32) * (multiplier / _per_tensor(n, y_scale).to(torch.float32))
        return _saturated(n, scaled, a[8] if len(a) > 8 else None, a[0].dtype)

    return run


def _float_product(n: Node, q: torch.Tensor, a_scale: torch.Tensor, a_zero: torch.Tensor | None,
                   b: torch.Tensor, b_scale: torch.Tensor, b_zero: torch.Tensor | None,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """(A - a_zero) (B - b_zero) exactly, times a_scale * b_scale (per column), plus bias."""
    acc = _int_matmul(_zero_pointed(q, a_zero, -2), _zero_pointed(b, b_zero, -1))
    out = acc.to(torch.float32) * (_per_tensor(n, a_scale).to(torch.float32) * _column_scale(b_scale))
    return out if bias is None else out + bias.to(torch.float32)


def _dynamic_quantize_matmul(n: Node) -> Step:
    """A (float), B (int8/uint8), b_scale, b_zero_point, bias: A quantised to uint8 over the
    whole tensor, as DynamicQuantizeLinear does, then the exact product."""
    quantise = _dynamic_quantize(n)

    def run(a: Args) -> torch.Tensor:
        q, scale, zero = quantise([a[0]])
        bias = a[4] if len(a) > 4 else None
        return _float_product(n, q, scale, zero, a[1], a[2], a[3] if len(a) > 3 else None, bias).to(a[0].dtype)

    return run


def _matmul_integer_to_float(n: Node) -> Step:
    """A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias."""

    def run(a: Args) -> torch.Tensor:
        a_zero = a[4] if len(a) > 4 else None
        b_zero = a[5] if len(a) > 5 else None
        bias = a[6] if len(a) > 6 else None
        out = _float_product(n, a[0], a[2], a_zero, a[1], a[3], b_zero, bias)
        return out.to(a[2].dtype)

    return run


_MS = "com.microsoft::"
BUILDERS: dict[str, Callable[[Node], Step]] = {
    _MS + "QLinearAdd": _binary("add"),
    _MS + "QLinearMul": _binary("mul"),
    _MS + "QLinearSigmoid": _activation(lambda n: torch.sigmoid),
    _MS + "QLinearLeakyRelu": _activation(_leaky),
    _MS + "QLinearConcat": _concat,
    _MS + "QLinearAveragePool": _pooled(ops_nn.BUILDERS["AveragePool"], zero_before_rounding=True),
    _MS + "QLinearGlobalAveragePool": _pooled(ops_nn.BUILDERS["GlobalAveragePool"], zero_before_rounding=False),
    _MS + "QGemm": _qgemm,
    _MS + "DynamicQuantizeMatMul": _dynamic_quantize_matmul,
    _MS + "MatMulIntegerToFloat": _matmul_integer_to_float,
}
