"""A fleet sharing one registry on a real PostgreSQL server.

Needs ``ASSETCACHE_TEST_POSTGRES`` (``.ci/run`` sets it when a server is up);
each test gets a schema of its own. No mock stands in for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, engine_of, make_png, use_on_server

from assetcache import AssetCache, ConfigurationError, StoreError

PG = os.environ.get("ASSETCACHE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not PG,
    reason="no PostgreSQL: set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test "
    "to run the fleet tests (.ci/run sets it when a local server is running)",
)


def with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url():
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_schema(PG, schema)
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def host(emu, pg_url, tmp_path, name, **kw):
    kw.setdefault("retry", FAST_RETRY)
    return AssetCache(
        API_KEY,
        base_url=emu.base_url,
        db_path=pg_url,
        local_db=tmp_path / f"{name}.db",
        clock=emu.clock,
        **kw,
    )


def test_hosts_share_uploads(emu, pg_url, tmp_path):
    data = make_png(1)
    with host(emu, pg_url, tmp_path, "a") as a, host(emu, pg_url, tmp_path, "b") as b:
        first = a.resolve(data)
        second = b.resolve(data)
    assert (first.outcome, second.outcome) == ("uploaded", "hit")
    assert first.uuid == second.uuid
    assert emu.upload_count == 1


def test_hits_are_answered_locally(emu, pg_url, tmp_path, monkeypatch):
    path = tmp_path / "p.png"
    path.write_bytes(make_png(2))
    with host(emu, pg_url, tmp_path, "a", racy_window=0) as a:
        uuid_ = a.get_uuid(path)
        shared = engine_of(a).registry.shared

        def no_round_trip(*args, **kwargs):
            raise AssertionError("a warm hit asked the shared store")

        monkeypatch.setattr(shared, "read", no_round_trip)
        monkeypatch.setattr(shared, "write", no_round_trip)
        monkeypatch.setattr(shared, "_conn", no_round_trip)  # every query goes through it
        assert a.get_uuid(path) == uuid_
        assert a.get_uuid(make_png(2)) == uuid_  # bytes: hashed, then the local copy
        monkeypatch.undo()  # closing flushes counters to the fleet, as it should


def test_a_use_on_one_host_slides_the_window_for_another(emu, pg_url, tmp_path):
    data = make_png(3)
    with (
        host(emu, pg_url, tmp_path, "a", touch_every=0) as a,
        host(emu, pg_url, tmp_path, "b", touch_every=0) as b,
    ):
        uuid_ = a.get_uuid(data)
        assert b.get_uuid(data) == uuid_  # b's local copy now says: last used day 0
        emu.advance(days=20)
        assert a.get_uuid(data) == uuid_  # served on host A at day 20, used in a task ...
        use_on_server(emu.base_url, uuid_)
        assert a.touch(uuid_) is not None  # ... and that use recorded: evidence for the fleet
        emu.advance(days=15)  # day 35: b's own copy is stale, the fleet's is not
        res = b.resolve(data)
    assert res.outcome == "hit"
    assert res.uuid == uuid_
    assert emu.upload_count == 1


WORKER = """
import json, sys
from assetcache import AssetCache, RetryPolicy
url, pg, local, key = sys.argv[1:5]
files = json.loads(sys.stdin.readline())
with AssetCache(key, base_url=url, db_path=pg, local_db=local, batch_size=8,
                retry=RetryPolicy(base_delay=0.001, max_delay=0.01)) as cache:
    print("ready", flush=True)
    sys.stdin.readline()
    results = cache.resolve_many(files, concurrency=4)
print(json.dumps({"failed": [str(r.error) for r in results if r.error],
                  "uploaded": sum(r.outcome == "uploaded" for r in results)}))
