"""Integer and quantised operators: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

Follows the ONNX operator specs (``onnx/defs/quantization/defs.py``, ``onnx/defs/math/defs.py``)
as onnxruntime's CPU kernels compute them: rounding halves to even, saturating to the output
type's range, per-tensor, per-axis or blocked scales; integer products accumulate exactly
(in int64, or float64 for convolutions, exact far beyond int32's range) before requantising
in float32. Only 8- and 16-bit integer types are quantised to; float8 and 4-bit types are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import TORCH_DTYPES, Args, Node, Step, axis_of
from mlpi.backends.onnx_to_torch.ops_math import _int_matmul
from mlpi.backends.onnx_to_torch.ops_nn import spatial_pads, torch_pad

_QUANTISED = (torch.uint8, torch.int8, torch.uint16, torch.int16)


def _limits(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return info.min, info.max


def _spread(param: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point, per tensor, per axis or per block, shaped to broadcast with x."""
    if param.dim() == 0 or param.numel() == 1 and x.dim() != param.dim():
        return param.reshape(())
    k = axis_of(axis, x.dim())
    if param.dim() == 1 and block == 0:
        shape = [1] * x.dim()
        shape[k] = -1
        return param.reshape(shape)
    if block > 0:
        return param.repeat_interleave(block, dim=k).narrow(k, 0, x.shape[k])
    return param


def _quantize(n: Node) -> Step:
    axis, block = int(n.attr("axis", 1)), int(n.attr("block_size", 0))
    out_attr = n.attr("output_dtype")
    if out_attr and (int(out_attr) not in TORCH_DTYPES or TORCH_DTYPES[int(out_attr)] not in _QUANTISED):
        raise n.unsupported(f"has output_dtype={out_attr}")

    def run(a: Args) -> torch.Tensor:
        x, scale = a[0], a[1]
        zero = a[2] if len(a) > 2 else None
        dtype = zero.dtype if zero is not None else (TORCH_DTYPES[int(out_attr)] if out_attr else torch.uint8)
        if dtype not in _QUANTISED:
            raise n.unsupported(f"quantises to {dtype}")
        low, high = _limits(dtype)
        wide = x.to(torch.float32) / _spread(scale, x, axis, block).to(torch.float32)
        q = torch.round(wide)
        if zero is not None:
            q = q + _spread(zero, x, axis, block).to(torch.float32)
        return q.clamp(low, high).to(dtype)

    return run


def _dequantize(n: Node) -> Step:
    axis, block = int(n.attr("axis", 1)), int(n.attr("block_size", 0))

    def run(a: Args) -> torch.Tensor:
        x, scale = a[0], a[1]
        zero = a[2] if len(a) > 2 else None
        if x.dtype not in (*_QUANTISED, torch.int32):
            raise n.unsupported(f"dequantises {x.dtype}")
        wide = x.to(torch.int64)
        if zero is not None:
            wide = wide - _spread(zero, x, axis, block).to(torch.int64)
        return wide.to(torch.float32).to(scale.dtype) * _spread(scale, x, axis, block)

    return run


def dynamic_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` quantised to uint8 over all its elements, as DynamicQuantizeLinear and onnxruntime's
    dynamically quantised kernels do: (q, scale, zero point), q and the zero point as float32
    integers in [0, 255]; the range always includes 0, and an empty one quantises with scale 1
    (the scale returned is then 0)."""
    x = x.to(torch.float32)
    zero_t = torch.zeros((), dtype=torch.float32, device=x.device)
    low = torch.minimum(x.min(), zero_t) if x.numel() else zero_t
    high = torch.maximum(x.max(), zero_t) if x.numel() else zero_t
    scale = (high - low) / 255.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.round((0.0 - low) / safe).clamp(0, 255)
    return (torch.round(x / safe) + zero_point).clamp(0, 255), scale, zero_point


def _dynamic_quantize(n: Node) -> Step:
    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, scale, zero_point = dynamic_uint8(a[0])
        return q.to(torch.uint8), scale, zero_point.to(torch.uint8)

    return run


def _zero_pointed(x: torch.Tensor, zero: torch.Tensor | None, axis: int | None = None) -> torch.Tensor:
    wide = x.to(torch.int64)
    if zero is None:
        return wide
    z = zero.to(torch.int64)
    if z.dim() == 1 and z.numel() > 1 and axis is not None:
        shape = [1] * x.dim()
        shape[axis_of(axis, x.dim())] = -1
        z = z.reshape(shape)
    return wide - z


def _matmul_integer(n: Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = _zero_pointed(a[0], a[2] if len(a) > 2 else None, -2)  # a's zero point: per row
        y = _zero_pointed(a[1], a[3] if len(a) > 3 else None, -1)  # b's: per column
        return _int_matmul(x, y).to(torch.int32)

    return run


def _int_conv(n: Node, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """An exact integer convolution (in float64: exact up to 2**53) with Conv's attributes."""
    kernel = list(n.attr("kernel_shape") or w.shape[2:])
    dims = len(kernel)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(dims)
    if conv is None:
        raise n.unsupported(f"is {dims}-d (only 1-d to 3-d)")
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    pads = spatial_pads(n, dims, kernel, strides, dilations, x.shape[2:])
    xf = F.pad(x.to(torch.float64), torch_pad(pads))
    out = conv(xf, w.to(torch.float64), None, strides, 0, dilations, int(n.attr("group", 1)))
    if bias is not None:
        out = out + bias.to(torch.float64).reshape(1, -1, *([1] * dims))
    return out


def _conv_integer(n: Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = _zero_pointed(a[0], a[2] if len(a) > 2 else None)
        w = _zero_pointed(a[1], a[3] if len(a) > 3 else None, 0)  # per output channel
        return torch.round(_int_conv(n, x, w, None)).to(torch.int32)

    return run


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    low, high = _limits(dtype)
    return (torch.round(acc.to(torch.float32) * multiplier) + zero.to(torch.float32)).clamp(low, high).to(dtype)


def _qlinear_matmul(n: Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = _zero_pointed(a[0], a[2], -2)
        y = _zero_pointed(a[3], a[5], -1)
        acc = _int_matmul(x, y)
        multiplier = a[1].to(torch.float32) * a[4].to(torch.float32) / a[6].to(torch.float32)
        shape_b = [1] * acc.dim()
        if multiplier.dim() == 1 and multiplier.numel() > 1:
            shape_b[-1] = -1
            multiplier = multiplier.reshape(shape_b)
        zero = a[7].reshape(shape_b) if a[7].dim() == 1 and a[7].numel() > 1 else a[7]
        return _requantize(acc, multiplier, zero, a[7].dtype)

    return run


def _qlinear_conv(n: Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = _zero_pointed(a[0], a[2])
        w = _zero_pointed(a[3], a[5], 0)
        bias = a[8] if len(a) > 8 else None
        acc = torch.round(_int_conv(n, x, w, bias))
        multiplier = a[1].to(torch.float32) * a[4].to(torch.float32).reshape(-1) / a[6].to(torch.float32)
        multiplier = multiplier.reshape(1, -1, *([1] * (acc.dim() - 2)))
        return _requantize(acc, multiplier, a[7], a[7].dtype)

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "DynamicQuantizeLinear": _dynamic_quantize,
    "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer,
    "QLinearMatMul": _qlinear_matmul,
    "QLinearConv": _qlinear_conv,
}
