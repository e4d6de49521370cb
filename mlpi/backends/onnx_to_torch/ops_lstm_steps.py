"""LSTM one step at a time, as onnxruntime's CPU kernel computes it: the ONNX LSTM wherever
torch's fused kernel cannot (peepholes, clip, input_forget, other activations), and
``com.microsoft::DynamicQuantizeLSTM``, the LSTM of onnxruntime's dynamic int8 quantisation.

Follows the ONNX LSTM spec (``onnx/defs/rnn/defs.py``) and onnxruntime's kernels
(``onnxruntime/core/providers/cpu/rnn/uni_directional_lstm.cc``, ``rnn_helpers.cc``,
``contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc``), in their order of operations:

- per direction, X·W for every step at once, then per step H·R added to it, the peepholes,
  then bias (Wb + Rb) and clip, then the activations; gates in ONNX's order i, o, f, c;
- ``sequence_lens``: a reverse direction runs over each sequence reversed within its length;
  a sequence's steps past its length leave its state as it was and give zeros in Y; a
  sequence of length 0 ends with zero states;
- DynamicQuantizeLSTM: W [dirs, I, 4H] and R [dirs, H, 4H] are int8 or uint8 with a scale and
  zero point per direction or per column. The float operand of each product is quantised to
  uint8 on the fly over all of its rows (X: every step up to the longest sequence; H: each
  step, in onnxruntime's row blocks, see :func:`recurrent_rows`) with min/max including 0,
  scale (max - min) / 255 and the zero point rounded half to even; the integer product is
  exact (float64, or float32 where no sum can pass 2**24) and scaled by the two scales in
  float32. The weights less their zero points and the scales are module buffers (float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step
from mlpi.backends.onnx_to_torch.ops_quant import dynamic_uint8
from mlpi.backends.onnx_to_torch.rnn_common import (
    DIRECTIONS,
    activations,
    reverse_within,
    sequence_lengths,
)
from mlpi.core.contract.errors import ModelError

Product = Callable[[torch.Tensor], torch.Tensor]
Activation = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Direction:
    """One direction's weights, as products and per-gate vectors (ONNX's gate order i, o, f, c)."""

    input_product: Product  # X [rows, I] -> [rows, 4H]
    recurrent_product: Product  # H [rows, H] -> [rows, 4H]
    bias: torch.Tensor | None  # Wb + Rb [4H]
    peepholes: torch.Tensor | None  # P [3H]: i, o, f
    f: Activation
    g: Activation
    h: Activation


def recurrent_rows(batch: int, hidden: int, threads: int) -> int:
    """The rows onnxruntime quantises H over together: it splits a batch of more than 4 (or of 2
    or more with hidden size <= 256) into one block per thread, else takes the batch whole."""
    if batch > 4 or (batch >= 2 and hidden <= 256):
        return -(-batch // max(1, threads))
    return max(1, batch)


def run_direction(x: torch.Tensor, lengths: torch.Tensor | None, h: torch.Tensor, c: torch.Tensor,
                  weights: Direction, reverse: bool, clip: float | None, input_forget: bool,
                  rows_per_block: int, zero_finished: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction over x [seq, batch, I] from states h, c [batch, H]: (Y [seq, batch, H], last
    h, last c). ``zero_finished``: a finished sequence's H enters the next product as zeros (as
    onnxruntime's does when Y is asked for: it reads H back from Y)."""
    seq, batch, hidden = int(x.shape[0]), int(x.shape[1]), int(h.shape[-1])
    steps = seq if lengths is None else int(lengths.max()) if batch else 0
    lens = None if lengths is None else lengths.to(x.device)
    if reverse:
        x = x.flip(0) if lens is None else reverse_within(x, lens)
    xw = weights.input_product(x[:steps].reshape(steps * batch, int(x.shape[2]))).reshape(steps, batch, 4 * hidden)
    ys = [torch.zeros_like(h)] * seq
    bounded: Activation = (lambda v: v) if clip is None else (lambda v: v.clamp(-clip, clip))
    p = weights.peepholes
    b = weights.bias
    for t in range(steps):
        gates = xw[t] + torch.cat([weights.recurrent_product(block) for block in h.split(rows_per_block)])
        i, o, f, g = gates.split(hidden, -1)
        if p is not None:
            i = i + p[:hidden] * c
            f = f + p[2 * hidden :] * c
        if b is not None:
            i, o, f, g = i + b[:hidden], o + b[hidden : 2 * hidden], f + b[2 * hidden : 3 * hidden], g + b[3 * hidden :]
        i = weights.f(bounded(i))
        f = 1 - i if input_forget else weights.f(bounded(f))
        g = weights.g(bounded(g))
        c_new = f * c + i * g
        if p is not None:
            o = o + p[hidden : 2 * hidden] * c_new
        o = weights.f(bounded(o))
        h_new = o * weights.h(c_new)
        if lens is None:
            h, c, ys[t] = h_new, c_new, h_new
            continue
        valid = (t < lens).reshape(-1, 1)
        ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        c = torch.where(valid, c_new, c)
        h = ys[t] if zero_finished else torch.where(valid, h_new, h)
    y = torch.stack(ys) if seq else x.new_zeros((0, batch, hidden))
    if lens is not None:
        empty = (lens == 0).reshape(-1, 1)
        last = (lens - 1).clamp(min=0).reshape(1, -1, 1).expand(1, batch, hidden)
        h = torch.where(empty, torch.zeros_like(h), y.gather(0, last)[0] if seq else h)
        c = torch.where(empty, torch.zeros_like(c), c)
    if reverse:
        y = y.flip(0) if lens is None else reverse_within(y, lens)
    return y, h, c


