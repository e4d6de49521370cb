"""Operators that move, select or make values without arithmetic: shapes, slicing, padding,
gathers and scatters, constants of a shape.

Follows the ONNX operator specs (``onnx/defs/tensor/defs.py``): negative axes and indices
count from the end, shapes broadcast as numpy's do, and reductions of duplicate scatter
indices apply in index order, as onnxruntime's CPU kernels apply them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import Args, Node, Step, axis_of, float_type
from mlpi.core.contract.errors import ModelError


def _flatten(n: Node) -> Step:
    axis = int(n.attr("axis", 1))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        k = axis_of(axis, x.dim())
        return x.reshape(math.prod(x.shape[:k]), -1) if k > 0 else x.reshape(1, -1)

    return run


def _reshape(n: Node) -> Step:
    shape_of = n.ints_input(1) if n.opset >= 5 else (lambda a: list(n.attr("shape")))
    allowzero = bool(n.attr("allowzero", 0))

    def run(a: Args) -> torch.Tensor:
        x, shape = a[0], shape_of(a)
        assert shape is not None
        target = [int(x.shape[i]) if s == 0 and not allowzero else s for i, s in enumerate(shape)]
        return x.reshape(target)

    return run


def _slice(n: Node) -> Step:
    if n.opset < 10:
        starts_of = lambda a: list(n.attr("starts"))
        ends_of = lambda a: list(n.attr("ends"))
        axes_attr = n.attr("axes")
        axes_of = lambda a: list(axes_attr) if axes_attr is not None else None
        steps_of = lambda a: None
    else:
        starts_of, ends_of, axes_of, steps_of = (n.ints_input(i) for i in (1, 2, 3, 4))

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        starts, ends = starts_of(a), ends_of(a)
        axes = axes_of(a) or list(range(len(starts)))
        steps = steps_of(a) or [1] * len(starts)
        index: list[Any] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = axis_of(axis, x.dim())
            size = int(x.shape[axis])
            if step == 0:
                raise ModelError(f"Slice node '{n.name}' has a step of 0")
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


def _transpose(n: Node) -> Step:
    perm = n.attr("perm")
    return lambda a: a[0].permute(*(perm if perm is not None else reversed(range(a[0].dim()))))


def _concat(n: Node) -> Step:
    axis = int(n.attr("axis"))
    return lambda a: torch.cat([x for x in a if x is not None], dim=axis)


def axes_reader(n: Node, input_from: int) -> Callable[[Args], list[int] | None]:
    """Axes given as an attribute (older opsets) or as input 1 (newer ones)."""
    if n.opset >= input_from:
        return n.ints_input(1)
    axes = n.attr("axes")
    return lambda a: list(axes) if axes is not None else None


def _squeeze(n: Node) -> Step:
    axes_of = axes_reader(n, 13)

    def run(a: Args) -> torch.Tensor:
        axes = axes_of(a)
        if axes is None:
            return a[0].squeeze()
        return a[0].squeeze(tuple(axis_of(ax, a[0].dim()) for ax in axes)) if axes else a[0]

    return run


def _unsqueeze(n: Node) -> Step:
    axes_of = axes_reader(n, 13)

    def run(a: Args) -> torch.Tensor:
        axes = axes_of(a)
        assert axes is not None
        rank = a[0].dim() + len(axes)
        x = a[0]
        for ax in sorted(axis_of(ax, rank) for ax in axes):
            x = x.unsqueeze(ax)
        return x

    return run


def _wrap(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


def _gather(n: Node) -> Step:
    axis = int(n.attr("axis", 0))

    def run(a: Args) -> torch.Tensor:
        x, idx = a[0], a[1]
        k = axis_of(axis, x.dim())
        idx = _wrap(idx, x.shape[k])
        if idx.dim() == 0:
            return x.select(k, int(idx))
        out = x.index_select(k, idx.reshape(-1))
        return out.reshape(*x.shape[:k], *idx.shape, *x.shape[k + 1 :])

    return run


def _gather_elements(n: Node) -> Step:
    axis = int(n.attr("axis", 0))

    def run(a: Args) -> torch.Tensor:
        x, idx = a[0], a[1]
        k = axis_of(axis, x.dim())
        return torch.gather(x, k, _wrap(idx, x.shape[k]))

    return run


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_elements(n: Node) -> Step:
    axis = int(n.attr("axis", 0))
    reduction = n.attr("reduction", "none")
    if reduction != "none" and reduction not in _SCATTER_REDUCE:
        raise n.unsupported(f"has reduction={reduction!r}")

    def run(a: Args) -> torch.Tensor:
        x, idx, updates = a[0], a[1], a[2]
        k = axis_of(axis, x.dim())
        idx = _wrap(idx, x.shape[k])
        if reduction == "none":
            return torch.scatter(x, k, idx, updates.to(x.dtype))
        return torch.scatter_reduce(x, k, idx, updates.to(x.dtype), _SCATTER_REDUCE[reduction], include_self=True)

    return run


def _shape(n: Node) -> Step:
    start, end = n.attr("start", 0), n.attr("end")

    def run(a: Args) -> torch.Tensor:
        return torch.tensor(list(a[0].shape)[start:end], dtype=torch.int64, device=a[0].device)

    return run


def _size(n: Node) -> Step:
    return lambda a: torch.tensor(a[0].numel(), dtype=torch.int64, device=a[0].device)


def _constant_of_shape(n: Node) -> Step:
    from mlpi.backends.onnx_to_torch.module import tensor_of

    proto = n.attrs.get("value")
    value = tensor_of(proto).reshape(-1) if proto is not None else torch.zeros(1, dtype=torch.float32)
    if value.numel() != 1:
        raise n.error(f"has a value of {value.numel()} elements; it must have one")
    if value.dtype == torch.float32:
        value = value.to(n.float_dtype)
    shape_of = n.ints_input(0)

    def run(a: Args) -> torch.Tensor:
        shape = shape_of(a)
        device = a[0].device if a[0] is not None else None
        return torch.full(tuple(shape or []), value.item(), dtype=value.dtype, device=device)

    return run


def _expand(n: Node) -> Step:
    shape_of = n.ints_input(1)

    def run(a: Args) -> torch.Tensor:
        x, shape = a[0], shape_of(a)
        target = torch.broadcast_shapes(tuple(x.shape), tuple(shape or []))
        return x.expand(target)

    return run


def _tile(n: Node) -> Step:
    repeats_of = n.ints_input(1)

    def run(a: Args) -> torch.Tensor:
        x, repeats = a[0], repeats_of(a) or []
        if len(repeats) != x.dim():
            raise n.error(f"has {len(repeats)} repeats for a rank-{x.dim()} input")
        return x.repeat(*repeats) if repeats else x

    return run


def _trilu(n: Node) -> Step:
    upper = bool(n.attr("upper", 1))
    k_of = n.ints_input(1)

    def run(a: Args) -> torch.Tensor:
        x, k = a[0], (k_of(a) or [0])[0]
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            return x.clone()
        return torch.triu(x, k) if upper else torch.tril(x, k)

    return run


def _one_hot(n: Node) -> Step:
    axis = int(n.attr("axis", -1))

    def run(a: Args) -> torch.Tensor:
        indices, depth_t, values = a[0], a[1], a[2]
        depth = int(depth_t.reshape(-1)[0].item())
        idx = indices.to(torch.float64).floor().to(torch.int64) if indices.is_floating_point() else indices.to(torch.int64)
        idx = torch.where(idx < 0, idx + depth, idx)
        valid = (idx >= 0) & (idx < depth)
        hot = F.one_hot(torch.where(valid, idx, torch.zeros_like(idx)), depth).to(torch.bool) & valid.unsqueeze(-1)
        out = torch.where(hot, values[1], values[0])
        return out.movedim(-1, axis_of(axis, indices.dim() + 1))

    return run


def _depth_to_space(n: Node) -> Step:
    block = int(n.attr("blocksize"))
    mode = n.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise n.unsupported(f"has mode={mode!r}")

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        b, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(b, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(b, c // block**2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c // block**2, h * block, w * block)

    return run


def _space_to_depth(n: Node) -> Step:
    block = int(n.attr("blocksize"))
    mode = n.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise n.unsupported(f"has mode={mode!r}")
    order = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // block, block, w // block, block).permute(*order)
        return y.reshape(b, c * block * block, h // block, w // block)

    return run


def _eye_like(n: Node) -> Step:
    k = int(n.attr("k", 0))
    to = n.attr("dtype")
    dtype = float_type(n, int(to)) if to is not None else None

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        rows, cols = x.shape
        eye = torch.ones((rows, cols), dtype=torch.bool, device=x.device).triu(k).tril(k)
        return eye.to(dtype or x.dtype)

    return run


def _compress(n: Node) -> Step:
    axis = n.attr("axis")

    def run(a: Args) -> torch.Tensor:
        x, cond = a[0], a[1].reshape(-1).to(torch.bool)
        if axis is None:
            x = x.reshape(-1)
            k = 0
        else:
            k = axis_of(int(axis), x.dim())
        picked = torch.nonzero(cond[: x.shape[k]]).reshape(-1)
        return x.index_select(k, picked)

    return run


def _unique(n: Node) -> Step:
    """Unique as onnxruntime computes it, on the CPU in numpy: sorted=1 in ascending order,
    sorted=0 in order of first occurrence."""
    keep_sorted = bool(n.attr("sorted", 1))
    axis = n.attr("axis")

    def run(a: Args) -> tuple[torch.Tensor, ...]:
        x = a[0]
        array = x.detach().cpu().numpy()
        k = None if axis is None else axis_of(int(axis), x.dim())
        if k is None:
            array = array.reshape(-1)
        values, first, inverse, counts = np.unique(array, return_index=True, return_inverse=True, return_counts=True,
                                                   axis=k)
        inverse = inverse.reshape(-1)
        if not keep_sorted:
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.shape[0])
            values = np.take(values, order, axis=0 if k is None else k)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        outs = (values, first, inverse, counts)
        return tuple(torch.from_numpy(np.ascontiguousarray(o if i == 0 else o.astype(np.int64))).to(x.device)
                     for i, o in enumerate(outs))

    return run


def _center_crop_pad(n: Node) -> Step:
    axes_attr = n.attr("axes")
    shape_of = n.ints_input(1)

    def run(a: Args) -> torch.Tensor:
        x, shape = a[0], shape_of(a) or []
        axes = [axis_of(ax, x.dim()) for ax in axes_attr] if axes_attr is not None else list(range(x.dim()))
        if len(axes) != len(shape):
            raise n.error(f"has {len(shape)} sizes for {len(axes)} axes")
        for axis, target in zip(axes, shape):
            size = int(x.shape[axis])
            if target < size:
                x = x.narrow(axis, (size - target) // 2, target)
            elif target > size:
                before = (target - size) // 2
                parts = [torch.zeros((*x.shape[:axis], before, *x.shape[axis + 1 :]), dtype=x.dtype, device=x.device), x,
                         torch.zeros((*x.shape[:axis], target - size - before, *x.shape[axis + 1 :]), dtype=x.dtype,
                                     device=x.device)]
                x = torch.cat(parts, dim=axis)
        return x

    return run


def _pad_indices(size: int, before: int, after: int, mode: str, device: Any) -> torch.Tensor:
    """Source index of each padded position along one axis, for edge, reflect and wrap."""
    pos = torch.arange(-before, size + after, device=device)
    if mode == "edge":
        return pos.clamp(0, size - 1)
    if mode == "wrap":
        return torch.remainder(pos, size)
    if size == 1:
        return torch.zeros_like(pos)
    period = 2 * (size - 1)  # reflect, repeated as numpy's pad repeats it
    folded = torch.remainder(pos, period)
    return torch.where(folded >= size, period - folded, folded)


def _pad(n: Node) -> Step:
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise n.unsupported(f"has mode={mode!r}")
    if n.opset < 11:
        static = list(n.attr("pads") or n.attr("paddings"))
        pads_of: Callable[[Args], list[int] | None] = lambda a: static
    else:
        pads_of = n.ints_input(1)
    axes_of = n.ints_input(3) if n.opset >= 18 else (lambda a: None)

    def run(a: Args) -> torch.Tensor:
        x, pads = a[0], pads_of(a)
        assert pads is not None
        rank = x.dim()
        axes = [axis_of(ax, rank) for ax in axes_of(a) or range(rank)]
        if len(pads) != 2 * len(axes):
            raise n.error(f"has {len(pads)} pads for {len(axes)} axes")
        value: Any = n.attr("value", 0.0)
        if n.opset >= 11 and len(a) > 2 and a[2] is not None and a[2].numel():
            value = a[2].reshape(-1)[0].item()
        begin = dict(zip(axes, pads[: len(axes)]))
        end = dict(zip(axes, pads[len(axes) :]))
        for axis in axes:  # negative pads crop first
            b, e = begin[axis], end[axis]
            if b < 0 or e < 0:
                size = int(x.shape[axis])
                lo, hi = max(-b, 0), size - max(-e, 0)
                x = x.narrow(axis, lo, max(hi - lo, 0))
        if mode == "constant":
            flat: list[int] = []
            for axis in reversed(range(rank)):
                flat += [max(begin.get(axis, 0), 0), max(end.get(axis, 0), 0)]
            if x.dtype == torch.bool:
                return F.pad(x.to(torch.uint8), flat, value=int(bool(value))).to(torch.bool)
            return F.pad(x, flat, value=value)
        for axis in axes:
            b, e = max(begin[axis], 0), max(end[axis], 0)
            if b or e:
                size = int(x.shape[axis])
                if size == 0:
                    raise n.error(f"pads an empty axis {axis} in mode {mode}")
                x = x.index_select(axis, _pad_indices(size, b, e, mode, x.device))
        return x

    return run


def _nonzero(n: Node) -> Step:
    def run(a: Args) -> torch.Tensor:
        x = a[0]
        if x.dim() == 0:  # as onnxruntime: a scalar counts as a 1-element vector
            x = x.reshape(1)
        return torch.nonzero(x).t().contiguous()

    return run


def _nd_index(idx: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The last axis of ONNX ND indices as one index tensor per data axis, negatives wrapped."""
    bounds = torch.tensor(list(shape), dtype=idx.dtype, device=idx.device)
    idx = torch.where(idx < 0, idx + bounds, idx)
    return tuple(idx.unbind(-1))


