"""Signal operators: DFT, STFT, the window functions, MelWeightMatrix, and ReverseSequence.

Follows the ONNX operator specs (``onnx/defs/math/defs.py``, ``onnx/defs/tensor/defs.py``) and
``onnx/reference/ops/op_dft.py``, ``op_stft.py``, ``op_mel_weight_matrix.py``: a complex tensor
is its real form, a last dimension of 2 (real, imaginary), or 1 for a real signal. DFT's
``dft_length`` pads the signal with zeros or cuts it; ``onesided`` keeps the first n // 2 + 1
frequencies (inverse: the real signal of length ``dft_length``, default 2 * (bins - 1), from
them); the inverse is divided by n. STFT takes frames of ``frame_length`` every ``frame_step``
samples, 1 + (length - frame_length) // frame_step of them, times the window, each transformed;
its signal may also be [batch, length], real, as onnxruntime accepts.
The transforms run on torch.fft in float64 (onnxruntime's own kernels compute in float32;
float64 keeps torch's share of the difference below its) and give the input's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch.node import TORCH_DTYPES, Args, Node, Step, axis_of
from mlpi.backends.onnx_to_torch.rnn_common import reverse_within


def _complex(x: torch.Tensor, n: Node) -> torch.Tensor:
    """``x`` [..., 1 | 2] as a float64 real or complex128 tensor without that last dimension."""
    if x.dim() < 2 or x.shape[-1] not in (1, 2):
        raise n.error(f"got an input of shape {tuple(x.shape)}; its last dimension must be 1 (real) or 2 (complex)")
    wide = x.to(torch.float64)
    return wide[..., 0] if x.shape[-1] == 1 else torch.complex(wide[..., 0], wide[..., 1])


def _real_form(z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if z.is_complex():
        return torch.stack([z.real, z.imag], -1).to(like.dtype)
    return z.unsqueeze(-1).to(like.dtype)


def _transform(n: Node, x: torch.Tensor, length: int | None, axis: int, inverse: bool, onesided: bool) -> torch.Tensor:
    if not -x.dim() <= axis <= x.dim() - 2 or axis == -1:
        raise n.error(f"has axis {axis} for an input of rank {x.dim()}: it must not be the last (real/imaginary) axis")
    k = axis_of(axis, x.dim())
    signal = _complex(x, n)
    if inverse and onesided:
        bins = int(signal.shape[k])
        return _real_form(torch.fft.irfft(signal.to(torch.complex128), n=length or 2 * (bins - 1), dim=k), x)
    n_fft = length or int(signal.shape[k])
    if inverse:
        return _real_form(torch.fft.ifft(signal, n=n_fft, dim=k), x)
    out = torch.fft.fft(signal, n=n_fft, dim=k)
    if onesided:
        if signal.is_complex():
            raise n.error("asks a one-sided transform of a complex signal")
        out = out.narrow(k, 0, n_fft // 2 + 1)
    return _real_form(out, x)


def _positive(n: Node, what: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise n.error(f"has {what} {value}; it must be at least 1")
    return value


def _dft(n: Node) -> Step:
    inverse, onesided = bool(int(n.attr("inverse", 0))), bool(int(n.attr("onesided", 0)))
    length_of = n.ints_input(1)
    if n.opset >= 20:
        axis_input = n.ints_input(2)

        def axis_of_call(a: Args) -> int:
            given = axis_input(a)
            return -2 if given is None else given[0]
    else:
        axis_attr = int(n.attr("axis", 1))

        def axis_of_call(a: Args) -> int:
            return axis_attr

    def run(a: Args) -> torch.Tensor:
        length = length_of(a)
        return _transform(n, a[0], _positive(n, "dft_length", length[0] if length else None), axis_of_call(a),
                          inverse, onesided)

    return run


def _stft(n: Node) -> Step:
    onesided = bool(int(n.attr("onesided", 1)))
    step_of, length_of = n.ints_input(1), n.ints_input(3)

    def run(a: Args) -> torch.Tensor:
        x = a[0]
        # [batch, length] real or complex; a real signal may come without its last dimension of
        # 1, as onnxruntime accepts it (speech front ends are exported so)
        signal = x.to(torch.float64) if x.dim() == 2 else _complex(x, n)
        if signal.dim() != 2:
            raise n.error(f"got a signal of shape {tuple(x.shape)}; it must be [batch, length, 1 or 2]")
        window = a[2] if len(a) > 2 else None
        given = length_of(a)
        frame = given[0] if given else (int(window.shape[0]) if window is not None else int(signal.shape[1]))
        (step,) = step_of(a) or [0]
        _positive(n, "frame_step", step)
        _positive(n, "frame_length", frame)
        if window is not None and (window.dim() != 1 or int(window.shape[0]) != frame):
            raise n.error(f"has a window of shape {tuple(window.shape)} for frame_length {frame}")
        if frame > signal.shape[1]:
            raise n.error(f"has frame_length {frame} for a signal of length {signal.shape[1]}")
        if onesided and signal.is_complex():
            raise n.error("asks a one-sided transform of a complex signal")
        frames = signal.unfold(1, frame, step)  # [batch, count, frame]
        if window is not None:
            frames = frames * window.to(torch.float64)
        out = torch.fft.fft(frames, dim=-1)
        if onesided:
            out = out.narrow(-1, 0, frame // 2 + 1)
        return _real_form(out, x)

    return run


def _window(shape: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[Node], Step]:
    """A window operator: ``shape(positions, N)`` with N the size (periodic) or size - 1."""

    def build(n: Node) -> Step:
        periodic = bool(int(n.attr("periodic", 1)))
        out_type = int(n.attr("output_datatype", 1))
        if out_type not in TORCH_DTYPES:
            raise n.unsupported(f"has output_datatype={out_type}")
        size_of = n.ints_input(0)

        def run(a: Args) -> torch.Tensor:
            (size,) = size_of(a) or [0]
            if size < 0:
                raise n.error(f"has size {size}")
            positions = torch.arange(size, dtype=torch.float64, device=a[0].device)
            span = size if periodic else size - 1
            return shape(positions, span).to(TORCH_DTYPES[out_type])

        return run

    return build


def _hann(k: torch.Tensor, span: int) -> torch.Tensor:
    return torch.sin(k * math.pi / span) ** 2


def _hamming(k: torch.Tensor, span: int) -> torch.Tensor:
    alpha = 25.0 / 46.0
    return alpha - (1 - alpha) * torch.cos(2 * math.pi * k / span)


def _blackman(k: torch.Tensor, span: int) -> torch.Tensor:
    return 0.42 - 0.5 * torch.cos(2 * math.pi * k / span) + 0.08 * torch.cos(4 * math.pi * k / span)


def _mel_weight_matrix(n: Node) -> Step:
    """[dft_length // 2 + 1, num_mel_bins] triangles between mel-spaced frequency bins."""
    out_type = int(n.attr("output_datatype", 1))
    if out_type not in TORCH_DTYPES:
        raise n.unsupported(f"has output_datatype={out_type}")
    bins_of, length_of, rate_of = n.ints_input(0), n.ints_input(1), n.ints_input(2)
    lower_of, upper_of = n.floats_input(3), n.floats_input(4)

    def run(a: Args) -> torch.Tensor:
        (mel_bins,), (length,), (rate,) = bins_of(a) or [0], length_of(a) or [0], rate_of(a) or [0]
        (lower,), (upper,) = lower_of(a) or [0.0], upper_of(a) or [0.0]
        if mel_bins < 1 or length < 1 or rate < 1:
            raise n.error(f"has num_mel_bins {mel_bins}, dft_length {length}, sample_rate {rate}; each must be >= 1")
        low_mel = 2595 * math.log10(1 + lower / 700)
        high_mel = 2595 * math.log10(1 + upper / 700)
        step = (high_mel - low_mel) / (mel_bins + 2)
        edges = [int(((length + 1) * (700 * (10 ** ((i * step + low_mel) / 2595) - 1))) // rate)
                 for i in range(mel_bins + 2)]
        spectrum_bins = length // 2 + 1
        if min(edges) < 0 or max(edges[:-1]) >= spectrum_bins or edges[-1] > spectrum_bins:
            raise n.error(f"puts mel band edges at bins {edges[0]} to {edges[-1]} of {spectrum_bins}: lower_edge_hertz "
                          f"{lower} and upper_edge_hertz {upper} must lie within 0 and half of sample_rate {rate}")
        out = torch.zeros((spectrum_bins, mel_bins), dtype=torch.float64)
        for i in range(mel_bins):
            left, centre, right = edges[i], edges[i + 1], edges[i + 2]
            if centre == left:
                out[centre, i] = 1
            else:
                for j in range(left, centre + 1):
                    out[j, i] = (j - left) / (centre - left)
            for j in range(centre, right):
                out[j, i] = (right - j) / (right - centre)
        return out.to(TORCH_DTYPES[out_type])

    return run


def _reverse_sequence(n: Node) -> Step:
    batch_axis, time_axis = int(n.attr("batch_axis", 1)), int(n.attr("time_axis", 0))
    if {batch_axis, time_axis} != {0, 1}:
        raise n.error(f"has batch_axis {batch_axis} and time_axis {time_axis}; they must be 0 and 1, one each")

    def run(a: Args) -> torch.Tensor:
        x, lengths = a[0], a[1].to(torch.int64)
        seq_first = x if time_axis == 0 else x.transpose(0, 1)  # [time, batch, ...]
        if lengths.dim() != 1 or lengths.shape[0] != seq_first.shape[1] \
                or bool(((lengths < 0) | (lengths > seq_first.shape[0])).any()):
            raise n.error(f"got sequence_lens {lengths.tolist()} for batch {seq_first.shape[1]} and time "
                          f"{seq_first.shape[0]}: one per batch entry, each in [0, {seq_first.shape[0]}]")
        out = reverse_within(seq_first, lengths)
        return out if time_axis == 0 else out.transpose(0, 1)

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "DFT": _dft,
    "STFT": _stft,
    "HannWindow": _window(_hann),
    "HammingWindow": _window(_hamming),
    "BlackmanWindow": _window(_blackman),
    "MelWeightMatrix": _mel_weight_matrix,
    "ReverseSequence": _reverse_sequence,
}
