"""``cache.status(paths)``: every state, path order, and the helper process's share."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from helpers import engine_of, make_png, store_of

from assetcache import _hashing
from assetcache import _status as _scan
from assetcache._storage import _sqlite as _store

try:
    from assetcache import _walk
except ImportError:  # the C listing is optional: not built here
    _walk = None


@pytest.fixture(params=["c", "python"], autouse=True)
def listing(request, monkeypatch):
    """Every test here runs with the C listing (when built) and with the pure-Python one
    (``ASSETCACHE_PURE_PYTHON=1`` reaches the helper process too)."""
    if request.param == "c" and _scan._c_listing is None:
        pytest.skip("the C listing (assetcache/_walk.c) is not built here")
    if request.param == "python":
        monkeypatch.setattr(_scan, "_c_listing", None)
        monkeypatch.setattr(_scan, "_joined", _scan._joined_py)
        monkeypatch.setenv("ASSETCACHE_PURE_PYTHON", "1")
    return request.param


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
    assert 0 < first.time_left <= engine_of(cache).policy.retention


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
        ("notes.txt", "invalid"),
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


#: The helper process serves the pure-Python listing (threads serve the C one).
only_with_the_python_listing = pytest.mark.parametrize("listing", ["python"], indirect=True)


def fields(found):
    return [(s.path, s.state, s.uuid, s.content_hash, s.expires_at) for s in found]


@only_with_the_python_listing
def test_a_helper_process_scans_half_of_a_big_folder(make_cache, tmp_path, monkeypatch, listing):
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


@only_with_the_python_listing
def test_a_failed_helper_is_replaced_by_this_process(make_cache, tmp_path, monkeypatch, listing):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "big"
    big_folder(cache, root)
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10**9)
    alone = list(cache.status([str(root)]))
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_scan, "_BOOT", "import sys; sys.exit(3)")
    assert fields(cache.status([str(root)])) == fields(alone)


@only_with_the_python_listing
def test_stopping_early_ends_the_helper(make_cache, tmp_path, monkeypatch, listing):
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
    with store_of(cache).write() as conn:
        conn.execute("ALTER TABLE files DROP COLUMN sig")
        conn.execute("ALTER TABLE files DROP COLUMN side")
        conn.execute("PRAGMA user_version = 2")
    db = store_of(cache).path
    cache.close()
    again = make_cache(racy_window=0.0, db_path=db)
    assert store_of(again).schema_version() == len(_store.MIGRATIONS)
    assert fields(again.status([str(root)])) == before
    assert {s.state for s in again.status([str(root)])} == {"fresh"}
    assert all(engine_of(again).fast_hit(str(p)) is not None for p in root.iterdir())


# -- status reports: fresh files counted in bulk, remembered fresh ranges ----------


def tree(cache, root: Path, folders: int = 3, files: int = 8) -> list[Path]:
    """``folders`` subfolders of ``files`` uploaded images, and two loose files."""
    paths = [root / f"d{d}" / f"f{f:02d}.png" for d in range(folders) for f in range(files)]
    paths += [root / "a.png", root / "z.png"]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_png(3000 + i))
    assert all(r.ok for r in cache.resolve_many(sorted(str(p) for p in paths)))
    return paths


def judged_one_by_one(cache, root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """What a report must say, from ``status()`` (which never uses marks)."""
    found = list(cache.status([str(root)]))
    counts = dict.fromkeys(_scan.STATES, 0)
    for s in found:
        counts[s.state] += 1
    return counts, [(s.path, s.state) for s in found if s.state != "fresh"]


def reported(cache, root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    report = cache.status_report([str(root)])
    return report.counts, [(s.path, s.state) for s in report.files]


def tile_reads(cache, monkeypatch) -> list[str]:
    """SQL the store runs from now on that reads file rows (tiles or pages of rows)."""
    seen: list[str] = []
    real = store_of(cache).read

    def read(sql, params=(), doing="read"):
        if "FROM files" in sql and "count(" not in sql:
            seen.append(sql)
        return real(sql, params, doing)

    monkeypatch.setattr(store_of(cache), "read", read)
    return seen


def test_a_report_counts_every_state_and_lists_all_but_the_fresh(scanned):
    cache, root = scanned
    (root / "b" / "c.png").write_bytes(make_png(100))
    (root / "b" / "d.png").unlink()
    (root / "b" / "e.png").write_bytes(make_png(101))
    report = cache.status_report([str(root)])
    assert report.counts == judged_one_by_one(cache, root)[0]
    assert report.counts["fresh"] == 4 and report.total == 7 and not report.all_fresh
    assert [(os.path.relpath(s.path, root), s.state) for s in report.files] == [
        ("b/c.png", "changed"),
        ("b/d.png", "missing"),
        ("b/e.png", "new"),
    ]
    everything = cache.status_report([str(root)], fresh=True)
    assert fields(everything.files) == fields(cache.status([str(root)]))


@pytest.mark.parametrize("resize", [False, True])  # untouched bytes; per-image variants
def test_a_second_report_reads_no_rows_of_unchanged_fresh_folders(
    make_cache, tmp_path, monkeypatch, resize
):
    cache = make_cache(racy_window=0.0, resize=resize)
    assert bool(engine_of(cache).max_side) == resize
    root = tmp_path / "t"
    tree(cache, root)
    first = cache.status_report([str(root)])
    assert first.all_fresh and first.total == 26
    marks = store_of(cache).read("SELECT lo, files FROM scan_marks ORDER BY lo")
    # One mark per run of files (the loose a.png, each folder, the loose z.png)
    # and per stretch between folders (no files, no rows).
    assert [n for _, n in marks] == [1, 8, 0, 8, 0, 8, 1]
    seen = tile_reads(cache, monkeypatch)
    again = cache.status_report([str(root)])
    assert again.counts == first.counts and again.files == []
    assert seen == []  # each folder was matched against its mark: no file row read


@pytest.mark.parametrize(
    "change",
    [
        "edit",
        "delete",
        "add",
        "drop-folder",
        "forget-entry",
        "invalidate",
        "forget-file-row",
        "age",
        "rename",
    ],
)
def test_a_remembered_range_gives_way_to_every_change(make_cache, tmp_path, emu, change):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "t"
    tree(cache, root)
    assert cache.status_report([str(root)]).all_fresh  # marks written
    one = root / "d1" / "f03.png"
    if change == "edit":
        one.write_bytes(make_png(9999))
    elif change == "delete":
        one.unlink()
    elif change == "add":
        (root / "d1" / "f03b.png").write_bytes(make_png(9998))
    elif change == "drop-folder":
        for p in (root / "d2").iterdir():
            p.unlink()
        (root / "d2").rmdir()
    elif change == "forget-entry":
        digest = cache.resolve(one).content_hash
        cache.forget([digest])
    elif change == "invalidate":
        cache.invalidate(one)
    elif change == "forget-file-row":
        with store_of(cache).write() as conn:
            conn.execute("DELETE FROM files WHERE path = ?", (os.fsencode(one),))
    elif change == "age":
        emu.advance(days=27)
    elif change == "rename":
        one.rename(root / "d1" / "g03.png")
    expected = judged_one_by_one(cache, root)
    assert expected[1]  # the change shows one by one...
    assert reported(cache, root) == expected  # ...and in the report
    assert reported(cache, root) == expected  # and again, with the marks now written


def test_writes_that_can_void_a_mark_bump_the_generation(make_cache, tmp_path):
    cache = make_cache(racy_window=0.0)
    (a, b) = tree(cache, tmp_path / "t", folders=1, files=2)[:2]
    store = store_of(cache)
    row = next(iter(store.select_assets()))
    key = row.key

    def gen() -> int:
        return _scan._generation(store.read)

    before = gen()
    store.touch(key, row.last_used_at + 10)  # a use: only fresher
    assert cache.resolve(a).outcome == "hit"  # a hit writes nothing
    assert gen() == before
    store.put_assets([row])  # replaced by an older copy of itself
    assert gen() == before + 1
    store.expire_asset(key, 0.0)  # moved back
    assert gen() == before + 2
    store.delete_assets([key])
    assert gen() == before + 3
    b.write_bytes(make_png(4242))
    cache.resolve(b)  # hashed and uploaded: a new file row
    assert gen() > before + 3


def pairs(run):
    """A tile's ``(path, sig)`` pairs, packed (a folder without folders) or not."""
    return _scan._unpacked(*run) if isinstance(run, tuple) else run


