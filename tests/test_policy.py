"""The expiry policy as pure functions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from assetcache._policy import DAY, Policy, expires_at, is_fresh, needs_touch, serve_until, state


def test_window_with_margin():
    p = Policy.from_timedeltas(timedelta(days=30), timedelta(days=1))
    assert expires_at(p, 0) == 30 * DAY
    assert serve_until(p, 0) == 29 * DAY
    assert is_fresh(p, 0, 29 * DAY - 1)
    assert not is_fresh(p, 0, 29 * DAY)


@pytest.mark.parametrize(
    "now_days, expected",
    [(1, "fresh"), (26.5, "expiring"), (29.5, "stale"), (30, "expired"), (45, "expired")],
)
def test_states(now_days, expected):
    assert state(Policy(), 0.0, now_days * DAY) == expected


def test_touch_granularity():
    p = Policy()
    assert not needs_touch(p, 0, 3599)
    assert needs_touch(p, 0, 3600)


@pytest.mark.parametrize(
    "retention, margin",
    [(timedelta(0), None), (timedelta(days=1), timedelta(days=2)), (None, timedelta(-1))],
)
def test_invalid_settings(retention, margin):
    with pytest.raises(ValueError):
        Policy.from_timedeltas(retention, margin)


def test_touch_every_stays_below_a_small_margin():
    p = Policy.from_timedeltas(timedelta(days=30), timedelta(minutes=20))
    assert p.touch_every <= 300