def _gathernd(n: Node) -> Step:
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


def _scatternd(n: Node) -> Step:
    reduction = n.attr("reduction", "none")
    if reduction != "none" and reduction not in _SCATTER_REDUCE:
        raise n.unsupported(f"has reduction={reduction!r}")

    def run(a: Args) -> torch.Tensor:
        data, idx, updates = a[0], a[1].to(torch.int64), a[2].to(a[0].dtype)
        k = int(idx.shape[-1])
        rows = idx.reshape(-1, k)
        updates = updates.reshape(rows.shape[0], *data.shape[k:])
        if reduction in ("none", "add"):
            out = data.clone()
            out.index_put_(_nd_index(rows, data.shape[:k]), updates, accumulate=reduction == "add")
            return out
        prefix = math.prod(data.shape[:k])
        strides = torch.tensor([math.prod(data.shape[j + 1 : k]) for j in range(k)], dtype=torch.int64, device=data.device)
        linear = (torch.stack(_nd_index(rows, data.shape[:k]), -1) * strides).sum(-1) if k else \
            torch.zeros(rows.shape[0], dtype=torch.int64, device=data.device)
        flat = data.reshape(prefix, -1)
        upd = updates.reshape(rows.shape[0], -1)
        out = flat.scatter_reduce(0, linear.unsqueeze(1).expand(-1, flat.shape[1]), upd, _SCATTER_REDUCE[reduction],
                                  include_self=True)
        return out.reshape(data.shape)

    return run