def test_tiles_cover_the_range_without_gaps(make_cache, tmp_path):
    root = tmp_path / "w"
    for rel in ["a.png", "b/c.png", "b/e/f.png", "b.png", "c/g.png", "z.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    prefix = os.fsencode(root) + b"/"
    end = prefix[:-1] + b"0"
    for lo, hi in [(prefix, end), (prefix + b"b/d", prefix + b"c/"), (prefix + b"b.png", end)]:
        tiles = list(_scan._tiles(prefix, lo, hi))
        assert tiles[0][0] == lo and tiles[-1][1] == hi
        # No gap, no overlap: each tile starts where the one before ends.
        assert all(t[1] == u[0] for t, u in zip(tiles, tiles[1:], strict=False))
        keys = [k for _, _, run in tiles for k, _ in pairs(run)]
        assert keys == sorted(keys) and all(lo <= k < hi for k in keys)
        assert all(t_lo <= k < t_hi for t_lo, t_hi, run in tiles for k, _ in pairs(run))
    whole = [
        os.path.relpath(os.fsdecode(k), root)
        for _, _, r in _scan._tiles(prefix, prefix, end)
        for k, _ in pairs(r)
    ]
    assert whole == ["a.png", "b.png", "b/c.png", "b/e/f.png", "c/g.png", "z.png"]


@only_with_the_python_listing
def test_a_helper_process_shares_a_report(make_cache, tmp_path, monkeypatch, listing):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "big"
    big_folder(cache, root)
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10**9)
    alone = reported(cache, root)
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    started = []
    real_start = _scan._Helper.start.__func__

    def start(cls, *args):
        started.append(real_start(cls, *args))
        return started[-1]

    monkeypatch.setattr(_scan._Helper, "start", classmethod(start))
    assert reported(cache, root) == alone  # split on a count of the rows
    assert reported(cache, root) == alone  # split on the marks the first report wrote
    assert len(started) == 2 and all(h is not None and h.proc.returncode == 0 for h in started)
    assert alone[0]["missing"] == alone[0]["changed"] == alone[0]["new"] == 1


