"""DLRM-v2's shape: the numbers every part of the benchmark (graph, dataset, pipeline) agrees on.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch`` — ``python/main.py`` and
``backend_pytorch_native.py`` (the table sizes, embedding dim 128, DCNv2 with 3 cross layers
of rank 512, bottom MLP 512-256-128, top MLP 1024-1024-512-256-1, sigmoid applied by the
distributed backend), ``tools/make_fake_criteo.sh`` (the multi-hot sizes) and
``python/multihot_criteo.py`` (the day-23 files and the sample grouping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DENSE_FEATURES = 13
SPARSE_FEATURES = 26
EMBEDDING_DIM = 128
#: Indices per row of each of the 26 categorical features (multi-hot sizes).
HOTNESS: tuple[int, ...] = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)
#: Rows of each feature's embedding table in the official model (``num_embeddings_per_feature``).
TABLE_SIZES: tuple[int, ...] = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)
BOTTOM_MLP: tuple[int, ...] = (512, 256, 128)
TOP_MLP: tuple[int, ...] = (1024, 1024, 512, 256, 1)
CROSS_LAYERS = 3
CROSS_RANK = 512
#: Indices of one row, all features side by side (the graph's ``sparse_features`` width).
MULTI_HOT_WIDTH = sum(HOTNESS)

#: Graph signature (role ``model``): float32 ``[N, 13]``, int32 ``[N, 214]`` (feature k's
#: indices in columns ``COLUMN_OFFSETS[k]:COLUMN_OFFSETS[k+1]``) -> float32 ``[N, 1]``.
DENSE_INPUT, SPARSE_INPUT, OUTPUT = "dense_features", "sparse_features", "prediction"
#: What a LoadGen sample holds besides the feeds: each row's click label (float32).
LABEL_INPUT = "labels"

#: The reference's group-size distribution (``tools/dist_quantile.txt``) and seed.
GROUP_SIZE_QUANTILES: tuple[int, ...] = (
    100, 100, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 300, 300, 400, 500, 600, 700,
)
GROUPING_SEED = 123


def column_offsets() -> np.ndarray:
    """``[27]`` int64: where each feature's indices start in a row of ``sparse_features``."""
    return np.concatenate(([0], np.cumsum(HOTNESS))).astype(np.int64)


@dataclass(frozen=True)
class Tables:
    """The embedding tables' row counts, and whether they are the official model's.

    ``max_rows`` (the reference's ``--max-ind-range``): each table holds at most that many
    rows and an index ``i`` reads row ``i % rows``; ``None``: the official sizes."""

    max_rows: int | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.max_rows is None:
            return TABLE_SIZES
        return tuple(min(size, self.max_rows) for size in TABLE_SIZES)

    @property
    def official(self) -> bool:
        return self.max_rows is None or self.max_rows >= max(TABLE_SIZES)

    @property
    def total_rows(self) -> int:
        return sum(self.sizes)

    def nbytes(self, itemsize: int = 4) -> int:
        return self.total_rows * EMBEDDING_DIM * itemsize
