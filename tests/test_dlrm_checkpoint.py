"""DLRM-v2's official weights: a torchrec checkpoint, written as MLCommons' reference writes and
reads it, converted by mlpi into graphs that predict what torchrec's own model predicts.

The checkpoint is made by ``tests/dlrm_torchrec_checkpoint.py`` in a subprocess, with torchrec
importable there: installed beside mlpi, or in a ``pip install --target`` folder named by
``MLPI_TORCHREC_PATH`` (CI's way: torchrec's wheel requires the CUDA build of fbgemm-gpu, so
it and the CPU build are installed there without dependencies).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchsnapshot")
onnxruntime = pytest.importorskip("onnxruntime")

from conftest import one_error, one_line_error, run_cli

from mlpi.core.contract.errors import ModelError
from mlpi.models.dlrm_checkpoint import (
    MANIFEST,
    convert_checkpoint,
    identity,
    recognises,
)
from mlpi.models.dlrm_config import EMBEDDING_DIM, SPARSE_FEATURES, Tables
from mlpi.models.dlrm_graph import DENSE_ROLE, POOLED, shard_features, shard_role

ROWS = 8
TORCHREC_PATH = os.environ.get("MLPI_TORCHREC_PATH")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``snapshot`` (the checkpoint, tables of 8 rows) and ``rows.npz`` (torchrec's predictions)."""
    if importlib.util.find_spec("torchrec") is None and not TORCHREC_PATH:
        pytest.skip("torchrec (with fbgemm-gpu-cpu) writes the reference checkpoint: install it, or set "
                    "MLPI_TORCHREC_PATH to a pip --target folder holding it")
    out = tmp_path_factory.mktemp("dlrm-checkpoint")
    env = dict(os.environ)
    if TORCHREC_PATH:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (TORCHREC_PATH, env.get("PYTHONPATH")) if p)
    writer = Path(__file__).with_name("dlrm_torchrec_checkpoint.py")
    proc = subprocess.run([sys.executable, str(writer), str(out), str(ROWS)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _predict(paths: dict[str, Path], dense: np.ndarray, sparse: np.ndarray, tables: Tables) -> np.ndarray:
    """The converted graphs' predictions: the one graph, or every table shard's pooled
    embeddings put in feature order and fed with the dense features to the dense part."""
    if "model" in paths:
        session = onnxruntime.InferenceSession(str(paths["model"]))
        return session.run(None, {"dense_features": dense, "sparse_features": sparse})[0].reshape(-1)
    pooled = np.zeros((len(dense), SPARSE_FEATURES, EMBEDDING_DIM), np.float32)
    for k, features in enumerate(shard_features(tables, len(paths) - 1)):
        shard = onnxruntime.InferenceSession(str(paths[shard_role(k)]))
        pooled[:, features] = shard.run(None, {"sparse_features": sparse})[0]
    dense_part = onnxruntime.InferenceSession(str(paths[DENSE_ROLE]))
    return dense_part.run(None, {"dense_features": dense, POOLED: pooled})[0].reshape(-1)


@pytest.mark.parametrize("shards", [1, 3])
def test_a_converted_checkpoint_predicts_what_torchrec_predicts(made: Path, tmp_path: Path, shards: int) -> None:
    tables = Tables(ROWS)
    paths = convert_checkpoint(made / "snapshot", tmp_path, tables, shards)
    rows = np.load(made / "rows.npz")
    got = _predict(paths, rows["dense"], rows["sparse"], tables)
    want = rows["prediction"]
    assert want.std() > 1e-3  # rows that differ, so a wrong weight or index shows
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    for path in paths.values():  # every weight is external data beside its graph
        assert path.with_name(path.name + ".data").stat().st_size > path.stat().st_size


def test_mlpi_run_converts_a_checkpoint_once(made: Path, tmp_path: Path) -> None:
    env = {"MLPI_CACHE": str(tmp_path / "cache")}
    args = ["run", "--model", "dlrm-v2-99", "-M", f"max_rows={ROWS}", "--model-path", str(made / "snapshot"),
            "-s", "Offline", "--quick", "--output", str(tmp_path / "results")]
    first = run_cli(args, tmp_path, env)
    assert first.returncode in (0, 3), first.stderr  # 3: INVALID, as a loaded machine may make a quick run
    assert "mlpi: converting the torchrec checkpoint snapshot into model (once)" in first.stderr
    second = run_cli(args, tmp_path, env)
    assert second.returncode in (0, 3), second.stderr
    assert "converting" not in second.stderr
    assert "embedding tables capped at 8 rows" in second.stdout


def test_a_checkpoint_of_other_tables_names_the_max_rows_that_fits(made: Path, tmp_path: Path) -> None:
    proc = run_cli(["run", "--model", "dlrm-v2-99", "--model-path", str(made / "snapshot"), "-s", "Offline", "--quick"],
                   tmp_path, {"MLPI_CACHE": str(tmp_path / "cache")})
    one_error(proc, "the checkpoint's tables hold 199 rows", "max_rows=10000")
    assert f"hint: run with -M max_rows={ROWS}" in proc.stderr


def test_a_weight_file_cut_short_is_one_error(made: Path, tmp_path: Path) -> None:
    broken = tmp_path / "snapshot"
    shutil.copytree(made / "snapshot", broken)
    for file in (broken / "batched").iterdir():
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ModelError) as excinfo:
        convert_checkpoint(broken, tmp_path / "graphs", Tables(ROWS), 1)
    one_line_error(excinfo, "cannot read", str(broken))


def test_the_identity_follows_the_files(made: Path, tmp_path: Path) -> None:
    copy = tmp_path / "snapshot"
    shutil.copytree(made / "snapshot", copy)
    before = identity(copy)
    assert identity(copy) == before
    weights = next((copy / "batched").iterdir())
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert identity(copy) != before


def test_a_folder_is_a_checkpoint_by_its_manifest(tmp_path: Path) -> None:
    assert not recognises(tmp_path)
    (tmp_path / MANIFEST).write_text("not yaml: [")
    assert recognises(tmp_path)
    assert not recognises(tmp_path / MANIFEST)


def test_an_unreadable_manifest_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / MANIFEST).write_text("{not: [a manifest")
    proc = run_cli(["run", "--model", "dlrm-v2-99", "--model-path", str(folder), "-s", "Offline", "--quick"],
                   tmp_path, {"MLPI_CACHE": str(tmp_path / "cache")})
    one_error(proc, "not a readable torchsnapshot manifest")


def test_a_cross_bias_stored_as_a_column_is_read_as_the_graph_takes_it(tmp_path: Path) -> None:
    """torchrec versions that keep a cross-net bias as [3456, 1]: read whole, given as [3456]."""
    import torch
    from torchsnapshot import Snapshot, StateDict

    from mlpi.models.dlrm_checkpoint import SnapshotWeights

    bias = torch.randn(3456, 1)
    Snapshot.take(path=str(tmp_path / "snapshot"), app_state={"model": StateDict(**{"model.inter_arch.crossnet.bias.0": bias})})
    weights = SnapshotWeights(tmp_path / "snapshot")
    assert weights.shape_of("inter_arch.crossnet.bias.0") == (3456,)
    np.testing.assert_array_equal(weights["inter_arch.crossnet.bias.0"], bias.numpy().reshape(-1))