"""


def test_two_hosts_racing_on_a_hundred_files_upload_each_once(emu, pg_url, tmp_path):
    emu.set_latency(0.1)
    files = []
    for i in range(100):
        path = tmp_path / f"f{i:03d}.png"
        path.write_bytes(make_png(500 + i))
        files.append(str(path))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                emu.base_url,
                pg_url,
                str(tmp_path / f"host{h}.db"),
                API_KEY,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in range(2)
    ]
    for p in procs:
        p.stdin.write(json.dumps(files if p is procs[0] else files[::-1]) + "\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    assert all(not r["failed"] for r in reports), reports
    assert emu.upload_count == 100
    assert sum(r["uploaded"] for r in reports) == 100


def test_hosts_migrating_at_once(pg_url):
    from assetcache._storage._postgres import SCHEMA_VERSION, PostgresRegistry

    errors, regs = [], []

    def start():
        try:
            regs.append(PostgresRegistry(pg_url))
        except Exception as exc:  # the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert {r.schema_version() for r in regs} == {SCHEMA_VERSION}
    for r in regs:
        r.close()


class Proxy:
    """A TCP relay to PostgreSQL that can be cut, as if the server stopped."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.up = True
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.up = False
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def restore(self):
        self.up = True

    def close(self):
        self.cut()
        self.sock.close()


def test_postgres_going_away_mid_run(emu, pg_url, tmp_path):
    from urllib.parse import urlsplit

    parts = urlsplit(PG)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxied = pg_url.replace(
        parts.netloc, f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}"
    )
    proxied += "&retry_for=1"  # give up on the fleet after a second, not the default 30 s
    known = tmp_path / "known.png"
    known.write_bytes(make_png(4))
    try:
        with host(emu, proxied, tmp_path, "a", racy_window=0) as cache:
            uuid_known = cache.get_uuid(known)
            proxy.cut()
            # The local part keeps answering hits it can prove fresh ...
            assert cache.get_uuid(known) == uuid_known
            # ... and anything needing the fleet fails clearly, item by item.
            results = cache.resolve_many([make_png(5), make_png(6)])
            assert all(r.outcome == "failed" for r in results)
            assert all(isinstance(r.error, StoreError) for r in results)
            assert "shared store" in str(results[0].error)
            proxy.restore()
            again = cache.resolve_many([make_png(5), make_png(6)])
            assert [r.outcome for r in again] == ["uploaded", "uploaded"]
            assert all(emu.holds(r.uuid) for r in again)
            assert cache.get_uuid(known) == uuid_known
    finally:
        proxy.close()


def test_without_the_extra_a_postgres_url_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match=r"assetcache\[postgres\]"):
        AssetCache(
            API_KEY, db_path="postgresql://nobody@127.0.0.1:1/none", local_db=tmp_path / "l.db"
        )


def test_password_never_in_errors(tmp_path):
    with pytest.raises(StoreError) as info:
        AssetCache(
            API_KEY,
            db_path="postgresql://u:hunter2secret@127.0.0.1:1/none",
            local_db=tmp_path / "l.db",
        )
    assert "hunter2secret" not in str(info.value)


def test_sqlite_urls(tmp_path):
    with AssetCache(API_KEY, db_path=f"sqlite:///{tmp_path}/x.db") as cache:
        assert cache.db_path == str(Path(tmp_path, "x.db"))


def test_a_claim_cannot_miss_an_upload_recorded_between_its_reads(pg_url):
    """Under READ COMMITTED each statement has its own snapshot; the per-key lock
    keeps a record from landing between a claimer's asset and lease reads."""
    import contextlib

    from assetcache._storage._base import UploadRecord
    from assetcache._storage._postgres import PostgresRegistry

    a, b = PostgresRegistry(pg_url), PostgresRegistry(pg_url)
    key = ("ns", "0" * 32, "")
    assert a.claim([key], "host-a:1:aa", 1000.0, 60, 0.0) == {key: "claimed"}
    between, resume = threading.Event(), threading.Event()
    real_write = b.write

    class Paused:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, params=()):
            result = self.conn.execute(sql, params)
            if "FROM assetcache_assets" in sql:
                between.set()
                resume.wait(10)
            return result

        def __getattr__(self, name):
            return getattr(self.conn, name)

    @contextlib.contextmanager
    def paused_write(doing="write"):
        with real_write(doing) as conn:
            yield Paused(conn)

    b.write = paused_write
    seen = {}
    claimer = threading.Thread(
        target=lambda: seen.update(b.claim([key], "host-b:2:bb", 1001.0, 60, 0.0))
    )
    claimer.start()
    assert between.wait(10)
    record = UploadRecord(*key, "5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44", 10, "png", 1001.0, 10)
    recorder = threading.Thread(target=lambda: a.record_uploads([record], "host-a:1:aa"))
    recorder.start()
    recorder.join(0.5)
    resume.set()
    claimer.join(10)
    recorder.join(10)
    assert seen[key] != "claimed"
    assert b.get_asset(key) is not None
    a.close()
    b.close()


