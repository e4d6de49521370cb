"""The converted graph as an ``nn.Module``: constants as buffers, every other node one step.

Initializers (and ``Constant`` nodes, and nodes whose inputs are all constant, folded once
at build time) become buffers, so ``module.to(device)`` and ``module.to(memory_format=...)``
move them. Every other node becomes one step: a closure over the node's attributes (and any
constant integer inputs such as a Reshape's shape, read once here rather than on every
call). ``forward`` runs the steps in graph order on a dictionary local to the call: it keeps
no state between calls, so one module may be called from several threads at once. A
subgraph (If's branches, Loop's and Scan's bodies) is converted the same way, as a program
its node's step runs, reading the outer values it uses as extra inputs of that step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mlpi.backends.onnx_to_torch.node import Node, Step
from mlpi.backends.onnx_to_torch.registry import BUILDERS, SUPPORTED_OPS
from mlpi.core.contract.errors import ModelError


class UnsupportedOperators(ModelError):
    """The graph uses operators this converter does not implement."""


def constant_value(node: onnx.NodeProto, float_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``Constant`` node's value (any of its value attributes but strings and sparse tensors)."""
    if len(node.attribute) != 1:
        raise ModelError(f"Constant node '{node.name}' has {len(node.attribute)} attributes; it needs exactly one value")
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return tensor_of(value)
    if attr.name in ("value_float", "value_floats"):
        return torch.tensor(value, dtype=torch.float32)
    if attr.name in ("value_int", "value_ints"):
        return torch.tensor(value, dtype=torch.int64)
    raise ModelError(f"Constant node '{node.name}' uses {attr.name}, which is not supported",
                     "use the onnxruntime backend for this model")


