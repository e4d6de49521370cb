"""DLRM-v2's official weights: MLCommons' torchrec checkpoint, read into mlpi's graph.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch/python/backend_pytorch_native.py``
(torchrec's ``DLRM_DCN`` inside ``DLRMTrain``, wrapped by ``DistributedModelParallel`` and
restored with torchsnapshot's ``Snapshot(path).restore(app_state={"model": model})``: every
weight is the snapshot entry ``<rank>/model/model.<DLRM_DCN state-dict key>``, the 26 tables as
``ShardedTensor`` entries whose shards may sit in several ranks' files) and the README's
"Downloading model weights" (a folder with ``batched`` and ``sharded`` sub-folders and the
``.snapshot_metadata`` manifest). torchsnapshot 0.1's ``Snapshot.read_object`` reads a
sharded entry whole into one tensor.

Needs torch and torchsnapshot (``pip install "mlpi[dlrm-checkpoint]"``), not torchrec: the
graph is mlpi's own (:mod:`mlpi.models.dlrm_graph`), filled with the checkpoint's weights. The
weights go to ONNX external data beside each graph, a table at a time, so the official 97 GiB
model converts on a machine with the memory for its largest table (40M rows, 20 GiB), and the
checkpoint is read once: the graphs are kept under its identity (:func:`identity`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mlpi.core.contract.errors import ModelError
from mlpi.models.dlrm_config import SPARSE_FEATURES, TABLE_SIZES, Tables
from mlpi.models.dlrm_graph import LazyWeights, table_name

#: The manifest torchsnapshot writes at the top of a snapshot folder.
MANIFEST = ".snapshot_metadata"
#: The app-state key the reference restores the model under, and DLRMTrain's attribute
#: holding DLRM_DCN: every weight's entry is ``<rank>/model/model.<key>``.
APP_KEY = "model"
STATE_PREFIX = "model."
INSTALL_HINT = 'pip install "mlpi[dlrm-checkpoint]" (torch and torchsnapshot)'


def recognises(path: Path) -> bool:
    """A torchsnapshot folder: its manifest is there (nothing else is read)."""
    return path.is_dir() and (path / MANIFEST).is_file()


def identity(path: Path) -> str:
    """sha256 over the manifest and every file's path, size and modification time: a snapshot
    rewritten in place converts afresh, without hashing 97 GiB of weights on every run."""
    digest = hashlib.sha256((path / MANIFEST).read_bytes())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _open(path: Path) -> Any:
    try:
        import torch  # noqa: F401
        from torchsnapshot import Snapshot
    except ImportError as exc:
        raise ModelError(f"reading the torchrec checkpoint {path} needs torch and torchsnapshot ({exc})",
                         INSTALL_HINT) from None
    return Snapshot(path=str(path))


def _entry_shape(entry: Any) -> tuple[int, ...] | None:
    """A tensor entry's whole shape: a plain tensor's own, a sharded one's from its shards' extents."""
    if getattr(entry, "type", None) in ("Tensor", "ChunkedTensor"):
        return tuple(int(d) for d in entry.shape)
    if getattr(entry, "type", None) == "ShardedTensor" and entry.shards:
        dims = len(entry.shards[0].offsets)
        return tuple(max(int(s.offsets[d]) + int(s.sizes[d]) for s in entry.shards) for d in range(dims))
    return None


def _stored(entry: Any) -> Iterator[tuple[str, tuple[int, int] | None]]:
    """Every file and byte range an entry's data is stored in (a sharded or chunked tensor's pieces too)."""
    if getattr(entry, "type", None) == "Tensor":
        yield entry.location, (tuple(entry.byte_range) if entry.byte_range is not None else None)
    for piece in [*getattr(entry, "shards", ()), *getattr(entry, "chunks", ())]:
        yield from _stored(piece.tensor)


def _short_files(folder: Path, entry: Any) -> list[str]:
    """The files an entry needs that are missing or end before its bytes do."""
    short = []
    for location, byte_range in _stored(entry):
        file = folder / location
        size = file.stat().st_size if file.is_file() else None
        if size is None:
            short.append(f"{location} is missing")
        elif byte_range is not None and size < byte_range[1]:
            short.append(f"{location} holds {size:,} bytes, the entry ends at {byte_range[1]:,}")
    return short


class SnapshotWeights(LazyWeights):
    """The checkpoint's weights by mlpi's names (torchrec's state-dict keys) in the graph's
    shapes, read one at a time when a graph takes them (:class:`mlpi.models.dlrm_graph.LazyWeights`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._snapshot = _open(path)
        try:
            manifest = self._snapshot.get_manifest()
        except Exception as exc:  # noqa: BLE001 - torchsnapshot raises anything on a bad manifest
            raise ModelError(f"{path / MANIFEST} is not a readable torchsnapshot manifest ({type(exc).__name__}: {exc})",
                             "point --model-path at the folder MLCommons' download made (it holds .snapshot_metadata)") from None
        self._entries: dict[str, tuple[str, Any]] = {}
        for key, entry in manifest.items():
            rank, _, rest = key.partition("/")
            app, _, name = rest.partition("/")
            if app == APP_KEY and name.startswith(STATE_PREFIX) and rank.isdigit():
                self._entries.setdefault(name.removeprefix(STATE_PREFIX), (key, entry))
        if not self._entries:
            raise ModelError(f"{path} holds no weights under '{APP_KEY}/{STATE_PREFIX}...' (not a DLRM-v2 checkpoint?)",
                             "point --model-path at MLCommons' DLRM-v2 model_weights folder")

    def _stored_shape(self, name: str) -> tuple[int, ...]:
        shape = _entry_shape(self._entries[name][1])
        if shape is None:
            raise ModelError(f"{self.path}: {name} is not a tensor in the checkpoint", "use MLCommons' DLRM-v2 checkpoint")
        return shape

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The graph's shape of ``name``: as stored, except a cross-net bias torchrec kept as
        ``[3456, 1]``, given as ``[3456]`` (same values)."""
        shape = self._stored_shape(name)
        return shape[:1] if ".crossnet.bias." in name and len(shape) == 2 and shape[1] == 1 else shape

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> np.ndarray:
        import torch

        key, entry = self._entries[name]
        short = _short_files(self.path, entry)
        # torchsnapshot logs a failed read of a batched file and returns (its asyncio task's
        # error is never retrieved), so the files are checked first and the tensor starts as
        # NaN: whatever is not read shows.
        out = torch.full(self._stored_shape(name), float("nan"), dtype=torch.float32)
        if not short:
            try:
                self._snapshot.read_object(key, obj_out=out)
            except Exception as exc:  # noqa: BLE001 - a missing or short file surfaces as anything
                short = [f"{type(exc).__name__}: {exc}"]
        if short or bool(torch.isnan(out).any()):
            raise ModelError(f"cannot read {name} from {self.path} ({'; '.join(short[:2]) or 'NaN where weights should be: left unread, or stored so'})",
                             "download the checkpoint again: a file of it is missing or cut short")
        return out.numpy().reshape(self.shape_of(name))

    def table_sizes(self) -> tuple[int, ...]:
        """Rows of each of the 26 tables, from the manifest."""
        missing = [k for k in range(SPARSE_FEATURES) if table_name(k) not in self]
        if missing:
            raise ModelError(f"{self.path} has no table for sparse feature(s) {', '.join(map(str, missing[:5]))}",
                             "use MLCommons' DLRM-v2 checkpoint: it holds the 26 tables t_cat_0 ... t_cat_25")
        return tuple(self.shape_of(table_name(k))[0] for k in range(SPARSE_FEATURES))


def _check_tables(weights: SnapshotWeights, tables: Tables) -> None:
    found = weights.table_sizes()
    if found == tables.sizes:
        return
    fits = next((rows for rows in sorted({*found, max(TABLE_SIZES)}) if Tables(rows).sizes == found), None)
    hint = (f"run with -M max_rows={fits}" + (" (the official tables)" if Tables(fits).official else "")
            if fits is not None else "its tables are not the reference's sizes, capped or not, so mlpi cannot run it as DLRM-v2")
    raise ModelError(
        f"the checkpoint's tables hold {sum(found):,} rows (largest {max(found):,}), "
        f"not the {tables.total_rows:,} of this run's tables (max_rows={tables.max_rows})", hint)


def convert_checkpoint(path: Path, folder: Path, tables: Tables, shards: int) -> dict[str, Path]:
    """The checkpoint at ``path`` as mlpi's DLRM-v2 graph(s) in ``folder``: ``{"model": ...}``,
    or the dense part and ``shards`` table graphs; each graph's weights in ``<graph>.onnx.data``."""
    from mlpi.core.results.rundir import write_bytes_atomic
    from mlpi.models.dlrm_graph import (
        DENSE_ROLE,
        ExternalData,
        dense_from_weights,
        graph_from_weights,
        shard_features,
        shard_from_weights,
        shard_role,
    )

    weights = SnapshotWeights(path)
    _check_tables(weights, tables)
    folder.mkdir(parents=True, exist_ok=True)
    what = f"converted from the torchrec checkpoint {path.name} ({'official tables' if tables.official else f'tables of at most {tables.max_rows} rows'})"
    builds: dict[str, Any] = {}
    if shards == 1:
        builds["model"] = lambda ext: graph_from_weights(weights, tables, f"DLRM-v2 {what}", ext)
    else:
        builds[DENSE_ROLE] = lambda ext: dense_from_weights(weights, tables, f"DLRM-v2 dense part {what}", ext)
        for k, features in enumerate(shard_features(tables, shards)):
            builds[shard_role(k)] = lambda ext, f=features: shard_from_weights(weights, tables, f, f"DLRM-v2 tables {f} {what}", ext)
    paths: dict[str, Path] = {}
    for role, build in builds.items():
        paths[role] = folder / f"{role}.onnx"
        try:
            with ExternalData(folder / f"{role}.onnx.data") as external:
                model = build(external)
        except ValueError as exc:
            raise ModelError(f"the checkpoint at {path} does not fit DLRM-v2's graph: {exc}",
                             "use MLCommons' DLRM-v2 checkpoint") from None
        write_bytes_atomic(paths[role], model.SerializeToString())
        onnx.checker.check_model(str(paths[role]))  # beside its data now
    return paths


def checkpoint_format(tables: Tables, shards: int) -> Any:
    """DLRM-v2's :class:`~mlpi.core.contract.model.CheckpointFormat` for these tables and shards."""
    from mlpi.core.contract.model import CheckpointFormat

    return CheckpointFormat(
        describes="torchrec checkpoint",
        recognises=recognises,
        identity=identity,
        convert=lambda path, folder: convert_checkpoint(path, folder, tables, shards),
    )
