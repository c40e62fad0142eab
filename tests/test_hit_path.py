"""The warm-hit path's promises: no write transaction, no read of the file.

Each lookup on the hit path runs under :func:`watch`, which records every SQL
statement the cache's connection runs (``set_trace_callback``), its change
counter, every attempt to open the file (``open``/``os.open``), and the bytes
this process read (``/proc/self/io``). The last two tests show the watch sees
a read and a write when they do happen, so the first ones cannot pass vacuously.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import API_KEY, store_of

from assetcache import AssetCache, AsyncAssetCache

SIZE = 4 << 20  # big enough that reading it would stand out in /proc/self/io
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN", "COMMIT", "CREATE", "DROP")


def big_png(path: Path, size: int = SIZE) -> Path:
    """A valid 1x1 PNG of about ``size`` bytes (random bytes in an ancillary chunk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"zzZz", os.urandom(size))
        + chunk(b"IDAT", zlib.compress(b"\x00\x01\x02\x03"))
        + chunk(b"IEND", b"")
    )
    return path


def read_bytes_so_far() -> int | None:
    try:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])
    except (OSError, StopIteration):
        return None


@dataclass
class Watch:
    statements: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    changes: int = 0
    read: int | None = None
    in_transaction: bool = False

    @property
    def writes(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(WRITES)]


@contextlib.contextmanager
def watch(
    cache: AssetCache | AsyncAssetCache, path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Watch]:
    """Record SQL run on this thread's connection and any open/read of ``path``."""
    record = Watch()
    conn = store_of(cache).conn()
    target = os.path.abspath(path)
    real_open, real_os_open = builtins.open, os.open

    def is_target(file: object) -> bool:
        if isinstance(file, (str, bytes, os.PathLike)):
            return os.path.abspath(os.fsdecode(file)) == target
        return False

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if is_target(file):
            record.opened.append("open")
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def guarded_os_open(file: object, *args: object, **kwargs: object) -> int:
        if is_target(file):
            record.opened.append("os.open")
        return real_os_open(file, *args, **kwargs)  # type: ignore[arg-type]

    before_changes = conn.total_changes
    before_read = read_bytes_so_far()
    conn.set_trace_callback(record.statements.append)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    try:
        yield record
    finally:
        monkeypatch.undo()
        conn.set_trace_callback(None)
        after_read = read_bytes_so_far()
        record.changes = conn.total_changes - before_changes
        record.in_transaction = conn.in_transaction
        if before_read is not None and after_read is not None:
            record.read = after_read - before_read


def assert_read_only(record: Watch) -> None:
    assert record.statements, "the watch saw no SQL at all: it is not watching the hit path"
    assert record.writes == []
    assert record.changes == 0
    assert not record.in_transaction
    assert record.opened == []
    if record.read is not None:
        assert record.read < SIZE // 4


@pytest.fixture
def warm(make_cache, tmp_path):
    """A cache (racy window 0: no waiting) and a file it has already uploaded."""
    cache = make_cache(racy_window=0.0)
    path = big_png(tmp_path / "big.png")
    assert cache.resolve(path).outcome == "uploaded"
    return cache, path


def test_warm_hit_neither_writes_nor_reads_the_file(warm, emu, monkeypatch):
    cache, path = warm
    uploads = emu.upload_count
    with watch(cache, path, monkeypatch) as record:
        uuid = cache.get_uuid(str(path))
        hit = cache.resolve(path)
        many = cache.resolve_many([str(path), path])
    assert hit.outcome == "hit" and hit.uuid == uuid
    assert [r.outcome for r in many] == ["hit", "hit"]
    assert emu.upload_count == uploads
    assert_read_only(record)


def test_async_warm_hit_neither_writes_nor_reads_the_file(warm, emu, tmp_path, monkeypatch):
    cache, path = warm

    async def lookup() -> tuple[str, str]:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=cache.db_path, clock=emu.clock, racy_window=0.0
        ) as twin:
            # Open this thread's connection first, so the watch sees the lookup's SQL.
            store_of(twin).conn()
            with watch(twin, path, monkeypatch) as record:
                res = await twin.resolve(path)
            assert_read_only(record)
            return res.outcome, res.uuid or ""

    outcome, uuid = asyncio.run(lookup())
    assert (outcome, uuid) == ("hit", cache.get_uuid(path))


def test_a_use_is_written_at_most_once_per_touch_interval(make_cache, tmp_path, emu, monkeypatch):
    # Opted in: serving counts as a use (by default a hit never writes).
    cache = make_cache(racy_window=0.0, served_is_used=True)
    path = big_png(tmp_path / "big.png")
    assert cache.resolve(path).outcome == "uploaded"
    emu.advance(hours=2)  # past touch_every (1 h): this hit records the use, once
    with watch(cache, path, monkeypatch) as first:
        assert cache.resolve(path).outcome == "hit"
    # SQLite's trace reports a statement once more when a trigger on its table
    # runs (here the scan generation's, whose condition a use never meets).
    verbs = [s.split()[0].upper() for i, s in enumerate(first.writes) if s not in first.writes[:i]]
    assert verbs == ["BEGIN", "UPDATE", "COMMIT"]
    assert first.changes == 1 and first.opened == [] and not first.in_transaction
    with watch(cache, path, monkeypatch) as second:
        assert cache.resolve(path).outcome == "hit"
    assert_read_only(second)


def test_the_watch_sees_a_file_read(make_cache, tmp_path, monkeypatch):
    # A racily-clean entry is verified by content on every lookup: the watch must see that.
    cache = make_cache(racy_window=10**9)
    path = big_png(tmp_path / "racy.png")
    assert cache.resolve(path).outcome == "uploaded"
    with watch(cache, path, monkeypatch) as record:
        assert cache.resolve(path).outcome == "hit"
    assert record.opened
    if record.read is not None:
        assert record.read >= SIZE
    with pytest.raises(AssertionError):
        assert_read_only(record)


def test_the_watch_sees_a_write(make_cache, tmp_path, emu, monkeypatch):
    # Opted in: serving counts as a use (by default a hit never writes).
    cache = make_cache(racy_window=0.0, served_is_used=True)
    path = big_png(tmp_path / "big.png")
    assert cache.resolve(path).outcome == "uploaded"
    emu.advance(hours=2)
    with watch(cache, path, monkeypatch) as record:
        cache.get_uuid(path)
    assert record.writes and record.changes == 1
    with pytest.raises(AssertionError):
        assert_read_only(record)
