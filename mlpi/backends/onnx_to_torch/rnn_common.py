"""What the recurrent operators share: their directions, activations and reversing a batch of
sequences within their lengths (ONNX ``onnx/defs/rnn/defs.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node
from mlpi.core.contract.errors import ModelError

DIRECTIONS = ("forward", "reverse", "bidirectional")


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` [seq, batch, ...] with each batch entry's first ``lengths[b]`` steps in reverse order
    (the steps after them stay where they are)."""
    seq = x.shape[0]
    t = torch.arange(seq, device=x.device).unsqueeze(1)
    lens = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(0, index.reshape(seq, -1, *([1] * (x.dim() - 2))).expand_as(x))


def sequence_lengths(n: Node, a: Args, batch: int, seq: int) -> torch.Tensor | None:
    """The node's sequence_lens (input 4) on the CPU as int64, checked to give one length in
    [0, seq] per batch entry; None where it is absent or every sequence is full."""
    lengths = a[4] if len(a) > 4 else None
    if lengths is None:
        return None
    lengths = lengths.detach().reshape(-1).to(device="cpu", dtype=torch.int64)
    if lengths.shape[0] != batch or bool(((lengths < 0) | (lengths > seq)).any()):
        raise ModelError(f"{n.proto.op_type} node '{n.name}' got sequence_lens {lengths.tolist()} for batch {batch}, "
                         f"sequence length {seq}: each must be in [0, {seq}]")
    return None if bool((lengths == seq).all()) else lengths


def activation(name: str, alpha: float | None, beta: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """One of the activations ONNX's recurrent operators name, with its alpha and beta."""
    key = name.lower()
    if key == "sigmoid":
        return torch.sigmoid
    if key == "tanh":
        return torch.tanh
    if key == "relu":
        return torch.relu
    if key == "leakyrelu":
        a = 0.01 if alpha is None else alpha
        return lambda x: torch.where(x >= 0, x, a * x)
    if key == "thresholdedrelu":
        a = 1.0 if alpha is None else alpha
        return lambda x: torch.where(x > a, x, torch.zeros_like(x))
    if key == "scaledtanh":
        a, b = (1.0 if alpha is None else alpha), (1.0 if beta is None else beta)
        return lambda x: a * torch.tanh(b * x)
    if key == "hardsigmoid":
        a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
        return lambda x: torch.clamp(a * x + b, 0, 1)
    if key == "elu":
        a = 1.0 if alpha is None else alpha
        return lambda x: torch.where(x > 0, x, a * torch.expm1(x))
    if key == "softsign":
        return lambda x: x / (1 + x.abs())
    if key == "softplus":
        return torch.nn.functional.softplus
    if key == "affine":
        a, b = (1.0 if alpha is None else alpha), (0.0 if beta is None else beta)
        return lambda x: a * x + b
    raise KeyError(name)


#: The activations that take an alpha, and those that also take a beta.
_TAKE_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_TAKE_BETA = {"affine", "scaledtanh", "hardsigmoid"}


def activations(n: Node, defaults: list[str], dirs: int) -> list[list[Callable[[torch.Tensor], torch.Tensor]]]:
    """Per direction, the node's activation functions (its attribute, else the defaults).
    activation_alpha and activation_beta are consumed in order by the functions that take
    one (as onnxruntime reads them): [LeakyRelu, Tanh, Elu] with alphas [a, b] gives LeakyRelu
    a and Elu b; a function left without one has its operator's default."""
    names = n.attr("activations")
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in names] if names else defaults * dirs
    alphas = list(n.attr("activation_alpha") or [])
    betas = list(n.attr("activation_beta") or [])
    per = len(defaults)
    if len(names) != per * dirs:
        raise n.error(f"has {len(names)} activations for {dirs} direction(s) of {per}")
    fns = []
    for name in names:
        key = name.lower()
        alpha = alphas.pop(0) if key in _TAKE_ALPHA and alphas else None
        beta = betas.pop(0) if key in _TAKE_BETA and betas else None
        try:
            fns.append(activation(name, alpha, beta))
        except KeyError:
            raise n.unsupported(f"has activation {name!r}") from None
    return [fns[d * per : (d + 1) * per] for d in range(dirs)]
