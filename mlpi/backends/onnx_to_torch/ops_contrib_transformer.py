"""onnxruntime's ``com.microsoft`` transformer operators, as its transformer optimizer
(``onnxruntime.transformers.optimizer``) writes them into BERT- and GPT-style graphs: Gelu,
FastGelu, BiasGelu, QuickGelu, FusedMatMul, SkipLayerNormalization,
SkipSimplifiedLayerNormalization, EmbedLayerNormalization and Attention.

Follows onnxruntime's contrib operator specs (``docs/ContribOperators.md``) and its CPU kernels
(``onnxruntime/contrib_ops/cpu/bert/``): EmbedLayerNormalization sums the word, position
(0..S-1 unless given) and segment embeddings and normalises them, its mask_index output
counting each row's mask entries equal to 1 (zeros without a mask); Attention projects Q, K and
V with one matrix (``qkv_hidden_sizes`` or thirds), adds to scale * Q K^T a mask built as
onnxruntime builds it (a raw [B, T] or [B, S, T] mask: mask_filter_value where 0; a [B] or
[2B] mask_index: mask_filter_value from each end position, and before each start position)
and any attention_bias, then softmax, unidirectional leaving future keys out of it (as
onnxruntime 1.32 does: a query whose every earlier key is masked still attends among those,
never to its future). Refused (ModelError):
Attention with past state or a present output, a 4-d mask or rotary embedding; the
transposed-batch variants of FusedMatMul; SkipLayerNormalization's mean and inverse standard
deviation outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step


def _gelu(n: Node) -> Step:
    return lambda a: torch.nn.functional.gelu(a[0] if len(a) < 2 or a[1] is None else a[0] + a[1])


def _fast_gelu(n: Node) -> Step:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), x = X + bias."""

    def run(a: Args) -> torch.Tensor:
        x = a[0] if len(a) < 2 or a[1] is None else a[0] + a[1]
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))

    return run


def _quick_gelu(n: Node) -> Step:
    alpha = float(n.attr("alpha", 1.702))
    return lambda a: a[0] * torch.sigmoid(alpha * a[0])


def _fused_matmul(n: Node) -> Step:
    if int(n.attr("transBatchA", 0)) or int(n.attr("transBatchB", 0)):
        raise n.unsupported("transposes a batch dimension (transBatchA or transBatchB)")
    alpha = float(n.attr("alpha", 1.0))
    trans_a, trans_b = bool(int(n.attr("transA", 0))), bool(int(n.attr("transB", 0)))

    def run(a: Args) -> torch.Tensor:
        x = a[0].transpose(-1, -2) if trans_a else a[0]
        y = a[1].transpose(-1, -2) if trans_b else a[1]
        out = torch.matmul(x, y)
        return out if alpha == 1.0 else out * alpha

    return run


def _skip_norm(simplified: bool) -> Callable[[Node], Step]:
    """SkipLayerNormalization (input, skip, gamma, beta, bias) or its RMS form
    SkipSimplifiedLayerNormalization (input, skip, gamma, bias): output, and the sum of input,
    skip and bias as output 3."""

    def build(n: Node) -> Step:
        eps = float(n.attr("epsilon", 1e-12))
        if n.wants_output(1) or n.wants_output(2):
            raise n.unsupported("asks for its mean or inverse standard deviation output")
        bias_at = 3 if simplified else 4

        def run(a: Args) -> tuple[torch.Tensor, None, None, torch.Tensor]:
            x = a[0] + a[1]
            bias = a[bias_at] if len(a) > bias_at else None
            if bias is not None:
                x = x + bias
            if simplified:
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * a[2]
            else:
                beta = a[3] if len(a) > 3 else None
                y = torch.nn.functional.layer_norm(x, x.shape[-1:], a[2], beta, eps)
            return y, None, None, x

        return run

    return build