def tensor_of(proto: onnx.TensorProto) -> torch.Tensor:
    """An ONNX tensor as a torch tensor of the same type (bfloat16 through float32)."""
    if proto.data_type == TensorProto.BFLOAT16:
        as_float = numpy_helper.to_array(proto).astype(np.float32)
        return torch.from_numpy(as_float).to(torch.bfloat16)
    array = numpy_helper.to_array(proto)
    if array.dtype.kind not in "biuf":
        raise ModelError(f"tensor '{proto.name}' is of ONNX type {proto.data_type}, which is not supported",
                         "use the onnxruntime backend for this model")
    return torch.from_numpy(np.array(array, copy=True))


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def unknown_operators(graph: onnx.GraphProto) -> set[str]:
    """Every operator of ``graph`` and its subgraphs this converter does not implement."""
    unknown: set[str] = set()
    for node in graph.node:
        if _op_name(node) not in SUPPORTED_OPS:
            unknown.add(_op_name(node))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                unknown |= unknown_operators(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    unknown |= unknown_operators(sub)
    return unknown


StepRecord = tuple[Step, list[str], list[str], str]


class Program:
    """A graph's steps in order, and which values each step is the last to read."""

    def __init__(self, steps: list[StepRecord], outputs: list[str], keep: set[str]) -> None:
        self.steps = steps
        self.outputs = outputs
        self.release = last_uses(steps, set(outputs) | keep)

    def run(self, env: dict[str, Any]) -> tuple[Any, ...]:
        """Run on ``env`` (the graph's inputs and every outer value it reads), which it changes."""
        for (fn, ins, outs, _), done in zip(self.steps, self.release):
            result = fn([env[i] if i else None for i in ins])
            if isinstance(result, tuple):
                env.update((o, v) for o, v in zip(outs, result) if o)
            else:
                env[outs[0]] = result
            for name in done:  # an intermediate no later step reads: freed now, not at the end
                env.pop(name, None)
        return tuple(env[o] for o in self.outputs)


class _Builder:
    """Converts a graph and its subgraphs, sharing one table of constants."""

    def __init__(self, opset: int, float_dtype: torch.dtype) -> None:
        self.opset = opset
        self.float_dtype = float_dtype
        self.consts: dict[str, torch.Tensor] = {}
        #: Every name any step (at any depth) reads: the constants among them become buffers.
        self.reads: set[str] = set()

    def program(self, graph: onnx.GraphProto, inputs: Iterable[str]) -> tuple[Program, list[str]]:
        """``graph`` as a program, and the names it reads from outside (not its inputs, not
        values it makes): the outer values and constants its runner must put in its env."""
        defined = set(inputs)
        captured: list[str] = []

        def read(name: str) -> None:
            if name and name not in defined and name not in captured:
                captured.append(name)

        for init in graph.initializer:
            self.consts[init.name] = tensor_of(init)
        steps: list[StepRecord] = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.consts[node.output[0]] = constant_value(node)
                continue
            n = Node(node, self.consts, self.opset, self.float_dtype, subgraph=self.subgraph)
            try:
                fn = BUILDERS[_op_name(node)](n)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed node, reported with its name
                raise ModelError(f"cannot convert {node.op_type} node '{node.name}': {exc}") from None
            ins, outs = list(n.inputs), list(node.output)
            if all(not i or i in self.consts for i in ins) and node.op_type not in _NEVER_FOLDED:
                # Constant folding in full precision, once, here.
                try:
                    with torch.inference_mode():
                        result = fn([self.consts[i] if i else None for i in ins])
                except ModelError:
                    raise
                except Exception as exc:  # noqa: BLE001 - as above
                    raise ModelError(f"cannot evaluate {node.op_type} node '{node.name}': {exc}") from None
                for name, value in zip(outs, result if isinstance(result, tuple) else (result,)):
                    if name:
                        self.consts[name] = value.clone()
                continue
            for name in ins:
                read(name)
            self.reads.update(i for i in ins if i)
            defined.update(o for o in outs if o)
            steps.append((fn, ins, outs, node.op_type))
        outputs = [v.name for v in graph.output]
        for name in outputs:
            read(name)
        self.reads.update(outputs)
        return Program(steps, outputs, set()), captured

    def subgraph(self, graph: onnx.GraphProto) -> tuple[Program, list[str], list[str]]:
        """A subgraph as (program, its input names, the outer names it reads)."""
        inputs = [v.name for v in graph.input]
        program, captured = self.program(graph, inputs)
        return program, inputs, captured


#: Nodes kept as steps even when every input is constant: Shape's value is the input's shape
#: at run time, the same whatever is folded.
_NEVER_FOLDED = frozenset({"Shape"})


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch module: ``forward(*inputs)`` returns a tuple of outputs.

    ``float_dtype`` is the precision floating tensors run in: float initializers are stored
    in it and casts to float32 inside the graph cast to it instead. The caller casts float
    inputs to it and outputs back to their ONNX types.
    """

    def __init__(self, model: onnx.ModelProto, float_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        unknown = sorted(unknown_operators(graph))
        if unknown:
            raise UnsupportedOperators(
                f"the ONNX-to-torch converter does not support operator{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                "use the onnxruntime backend for this model",
            )
        initializers = {init.name for init in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        self.float_dtype = float_dtype
        builder = _Builder(opset, float_dtype)
        program, captured = builder.program(graph, self.input_names)
        consts = builder.consts
        missing = [name for name in captured if name not in consts]
        if missing:
            raise ModelError(f"graph value '{missing[0]}' is produced by no node")
        self._const_attr: dict[str, str] = {}
        for k, name in enumerate(sorted(n for n in consts if n in builder.reads)):
            value = consts[name]
            if value.is_floating_point() and value.dtype == torch.float32:
                value = value.to(float_dtype)
            attr = f"const{k}"
            self.register_buffer(attr, value.contiguous(), persistent=False)
            self._const_attr[name] = attr
        program.release = last_uses(program.steps, set(self.output_names) | set(self._const_attr))
        self._program = program

    @property
    def _steps(self) -> list[StepRecord]:
        return self._program.steps

    @property
    def _release(self) -> list[tuple[str, ...]]:
        return self._program.release

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, Any] = dict(zip(self.input_names, inputs))
        for name, attr in self._const_attr.items():
            env[name] = getattr(self, attr)
        return self._program.run(env)


def last_uses(steps: list[StepRecord], keep: set[str]) -> list[tuple[str, ...]]:
    """For each step, the values (inputs read or outputs made) no later step reads and
    ``keep`` does not hold: a 24-layer BERT would otherwise keep every activation alive."""
    last: dict[str, int] = {}
    for k, (_, ins, outs, _) in enumerate(steps):
        for name in (*ins, *outs):
            if name:
                last[name] = k
    release: list[list[str]] = [[] for _ in steps]
    for name, k in last.items():
        if name not in keep:
            release[k].append(name)
    return [tuple(names) for names in release]


def convert(model: onnx.ModelProto, float_dtype: torch.dtype = torch.float32) -> OnnxModule:
    """``model`` as an :class:`OnnxModule` in eval mode (ModelError when it cannot be converted)."""
    return OnnxModule(model, float_dtype).eval()
