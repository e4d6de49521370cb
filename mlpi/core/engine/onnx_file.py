"""Read an ONNX file's signature without running it, so a plan can be checked up front.

A model whose weights live in external-data files (``model.onnx`` + ``model.onnx.data``,
as exporters write graphs over 2 GB) is hashed over every one of those files, so a cache
keyed by the model's hash (compiled engines, converted copies) can never serve an engine
built from weights that have since changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlpi.core.contract.backend import ModelArtifact, TensorSpec
from mlpi.core.contract.errors import ModelError

_HINT = "pass --model-path with an .onnx file (exported with torch.onnx.export, tf2onnx, ...)"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def inspect_onnx(path: Path) -> ModelArtifact:
    """Check that ``path`` is a readable ONNX model and return its artifact description."""
    if not path.exists():
        raise ModelError(f"model file {path} does not exist", _HINT)
    if path.is_dir():
        raise ModelError(f"model path {path} is a directory, not an ONNX file", _HINT)
    try:
        with path.open("rb") as handle:
            head = handle.read(1)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}", "check its permissions") from None
    if not head:
        raise ModelError(f"model file {path} is empty", "download or export it again")

    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not an ONNX model or is corrupt ({type(exc).__name__})", _HINT) from None
    graph = proto.graph
    if not graph.node or not graph.output:
        raise ModelError(f"{path} is not an ONNX model or is corrupt (no graph)", _HINT)
    initializers = {init.name for init in graph.initializer}
    inputs = tuple(_spec(value) for value in graph.input if value.name not in initializers)
    outputs = tuple(_spec(value) for value in graph.output)
    digest = model_digest(path, external_data_files(proto, path))
    return ModelArtifact(path=path.resolve(), sha256=digest, inputs=inputs, outputs=outputs)


def external_data_files(proto: object, path: Path) -> dict[str, Path]:
    """The files a model's external-data tensors name, each checked to exist inside the
    model's folder (a location like ``../../etc/passwd`` or ``/dev/zero`` is refused)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = path.resolve().parent
    files: dict[str, Path] = {}
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(
                f"{path} names external data {location!r} outside its folder",
                "keep a model's external-data files next to its .onnx file, named relative to it",
            )
        if not target.is_file():
            raise ModelError(
                f"{path} keeps its weights in {location}, which is missing",
                f"copy {location} next to {path.name} (external-data files travel with their model)",
            )
        files[location] = target
    return dict(sorted(files.items()))


def model_digest(path: Path, external: dict[str, Path]) -> str:
    """sha256 of the model file; with external data (location -> file), of every file's
    name and digest."""
    main = sha256_of(path)
    if not external:
        return main
    digest = hashlib.sha256(f"{path.name}:{main}\n".encode())
    for location, file in external.items():
        digest.update(f"{location}:{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def _spec(value: object) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = "unknown"
    # -1 and 0 (exporters write them for "any size"; a PaddlePaddle batch is -1) are dynamic,
    # like a symbolic name or no value: never a size of -1 for a backend to build
    shape = tuple(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
                  for dim in tensor_type.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)  # type: ignore[attr-defined]


def node_subgraphs(node: Any) -> list[Any]:
    """The graphs a node holds in its attributes (If branches, Loop and Scan bodies)."""
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found


def graphs_within(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph nested in it, depth first, ``graph`` itself first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from graphs_within(sub)


def nodes_within(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of the subgraphs nested in it."""
    for each in graphs_within(graph):
        yield from each.node
