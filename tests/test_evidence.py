"""Evidence, not belief: the window slides only on evidence of a use on Runware.

Each test stands for one case of "served is not used" and "a clock ahead is
believed": the emulator's clock is the server's, the cache's clock is injected
(sometimes skewed), and after every answer the emulator must hold the UUID.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import API_KEY, use_on_server, write_images

from assetcache import AssetCache
from assetcache.emulator import Emulator

DAY = 86400.0
#: The schema migration that splits serving from evidence (``served`` table).
EVIDENCE_MIGRATION = 5


def held_for(emu: Emulator, uuid: str, data: bytes) -> bool:
    """The emulator holds ``uuid`` and it was uploaded from exactly ``data``."""
    import hashlib

    image = emu.image(uuid)
    return image is not None and image.sha256 == hashlib.sha256(data).hexdigest()


# -- served is not used ---------------------------------------------------------------


def test_serving_alone_never_keeps_an_entry_alive(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 1)
    data = path.read_bytes()
    first = cache.resolve(path)
    assert first.outcome == "uploaded"
    for day in range(1, 61):
        emu.advance(days=1)
        res = cache.resolve(path)
        assert held_for(emu, res.uuid, data), f"day {day}: served a UUID Runware deleted"
    # Served daily, never used: the window ran out twice in 60 days.
    assert emu.uploads_by_sha256()[__import__("hashlib").sha256(data).hexdigest()] == 3


def test_get_uuid_does_not_slide_the_window(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 2)
    uuid = cache.get_uuid(path)
    uploaded = next(cache.entries()).last_used_at
    for _ in range(20):
        emu.advance(hours=12)
        assert cache.get_uuid(path) == uuid
    entry = next(cache.entries())
    assert entry.last_used_at == pytest.approx(uploaded)
    assert entry.last_served_at is not None and entry.last_served_at > uploaded + 9 * DAY


def test_nightly_cli_upload_does_not_keep_entries_fresh(tmp_path: Path) -> None:
    run = EmulatorCLI(tmp_path)
    write_images(tmp_path / "photos", 1, 2)
    assert run("upload", tmp_path / "photos").exit_code == 0
    for _ in range(35):
        run.advance(1)
        assert run("upload", tmp_path / "photos").exit_code == 0
    listing = json.loads(run("ls", "--json").output)
    emu = Emulator(api_key="emulator", state_path=f"{run.db}.emulator.json")
    entries = listing["entries"] if isinstance(listing, dict) else listing
    assert entries
    for item in entries:
        assert emu.holds(item["uuid"]), item
        assert item["last_served_at"] is not None


def test_refresh_renews_an_entry_that_was_only_served(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 3)
    old = cache.get_uuid(path)
    for _ in range(26):
        emu.advance(days=1)
        cache.get_uuid(path)
    report = cache.refresh(within=5 * DAY)
    assert [item.status for item in report.items] == ["renewed"]
    new = cache.get_uuid(path)
    assert new != old and emu.holds(new)


def test_use_is_evidence_and_keeps_one_upload(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 4)
    for _ in range(70):
        answer = cache.use(path, lambda uuid: use_on_server(emu.base_url, uuid))
        assert "errors" not in answer, answer
        emu.advance(days=2)
    assert emu.upload_count == 1


def test_touch_is_evidence(emu: Emulator, cache: AssetCache, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path / "img", 5)
    uuid = cache.get_uuid(path)
    for _ in range(40):
        emu.advance(days=1)
        assert cache.get_uuid(path) == uuid
        assert "errors" not in use_on_server(emu.base_url, uuid)
        cache.touch(uuid)
    assert emu.upload_count == 1


def test_served_is_used_opt_in_slides_on_serving(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    cache = make_cache(served_is_used=True)
    (path,) = write_images(tmp_path / "img", 6)
    for _ in range(40):
        uuid = cache.get_uuid(path)
        assert "errors" not in use_on_server(emu.base_url, uuid)  # the caller's promise
        emu.advance(days=1)
    assert emu.upload_count == 1


def test_default_cache_does_not_count_serving(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    assert cache.settings()["served_is_used"] is False


def test_ls_and_stats_show_both_times(tmp_path: Path) -> None:
    run = EmulatorCLI(tmp_path)
    write_images(tmp_path / "photos", 1)
    assert run("upload", tmp_path / "photos").exit_code == 0
    run.advance(2)
    assert run("upload", tmp_path / "photos").exit_code == 0
    listing = json.loads(run("ls", "--json").output)
    entries = listing["entries"] if isinstance(listing, dict) else listing
    (item,) = entries
    assert item["last_used_at"] < item["last_served_at"]
    text = run("ls").output
    assert "SERVED" in text
    stats = json.loads(run("stats", "--json").output)
    assert stats["last_used_at"] == item["last_used_at"]
    assert stats["last_served_at"] == item["last_served_at"]
    status = json.loads(run("status", "--json", "--all", tmp_path / "photos").output)
    (found,) = status["files"]
    assert found["last_used_at"] == item["last_used_at"]
    assert found["last_served_at"] == item["last_served_at"]


def test_migration_keeps_only_upload_time_as_evidence(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    """An old database's ``last_used_at`` mixed serving with use: only the upload
    time is known evidence, so an entry uploaded 35 days ago and "used" (served)
    yesterday is not served again."""
    (path,) = write_images(tmp_path / "img", 7)
    cache = make_cache()
    old = cache.get_uuid(path)
    cache.close()
    emu.advance(days=35)
    db = sqlite3.connect(tmp_path / "cache.db")
    # What a previous version wrote after serving the entry yesterday.
    db.execute("UPDATE assets SET last_used_at = ?", (emu.clock() - DAY,))
    db.execute("UPDATE assets SET image_uuid = upper(image_uuid)")  # as a server once sent it
    # Back to the schema before serving and evidence were told apart.
    db.execute("DROP TABLE IF EXISTS served")
    db.execute(f"PRAGMA user_version = {EVIDENCE_MIGRATION - 1}")
    db.commit()
    db.close()
    cache = make_cache()
    (entry,) = cache.entries()
    assert entry.uuid == old and entry.state == "expired"  # lower case again; no evidence left
    assert entry.last_served_at == pytest.approx(emu.clock() - DAY)  # the old value, kept
    res = cache.resolve(path)
    assert res.outcome == "reuploaded" and res.uuid != old and emu.holds(res.uuid)


# -- time you can trust -----------------------------------------------------------------


def test_a_clock_ahead_at_upload_is_not_believed(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 8)
    data = path.read_bytes()
    ahead = make_cache(clock=lambda: emu.clock() + 10 * DAY)
    ahead.get_uuid(path)
    ahead.close()
    emu.advance(days=31)
    cache = make_cache()
    res = cache.resolve(path)
    assert held_for(emu, res.uuid, data)
    assert res.outcome == "reuploaded"


def test_a_future_row_is_suspect_and_seen_by_refresh_and_prune(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 9)
    cache = make_cache()
    old = cache.get_uuid(path)
    cache.close()
    db = sqlite3.connect(tmp_path / "cache.db")  # a row a wrong clock wrote long ago
    db.execute("UPDATE assets SET last_used_at = ?", (emu.clock() + 400 * DAY,))
    db.commit()
    db.close()
    cache = make_cache()
    (entry,) = cache.entries()
    assert entry.state == "suspect"
    assert [e.uuid for e in cache.entries(expired=True)] == [old]
    assert len(cache.prune(dry_run=True).entries) == 1
    report = cache.refresh(within=DAY)
    assert [item.status for item in report.items] == ["renewed"]
    new = cache.get_uuid(path)
    assert new != old and emu.holds(new)


def test_future_row_is_reuploaded_not_served(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 10)
    cache = make_cache()
    old = cache.get_uuid(path)
    cache.close()
    emu.advance(days=31)  # Runware deleted it
    db = sqlite3.connect(tmp_path / "cache.db")
    db.execute("UPDATE assets SET last_used_at = ?", (emu.clock() + 20 * DAY,))
    db.commit()
    db.close()
    res = make_cache().resolve(path)
    assert res.outcome == "reuploaded" and res.uuid != old and emu.holds(res.uuid)


def test_touch_in_the_future_is_clamped(emu: Emulator, cache: AssetCache, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path / "img", 11)
    uuid = cache.get_uuid(path)
    entry = cache.touch(uuid, at=emu.clock() + 30 * DAY)
    assert entry is not None and entry.last_used_at <= emu.clock() + 60


def test_a_clock_behind_is_caught_near_the_end_of_the_window(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 12)
    data = path.read_bytes()
    make_cache().get_uuid(path)
    emu.advance(days=30.5)
    behind = make_cache(clock=lambda: emu.clock() - 3 * DAY)
    res = behind.resolve(path)
    assert held_for(emu, res.uuid, data), "a clock 3 days behind served a deleted UUID"


def test_a_clock_behind_costs_no_request_early_in_the_window(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 13)
    make_cache().get_uuid(path)
    emu.advance(days=5)
    before = emu.request_count
    behind = make_cache(clock=lambda: emu.clock() - 3 * DAY)
    assert behind.resolve(path).outcome == "hit"
    assert emu.request_count == before


def test_server_time_is_checked_at_most_once_per_run(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", 14, 15, 16)
    first = make_cache()
    first.resolve_many(paths)
    first.close()
    emu.advance(days=27)
    before = emu.request_count
    cache = make_cache()
    for path in paths:
        assert cache.resolve(path).outcome == "hit"
    assert emu.request_count - before == 1


def test_skewed_clock_stamps_in_server_time_and_says_so(
    emu: Emulator,
    make_cache: Callable[..., AssetCache],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = write_images(tmp_path / "img", 17, 18)
    cache = make_cache(clock=lambda: emu.clock() - 3 * DAY)
    with caplog.at_level(logging.WARNING, logger="assetcache"):
        cache.resolve(paths[0])
        cache.resolve(paths[1])
    warnings = [r for r in caplog.records if "clock" in r.getMessage().lower()]
    assert len(warnings) == 1
    for entry in cache.entries():
        assert entry.last_used_at == pytest.approx(emu.clock(), abs=120)
    report = cache.doctor()
    assert "clock" in json.dumps(report.as_dict()).lower()
    assert report.as_dict()["clock_skew_seconds"] == pytest.approx(
        3 * DAY, abs=120
    )  # server minus local


def test_emulator_date_header_follows_its_clock(emu: Emulator) -> None:
    import email.utils

    import httpx

    emu.advance(days=10)
    resp = httpx.post(
        emu.base_url,
        json=[{"taskType": "ping", "ping": True}],
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    when = email.utils.parsedate_to_datetime(resp.headers["date"]).timestamp()
    assert when == pytest.approx(emu.clock(), abs=5)


def test_status_of_a_future_row_says_it_will_be_uploaded_again(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 19)
    cache = make_cache(racy_window=0.0)
    cache.get_uuid(path)
    cache.close()
    db = sqlite3.connect(tmp_path / "cache.db")
    db.execute("UPDATE assets SET last_used_at = ?", (emu.clock() + 100 * DAY,))
    db.commit()
    db.close()
    cache = make_cache(racy_window=0.0)
    (found,) = list(cache.status([str(path)]))
    assert found.state == "expired"
    assert cache.status_report([str(tmp_path / "img")]).counts["expired"] == 1
