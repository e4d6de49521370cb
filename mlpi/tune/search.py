"""The Server search: the highest target QPS LoadGen still judges VALID, in few short trials.

A Server run is VALID when its 99th-percentile latency (early stopping's estimate) stays
within the model's bound; above some rate the queue grows and it no longer does. The search
first brackets that rate (from a start, doubling while trials are VALID, halving while they
are not), then bisects the bracket geometrically until the highest VALID and the lowest
INVALID rate are within ``tolerance`` of each other. From a bracket of 2x, a tolerance of 5%
takes ceil(log2(ln 2 / ln 1.05)) = 4 bisections.

Short runs near the edge are VALID or not partly by chance (one stall of the machine makes a
share of a short run's queries late), and one unlucky INVALID would cap the search below
the edge for good. So an INVALID trial is run once more at the same target, and the target
counts as INVALID only when both are; a lucky VALID is what the confirming run catches.

MLCommons' LoadGen has a "find peak performance" mode doing a similar search inside one
process (``loadgen/loadgen.cc``, ``FindPeakPerformanceMode``); mlpi runs each trial as an
ordinary test instead, so every trial is a run of its own in the results store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: The bracket grows (or shrinks) by this factor a trial.
BRACKET_STEP = 2.0
#: At most this many doublings from the start before the search stops going up ...
MAX_STEPS_UP = 10
#: ... and this many halvings before it gives up: a Server run still INVALID at 1/32 of the
#: rate calibration suggested misses the latency bound at almost no load (the model's own
#: latency tail is beyond the bound), and each halving doubles a trial's length (a trial
#: runs a minimum number of queries).
MAX_STEPS_DOWN = 5
#: Targets are rounded to this many significant digits: readable, and far finer than any
#: tolerance the search accepts.
TARGET_DIGITS = 4
#: The finest tolerance accepted (0.5%): trials are noisier than that anyway.
MIN_TOLERANCE = 0.005


def rounded(value: float) -> float:
    """``value`` to :data:`TARGET_DIGITS` significant digits."""
    return float(f"{value:.{TARGET_DIGITS}g}")


def bisections(ratio: float, tolerance: float) -> int:
    """Geometric bisections that bring a bracket of ``ratio`` (hi / lo) within ``tolerance``."""
    if ratio <= 1 + tolerance:
        return 0
    return math.ceil(math.log2(math.log(ratio) / math.log(1 + tolerance)))


@dataclass
class HighestValidSearch:
    """Bracket, then bisect; :meth:`next_target` says what to try, :meth:`record` what came of it.

    ``lo`` is the highest target found VALID, ``hi`` the lowest found INVALID. The search ends
    when they are within ``tolerance`` (``found``), when no target down to the start /
    2**MAX_STEPS_DOWN was VALID (``lo`` stays None), or when none up to start *
    2**MAX_STEPS_UP was INVALID (``hi`` stays None: the system outran every target tried).
    """

    start: float
    tolerance: float
    lo: float | None = None
    hi: float | None = None
    tried: list[tuple[float, bool]] = field(default_factory=list)
    #: Why the search was stopped before it ended (no target can be VALID), else None.
    stopped: str | None = None
    #: Run an INVALID target once more before believing it.
    recheck_invalid: bool = True
    #: The target found INVALID once, to be tried again next.
    recheck: float | None = None

    def __post_init__(self) -> None:
        if not (self.start > 0 and math.isfinite(self.start)):
            raise ValueError(f"the search needs a positive start, not {self.start}")
        if not (self.tolerance >= MIN_TOLERANCE and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance {self.tolerance} is below {MIN_TOLERANCE}")

    def record(self, target: float, valid: bool) -> None:
        again = self.recheck == target
        self.tried.append((target, valid))
        self.recheck = None
        if valid:
            self.lo = target if self.lo is None else max(self.lo, target)
        elif self.recheck_invalid and not again:
            self.recheck = target
        else:
            self.hi = target if self.hi is None else min(self.hi, target)

    @property
    def rechecking(self) -> bool:
        """The next target is an INVALID one tried again."""
        return self.recheck is not None and self.stopped is None

    def stop(self, why: str) -> None:
        """End the search now: what was tried shows that no target can be VALID."""
        self.stopped = why

    def next_target(self) -> float | None:
        """The next target to try; None when the search is over."""
        if self.stopped is not None:
            return None
        if self.recheck is not None:
            return self.recheck
        if not self.tried:
            return rounded(self.start)
        steps = len({target for target, _ in self.tried})
        if self.hi is None:  # VALID so far: go up
            return None if steps > MAX_STEPS_UP else rounded(self.lo * BRACKET_STEP)  # type: ignore[operator]
        if self.lo is None:  # INVALID so far: go down
            return None if steps > MAX_STEPS_DOWN else rounded(self.hi / BRACKET_STEP)
        if self.hi <= self.lo * (1 + self.tolerance):
            return None
        target = rounded(math.sqrt(self.lo * self.hi))
        return target if self.lo < target < self.hi else None

    @property
    def found(self) -> bool:
        """The bracket closed: ``lo`` is VALID and ``hi`` INVALID, within the tolerance."""
        return self.lo is not None and self.hi is not None and self.next_target() is None

    def remaining(self) -> int:
        """About how many more trials the search takes (a guess until the bracket closes)."""
        if self.next_target() is None:
            return 0
        if self.lo is None or self.hi is None:  # about one more bracket step, then a 2x bracket
            left = 1 + _with_rechecks(bisections(BRACKET_STEP, self.tolerance))
        else:
            left = _with_rechecks(bisections(self.hi / self.lo, self.tolerance))
        return left + (1 if self.recheck is not None else 0)

    @staticmethod
    def expected_trials(tolerance: float) -> int:
        """Trials a search takes when its start is within a step of the answer: the start, one
        bracket step (one of the two INVALID, so run twice), the bisections of a 2x bracket
        (about half of them INVALID, so run twice)."""
        return 3 + _with_rechecks(bisections(BRACKET_STEP, tolerance))


def _with_rechecks(trials: int) -> int:
    """``trials`` new targets, about half of them INVALID and so run twice."""
    return trials + (trials + 1) // 2


__all__ = ["BRACKET_STEP", "MAX_STEPS_DOWN", "MAX_STEPS_UP", "MIN_TOLERANCE", "HighestValidSearch", "bisections", "rounded"]
