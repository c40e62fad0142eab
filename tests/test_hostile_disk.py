"""Faults on this machine: a full disk, a store that refuses writes.

The store is a :class:`SQLiteStore` whose chosen writes fail as a full disk
makes them fail (``StoreError: database or disk is full``), injected through
the public ``store=`` argument. Hits are served while their stat rows cannot be
written; uploads Runware accepted but the store refused are recorded again
before the run ends, and reported (with their UUID) if they still cannot be;
"could not save usage counters" is one line, never a traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, write_images

from assetcache import AssetCache, StoreError
from assetcache._storage._sqlite import SQLiteStore
from assetcache.emulator import Emulator


class FullDisk(SQLiteStore):
    """Writes named in ``failing`` raise as on a full disk; ``budget`` of them
    fail before the disk has room again (``None``: never)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing: set[str] = set()
        self.budget: int | None = None
        self.refused = 0

    def _full(self, name: str) -> None:
        if name in self.failing and (self.budget is None or self.refused < self.budget):
            self.refused += 1
            raise StoreError("cannot write the cache database: database or disk is full")

    def put_files(self, rows: Any) -> None:
        rows = list(rows)
        if rows:
            self._full("put_files")
        super().put_files(rows)

    def touch(self, key: Any, now: float) -> None:
        self._full("touch")
        super().touch(key, now)

    def record_uploads(self, *args: Any, **kwargs: Any) -> Any:
        self._full("record_uploads")
        return super().record_uploads(*args, **kwargs)

    def add_counters(self, namespace: str, counts: dict[str, int]) -> None:
        self._full("add_counters")
        super().add_counters(namespace, counts)


def open_cache(emu: Emulator, store: FullDisk, **kw: Any) -> AssetCache:
    return AssetCache(
        API_KEY, base_url=emu.base_url, db_path=store.path, store=store, clock=emu.clock, **kw
    )


def test_hits_are_served_when_their_stat_rows_cannot_be_written(
    emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", 1, 2, 3)
    store = FullDisk(tmp_path / "c.db")
    with open_cache(emu, store) as cache:
        uuids = [r.uuid for r in cache.resolve_many(paths)]
    # A fresh stat for every file (same bytes): the hit path wants new stat rows.
    for p in paths:
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    store = FullDisk(tmp_path / "c.db")
    store.failing = {"put_files", "touch"}
    emu.advance(days=2)  # due for a touch too
    with open_cache(emu, store) as cache:
        again = cache.resolve_many(paths)
    assert [r.outcome for r in again] == ["hit"] * 3
    assert [r.uuid for r in again] == uuids
    assert store.refused >= 1
    assert emu.upload_count == 3


def test_uploads_not_recorded_are_recorded_again_before_the_run_ends(
    emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", 4, 5, 6, 7)
    store = FullDisk(tmp_path / "c.db")
    store.failing, store.budget = {"record_uploads"}, 1  # the disk has room again soon
    with open_cache(emu, store, batch_size=2) as cache:
        results = cache.resolve_many(paths)
        assert all(r.ok and r.outcome == "uploaded" for r in results), results
        assert store.refused == 1
        entries = {e.uuid for e in cache.entries()}
    assert entries == {r.uuid for r in results}
    assert emu.upload_count == 4  # recorded again, not uploaded again


def test_uploads_that_cannot_be_recorded_are_reported_with_their_uuid(
    emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", 8, 9)
    store = FullDisk(tmp_path / "c.db")
    store.failing = {"record_uploads"}
    with open_cache(emu, store) as cache:
        results = cache.resolve_many(paths)
    for r in results:
        assert r.error is not None and r.uuid is None
        text = str(r.error)
        assert "could not be recorded" in text and "disk is full" in text
        uploaded_as = text.split("uploaded to Runware as ")[1].split(",")[0]
        assert emu.image(uploaded_as) is not None  # the UUID named is the real upload


def test_counters_that_cannot_be_saved_are_one_line(
    emu: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FullDisk(tmp_path / "c.db")
    store.failing = {"add_counters"}
    with caplog.at_level(logging.WARNING, logger="assetcache"), open_cache(emu, store) as cache:
        cache.resolve_many(write_images(tmp_path / "img", 10))
    records = [r for r in caplog.records if "usage counters" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is None and "disk is full" in records[0].getMessage()


def test_counters_that_cannot_be_saved_print_one_stderr_line(tmp_path: Path) -> None:
    """In a real process, with no logging configured: one line, no traceback."""
    program = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_hostile_disk import FullDisk
from helpers import API_KEY, write_images
from pathlib import Path
from assetcache import AssetCache
from assetcache.emulator import Emulator
tmp = Path({str(tmp_path)!r})
with Emulator(api_key=API_KEY) as emu:
    store = FullDisk(tmp / "c.db")
    store.failing = {{"add_counters"}}
    with AssetCache(API_KEY, base_url=emu.base_url, db_path=store.path, store=store) as cache:
        cache.resolve_many(write_images(tmp / "img", 11))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not save usage counters" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
