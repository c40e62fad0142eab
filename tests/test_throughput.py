"""Batching, concurrency and single flight (threads, coroutines, processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import FAST_RETRY
from helpers import API_KEY, engine_of, make_png, store_of

from assetcache import AssetCache, AsyncAssetCache, RejectedInput
from assetcache._storage._sqlite import SQLiteStore


def copies(folder: Path, data: bytes, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"copy-{i:02d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_resolve_many_keeps_order_and_carries_on(cache, emu, tmp_path):
    good = [make_png(i) for i in range(5)]
    sources = [good[0], tmp_path / "missing.png", good[1], b"not an image", good[2]]
    results = cache.resolve_many(sources)
    assert [r.outcome for r in results] == ["uploaded", "failed", "uploaded", "failed", "uploaded"]
    assert "missing.png" in str(results[1].error)
    assert results[1].uuid is None
    assert emu.upload_count == 3


def test_uploads_are_batched(make_cache, emu):
    cache = make_cache(batch_size=16)
    results = cache.resolve_many([make_png(i) for i in range(40)])
    assert all(r.outcome == "uploaded" for r in results)
    assert emu.upload_count == 40
    assert emu.request_count == 3  # 16 + 16 + 8


def test_batches_are_bounded_by_bytes(make_cache, emu):
    one = len(make_png(0, 30, 30)) * 4 // 3 + 100
    cache = make_cache(batch_size=100, batch_bytes=one * 3)
    cache.resolve_many([make_png(i, 30, 30) for i in range(9)])
    assert emu.request_count >= 3


def test_a_batch_with_rejected_images_caches_the_rest(cache, emu):
    images = [make_png(i) for i in range(20)]
    emu.reject(images[3], images[11])
    results = cache.resolve_many(images)
    failed = [i for i, r in enumerate(results) if r.error]
    assert failed == [3, 11]
    for i in failed:
        assert isinstance(results[i].error, RejectedInput)
        assert results[i].error.code == "invalidImage"
        assert "could not be decoded" in str(results[i].error)
    assert emu.upload_count == 18
    assert store_of(cache).read("SELECT COUNT(*) FROM assets")[0][0] == 18
    assert all(cache.resolve(images[i]).outcome == "hit" for i in range(20) if i not in failed)


def test_fifty_coroutines_one_upload(emu, tmp_path):
    emu.set_latency(0.05)
    data = make_png(7)
    paths = copies(tmp_path, data, 25)

    async def main():
        async with AsyncAssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=tmp_path / "c.db",
            clock=emu.clock,
            retry=FAST_RETRY,
        ) as cache:
            return await asyncio.gather(
                *[cache.resolve(p) for p in paths], *[cache.resolve(data) for _ in range(25)]
            )

    results = asyncio.run(main())
    assert emu.upload_count == 1
    assert len({r.uuid for r in results}) == 1
    assert sorted(r.outcome for r in results).count("uploaded") == 1


def test_eight_threads_one_upload(make_cache, emu, tmp_path):
    emu.set_latency(0.05)
    cache = make_cache()
    paths = copies(tmp_path, make_png(8), 8)
    barrier = threading.Barrier(8)
    results = [None] * 8

    def work(i):
        barrier.wait()
        results[i] = cache.resolve(paths[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert emu.upload_count == 1
    assert len({r.uuid for r in results}) == 1


def test_threads_and_coroutines_of_two_caches_one_upload(emu, tmp_path):
    """Two cache objects on one database: only the lease row can stop the second upload."""
    emu.set_latency(0.1)
    data = make_png(9)
    db = tmp_path / "c.db"
    start = threading.Barrier(9)
    out: list = []

    def coroutines():
        async def main():
            async with AsyncAssetCache(
                API_KEY, base_url=emu.base_url, db_path=db, clock=emu.clock, retry=FAST_RETRY
            ) as cache:
                start.wait()
                out.extend(await asyncio.gather(*[cache.resolve(data) for _ in range(50)]))

        asyncio.run(main())

    with AssetCache(
        API_KEY, base_url=emu.base_url, db_path=db, clock=emu.clock, retry=FAST_RETRY
    ) as sync:

        def thread_work():
            start.wait()
            out.append(sync.resolve(data))

        threads = [threading.Thread(target=coroutines)] + [
            threading.Thread(target=thread_work) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(out) == 58
    assert emu.upload_count == 1
    assert len({r.uuid for r in out}) == 1


WORKER = """
import json, random, sys
from assetcache import AssetCache, RetryPolicy
url, db, key, seed = sys.argv[1:5]
files = json.loads(sys.stdin.readline())
random.Random(int(seed)).shuffle(files)
with AssetCache(key, base_url=url, db_path=db, batch_size=8,
                retry=RetryPolicy(base_delay=0.001, max_delay=0.01)) as cache:
    print("ready", flush=True)
    sys.stdin.readline()  # all workers start together
    results = cache.resolve_many(files, concurrency=4)
print(json.dumps({"failed": [str(r.error) for r in results if r.error],
                  "uploaded": sum(r.outcome == "uploaded" for r in results)}))
