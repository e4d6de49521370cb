"""``--shape``: fix a model's dynamic dimensions, as ``trtexec --shapes`` and OpenVINO's
``benchmark_app -shape`` let users do.

Most real models leave some dimension open besides the batch (sequence length, image size):
synthetic data cannot choose a size for it, and an engine built ahead of time needs one. Two
forms, repeatable:

- ``--shape INPUT=DIMS``: the input's whole shape, ``1x3x640x640``; ``?`` (or ``-1``) keeps a
  dimension dynamic, so ``?x3x640x640`` fixes the image and leaves the batch to ``--batch-size``;
- ``--shape NAME=SIZE``: every dimension the file names ``NAME`` (a symbolic ``dim_param``
  such as ``seq_len``), in every input that has it.

The shapes replace the file's in the plan (so synthetic data, planning, backends' engines and
the results see them) and are kept as given under ``plan.extra["shapes"]``. A size the file
fixes can only be given as it is: the file is not reshaped, the dynamic dimensions are chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.errors import UsageError

#: Where a plan keeps the ``--shape`` values as given.
EXTRA_KEY = "shapes"
_DYNAMIC = ("?", "-1")


def parse_shape_options(values: Sequence[str]) -> dict[str, str]:
    """``NAME=DIMS`` values by name, in order; a malformed one or a name given twice is refused."""
    parsed: dict[str, str] = {}
    for value in values:
        name, equals, dims = value.partition("=")
        name, dims = name.strip(), dims.strip()
        if not equals or not name or not dims:
            raise UsageError(f"--shape '{value}' is not NAME=DIMS",
                             "write --shape INPUT=1x3x224x224 (? for a dimension left dynamic) or --shape DIM_NAME=128")
        if name in parsed:
            raise UsageError(f"--shape gives '{name}' twice", "give each input or dimension name once")
        parsed[name] = dims
    return parsed


def apply_shapes(inputs: Sequence[TensorSpec], dim_names: Mapping[str, Sequence[str | None]],
                 shapes: Mapping[str, str]) -> list[TensorSpec]:
    """``inputs`` with the shapes given: by input name (the whole shape) or by a symbolic
    dimension's name (``dim_names``: each input's ``dim_param`` per dimension, None where the
    file has none)."""
    by_input = {spec.name: spec for spec in inputs}
    known_dims = {name for names in dim_names.values() for name in names if name}
    resolved = {spec.name: list(spec.shape) for spec in inputs}
    for name, text in shapes.items():
        if name in by_input:
            spec = by_input[name]
            dims = _dims(name, text)
            if len(dims) != len(spec.shape):
                raise UsageError(f"--shape {name}={text} has {len(dims)} dimension(s); input '{name}' has "
                                 f"{len(spec.shape)}: {format_shape(spec.shape)}",
                                 f"give all {len(spec.shape)}, ? for one left dynamic")
            for axis, (want, have) in enumerate(zip(dims, spec.shape)):
                if want is not None and have is not None and want != have:
                    raise UsageError(f"--shape {name}={text} sets dimension {axis} to {want}; the model fixes it at "
                                     f"{have} ({format_shape(spec.shape)})",
                                     "only dynamic dimensions can be chosen: give the model's size or ?")
                if want is not None:
                    resolved[name][axis] = want
        elif name in known_dims:
            size = _size(name, text)
            for input_name, names in dim_names.items():
                for axis, dim_name in enumerate(names):
                    if dim_name == name and input_name in resolved:
                        resolved[input_name][axis] = size
        else:
            dynamic = [f"{s.name} {format_shape(s.shape)}" for s in inputs if any(d is None for d in s.shape)]
            named = sorted(known_dims)
            raise UsageError(
                f"--shape {name}: the model has no input and no named dimension '{name}'",
                f"its inputs: {', '.join(f'{s.name} {format_shape(s.shape)}' for s in inputs)}"
                + (f"; its named dimensions: {', '.join(named)}" if named else "")
                + ("" if dynamic else "; every dimension is fixed already"),
            )
    return [TensorSpec(spec.name, spec.dtype, tuple(resolved[spec.name])) for spec in inputs]


def _dims(name: str, text: str) -> list[int | None]:
    return [None if part.strip() in _DYNAMIC else _size(name, part.strip(), whole=text) for part in text.split("x")]


def _size(name: str, text: str, whole: str | None = None) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        shown = whole if whole is not None else text
        raise UsageError(f"--shape {name}={shown}: '{text}' is not a size (a whole number of 1 or more)",
                         "write sizes like 1x3x640x640, ? for a dimension left dynamic")
    return size


def symbolic_dims(path: Path, outputs: bool = False) -> dict[str, tuple[str | None, ...]]:
    """Each graph input's (or output's) ``dim_param`` per dimension (None where it has a value
    or no name)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    values = graph.output if outputs else [value for value in graph.input if value.name not in initializers]
    return {
        value.name: tuple(dim.dim_param or None if not dim.HasField("dim_value") else None
                          for dim in value.type.tensor_type.shape.dim)
        for value in values
    }


__all__ = ["EXTRA_KEY", "apply_shapes", "parse_shape_options", "symbolic_dims"]
