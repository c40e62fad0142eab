"""The expiry policy: pure functions of timestamps, no I/O.

Runware deletes an upload ``retention`` (30 days) after its last use. The cache
serves a UUID only while ``now < last_used_at + retention - margin``; the margin
absorbs clock skew and the time between our answer and the caller's use.
Serving counts as a use, but writing ``last_used_at`` on every hit would turn
reads into writes, so a use is persisted only once the stored value is older
than ``touch_every`` (far below the margin, so the window never shrinks below
what the server grants).

>>> p = Policy()
>>> state(p, last_used_at=0.0, now=20 * 86400.0)
'fresh'
>>> state(p, last_used_at=0.0, now=29.5 * 86400.0)
'stale'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Policy:
    retention: float = 30 * DAY
    margin: float = 1 * DAY
    touch_every: float = 3600.0
    expiring_soon: float = 3 * DAY

    @classmethod
    def from_timedeltas(
        cls,
        retention: timedelta | float | None = None,
        margin: timedelta | float | None = None,
        touch_every: timedelta | float | None = None,
    ) -> Policy:
        base = cls()
        retention_s = _seconds(retention, base.retention)
        margin_s = _seconds(margin, base.margin)
        touch_s = _seconds(touch_every, min(base.touch_every, margin_s / 4 or base.touch_every))
        if retention_s <= 0:
            raise ValueError("retention must be positive")
        if not 0 <= margin_s < retention_s:
            raise ValueError("margin must be at least 0 and less than retention")
        if touch_s < 0:
            raise ValueError("touch_every must be at least 0")
        return cls(retention_s, margin_s, touch_s, base.expiring_soon)


def _seconds(value: timedelta | float | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def expires_at(policy: Policy, last_used_at: float) -> float:
    """When the server deletes the upload if nobody uses it again."""
    return last_used_at + policy.retention


def serve_until(policy: Policy, last_used_at: float) -> float:
    """The last moment the cache hands out the UUID without re-uploading."""
    return last_used_at + policy.retention - policy.margin


def is_fresh(policy: Policy, last_used_at: float, now: float) -> bool:
    return now < serve_until(policy, last_used_at)


def state(policy: Policy, last_used_at: float, now: float) -> str:
    """``"fresh"``, ``"expiring"`` (within ``expiring_soon`` of the serve limit),
    ``"stale"`` (past the serve limit, maybe still on the server) or ``"expired"``."""
    if now >= expires_at(policy, last_used_at):
        return "expired"
    limit = serve_until(policy, last_used_at)
    if now >= limit:
        return "stale"
    if now >= limit - policy.expiring_soon:
        return "expiring"
    return "fresh"


def needs_touch(policy: Policy, last_used_at: float, now: float) -> bool:
    """Whether serving now should persist the use (slide the stored window)."""
    return now - last_used_at >= policy.touch_every


def outcome_for_upload(previous_uuid: str | None) -> str:
    """The outcome name of an upload: ``"reuploaded"`` when it replaces one."""
    return "reuploaded" if previous_uuid else "uploaded"


def lease_held(
    lease: tuple[str, float] | None, owner: str, now: float, alive: Callable[[str], bool]
) -> bool:
    """The lease decision, for every store: another owner's lease blocks an upload
    while it is unexpired and its owner is not provably dead (``alive(owner)``).

    >>> lease_held(("host:1:ab", 100.0), "me", 50.0, lambda owner: True)
    True
    >>> lease_held(("host:1:ab", 100.0), "me", 150.0, lambda owner: True)
    False
    """
    return lease is not None and lease[0] != owner and lease[1] > now and alive(lease[0])


def keeps_existing(existing_last_used: float | None, incoming_last_used: float) -> bool:
    """The merge rule: never replace a fresher (or equally fresh) row.

    >>> keeps_existing(10.0, 5.0), keeps_existing(None, 5.0), keeps_existing(1.0, 5.0)
    (True, False, False)
    """
    return existing_last_used is not None and existing_last_used >= incoming_last_used
