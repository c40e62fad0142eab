"""``assetcache doctor`` for a fleet, and the fleet's start-up errors.

The server-down cases need no PostgreSQL (nothing listens on the port); the
others need ``ASSETCACHE_TEST_POSTGRES`` and skip with a message without it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import pytest
from cli_support import invoke
from helpers import API_KEY, make_png

from assetcache import AssetCache, ConfigurationError, StoreError

PG = os.environ.get("ASSETCACHE_TEST_POSTGRES")
needs_pg = pytest.mark.skipif(
    not PG,
    reason="no PostgreSQL: set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test "
    "to run the fleet doctor tests (.ci/run sets it when a local server is running)",
)
SECRET = "hunter2-Pg-S3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_with_the_server_down(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/assets?sslpassword={SECRET}x"
    env = {"ASSETCACHE_LOCAL_DB": str(tmp_path / "host.db"), "RUNWARE_API_KEY": API_KEY}
    for args in (("doctor",), ("doctor", "--fix"), ("doctor", "--json")):
        result = invoke("--db", url, *args, env=env)
        assert result.exit_code != 0, result.output
        assert SECRET not in result.output
        assert API_KEY not in result.output
        assert "healthy" not in result.output
        if "--json" in args:
            report = json.loads(result.stdout)
            assert report["ok"] is False
            assert report["fleet"]["reachable"] is False
            problems = report["problems"]
        else:
            problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
        assert len(problems) == 1, result.output
        assert "connection refused" in problems[0]
    # --fix did not create a database named after the URL, nor the host's file.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_start_up_errors_name_the_cause_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/assets"
    with pytest.raises(StoreError) as info:
        AssetCache(API_KEY, db_path=url, local_db=tmp_path / "l.db")
    text = str(info.value)
    assert "\n" not in text
    assert "connection refused" in text
    assert SECRET not in text


@needs_pg
def test_start_up_errors_no_such_database_and_authentication(tmp_path: Path) -> None:
    from urllib.parse import urlsplit

    assert PG is not None
    parts = urlsplit(PG)
    missing = parts._replace(path="/no_such_db_" + uuid.uuid4().hex[:6]).geturl()
    with pytest.raises(StoreError, match="no such database") as info:
        AssetCache(API_KEY, db_path=missing, local_db=tmp_path / "l.db")
    assert "\n" not in str(info.value)
    # A user that does not exist: the server says so during authentication.
    nobody = parts._replace(
        netloc=f"nobody_{uuid.uuid4().hex[:6]}:{SECRET}@{parts.hostname}:{parts.port or 5432}"
    ).geturl()
    with pytest.raises(StoreError, match="authentication") as info:
        AssetCache(API_KEY, db_path=nobody, local_db=tmp_path / "l.db")
    assert SECRET not in str(info.value)


@needs_pg
def test_doctor_on_a_healthy_fleet(tmp_path: Path, emu) -> None:
    import psycopg

    assert PG is not None
    schema = "td_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = PG + ("&" if "?" in PG else "?") + f"options=-csearch_path%3D{schema}"
    env = {"ASSETCACHE_LOCAL_DB": str(tmp_path / "host.db"), "RUNWARE_API_KEY": API_KEY}
    try:
        with AssetCache(
            API_KEY, base_url=emu.base_url, db_path=url, local_db=tmp_path / "host.db"
        ) as cache:
            cache.resolve(make_png(1))
        result = invoke("--db", url, "doctor", "--json", env=env)
        report = json.loads(result.stdout)
        assert result.exit_code == 0, result.output
        fleet = report["fleet"]
        assert fleet["reachable"] is True
        assert fleet["schema"] == fleet["schema_supported"]
        assert fleet["outbox"] == 0 and fleet["leases"] == 0
        assert fleet["settings"]["heartbeat"] > 0
        text = invoke("--db", url, "doctor", env=env).output
        assert "outbox" in text and "leases" in text and "heartbeat" in text
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_bad_fleet_setting_in_the_url_is_named(tmp_path: Path) -> None:
    for query, name in (
        ("pool_size=many", "pool_size"),
        ("statement_timeout=-1", "statement_timeout"),
    ):
        url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/assets?{query}"
        with pytest.raises(ConfigurationError, match=name) as info:
            AssetCache(API_KEY, db_path=url, local_db=tmp_path / "l.db")
        assert SECRET not in str(info.value)


@needs_pg
def test_fleet_settings_come_from_the_url_and_show_in_settings(tmp_path: Path, emu) -> None:
    import psycopg

    assert PG is not None
    schema = "td_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = (
        PG
        + ("&" if "?" in PG else "?")
        + f"options=-csearch_path%3D{schema}&pool_size=3&statement_timeout=7s&heartbeat=1.5"
    )
    try:
        with AssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=url,
            local_db=tmp_path / "l.db",
            host_id="rack-7",
        ) as cache:
            shown = cache.settings()
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert shown["host_id"] == "rack-7"
    assert shown["fleet"]["pool_size"] == 3
    assert shown["fleet"]["statement_timeout"] == 7
    assert shown["fleet"]["heartbeat"] == 1.5
    assert shown["fleet"]["stale_after"] == 3.75


@pytest.mark.parametrize(
    ("sqlstate", "message", "named"),
    [
        ("53300", "sorry, too many clients already", "too many connections"),
        ("28P01", 'password authentication failed for user "app"', "authentication failed"),
        ("3D000", 'database "assets" does not exist', 'no such database "assets"'),
    ],
)
def test_start_up_names_what_the_server_said(tmp_path: Path, sqlstate, message, named) -> None:
    """A server that rejects the start-up (played by the fault proxy): one line, the cause."""
    from pgproxy import FaultProxy

    with FaultProxy(("127.0.0.1", 9)) as proxy:
        proxy.fatal(sqlstate, message)
        url = f"postgresql://app:{SECRET}@127.0.0.1:{proxy.port}/assets?retry_for=0"
        with pytest.raises(StoreError) as info:
            AssetCache(API_KEY, db_path=url, local_db=tmp_path / "l.db")
        text = str(info.value)
        assert named in text and "\n" not in text and SECRET not in text
        result = invoke("--db", url, "doctor", env={"ASSETCACHE_LOCAL_DB": str(tmp_path / "d.db")})
        assert result.exit_code != 0
        problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
        assert len(problems) == 1 and named in problems[0], result.output
        assert SECRET not in result.output