def _tensor_scatter(n: Node) -> Step:
    mode = n.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise n.unsupported(f"has mode={mode!r}")
    axis = int(n.attr("axis", -2))

    def run(a: Args) -> torch.Tensor:
        cache, update = a[0], a[1]
        k = axis_of(axis, cache.dim())
        batch, length, capacity = int(cache.shape[0]), int(update.shape[k]), int(cache.shape[k])
        starts = a[2].to(torch.int64).reshape(-1) if len(a) > 2 and a[2] is not None else \
            torch.zeros(batch, dtype=torch.int64, device=cache.device)
        positions = starts.reshape(-1, 1) + torch.arange(length, device=cache.device)  # [batch, length]
        if mode == "circular":
            positions = torch.remainder(positions, capacity)
        elif bool((positions >= capacity).any()):
            raise n.error(f"writes past the cache's {capacity} positions (linear mode)")
        # each write position, shaped [batch, 1.., length (on axis k), 1..] to run along the update
        index = positions.reshape(*(batch if j == 0 else (length if j == k else 1) for j in range(cache.dim())))
        index = index.expand(*update.shape)
        return cache.scatter(k, index, update.to(cache.dtype))

    return run


def _split(n: Node) -> Step:
    """Split along ``axis`` into the given sizes, else into equal parts (opset 18's
    ``num_outputs``: parts of ceil(size / n), the last one smaller)."""
    axis = int(n.attr("axis", 0))
    parts = len(n.proto.output)
    sizes_of = (lambda a: n.attr("split")) if n.opset < 13 else n.ints_input(1)

    def run(a: Args) -> tuple[torch.Tensor, ...]:
        x = a[0]
        dim = axis_of(axis, x.dim())
        if not 0 <= dim < x.dim():
            raise ModelError(f"Split node '{n.name}' has axis {axis} for a rank-{x.dim()} input")
        sizes = sizes_of(a)
        length = x.shape[dim]
        if sizes:
            sizes = [int(v) for v in sizes]
            if len(sizes) != parts or sum(sizes) != length or min(sizes) < 0:
                raise ModelError(f"Split node '{n.name}' splits {length} elements into {sizes} for {parts} outputs")
        elif n.opset >= 18 and n.attr("num_outputs") is not None:
            chunk = -(-length // parts)
            sizes = [min(chunk, max(length - k * chunk, 0)) for k in range(parts)]
        else:
            if length % parts:
                raise ModelError(f"Split node '{n.name}' cannot split {length} elements into {parts} equal parts")
            sizes = [length // parts] * parts
        return tuple(torch.split(x, sizes, dim=dim))

    return run


def _range(n: Node) -> Step:
    """Range as onnxruntime's CPU kernel computes it: ceil((limit - start) / delta) elements,
    counted in double (a float32 count can differ by one); a float range accumulates
    (``value += delta`` in the inputs' type) rather than computing start + i * delta, so its
    rounding is the kernel's too."""

    def run(a: Args) -> torch.Tensor:
        start, limit = a[0], a[1]
        delta = a[2] if len(a) > 2 and a[2] is not None else torch.ones((), dtype=start.dtype)
        if start.numel() != 1 or limit.numel() != 1 or delta.numel() != 1:
            raise ModelError(f"Range node '{n.name}' needs scalar start, limit and delta; got shapes "
                             f"{tuple(start.shape)}, {tuple(limit.shape)}, {tuple(delta.shape)}")
        if start.is_floating_point():
            dtype = start.dtype
            np_type = np.float64 if dtype == torch.float64 else np.float32  # float16/bfloat16: computed in float32
            s, l, d = (np.array(t.detach().reshape(()).to(torch.float64).cpu().item(), dtype=np_type)
                       for t in (start, limit, delta))
            if d == 0:
                raise ModelError(f"Range node '{n.name}' has delta 0")
            count = max(math.ceil((float(l) - float(s)) / float(d)), 0)
            values = np.full(count, d, dtype=np_type)
            if count:
                values[0] = s
            return torch.from_numpy(np.add.accumulate(values, dtype=np_type)).to(dtype=dtype, device=start.device)
        s, l, d = (int(t.reshape(())) for t in (start, limit, delta))
        if d == 0:
            raise ModelError(f"Range node '{n.name}' has delta 0")
        count = max(-((s - l) // d), 0)  # exact ceil((l - s) / d)
        return torch.arange(s, s + count * d, d, dtype=start.dtype, device=start.device)[:count]

    return run


def _dropout(n: Node) -> Step:
    """Dropout at inference (training_mode absent or false, or a ratio of 0): the input, and
    a mask of all True."""

    def run(a: Args) -> Any:
        x = a[0]
        training = len(a) > 2 and a[2] is not None and bool(a[2].reshape(-1)[0])
        ratio = float(a[1].reshape(-1)[0]) if len(a) > 1 and a[1] is not None else float(n.attr("ratio", 0.5))
        if training and ratio != 0.0:
            raise n.unsupported("runs in training mode with a ratio above 0 (random draws)")
        if n.wants_output(1):
            return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)
        return x

    return run


def _col2im(n: Node) -> Step:
    dilations, pads, strides = n.attr("dilations"), n.attr("pads"), n.attr("strides")
    image_of, block_of = n.ints_input(1), n.ints_input(2)

    def run(a: Args) -> torch.Tensor:
        image, block = image_of(a) or [], block_of(a) or []
        if len(image) != 2:
            raise n.unsupported(f"has {len(image)} spatial dimensions (only 2)")
        pad = list(pads) if pads else [0, 0, 0, 0]
        if pad[0] != pad[2] or pad[1] != pad[3]:
            raise n.unsupported("has asymmetric pads")
        return F.fold(a[0], image, block, dilation=list(dilations or [1, 1]), padding=pad[:2],
                      stride=list(strides or [1, 1]))

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Slice": _slice,
    "Transpose": _transpose,
    "Concat": _concat,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gathernd,
    "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements,
    "ScatterND": _scatternd,
    "TensorScatter": _tensor_scatter,
    "Shape": _shape,
    "Size": _size,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Trilu": _trilu,
    "OneHot": _one_hot,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "EyeLike": _eye_like,
    "Compress": _compress,
    "Unique": _unique,
    "CenterCropPad": _center_crop_pad,
    "Pad": _pad,
    "NonZero": _nonzero,
    "Split": _split,
    "Range": _range,
    "Dropout": _dropout,
    "Col2Im": _col2im,
}
