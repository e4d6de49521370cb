"""DLRM-v2 on Criteo 1TB multi-hot (``dlrm-v2-99``, ``dlrm-v2-99.9``), as MLPerf Inference measures it.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch`` — ``python/main.py`` (the
response: float32 ``[prediction, label]`` for every row of a sample; samples grouped from
``tools/dist_quantile.txt``), ``python/multihot_criteo.py`` (the day-23 files, the first
half of them, the grouping), ``python/backend_dist_pytorch_native.py`` (torchrec's DLRM_DCN,
sigmoid on its output) and ``tools/accuracy-dlrm.py`` (see :mod:`mlpi.models.criteo_auc`);
rules from ``loadgen/mlperf.conf`` (``dlrm-v2.*``) and round v5.1, its last.

One LoadGen sample is one user's 100-700 user-item rows; the dataset says how many
(``Dataset.sample_rows``), so the core's batches count rows: ``--batch-size`` is the most
rows one batch holds, Offline and Server cut by rows. The pipeline joins a batch's samples
into runs of at most that many rows (a larger sample is split over several runs) and
answers each sample with its rows' ``[prediction, label]`` pairs, float32, as the reference
logs them.

Weights: the official model is a sharded torchrec checkpoint of 26 tables holding 204M rows
(97 GiB in fp32), with no checksum published and no ONNX. ``--model-path`` may name that
checkpoint's folder: :mod:`mlpi.models.dlrm_checkpoint` converts it once into this graph
(``-M max_rows=40000000`` for the official tables). Without it mlpi runs the reference
architecture with seeded random weights (:mod:`mlpi.models.dlrm_graph`) and every table
capped at ``max_rows`` rows, read at ``index % rows`` as the reference's ``--max-ind-range``
does (``-M max_rows=N``). The dense part, and so most of the cost per row, is the official
one; results record the cap and say the model is not the official one.

int8 calibration: MLCommons' calibration set is the first 128,000 rows of day 23's second half
(:data:`mlpi.models.calibration_lists.CRITEO`); the ``criteo`` dataset opens it as samples of
256 rows, and :func:`calibration_feeds` feeds each as one batch, with :func:`row_feeds`, the
pipeline's own feeds. Indices go in as the files hold them: the graph itself reads row
``index % rows`` of its capped tables, as it does in a run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.errors import ModelError, RunFailed
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.pipeline import Pipeline, PipelineContext
from mlpi.core.contract.postprocess import Responses
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.models.calibration_lists import CRITEO
from mlpi.models.dlrm_config import (
    DENSE_FEATURES,
    DENSE_INPUT,
    EMBEDDING_DIM,
    GROUP_SIZE_QUANTILES,
    GROUPING_SEED,
    HOTNESS,
    LABEL_INPUT,
    MULTI_HOT_WIDTH,
    OUTPUT,
    SPARSE_FEATURES,
    SPARSE_INPUT,
    TABLE_SIZES,
    Tables,
)

#: The FP32 reference AUC (%) the quality targets are fractions of.
REFERENCE_AUC = 80.31
#: Samples in the accuracy set: the first half of day 23, grouped as the reference groups it.
ACCURACY_SAMPLES = 330067
#: Rows per table of the random-weights model unless ``-M max_rows`` says otherwise: 150k rows
#: in all, 77 MB of fp32 (the official tables hold 204M).
DEFAULT_MAX_ROWS = 10_000

#: What ``mlpi fetch`` says: the official weights are not a file mlpi can fetch and convert.
DOWNLOAD_HINT = (
    "the official weights are a 97 GiB sharded torchrec checkpoint (MLCommons' R2 bucket, no ONNX): download it "
    "as recommendation/dlrm_v2/pytorch/README.md says, then --model-path FOLDER -M max_rows=40000000 "
    '(pip install "mlpi[dlrm-checkpoint]"); or run with seeded random weights and capped tables (-M max_rows=N)'
)

GRAPH = GraphSpec(
    (TensorSpec(DENSE_INPUT, "float32", (None, DENSE_FEATURES)), TensorSpec(SPARSE_INPUT, "int32", (None, MULTI_HOT_WIDTH))),
    (TensorSpec(OUTPUT, "float32", (None, 1)),),
)
#: A LoadGen sample: a group of rows, their features and click labels.
SAMPLE = (
    TensorSpec(DENSE_INPUT, "float32", (None, DENSE_FEATURES)),
    TensorSpec(SPARSE_INPUT, "int32", (None, MULTI_HOT_WIDTH)),
    TensorSpec(LABEL_INPUT, "float32", (None,)),
)

DATA = DataParams.of(
    hotness=HOTNESS,
    table_sizes=TABLE_SIZES,
    group_size_quantiles=GROUP_SIZE_QUANTILES,
    grouping_seed=GROUPING_SEED,
)


@dataclass(frozen=True)
class DlrmOptions:
    """``-M KEY=VALUE`` settings of the DLRM-v2 models."""

    max_rows: int = field(
        default=DEFAULT_MAX_ROWS,
        metadata={"help": "rows per embedding table at most; an index reads row index % rows (--max-ind-range)",
                  "min": 1},
    )
    shards: int = field(
        default=1,
        metadata={"help": "split the tables over this many graphs, shard k on unit k mod units of --device "
                          "(table-wise sharding; the dense part runs on every unit)", "min": 1, "max": SPARSE_FEATURES},
    )


def rules(fraction: float) -> Rules:
    """DLRM-v2's rules in its last round (v5.1): mlperf.conf ``dlrm-v2.*`` (204,800 samples
    loaded, Server p99 within 60 ms, Offline at least 24,576 samples), datacenter only."""
    return Rules(
        loadgen_key="dlrm-v2",
        benchmark=f"dlrm-v2-{fraction * 100:g}",
        audits=("TEST01",),
        audit_sampling_target=4096,
        response_dtype="float32",
        round="v5.1",
        quality=QualityTarget("AUC", REFERENCE_AUC, fraction, unit="%"),
        server_latency_ms=60,
        performance_sample_count=204800,
        offline_min_samples=24576,
        dataset_size=ACCURACY_SAMPLES,
        required_scenarios={"datacenter": ("Server", "Offline")},
    )


def row_feeds(dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
    """The one-graph model's feeds for a batch of rows: what every run (and calibration) sends."""
    return {DENSE_INPUT: dense, SPARSE_INPUT: sparse}


