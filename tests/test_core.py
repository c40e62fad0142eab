"""The core promises, end to end against the emulator on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import API_KEY, make_bmp, make_gif, make_png, store_of, use_on_server

from assetcache import (
    AssetCache,
    AuthenticationError,
    SourceError,
    UnsupportedFormat,
    _hashing,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_first_resolve_uploads_and_second_is_a_hit(cache, emu, tmp_path):
    photo = write(tmp_path / "photo.png", make_png(1))
    first = cache.resolve(photo)
    assert first.outcome == "uploaded"
    assert emu.holds(first.uuid)
    assert first.content_hash == _hashing.hash_bytes(photo.read_bytes())
    second = cache.resolve(photo)
    assert second.outcome == "hit"
    assert second.uuid == first.uuid
    assert emu.upload_count == 1


def test_same_bytes_under_other_forms_are_hits(cache, emu, tmp_path):
    data = make_png(2)
    uuid = cache.get_uuid(write(tmp_path / "a.png", data))
    other_path = write(tmp_path / "sub-b.png", data)
    assert cache.resolve(str(other_path)).outcome == "hit"
    assert cache.resolve(data).uuid == uuid
    data_uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert cache.resolve(data_uri).uuid == uuid
    assert cache.resolve(base64.b64encode(data).decode()).uuid == uuid
    with open(other_path, "rb") as f:
        assert cache.resolve(f).uuid == uuid
    assert emu.upload_count == 1


def test_relative_and_absolute_paths_share_one_entry(cache, emu, tmp_path, monkeypatch):
    write(tmp_path / "rel.png", make_png(3))
    monkeypatch.chdir(tmp_path)
    uuid = cache.get_uuid("rel.png")
    monkeypatch.chdir("/")
    assert cache.get_uuid(str(tmp_path / "rel.png")) == uuid
    row = store_of(cache).get_file(str(tmp_path / "rel.png"))
    assert row is not None and os.path.isabs(row.path)


def test_modified_file_uploads_again(cache, emu, tmp_path):
    photo = write(tmp_path / "photo.png", make_png(4))
    first = cache.resolve(photo)
    write(photo, make_png(5, width=6))
    second = cache.resolve(photo)
    assert second.outcome == "uploaded"
    assert second.uuid != first.uuid
    assert emu.upload_count == 2


def test_reuploads_after_the_window_and_a_use_slides_it(make_cache, emu, tmp_path):
    cache = make_cache(touch_every=0)  # persist every use, so day-20 use is visible
    stale = write(tmp_path / "stale.png", make_png(6))
    kept = write(tmp_path / "kept.png", make_png(7))
    stale_uuid = cache.get_uuid(stale)
    kept_uuid = cache.get_uuid(kept)

    emu.advance(days=20)
    kept_now = cache.resolve(kept)  # the app asks at day 20 ...
    assert kept_now.outcome == "hit"
    assert "errors" not in use_on_server(emu.base_url, kept_now.uuid)  # ... and uses it
    cache.touch(kept_now.uuid)  # ... and says so: serving alone is no evidence of a use
    emu.advance(days=11)  # day 31 since the first upload
    again = cache.resolve(stale)
    assert again.outcome == "reuploaded"
    assert again.uuid != stale_uuid
    assert not emu.holds(stale_uuid)
    assert emu.holds(again.uuid)

    emu.advance(days=9)  # day 40: 20 days after the last use of `kept`
    assert cache.resolve(kept).outcome == "hit"
    assert cache.resolve(kept).uuid == kept_uuid
    assert emu.holds(kept_uuid)


def test_margin_reuploads_before_the_server_deletes(make_cache, emu, tmp_path):
    cache = make_cache(margin=timedelta(days=2))
    photo = write(tmp_path / "p.png", make_png(8))
    cache.get_uuid(photo)
    emu.advance(
        days=28, hours=1
    )  # inside the margin: server still holds it, cache does not trust it
    assert cache.resolve(photo).outcome == "reuploaded"


def test_hits_never_slide_the_window(make_cache, emu, tmp_path):
    cache = make_cache()
    photo = write(tmp_path / "p.png", make_png(9))
    cache.get_uuid(photo)
    key = (cache.namespace, _hashing.hash_bytes(photo.read_bytes()), "")
    uploaded_at = store_of(cache).get_asset(key).last_used_at
    emu.advance(hours=2)
    cache.get_uuid(photo)
    assert store_of(cache).get_asset(key).last_used_at == uploaded_at


def test_opted_in_hits_slide_the_window_at_most_once_an_hour(make_cache, emu, tmp_path):
    cache = make_cache(served_is_used=True)
    photo = write(tmp_path / "p.png", make_png(9))
    cache.get_uuid(photo)
    key = (cache.namespace, _hashing.hash_bytes(photo.read_bytes()), "")
    uploaded_at = store_of(cache).get_asset(key).last_used_at
    emu.advance(seconds=60)
    cache.get_uuid(photo)
    assert store_of(cache).get_asset(key).last_used_at == uploaded_at
    emu.advance(hours=2)
    cache.get_uuid(photo)
    assert store_of(cache).get_asset(key).last_used_at == pytest.approx(emu.clock(), abs=5)


def test_wrong_key_raises_authentication_error_without_the_key(make_cache, tmp_path):
    wrong = "wrong-key-4242-SECRET"
    cache = make_cache(api_key=wrong)
    with pytest.raises(AuthenticationError) as info:
        cache.resolve(write(tmp_path / "p.png", make_png(10)))
    assert wrong not in str(info.value)
    assert wrong not in repr(info.value)
    assert wrong not in repr(cache)
    assert info.value.code == "invalidApiKey"


def test_one_503_then_success_yields_one_cached_uuid(cache, emu, tmp_path):
    emu.fail_next("503")
    photo = write(tmp_path / "p.png", make_png(11))
    res = cache.resolve(photo)
    assert res.outcome == "uploaded"
    assert emu.upload_count == 1
    assert emu.holds(res.uuid)
    assert cache.resolve(photo).uuid == res.uuid


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"just some text, not an image", "not an image"),
        (b"II*\x00" + b"\x00" * 100, "TIFF"),
        (b"", "empty"),
        (make_png(12)[:40], "truncated"),
    ],
)
def test_non_images_fail_clearly_and_cache_nothing(cache, emu, tmp_path, data, reason):
    bad = write(tmp_path / "bad.png", data)
    with pytest.raises(SourceError) as info:
        cache.resolve(bad)
    assert str(bad) in str(info.value) or "bad.png" in str(info.value)
    assert reason in str(info.value)
    assert emu.request_count == 0
    assert store_of(cache).read("SELECT COUNT(*) FROM assets")[0][0] == 0


def test_rewrite_in_the_same_timestamp_tick_is_rehashed(cache, emu, tmp_path, monkeypatch):
    photo = write(tmp_path / "p.png", make_png(13))
    first = cache.resolve(photo)
    st = os.stat(photo)
    # Same size, same mtime; force ctime equal too by reporting the old stat,
    # as a filesystem with coarse timestamps would.
    write(photo, make_png(14))
    assert len(make_png(13)) == len(make_png(14))
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    real_stat = os.stat

    def same_tick_stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(photo):
            fields = list(result)
            return os.stat_result(
                fields,
                {
                    "st_mtime_ns": st.st_mtime_ns,
                    "st_ctime_ns": st.st_ctime_ns,
                    "st_atime_ns": st.st_atime_ns,
                },
            )
        return result

    monkeypatch.setattr(os, "stat", same_tick_stat)
    assert os.stat(photo).st_ctime_ns == st.st_ctime_ns
    second = cache.resolve(photo)
    assert second.outcome == "uploaded"
    assert second.uuid != first.uuid
    assert second.content_hash == _hashing.hash_bytes(make_png(14))


@pytest.mark.parametrize("size", [0, 1, 20_000, _hashing.CHUNK_SIZE, _hashing.CHUNK_SIZE + 7])
def test_hashing_an_open_file_gives_what_a_stream_gives(tmp_path, size):
    data = os.urandom(size)
    path = write(tmp_path / "f", data)
    seen: list[bytes] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        got = _hashing.hash_fd(fd, size, sinks=[lambda chunk: seen.append(bytes(chunk))])
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert got == _hashing.hash_stream(f) == (_hashing.hash_bytes(data), size)
    assert b"".join(seen) == data  # every byte reached the sinks, once


def test_a_small_file_is_read_in_one_read(tmp_path, monkeypatch):
    data = make_png(21)
    path = write(tmp_path / "p.png", data)
    reads: list[int] = []
    real_read = os.read
    fd = os.open(path, os.O_RDONLY)

    def counting_read(at, n):
        if at == fd:  # this file's reads only, not another thread's
            reads.append(n)
        return real_read(at, n)

    monkeypatch.setattr(os, "read", counting_read)
    try:
        assert _hashing.hash_fd(fd, len(data)) == (_hashing.hash_bytes(data), len(data))
    finally:
        os.close(fd)
    assert reads == [len(data)]  # no second read to find the end


def test_a_file_that_reads_short_is_hashed_as_it_is(tmp_path):
    """Shrunk after its ``fstat``: read again from the start, to its end; the
    caller's second ``fstat`` then tells it changed."""
    path = write(tmp_path / "f", b"abcdef")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _hashing.hash_fd(fd, 10) == (_hashing.hash_bytes(b"abcdef"), 6)
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(OverflowError):
            _hashing.hash_fd(fd, 6, limit=5)
    finally:
        os.close(fd)


