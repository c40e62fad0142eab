"""Named pause points: a test hook that holds the process at a chosen step.

Tests that kill or race a real ``assetcache`` process must not hope that the
process is still at the right step when their signal lands. They set

* ``ASSETCACHE_PAUSE_AT=NAME[:N]``: the N-th time (default 1) the process
  reaches the point ``NAME`` it stops there;
* ``ASSETCACHE_PAUSE_FILE=PATH``: where it then writes ``NAME N PID``, so the
  test knows it is held and can act (send SIGKILL, change a file, ...).

A held process waits at most ``ASSETCACHE_PAUSE_SECONDS`` (default 120 s),
then carries on: every wait has a bound. Without ``ASSETCACHE_PAUSE_AT`` a
point costs one comparison. The points:

``hashed``
    a file has just been read and hashed (start-up and hashing phase);
``record``
    a request's answers arrived and are about to be recorded.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["pause_point"]

_SPEC = os.environ.get("ASSETCACHE_PAUSE_AT") or None
_lock = threading.Lock()
_counts: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, int]:
    name, _, nth = spec.partition(":")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        n = 1
    return name.strip(), max(n, 1)


_TARGET = _parse(_SPEC) if _SPEC else None


def pause_point(name: str) -> None:
    """Hold here if ``ASSETCACHE_PAUSE_AT`` names this point (and this is its N-th pass)."""
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _counts[name] = count = _counts.get(name, 0) + 1
    if count != _TARGET[1]:
        return
    notify = os.environ.get("ASSETCACHE_PAUSE_FILE")
    if notify:
        tmp = f"{notify}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{name} {count} {os.getpid()}\n")
        os.replace(tmp, notify)  # the test sees the whole line or nothing
    try:
        bound = float(os.environ.get("ASSETCACHE_PAUSE_SECONDS", "120"))
    except ValueError:
        bound = 120.0
    time.sleep(max(0.0, bound))