def test_a_heartbeat_never_drops_a_lease_claimed_while_it_was_on_its_way(pg_url):
    """A heartbeat drops the leases its process no longer holds; one claimed after
    it looked at what is held (while its round trip was slow, or retried) must
    survive it, or another host takes the content and uploads it a second time."""
    from assetcache._storage._postgres import PostgresRegistry

    a, b = PostgresRegistry(pg_url), PostgresRegistry(pg_url)
    owner = "host-a:1:aa"
    old, new = ("ns", "1" * 32, ""), ("ns", "2" * 32, "")
    assert a.claim([old], owner, 1000.0, 60, 0.0) == {old: "claimed"}

    def held():
        # What the process holds is read now; a worker thread claims ``new`` just after.
        snapshot = set()
        assert b.claim([new], owner, 1000.0, 60, 0.0) == {new: "claimed"}
        return snapshot, 1060.0

    a.beat(owner, held)
    leases = {
        r[:3]: r[3]
        for r in a.read("SELECT namespace, content_hash, variant, owner FROM assetcache_leases")
    }
    assert new in leases and leases[new] == owner  # claimed meanwhile: kept
    assert old not in leases  # let go of before the beat: dropped
    # Another owner sees ``new`` held, so it never uploads it too.
    assert b.claim([new], "host-b:2:bb", 1001.0, 60, 0.0) == {new: "held"}
    a.close()
    b.close()


def test_cli_commands_act_on_the_fleet(emu, pg_url, tmp_path):
    """ls, stats, refresh and prune see the fleet's registry; status this host's files."""
    import shutil

    from click.testing import CliRunner

    from assetcache._cli import cli

    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    folder_a.mkdir()
    for i in range(3):
        (folder_a / f"img{i}.png").write_bytes(make_png(700 + i))
    shutil.copytree(folder_a, folder_b)

    def run(host, *args, input=None):
        env = {
            "RUNWARE_API_KEY": API_KEY,
            "ASSETCACHE_DB": pg_url,
            "ASSETCACHE_LOCAL_DB": str(tmp_path / f"{host}.db"),
            "ASSETCACHE_API_URL": emu.base_url,
        }
        result = CliRunner().invoke(
            cli, [str(a) for a in args], env=env, input=input, catch_exceptions=False
        )
        assert API_KEY not in result.output
        return result

    assert "3 uploaded" in run("a", "upload", folder_a).output
    assert run("b", "upload", folder_b).exit_code == 0
    assert emu.upload_count == 3  # host b's copies were hits through the fleet

    listed = json.loads(run("b", "ls", "--json").stdout)
    assert len(listed) == 3
    assert {e["uuid"] for e in listed} <= {img.uuid for img in emu.images()}
    stats = json.loads(run("b", "stats", "--json").stdout)
    assert stats["entries"] == 3 and stats["uploads"] == 3
    status = json.loads(run("b", "status", "--json", "--all", folder_b).stdout)
    assert [s["state"] for s in status["files"]] == ["fresh"] * 3

    exported = run("a", "export").stdout.strip().splitlines()
    assert len(exported) == 3

    # The CLI runs on real time: a 30-day horizon makes every entry due.
    refreshed = json.loads(run("b", "refresh", "--within", "30d", "--json").stdout)
    assert refreshed["summary"].get("renewed") == 3
    assert emu.upload_count == 6
    fresh_uuids = {e["uuid"] for e in json.loads(run("a", "ls", "--json").stdout)}
    assert fresh_uuids == {img.uuid for img in emu.images()} - {e["uuid"] for e in listed}

    pruned = json.loads(run("a", "prune", "--older-than", "0s", "--json").stdout)
    assert pruned["summary"]["entries"] == 3
    assert json.loads(run("b", "ls", "--json").stdout) == []
    imported = json.loads(run("b", "import", "--json", "-", input="\n".join(exported)).stdout)
    assert imported["added"] == 3  # back into the fleet's registry ...
    assert len(json.loads(run("a", "ls", "--json").stdout)) == 3  # ... seen from host a
