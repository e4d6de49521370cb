"""Recurrent layers: LSTM, GRU and RNN.

Follows the ONNX operator specs (``onnx/defs/rnn/defs.py``). LSTM (RNN-T's encoder and
prediction network) runs on torch's fused LSTM kernel, with the weights reordered for it
once, at conversion, wherever the kernel computes what ONNX asks; otherwise (peepholes,
clip, input_forget, other activations) it runs stepwise (``ops_lstm_steps``). GRU and RNN
run one step at a time in torch ops, with ``sequence_lens`` as onnxruntime applies it: a
sequence's steps past its length leave its state as it was and give zeros in Y.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step
from mlpi.backends.onnx_to_torch.ops_lstm_steps import float_lstm
from mlpi.backends.onnx_to_torch.rnn_common import (
    DIRECTIONS,
    activations,
    reverse_within,
    sequence_lengths,
)
from mlpi.core.contract.errors import ModelError

# ONNX stacks an LSTM's gate blocks as i, o, f, c; torch as i, f, g (the cell's c), o.
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)


def _lstm_params(w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, hidden: int) -> torch.Tensor:
    """ONNX LSTM weights W [dirs, 4H, I], R [dirs, 4H, H], B [dirs, 8H] (or None: zeros) as one
    flat tensor holding, per direction, torch's w_ih [4H, I], w_hh [4H, H], b_ih [4H], b_hh [4H]
    with the gates in torch's order (see :func:`_lstm_unflatten`)."""
    dirs = w.shape[0]
    order = torch.cat([torch.arange(g * hidden, (g + 1) * hidden) for g in _ONNX_TO_TORCH_GATES]).to(w.device)
    if b is None:
        b = torch.zeros((dirs, 8 * hidden), dtype=w.dtype, device=w.device)
    parts = []
    for d in range(dirs):
        parts += [w[d].index_select(0, order).reshape(-1), r[d].index_select(0, order).reshape(-1),
                  b[d, : 4 * hidden].index_select(0, order), b[d, 4 * hidden :].index_select(0, order)]
    return torch.cat(parts)


