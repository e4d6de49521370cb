"""How much memory LoadGen will hold for a test's queries, checked before the test starts.

LoadGen generates every query of a performance test up front (Offline: one query of
``expected QPS x min duration`` samples; Server, SingleStream, MultiStream: the whole
schedule) and keeps per-sample records until the end. At a near-free model's rate that is
tens of millions of samples: a 10 s null-backend Offline run held 4 GB, the official 600 s
would need hundreds, and ``--target-qps 1e9`` ends in ``std::bad_alloc``. mlpi estimates the
figure from the expectations LoadGen will be given and refuses a test that cannot fit in the
memory available, with one line naming the ways on, before LoadGen allocates anything.
"""

from __future__ import annotations

import math

from mlpi.core.contract.errors import UsageError

#: Bytes LoadGen holds per generated sample (Offline) or query (the others), measured with
#: mlperf-loadgen 6.0.17 on the null backend as the slope of the test process's peak memory
#: over two durations: Offline 163 (8.4M and 26.8M samples), Server 266 (40k and 120k
#: queries), SingleStream 246 (1.2M and 3.9M queries); rounded up.
BYTES_PER_QUERY = 300
#: LoadGen generates about this much more than the duration needs.
MARGIN = 1.1
#: The share of the memory available now that LoadGen's queries may take.
SHARE = 0.8


def generated_queries(scenario: str, *, qps: float = 0.0, latency_s: float = 0.0, duration_s: float,
                      min_queries: int = 0) -> int:
    """About how many samples (Offline) or queries LoadGen generates for the test."""
    if scenario in ("Offline", "Server"):
        wanted = qps * duration_s * MARGIN
    else:
        wanted = duration_s / latency_s * MARGIN if latency_s > 0 else 0.0
    return int(max(wanted, min_queries)) if math.isfinite(wanted) else 2**62


def check_fits(scenario: str, queries: int, available: int | None, what: str) -> None:
    """Refuse a test whose queries LoadGen cannot hold in the memory ``available`` (bytes;
    ``None``: unknown, nothing refused). ``what``: the rate and duration that make them."""
    if available is None:
        return
    need = queries * BYTES_PER_QUERY
    if need <= available * SHARE:
        return
    unit = "samples" if scenario == "Offline" else "queries"
    raise UsageError(
        f"the {scenario} test would make LoadGen hold about {queries:,} {unit} ({need / 1e9:,.1f} GB) "
        f"at {what}, and {available / 1e9:,.1f} GB of memory is available",
        "pass --duration S for a shorter test (not valid for submission), or --target-qps Q to issue fewer",
    )
