"""Device: which accelerator kind and which of its units a run uses.

Spelled the way users type them: ``cpu``, ``cuda``, ``cuda:1``, ``cuda:0,1``, ``rocm:0``,
``qaic:0-3``. ``Device.parse(str(d)) == d`` always holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlpi.core.contract.errors import UsageError

_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, order=True)
class Device:
    """A device kind plus the unit indices to use; no indices means "the default unit"."""

    kind: str
    indices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Device:
        spec = text.strip().lower()
        kind, _, units = spec.partition(":")
        if not _KIND.match(kind):
            raise UsageError(
                f"'{text}' is not a device",
                "write a device as KIND or KIND:UNITS, for example cpu, cuda:1, cuda:0,1 or qaic:0-3",
            )
        if not _:
            return cls(kind)
        indices: list[int] = []
        for part in units.split(","):
            low, dash, high = part.partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise UsageError(
                    f"'{text}' has a bad unit list '{units}'",
                    "units are numbers, lists (0,1) or ranges (0-3)",
                )
            span = range(int(low), int(high) + 1) if dash else range(int(low), int(low) + 1)
            if not span:
                raise UsageError(f"'{text}' has an empty range '{part}'", "write ranges low-high, e.g. 0-3")
            indices.extend(span)
        if len(set(indices)) != len(indices):
            raise UsageError(f"'{text}' names a unit twice", "list each unit once")
        return cls(kind, tuple(indices))

    def __str__(self) -> str:
        if not self.indices:
            return self.kind
        return f"{self.kind}:{_compress(self.indices)}"

    def units(self) -> list[Device]:
        """One single-unit Device per listed index (or just this one when none are listed)."""
        if len(self.indices) <= 1:
            return [self]
        return [Device(self.kind, (i,)) for i in self.indices]

    @property
    def index(self) -> int:
        """The unit a single-unit device names (0 when none is named)."""
        return self.indices[0] if self.indices else 0


def _compress(indices: tuple[int, ...]) -> str:
    """Print runs of three or more consecutive units as ``a-b``, the rest comma-separated."""
    parts: list[str] = []
    run_start = prev = indices[0]
    for i in list(indices[1:]) + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        if prev - run_start >= 2:
            parts.append(f"{run_start}-{prev}")
        else:
            parts.extend(str(x) for x in range(run_start, prev + 1))
        if i is not None:
            run_start = prev = i
    return ",".join(parts)
