"""The fleet when PostgreSQL blips, stalls, is partitioned or loses a host.

Every case puts a fault proxy of its own (``tests/pgproxy.py``) between the
workers and a real PostgreSQL server, and runs simulated hosts (distinct
``host_id``, each its own local SQLite file). Needs ``ASSETCACHE_TEST_POSTGRES``
(``.ci/run`` sets it); each test has a schema of its own, and only backends
this test opened (matched by ``application_name``) are ever terminated.

The big cases run once here; ``scripts/fleet_faults.py`` runs them in loops.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, make_png
from pgproxy import FaultProxy

from assetcache import AssetCache, StoreError

PG = os.environ.get("ASSETCACHE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not PG,
    reason="no PostgreSQL: set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test "
    "to run the fleet fault tests (.ci/run sets it when a local server is running)",
)


def _with_params(url: str, **params: object) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


class Schema:
    """A schema of this test's own, and the backends it opened."""

    def __init__(self) -> None:
        self.name = "tf_" + uuid.uuid4().hex[:12]
        self.app = f"assetcache-{self.name}"
        assert PG is not None
        self.url = _with_params(
            PG, options=f"-csearch_path%3D{self.name}", application_name=self.app
        )

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        assert PG is not None
        with psycopg.connect(PG, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def terminate(self, like: str | None = None, conn=None) -> int:
        """``pg_terminate_backend`` on this test's backends (whose query matches ``like``)."""
        import psycopg

        where = "application_name = %s AND pid <> pg_backend_pid()"
        params: tuple = (self.app,)
        if like is not None:
            where += " AND query ILIKE %s AND state IN ('active', 'idle in transaction')"
            params += (like,)
        sql = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}"
        if conn is None:
            assert PG is not None
            with psycopg.connect(PG, autocommit=True) as own:
                rows = own.execute(sql, params).fetchall()
        else:
            rows = conn.execute(sql, params).fetchall()
        return sum(1 for (ok,) in rows if ok)


@pytest.fixture
def schema():
    s = Schema()
    s.sql(f"CREATE SCHEMA {s.name}")
    yield s
    s.terminate()
    s.sql(f"DROP SCHEMA {s.name} CASCADE")


@pytest.fixture
def proxy():
    assert PG is not None
    parts = urlsplit(PG)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as p:
        yield p


WORKER = r"""
import json, random, sys, time
from assetcache import AssetCache, RetryPolicy
url, pg, local, host, key, seed = sys.argv[1:7]
files = json.loads(sys.stdin.readline())
random.Random(int(seed)).shuffle(files)
with AssetCache(key, base_url=url, db_path=pg, local_db=local, host_id=host, batch_size=8,
                concurrency=4, retry=RetryPolicy(base_delay=0.001, max_delay=0.01)) as cache:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(0, len(files), 16):
        results = cache.resolve_many(files[i:i + 16], concurrency=4)
        print(json.dumps({"t": time.time(), "done": [
            [r.source, r.uuid, None if r.error is None else str(r.error)] for r in results
        ]}), flush=True)
print(json.dumps({"t": time.time(), "end": True}), flush=True)
"""


