"""Criteo's memory: what loading LoadGen's performance set costs, against the dataset's size.

DLRM-v2's day 23 is ~90 GB and LoadGen keeps 204,800 of its samples loaded, so the
``criteo`` dataset memory-maps the files and copies only the loaded groups. This writes fake
day-23 files (``mlpi.datasets.criteo_fake``) of ``--rows`` rows, then, each in a fresh process,
opens them, loads the first ``--loaded`` groups (as LoadGen's performance set) and reports the
peak resident memory from the open on (Linux: ``/proc/self/clear_refs`` resets the peak after
the imports); it does the same on files holding only those groups' rows (1x). The
two peaks should match: memory follows the loaded samples, not the dataset.

    python benchmarks/criteo_memory.py [--rows 1000000] [--loaded 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
from mlpi.core.contract.dataset import DatasetRequest
from mlpi.datasets.criteo import Criteo
from mlpi.models import dlrm

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

folder, loaded = Path(sys.argv[1]), int(sys.argv[2])
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on: imports are not the dataset's
before = status("VmRSS")
dataset = Criteo().open(DatasetRequest(inputs=dlrm.SAMPLE, params=dlrm.DATA, path=folder))
groups = list(range(min(loaded, dataset.count)))
dataset.load(groups)
rows = int(dataset.sample_rows()[groups].sum())
print(json.dumps({"groups": dataset.count, "loaded_groups": len(groups), "loaded_rows": rows,
                  "baseline_kb": before, "peak_kb": status("VmHWM")}))
"""


def measure(folder: Path, loaded: int) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(loaded)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large fake day 23")
    parser.add_argument("--loaded", type=int, default=400, help="groups loaded (the performance set)")
    args = parser.parse_args()

    from mlpi.datasets.criteo_fake import write_fake_day23

    with tempfile.TemporaryDirectory(prefix="mlpi-criteo-memory-") as tmp:
        large = Path(tmp) / "large"
        paths = write_fake_day23(large, args.rows, variant="debug")
        size = sum(p.stat().st_size for p in paths)
        big = measure(large, args.loaded)
        small = Path(tmp) / "small"
        small_paths = write_fake_day23(small, big["loaded_rows"], variant="debug")
        one = measure(small, args.loaded)
        small_size = sum(p.stat().st_size for p in small_paths)
    loaded_mb = big["loaded_rows"] * (13 * 4 + 214 * 4 + 4) / 2**20
    print(f"loaded: {big['loaded_groups']} groups, {big['loaded_rows']:,} rows, {loaded_mb:,.0f} MiB as arrays")
    print(f"{'files':<28}{'groups':>8}{'on disk MiB':>13}{'peak RSS MiB':>14}{'growth MiB':>12}")
    for label, m, on_disk in (("10x: whole dataset", big, size), ("1x: the loaded groups only", one, small_size)):
        growth = (m["peak_kb"] - m["baseline_kb"]) / 1024
        print(f"{label:<28}{m['groups']:>8,}{on_disk / 2**20:>13,.0f}{m['peak_kb'] / 1024:>14,.0f}{growth:>12,.0f}")
    grow = [(m["peak_kb"] - m["baseline_kb"]) for m in (big, one)]
    print(f"peak RSS growth, 10x dataset / 1x dataset: {grow[0] / grow[1]:.3f}; growth / loaded arrays: "
          f"{grow[0] / 1024 / loaded_mb:.2f} "
          f"(the dataset is {size / small_size:.1f}x larger on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
