"""Transformer operators: Attention, RotaryEmbedding, LinearAttention, CausalConvWithState.

Follows the ONNX operator specs (``onnx/defs/nn/defs.py``, opsets 23 to 27): 3-d inputs
carry their heads packed in the last axis; grouped-query attention shares each key/value
head among ``q_num_heads / kv_num_heads`` query heads; the causal mask is offset-aware
(bottom-right aligned on past keys); a query row with no key left to attend gives zeros,
not NaN. LinearAttention runs its recurrence token by token, which is its definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlpi.backends.onnx_to_torch.node import TORCH_DTYPES, Args, Node, Step


def _heads(x: torch.Tensor, heads: int | None, what: str, n: Node) -> torch.Tensor:
    """[B, H, S, D] from a 4-d input, or from a 3-d [B, S, H*D] one and the head count."""
    if x.dim() == 4:
        return x
    if x.dim() != 3 or not heads:
        raise n.error(f"got a rank-{x.dim()} {what} without its head count")
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)


def _attention(n: Node) -> Step:
    q_heads, kv_heads = n.attr("q_num_heads"), n.attr("kv_num_heads")
    scale_attr = n.attr("scale")
    softcap = float(n.attr("softcap", 0.0))
    causal = bool(n.attr("is_causal", 0))
    mode = int(n.attr("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise n.unsupported(f"has qk_matmul_output_mode={mode}")
    left, right = int(n.attr("left_window_size", -1)), int(n.attr("right_window_size", -1))
    precision = n.attr("softmax_precision")
    softmax_dtype = None
    if precision is not None:
        if int(precision) not in TORCH_DTYPES or not TORCH_DTYPES[int(precision)].is_floating_point:
            raise n.unsupported(f"has softmax_precision={precision}")
        softmax_dtype = TORCH_DTYPES[int(precision)]
    wants_qk = n.wants_output(3)

    def run(a: Args) -> tuple[torch.Tensor | None, ...]:
        q_in, k_in, v_in = a[0], a[1], a[2]
        mask = a[3] if len(a) > 3 else None
        past_k = a[4] if len(a) > 4 else None
        past_v = a[5] if len(a) > 5 else None
        nonpad = a[6] if len(a) > 6 else None
        q = _heads(q_in, q_heads, "Q", n)
        k = _heads(k_in, kv_heads, "K", n).to(q.dtype)
        v = _heads(v_in, kv_heads, "V", n).to(q.dtype)
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k.to(q.dtype), k], dim=2)
            v = torch.cat([past_v.to(q.dtype), v], dim=2)
        present_k, present_v = k, v
        batch, hq, sq, depth = q.shape
        hkv, total = int(k.shape[1]), int(k.shape[2])
        if hq % hkv:
            raise n.error(f"has {hq} query heads for {hkv} key/value heads")
        if hq != hkv:
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        scale = float(scale_attr) if scale_attr is not None else 1.0 / math.sqrt(depth)
        root = math.sqrt(scale)
        qk = (q * root) @ (k * root).transpose(-1, -2)
        raw = qk
        if softcap > 0:
            qk = softcap * torch.tanh(qk / softcap)
        capped = qk
        # what may be attended: [B or 1, 1, Sq, T]
        past_len = int(past_k.shape[2]) if past_k is not None else 0
        rows = torch.arange(sq, device=q.device).reshape(1, 1, sq, 1)
        cols = torch.arange(total, device=q.device).reshape(1, 1, 1, total)
        if nonpad is not None and past_k is None:
            lengths = nonpad.to(torch.int64).reshape(-1, 1, 1, 1)
            offset = lengths - sq
            allowed = cols < lengths
        else:
            offset = torch.full((1, 1, 1, 1), past_len, dtype=torch.int64, device=q.device)
            allowed = torch.ones((1, 1, 1, total), dtype=torch.bool, device=q.device)
        position = rows + offset
        if causal:
            allowed = allowed & (cols <= position)
        if left >= 0:
            allowed = allowed & (cols >= position - left)
        if right >= 0:
            allowed = allowed & (cols <= position + right)
        bias = torch.zeros((), dtype=qk.dtype, device=q.device)
        if mask is not None:
            if mask.shape[-1] < total:  # a shorter mask is padded with "not attended"
                fill = False if mask.dtype == torch.bool else -math.inf
                mask = F.pad(mask if mask.dtype != torch.bool else mask.to(torch.uint8),
                             [0, total - mask.shape[-1]], value=fill)
                mask = mask.to(torch.bool) if a[3].dtype == torch.bool else mask
            if mask.dtype == torch.bool:
                allowed = allowed & mask
            else:
                bias = mask.to(qk.dtype)
        scores = qk + bias
        scores = scores.masked_fill(~allowed, -math.inf)
        biased = scores
        work = scores.to(softmax_dtype) if softmax_dtype is not None else scores
        empty = torch.isneginf(work).all(dim=-1, keepdim=True)
        probs = torch.softmax(work.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0).to(qk.dtype)
        y = probs @ v
        if q_in.dim() == 3:
            y = y.transpose(1, 2).reshape(batch, sq, -1)
        qk_out = None
        if wants_qk:
            if mode == 2 and not bool(allowed.all()):
                # the spec's masked logits are -inf; onnxruntime writes the lowest float there
                raise n.unsupported("asks for qk_matmul_output_mode=2 with masked positions (their value is not agreed)")
            qk_out = (raw, capped, biased, probs)[mode]
        return y, present_k, present_v, qk_out

    return run


def _rotary_embedding(n: Node) -> Step:
    heads = n.attr("num_heads")
    rotary_dim = int(n.attr("rotary_embedding_dim", 0))
    interleaved = bool(n.attr("interleaved", 0))

    def run(a: Args) -> torch.Tensor:
        x, cos, sin = a[0], a[1], a[2]
        positions = a[3] if len(a) > 3 else None
        shape = x.shape
        if x.dim() == 4:
            x = x.transpose(1, 2)  # [B, S, H, D]
        else:
            if not heads:
                raise n.error("got a 3-d input without num_heads")
            x = x.reshape(shape[0], shape[1], int(heads), -1)
        dim = rotary_dim or int(x.shape[-1])
        rotate, keep = x[..., :dim], x[..., dim:]
        if positions is not None:
            cos, sin = cos[positions.to(torch.int64)], sin[positions.to(torch.int64)]
        cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
        if interleaved:
            x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
        else:
            x1, x2 = rotate.chunk(2, dim=-1)
        real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
        rotated = torch.stack([real, imag], -1).reshape(rotate.shape) if interleaved else torch.cat([real, imag], -1)
        out = torch.cat([rotated, keep], -1)
        return out.transpose(1, 2) if len(shape) == 4 else out.reshape(shape)

    return run


def _linear_attention(n: Node) -> Step:
    q_heads, kv_heads = int(n.attr("q_num_heads")), int(n.attr("kv_num_heads"))
    scale_attr = float(n.attr("scale", 0.0))
    rule = n.attr("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise n.unsupported(f"has update_rule={rule!r}")

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
        query, key, value = a[0], a[1], a[2]
        past = a[3] if len(a) > 3 else None
        decay = a[4] if len(a) > 4 else None
        beta = a[5] if len(a) > 5 else None
        batch, steps = int(query.shape[0]), int(query.shape[1])
        dk = int(query.shape[-1]) // q_heads
        dv = int(value.shape[-1]) // kv_heads
        scale = scale_attr if scale_attr != 0.0 else 1.0 / math.sqrt(dk)
        q = query.reshape(batch, steps, q_heads, dk)
        k = key.reshape(batch, steps, kv_heads, dk)
        v = value.reshape(batch, steps, kv_heads, dv)
        if rule in ("gated", "gated_delta"):
            if decay is None:
                raise n.error(f"needs the decay input for update_rule={rule!r}")
            g = decay.reshape(batch, steps, kv_heads, -1)  # per key dimension, or 1 per head
        if rule in ("delta", "gated_delta"):
            if beta is None:
                raise n.error(f"needs the beta input for update_rule={rule!r}")
            b = beta.reshape(batch, steps, -1)
            b = b.expand(batch, steps, kv_heads) if b.shape[-1] == 1 else b
        state = past.to(q.dtype) if past is not None else \
            torch.zeros((batch, kv_heads, dk, dv), dtype=q.dtype, device=q.device)
        group = q_heads // kv_heads
        outs = []
        for t in range(steps):
            kt, vt = k[:, t], v[:, t]  # [B, Hkv, dk], [B, Hkv, dv]
            if rule in ("gated", "gated_delta"):
                state = torch.exp(g[:, t]).unsqueeze(-1) * state
            if rule in ("delta", "gated_delta"):
                recalled = (state * kt.unsqueeze(-1)).sum(-2)  # S^T k: [B, Hkv, dv]
                state = state + b[:, t].reshape(batch, kv_heads, 1, 1) * kt.unsqueeze(-1) * (vt - recalled).unsqueeze(-2)
            else:
                state = state + kt.unsqueeze(-1) * vt.unsqueeze(-2)
            shared = state.repeat_interleave(group, dim=1) if group > 1 else state  # [B, Hq, dk, dv]
            outs.append(scale * (q[:, t].unsqueeze(-1) * shared).sum(-2))  # [B, Hq, dv]
        out = torch.stack(outs, 1).reshape(batch, steps, q_heads * dv) if steps else \
            query.new_zeros((batch, 0, q_heads * dv))
        return out, state

    return run


def _causal_conv_with_state(n: Node) -> Step:
    activation = n.attr("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise n.unsupported(f"has activation={activation!r}")

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = a[0], a[1]
        bias = a[2] if len(a) > 2 else None
        past = a[3] if len(a) > 3 else None
        channels, width = int(x.shape[1]), int(w.shape[-1])
        if past is None:
            past = torch.zeros((x.shape[0], channels, width - 1), dtype=x.dtype, device=x.device)
        full = torch.cat([past.to(x.dtype), x], dim=-1)
        y = F.conv1d(full, w.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=channels)
        if activation != "none":
            y = y * torch.sigmoid(y)
        present = full[..., full.shape[-1] - (width - 1):] if width > 1 else full[..., :0]
        return y, present

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {
    "Attention": _attention,
    "RotaryEmbedding": _rotary_embedding,
    "LinearAttention": _linear_attention,
    "CausalConvWithState": _causal_conv_with_state,
}
