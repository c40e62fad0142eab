"""The expiry policy: pure functions of timestamps, no I/O.

Runware deletes an upload ``retention`` (30 days) after its last use *in a
task on Runware*. ``last_used_at`` is the time of the last **evidence** of such
a use: the upload itself, a task the cache saw succeed with the UUID, ``use()``
succeeding, an explicit ``touch()``. Handing a UUID out (serving) is not
evidence; it is recorded apart, for display only, unless a cache opts in with
``served_is_used`` (then a served UUID is persisted as used once the stored
value is older than ``touch_every``).

The cache serves a UUID only while ``now < last_used_at + retention - margin``;
the margin absorbs clock skew and the time between our answer and the caller's
use. A stamp more than ``future_tolerance`` ahead of now is not evidence (a
clock that ran ahead wrote it): such a row is ``"suspect"``, never served.
A clock that is *behind* cannot be seen in stored stamps: an entry within
``clock_skew`` of its serve limit is judged in the server's time
(:func:`in_doubt`), learnt from the ``Date`` of a recent answer.

>>> p = Policy()
>>> state(p, last_used_at=0.0, now=20 * 86400.0)
'fresh'
>>> state(p, last_used_at=0.0, now=29.5 * 86400.0)
'stale'
>>> state(p, last_used_at=10 * 86400.0, now=0.0)
'suspect'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Policy:
    retention: float = 30 * DAY
    margin: float = 1 * DAY
    touch_every: float = 3600.0
    expiring_soon: float = 3 * DAY
    #: A stamp further ahead of now than this was written by a clock running ahead.
    future_tolerance: float = 300.0
    #: The largest client clock error planned for: entries this close to their
    #: serve limit are judged in the server's time.
    clock_skew: float = 3 * DAY

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
        return cls(
            retention_s,
            margin_s,
            touch_s,
            base.expiring_soon,
            base.future_tolerance,
            base.clock_skew,
        )


#: Upload task kinds, and whether Runware documents their retention. imageUpload:
#: "deleted 30 days after last use". mediaStorage: nothing is documented; the
#: same rule is assumed until configured otherwise (``retention={...}``).
UPLOAD_TASKS = {"imageUpload": True, "mediaStorage": False}


def retention_for(
    retention: timedelta | float | Mapping[str, timedelta | float] | None, task_type: str
) -> timedelta | float | None:
    """The retention for uploads made with ``task_type``: ``retention`` itself, or,
    given per task kind (``{"mediaStorage": timedelta(days=7)}``), its entry."""
    if not isinstance(retention, Mapping):
        return retention
    unknown = sorted(set(retention) - set(UPLOAD_TASKS))
    if unknown:
        raise ValueError(
            f"retention is given per upload task ({', '.join(UPLOAD_TASKS)}), "
            f"not for {', '.join(map(repr, unknown))}"
        )
    return retention.get(task_type)


def retention_basis(
    retention: timedelta | float | Mapping[str, timedelta | float] | None, task_type: str
) -> str:
    """Where the retention in force comes from: ``configured``, ``documented`` or
    ``assumed`` (mediaStorage: Runware documents none)."""
    if retention_for(retention, task_type) is not None:
        return "configured"
    return "documented" if UPLOAD_TASKS.get(task_type) else "assumed"


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


def is_suspect(policy: Policy, last_used_at: float, now: float) -> bool:
    """A stamp in the future: not evidence of anything (re-upload, never serve)."""
    return last_used_at > now + policy.future_tolerance


def is_fresh(policy: Policy, last_used_at: float, now: float) -> bool:
    return now < serve_until(policy, last_used_at) and not is_suspect(policy, last_used_at, now)


def in_doubt(policy: Policy, last_used_at: float, now: float) -> bool:
    """Whether this clock's verdict could be wrong by a skew of up to ``clock_skew``:
    within that of the serve limit (either side), or stamped in the future (a clock
    behind sees honest stamps there). Judge it in the server's time.

    >>> p = Policy()
    >>> in_doubt(p, 0.0, 20 * DAY), in_doubt(p, 0.0, 27 * DAY), in_doubt(p, 0.0, 40 * DAY)
    (False, True, False)
    """
    limit = serve_until(policy, last_used_at)
    return limit - policy.clock_skew <= now < limit + policy.clock_skew or is_suspect(
        policy, last_used_at, now
    )


def clamp(policy: Policy, stamp: float, now: float) -> float:
    """A stamp to write as evidence: never later than now."""
    return min(stamp, now)


def state(policy: Policy, last_used_at: float, now: float) -> str:
    """``"fresh"``, ``"expiring"`` (within ``expiring_soon`` of the serve limit),
    ``"stale"`` (past the serve limit, maybe still on the server), ``"expired"``
    or ``"suspect"`` (stamped in the future by a clock that ran ahead)."""
    if is_suspect(policy, last_used_at, now):
        return "suspect"
    if now >= expires_at(policy, last_used_at):
        return "expired"
    limit = serve_until(policy, last_used_at)
    if now >= limit:
        return "stale"
    if now >= limit - policy.expiring_soon:
        return "expiring"
    return "fresh"


def needs_touch(policy: Policy, last_used_at: float, now: float) -> bool:
    """Whether a use now should be persisted (the stored one is ``touch_every`` old)."""
    return now - last_used_at >= policy.touch_every


def outcome_for_upload(previous_uuid: str | None) -> str:
    """The outcome name of an upload: ``"reuploaded"`` when it replaces one."""
    return "reuploaded" if previous_uuid else "uploaded"


def stamp_time(local: float, offset: float | None, margin: float) -> float:
    """The time to stamp evidence with: the server's (``local + offset``) whenever
    this run knows it, so that no stamp is ahead of the time others judge by (a
    local clock off by more than ``margin`` is also reported); else the local one.

    >>> stamp_time(100.0, None, 10.0), stamp_time(100.0, 5.0, 10.0), stamp_time(100.0, 50.0, 10.0)
    (100.0, 105.0, 150.0)
    """
    return local if offset is None else local + offset


def judge_time(local: float, offset: float | None) -> float:
    """The time to judge freshness by: the server's when this run knows it."""
    return local if offset is None else local + offset


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
