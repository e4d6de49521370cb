"""Neural-network layers: convolutions, pooling, normalisations, Gemm.

Follows the ONNX operator specs (``onnx/defs/nn/defs.py``, ``onnx/defs/math/defs.py`` for
Gemm): pads are (begin..., end...) per spatial axis, ``auto_pad`` SAME_* splits the padding
as onnxruntime does, a pooling window counts only the positions the spec's
``count_include_pad`` names, and normalisations compute their statistics in float32 (the
``stash_type`` default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import Args, Node, Step, axis_of

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def spatial_pads(n: Node, dims: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                 sizes: Sequence[int]) -> list[int]:
    """ONNX pads (begin..., end...) for an input of spatial ``sizes``, including auto_pad SAME_*."""
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(n.attr("pads", [0] * (2 * dims)))
    if auto == "VALID":
        return [0] * (2 * dims)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise n.unsupported(f"has auto_pad={auto}")
    begins, ends = [], []
    for d in range(dims):
        out = -(-int(sizes[d]) // strides[d])
        total = max((out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - int(sizes[d]), 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX (b1, b2, ..., e1, e2, ...) over trailing dims -> F.pad's (b_last, e_last, ...)."""
    dims = len(pads) // 2
    out: list[int] = []
    for d in reversed(range(dims)):
        out += [pads[d], pads[d + dims]]
    return out


def _conv(n: Node) -> Step:
    kernel_attr = n.attr("kernel_shape")
    group = int(n.attr("group", 1))

    def run(a: Args) -> torch.Tensor:
        x, w = a[0], a[1]
        bias = a[2] if len(a) > 2 else None
        kernel = list(kernel_attr) if kernel_attr else list(w.shape[2:])
        dims = len(kernel)
        conv = _CONV.get(dims)
        if conv is None:
            raise n.unsupported(f"is {dims}-d (only 1-d to 3-d convolutions)")
        strides = list(n.attr("strides", [1] * dims))
        dilations = list(n.attr("dilations", [1] * dims))
        pads = spatial_pads(n, dims, kernel, strides, dilations, x.shape[2:])
        if pads[:dims] == pads[dims:]:
            return conv(x, w, bias, strides, pads[:dims], dilations, group)
        return conv(F.pad(x, torch_pad(pads)), w, bias, strides, 0, dilations, group)

    return run


def _conv_transpose(n: Node) -> Step:
    """ConvTranspose computed unpadded, then each output position o read at o + pad_begin of
    that full result (zero past its end): pads, output_padding, output_shape and auto_pad
    are all that window."""
    group = int(n.attr("group", 1))
    auto = n.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise n.unsupported(f"has auto_pad={auto}")
    output_shape = n.attr("output_shape")

    def run(a: Args) -> torch.Tensor:
        x, w = a[0], a[1]
        bias = a[2] if len(a) > 2 else None
        kernel = list(n.attr("kernel_shape") or w.shape[2:])
        dims = len(kernel)
        conv = _CONV_T.get(dims)
        if conv is None:
            raise n.unsupported(f"is {dims}-d (only 1-d to 3-d)")
        strides = list(n.attr("strides", [1] * dims))
        dilations = list(n.attr("dilations", [1] * dims))
        extra = list(n.attr("output_padding", [0] * dims))
        pads = list(n.attr("pads", [0] * (2 * dims)))
        full = conv(x, w, None, strides, 0, 0, group, dilations)
        window: list[int] = []
        for d in range(dims):
            length = int(full.shape[2 + d])
            natural = length + extra[d]
            if output_shape is not None:
                out = int(list(output_shape)[-dims:][d])
                total = max(natural - out, 0)  # a longer output gets zeros at the end, as onnxruntime's
                begin = total // 2 if auto in ("SAME_UPPER", "NOTSET", "", "VALID") else total - total // 2
            elif auto in ("SAME_UPPER", "SAME_LOWER"):
                out = int(x.shape[2 + d]) * strides[d]
                total = natural - out
                begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
            elif auto == "VALID":
                begin, out = 0, natural
            else:
                begin, out = pads[d], natural - pads[d] - pads[dims + d]
            window.append((begin, out))
        y = full
        for d, (begin, out) in enumerate(window):
            length = int(y.shape[2 + d])
            pad = [0, 0] * (dims - 1 - d) + [-begin, out + begin - length]
            y = F.pad(y, pad)
        if bias is not None:
            y = y + bias.reshape(1, -1, *([1] * dims))
        return y

    return run


