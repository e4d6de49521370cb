"""Operators that reduce or scan along axes: the Reduce* family, ArgMax/ArgMin, CumSum and
CumProd, Softmax/LogSoftmax/Hardmax, TopK, Einsum, Det.

Follows the ONNX operator specs (``onnx/defs/reduction/defs.py``, ``onnx/defs/math/defs.py``):
axes move from an attribute to input 1 (ReduceSum at opset 13, the others at 18); a
reduction over an empty set gives its identity (0 for sums, 1 for products, -inf for max
and log-sum-exp, +inf for min), as onnxruntime gives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step, axis_of
from mlpi.backends.onnx_to_torch.ops_shape import axes_reader
from mlpi.core.contract.errors import ModelError


def _extreme(x: torch.Tensor, largest: bool) -> float | int | bool:
    """The identity of max (``largest``) or min over ``x``'s type."""
    if x.dtype == torch.bool:
        return not largest
    if x.is_floating_point():
        return -math.inf if largest else math.inf
    info = torch.iinfo(x.dtype)
    return info.min if largest else info.max


def _reduce_all(kind: str, x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    empty = any(x.shape[ax] == 0 for ax in axes)
    if kind in ("max", "min"):
        if empty:
            shape = [1 if ax in axes else s for ax, s in enumerate(x.shape)]
            out = torch.full(shape, _extreme(x, kind == "max"), dtype=x.dtype, device=x.device)
            return out if keep else out.reshape([s for ax, s in enumerate(x.shape) if ax not in axes])
        return x.amax(dim=axes, keepdim=keep) if kind == "max" else x.amin(dim=axes, keepdim=keep)
    if kind == "mean":
        if x.is_floating_point():
            return x.mean(dim=axes, keepdim=keep)
        count = math.prod(x.shape[ax] for ax in axes)
        return torch.div(x.sum(dim=axes, keepdim=keep, dtype=x.dtype), count, rounding_mode="trunc").to(x.dtype)
    if kind == "sum":
        return x.sum(dim=axes, keepdim=keep, dtype=x.dtype)
    if kind == "prod":
        out = x
        for ax in sorted(axes, reverse=True):
            out = out.prod(dim=ax, keepdim=True, dtype=x.dtype)
        return out if keep else out.reshape([s for ax, s in enumerate(x.shape) if ax not in axes])
    if kind == "sum_square":
        return (x * x).sum(dim=axes, keepdim=keep, dtype=x.dtype)
    if kind == "l1":
        return x.abs().sum(dim=axes, keepdim=keep, dtype=x.dtype)
    if kind == "l2":
        if not x.is_floating_point():
            return torch.sqrt((x * x).sum(dim=axes, keepdim=keep).to(torch.float64)).to(x.dtype)
        return torch.sqrt((x * x).sum(dim=axes, keepdim=keep))
    if kind == "log_sum":
        return torch.log(x.sum(dim=axes, keepdim=keep))
    if kind == "log_sum_exp":
        if empty:
            return torch.log(x.exp().sum(dim=axes, keepdim=keep))
        return torch.logsumexp(x, dim=axes, keepdim=keep)
    raise AssertionError(kind)


def _reduce(kind: str, axes_input_from: int = 18) -> Callable[[Node], Step]:
    """A Reduce op; its axes move from an attribute to input 1 at ``axes_input_from``
    (ReduceSum at opset 13, the others at 18)."""

    def build(n: Node) -> Step:
        axes_of = axes_reader(n, axes_input_from)
        keep = bool(n.attr("keepdims", 1))
        noop = bool(n.attr("noop_with_empty_axes", 0))

        def run(a: Args) -> torch.Tensor:
            x, axes = a[0], axes_of(a)
            if not axes:
                if noop:
                    return x
                axes = list(range(x.dim()))
            axes = sorted({axis_of(ax, x.dim()) for ax in axes})
            if x.dim() == 0:
                return _reduce_all(kind, x.reshape(1), [0], False)
            return _reduce_all(kind, x, axes, keep)

        return run

    return build


def _arg(kind: str) -> Callable[[Node], Step]:
    def build(n: Node) -> Step:
        axis = int(n.attr("axis", 0))
        keep = bool(n.attr("keepdims", 1))
        last = bool(n.attr("select_last_index", 0))
        fn = torch.argmax if kind == "max" else torch.argmin

        def run(a: Args) -> torch.Tensor:
            x = a[0]
            k = axis_of(axis, x.dim())
            if x.dtype == torch.bool:
                x = x.to(torch.uint8)
            if last:
                return x.shape[k] - 1 - fn(x.flip(k), dim=k, keepdim=keep)
            return fn(x, dim=k, keepdim=keep)

        return run

    return build


def _cumulative(kind: str) -> Callable[[Node], Step]:
    def build(n: Node) -> Step:
        exclusive, reverse = bool(n.attr("exclusive", 0)), bool(n.attr("reverse", 0))
        axis_of_input = n.ints_input(1)

        def run(a: Args) -> torch.Tensor:
            x = a[0]
            axes = axis_of_input(a)
            if not axes or len(axes) != 1:
                raise ModelError(f"{n.proto.op_type} node '{n.name}' needs its axis as one integer")
            k = axis_of(axes[0], x.dim())
            if reverse:
                x = x.flip(k)
            if exclusive:
                identity = torch.zeros if kind == "sum" else torch.ones
                head = identity((*x.shape[:k], 1, *x.shape[k + 1 :]), dtype=x.dtype, device=x.device)
                x = torch.cat([head, x.narrow(k, 0, max(x.shape[k] - 1, 0))], dim=k)
            out = torch.cumsum(x, k, dtype=x.dtype) if kind == "sum" else torch.cumprod(x, k, dtype=x.dtype)
            return out.flip(k) if reverse else out

        return run

    return build


def _softmax(kind: str) -> Callable[[Node], Step]:
    def build(n: Node) -> Step:
        if kind == "hardmax":
            def fn(x: torch.Tensor, dim: int) -> torch.Tensor:
                return torch.zeros_like(x).scatter_(dim, x.argmax(dim, keepdim=True), 1)
        else:
            fn = torch.softmax if kind == "softmax" else torch.log_softmax  # type: ignore[assignment]
        if n.opset >= 13:
            axis = int(n.attr("axis", -1))
            return lambda a: fn(a[0], axis_of(axis, a[0].dim()))
        axis = int(n.attr("axis", 1))

        def old(a: Args) -> torch.Tensor:  # before opset 13: over the input coerced to 2-d at axis
            x = a[0]
            k = axis_of(axis, x.dim())
            return fn(x.reshape(math.prod(x.shape[:k]), -1), 1).reshape(x.shape)

        return old

    return build


def sorted_topk(x: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
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


def _topk(n: Node) -> Step:
    axis = int(n.attr("axis", -1))
    largest = bool(n.attr("largest", 1))
    # sorted=0 leaves the order to the runtime: sorted output is one valid answer.
    if n.opset < 10:
        k_attr = int(n.attr("k"))
        k_of: Callable[[Args], int] = lambda a: k_attr
    else:
        reader = n.ints_input(1)

        def k_of(a: Args) -> int:
            k = reader(a)
            if not k or len(k) != 1:
                raise ModelError(f"TopK node '{n.name}' needs K as a single integer")
            return k[0]

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
        x, k = a[0], k_of(a)
        dim = axis_of(axis, x.dim())
        if not 0 <= dim < x.dim():
            raise ModelError(f"TopK node '{n.name}' has axis {axis} for a rank-{x.dim()} input")
        if not 0 <= k <= x.shape[dim]:
            raise ModelError(f"TopK node '{n.name}' asks for k={k} of {x.shape[dim]} elements")
        values, indices = sorted_topk(x.movedim(dim, -1), k, largest)
        return values.movedim(-1, dim), indices.movedim(-1, dim)

    return run


def _einsum(n: Node) -> Step:
    equation = n.attr("equation").replace(" ", "")

    def run(a: Args) -> torch.Tensor:
        if all(x.is_floating_point() for x in a):
            return torch.einsum(equation, *a)
        wide = [x.to(torch.int64) for x in a]
        return torch.einsum(equation, *wide).to(a[0].dtype)

    return run


def _det(n: Node) -> Step:
    return lambda a: torch.linalg.det(a[0])


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum", 13),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"),
    "ReduceSumSquare": _reduce("sum_square"),
    "ReduceL1": _reduce("l1"),
    "ReduceL2": _reduce("l2"),
    "ReduceLogSum": _reduce("log_sum"),
    "ReduceLogSumExp": _reduce("log_sum_exp"),
    "ArgMax": _arg("max"),
    "ArgMin": _arg("min"),
    "CumSum": _cumulative("sum"),
    "CumProd": _cumulative("prod"),
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "Hardmax": _softmax("hardmax"),
    "TopK": _topk,
    "Einsum": _einsum,
    "Det": _det,
}
