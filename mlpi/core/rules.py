"""MLPerf Inference rules that mlpi applies itself (LoadGen's mlperf.conf holds the rest).

Per model (by mlperf.conf key): quality target, Server latency bound, performance sample
count and Offline minimum samples, for the current datacenter/edge rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS: tuple[str, ...] = ("Offline", "Server", "SingleStream", "MultiStream")
MODES: tuple[str, ...] = ("performance", "accuracy")

#: Every valid performance run lasts at least this long.
OFFICIAL_MIN_DURATION_S = 600.0
#: Server latency bound LoadGen applies to a model mlperf.conf does not list.
GENERIC_SERVER_LATENCY_MS = 10.0
#: Samples per MultiStream query (mlperf.conf ``*.MultiStream.samples_per_query``).
MULTISTREAM_SAMPLES_PER_QUERY = 8


@dataclass(frozen=True)
class ModelRules:
    quality: str
    server_latency_ms: float | None
    performance_sample_count: int
    offline_min_samples: int


ROUND = "v6.0"

RULES: dict[str, ModelRules] = {
    "resnet50": ModelRules("top-1 >= 99% of 76.46%", 15, 1024, 24576),
    "retinanet": ModelRules("mAP >= 99% of 37.55", 100, 64, 24576),
    "bert": ModelRules("F1 >= 99% of 90.874", 130, 10833, 10833),
    "3d-unet": ModelRules("mean DICE >= 99% of 0.86170", None, 43, 43),
    "dlrm-v2": ModelRules("AUC >= 99% of 80.31", 60, 204800, 24576),
    "rnnt": ModelRules("(100 - WER) >= 99% of (100 - 7.452)", 1000, 2513, 2513),
}


def server_latency_ms(rules_key: str | None) -> float:
    rules = RULES.get(rules_key or "")
    if rules and rules.server_latency_ms:
        return float(rules.server_latency_ms)
    return GENERIC_SERVER_LATENCY_MS
