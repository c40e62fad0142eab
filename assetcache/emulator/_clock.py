"""The emulator's notion of "now", which tests move forward instead of sleeping.

>>> clock = Clock(start_time=1_000.0, frozen=True)
>>> clock.advance(60)
>>> clock.now()
1060.0
"""

from __future__ import annotations

import time


class Clock:
    """Epoch-seconds clock: start time + elapsed real time (unless frozen) + advances."""

    def __init__(self, start_time: float | None = None, frozen: bool = False) -> None:
        self.frozen = frozen
        self._origin = time.time() if start_time is None else float(start_time)
        # Monotonic elapsed time so a wall-clock step (NTP) cannot move us backwards.
        self._mono0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        """Current emulated time in epoch seconds."""
        elapsed = 0.0 if self.frozen else time.monotonic() - self._mono0
        return self._origin + elapsed + self._offset

    def advance(self, seconds: float) -> None:
        """Move forward; going back is refused because expiry is irreversible."""
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self._offset += seconds

    def snapshot(self) -> dict[str, float]:
        """What a state file records: emulated now and the wall time it was taken at."""
        return {"now": self.now(), "wall": time.time()}

    def restore(self, snap: dict[str, float]) -> None:
        """Continue from a snapshot; a running clock also counts real time since then."""
        now = float(snap["now"])
        if not self.frozen:
            now += max(0.0, time.time() - float(snap["wall"]))
        self._origin, self._mono0, self._offset = now, time.monotonic(), 0.0