"""


def test_four_processes_two_hundred_files_two_hundred_uploads(emu, tmp_path):
    emu.set_latency(0.1)  # uploads outlast the start-up skew between workers
    files = []
    for i in range(200):
        path = tmp_path / f"f{i:03d}.png"
        path.write_bytes(make_png(1000 + i))
        files.append(str(path))
    db = str(tmp_path / "shared.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, emu.base_url, db, API_KEY, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for p in procs:
        p.stdin.write(json.dumps(files) + "\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    reports = []
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout))
    assert all(not r["failed"] for r in reports), reports
    assert emu.upload_count == 200
    assert sum(r["uploaded"] for r in reports) == 200
    assert max(emu.uploads_by_sha256().values()) == 1


CLAIMER = """
import sys, time
from assetcache._storage._base import owner_id
from assetcache._storage._sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
key = (sys.argv[2], sys.argv[3], "")
print(store.claim([key], owner_id(), float(sys.argv[4]), 3600.0, 0.0)[key], flush=True)
time.sleep(600)
"""


def test_a_killed_lease_owner_is_taken_over(make_cache, emu, tmp_path):
    cache = make_cache()
    data = make_png(10)
    digest = __import__("assetcache._hashing", fromlist=["x"]).hash_bytes(data)
    owner = subprocess.Popen(
        [sys.executable, "-c", CLAIMER, cache.db_path, cache.namespace, digest, str(emu.clock())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout.readline().strip() == "claimed"
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    # The lease is an hour from expiry on the (unmoving) clock: only noticing
    # that its owner died lets this finish.
    done = []
    worker = threading.Thread(target=lambda: done.append(cache.resolve(data)))
    worker.start()
    worker.join(20)
    assert done and done[0].outcome == "uploaded"
    assert emu.upload_count == 1


def test_a_lease_from_another_host_is_taken_over_after_it_expires(make_cache, emu, tmp_path):
    cache = make_cache(lease_ttl=60)
    data = make_png(11)
    digest = __import__("assetcache._hashing", fromlist=["x"]).hash_bytes(data)
    store = SQLiteStore(cache.db_path)
    assert store.claim(
        [(cache.namespace, digest, "")], "other-host:4242:beef", emu.clock(), 60, 0.0
    ) == {(cache.namespace, digest, ""): "claimed"}
    store.close()
    done = []
    worker = threading.Thread(target=lambda: done.append(cache.resolve(data)))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and emu.upload_count == 0  # waiting for the other host
    emu.advance(seconds=61)
    worker.join(20)
    assert done and done[0].outcome == "uploaded"
    assert emu.upload_count == 1


def spy_hashing_threads(cache, monkeypatch, meet: int = 0) -> set[int]:
    """The threads ``prepare`` (reading and hashing a file) runs on; with
    ``meet``, the first call on each thread waits (5 s at most) until that many
    threads are in it, so a fast thread cannot take every file alone."""
    seen: set[int] = set()
    real_prepare = engine_of(cache).prepare
    barrier = threading.Barrier(meet, timeout=5) if meet else None

    def spy(obj):
        me = threading.get_ident()
        first = me not in seen
        seen.add(me)
        if barrier is not None and first:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return real_prepare(obj)

    monkeypatch.setattr(engine_of(cache), "prepare", spy)
    return seen


def shuffled_pngs(tmp_path, n):
    files = []
    for i in range(n):
        p = tmp_path / f"h{i}.png"
        p.write_bytes(make_png(i, 64, 64))
        files.append(p)
    random.shuffle(files)
    return files


def test_hashing_uses_worker_threads(make_cache, emu, tmp_path, monkeypatch):
    # One request's worth of files: hashed on the cache's hashing threads.
    cache = make_cache(batch_size=64)
    seen = spy_hashing_threads(cache, monkeypatch, meet=2)
    monkeypatch.setattr(engine_of(cache), "hash_workers", 2)
    cache.resolve_many(shuffled_pngs(tmp_path, 40))
    assert len(seen) == 2 and threading.get_ident() not in seen


def test_a_big_batch_hashes_its_parts_side_by_side(make_cache, emu, tmp_path, monkeypatch):
    # Parts of one request each: every part hashes on its own thread (the parts
    # run side by side), never on the caller's, and every file is hashed once.
    cache = make_cache(batch_size=4, concurrency=4)
    seen = spy_hashing_threads(cache, monkeypatch)
    results = cache.resolve_many(shuffled_pngs(tmp_path, 40))
    assert [r.outcome for r in results] == ["uploaded"] * 40
    assert len(seen) > 1 and threading.get_ident() not in seen
    assert emu.upload_count == 40


def test_repeated_batches_do_not_pile_up_connections(make_cache, emu, tmp_path):
    cache = make_cache()

    def batch(round_):
        paths = []
        for i in range(8):
            path = tmp_path / f"r{round_}-{i}.png"
            path.write_bytes(make_png(100 * round_ + i))
            paths.append(path)
        return paths

    for round_ in range(6):
        cache.resolve_many(batch(round_))
    # This thread's connection plus one per hashing thread, however many calls.
    assert len(store_of(cache)._conns) <= 1 + engine_of(cache).hash_workers
