"""Fake multi-hot Criteo day-23 files, in the layout the ``criteo`` dataset reads.

Followed: MLCommons inference ``recommendation/dlrm_v2/pytorch/tools/quickgen.py`` and
``make_fake_criteo.sh`` (dense ``uniform(0, 9)`` float32 ``[N, 13]``, labels ``randint(0, 2)``
int32 ``[N, 1]``, one int32 ``[N, hotness[k]]`` member per sparse feature in an uncompressed
npz, all drawn from numpy's legacy generator seeded with 123, in that order). Unlike
``quickgen.py`` (every index 0 or 1), indices cover each table, ``[0, min(table_size,
index_limit))``, so the tables' whole range is exercised.

``python -m mlpi.datasets.criteo_fake OUT --rows N [--seed S] [--variant V] [--index-limit L]``
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlpi.datasets.criteo import DENSE_WIDTH, VARIANTS, file_names, first_half
from mlpi.models.dlrm_config import HOTNESS, TABLE_SIZES


def write_fake_day23(folder: Path | str, rows: int, *, seed: int = 123, variant: str = "official",
                     index_limit: int | None = None, hotness: Sequence[int] = HOTNESS,
                     table_sizes: Sequence[int] = TABLE_SIZES) -> tuple[Path, Path, Path]:
    """Write the dense, sparse and label files of ``rows`` rows into ``folder`` (made if
    missing) under ``variant``'s names; returns their paths.

    The npz members are written one at a time (as ``np.savez`` writes them: stored, zip64),
    so memory holds one feature's indices at once, not all of them."""
    if rows < 1:
        raise ValueError(f"rows must be 1 or more, not {rows}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if index_limit is not None and index_limit < 1:
        raise ValueError(f"index_limit must be 1 or more, not {index_limit}")
    if len(hotness) != len(table_sizes):
        raise ValueError(f"{len(hotness)} hotness values but {len(table_sizes)} table sizes")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    dense_path, sparse_path, labels_path = (out / name for name in file_names(variant))
    state = np.random.RandomState(seed)
    np.save(dense_path, state.uniform(0.0, 9.0, size=(rows, DENSE_WIDTH)).astype(np.float32))
    np.save(labels_path, state.randint(0, 2, size=(rows, 1), dtype=np.int32))
    with zipfile.ZipFile(sparse_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for k, (hot, size) in enumerate(zip(hotness, table_sizes)):
            high = min(int(size), index_limit) if index_limit is not None else int(size)
            member = state.randint(0, high, size=(rows, int(hot)), dtype=np.int32)
            with archive.open(f"{k}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, member, allow_pickle=False)
    return dense_path, sparse_path, labels_path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, not argparse's usage block."""
        print(f"error: {message} (usage: python -m mlpi.datasets.criteo_fake OUT --rows N)", file=sys.stderr)
        raise SystemExit(2)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Write fake day-23 files and say what was written."""
    parser = _Parser(prog="python -m mlpi.datasets.criteo_fake", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write into (made if missing)")
    parser.add_argument("--rows", type=_positive, required=True, help="rows (user-item pairs) to write")
    parser.add_argument("--seed", type=int, default=123, help="numpy legacy seed (default 123, as quickgen.py)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="official", help="which file names to write")
    parser.add_argument("--index-limit", type=_positive, default=None,
                        help="keep indices below this (default: each table's official size)")
    args = parser.parse_args(argv)
    if not 0 <= args.seed < 2**32:
        parser.error(f"argument --seed: {args.seed} is not in [0, 2**32)")
    try:
        paths = write_fake_day23(args.out, args.rows, seed=args.seed, variant=args.variant, index_limit=args.index_limit)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path} ({path.stat().st_size} bytes)")
    used = first_half(args.rows) if args.variant == "official" else args.rows
    print(f"{args.rows} rows, variant {args.variant}, seed {args.seed}; the criteo dataset uses {used} of them in a run, "
          f"and int8 calibration lists may name any rows FIRST-LAST within 0-{args.rows - 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