def test_a_report_judges_racily_clean_files_by_content(make_cache, tmp_path, monkeypatch):
    cache = make_cache(racy_window=10**9)  # every entry stays racily clean
    paths = tree(cache, tmp_path / "r", folders=1, files=3)
    assert cache.status_report([str(tmp_path / "r")]).all_fresh
    assert store_of(cache).read("SELECT count(*) FROM scan_marks WHERE files > 0")[0][0] == 0
    monkeypatch.setattr(_hashing, "hash_file", lambda p: ("0" * 32, 0))
    report = cache.status_report([str(tmp_path / "r")])
    assert report.counts["changed"] == len(paths) and report.counts["fresh"] == 0


def test_a_report_goes_on_when_it_cannot_remember(make_cache, tmp_path):
    cache = make_cache(racy_window=0.0)
    paths = tree(cache, tmp_path / "t", folders=1, files=2)
    with store_of(cache).write() as conn:
        conn.execute(  # saving marks now fails in SQLite, as on a full disk
            "CREATE TRIGGER refuse BEFORE INSERT ON scan_marks "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    with pytest.raises(_store.StoreError, match="disk is full"):
        store_of(cache).save_scan_marks("ns", "", 0, [(b"a", b"b", b"d", 0.0, 1)])
    report = cache.status_report([str(tmp_path / "t")])
    assert report.all_fresh and report.total == len(paths)
    assert store_of(cache).read("SELECT count(*) FROM scan_marks")[0][0] == 0


# -- the C listing --------------------------------------------------------------------


@pytest.mark.parametrize("listing", ["c"], indirect=True)  # compares the two: run once
def test_the_c_listing_equals_the_python_one(tmp_path, monkeypatch, listing):
    root = os.fsencode(tmp_path / "mixed") + b"/"
    os.makedirs(root + b"b/c")
    os.mkdir(root + b"empty")
    for name in (b"b.png", b"b0.png", b"a", b"caf\xe9.png", b"\xff\xfe"):
        with open(root + name, "wb") as f:
            f.write(name)
    os.utime(root + b"a", ns=(-5_000_000_001, -5_000_000_001))  # before 1970
    os.symlink(root + b"b.png", root + b"link.png")
    os.symlink(root + b"b", root + b"linked-folder")
    os.symlink(root + b"nowhere", root + b"dangling.png")
    os.mkfifo(root + b"pipe")
    end = root[:-1] + b"0"
    for prefix in (root, root + b"b/", root + b"empty/", root + b"gone/", root + b"a/"):
        c = _walk.listing(prefix)
        monkeypatch.setattr(_scan, "_c_listing", None)
        python = _scan._listing(prefix, root, end)
        monkeypatch.undo()
        assert c == python, prefix
    files = [(key, sig) for key, sig in _walk.listing(root)[0] if sig is not None]
    assert _walk.joined(files) == _scan._joined_py(files) and _walk.joined([]) == b""
    # Packed: a folder without folders comes as its joined files and their
    # number, which unpack to its listing; a folder with folders as before.
    assert _walk.listing(root, True) == _walk.listing(root)
    for prefix in (root + b"b/c/", root + b"empty/"):
        os.makedirs(prefix, exist_ok=True)
        for name in (b"x.png", b"y\xe9.png", b"z"):
            with open(prefix + name, "wb") as f:
                f.write(name * 3)
        (packed, count), folders = _walk.listing(prefix, True)
        listed, _ = _walk.listing(prefix)
        assert not folders and count == len(listed) == 3
        assert packed == _scan._joined_py(listed) and _scan._unpacked(packed, count) == listed
    assert _walk.listing(root + b"gone/", True) == ([], False)
    names = [key[len(root) :] for key, _ in _walk.listing(root)[0]]
    assert names == [b"a", b"b.png", b"b/", b"b0.png", b"caf\xe9.png", b"empty/", b"link.png"] + [
        b"\xff\xfe"
    ]


# -- listing threads (with the C listing) ------------------------------------------------


#: Listing threads serve the C listing.
only_with_the_c_listing = pytest.mark.parametrize("listing", ["c"], indirect=True)


def deep_folder(cache, root: Path) -> None:
    """Files at several depths, folders named so that depth-first is not name order
    of the folders alone ("b" holds deeper files than "b.png" and "b0")."""
    rels = ["a.png", "b.png", "b/c.png", "b/x/y/z.png", "b/x/w.png", "b0/q.png", "c/d/e.png"]
    rels += [f"m/{i:02d}/f{j}.png" for i in range(12) for j in range(3)]
    for i, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_png(2000 + i))
    (root / "empty" / "deeper").mkdir(parents=True)
    assert all(r.ok for r in cache.resolve_many(sorted(str(p) for p in root.rglob("*.png"))))
    (root / "b" / "x" / "w.png").unlink()  # missing
    (root / "m" / "05" / "f1.png").write_bytes(make_png(9000))  # changed
    (root / "m" / "11" / "new.png").write_bytes(make_png(9001))  # new


