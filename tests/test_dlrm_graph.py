"""The DLRM-v2 graph against an independent numpy model of torchrec's ``DLRM_DCN``, its known
answers, its hashing, and the same answers on every installed CPU backend.

The reference below is written from torchrec's formulas (``EmbeddingBag`` sum pooling,
``MLP`` with ReLU after every layer, ``InteractionDCNArch``'s dense-first concatenation,
``LowRankCrossNet``'s ``x_{l+1} = x0 * (W (V x_l) + b) + x_l``, ``OverArch``'s plain last
Linear, the reference backend's sigmoid), in float64, sharing nothing with the graph writer
but the weights' names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mlpi.core.contract.backend import Session
from mlpi.core.contract.errors import MlpiError, ModelError
from mlpi.models.dlrm_config import (
    BOTTOM_MLP,
    CROSS_LAYERS,
    CROSS_RANK,
    DENSE_FEATURES,
    DENSE_INPUT,
    EMBEDDING_DIM,
    HOTNESS,
    MULTI_HOT_WIDTH,
    OUTPUT,
    SPARSE_FEATURES,
    SPARSE_INPUT,
    TABLE_SIZES,
    TOP_MLP,
    Tables,
    column_offsets,
)
from mlpi.models.dlrm_graph import (
    build_weights,
    flops_per_row,
    graph_from_weights,
    known_prediction,
    write_known,
    write_random,
)

ort = pytest.importorskip("onnxruntime")

SMALL = Tables(max_rows=50)
BACKENDS = ("onnxruntime", "openvino", "pytorch")


# --------------------------------------------------------------------------- the independent reference


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _mlp(x: np.ndarray, weights: dict[str, np.ndarray], prefix: str, layers: int) -> np.ndarray:
    for layer in range(layers):
        name = f"{prefix}._mlp.{layer}._linear"
        x = _relu(x @ weights[f"{name}.weight"].astype(np.float64).T + weights[f"{name}.bias"])
    return x


def reference(weights: dict[str, np.ndarray], tables: Tables, dense: np.ndarray, sparse: np.ndarray,
              dense_first: bool = True) -> np.ndarray:
    """torchrec's DLRM_DCN + sigmoid, float64. ``dense_first=False`` puts the embeddings before
    the dense vector (wrong), to show the tests can tell."""
    offsets = column_offsets()
    pooled = []
    for k in range(SPARSE_FEATURES):
        table = weights[f"sparse_arch.embedding_bag_collection.embedding_bags.t_cat_{k}.weight"].astype(np.float64)
        rows = sparse[:, offsets[k] : offsets[k + 1]].astype(np.int64) % tables.sizes[k]  # --max-ind-range
        pooled.append(table[rows].sum(axis=1))  # EmbeddingBag(mode="sum")
    bottom = _mlp(dense.astype(np.float64), weights, "dense_arch.model", len(BOTTOM_MLP))
    parts = [bottom[:, None, :], np.stack(pooled, axis=1)]
    x0 = np.concatenate(parts if dense_first else parts[::-1], axis=1).reshape(len(dense), -1)
    x = x0
    for layer in range(CROSS_LAYERS):
        v = weights[f"inter_arch.crossnet.V_kernels.{layer}"].astype(np.float64)
        w = weights[f"inter_arch.crossnet.W_kernels.{layer}"].astype(np.float64)
        x = x0 * ((x @ v.T) @ w.T + weights[f"inter_arch.crossnet.bias.{layer}"]) + x
    x = _mlp(x, weights, "over_arch.model.0", len(TOP_MLP) - 1)
    logit = x @ weights["over_arch.model.1.weight"].astype(np.float64).T + weights["over_arch.model.1.bias"]
    return 1.0 / (1.0 + np.exp(-logit))


def inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense features as the dataset has them (log(1 + count)) and indices drawn over each
    feature's OFFICIAL range, so every reduced table's hashing matters; the first rows hold the
    extremes (0 and the official size - 1)."""
    rng = np.random.default_rng(seed)
    dense = np.log1p(rng.exponential(10.0, (n, DENSE_FEATURES))).astype(np.float32)
    high = np.repeat(np.asarray(TABLE_SIZES, np.int64), HOTNESS)
    sparse = (rng.random((n, MULTI_HOT_WIDTH)) * high).astype(np.int64)
    if n >= 2:
        sparse[0], sparse[1] = high - 1, 0
    return dense, sparse.astype(np.int32)