def _pool_geometry(n: Node, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
                   ceil_mode: bool) -> tuple[list[int], list[int]]:
    """(pads with any ceil-mode extra added to the ends, the output sizes) for a pooling."""
    dims = len(kernel)
    pads = spatial_pads(n, dims, kernel, strides, dilations, x.shape[2:])
    outs, ends = [], []
    for d in range(dims):
        size = int(x.shape[2 + d])
        span = (kernel[d] - 1) * dilations[d] + 1
        room = size + pads[d] + pads[dims + d] - span
        out = (-(-room // strides[d]) if ceil_mode else room // strides[d]) + 1
        if ceil_mode and (out - 1) * strides[d] >= size + pads[d]:
            out -= 1  # a window may not start in the end padding
        outs.append(max(out, 0))
        ends.append(max((out - 1) * strides[d] + span - size - pads[d], pads[dims + d]))
    return pads[:dims] + ends, outs


def _window_sum(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> torch.Tensor:
    """Each channel's sum over every pooling window (a depthwise convolution with ones)."""
    dims = len(kernel)
    channels = x.shape[1]
    ones = torch.ones((channels, 1, *kernel), dtype=x.dtype, device=x.device)
    return _CONV[dims](x, ones, None, strides, 0, dilations, channels)


def _max_pool(n: Node) -> Step:
    kernel = list(n.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    ceil_mode = bool(n.attr("ceil_mode", 0))
    storage_order = int(n.attr("storage_order", 0))
    want_indices = n.wants_output(1)
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}.get(dims)
    if pool is None:
        raise n.unsupported(f"is {dims}-d (only 1-d to 3-d)")

    def run(a: Args) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = a[0]
        given = spatial_pads(n, dims, kernel, strides, dilations, x.shape[2:])
        half = given[:dims]
        if not want_indices and x.is_floating_point() and half == given[dims:] \
                and all(2 * p <= (k - 1) * d + 1 for p, k, d in zip(half, kernel, dilations)):
            return pool(x, kernel, strides, half, dilations, ceil_mode)  # torch's padding and ceil rule are ONNX's
        pads, outs = _pool_geometry(n, x, kernel, strides, dilations, ceil_mode)
        source = x if x.is_floating_point() else x.to(torch.float64)
        padded = F.pad(source, torch_pad(pads), value=-math.inf)
        y, idx = pool(padded, kernel, strides, 0, dilations, False, True)
        y = y[(slice(None), slice(None), *(slice(0, o) for o in outs))]
        y = y if x.is_floating_point() else y.to(x.dtype)
        if not want_indices:
            return y
        idx = idx[(slice(None), slice(None), *(slice(0, o) for o in outs))]
        # indices into the padded plane -> into the whole unpadded tensor, in storage_order
        padded_sizes = [int(s) for s in padded.shape[2:]]
        sizes = [int(s) for s in x.shape[2:]]
        coords, rest = [], idx
        for d in reversed(range(dims)):
            coords.append(torch.remainder(rest, padded_sizes[d]) - pads[d])
            rest = torch.div(rest, padded_sizes[d], rounding_mode="floor")
        coords.reverse()
        plane = math.prod(sizes)
        flat = torch.zeros_like(idx)
        if storage_order == 0:
            for d in range(dims):
                flat = flat * sizes[d] + coords[d]
        else:
            for d in reversed(range(dims)):
                flat = flat * sizes[d] + coords[d]
        base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1],
                                                                               *([1] * dims)) * plane
        return y, flat + base

    return run


def _avg_pool(n: Node) -> Step:
    kernel = list(n.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    ceil_mode = bool(n.attr("ceil_mode", 0))
    include = bool(n.attr("count_include_pad", 0))
    if dims not in _CONV:
        raise n.unsupported(f"is {dims}-d (only 1-d to 3-d)")

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        pads, outs = _pool_geometry(n, x, kernel, strides, dilations, ceil_mode)
        given = spatial_pads(n, dims, kernel, strides, dilations, x.shape[2:])
        total = _window_sum(F.pad(x, torch_pad(pads)), kernel, strides, dilations)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if include:  # the pads count, the ceil-mode extra does not
            ones = F.pad(ones, torch_pad(given), value=1.0)
            extra = [p - g for p, g in zip(pads, given)]
            count = _window_sum(F.pad(ones, torch_pad(extra)), kernel, strides, dilations)
        else:
            count = _window_sum(F.pad(ones, torch_pad(pads)), kernel, strides, dilations)
        index = (slice(None), slice(None), *(slice(0, o) for o in outs))
        return (total / count)[index]

    return run


def _lp_pool(n: Node) -> Step:
    kernel = list(n.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(n.attr("strides", [1] * dims))
    dilations = list(n.attr("dilations", [1] * dims))
    ceil_mode = bool(n.attr("ceil_mode", 0))
    p = float(n.attr("p", 2))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        pads, outs = _pool_geometry(n, x, kernel, strides, dilations, ceil_mode)
        total = _window_sum(F.pad(x.abs() ** p, torch_pad(pads)), kernel, strides, dilations)
        return (total ** (1.0 / p))[(slice(None), slice(None), *(slice(0, o) for o in outs))]

    return run


def _global_pool(kind: str) -> Callable[[Node], Step]:
    def build(n: Node) -> Step:
        p = float(n.attr("p", 2))

        def run(a: Args) -> torch.Tensor:
            x = a[0]
            dims = tuple(range(2, x.dim()))
            if kind == "avg":
                return x.mean(dim=dims, keepdim=True)
            if kind == "max":
                return x.amax(dim=dims, keepdim=True)
            return (x.abs() ** p).sum(dim=dims, keepdim=True) ** (1.0 / p)

        return run

    return build


def _max_unpool(n: Node) -> Step:
    kernel = list(n.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(n.attr("strides", [1] * dims))
    pads = list(n.attr("pads", [0] * (2 * dims)))
    shape_of = n.ints_input(2)

    def run(a: Args) -> torch.Tensor:
        x, idx = a[0], a[1].to(torch.int64)
        shape = shape_of(a)
        if shape is None:
            shape = [*x.shape[:2], *((int(x.shape[2 + d]) - 1) * strides[d] + kernel[d] - pads[d] - pads[dims + d]
                                     for d in range(dims))]
        out = torch.zeros(math.prod(shape), dtype=x.dtype, device=x.device)
        out[idx.reshape(-1)] = x.reshape(-1)
        return out.reshape(shape)

    return run


def _gemm(n: Node) -> Step:
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))

    def run(a: Args) -> torch.Tensor:
        x = a[0].t() if trans_a else a[0]
        w = a[1].t() if trans_b else a[1]
        out = x @ w
        if alpha != 1.0:
            out = out * alpha
        if len(a) > 2 and a[2] is not None:
            out = out + (a[2] * beta if beta != 1.0 else a[2])
        return out

    return run


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _batch_norm(n: Node) -> Step:
    eps = float(n.attr("epsilon", 1e-5))
    momentum = float(n.attr("momentum", 0.9))
    training = bool(n.attr("training_mode", 0)) and n.opset >= 14

    def run(a: Args) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x, scale, bias, mean, var = a[0], a[1], a[2], a[3], a[4]
        if not training:
            return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
        axes = [0, *range(2, x.dim())]
        batch_mean = x.mean(dim=axes)
        batch_var = x.var(dim=axes, unbiased=False)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + eps) * scale.reshape(shape) \
            + bias.reshape(shape)
        running_mean = mean * momentum + batch_mean * (1 - momentum)
        running_var = var * momentum + batch_var * (1 - momentum)
        return y, running_mean, running_var

    return run


def _instance_norm(n: Node) -> Step:
    eps = float(n.attr("epsilon", 1e-5))
    return lambda a: F.instance_norm(a[0], weight=a[1], bias=a[2], eps=eps)


def _layer_norm(n: Node) -> Step:
    axis = int(n.attr("axis", -1))
    eps = float(n.attr("epsilon", 1e-5))

    def run(a: Args) -> tuple[torch.Tensor, ...]:
        x = a[0]
        k = axis_of(axis, x.dim())
        dims = tuple(range(k, x.dim()))
        wide = x.to(_stats_dtype(x))
        mean = wide.mean(dim=dims, keepdim=True)
        centred = wide - mean
        inv_std = torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
        y = centred * inv_std * a[1].to(wide.dtype)
        if len(a) > 2 and a[2] is not None:
            y = y + a[2].to(wide.dtype)
        return y.to(x.dtype), mean, inv_std

    return run


def _rms_norm(n: Node) -> Step:
    axis = int(n.attr("axis", -1))
    eps = float(n.attr("epsilon", 1e-5))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        k = axis_of(axis, x.dim())
        dims = tuple(range(k, x.dim()))
        wide = x.to(_stats_dtype(x))
        inv_rms = torch.rsqrt((wide * wide).mean(dim=dims, keepdim=True) + eps)
        return (wide * inv_rms * a[1].to(wide.dtype)).to(x.dtype)

    return run


def _group_norm(n: Node) -> Step:
    eps = float(n.attr("epsilon", 1e-5))
    groups = int(n.attr("num_groups"))

    def run(a: Args) -> torch.Tensor:
        x, scale, bias = a[0], a[1], a[2]
        batch, channels = int(x.shape[0]), int(x.shape[1])
        wide = x.to(_stats_dtype(x)).reshape(batch, groups, -1)
        mean = wide.mean(-1, keepdim=True)
        var = ((wide - mean) ** 2).mean(-1, keepdim=True)
        y = ((wide - mean) / torch.sqrt(var + eps)).reshape(x.shape)
        if scale.numel() == groups and groups != channels:  # opset 18: one scale and bias per group
            scale = scale.repeat_interleave(channels // groups)
            bias = bias.repeat_interleave(channels // groups)
        shape = (1, channels, *([1] * (x.dim() - 2)))
        return (y * scale.to(y.dtype).reshape(shape) + bias.to(y.dtype).reshape(shape)).to(x.dtype)

    return run


def _lrn(n: Node) -> Step:
    size = int(n.attr("size"))
    alpha, beta, bias = float(n.attr("alpha", 1e-4)), float(n.attr("beta", 0.75)), float(n.attr("bias", 1.0))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        square = (x * x).unsqueeze(1)  # [N, 1, C, ...]: channels as a spatial axis
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        padded = F.pad(square, [0, 0] * (x.dim() - 2) + [before, after])
        kernel = [size] + [1] * (x.dim() - 2)
        total = _window_sum(padded, kernel, [1] * len(kernel), [1] * len(kernel)).squeeze(1)
        return x / (bias + alpha / size * total) ** beta

    return run


def _mvn(n: Node) -> Step:
    axes = list(n.attr("axes", [0, 2, 3]))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        dims = [axis_of(ax, x.dim()) for ax in axes]
        mean = x.mean(dim=dims, keepdim=True)
        var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(var) + 1e-9)

    return run


def _lp_norm(n: Node) -> Step:
    axis = int(n.attr("axis", -1))
    p = int(n.attr("p", 2))
    if p not in (1, 2):
        raise n.unsupported(f"has p={p} (only 1 or 2)")

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        k = axis_of(axis, x.dim())
        norm = x.abs().sum(k, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(k, keepdim=True))
        return torch.where(norm == 0, torch.zeros((), dtype=x.dtype, device=x.device), x / norm)  # a zero vector stays 0

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "LpPool": _lp_pool,
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "GlobalLpPool": _global_pool("lp"),
    "MaxUnpool": _max_unpool,
    "Gemm": _gemm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "GroupNormalization": _group_norm,
    "LRN": _lrn,
    "MeanVarianceNormalization": _mvn,
    "LpNormalization": _lp_norm,
}
