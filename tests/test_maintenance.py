"""The maintenance API behind the CLI, driven from Python (no CLI involved)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, make_png, write_images

from assetcache import AssetCache, AsyncAssetCache
from assetcache._durations import format_duration, parse_duration
from assetcache._storage._repair import inspect_database, rebuild_database
from assetcache.emulator import Emulator

DAY = 86400.0


def age(path: Path) -> None:
    """Move mtime back so the stat row is trusted (not racily clean)."""
    old = os.stat(path).st_mtime - 60
    os.utime(path, (old, old))


# -- durations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * DAY),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("1d12h", 1.5 * DAY),
        ("2w", 14 * DAY),
        ("1.5h", 5400),
        (" 2D ", 2 * DAY),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "d", "10", "-1d", "1d1d", "1d 2x"])
def test_parse_duration_refuses_with_the_input_named(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(29 * DAY + 23 * 3600 + 59) == "29d23h"
    assert format_duration(3 * 3600 + 5 * 60) == "3h5m"
    assert format_duration(40) == "40s"
    assert format_duration(DAY) == "1d"
    assert format_duration(-7200) == "-2h"


# -- entries and stats -------------------------------------------------------------


def test_entries_report_paths_and_expiry(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    a, b = write_images(tmp_path / "img", 1, 2)
    copy = tmp_path / "img" / "copy.png"
    copy.write_bytes(a.read_bytes())
    results = cache.resolve_many([a, b, copy])
    entries = {e.uuid: e for e in cache.entries()}
    assert set(entries) == {results[0].uuid, results[1].uuid}
    first = entries[results[0].uuid]
    assert first.paths == tuple(sorted([str(a), str(copy)]))
    assert first.state == "fresh"
    assert first.size == len(make_png(1)) and first.format == "png"
    assert first.expires_at == pytest.approx(first.last_used_at + 30 * DAY)
    assert first.serve_until == pytest.approx(first.last_used_at + 29 * DAY)
    d = first.as_dict()
    assert d["hash"] == results[0].content_hash and d["expires_at"].endswith("Z")


def test_entries_filters_follow_the_clock(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    cache = make_cache()
    (a,) = write_images(tmp_path, 1)
    cache.resolve(a)
    emu.advance(days=5)
    (b,) = write_images(tmp_path, 2)
    uuid_b = cache.resolve(b).uuid
    emu.advance(days=22.5)  # a: served for 1.5 more days; b: for 6.5
    soon = list(cache.entries(expiring_within=timedelta(days=2)))
    assert [e.paths for e in soon] == [(str(a),)]
    assert soon[0].state == "expiring"
    assert len(list(cache.entries(expiring_within=7 * DAY))) == 2
    assert list(cache.entries(expired=True)) == []
    emu.advance(days=2)
    (gone,) = cache.entries(expired=True)
    assert gone.paths == (str(a),) and gone.state == "stale"
    assert [e.uuid for e in cache.entries(expiring_within=timedelta(days=7))] == [uuid_b]
    assert len(list(cache.entries(expiring_within=timedelta(days=7), expired=True))) == 2


def test_entries_are_scoped_to_the_account(
    make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    mine = make_cache()
    mine.resolve(a)
    other = make_cache(namespace="elsewhere#other")
    assert list(other.entries()) == []
    assert len(list(other.entries(all_accounts=True))) == 1
    assert other.stats().entries == 0 and other.stats(all_accounts=True).entries == 1


def test_stats_include_unflushed_and_stored_counters(
    make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    a, b = write_images(tmp_path, 1, 2)
    cache = make_cache()
    cache.resolve_many([a, b])
    cache.resolve(a)  # a warm hit, counted in memory only
    s = cache.stats()
    assert (s.entries, s.uploads, s.misses, s.hits) == (2, 2, 2, 1)
    assert s.bytes == len(make_png(1)) + len(make_png(2))
    assert s.bytes_saved == len(make_png(1))
    assert s.bytes_sent > s.bytes  # base64 on the wire
    assert s.db_bytes > 0 and s.files == 2
    cache.close()
    again = make_cache()
    again.resolve(b)
    s2 = again.stats()
    assert (s2.hits, s2.uploads) == (2, 2)
    assert s2.bytes_saved == len(make_png(1)) + len(make_png(2))


def test_preview_sends_and_writes_nothing(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, 1, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    uuid_a = cache.resolve(a).uuid
    emu_before = emu.upload_count
    db_before = list(sqlite3.connect(cache.db_path).execute("SELECT * FROM assets"))
    copy = tmp_path / "b-copy.png"
    copy.write_bytes(b.read_bytes())
    out = cache.preview([a, b, copy, bad])
    assert [r.outcome for r in out] == ["hit", "uploaded", "hit", "failed"]
    assert out[0].uuid == uuid_a and out[1].uuid is None
    assert "bad.png" in str(out[3].error)
    assert emu.upload_count == emu_before
    assert list(sqlite3.connect(cache.db_path).execute("SELECT * FROM assets")) == db_before
    emu.advance(days=29.5)
    assert cache.preview([a])[0].outcome == "reuploaded"


# -- refresh ------------------------------------------------------------------------


def test_refresh_renews_what_is_about_to_expire(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a, b, c = write_images(tmp_path, 1, 2, 3)
    for p in (a, b, c):
        age(p)
    old = {r.source: r.uuid for r in cache.resolve_many([str(a), str(b), str(c)])}
    emu.advance(days=20)
    (d,) = write_images(tmp_path, 4)
    cache.resolve(d)  # used recently: not due
    emu.advance(days=8.5)
    b.unlink()
    c.write_bytes(make_png(99))
    uploads = emu.upload_count
    report = cache.refresh(timedelta(days=2))
    by_path = {i.path: i for i in report.items if i.path}
    assert {i.status for i in report.items} == {"renewed", "content-gone"}
    renewed = by_path[str(a)]
    assert renewed.status == "renewed" and renewed.uuid != old[str(a)]
    assert emu.holds(renewed.uuid)
    assert emu.upload_count == uploads + 1
    gone = {i.old_uuid: i.reason for i in report.failed}
    assert set(gone) == {old[str(b)], old[str(c)]}
    assert "no such file" in gone[old[str(b)]]
    assert "changed since it was uploaded" in gone[old[str(c)]]
    # Latency-sensitive callers now hit, with the renewed UUID.
    emu.advance(days=2)
    hit = cache.resolve(a)
    assert (hit.outcome, hit.uuid) == ("hit", renewed.uuid)
    assert emu.upload_count == uploads + 1


def test_refresh_dry_run_sends_nothing(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    uuid = cache.resolve(a).uuid
    emu.advance(days=28.5)
    uploads = emu.upload_count
    report = cache.refresh(2 * DAY, dry_run=True)
    assert [(i.status, i.old_uuid, i.path) for i in report.items] == [("would-renew", uuid, str(a))]
    assert emu.upload_count == uploads
    assert cache.refresh(2 * DAY, dry_run=True).items[0].status == "would-renew"


def test_refresh_leaves_deleted_uploads_and_fresh_ones_alone(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    cache.resolve(a)
    assert cache.refresh(timedelta(days=2)).items == ()
    emu.advance(days=31)
    uploads = emu.upload_count
    assert cache.refresh(timedelta(days=2)).items == ()
    assert emu.upload_count == uploads


def test_refresh_reports_a_failed_upload(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    cache.resolve(a)
    emu.advance(days=28.5)
    emu.set_faults(rate=1.0)
    report = cache.refresh(timedelta(days=2))
    assert [i.status for i in report.items] == ["failed"]
    assert report.failed and report.items[0].reason


def test_refresh_on_the_async_twin(emu: Emulator, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)

    async def main() -> tuple[str, str | None]:
        async with AsyncAssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=tmp_path / "c.db",
            clock=emu.clock,
            retry=FAST_RETRY,
        ) as cache:
            first = await cache.resolve(a)
            emu.advance(days=28.5)
            report = await cache.refresh(timedelta(days=2))
            return first.uuid, report.items[0].uuid

    old, new = asyncio.run(main())
    assert new is not None and new != old and emu.holds(new)


def test_refresh_takes_a_renewal_made_meanwhile(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    one, two = make_cache(), make_cache()
    one.resolve(a)
    emu.advance(days=28.5)
    engine = two._engine
    started = engine.clock()
    first = one.refresh(timedelta(days=2)).items[0]
    key = (engine.namespace, first.content_hash, engine.variant)
    # A second refresher that decided before the first renewed takes that renewal.
    claimed = engine.claim([key], {key}, started)
    assert claimed[key].image_uuid == first.uuid  # type: ignore[union-attr]
    engine.release([key])


# -- prune, verify, forget ------------------------------------------------------------


def test_prune_drops_expired_entries_and_missing_files(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a, b, c = write_images(tmp_path, 1, 2, 3)
    cache.resolve_many([a, b, c])
    emu.advance(days=31)
    cache.resolve(b)  # uploaded again: fresh
    c.unlink()
    snapshot = list(
        sqlite3.connect(cache.db_path).execute("SELECT * FROM assets ORDER BY content_hash")
    )
    dry = cache.prune(dry_run=True)
    assert {e.paths[0] for e in dry.entries if e.paths} == {str(a), str(c)}
    assert dry.files == (str(c),)
    assert (
        list(sqlite3.connect(cache.db_path).execute("SELECT * FROM assets ORDER BY content_hash"))
        == snapshot
    )
    done = cache.prune()
    assert len(done.entries) == 2 and not done.dry_run
    assert [e.paths for e in cache.entries()] == [(str(b),)]
    assert cache.store.get_file(str(c)) is None and cache.store.get_file(str(a)) is not None
    assert cache.prune().entries == ()
    emu.advance(days=2)
    assert len(cache.prune(older_than=timedelta(days=1)).entries) == 1
    assert list(cache.entries()) == []


def test_verify_fixes_the_stat_cache(cache: AssetCache, tmp_path: Path) -> None:
    a, b, c = write_images(tmp_path / "img", 1, 2, 3)
    cache.resolve_many([a, b, c])
    old_hash = cache.store.get_file(str(b)).content_hash  # type: ignore[union-attr]
    b.write_bytes(make_png(77))
    c.unlink()
    untracked = tmp_path / "img" / "new.png"
    untracked.write_bytes(make_png(5))
    got = {v.path: v for v in cache.verify()}
    assert got[str(a)].state == "ok"
    assert got[str(b)].state == "changed" and got[str(b)].old_hash == old_hash
    row = cache.store.get_file(str(b))
    assert row is not None and row.content_hash == got[str(b)].new_hash != old_hash
    assert got[str(c)].state == "missing" and cache.store.get_file(str(c)) is None
    assert str(untracked) not in got
    named = cache.verify([str(untracked), str(tmp_path / "img")])
    assert named[0].state == "untracked"
    assert {v.state for v in named[1:]} == {"ok"}
    seen: list[tuple[int, int]] = []
    cache.verify(progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2, 2)


def test_forget_by_path_hash_and_uuid(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    a, b, c = write_images(tmp_path, 1, 2, 3)
    ra, rb, rc = cache.resolve_many([a, b, c])
    out = cache.forget([str(a), rb.content_hash, rc.uuid.upper(), "nonsense"])  # type: ignore[union-attr]
    assert [(f.kind, [e.uuid for e in f.entries]) for f in out[:3]] == [
        ("path", [ra.uuid]),
        ("hash", [rb.uuid]),
        ("uuid", [rc.uuid]),
    ]
    assert out[0].files == (str(a),)
    assert out[3].error and "nonsense" in out[3].error
    assert list(cache.entries()) == []
    uploads = emu.upload_count
    assert cache.resolve(a).outcome == "uploaded"
    assert emu.upload_count == uploads + 1
    assert cache.forget([rb.content_hash])[0].error is not None  # already gone


def test_forget_remote_of_nothing_reports_it(cache: AssetCache, emu: Emulator) -> None:
    (item,) = cache.forget(["0" * 32], remote=True)  # deletion itself: test_lifecycle.py
    assert item.error and "no cache entry" in item.error and emu.delete_count == 0


# -- export / import --------------------------------------------------------------------


def test_export_import_round_trip(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    a, b = write_images(tmp_path, 1, 2)
    src = make_cache()
    src.resolve_many([a, b])
    lines = list(src.export_entries())
    assert len(lines) == 2 and all(json.loads(line)["v"] == 1 for line in lines)
    dst = make_cache(db_path=tmp_path / "other.db")
    report = dst.import_entries(lines)
    assert (report.added, report.replaced, report.kept, report.errors) == (2, 0, 0, ())
    assert {e.uuid for e in dst.entries()} == {e.uuid for e in src.entries()}
    # The other machine serves them without uploading (its stat cache is empty: it hashes).
    uploads = emu.upload_count
    assert dst.resolve(a).outcome == "hit" and emu.upload_count == uploads
    assert dst.import_entries(lines).kept == 2


def test_import_never_replaces_a_fresher_entry(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    (a,) = write_images(tmp_path, 1)
    cache = make_cache()
    cache.resolve(a)
    (line,) = cache.export_entries()
    older = json.loads(line)
    emu.advance(days=31)
    fresh = cache.resolve(a)
    assert fresh.outcome == "reuploaded"
    report = cache.import_entries([json.dumps(older)])
    assert (report.kept, report.replaced) == (1, 0)
    assert [e.uuid for e in cache.entries()] == [fresh.uuid]
    newer = {
        **older,
        "uuid": "11111111-2222-3333-4444-555555555555",
        "last_used_at": emu.clock() + 5,
    }
    assert cache.import_entries([json.dumps(newer)]).replaced == 1
    (entry,) = cache.entries()
    assert entry.uuid == newer["uuid"]
    assert entry.last_used_at <= emu.clock()  # a future last use is clamped to now


def test_import_refuses_malformed_lines_with_their_number(cache: AssetCache) -> None:
    good = {
        "v": 1,
        "namespace": cache.namespace,
        "hash": "0" * 32,
        "uuid": "11111111-2222-3333-4444-555555555555",
        "size": 10,
        "format": "png",
        "uploaded_at": 1.0,
        "last_used_at": 2.0,
    }
    lines = [
        json.dumps(good),
        "{not json",
        "",
        json.dumps([1, 2]),
        json.dumps({**good, "hash": "xyz"}),
        json.dumps({**good, "uuid": "nope"}),
        json.dumps({k: v for k, v in good.items() if k != "size"}),
        json.dumps({**good, "size": -1}),
        json.dumps({**good, "last_used_at": "yesterday"}),
        json.dumps({**good, "format": "tiff"}),
        json.dumps({**good, "v": 99}),
        b"\xff\xfe",
    ]
    report = cache.import_entries(lines)
    assert report.added == 1
    numbers = [n for n, _ in report.errors]
    assert numbers == [2, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    reasons = dict(report.errors)
    assert "JSON" in reasons[2] and "hash" in reasons[5] and "size" in reasons[7]


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_reports_fingerprint_never_the_key(cache: AssetCache, tmp_path: Path) -> None:
    (a,) = write_images(tmp_path, 1)
    cache.resolve(a)
    report = cache.doctor()
    assert report.ok and report.integrity == "ok" and report.entries == 1
    assert report.account == cache.account and report.account
    assert report.schema_version == report.schema_supported
    assert API_KEY not in json.dumps(report.as_dict()) and API_KEY not in repr(report)


def test_rebuild_of_garbage_says_what_was_lost(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    db.write_bytes(b"this is not a database" * 200)
    before = inspect_database(db)
    assert before.needs_rebuild and before.problems
    after = rebuild_database(db)
    assert after.ok and after.entries == 0 and after.lost and "unknown" in after.lost
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_doctor_fix_rebuilds_a_damaged_database_keeping_readable_entries(
    make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", *range(1, 6))
    cache = make_cache()
    cache.resolve_many(paths)
    cache.close()
    db = tmp_path / "cache.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:  # wreck the files table's root page
        fh.seek((root - 1) * page)
        fh.write(b"\xde\xad" * (page // 2))
    cache = make_cache()
    report = cache.doctor(fix=True)
    assert report.ok and report.actions and report.lost == "0 entries"
    assert len(list(cache.entries())) == 5
