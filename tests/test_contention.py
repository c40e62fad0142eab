"""Contention: 8 processes resolving and listing against one database, 30+ s of
process time in all: no "database is locked" reaches a caller, no content is
uploaded twice.

All 8 start together on a database that does not exist yet (so they race to
create and migrate it). Each then loops for 4 s over a mix of operations on a
shared pool of contents, each under its own file paths: ``resolve_many``,
``resolve`` of bytes, ``status`` of its folder, ``entries`` and ``stats``. New
contents enter the pool every 0.2 s on a shared schedule, so the processes ask
for the same new content at about the same moment (the cross-process single
flight), and ``touch_every=0`` turns every hit into a write, so writers
collide all the time. Meanwhile this process runs the ``ls`` and ``stats``
commands against the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cli_support import script
from helpers import API_KEY, make_png

from assetcache.emulator import Emulator

PROCESSES = 8
SECONDS = 4.0
NEW_EVERY = 0.2
POOL = int(SECONDS / NEW_EVERY) + 2  # contents that may appear during the run

WORKER = r"""
import json, random, sys, time
from pathlib import Path
from assetcache import AssetCache, RetryPolicy

url, db, key, folder, me, seconds, every, pool = sys.argv[1:9]
seconds, every, pool, me = float(seconds), float(every), int(pool), int(me)
rng = random.Random(me)
paths = sorted(Path(folder).iterdir())
ops, errors, uuids = {}, [], {}
cache = AssetCache(key, base_url=url, db_path=db, touch_every=0,
                   retry=RetryPolicy(base_delay=0.001, max_delay=0.01))
print("ready", flush=True)
start = float(sys.stdin.readline())  # one wall-clock start for every process
time.sleep(max(0.0, start - time.time()))
began = time.perf_counter()

def note(op, results):
    ops[op] = ops.get(op, 0) + 1
    for r in results:
        if r.error is not None:
            errors.append(f"{op}: {r.source}: {type(r.error).__name__}: {r.error}")
        else:
            uuids.setdefault(r.content_hash, set()).add(r.uuid)

KINDS = ("resolve_many", "resolve_bytes", "status", "entries+stats")

def lacking():
    return [k for k in KINDS if not ops.get(k)]

try:
    # At least ``seconds``, and on a slow machine until each kind of operation
    # ran once (bounded), so the coverage never depends on the machine's speed.
    while (elapsed := time.perf_counter() - began) < seconds or (lacking() and elapsed < 120):
        # Contents 0..n are "published"; the newest are the ones everybody races for.
        n = min(pool, 1 + int(elapsed / every))
        newest = paths[max(0, n - 3):n]
        op = rng.random()
        if elapsed >= seconds:  # overtime: only what is still lacking
            op = {"resolve_many": 0.0, "resolve_bytes": 0.5, "status": 0.7}.get(lacking()[0], 0.9)
        if op < 0.45:
            batch = newest + rng.sample(paths[:n], min(n, 4))
            rng.shuffle(batch)
            note("resolve_many", cache.resolve_many(batch))
        elif op < 0.65:
            note("resolve_bytes", [cache.resolve(rng.choice(newest).read_bytes())])
        elif op < 0.8:
            ops["status"] = ops.get("status", 0) + 1
            states = [s.state for s in cache.status([folder])]
            assert len(states) == len(paths), states
        else:
            ops["entries+stats"] = ops.get("entries+stats", 0) + 1
            listed = list(cache.entries())
            stats = cache.stats()
            assert stats.entries == len(listed) or stats.entries >= len(listed), stats
    cache.close()
except Exception as exc:  # anything escaping is a failure the test reports
    errors.append(f"raised {type(exc).__name__}: {exc}")
print(json.dumps({"ops": ops, "errors": errors, "seconds": time.perf_counter() - began,
                  "uuids": {h: sorted(u) for h, u in uuids.items()}}))
