"""Control flow: If, Loop and Scan, whose subgraphs are converted like the main graph.

Follows the ONNX operator specs (``onnx/defs/controlflow/defs.py``). A subgraph reads outer
values by name: its node's step takes them as extra inputs (:meth:`Node.add_input`), so they
stay alive until it has run, and hands them to the subgraph's program with its own inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mlpi.backends.onnx_to_torch.node import Args, Node, Step, axis_of


def _bind(n: Node, attr: str) -> tuple[Any, list[str], Callable[[Args], dict[str, Any]]]:
    """Subgraph ``attr`` of the node: (program, its input names, args -> the outer values it reads)."""
    if n.subgraph is None:
        raise n.unsupported("has a subgraph where none can be converted")
    program, inputs, captured = n.subgraph(n.attrs[attr])
    positions = [(name, n.add_input(name)) for name in captured]
    return program, inputs, lambda a: {name: a[i] for name, i in positions}


def _if(n: Node) -> Step:
    then_program, _, then_env = _bind(n, "then_branch")
    else_program, _, else_env = _bind(n, "else_branch")

    def run(a: Args) -> Any:
        if bool(a[0].reshape(-1)[0]):
            out = then_program.run(then_env(a))
        else:
            out = else_program.run(else_env(a))
        return out if len(out) != 1 else out[0]

    return run


def _loop(n: Node) -> Step:
    body, inputs, outer = _bind(n, "body")
    carried = len(n.proto.input) - 2

    def run(a: Args) -> Any:
        trips = int(a[0].reshape(-1)[0]) if a[0] is not None else None
        cond = bool(a[1].reshape(-1)[0]) if a[1] is not None else True
        state = list(a[2 : 2 + carried])
        scans: list[list[torch.Tensor]] | None = None
        i = 0
        while cond and (trips is None or i < trips):
            env = outer(a)
            env.update(zip(inputs, [torch.tensor(i, dtype=torch.int64), torch.tensor(cond), *state]))
            out = body.run(env)
            cond = bool(out[0].reshape(-1)[0])
            state = list(out[1 : 1 + carried])
            if scans is None:
                scans = [[] for _ in out[1 + carried :]]
            for k, value in enumerate(out[1 + carried :]):
                scans[k].append(value)
            i += 1
        n_scans = len(n.proto.output) - carried
        if scans is None:  # no iteration: empty scan outputs, of unknown element shape
            stacked = [torch.zeros((0,), dtype=torch.float32) for _ in range(n_scans)]
        else:
            stacked = [torch.stack(values) for values in scans]
        result = (*state, *stacked)
        return result if len(result) != 1 else result[0]

    return run


def _scan(n: Node) -> Step:
    if n.opset < 9:
        raise n.unsupported(f"is opset {n.opset} (Scan before opset 9 has a sequence_lens input)")
    body, inputs, outer = _bind(n, "body")
    scan_count = int(n.attr("num_scan_inputs"))
    state_count = len(n.proto.input) - scan_count
    in_axes = list(n.attr("scan_input_axes") or [0] * scan_count)
    in_dirs = list(n.attr("scan_input_directions") or [0] * scan_count)
    out_count = len(n.proto.output) - state_count
    out_axes = list(n.attr("scan_output_axes") or [0] * out_count)
    out_dirs = list(n.attr("scan_output_directions") or [0] * out_count)

    def run(a: Args) -> Any:
        state = list(a[:state_count])
        scanned = []
        for k, x in enumerate(a[state_count : state_count + scan_count]):
            x = x.movedim(axis_of(in_axes[k], x.dim()), 0)
            scanned.append(x.flip(0) if in_dirs[k] else x)
        steps = int(scanned[0].shape[0]) if scanned else 0
        outs: list[list[torch.Tensor]] = [[] for _ in range(out_count)]
        for t in range(steps):
            env = outer(a)
            env.update(zip(inputs, [*state, *(x[t] for x in scanned)]))
            out = body.run(env)
            state = list(out[:state_count])
            for k, value in enumerate(out[state_count:]):
                outs[k].append(value)
        stacked = []
        for k, values in enumerate(outs):
            y = torch.stack(values)
            if out_dirs[k]:
                y = y.flip(0)
            stacked.append(y.movedim(0, axis_of(out_axes[k], y.dim())))
        result = (*state, *stacked)
        return result if len(result) != 1 else result[0]

    return run


BUILDERS: dict[str, Callable[[Node], Step]] = {"If": _if, "Loop": _loop, "Scan": _scan}