class Fleet:
    """``hosts`` x ``workers`` processes resolving the same files, each in its own order."""

    def __init__(self, emu, url: str, tmp: Path, files: list[str], hosts: int, workers: int):
        self.files = files
        self.procs: list[subprocess.Popen] = []
        self.lines: list[list[dict]] = []
        self.errors: list[str] = []
        for h in range(hosts):
            for w in range(workers):
                p = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER,
                        emu.base_url,
                        url,
                        str(tmp / f"host{h}.db"),
                        f"fault-host-{h}",
                        API_KEY,
                        str(h * 100 + w),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                self.procs.append(p)
                self.lines.append([])
        for p in self.procs:
            p.stdin.write(json.dumps(files) + "\n")
            p.stdin.flush()
        for p in self.procs:
            line = p.stdout.readline().strip()
            assert line == "ready", p.stderr.read()
        self.readers = [
            threading.Thread(target=self._read, args=(i,), daemon=True)
            for i in range(len(self.procs))
        ]

    def _read(self, i: int) -> None:
        for line in self.procs[i].stdout:
            self.lines[i].append(json.loads(line))

    def go(self) -> None:
        for t in self.readers:
            t.start()
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def wait(self, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        for p, t in zip(self.procs, self.readers, strict=True):
            t.join(max(0.1, end - time.monotonic()))
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
            err = p.stderr.read()
            if p.returncode != 0:
                self.errors.append(err[-3000:])

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(30)

    def finished(self, i: int) -> float | None:
        ends = [line["t"] for line in self.lines[i] if line.get("end")]
        return ends[0] if ends else None

    def progressed(self, i: int, since: float, until: float) -> bool:
        return any(since <= line["t"] <= until for line in self.lines[i])

    def served(self) -> list[tuple[str, str | None, str | None]]:
        return [tuple(d) for lines in self.lines for line in lines for d in line.get("done", [])]


def _images(tmp: Path, n: int) -> tuple[list[str], dict[str, str]]:
    folder = tmp / "images"
    folder.mkdir()
    files, digests = [], {}
    for i in range(n):
        path = folder / f"img{i:04d}.png"
        data = make_png(90_000 + i)
        path.write_bytes(data)
        files.append(str(path))
        digests[str(path)] = hashlib.sha256(data).hexdigest()
    return files, digests


def run_fault(
    emu,
    schema: Schema,
    proxy: FaultProxy,
    tmp: Path,
    fault: str,
    *,
    images: int = 500,
    hosts: int = 4,
    workers: int = 4,
) -> dict:
    """One run of the fleet through ``fault``; asserts the promises and returns the numbers."""
    files, digests = _images(tmp, images)
    emu.set_latency(0.02)
    url = proxy.url(schema.url)
    url = _with_params(url, pool_size=2)
    fleet = Fleet(emu, url, tmp, files, hosts, workers)
    terminated = 0
    back = None
    back_emu = 0.0
    try:
        fleet.go()
        # Strike once the fleet is busy uploading.
        end = time.monotonic() + 120
        while emu.upload_count < images // 5 and time.monotonic() < end:
            time.sleep(0.01)
        if fault.startswith("cut"):
            seconds = float(fault[3:])
            proxy.cut()
            time.sleep(seconds)
            proxy.restore()
            back = time.time()
            back_emu = emu.clock()
        elif fault.startswith("terminate-"):
            import psycopg

            # Claims take advisory locks and write leases; records write assets.
            like = {
                "terminate-claim": "%assetcache_leases%",
                "terminate-record": "%INSERT INTO assetcache_assets%",
            }[fault]
            stop = time.monotonic() + 3.0
            with psycopg.connect(PG, autocommit=True) as conn:
                while time.monotonic() < stop:
                    terminated += schema.terminate(like, conn)
            back = time.time()
            back_emu = emu.clock()
        else:
            raise ValueError(fault)
        fleet.wait()
    finally:
        fleet.kill()
        proxy.restore()
    assert not fleet.errors, fleet.errors[0]
    served = fleet.served()
    failed = [s for s in served if s[2] is not None]
    by_sha = emu.uploads_by_sha256()
    twice = {h: n for h, n in by_sha.items() if n > 1}
    wrong = [
        s
        for s in served
        if s[1] is None or (img := emu.image(s[1])) is None or img.sha256 != digests[s[0]]
    ]
    stalled = [
        i
        for i in range(len(fleet.procs))
        if back is not None
        and ((fin := fleet.finished(i)) is None or fin > back + 5)
        and not fleet.progressed(i, back, back + 5)
    ]
    # When a content was uploaded twice: when, relative to the fault's end.
    twice_at = [
        sorted(round(img.uploaded_at - back_emu, 2) for img in emu.images() if img.sha256 == h)
        for h in twice
    ]
    report = {
        "fault": fault,
        "uploads": emu.upload_count,
        "twice": len(twice),
        "failed": len(failed),
        "wrong": len(wrong),
        "stalled": len(stalled),
        "terminated": terminated,
        "served": len(served),
        "twice_at": twice_at[:5],
    }
    assert len(served) == images * hosts * workers, report
    assert failed == [], (report, failed[:3])
    assert twice == {}, report
    assert set(by_sha) == set(digests.values()), report
    assert wrong == [], (report, wrong[:3])
    assert stalled == [], report
    if fault.startswith("terminate-"):
        assert terminated > 0, "the fault never struck: nothing was terminated"
    return report


# Whole outages of 3-8 s against 16 workers: run once per CI run (the README's
# test command), not again in the stress rounds, where two suites at once
# stretch every outage. scripts/fleet_faults.py --runs 10 is their soak.
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut3", "cut8", "terminate-claim", "terminate-record"])
def test_fleet_survives(emu, schema, proxy, tmp_path, fault):
    """4 hosts x 4 workers, 500 images: no double upload, nothing lost, no stall."""
    report = run_fault(emu, schema, proxy, tmp_path, fault)
    print(json.dumps(report))


# -- single-process cases ---------------------------------------------------------------------


def host(emu, url: str, tmp: Path, name: str, **kw) -> AssetCache:
    kw.setdefault("retry", FAST_RETRY)
    return AssetCache(
        API_KEY,
        base_url=emu.base_url,
        db_path=url,
        local_db=tmp / f"{name}.db",
        clock=emu.clock,
        host_id=name,
        **kw,
    )


def test_a_touch_due_hit_under_a_stalled_server_is_answered_locally(emu, schema, proxy, tmp_path):
    path = tmp_path / "p.png"
    path.write_bytes(make_png(11))
    url = proxy.url(schema.url)
    # Serving counts as a use only when the caller says so (evidence, issue 14).
    with host(
        emu, url, tmp_path, "a", racy_window=0, touch_every=3600, served_is_used=True
    ) as cache:
        first = cache.get_uuid(path)
        emu.advance(hours=2)  # the stored use is two hours old: this hit must record one
        proxy.pause()
        sent_before = proxy.forwarded
        assert cache.get_uuid(path) == first
        res = cache.resolve(make_png(11))  # bytes: hashed, then the local copy
        assert res.outcome == "hit"
        # Answered while the server was stalled: nothing the caller did reached it ...
        assert proxy.forwarded == sent_before
        used_at = emu.clock()
        proxy.restore()
        # ... and the use went out in the background once it could.
        digest = res.content_hash
        end = time.monotonic() + 30
        while time.monotonic() < end:
            rows = schema.sql(
                f"SELECT last_used_at FROM {schema.name}.assetcache_assets WHERE content_hash = %s",
                (digest,),
            )
            if rows and rows[0][0] >= used_at - 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the use never reached the shared store")


def test_a_twenty_second_blackhole(emu, schema, proxy, tmp_path):
    """Short deadlines: no single operation waits past its deadline; nothing is lost."""
    from assetcache._storage._postgres import FleetSettings, PostgresRegistry

    url = _with_params(
        proxy.url(schema.url), statement_timeout=0.5, connect_timeout=2, retry_for=40
    )
    probe_url = _with_params(
        proxy.url(schema.url), statement_timeout=0.5, connect_timeout=2, retry_for=0
    )
    deadline = FleetSettings.from_url(url)[0].deadline
    probe = PostgresRegistry(probe_url)
    paths = []
    for i in range(6):
        p = tmp_path / f"b{i}.png"
        p.write_bytes(make_png(300 + i))
        paths.append(p)
    with host(emu, url, tmp_path, "a", racy_window=0) as a, host(emu, url, tmp_path, "b") as b:
        known = a.get_uuid(paths[0])
        proxy.blackhole()
        cut_at = time.monotonic()
        # One attempt at the server ends at its deadline, with a clear error.
        waits = []
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="shared store"):
                probe.get_assets([("ns", "0" * 32, "")])
            waits.append(time.monotonic() - t0)
        assert max(waits) < deadline + 1.5, (waits, deadline)
        # A hit proven locally does not notice.
        assert a.get_uuid(paths[0]) == known
        # Work started during the partition waits (retried) and lands when it heals.
        results: dict[str, list] = {}

        def work(name: str, cache: AssetCache) -> None:
            t0 = time.monotonic()
            results[name] = [cache.resolve_many(paths[1:]), time.monotonic() - t0]

        threads = [threading.Thread(target=work, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        time.sleep(max(0.0, 20 - (time.monotonic() - cut_at)))
        proxy.restore()
        for t in threads:
            t.join(60)
    probe.close()
    for name, (res, took) in results.items():
        assert [r.error for r in res if r.error] == [], name
        assert all(emu.holds(r.uuid) for r in res)
        assert took < 40 + deadline, (name, took)
    assert emu.upload_count == 1 + 5
    assert {r.uuid for r in results["a"][0]} == {r.uuid for r in results["b"][0]}


KILLABLE = r"""
import sys
from assetcache import AssetCache
url, pg, local, key = sys.argv[1:5]
files = sys.argv[5:]
with AssetCache(key, base_url=url, db_path=pg, local_db=local, host_id="doomed") as cache:
    cache.resolve_many(files)
"""


def test_a_killed_host_s_leases_are_taken_over_within_three_heartbeats(emu, schema, tmp_path):
    from assetcache._storage._postgres import FleetSettings

    settings = FleetSettings()
    print(f"default heartbeat {settings.heartbeat} s, takeover after {settings.stale_after} s")
    files = []
    for i in range(4):
        p = tmp_path / f"k{i}.png"
        p.write_bytes(make_png(400 + i))
        files.append(str(p))
    emu.set_latency(120)  # the doomed host's upload never answers
    doomed = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, emu.base_url, schema.url, str(tmp_path / "d.db"), API_KEY]
        + files,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 60
        leases: list = []
        while time.monotonic() < end and len(leases) < len(files):
            try:
                leases = schema.sql(
                    f"SELECT owner FROM {schema.name}.assetcache_leases "
                    "WHERE owner LIKE 'doomed:%%'"
                )
            except Exception:  # the doomed host has not created the tables yet
                leases = []
            time.sleep(0.05)
        assert len(leases) == len(files), "the doomed host never took its leases"
        with host(emu, schema.url, tmp_path, "heir") as heir:
            waiting = {}
            t = threading.Thread(target=lambda: waiting.update(r=heir.resolve_many(files)))
            t.start()
            time.sleep(0.5)  # the heir is polling the held keys now
            doomed.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            doomed.wait(10)
            emu.set_latency(0)  # the heir's uploads answer at once (the doomed one never does)
            taken = None
            while time.monotonic() < killed + 30:
                owners = schema.sql(
                    f"SELECT owner FROM {schema.name}.assetcache_leases "
                    "UNION ALL SELECT 'done' FROM "
                    f"{schema.name}.assetcache_assets"
                )
                if not any(o.startswith("doomed:") for (o,) in owners):
                    taken = time.monotonic() - killed
                    break
                time.sleep(0.02)
            t.join(60)
        assert taken is not None, "nobody took the dead host's leases over"
        print(f"taken over {taken:.2f} s after the kill")
        assert taken <= 3 * settings.heartbeat, (taken, settings.heartbeat)
        assert [r.error for r in waiting["r"]] == [None] * len(files)
        # The heir uploaded them itself, after taking the leases over.
        assert [r.outcome for r in waiting["r"]] == ["uploaded"] * len(files)
        assert all(emu.holds(r.uuid) for r in waiting["r"])
    finally:
        if doomed.poll() is None:
            doomed.kill()


def test_counters_two_hosts_closing_at_once(emu, schema, tmp_path):
    """100 rounds: both hosts' counts land every time, and nothing deadlocks."""
    paths = []
    for i in range(3):
        p = tmp_path / f"c{i}.png"
        p.write_bytes(make_png(500 + i))
        paths.append(p)
    with host(emu, schema.url, tmp_path, "seed") as seed:
        seed.resolve_many(paths)
    rounds = 100
    for _ in range(rounds):
        caches = [
            host(emu, schema.url, tmp_path, "ca", racy_window=0),
            host(emu, schema.url, tmp_path, "cb", racy_window=0),
        ]
        caches[0].resolve_many(paths)  # 3 hits
        caches[1].resolve_many(paths[:2])  # 2 hits
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def close(c: AssetCache, barrier=barrier, errors=errors) -> None:
            barrier.wait(5)
            try:
                c.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=close, args=(c,)) for c in caches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
    total = schema.sql(
        f"SELECT sum(value) FROM {schema.name}.assetcache_counters WHERE name = 'hits'"
    )[0][0]
    assert total == rounds * 5


def test_host_ids_name_lease_owners(emu, schema, tmp_path, monkeypatch):
    monkeypatch.setenv("ASSETCACHE_HOST_ID", "from-env")
    emu.set_latency(0)
    with (
        host(emu, schema.url, tmp_path, "explicit") as a,
        AssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=schema.url,
            local_db=tmp_path / "env.db",
            clock=emu.clock,
        ) as b,
    ):
        assert a.settings()["host_id"] == "explicit"
        assert b.settings()["host_id"] == "from-env"


def test_a_newer_shared_schema_stops_a_running_host(emu, schema, tmp_path):
    url = _with_params(schema.url, heartbeat=0.1)
    with host(emu, url, tmp_path, "old") as cache:
        cache.resolve(make_png(600))
        schema.sql(f"UPDATE {schema.name}.assetcache_meta SET value = '99' WHERE key = 'schema'")
        end = time.monotonic() + 10
        seed = 601
        while time.monotonic() < end:
            seed += 1
            try:
                cache.resolve(make_png(seed))
            except StoreError as exc:
                error = exc
                break
            time.sleep(0.05)
        else:
            pytest.fail("the host kept going on a schema it does not know")
        assert "upgrade assetcache" in str(error)
        assert "SELECT" not in str(error)
