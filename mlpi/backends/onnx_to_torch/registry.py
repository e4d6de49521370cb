"""Every operator the converter implements: op type (``domain::type`` outside the ONNX domain)
-> builder, from the ``ops_*`` modules."""

from __future__ import annotations

from collections.abc import Callable

from mlpi.backends.onnx_to_torch import (
    ops_attention,
    ops_contrib_quant,
    ops_contrib_transformer,
    ops_control,
    ops_detection,
    ops_loss,
    ops_lstm_steps,
    ops_math,
    ops_nn,
    ops_quant,
    ops_reduce,
    ops_resize,
    ops_rnn,
    ops_shape,
    ops_signal,
)
from mlpi.backends.onnx_to_torch.node import Node, Step

BUILDERS: dict[str, Callable[[Node], Step]] = {}
_MODULES = (ops_attention, ops_control, ops_loss, ops_math, ops_shape, ops_reduce, ops_nn, ops_quant, ops_rnn,
            ops_lstm_steps, ops_resize, ops_detection, ops_signal, ops_contrib_quant, ops_contrib_transformer)
for _module in _MODULES:
    _overlap = set(BUILDERS) & set(_module.BUILDERS)
    assert not _overlap, f"{_module.__name__} redefines {sorted(_overlap)}"
    BUILDERS.update(_module.BUILDERS)

SUPPORTED_OPS = frozenset(BUILDERS) | {"Constant"}
