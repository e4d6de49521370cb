"""Accuracy runs watch for outputs that are not numbers.

A backend that answers NaN or infinity is scored like a model that answers wrong (F1 0,
"below target"), and nothing would say why. In accuracy mode every session is wrapped so that
each batch's floating-point outputs are checked; the test records how many batches held a
value that is not finite, and the run says so next to the score. Performance runs are not
wrapped: they never look at values, and the check would cost time there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlpi.core.contract.backend import Session


class FiniteCount:
    """Batches seen and batches with a NaN or an infinite output (counts, not exact under
    concurrent slots: a warning's figure, never a score's)."""

    def __init__(self) -> None:
        self.batches = 0
        self.nonfinite = 0


class CheckedSession(Session):
    """``inner``, with every batch's float outputs checked for values that are not finite."""

    def __init__(self, inner: Session, count: FiniteCount) -> None:
        self.inner = inner
        self.count = count
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.capabilities = inner.capabilities
        self.precision = inner.precision
        self.simulated = inner.simulated

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        outputs = self.inner.run(feeds)
        self.count.batches += 1
        for value in outputs.values():
            array = np.asarray(value)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                self.count.nonfinite += 1
                break
        return outputs

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else a pipeline asks the backend's session
        return getattr(self.inner, name)


def check_sessions(placed: list[tuple[str, dict[str, Session]]]) -> FiniteCount:
    """Wrap every session of ``placed`` in place (slots and piece workers share these dicts)."""
    count = FiniteCount()
    for _, sessions in placed:
        for role, session in list(sessions.items()):
            sessions[role] = CheckedSession(session, count)
    return count