@only_with_the_c_listing
@pytest.mark.parametrize("ahead", [65_536, 0])
def test_listing_threads_give_what_one_walk_gives(
    make_cache, tmp_path, monkeypatch, listing, ahead
):
    """``ahead=0``: the threads stop after each listing, so the walk lists most
    folders itself while they wait; the results are the same either way."""
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "deep"
    deep_folder(cache, root)
    monkeypatch.setattr(_scan._Lister, "usable", staticmethod(lambda: False))
    monkeypatch.setattr(_scan, "PARALLEL_MIN", 10**9)
    alone = list(cache.status([str(root)]))
    alone_report = cache.status_report([str(root)])
    monkeypatch.undo()
    monkeypatch.setattr(_scan, "AHEAD_ENTRIES", ahead)
    monkeypatch.setattr(_scan.os, "cpu_count", lambda: 2)
    threaded = list(cache.status([str(root)]))
    assert fields(threaded) == fields(alone)
    assert {s.state for s in threaded} == {"fresh", "missing", "changed", "new"}
    for _ in range(2):  # the second one from the remembered ranges
        report = cache.status_report([str(root)])
        assert report.counts == alone_report.counts
        assert fields(report.files) == fields(alone_report.files)
    assert not [t for t in threading.enumerate() if t.name == "assetcache-list"]


@only_with_the_c_listing
def test_stopping_early_ends_the_listing_threads(make_cache, tmp_path, listing):
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "deep"
    deep_folder(cache, root)
    found = cache.status([str(root)])
    next(found)
    assert [t for t in threading.enumerate() if t.name == "assetcache-list"]
    found.close()
    assert not [t for t in threading.enumerate() if t.name == "assetcache-list"]


@only_with_the_c_listing
def test_a_listing_begun_before_the_cache_opens_is_taken_or_ended(make_cache, tmp_path, listing):
    """``prestart(folder)`` (the CLI calls it first) begins the walk; the scan of
    that folder takes it over, and ``discard_prestarted`` ends one no scan took."""
    cache = make_cache(racy_window=0.0)
    root = tmp_path / "deep"
    deep_folder(cache, root)
    expected = fields(cache.status([str(root)]))
    _scan.prestart(str(root))
    assert fields(cache.status([str(root)])) == expected
    assert not [t for t in threading.enumerate() if t.name == "assetcache-list"]
    _scan.prestart(str(root))
    _scan.discard_prestarted()
    assert not [t for t in threading.enumerate() if t.name == "assetcache-list"]
