"""The shape of MLPerf's rules, and the values every model shares.

Each model plugin declares its own :class:`Rules` (quality target, latency bounds, sample
counts, required scenarios, the round they come from); nothing here names a model. LoadGen's
mlperf.conf holds the generic settings, which apply to a model it does not list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCENARIOS: tuple[str, ...] = ("Offline", "Server", "SingleStream", "MultiStream")
MODES: tuple[str, ...] = ("performance", "accuracy")
CATEGORIES: tuple[str, ...] = ("edge", "datacenter")

#: Every valid performance run lasts at least this long.
OFFICIAL_MIN_DURATION_S = 600.0
#: Server latency bound LoadGen applies to a model mlperf.conf does not list.
GENERIC_SERVER_LATENCY_MS = 10.0
#: Samples per MultiStream query (mlperf.conf ``*.MultiStream.samples_per_query``).
MULTISTREAM_SAMPLES_PER_QUERY = 8


@dataclass(frozen=True)
class QualityTarget:
    """The accuracy a valid result must reach: ``fraction`` of the reference ``reference``.

    ``metric`` and ``unit`` name the figure the model's scorer reports ("mAP", "%");
    ``higher_is_better`` is False for error rates (WER), where the result must stay at or
    below ``value``. The rule is on the metric itself (``reference * fraction``), or, with
    ``complement``, on ``complement - metric``: RNN-T's is ``100 - WER >= 99% of (100 -
    7.452)``, so WER <= 8.37748.
    """

    metric: str
    reference: float
    fraction: float
    unit: str = "%"
    higher_is_better: bool = True
    complement: float | None = None

    @property
    def value(self) -> float:
        if self.complement is not None:
            return self.complement - self.fraction * (self.complement - self.reference)
        return self.reference * self.fraction if self.higher_is_better else self.reference / self.fraction

    def describe(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        unit = "" if self.unit in ("", None) else self.unit
        if self.complement is not None:
            c = f"{self.complement:g}"
            return (f"{self.metric} {sign} {self.value:.6g}{unit} ({c} - {self.metric} >= {self.fraction * 100:g}% "
                    f"of {c} - {self.reference:g}{unit})")
        return f"{self.metric} {sign} {self.fraction * 100:g}% of {self.reference:g}{unit} ({self.value:.6g}{unit})"

    def met_by(self, value: float) -> bool:
        return value >= self.value if self.higher_is_better else value <= self.value

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "reference": self.reference, "fraction": self.fraction, "unit": self.unit,
            "higher_is_better": self.higher_is_better, "value": self.value, "complement": self.complement,
        }


@dataclass(frozen=True)
class Rules:
    """What MLPerf measures a model by, for one round.

    - ``loadgen_key``: the model's name in LoadGen's mlperf.conf (``retinanet``, ``bert``...);
      ``None`` for a model outside MLPerf's list (LoadGen's generic settings apply, under a
      name that cannot collide with one inside it).
    - ``round``: the round these values come from (a retired benchmark keeps its last round's).
    - ``performance_sample_count``: samples LoadGen keeps loaded (mlperf.conf's override).
    - ``offline_min_samples``: Offline's minimum query count; ``dataset_size``: the samples an
      accuracy run must cover.
    - ``server_latency_ms`` / ``multistream_latency_ms``: the latency bounds (``None``: generic).
    - ``equal_issue``: whether samples must be issued equally often (variable-cost samples).
    - ``required_scenarios``: per category (edge, datacenter), the scenarios a submission needs.
    - ``retired``: the benchmark left MLPerf after ``round``; today's LoadGen no longer holds
      its rules, so mlpi writes them into each test's user.conf itself.
    - ``benchmark``: the model's name in a submission tree and in MLCommons' submission checker
      (``resnet``, ``bert-99``...); ``None`` where MLPerf has none (open division only).
    - ``audits``: the compliance tests a closed submission of the model needs (``TEST01``,
      ``TEST04``), as the checker of ``round`` lists them.
    - ``audit_sampling_target``: TEST01's ``accuracy_log_sampling_target`` (MLCommons'
      ``compliance/TEST01/<model>/audit.config``).
    - ``response_dtype``: the numpy type TEST01's verification reads a response's first value
      as (``run_verification.py --dtype``): the type the model's responses are made of.
    """

    loadgen_key: str | None = None
    round: str = ""
    quality: QualityTarget | None = None
    server_latency_ms: float | None = None
    multistream_latency_ms: float | None = None
    performance_sample_count: int | None = None
    offline_min_samples: int | None = None
    dataset_size: int | None = None
    equal_issue: bool = False
    required_scenarios: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    retired: bool = False
    benchmark: str | None = None
    audits: tuple[str, ...] = ()
    audit_sampling_target: int | None = None
    response_dtype: str = "byte"

    @property
    def official(self) -> bool:
        """Whether LoadGen knows this model by name (its mlperf.conf rules apply)."""
        return self.loadgen_key is not None

    def server_latency_bound_ms(self) -> float:
        return float(self.server_latency_ms) if self.server_latency_ms else GENERIC_SERVER_LATENCY_MS

    def to_json(self) -> dict[str, Any]:
        return {
            "loadgen_key": self.loadgen_key,
            "round": self.round,
            "quality": None if self.quality is None else self.quality.to_json(),
            "quality_text": None if self.quality is None else self.quality.describe(),
            "server_latency_ms": self.server_latency_ms,
            "multistream_latency_ms": self.multistream_latency_ms,
            "performance_sample_count": self.performance_sample_count,
            "offline_min_samples": self.offline_min_samples,
            "dataset_size": self.dataset_size,
            "equal_issue": self.equal_issue,
            "required_scenarios": {k: list(v) for k, v in self.required_scenarios.items()},
            "retired": self.retired,
            "benchmark": self.benchmark,
            "audits": list(self.audits),
            "audit_sampling_target": self.audit_sampling_target,
            "response_dtype": self.response_dtype,
        }


#: The rules of a model given only as a file: none of MLPerf's.
NO_RULES = Rules()
