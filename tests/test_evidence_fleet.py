"""Evidence in a fleet: serving is not a use on any host, leases are renewed
while an upload is in flight, and another account cannot touch our entries.

Needs ``ASSETCACHE_TEST_POSTGRES`` (``.ci/run`` sets it); each test gets a
schema of its own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, make_png

from assetcache import AssetCache
from assetcache.emulator import Emulator

PG = os.environ.get("ASSETCACHE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not PG,
    reason="no PostgreSQL: set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test "
    "to run the fleet tests (.ci/run sets it when a local server is running)",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    import psycopg

    assert PG is not None
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG else "?"
    yield f"{PG}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def host(emu: Emulator, pg_url: str, tmp_path: Path, name: str, key: str = API_KEY, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("retry", FAST_RETRY)
    return AssetCache(
        key,
        base_url=emu.base_url,
        db_path=pg_url,
        local_db=tmp_path / f"{name}.db",
        clock=emu.clock,
        **kw,
    )


def test_serving_on_every_host_keeps_nothing_alive(
    emu: Emulator, pg_url: str, tmp_path: Path
) -> None:
    data = make_png(41)
    with host(emu, pg_url, tmp_path, "a") as a, host(emu, pg_url, tmp_path, "b") as b:
        first = a.get_uuid(data)
        for day in range(35):
            emu.advance(days=1)
            for cache in (a, b):
                got = cache.get_uuid(data)
                assert emu.holds(got), f"day {day + 1}: a deleted UUID was served"
        assert a.get_uuid(data) != first


def test_a_slow_upload_on_one_host_is_not_repeated_by_another(
    emu: Emulator, pg_url: str, tmp_path: Path
) -> None:
    emu.set_latency(2.0)
    data = make_png(42)
    with (
        host(emu, pg_url, tmp_path, "a", lease_ttl=0.5) as a,
        host(emu, pg_url, tmp_path, "b", lease_ttl=0.5) as b,
    ):
        results: list[str] = []
        first = threading.Thread(target=lambda: results.append(a.get_uuid(data)))
        first.start()
        deadline = time.monotonic() + 5
        while emu.request_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # two TTLs into the upload: only a renewed lease still holds
        results.append(b.get_uuid(data))
        first.join(30)
    assert len(set(results)) == 1 and emu.upload_count == 1


@pytest.fixture
def two_keys() -> Iterator[Emulator]:
    with Emulator(api_key={"key-a", "key-b"}) as emu:
        yield emu


def test_another_account_in_the_shared_registry_cannot_touch_or_invalidate(
    two_keys: Emulator, pg_url: str, tmp_path: Path
) -> None:
    emu = two_keys
    with (
        host(emu, pg_url, tmp_path, "a", key="key-a") as a,
        host(emu, pg_url, tmp_path, "b", key="key-b") as b,
    ):
        data = make_png(43)
        uuid_ = a.get_uuid(data)
        before = next(a.entries()).last_used_at
        emu.advance(days=3)
        assert b.touch(uuid_) is None
        assert b.invalidate(uuid_) is None
        assert next(a.entries()).last_used_at == before
        assert a.resolve(data).outcome == "hit"