"""


def cli(*args: str, db: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
    return subprocess.run(
        [script(), "--db", str(db), "--api-url", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_eight_processes_for_thirty_seconds_in_all(tmp_path):
    pool = [make_png(90_000 + i, 16, 16) for i in range(POOL)]
    folders = []
    for p in range(PROCESSES):
        folder = tmp_path / f"proc-{p}"
        folder.mkdir()
        for i, data in enumerate(pool):
            (folder / f"c{i:03d}.png").write_bytes(data)
        folders.append(folder)
    db = tmp_path / "shared" / "cache.db"  # neither the file nor its folder exists yet

    with Emulator(api_key=API_KEY, latency=0.02) as emu:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    emu.base_url,
                    str(db),
                    API_KEY,
                    str(folders[p]),
                    str(p),
                    str(SECONDS),
                    str(NEW_EVERY),
                    str(POOL),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in range(PROCESSES)
        ]
        # Each opens the database (the first ones create and migrate it) before "ready".
        for proc in procs:
            line = proc.stdout.readline().strip()
            assert line == "ready", proc.communicate(timeout=30)
        start = time.time() + 0.2
        for proc in procs:
            proc.stdin.write(f"{start}\n")
            proc.stdin.flush()
        listings = []
        time.sleep(max(0.0, start - time.time()) + 1.0)
        while time.time() < start + SECONDS - 0.5:
            listings.append(cli("ls", "--json", db=db, url=emu.base_url))
            listings.append(cli("stats", "--json", db=db, url=emu.base_url))
        outs = [proc.communicate(timeout=240) for proc in procs]

        reports = []
        for proc, (stdout, stderr) in zip(procs, outs, strict=True):
            assert proc.returncode == 0, stderr[-3000:]
            assert "locked" not in stdout + stderr
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
        for done in listings:
            assert done.returncode == 0, done.stderr
            assert "locked" not in done.stdout + done.stderr
            json.loads(done.stdout)

        errors = [e for r in reports for e in r["errors"]]
        assert errors == []
        total_seconds = sum(r["seconds"] for r in reports)
        assert total_seconds >= 30.0
        ops: Counter[str] = Counter()
        for r in reports:
            ops.update(r["ops"])
        assert (
            min(ops[k] for k in ("resolve_many", "resolve_bytes", "status", "entries+stats"))
            >= PROCESSES
        )

        # One upload per content, and every process got the same UUID for it.
        uploads = emu.uploads_by_sha256()
        assert max(uploads.values()) == 1, [n for n in uploads.values() if n > 1]
        seen: dict[str, set[str]] = {}
        for r in reports:
            for digest, uuids in r["uuids"].items():
                seen.setdefault(digest, set()).update(uuids)
        assert all(len(u) == 1 for u in seen.values())
        assert emu.upload_count == len(seen)
        assert all(emu.holds(next(iter(u))) for u in seen.values())
    print(
        f"\n{PROCESSES} processes, {total_seconds:.1f} s in all, ops {dict(ops)}, "
        f"{len(listings)} CLI listings, {emu.upload_count} uploads of {len(seen)} contents"
    )


OPENER = r"""
import sys, time
from assetcache._storage._sqlite import SQLiteStore
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    store = SQLiteStore(sys.argv[1])
    store.read("SELECT COUNT(*) FROM assets")
    store.close()
    print("ok")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_processes_creating_one_database_at_the_same_instant(tmp_path):
    """The first open of a new file switches it to WAL, which SQLite does not
    wait for: 8 processes doing it in the same millisecond must all succeed."""
    failures = []
    for attempt in range(8):
        db = tmp_path / f"round-{attempt}" / "cache.db"
        start = time.time() + 0.4  # every process imported and waiting by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(db), str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(PROCESSES)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            if out.strip() != "ok":
                failures.append(out.strip() or err[-500:])
    assert failures == []


def test_threads_writing_one_file_queue_for_it_within_a_bound(tmp_path, monkeypatch):
    # Two stores of one file in this process share its writer lock: a second
    # writer waits while the first holds a transaction, then gets it at once;
    # a writer kept out past the bound gets one clear error, not a hang.
    import threading

    from assetcache._errors import StoreError
    from assetcache._storage import _sqlite

    a = _sqlite.SQLiteStore(tmp_path / "w.db")
    b = _sqlite.SQLiteStore(tmp_path / "w.db")
    order: list[str] = []
    inside = threading.Event()
    leave = threading.Event()

    def first() -> None:
        with a.write():
            order.append("a in")
            inside.set()
            leave.wait(10)
            order.append("a out")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)

    def second() -> None:
        with b.write():
            order.append("b in")

    u = threading.Thread(target=second)
    u.start()
    u.join(0.2)
    assert order == ["a in"]  # still waiting
    leave.set()
    t.join(10)
    u.join(10)
    assert order == ["a in", "a out", "b in"]

    monkeypatch.setattr(_sqlite, "WRITE_WAIT", 0.05)
    inside.clear()
    leave.clear()
    order.clear()
    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(StoreError) as info, b.write("record uploads"):
            pass
    finally:
        leave.set()
        t.join(10)
    assert "stayed locked by another writer" in str(info.value)
    assert "record uploads" in str(info.value) and str(tmp_path / "w.db") in str(info.value)
    a.close()
    b.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_is_not_held_by_the_parents_writer_lock(tmp_path):
    # A fork while another thread of the parent is inside a write: that thread
    # does not exist in the child, so the child's writer locks start free
    # (else its first write would wait out the bound, then fail).
    import threading

    from assetcache._storage import _sqlite

    store = _sqlite.SQLiteStore(tmp_path / "f.db")
    key = os.path.realpath(tmp_path / "f.db")
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.write():
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        assert not _sqlite._writer_lock(key).acquire(timeout=0)  # held here
        pid = os.fork()
        if pid == 0:  # the child: the lock is free, and a fresh one
            os._exit(0 if _sqlite._writer_lock(key).acquire(timeout=1) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        leave.set()
        holder.join(10)
        store.close()
    assert os.waitstatus_to_exitcode(status) == 0
