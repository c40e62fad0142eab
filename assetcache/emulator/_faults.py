"""Per-request fault selection: an explicit FIFO first, then seeded random faults.

>>> plan = FaultPlan(rate=0.0, kinds=TRANSIENT_FAULTS, seed=1)
>>> plan.queue("503")
>>> plan.pick(), plan.pick()
('503', None)
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

# Faults a well-behaved client must retry through; the default random pool.
TRANSIENT_FAULTS: tuple[str, ...] = ("500", "503", "429", "drop")

FAULT_KINDS: frozenset[str] = frozenset(
    {
        *TRANSIENT_FAULTS,
        "drop_after",  # process (store uploads), then close without answering
        "slow",  # sleep slow_seconds, then answer normally
        "nonjson",  # 200 with a body that is not JSON
        "empty",  # 200 {"data": []}
        "no_uuid",  # 200, results without imageUUID; nothing stored
        "bad_uuid",  # 200, imageUUID "not-a-uuid"; nothing stored
        "foreign_task",  # processed and stored, but results carry another taskUUID
    }
)

# Faults answered before any task is looked at: nothing is stored.
NOT_PROCESSED: frozenset[str] = frozenset(
    {*TRANSIENT_FAULTS, "nonjson", "empty", "no_uuid", "bad_uuid"}
)


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """Validate fault names; sorted so a seed gives the same sequence every run."""
    names = tuple(sorted({str(k) for k in kinds}))
    unknown = [k for k in names if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {sorted(FAULT_KINDS)}")
    return names


class FaultPlan:
    """Chooses the fault (or None) for each incoming API request. Not thread-safe."""

    def __init__(self, rate: float, kinds: Iterable[str], seed: int | None) -> None:
        self._pending: deque[str] = deque()
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ()
        self._rng = random.Random(seed)
        self.configure(rate=rate, kinds=kinds)

    def configure(
        self,
        rate: float | None = None,
        kinds: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> None:
        """Change only the settings given."""
        if rate is not None:
            if not 0.0 <= rate <= 1.0:
                raise ValueError("fault rate must be within [0, 1]")
            self.rate = float(rate)
        if kinds is not None:
            self.kinds = check_kinds(kinds)
        if seed is not None:
            self._rng.seed(seed)

    def queue(self, *kinds: str) -> None:
        """Force these faults on the next requests, one per request, in order."""
        self._pending.extend(check_kinds([k])[0] for k in kinds)

    def pick(self) -> str | None:
        """The fault for the request being handled now, if any."""
        if self._pending:
            return self._pending.popleft()
        if self.kinds and self.rate > 0 and self._rng.random() < self.rate:
            return self._rng.choice(self.kinds)
        return None
