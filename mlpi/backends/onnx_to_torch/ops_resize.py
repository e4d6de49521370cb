"""Resize (and Upsample, its older form), GridSample and AffineGrid.

Follows the ONNX operator specs (``onnx/defs/tensor/defs.py``, ``onnx/defs/math/defs.py``
for AffineGrid). Resize works one axis at a time: nearest picks a source index per output
index (onnxruntime's float32 arithmetic and rounding, bit for bit); linear and cubic
multiply by a matrix of interpolation weights per axis, which is what onnxruntime's
separable kernels compute, antialiasing and ``exclude_outside`` included.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import Args, Node, Step
from mlpi.core.contract.errors import ModelError

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


def _source_coordinates(in_len: int, out_len: int, scale: float, coordinate: str,
                        roi: tuple[float, float]) -> np.ndarray:
    """The input coordinate of each output index along one axis (float32, as onnxruntime)."""
    f32 = np.float32
    x = np.arange(out_len, dtype=np.float32)
    s = f32(scale)
    if coordinate == "asymmetric":
        return x / s
    if coordinate == "half_pixel":
        return (x + f32(0.5)) / s - f32(0.5)
    if coordinate == "half_pixel_symmetric":
        adjustment = f32(out_len) / (s * f32(in_len))
        offset = f32(in_len) / f32(2) * (f32(1) - adjustment)
        return offset + (x + f32(0.5)) / s - f32(0.5)
    if coordinate == "pytorch_half_pixel":
        return (x + f32(0.5)) / s - f32(0.5) if out_len > 1 else np.zeros_like(x)
    if coordinate == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / s
    if coordinate == "align_corners":
        return np.zeros_like(x) if out_len == 1 else x * f32(in_len - 1) / f32(out_len - 1)
    start, end = f32(roi[0]), f32(roi[1])  # tf_crop_and_resize
    if out_len == 1:
        return np.full_like(x, f32(0.5) * (start + end) * f32(in_len - 1))
    return start * f32(in_len - 1) + x * (end - start) * f32(in_len - 1) / f32(out_len - 1)


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """The cubic convolution kernel with coefficient ``a`` at distances ``t``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=256)  # the same shapes every call: computed once
def _interpolation_weights(in_len: int, out_len: int, scale: float, coordinate: str, roi: tuple[float, float],
                           mode: str, cubic_a: float, exclude_outside: bool, antialias: bool
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(weights [out_len, in_len] in float64, outside [out_len]): each output as a weighted sum of
    inputs along one axis, and which outputs fall outside the input (tf_crop_and_resize)."""
    coords = _source_coordinates(in_len, out_len, scale, coordinate, roi).astype(np.float64)
    weights = np.zeros((out_len, in_len), dtype=np.float64)
    outside = (coords < 0) | (coords > in_len - 1) if coordinate == "tf_crop_and_resize" else np.zeros(out_len, bool)
    if antialias and scale < 1.0:
        # the kernel stretched by 1/scale over the taps around floor(c), edge taps repeated,
        # normalised to sum 1 (onnx's reference and onnxruntime compute it so)
        reach = 1.0 if mode == "linear" else 2.0
        first = math.floor(-reach / scale) + 1
        offsets = np.arange(first, 2 - first)
        for o in range(out_len):
            base = math.floor(coords[o])
            dist = (offsets - (coords[o] - base)) * scale
            w = np.clip(1.0 - np.abs(dist), 0.0, 1.0) if mode == "linear" else _cubic(dist, cubic_a)
            w = w / w.sum()
            for tap, weight in zip(np.clip(base + offsets, 0, in_len - 1), w):
                weights[o, tap] += weight
        weights.flags.writeable = False
        outside.flags.writeable = False
        return weights, outside
    for o in range(out_len):
        c = coords[o]
        if mode == "linear":
            c = min(max(c, 0.0), in_len - 1.0)
            lo = min(int(c), in_len - 1)
            hi = min(lo + 1, in_len - 1)
            if lo == hi:
                weights[o, lo] = 1.0
            else:
                weights[o, lo] += hi - c
                weights[o, hi] += c - lo
            continue
        base = math.floor(c)
        frac = c - base
        taps = np.arange(base - 1, base + 3)
        w = _cubic(np.array([frac + 1, frac, 1 - frac, 2 - frac]), cubic_a)
        valid = (taps >= 0) & (taps < in_len)
        if exclude_outside:
            w = np.where(valid, w, 0.0)
            w = w / w.sum() if w.sum() != 0 else w
        for tap, weight in zip(np.clip(taps, 0, in_len - 1), w):
            weights[o, tap] += weight
    return weights, outside


_MODES = ("nearest", "linear", "cubic")


def _resize(n: Node) -> Step:
    legacy = n.proto.op_type == "Upsample" or n.opset < 11
    mode = n.attr("mode", "nearest")
    if mode == "bilinear" and legacy:
        mode = "linear"
    if mode not in _MODES:
        raise n.unsupported(f"has mode={mode}")
    coordinate = "asymmetric" if legacy else n.attr("coordinate_transformation_mode", "half_pixel")
    modes = _COORDINATE_MODES if mode == "nearest" else (*_COORDINATE_MODES, "half_pixel_symmetric", "tf_crop_and_resize")
    if coordinate not in modes:
        raise n.unsupported(f"has coordinate_transformation_mode={coordinate} with mode={mode}")
    nearest = "floor" if legacy else n.attr("nearest_mode", "round_prefer_floor")
    if nearest not in _NEAREST_MODES:
        raise n.unsupported(f"has nearest_mode={nearest}")
    exclude_outside = bool(n.attr("exclude_outside", 0))
    antialias = bool(n.attr("antialias", 0))
    if mode == "nearest" and (exclude_outside or antialias):
        raise n.unsupported("has exclude_outside or antialias with mode=nearest")
    cubic_a = float(n.attr("cubic_coeff_a", -0.75))
    extrapolation = float(n.attr("extrapolation_value", 0.0))
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise n.unsupported(f"has keep_aspect_ratio_policy={policy}")
    axes_attr = n.attr("axes")
    if n.proto.op_type == "Upsample" and n.opset < 9:
        static_scales = [float(v) for v in n.attr("scales")]
        scales_of: Callable[[Args], list[float] | None] = lambda a: static_scales
        sizes_of: Callable[[Args], list[int] | None] = lambda a: None
        roi_of: Callable[[Args], list[float] | None] = lambda a: None
    elif legacy:
        scales_of, sizes_of, roi_of = n.floats_input(1), (lambda a: None), (lambda a: None)
    else:
        roi_of, scales_of, sizes_of = n.floats_input(1), n.floats_input(2), n.ints_input(3)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        rank = x.dim()
        axes = [ax + rank if ax < 0 else ax for ax in axes_attr] if axes_attr else list(range(rank))
        scales, sizes = scales_of(a) or None, sizes_of(a) or None
        if (scales is None) == (sizes is None):
            raise ModelError(f"Resize node '{n.name}' needs exactly one of scales and sizes")
        given = scales if scales is not None else sizes
        if len(given) != len(axes):
            raise ModelError(f"Resize node '{n.name}' has {len(given)} scales or sizes for {len(axes)} axes")
        roi = roi_of(a) or []
        if coordinate == "tf_crop_and_resize" and len(roi) != 2 * len(axes):
            raise ModelError(f"Resize node '{n.name}' has {len(roi)} roi values for {len(axes)} axes")
        plan: list[tuple[int, int, int, float]] = []
        if sizes is not None and policy != "stretch":
            ratios = [float(np.float32(size) / np.float32(int(x.shape[axis]))) for axis, size in zip(axes, sizes)]
            ratio = min(ratios) if policy == "not_larger" else max(ratios)
            for axis in axes:
                in_len = int(x.shape[axis])
                plan.append((axis, in_len, math.floor(float(np.float32(ratio) * np.float32(in_len)) + 0.5), ratio))
        else:
            for axis, value in zip(axes, given):
                in_len = int(x.shape[axis])
                if sizes is not None:
                    out_len = int(value)
                    scale = 1.0 if in_len == 0 else float(np.float32(out_len) / np.float32(in_len))
                else:
                    scale = float(np.float32(value))
                    if scale <= 0:
                        raise ModelError(f"Resize node '{n.name}' has scale {value}")
                    out_len = int(np.float32(scale) * np.float32(in_len))
                plan.append((axis, in_len, out_len, scale))
        if mode != "nearest" and not x.is_floating_point():
            raise n.unsupported(f"has mode={mode} on {x.dtype} input")
        outside_any = None
        for k, (axis, in_len, out_len, scale) in enumerate(plan):
            if mode == "nearest":
                if out_len == in_len and scale == 1.0:
                    continue
                index = _nearest_indices(in_len, out_len, scale, coordinate, nearest)
                x = x.index_select(axis, torch.from_numpy(index).to(x.device))
                continue
            if out_len == in_len and scale == 1.0 and coordinate != "tf_crop_and_resize":
                continue
            span = (roi[k], roi[len(axes) + k]) if coordinate == "tf_crop_and_resize" else (0.0, 1.0)
            weights, outside = _interpolation_weights(in_len, out_len, scale, coordinate, span, mode, cubic_a,
                                                      exclude_outside, antialias)
            w = torch.tensor(weights, device=x.device, dtype=x.dtype)
            x = (x.movedim(axis, -1) @ w.t()).movedim(-1, axis)
            if outside.any():
                shape = [1] * rank
                shape[axis] = out_len
                mask = torch.tensor(outside, device=x.device).reshape(shape)
                outside_any = mask if outside_any is None else outside_any | mask
        if outside_any is not None:
            x = x.masked_fill(outside_any, extrapolation)
        return x

    return run


_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
               "bicubic": "bicubic"}


def _grid_sample(n: Node) -> Step:
    mode = n.attr("mode", "linear" if n.opset >= 20 else "bilinear")
    padding = n.attr("padding_mode", "zeros")
    align = bool(n.attr("align_corners", 0))
    if mode not in _GRID_MODES:
        raise n.unsupported(f"has mode={mode!r}")
    if padding not in ("zeros", "border", "reflection"):
        raise n.unsupported(f"has padding_mode={padding!r}")

    def run(a: Args) -> torch.Tensor:
        x, grid = a[0], a[1]
        if x.dim() not in (4, 5) or (x.dim() == 5 and _GRID_MODES[mode] == "bicubic"):
            raise n.unsupported(f"samples a rank-{x.dim()} input with mode={mode}")
        return F.grid_sample(x, grid.to(x.dtype), mode=_GRID_MODES[mode], padding_mode=padding, align_corners=align)

    return run


def _affine_grid(n: Node) -> Step:
    align = bool(n.attr("align_corners", 0))
    size_of = n.ints_input(1)

    def run(a: Args) -> torch.Tensor:
        size = size_of(a) or []
        if len(size) not in (4, 5):
            raise n.unsupported(f"makes a grid for a rank-{len(size)} size")
        return F.affine_grid(a[0], size, align_corners=align)

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "Resize": _resize,
    "Upsample": _resize,
    "GridSample": _grid_sample,
    "AffineGrid": _affine_grid,
}
