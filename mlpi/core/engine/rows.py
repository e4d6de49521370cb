"""Batches that count rows: for datasets whose one sample is a group of rows.

DLRM's LoadGen sample is a user with 100-700 user-item rows, and what a batch costs is its
rows, not its samples. A dataset that says so (``Dataset.sample_rows()``) makes every batch
in the core hold at most ``--batch-size`` rows: Offline queries and Server batches are cut
by rows, calibration measures such batches, and a sample larger than the limit is a batch
of its own (the model's pipeline splits it into runs the sessions take).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cut_by_rows(rows: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` over consecutive samples of ``rows`` (each sample's row count,
    in query order): each cut holds at most ``limit`` rows, or one sample larger than that."""
    n = len(rows)
    if n == 0:
        return []
    ends = np.cumsum(rows, dtype=np.int64)
    cuts = []
    start, base = 0, 0
    while start < n:
        stop = int(np.searchsorted(ends, base + limit, side="right"))
        stop = max(stop, start + 1)
        cuts.append((start, stop))
        base = int(ends[stop - 1])
        start = stop
    return cuts


def first_cut(rows: np.ndarray, indices: Sequence[int], limit: int) -> int:
    """How many of the waiting samples ``indices`` the next batch takes (at least one)."""
    total = 0
    for k, index in enumerate(indices):
        total += int(rows[index])
        if total > limit:
            return max(k, 1)
    return len(indices)


def row_batch_size(requested: int | None, preferred: int, largest_sample: int, session_limit: int | None) -> int:
    """Rows per batch: the user's ``--batch-size``, else what the session prefers but at least
    the largest sample (so no sample is split unless asked), within what the session takes."""
    if requested is not None:
        return requested
    size = max(preferred, largest_sample)
    return size if session_limit is None else min(size, session_limit)