def run_ort(model: bytes | Path, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {DENSE_INPUT: dense, SPARSE_INPUT: sparse})[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], Path]:
    """Seed 3's weights for 50-row tables and their graph."""
    path = write_random(tmp_path_factory.mktemp("dlrm") / "dlrm.onnx", 3, SMALL)
    return build_weights(3, SMALL), path


# --------------------------------------------------------------------------- the graph


def test_signature() -> None:
    import onnx

    model = graph_from_weights(build_weights(0, SMALL), SMALL)
    onnx.checker.check_model(model)

    def shape(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    feeds = {v.name: (v.type.tensor_type.elem_type, shape(v)) for v in model.graph.input}
    assert feeds == {DENSE_INPUT: (onnx.TensorProto.FLOAT, ["N", 13]), SPARSE_INPUT: (onnx.TensorProto.INT32, ["N", 214])}
    [out] = model.graph.output
    assert (out.name, out.type.tensor_type.elem_type, shape(out)) == (OUTPUT, onnx.TensorProto.FLOAT, ["N", 1])


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_matches_the_torchrec_reference(small: tuple[dict[str, np.ndarray], Path], batch: int) -> None:
    weights, path = small
    dense, sparse = inputs(batch, seed=batch)
    got = run_ort(path, dense, sparse)
    want = reference(weights, SMALL, dense, sparse)
    assert got.shape == (batch, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_dense_vector_comes_first(small: tuple[dict[str, np.ndarray], Path]) -> None:
    """The reference with the embeddings first is far from the graph: the order is tested."""
    weights, path = small
    dense, sparse = inputs(64, seed=5)
    got = run_ort(path, dense, sparse)
    assert np.abs(got - reference(weights, SMALL, dense, sparse, dense_first=False)).max() > 1e-2


def test_predictions_spread(small: tuple[dict[str, np.ndarray], Path]) -> None:
    """Random weights do not saturate the sigmoid, nor collapse to one value."""
    _, path = small
    got = run_ort(path, *inputs(256, seed=9))
    assert 0.01 < got.min() and got.max() < 0.99
    assert got.std() > 0.02


def test_an_index_and_the_index_plus_the_table_size_read_the_same_row(small: tuple[dict[str, np.ndarray], Path]) -> None:
    _, path = small
    dense, sparse = inputs(8, seed=4)
    rows = np.repeat(np.asarray(SMALL.sizes, np.int64), HOTNESS)
    shifted = sparse.astype(np.int64) + rows * np.random.default_rng(0).integers(1, 1000, sparse.shape)
    assert shifted.max() < 2**31
    np.testing.assert_array_equal(run_ort(path, dense, shifted.astype(np.int32)), run_ort(path, dense, sparse))
    # ... while another row of one feature changes the prediction (the lookups are live).
    moved = sparse.copy()
    moved[:, column_offsets()[20]] = (moved[:, column_offsets()[20]] // 50) * 50 + (moved[:, column_offsets()[20]] + 1) % 50
    assert np.abs(run_ort(path, dense, moved) - run_ort(path, dense, sparse)).min() > 0


@pytest.mark.parametrize("max_rows", [50, 10000])
def test_the_known_graph_gives_the_known_answer(tmp_path: Path, max_rows: int) -> None:
    tables = Tables(max_rows=max_rows)
    path = write_known(tmp_path / "known.onnx", tables)
    dense, sparse = inputs(64, seed=max_rows)
    dense[:32] = np.random.default_rng(1).standard_normal((32, DENSE_FEATURES)).astype(np.float32) * 4  # signed too
    want = known_prediction(dense, sparse, tables)
    np.testing.assert_allclose(run_ort(path, dense, sparse), want, rtol=1e-6, atol=1e-6)
    assert want.std() > 0.05  # the answer depends on the inputs ...
    plain_sum = 0.25 * dense[:, :1].astype(np.float64) - 1 + 1e-6 * sparse.astype(np.int64).sum(axis=1, keepdims=True)
    assert np.abs(want - 1 / (1 + np.exp(-plain_sum))).max() > 1e-3  # ... and on the hashing


def test_known_prediction_by_hand() -> None:
    dense = np.zeros((1, DENSE_FEATURES), np.float32)
    dense[0, 0], dense[0, 1] = 4.0, 100.0
    sparse = np.zeros((1, MULTI_HOT_WIDTH), np.int32)
    sparse[0, 0] = 1_000_003  # feature 0 (50 rows): row 3
    sparse[0, 213] = 36 + 7  # feature 25 (36 rows): row 7
    expected = 1 / (1 + np.exp(-(0.25 * 4 - 1 + 1e-6 * (3 + 7))))
    assert known_prediction(dense, sparse, SMALL) == pytest.approx(expected, abs=1e-7)


def test_flops_per_row() -> None:
    bottom = 13 * 512 + 512 * 256 + 256 * 128
    cross = 3 * (3456 * 512 + 512 * 3456)
    top = 3456 * 1024 + 1024 * 1024 + 1024 * 512 + 512 * 256 + 256 * 1
    assert flops_per_row() == bottom + cross + top == 16_030_464
    assert (SPARSE_FEATURES + 1) * EMBEDDING_DIM == 3456 and CROSS_RANK == 512


def test_the_dense_weights_do_not_depend_on_the_tables() -> None:
    """Random graphs of any table size do the official model's dense work with the same weights."""
    small, larger = build_weights(0, SMALL), build_weights(0, Tables(max_rows=60))
    dense_names = [name for name in small if not name.startswith("sparse_arch.")]
    assert len(dense_names) == 2 * len(BOTTOM_MLP) + 3 * CROSS_LAYERS + 2 * len(TOP_MLP)
    for name in dense_names:
        np.testing.assert_array_equal(small[name], larger[name], err_msg=name)
    assert not np.array_equal(small[dense_names[0]], build_weights(1, SMALL)[dense_names[0]])


# --------------------------------------------------------------------------- writing


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_random_is_deterministic(tmp_path: Path, small: tuple[dict[str, np.ndarray], Path]) -> None:
    _, path = small
    again = write_random(tmp_path / "again.onnx", 3, SMALL)
    other = write_random(tmp_path / "other.onnx", 4, SMALL)
    assert _sha(again) == _sha(path) != _sha(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "other.onnx"]  # no temporary file left


def test_oversize_tables_are_refused(tmp_path: Path) -> None:
    for tables in (Tables(), Tables(max_rows=1_000_000)):
        with pytest.raises(ModelError) as caught:
            write_random(tmp_path / "big.onnx", 0, tables)
        assert "GB" in caught.value.message and "max_rows" in str(caught.value.hint)
        with pytest.raises(ModelError):
            write_known(tmp_path / "big.onnx", tables)
    assert not (tmp_path / "big.onnx").exists()


def test_the_default_reduced_tables(tmp_path: Path) -> None:
    """max_rows=10000 (the size runs use): the graph writes, loads and matches the reference."""
    tables = Tables(max_rows=10000)
    path = write_random(tmp_path / "dlrm.onnx", 0, tables)
    assert 75e6 < path.stat().st_size < 200e6
    dense, sparse = inputs(16, seed=10)
    np.testing.assert_allclose(run_ort(path, dense, sparse), reference(build_weights(0, tables), tables, dense, sparse),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- every CPU backend


def _session(name: str, path: Path) -> Session:
    from mlpi.core.contract.device import Device
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.options import build_options
    from mlpi.core.plugins.registry import Registry

    backend = Registry(PluginsConfig.load()).backend(name)
    try:
        backend.version()
    except MlpiError as exc:
        pytest.skip(f"backend {name} is not installed: {exc}")
    return backend.load(inspect_onnx(path), Device("cpu"), build_options(backend.Options, [], name), "fp32")


@pytest.mark.parametrize("name", BACKENDS)
def test_every_cpu_backend_agrees(tmp_path: Path, small: tuple[dict[str, np.ndarray], Path], name: str) -> None:
    """The random graph matches onnxruntime, and the known graph its answer, at several batch
    sizes, with indices over the official ranges (past 2^24: OpenVINO's int32 Mod and Div are
    inexact there, which the graph's hashing works around)."""
    _, path = small
    known = write_known(tmp_path / "known.onnx", SMALL)
    random_session, known_session = _session(name, path), _session(name, known)
    try:
        for batch in (1, 7, 64):
            dense, sparse = inputs(batch, seed=100 + batch)
            got = np.asarray(random_session.run({DENSE_INPUT: dense, SPARSE_INPUT: sparse})[OUTPUT])
            np.testing.assert_allclose(got, run_ort(path, dense, sparse), rtol=1e-5, atol=2e-6, err_msg=f"{name} batch {batch}")
            got = np.asarray(known_session.run({DENSE_INPUT: dense, SPARSE_INPUT: sparse})[OUTPUT])
            np.testing.assert_allclose(got, known_prediction(dense, sparse, SMALL), rtol=1e-6, atol=1e-6,
                                       err_msg=f"{name} known, batch {batch}")
    finally:
        random_session.close()
        known_session.close()
