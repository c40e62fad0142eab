"""``cache.status(paths)``: every state, path order, and the helper process's share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_png

from assetcache import _hashing, _scan, _store


def states(cache, root: Path) -> list[tuple[str, str]]:
    """``(path relative to root, state)`` of every file below ``root``, as listed."""
    return [(os.path.relpath(s.path, root), s.state) for s in cache.status([str(root)])]


@pytest.fixture
def scanned(make_cache, tmp_path):
    """A folder of uploaded files (racy window 0, so nothing needs to age)."""
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "assets"
    for i, rel in enumerate(["a.png", "b/c.png", "b/d.png", "b.png", "b0.png", "z.png"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_png(i))
    assert all(r.ok for r in cache.resolve_many(sorted(str(p) for p in root.rglob("*.png"))))
    return cache, root


def test_every_file_is_fresh_in_path_byte_order(scanned):
    cache, root = scanned
    found = list(cache.status([str(root)]))
    # "b.png" < "b/..." < "b0.png" in bytes ('.' < '/' < '0'): the files table's order.
    assert [os.path.relpath(s.path, root) for s in found] == [
        "a.png",
        "b.png",
        "b/c.png",
        "b/d.png",
        "b0.png",
        "z.png",
    ]
    assert {s.state for s in found} == {"fresh"}
    first = found[0]
    assert first.uuid and first.content_hash and first.expires_at is not None
    assert 0 < first.time_left <= cache._engine.policy.retention


def test_new_changed_and_missing_files_in_place(scanned):
    cache, root = scanned
    (root / "b" / "c.png").write_bytes(make_png(100))  # changed
    (root / "b" / "d.png").unlink()  # missing
    (root / "b" / "e.png").write_bytes(make_png(101))  # new
    (root / "notes.txt").write_text("not an image")  # new (status lists every file)
    assert states(cache, root) == [
        ("a.png", "fresh"),
        ("b.png", "fresh"),
        ("b/c.png", "changed"),
        ("b/d.png", "missing"),
        ("b/e.png", "new"),
        ("b0.png", "fresh"),
        ("notes.txt", "new"),
        ("z.png", "fresh"),
    ]


def test_expiring_and_expired(scanned, emu):
    cache, root = scanned
    emu.advance(days=27)  # serve limit is 29 days; "expiring" within 3 days of it
    assert {s.state for s in cache.status([str(root)])} == {"expiring"}
    emu.advance(days=3)
    assert {s.state for s in cache.status([str(root)])} == {"expired"}


def test_single_files_and_absent_paths(scanned, tmp_path):
    cache, root = scanned
    found = list(cache.status([str(root / "a.png"), str(root / "gone.png"), "relative.png"]))
    assert [(s.path, s.state) for s in found] == [
        (str(root / "a.png"), "fresh"),
        (str(root / "gone.png"), "missing"),
        (os.path.abspath("relative.png"), "missing"),
    ]


def test_racily_clean_files_are_judged_by_content(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=10**9)  # every entry stays racily clean
    path = tmp_path / "r" / "x.png"
    path.parent.mkdir()
    path.write_bytes(make_png(7))
    cache.resolve(path)
    assert [s.state for s in cache.status([str(path.parent)])] == ["fresh"]
    # Same stat data, other content (a rewrite within one timestamp tick): only a read tells.
    monkeypatch.setattr(_hashing, "hash_file", lambda p: ("0" * 32, 0))
    assert [s.state for s in cache.status([str(path.parent)])] == ["changed"]


def test_symlinks_to_files_count_and_symlinked_folders_are_not_walked(scanned, tmp_path):
    cache, root = scanned
    (root / "link.png").symlink_to(root / "a.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "pipe")
    listed = [p for p, _ in states(cache, root)]
    assert "link.png" in listed
    assert not any(p.startswith("loop") for p in listed)
    assert "dangling.png" not in listed and "pipe" not in listed


def test_undecodable_file_names(make_cache, tmp_path):
    cache = make_cache(racy_window=0.0)
    folder = tmp_path / "raw"
    folder.mkdir()
    name = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    with open(name, "wb") as f:
        f.write(make_png(3))
    cache.resolve(os.fsdecode(name))
    found = list(cache.status([str(folder)]))
    assert [(os.fsencode(s.path), s.state) for s in found] == [(name, "fresh")]


# -- the helper process ---------------------------------------------------------------


def big_folder(cache, root: Path, n: int = 60) -> None:
    for i in range(n):
        path = root / f"d{i % 3}" / f"f{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_png(1000 + i))
    assert all(r.ok for r in cache.resolve_many(sorted(str(p) for p in root.rglob("*.png"))))
    (root / "d1" / "f001.png").unlink()
    (root / "d2" / "f002.png").write_bytes(make_png(5000))
    (root / "d2" / "new.png").write_bytes(make_png(5001))


def fields(found):
    return [(s.path, s.state, s.uuid, s.content_hash, s.expires_at) for s in found]


def test_a_helper_process_scans_half_of_a_big_folder(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "big"
    big_folder(cache, root)
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10**9)
    alone = list(cache.status([str(root)]))

    started = []
    real_start = _scan._Helper.start.__func__

    def start(cls, *args):
        helper = real_start(cls, *args)
        started.append(helper)
        return helper

    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_scan._Helper, "start", classmethod(start))
    split = list(cache.status([str(root)]))
    assert len(started) == 1 and started[0] is not None
    assert started[0].proc.returncode == 0  # it ran to the end and answered
    assert fields(split) == fields(alone)
    assert {s.state for s in split} == {"fresh", "missing", "changed", "new"}


def test_a_failed_helper_is_replaced_by_this_process(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "big"
    big_folder(cache, root)
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10**9)
    alone = list(cache.status([str(root)]))
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_scan, "_BOOT", "import sys; sys.exit(3)")
    assert fields(cache.status([str(root)])) == fields(alone)


def test_stopping_early_ends_the_helper(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "big"
    big_folder(cache, root)
    helpers = []
    real_start = _scan._Helper.start.__func__

    def start(cls, *args):
        helpers.append(real_start(cls, *args))
        return helpers[-1]

    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_scan._Helper, "start", classmethod(start))
    found = cache.status([str(root)])
    next(found)
    found.close()
    assert helpers and helpers[0].proc.poll() is not None


def test_a_schema_2_database_is_migrated_and_still_fresh(make_cache, tmp_path):
    """Migration 3 fills ``files.sig`` and ``files.side`` for rows written before it."""
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "old"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(make_png(200 + i))
    assert all(r.ok for r in cache.resolve_many(sorted(str(p) for p in root.iterdir())))
    before = fields(cache.status([str(root)]))
    with cache.store.write() as conn:
        conn.execute("ALTER TABLE files DROP COLUMN sig")
        conn.execute("ALTER TABLE files DROP COLUMN side")
        conn.execute("PRAGMA user_version = 2")
    db = cache.store.path
    cache.close()
    again = make_cache(racy_window=0.0, db_path=db)
    assert again.store.schema_version() == len(_store.MIGRATIONS)
    assert fields(again.status([str(root)])) == before
    assert {s.state for s in again.status([str(root)])} == {"fresh"}
    assert all(again._engine.fast_hit(str(p)) is not None for p in root.iterdir())