def _lstm_unflatten(flat: torch.Tensor, dirs: int, inputs: int, hidden: int) -> list[torch.Tensor]:
    """Views into :func:`_lstm_params`' tensor, in the order torch's fused LSTM takes them."""
    sizes = [4 * hidden * inputs, 4 * hidden * hidden, 4 * hidden, 4 * hidden]
    shapes = [(4 * hidden, inputs), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    views, offset = [], 0
    for _ in range(dirs):
        for size, shape in zip(sizes, shapes):
            views.append(flat.narrow(0, offset, size).view(shape))
            offset += size
    return views


def _needs_steps(n: Node) -> bool:
    """Whether an LSTM asks what the fused kernel does not compute: activations other than the
    default Sigmoid, Tanh, Tanh, clip, input_forget=1, or peepholes P not constant zeros."""
    names = n.attr("activations")
    if names is not None and [(v.decode() if isinstance(v, bytes) else str(v)).lower() for v in names] \
            != ["sigmoid", "tanh", "tanh"] * (2 if n.attr("direction") == "bidirectional" else 1):
        return True
    # activation_alpha/beta parametrise activations such as Affine or LeakyRelu; Sigmoid and
    # Tanh take none, so with the default activations they change nothing.
    if n.attr("clip") is not None or int(n.attr("input_forget", 0)) != 0:
        return True
    p = n.const(7) if n.has_input(7) else None
    return n.has_input(7) and (p is None or bool((p != 0).any()))


def _lstm(n: Node) -> Step:
    """ONNX LSTM on torch's fused LSTM kernel (the one ``nn.LSTM`` calls).

    Supported: forward, reverse and bidirectional; layout 0 and 1; B, sequence_lens,
    initial_h and initial_c given or absent; any outputs asked for. With sequence_lens the
    sequences are packed, as ``nn.LSTM`` runs a PackedSequence, which is onnxruntime's
    semantics exactly: each direction runs over each sequence's own steps (reverse from its
    last valid one), Y is zero after a sequence's end, Y_h and Y_c are the states at its last
    step, and a sequence of length 0 gives zeros throughout, initial states or not.
    What the fused kernel does not compute (activations other than the default Sigmoid, Tanh,
    Tanh, clip, input_forget=1, peepholes) runs stepwise instead (:func:`float_lstm`).
    """
    direction = n.attr("direction", "forward")
    if direction not in DIRECTIONS:
        raise n.unsupported(f"has direction={direction}")
    dirs = 2 if direction == "bidirectional" else 1
    layout = int(n.attr("layout", 0))
    if layout not in (0, 1):
        raise n.unsupported(f"has layout={layout}")
    if _needs_steps(n):
        return float_lstm(n)
    if n.has_input(7):  # all-zero peepholes (what exporters write for none): nothing to add
        n.drop_input(7)
    hidden_attr = n.attr("hidden_size")

    def hidden_of(r: torch.Tensor) -> int:
        hidden = int(r.shape[-1])
        if hidden_attr is not None and int(hidden_attr) != hidden:
            raise ModelError(f"LSTM node '{n.name}' has hidden_size={hidden_attr} but R of shape {tuple(r.shape)}")
        return hidden

    def checked(w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> tuple[int, int]:
        hidden = hidden_of(r)
        if w.dim() != 3 or tuple(r.shape) != (dirs, 4 * hidden, hidden) or tuple(w.shape[:2]) != (dirs, 4 * hidden) \
                or (b is not None and tuple(b.shape) != (dirs, 8 * hidden)):
            raise ModelError(f"LSTM node '{n.name}' ({direction}) has W {tuple(w.shape)}, R {tuple(r.shape)}"
                             f"{'' if b is None else f', B {tuple(b.shape)}'}, which do not fit together")
        return int(w.shape[2]), hidden

    w, r, b = n.const(1), n.const(2), n.const(3)
    if w is not None and r is not None and (b is not None or not n.has_input(3)):
        # Constant weights (the usual case): reordered for torch once, here, as one buffer.
        size, hidden_static = checked(w, r, b)
        n.derive_input(1, _lstm_params(w, r, b, hidden_static))
        n.drop_input(2)
        n.drop_input(3)

        def params_of(a: Args) -> tuple[list[torch.Tensor], int, int]:
            return _lstm_unflatten(a[1], dirs, size, hidden_static), size, hidden_static
    else:

        def params_of(a: Args) -> tuple[list[torch.Tensor], int, int]:
            bias = a[3] if len(a) > 3 else None
            size, hidden = checked(a[1], a[2], bias)
            return _lstm_unflatten(_lstm_params(a[1], a[2], bias, hidden), dirs, size, hidden), size, hidden

    def state(a: Args, i: int, batch: int, hidden: int, like: torch.Tensor) -> torch.Tensor:
        value = a[i] if len(a) > i else None
        if value is None:
            return torch.zeros((dirs, batch, hidden), dtype=like.dtype, device=like.device)
        value = value.transpose(0, 1) if layout == 1 else value  # -> [dirs, batch, H]
        if tuple(value.shape) != (dirs, batch, hidden):
            raise ModelError(f"LSTM node '{n.name}' got an initial state of shape {tuple(a[i].shape)} "
                             f"for {dirs} direction(s), batch {batch}, hidden size {hidden} (layout {layout})")
        return value.to(like.dtype).contiguous()

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params, size, hidden = params_of(a)
        x = a[0]
        if x.dim() != 3 or x.shape[2] != size:
            raise ModelError(f"LSTM node '{n.name}' got X of shape {tuple(x.shape)} for input size {size}")
        x = x.transpose(0, 1) if layout == 1 else x  # -> [seq, batch, I]
        seq, batch = int(x.shape[0]), int(x.shape[1])
        hx = [state(a, 5, batch, hidden, x), state(a, 6, batch, hidden, x)]
        lengths = sequence_lengths(n, a, batch, seq)
        bidirectional = dirs == 2
        if lengths is None and seq == 1:
            # One step (a decoder's prediction network, called per symbol): the fused cell, one
            # per direction. The sequence kernel's oneDNN path costs ~1 ms a call on the CPU to
            # set up, several times the step itself; the cell is the same arithmetic.
            steps = [torch._VF.lstm_cell(x[0], (hx[0][d], hx[1][d]), *params[4 * d : 4 * d + 4]) for d in range(dirs)]
            h, c = torch.stack([s[0] for s in steps]), torch.stack([s[1] for s in steps])
            y = torch.cat([s[0] for s in steps], dim=-1).unsqueeze(0)
        elif lengths is None:
            if direction == "reverse":
                x = x.flip(0)
            y, h, c = torch._VF.lstm(x, hx, params, True, 1, 0.0, False, bidirectional, False)
            if direction == "reverse":
                y = y.flip(0)
        else:
            y, h, c = _packed_lstm(x, lengths, hx, params, direction)
        y = y.view(seq, batch, dirs, hidden)
        if layout == 1:  # Y [batch, seq, dirs, H]; Y_h, Y_c [batch, dirs, H]
            return y.transpose(0, 1), h.transpose(0, 1), c.transpose(0, 1)
        return y.permute(0, 2, 1, 3), h, c

    return run


def _packed_lstm(x: torch.Tensor, lengths: torch.Tensor, hx: list[torch.Tensor], params: list[torch.Tensor],
                 direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused LSTM over sequences of the given lengths (on the CPU, int64), as nn.LSTM runs a
    PackedSequence; lengths of 0 run one step (packing allows no empty sequence) and are zeroed."""
    from torch.nn.utils.rnn import (
        PackedSequence,
        pack_padded_sequence,
        pad_packed_sequence,
    )

    seq = x.shape[0]
    steps = lengths.clamp(min=1)
    if direction == "reverse":
        x = reverse_within(x, steps)
    packed = pack_padded_sequence(x, steps, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = [s.index_select(1, order.to(s.device)) for s in hx]
    data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, hx, params, True, 1, 0.0, False, direction == "bidirectional")
    y, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, unorder), total_length=seq)
    h, c = (s.index_select(1, unorder.to(s.device)) for s in (h, c))
    if direction == "reverse":
        y = reverse_within(y, steps)
    empty = lengths == 0
    if bool(empty.any()):
        keep = (~empty).to(y.device).reshape(1, -1, 1)
        y, h, c = (torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device)) for s in (y, h, c))
    return y, h, c


def _recurrence(x: torch.Tensor, lengths: torch.Tensor | None, h: torch.Tensor, reverse: bool,
                cell: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction over x [seq, batch, I] from state h [batch, H]: (Y [seq, batch, H], last h).
    A batch entry's steps at or past its length leave its state as it was and give zeros."""
    seq = x.shape[0]
    ys: list[torch.Tensor] = [h] * seq
    zero = torch.zeros_like(h)
    for t in (reversed(range(seq)) if reverse else range(seq)):
        new = cell(x[t], h)
        if lengths is None:
            h, ys[t] = new, new
        else:
            valid = (t < lengths).reshape(-1, 1)
            h = torch.where(valid, new, h)
            ys[t] = torch.where(valid, new, zero)
    return torch.stack(ys) if seq else x.new_zeros((0, *h.shape)), h


def _stepwise(kind: str) -> Callable[[Node], Step]:
    """GRU or RNN, one step at a time."""
    gates = 3 if kind == "GRU" else 1
    defaults = ["Sigmoid", "Tanh"] if kind == "GRU" else ["Tanh"]

    def build(n: Node) -> Step:
        direction = n.attr("direction", "forward")
        if direction not in DIRECTIONS:
            raise n.unsupported(f"has direction={direction}")
        dirs = 2 if direction == "bidirectional" else 1
        layout = int(n.attr("layout", 0))
        clip = n.attr("clip")
        before_reset = bool(n.attr("linear_before_reset", 0))
        acts = activations(n, defaults, dirs)

        def clipped(v: torch.Tensor) -> torch.Tensor:
            return v if clip is None else torch.clamp(v, -float(clip), float(clip))

        def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
            x, w, r = a[0], a[1], a[2]
            x = x.transpose(0, 1) if layout == 1 else x
            seq, batch = int(x.shape[0]), int(x.shape[1])
            hidden = int(r.shape[-1])
            bias = a[3] if len(a) > 3 and a[3] is not None else \
                torch.zeros((dirs, 2 * gates * hidden), dtype=x.dtype, device=x.device)
            lengths = a[4].to(torch.int64).to(x.device) if len(a) > 4 and a[4] is not None else None
            h0 = a[5] if len(a) > 5 and a[5] is not None else None
            if h0 is not None and layout == 1:
                h0 = h0.transpose(0, 1)
            ys, hs = [], []
            for d in range(dirs):
                wd, rd = w[d], r[d]
                wb, rb = bias[d, : gates * hidden], bias[d, gates * hidden :]
                f = acts[d]
                if kind == "RNN":
                    def cell(xt: torch.Tensor, h: torch.Tensor, wd=wd, rd=rd, wb=wb, rb=rb, f=f) -> torch.Tensor:
                        return f[0](clipped(xt @ wd.t() + h @ rd.t() + wb + rb))
                else:
                    def cell(xt: torch.Tensor, h: torch.Tensor, wd=wd, rd=rd, wb=wb, rb=rb, f=f) -> torch.Tensor:
                        xw = xt @ wd.t() + wb
                        xz, xr, xh = xw.split(hidden, -1)
                        rz, rr, rh = rd.split(hidden, 0)
                        bz, br, bh = rb.split(hidden, -1)
                        z = f[0](clipped(xz + h @ rz.t() + bz))
                        rt = f[0](clipped(xr + h @ rr.t() + br))
                        if before_reset:
                            cand = f[1](clipped(xh + rt * (h @ rh.t() + bh)))
                        else:
                            cand = f[1](clipped(xh + (rt * h) @ rh.t() + bh))
                        return (1 - z) * cand + z * h
                start = h0[d] if h0 is not None else torch.zeros((batch, hidden), dtype=x.dtype, device=x.device)
                reverse = direction == "reverse" or d == 1
                y, h = _recurrence(x, lengths, start.to(x.dtype), reverse, cell)
                ys.append(y)
                hs.append(h)
            y = torch.stack(ys, 1) if seq else x.new_zeros((0, dirs, batch, hidden))  # [seq, dirs, batch, H]
            h = torch.stack(hs)
            if layout == 1:
                return y.permute(2, 0, 1, 3), h.transpose(0, 1)
            return y, h

        return run

    return build


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "LSTM": _lstm,
    "GRU": _stepwise("GRU"),
    "RNN": _stepwise("RNN"),
}
