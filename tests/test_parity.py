"""One behaviour, two twins: each test here runs on AssetCache and on AsyncAssetCache.

The ``twin`` fixture gives either cache behind one blocking face (the async
twin through ``helpers.Blocking``), so a difference between the twins fails a
test; and every public method of the async twin that touches the disk, the
database or the network must be a coroutine function.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import on_emulator
from helpers import API_KEY, Blocking, make_png, write_images

from assetcache import AssetCache, AsyncAssetCache, UnknownImage
from assetcache.emulator import Emulator


@pytest.fixture(params=["sync", "async"])
def make_twin(
    request: pytest.FixtureRequest, make_cache: Any, emu: Emulator, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """``make_twin(**overrides)``: ``make_cache``'s AssetCache, or its async twin."""
    if request.param == "sync":
        yield make_cache
        return
    opened: list[Blocking] = []

    def make(**kwargs: Any) -> Blocking:
        opened.append(Blocking(AsyncAssetCache(API_KEY, **on_emulator(emu, tmp_path, kwargs))))
        return opened[-1]

    yield make
    for twin in opened:
        twin.close()


@pytest.fixture
def twin(make_twin: Callable[..., Any]) -> Any:
    return make_twin()


def test_a_source_is_uploaded_once_then_answered_from_the_cache(twin, emu, tmp_path):
    (a,) = write_images(tmp_path, 1)
    first = twin.resolve(a)
    assert first.outcome == "uploaded" and emu.holds(first.uuid)
    assert twin.resolve(a).uuid == first.uuid
    assert twin.get_uuid(make_png(1)) == first.uuid  # same bytes, another form
    assert emu.upload_count == 1


def test_a_batch_reports_a_bad_item_and_carries_on(twin, tmp_path):
    good = write_images(tmp_path, 1, 2)
    results = twin.resolve_many([good[0], tmp_path / "missing.png", good[1]])
    assert [r.outcome for r in results] == ["uploaded", "failed", "uploaded"]
    assert "no such file" in str(results[1].error)


def test_preview_sends_nothing(twin, emu, tmp_path):
    (a,) = write_images(tmp_path, 1)
    assert [r.outcome for r in twin.preview([a])] == ["uploaded"]
    assert emu.upload_count == 0


def test_use_heals_an_image_the_server_forgot(twin, emu, tmp_path):
    (a,) = write_images(tmp_path, 1)
    old = twin.resolve(a).uuid
    emu.delete(old)

    def run(uuid: str) -> str:
        if not emu.holds(uuid):
            raise UnknownImage("gone", code="invalidSeedImage", parameter="seedImage")
        return uuid

    new = twin.use(a, run)
    assert new != old and emu.holds(new) and emu.upload_count == 2


def test_touch_slides_the_window_and_invalidate_forces_an_upload(twin, emu, tmp_path):
    (a,) = write_images(tmp_path, 1)
    first = twin.resolve(a)
    emu.advance(days=20)
    touched = twin.touch(first.uuid)
    assert touched is not None and touched.last_used_at == pytest.approx(emu.clock())
    assert twin.invalidate(a).state == "expired"
    again = twin.resolve(a)
    assert again.outcome == "reuploaded" and again.uuid != first.uuid


def test_status_and_listings_agree(twin, emu, tmp_path):
    paths = write_images(tmp_path / "in", 1, 2)
    twin.resolve_many(paths)
    emu.advance(days=28.5)
    states = {Path(s.path).name: s.state for s in twin.status([str(tmp_path / "in")])}
    assert states == {"img-01.png": "expiring", "img-02.png": "expiring"}
    report = twin.status_report([str(tmp_path / "in")])
    assert report.counts["expiring"] == 2 and report.total == 2
    entries = list(twin.entries(expiring_within=timedelta(days=2)))
    assert len(entries) == 2 and all(e.state == "expiring" for e in entries)
    stats = twin.stats()
    assert (stats.entries, stats.files, stats.uploads) == (2, 2, 2)


def test_refresh_renews_what_is_about_to_expire(twin, emu, tmp_path):
    (a,) = write_images(tmp_path, 1)
    old = twin.resolve(a).uuid
    emu.advance(days=28.5)
    report = twin.refresh(timedelta(days=2))
    assert [i.status for i in report.items] == ["renewed"]
    assert report.items[0].uuid != old and emu.holds(report.items[0].uuid)


def test_prune_and_verify_keep_the_database_true(twin, emu, tmp_path):
    a, b = write_images(tmp_path, 1, 2)
    twin.resolve_many([a, b])
    b.unlink()
    a.write_bytes(make_png(3))
    states = {Path(v.path).name: v.state for v in twin.verify()}
    assert states == {"img-01.png": "changed", "img-02.png": "missing"}
    emu.advance(days=31)
    pruned = twin.prune()
    assert len(pruned.entries) == 2
    assert twin.stats().entries == 0


def test_forget_removes_locally_and_on_the_server(twin, emu, tmp_path):
    a, b = write_images(tmp_path, 1, 2)
    ua, ub = (r.uuid for r in twin.resolve_many([a, b]))
    (local,) = twin.forget([str(a)])
    assert [e.uuid for e in local.entries] == [ua] and emu.holds(ua)
    (remote,) = twin.forget([ub], remote=True)
    assert remote.remote == ((ub, "deleted"),) and not emu.holds(ub)
    assert twin.stats().entries == 0


def test_export_then_import_round_trips(make_twin, tmp_path):
    one = make_twin()
    one.resolve_many(write_images(tmp_path, 1, 2))
    lines = list(one.export_entries())
    assert len(lines) == 2 and all(json.loads(line)["v"] == 1 for line in lines)
    other = make_twin(db_path=tmp_path / "other.db")
    assert other.import_entries(lines).as_dict() == {
        "added": 2,
        "replaced": 0,
        "kept": 0,
        "errors": [],
    }
    assert other.import_entries(lines).kept == 2


def test_doctor_settings_and_copies_describe_the_cache(twin):
    report = twin.doctor()
    assert report.ok and report.integrity == "ok"
    assert report.settings == twin.settings()
    assert twin.settings()["namespace"] == twin.namespace
    assert twin.copies_usage().enabled is False


def test_every_io_method_of_the_async_twin_is_a_coroutine():
    # register_metrics only registers a collector (its scrapes read, on the
    # scraper's thread): no I/O at the call.
    no_io = {"now", "namespace", "db_path", "account", "config", "register_metrics"}
    public = {n for n in dir(AsyncAssetCache) if not n.startswith("_")}
    for name in sorted(public - no_io):
        assert not isinstance(inspect.getattr_static(AsyncAssetCache, name), property), name
        assert inspect.iscoroutinefunction(getattr(AsyncAssetCache, name)), name
    # ... and the twins offer the same surface (close is aclose there).
    sync_public = {n for n in dir(AssetCache) if not n.startswith("_")}
    assert public == (sync_public - {"close"}) | {"aclose"}
