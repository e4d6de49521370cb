"""Loss operators: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Follows the ONNX operator specs (``onnx/defs/math/defs.py``): a target equal to
``ignore_index`` contributes nothing, to the loss or to the weight total that ``mean``
divides by; a class weight scales its targets' losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import Args, Node, Step

_REDUCTIONS = ("none", "sum", "mean")


def _nll(log_prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore: int | None,
         reduction: str) -> torch.Tensor:
    target = target.to(torch.int64)
    classes = int(log_prob.shape[1])
    if ignore is None:
        ignore_index = -(2**62)  # a target no tensor holds: nothing is ignored
    else:
        ignore_index = ignore
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        raise ValueError(f"a target is outside [0, {classes})")
    w = None if weight is None else weight.to(log_prob.dtype)
    return F.nll_loss(log_prob, target, weight=w, ignore_index=ignore_index, reduction=reduction)


def _negative_log_likelihood(n: Node) -> Step:
    reduction = n.attr("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise n.unsupported(f"has reduction={reduction!r}")
    ignore = n.attr("ignore_index")

    def run(a: Args) -> torch.Tensor:
        weight = a[2] if len(a) > 2 else None
        return _nll(a[0], a[1], weight, None if ignore is None else int(ignore), reduction)

    return run


def _softmax_cross_entropy(n: Node) -> Step:
    reduction = n.attr("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise n.unsupported(f"has reduction={reduction!r}")
    ignore = n.attr("ignore_index")

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
        scores = a[0]
        weight = a[2] if len(a) > 2 else None
        log_prob = torch.log_softmax(scores, dim=1)
        loss = _nll(log_prob, a[1], weight, None if ignore is None else int(ignore), reduction)
        return loss, log_prob

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "NegativeLogLikelihoodLoss": _negative_log_likelihood,
    "SoftmaxCrossEntropyLoss": _softmax_cross_entropy,
}