def test_an_old_unchanged_file_is_not_read_again(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=0)
    photo = write(tmp_path / "p.png", make_png(15))
    uuid = cache.get_uuid(photo)
    real_open = os.open

    def no_open(path, *args, **kwargs):
        if os.fspath(path) == str(photo):
            raise AssertionError("the file was read on a hit")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_open)
    assert cache.get_uuid(photo) == uuid


def test_accepts_gif_and_bmp(cache, emu):
    assert cache.resolve(make_gif(1)).outcome == "uploaded"
    assert cache.resolve(make_bmp(1)).outcome == "uploaded"
    assert emu.upload_count == 2


def test_jpeg(cache, emu):
    pytest.importorskip("PIL")
    from helpers import make_jpeg

    assert cache.resolve(make_jpeg()).outcome == "uploaded"


def test_uuids_are_not_shared_across_accounts(emu, tmp_path):
    with emu:
        pass
    from assetcache.emulator import Emulator

    with Emulator(api_key={"key-a", "key-b"}) as server:
        db = tmp_path / "shared.db"
        data = make_png(16)
        with AssetCache("key-a", base_url=server.base_url, db_path=db, clock=server.clock) as a:
            uuid_a = a.get_uuid(data)
        with AssetCache("key-b", base_url=server.base_url, db_path=db, clock=server.clock) as b:
            res = b.resolve(data)
        assert res.outcome == "uploaded"
        assert res.uuid != uuid_a
        assert server.upload_count == 2


def test_api_key_never_reaches_the_database(cache, tmp_path):
    cache.get_uuid(make_png(17))
    cache.close()
    for name in os.listdir(tmp_path):
        if name.startswith("cache.db"):
            assert API_KEY.encode() not in (tmp_path / name).read_bytes()


def test_database_is_private(cache, tmp_path):
    mode = os.stat(cache.db_path).st_mode & 0o777
    assert mode == 0o600


def test_unsupported_format_error_names_format(cache):
    with pytest.raises(UnsupportedFormat) as info:
        cache.resolve(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    assert "SVG" in str(info.value)


def test_environment_supplies_key_and_url(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNWARE_API_KEY", API_KEY)
    monkeypatch.setenv("ASSETCACHE_API_URL", emu.base_url)
    monkeypatch.setenv("ASSETCACHE_DB", str(tmp_path / "env.db"))
    with AssetCache(clock=emu.clock) as cache:
        assert cache.resolve(make_png(18)).outcome == "uploaded"
        assert cache.db_path == str(tmp_path / "env.db")


def test_schema_is_versioned(cache):
    conn = sqlite3.connect(cache.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