def _embed_layer_norm(n: Node) -> Step:
    """input_ids, segment_ids, word_embedding, position_embedding, segment_embedding, gamma,
    beta, mask, position_ids -> output, mask_index, embedding_sum."""
    eps = float(n.attr("epsilon", 1e-12))

    def run(a: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = a[0].to(torch.int64)
        batch, seq = int(ids.shape[0]), int(ids.shape[1])
        words, positions = a[2], a[3]
        for name, index, table in (("input_ids", ids, words), ("segment_ids", a[1], a[4] if len(a) > 4 else None)):
            if index is not None and table is not None and bool(((index < 0) | (index >= table.shape[0])).any()):
                raise n.error(f"got {name} outside [0, {table.shape[0]})")
        position_ids = a[8] if len(a) > 8 and a[8] is not None else None
        if position_ids is None:
            where = torch.arange(seq, device=ids.device).expand(batch, seq)
        else:
            where = position_ids.to(torch.int64).expand(batch, seq)
        if bool((where >= positions.shape[0]).any()):
            raise n.error(f"reaches position {int(where.max())} of a position embedding of {positions.shape[0]}")
        total = words[ids] + positions[where]
        if len(a) > 4 and a[4] is not None and a[1] is not None:
            total = total + a[4][a[1].to(torch.int64)]
        out = torch.nn.functional.layer_norm(total, total.shape[-1:], a[5], a[6], eps)
        mask = a[7] if len(a) > 7 else None
        counts = (mask == 1).sum(-1).to(torch.int32) if mask is not None else torch.zeros(batch, dtype=torch.int32,
                                                                                            device=ids.device)
        return out, counts, total

    return run


def _attention(n: Node) -> Step:
    heads = int(n.attr("num_heads"))
    if int(n.attr("do_rotary", 0)):
        raise n.unsupported("has do_rotary=1")
    if n.has_input(4) or n.wants_output(1) or n.has_input(6):
        raise n.unsupported("has past state or a present output (only attention without a cache)")
    causal = bool(int(n.attr("unidirectional", 0)))
    fill = float(n.attr("mask_filter_value", -10000.0))
    sizes = n.attr("qkv_hidden_sizes")
    scale_attr = n.attr("scale")

    def run(a: Args) -> torch.Tensor:
        x, weights = a[0], a[1]
        batch, seq = int(x.shape[0]), int(x.shape[1])
        q_size, k_size, v_size = (list(sizes) if sizes else [int(weights.shape[1]) // 3] * 3)
        if q_size != k_size or q_size % heads or v_size % heads:
            raise n.error(f"has Q, K and V sizes {q_size}, {k_size}, {v_size} for {heads} heads")
        qkv = torch.matmul(x, weights)
        bias = a[2] if len(a) > 2 else None
        if bias is not None:
            qkv = qkv + bias
        q, k, v = qkv.split([q_size, k_size, v_size], -1)
        head, v_head = q_size // heads, v_size // heads
        q = q.reshape(batch, seq, heads, head).transpose(1, 2)
        k = k.reshape(batch, seq, heads, head).transpose(1, 2)
        v = v.reshape(batch, seq, heads, v_head).transpose(1, 2)
        scale = float(scale_attr) if scale_attr else 1.0 / math.sqrt(head)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + _mask(n, a[3] if len(a) > 3 else None, batch, seq,
                                                                      fill, x)
        if len(a) > 5 and a[5] is not None:
            scores = scores + a[5]
        if causal:  # future keys left out of the softmax altogether (not given ``fill``), as onnxruntime does
            future = torch.ones((seq, seq), dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = torch.matmul(torch.softmax(scores, -1), v)
        return out.transpose(1, 2).reshape(batch, seq, v_size)

    return run


def _mask(n: Node, index: torch.Tensor | None, batch: int, seq: int, fill: float, like: torch.Tensor) -> torch.Tensor:
    """The additive mask onnxruntime's CPU Attention builds from mask_index: [B, 1, S, T] of 0
    and ``fill``."""
    mask = torch.zeros((batch, seq, seq), dtype=like.dtype, device=like.device)
    if index is not None:
        index = index.to(device=like.device)
        if index.dim() == 3:
            mask = torch.where(index > 0, 0.0, fill).to(like.dtype)
        elif index.dim() == 2:
            mask = torch.where(index > 0, 0.0, fill).to(like.dtype).unsqueeze(1).expand(batch, seq, seq)
        elif index.dim() == 1 and index.shape[0] in (batch, 2 * batch):
            t = torch.arange(seq, device=like.device)
            masked = t.unsqueeze(0) >= index[:batch].unsqueeze(1)
            if index.shape[0] == 2 * batch:
                masked = masked | (t.unsqueeze(0) < index[batch:].clamp(max=seq).unsqueeze(1))
            mask = torch.where(masked, fill, 0.0).to(like.dtype).unsqueeze(1).expand(batch, seq, seq)
        else:
            raise n.unsupported(f"has a mask_index of shape {list(index.shape)} (only [B], [2B], [B, T], [B, S, T])")
    return mask.unsqueeze(1)


_MS = "com.microsoft::"
BUILDERS: dict[str, Callable[[Node], Step]] = {
    _MS + "Gelu": _gelu,
    _MS + "BiasGelu": _gelu,
    _MS + "FastGelu": _fast_gelu,
    _MS + "QuickGelu": _quick_gelu,
    _MS + "FusedMatMul": _fused_matmul,
    _MS + "SkipLayerNormalization": _skip_norm(simplified=False),
    _MS + "SkipSimplifiedLayerNormalization": _skip_norm(simplified=True),
    _MS + "EmbedLayerNormalization": _embed_layer_norm,
    _MS + "Attention": _attention,
}