def calibration_feeds(dataset: Any, index: int) -> Iterator[Mapping[str, np.ndarray]]:
    """int8 calibration's feeds for loaded sample ``index``: its rows as one batch, as the
    pipeline feeds a sample that fits one run (``ModelSpec.calibration_feeds``)."""
    sample = dataset.sample(index)
    yield row_feeds(sample[DENSE_INPUT], sample[SPARSE_INPUT])


class GroupedRows(Pipeline):
    """A batch of samples as runs of at most ``batch_size`` rows; ``[prediction, label]`` per row.

    A single sample that fits one run is fed from the dataset's memory without a copy; other
    batches are copied into preallocated feeds, a run at a time (samples may straddle runs).
    A fixed-batch session gets its full batch, the rows past the data zero.
    """

    def __init__(self, context: PipelineContext) -> None:
        self.session = context.sessions[context.main_role]
        self.dataset = context.dataset
        caps = self.session.capabilities
        self.fixed = bool(caps.fixed_batch and caps.max_batch_size)
        limit = caps.max_batch_size
        self.rows = max(1, context.batch_size if limit is None else min(context.batch_size, limit))
        feed_rows = int(limit) if self.fixed and limit else self.rows
        self._dense = np.zeros((feed_rows, DENSE_FEATURES), dtype=np.float32)
        self._sparse = np.zeros((feed_rows, MULTI_HOT_WIDTH), dtype=np.int32)
        self._out = np.empty((0, 2), dtype=np.float32)
        names = [spec.name for spec in self.session.outputs]
        self.output = OUTPUT if OUTPUT in names else names[0]

    @property
    def sample_nbytes(self) -> int | None:
        return None

    def __call__(self, indices: Sequence[int]) -> Responses:
        samples = [self.dataset.sample(int(i)) for i in indices]
        counts = np.fromiter((len(s[LABEL_INPUT]) for s in samples), dtype=np.int64, count=len(samples))
        total = int(counts.sum())
        out = self._buffer(total)
        row = 0
        for sample, n in zip(samples, counts.tolist()):
            out[row : row + n, 1] = sample[LABEL_INPUT]
            row += n
        if len(samples) == 1 and total <= self.rows and not self.fixed:
            out[:, 0] = self._run(samples[0][DENSE_INPUT], samples[0][SPARSE_INPUT], total)
        else:
            self._run_in_pieces(samples, out)
        offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        np.cumsum(counts * out.itemsize * 2, out=offsets[1:])
        return Responses(out, offsets)

    def _buffer(self, rows: int) -> np.ndarray:
        """``[rows, 2]`` float32, kept from call to call (LoadGen copies responses at once)."""
        if len(self._out) < rows:
            self._out = np.empty((max(rows, 2 * len(self._out)), 2), dtype=np.float32)
        return self._out[:rows]

    def _run_in_pieces(self, samples: list, out: np.ndarray) -> None:
        fill = done = 0
        for sample in samples:
            dense, sparse = sample[DENSE_INPUT], sample[SPARSE_INPUT]
            start, n = 0, len(dense)
            while start < n:
                take = min(n - start, self.rows - fill)
                self._dense[fill : fill + take] = dense[start : start + take]
                self._sparse[fill : fill + take] = sparse[start : start + take]
                fill += take
                start += take
                if fill == self.rows:
                    out[done : done + fill, 0] = self._run(self._dense, self._sparse, fill)
                    done += fill
                    fill = 0
        if fill:
            out[done : done + fill, 0] = self._run(self._dense, self._sparse, fill)

    def _run(self, dense: np.ndarray, sparse: np.ndarray, n: int) -> np.ndarray:
        """Predictions of the first ``n`` rows, ``[n]`` float32."""
        if self.fixed:
            if dense is not self._dense:  # a view of the dataset: copy into the full-size feeds
                self._dense[:n], self._sparse[:n] = dense[:n], sparse[:n]
            self._dense[n:] = 0
            self._sparse[n:] = 0
            dense, sparse = self._dense, self._sparse
        else:
            dense, sparse = dense[:n], sparse[:n]
        prediction = self._infer(dense, sparse)
        sent = len(dense)
        if prediction.ndim == 0 or prediction.shape[0] != sent or prediction.size != sent:
            raise RunFailed(f"the backend answered '{self.output}' of shape {list(prediction.shape)} for a batch of "
                            f"{sent} rows (one prediction a row)",
                            "the backend is broken: report it to its authors (mlpi checks every batch's outputs)")
        return prediction.reshape(sent)[:n]

    def _infer(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """The model's output for these feeds (every row)."""
        return np.asarray(self.session.run(row_feeds(dense, sparse))[self.output])


class ShardedRows(GroupedRows):
    """:class:`GroupedRows` with the tables split over units (``-M shards=K``).

    Each run asks every table shard — a graph holding some features' tables, loaded on one
    unit only — for its features' pooled embeddings, all shards at once, gathers them in
    feature order and runs the dense part on this slot's own unit (where the rows are). On
    simulated cards every pooled embedding leaving a card and entering this one is charged
    to the host link (``-o link_gbps``), as the transfer between units a real system pays.
    """

    def __init__(self, context: PipelineContext, tables: Tables, shards: int) -> None:
        super().__init__(context)
        from concurrent.futures import ThreadPoolExecutor

        from mlpi.models.dlrm_graph import POOLED, shard_features, shard_role

        self.pooled_input = POOLED
        self.shards = [(context.session_for(shard_role(k)), features)
                       for k, features in enumerate(shard_features(tables, shards))]
        for session, _ in self.shards:
            limit = session.capabilities.max_batch_size
            if limit is not None and limit < len(self._dense):
                raise ModelError(f"a table shard takes at most {limit} rows, fewer than the dense part's {len(self._dense)}",
                                 f"pass --batch-size {limit} or less")
        self._pooled = np.zeros((len(self._dense), SPARSE_FEATURES, EMBEDDING_DIM), dtype=np.float32)
        self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="mlpi-dlrm-shard")

    def _infer(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        n = len(dense)
        pooled = self._pooled[:n]

        def lookup(shard: tuple) -> None:
            session, features = shard
            outputs = session.run({SPARSE_INPUT: sparse})
            pooled[:, features] = next(iter(outputs.values()))[:n]

        for future in [self._pool.submit(lookup, shard) for shard in self.shards]:
            future.result()
        return np.asarray(self.session.run({DENSE_INPUT: dense, self.pooled_input: pooled})[self.output])


def _graphs(tables: Tables, shards: int) -> dict[str, GraphSpec]:
    """The one graph, or the dense part and ``shards`` table graphs (dense first: it is fed)."""
    if shards == 1:
        return {"model": GRAPH}
    from mlpi.models.dlrm_graph import (
        DENSE_ROLE,
        POOLED,
        SHARD_OUTPUT,
        shard_features,
        shard_role,
    )

    graphs = {DENSE_ROLE: GraphSpec(
        (TensorSpec(DENSE_INPUT, "float32", (None, DENSE_FEATURES)),
         TensorSpec(POOLED, "float32", (None, SPARSE_FEATURES, EMBEDDING_DIM))),
        GRAPH.outputs,
    )}
    for k, features in enumerate(shard_features(tables, shards)):
        graphs[shard_role(k)] = GraphSpec(
            (GRAPH.inputs[1],), (TensorSpec(SHARD_OUTPUT, "float32", (None, len(features), EMBEDDING_DIM)),)
        )
    return graphs


def _spec(name: str, fraction: float, options: DlrmOptions) -> ModelSpec:
    from mlpi.models.criteo_auc import criteo_auc
    from mlpi.models.dlrm_checkpoint import checkpoint_format
    from mlpi.models.dlrm_graph import (
        GRAPH_VERSION,
        shard_role,
        write_random,
        write_sharded,
    )

    tables = Tables(max_rows=options.max_rows)
    shards = options.shards

    def build_random(path: Path, seed: int) -> Path | dict[str, Path]:
        if shards == 1:
            return write_random(path, seed, tables)
        return write_sharded(path, seed, tables, shards)

    def sharded(context: PipelineContext) -> Pipeline:
        return ShardedRows(context, tables, shards)

    def placement(units: int) -> dict[str, tuple[int, ...]]:
        return {shard_role(k): (k % units,) for k in range(shards)}

    graph_name = f"dlrm-v2-rows{options.max_rows}" + (f"-shards{shards}" if shards > 1 else "")
    return ModelSpec(
        name=name,
        description=f"DLRM-v2 (DCNv2), Criteo 1TB multi-hot click-through, AUC >= {fraction:.1%} of FP32 (MLPerf Inference)",
        graphs=_graphs(tables, shards),
        data=DATA,
        sample_inputs=SAMPLE,
        grouped_samples=True,
        rules=rules(fraction),
        datasets=("criteo",),
        pipeline=GroupedRows if shards == 1 else sharded,
        placement=None if shards == 1 else placement,
        score=criteo_auc,
        build_random=build_random,
        checkpoint=checkpoint_format(tables, shards),
        Options=DlrmOptions,
        configure=lambda chosen: _spec(name, fraction, chosen),
        options=options,
        unofficial=None if tables.official else f"embedding tables capped at {options.max_rows:,} rows (index % rows)",
        calibration=CRITEO,
        # only the one graph is derived; with shards the fed graph takes pooled embeddings
        calibration_feeds=calibration_feeds if shards == 1 else None,
        # models differing only in their rules share one random graph per configuration
        extra={"random_graph_version": GRAPH_VERSION, "random_graph_name": graph_name, "download_hint": DOWNLOAD_HINT},
    )


def dlrm_v2_99() -> ModelSpec:
    return _spec("dlrm-v2-99", 0.99, DlrmOptions())


def dlrm_v2_99_9() -> ModelSpec:
    return _spec("dlrm-v2-99.9", 0.999, DlrmOptions())