@dataclass(frozen=True)
class Attributes:
    """What an LSTM node's attributes ask of :func:`run_direction`."""

    direction: str
    dirs: int
    acts: list[list[Activation]]
    clip: float | None
    input_forget: bool


def attributes(n: Node) -> Attributes:
    direction = n.attr("direction", "forward")
    if direction not in DIRECTIONS:
        raise n.unsupported(f"has direction={direction}")
    dirs = 2 if direction == "bidirectional" else 1
    clip = n.attr("clip")
    return Attributes(direction, dirs, activations(n, ["Sigmoid", "Tanh", "Tanh"], dirs),
                      None if clip is None else float(clip), bool(int(n.attr("input_forget", 0))))


def run_lstm(n: Node, spec: Attributes, x: torch.Tensor, hidden_size: int, a: Args, directions: list[Direction],
             rows_per_block: Callable[[int, int], int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every direction of an LSTM over x [seq, batch, I] (layout 0), with ``a`` the node's
    inputs for sequence_lens (4), initial_h (5) and initial_c (6): (Y [seq, dirs, batch, H],
    Y_h, Y_c [dirs, batch, H])."""
    seq, batch = int(x.shape[0]), int(x.shape[1])
    hidden = hidden_size
    lengths = sequence_lengths(n, a, batch, seq)

    def state(i: int) -> torch.Tensor:
        value = a[i] if len(a) > i else None
        if value is None:
            return torch.zeros((spec.dirs, batch, hidden), dtype=x.dtype, device=x.device)
        if tuple(value.shape) != (spec.dirs, batch, hidden):
            raise ModelError(f"{n.proto.op_type} node '{n.name}' got an initial state of shape {tuple(value.shape)} "
                             f"for {spec.dirs} direction(s), batch {batch}, hidden size {hidden}")
        return value.to(x.dtype)

    h0, c0 = state(5), state(6)
    block = rows_per_block(batch, hidden)
    ys, hs, cs = [], [], []
    for d, weights in enumerate(directions):
        reverse = spec.direction == "reverse" or d == 1
        y, h, c = run_direction(x, lengths, h0[d], c0[d], weights, reverse, spec.clip, spec.input_forget,
                                block, n.wants_output(0))
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


def _checked_extras(n: Node, dirs: int, hidden: int, bias: torch.Tensor | None, p: torch.Tensor | None) -> None:
    """B [dirs, 8H] and P [dirs, 3H] as ONNX's LSTM has them, or a ModelError naming the shape."""
    for name, value, width in (("B", bias, 8 * hidden), ("P", p, 3 * hidden)):
        if value is not None and tuple(value.shape) != (dirs, width):
            raise n.error(f"has {name} of shape {list(value.shape)}; it must be [{dirs}, {width}]")


def _hidden(n: Node, r: torch.Tensor | None = None) -> int:
    """The hidden size: the attribute, else R's last dimension (ONNX's LSTM may omit it)."""
    hidden = n.attr("hidden_size")
    if hidden is None:
        if r is None:
            raise n.error("has no hidden_size")
        return int(r.shape[-1])
    return int(hidden)


def float_lstm(n: Node) -> Step:
    """The ONNX LSTM, stepwise in float (what the fused kernel does not compute)."""
    spec = attributes(n)
    layout = int(n.attr("layout", 0))
    if layout not in (0, 1):
        raise n.unsupported(f"has layout={layout}")

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, w, r = a[0], a[1], a[2]
        hidden = _hidden(n, r)
        bias = a[3] if len(a) > 3 else None
        p = a[7] if len(a) > 7 else None
        if w.dim() != 3 or tuple(r.shape) != (spec.dirs, 4 * hidden, hidden) or x.dim() != 3 \
                or tuple(w.shape) != (spec.dirs, 4 * hidden, x.shape[2]):
            raise ModelError(f"LSTM node '{n.name}' ({spec.direction}, hidden_size {hidden}) has W {tuple(w.shape)}, "
                             f"R {tuple(r.shape)} for X {tuple(x.shape)}, which do not fit together")
        _checked_extras(n, spec.dirs, hidden, bias, p)
        x = x.transpose(0, 1) if layout == 1 else x
        args = list(a)
        if layout == 1:
            for i in (5, 6):
                if len(args) > i and args[i] is not None:
                    args[i] = args[i].transpose(0, 1)
        directions = [
            Direction(lambda v, wd=w[d]: v @ wd.t().to(v.dtype), lambda v, rd=r[d]: v @ rd.t().to(v.dtype),
                      None if bias is None else (bias[d, : 4 * hidden] + bias[d, 4 * hidden :]).to(x.dtype),
                      None if p is None else p[d].to(x.dtype), *spec.acts[d])
            for d in range(spec.dirs)
        ]
        y, h, c = run_lstm(n, spec, x, hidden, args, directions, lambda batch, hidden: max(1, batch))
        if layout == 1:  # Y [batch, seq, dirs, H]; Y_h, Y_c [batch, dirs, H]
            return y.permute(2, 0, 1, 3), h.transpose(0, 1), c.transpose(0, 1)
        return y, h, c

    return run


# --------------------------------------------------------------------------- DynamicQuantizeLSTM


def _centred(weight: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """An int8/uint8 weight [K, N] less its zero point (per tensor or per column), in float64
    (so that it moves with the module as a buffer and no precision setting rounds it), and the
    type its products are exact in: float32 where no sum of 255 * |w| over K reaches 2**24."""
    centred = weight.to(torch.int64) - zero.to(torch.int64).reshape(-1)
    bound = 255 * int(centred.abs().max()) * int(weight.shape[0]) if centred.numel() else 0
    return centred.to(torch.float64), torch.float32 if bound < 2**24 else torch.float64


def _quantized_product(centred: torch.Tensor, scale: torch.Tensor, exact: torch.dtype) -> Product:
    """``a @ weight`` as onnxruntime's quantised GEMM computes it: ``a`` quantised to uint8 over
    all its elements, times the centred weight [K, N] (:func:`_centred`), the integer product
    exact, scaled by a's scale times the weight's (per tensor or per column) in float32."""
    w = centred.to(exact)
    w_scale = scale.to(torch.float32).reshape(-1)

    def product(a: torch.Tensor) -> torch.Tensor:
        q, a_scale, a_zero = dynamic_uint8(a)  # an all-zero a: q - a_zero is 0, whatever the scale
        return ((q - a_zero).to(exact) @ w).to(torch.float32) * (a_scale * w_scale)

    return product


def _dynamic_quantize_lstm(n: Node) -> Step:
    spec = attributes(n)
    names = ("W", "R", "W_scale", "W_zero_point", "R_scale", "R_zero_point")
    consts = {name: n.const(i) for name, i in zip(names, (1, 2, 8, 9, 10, 11))}
    missing = [name for name, i in zip(names, (1, 2, 8, 9, 10, 11)) if not n.has_input(i)]
    if missing:
        raise n.error(f"lacks input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    computed = [name for name, value in consts.items() if value is None]
    if computed:
        raise n.unsupported(f"computes {', '.join(computed)} at run time (only constant quantised weights)")
    hidden = _hidden(n)
    w, r = consts["W"], consts["R"]
    for name, weight, rows in (("W", w, None), ("R", r, hidden)):
        if weight.dtype not in (torch.int8, torch.uint8) or weight.dim() != 3 or weight.shape[0] != spec.dirs \
                or weight.shape[2] != 4 * hidden or (rows is not None and weight.shape[1] != rows):
            raise n.error(f"has {name} of {str(weight.dtype).removeprefix('torch.')} {list(weight.shape)}; it must be int8 or uint8 "
                          f"[{spec.dirs}, {'input size' if rows is None else rows}, {4 * hidden}]")
    for name in ("W_scale", "W_zero_point", "R_scale", "R_zero_point"):
        value = consts[name]
        if tuple(value.shape) not in ((spec.dirs,), (spec.dirs, 4 * hidden)):
            raise n.error(f"has {name} of shape {tuple(value.shape)}; it must be [{spec.dirs}] or [{spec.dirs}, {4 * hidden}]")
    # The centred weights and the scales become the step's inputs 1, 2, 8 and 10: buffers of
    # the module, which move with it to a device.
    centred_w = [_centred(w[d], consts["W_zero_point"][d]) for d in range(spec.dirs)]
    centred_r = [_centred(r[d], consts["R_zero_point"][d]) for d in range(spec.dirs)]
    exact = [(centred_w[d][1], centred_r[d][1]) for d in range(spec.dirs)]
    n.derive_input(1, torch.stack([c for c, _ in centred_w]))
    n.derive_input(2, torch.stack([c for c, _ in centred_r]))
    n.derive_input(8, consts["W_scale"].to(torch.float64))
    n.derive_input(10, consts["R_scale"].to(torch.float64))
    n.drop_input(9)
    n.drop_input(11)
    size = int(w.shape[1])

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = a[0]
        if x.dim() != 3 or x.shape[2] != size:
            raise ModelError(f"DynamicQuantizeLSTM node '{n.name}' got X of shape {tuple(x.shape)} "
                             f"for input size {size}")
        bias = a[3] if len(a) > 3 else None
        p = a[7] if len(a) > 7 else None
        _checked_extras(n, spec.dirs, hidden, bias, p)
        directions = [
            Direction(_quantized_product(a[1][d], a[8][d], exact[d][0]), _quantized_product(a[2][d], a[10][d], exact[d][1]),
                      None if bias is None else bias[d, : 4 * hidden].float() + bias[d, 4 * hidden :].float(),
                      None if p is None else p[d].float(), *spec.acts[d])
            for d in range(spec.dirs)
        ]
        threads = torch.get_num_threads()
        y, h, c = run_lstm(n, spec, x.float(), hidden, a, directions,
                           lambda batch, size: recurrent_rows(batch, size, threads))
        return y.to(x.dtype), h.to(x.dtype), c.to(x.dtype)

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "com.microsoft::DynamicQuantizeLSTM": _dynamic_quantize_lstm,
}
