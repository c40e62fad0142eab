"""One contract, three registries: every ``Registry`` method, on SQLite, PostgreSQL
and the fleet registry (PostgreSQL seen through a host's local SQLite copy).

The PostgreSQL and fleet cases need ``ASSETCACHE_TEST_POSTGRES`` (``.ci/run``
sets it when a server is up) and skip with a message without it; each test
gets a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assetcache._storage._base import AssetRow, Key, Registry, UploadRecord
from assetcache._storage._sqlite import SQLiteStore

PG = os.environ.get("ASSETCACHE_TEST_POSTGRES")
NO_PG = (
    "no PostgreSQL: set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/test "
    "to run the registry contract on PostgreSQL and the fleet"
)

NS, OTHER = "api.example/v1#acct", "api.example/v1#other"
K1: Key = (NS, "a" * 32, "")
K2: Key = (NS, "b" * 32, "")
K3: Key = (OTHER, "c" * 32, "")
U1, U2, U3 = (str(uuid.UUID(int=n)) for n in (1, 2, 3))


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not PG:
        pytest.skip(NO_PG)
    import psycopg

    schema = "c_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG else "?"
    yield f"{PG}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres", "fleet"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    reg: Any
    if request.param == "sqlite":
        reg = SQLiteStore(tmp_path / "cache.db")
    else:
        from assetcache._storage._postgres import PostgresRegistry

        shared = PostgresRegistry(request.getfixturevalue("pg_url"))
        if request.param == "postgres":
            reg = shared
        else:
            from assetcache._storage._fleet import FleetRegistry

            reg = FleetRegistry(SQLiteStore(tmp_path / "local.db"), shared)
    yield reg
    if isinstance(reg, SQLiteStore) or request.param == "postgres":
        reg.close()
    else:
        reg.close()
        reg.local.close()


def upload(key: Key, image_uuid: str, now: float, sent: int = 10) -> UploadRecord:
    return UploadRecord(*key, image_uuid, 100, "png", now, sent)


def row(key: Key, image_uuid: str, last_used: float, uploaded: float | None = None) -> AssetRow:
    return AssetRow(*key, image_uuid, 100, "png", uploaded or last_used, last_used)


def test_recorded_uploads_are_found_by_key_and_by_uuid(registry):
    assert registry.get_asset(K1) is None
    registry.record_uploads([upload(K1, U1, 1000.0)], "me")
    first = registry.get_asset(K1)
    assert (first.image_uuid, first.last_used_at, first.upload_count, first.bytes_sent) == (
        U1,
        1000.0,
        1,
        10,
    )
    registry.record_uploads([upload(K1, U2, 2000.0, sent=5)], "me")
    again = registry.get_asset(K1)
    assert (again.image_uuid, again.upload_count, again.bytes_sent) == (U2, 2, 15)
    assert registry.get_assets([K1, K2]) == {K1: again}
    assert registry.find_uuid(U2) == [again]
    assert registry.find_uuid(U1) == []
    assert registry.find_uuids([U1, U2, U2]) == {U2: [again]}


def test_a_claim_is_held_against_others_until_released_or_expired(registry):
    assert registry.claim([K1], "host-a:1:aa", 100.0, 60.0, 0.0) == {K1: "claimed"}
    assert registry.peek([K1], "host-b:2:bb", 110.0, 0.0) == {K1: "held"}
    assert registry.claim([K1], "host-b:2:bb", 110.0, 60.0, 0.0) == {K1: "held"}
    assert registry.peek([K1], "host-a:1:aa", 110.0, 0.0) == {K1: "free"}  # our own lease
    assert registry.peek([K1], "host-b:2:bb", 161.0, 0.0) == {K1: "free"}  # it expired
    registry.release([K1], "host-b:2:bb")  # not theirs to release
    assert registry.peek([K1], "host-b:2:bb", 110.0, 0.0) == {K1: "held"}
    registry.release([K1], "host-a:1:aa")
    assert registry.peek([K1], "host-b:2:bb", 110.0, 0.0) == {K1: "free"}


def test_a_renewed_lease_holds_past_its_first_expiry_and_only_for_its_owner(registry):
    registry.claim([K1], "host-a:1:aa", 100.0, 60.0, 0.0)
    registry.renew([K1], "host-b:2:bb", 10_000.0)  # not theirs: nothing changes
    assert registry.peek([K1], "host-b:2:bb", 161.0, 0.0) == {K1: "free"}
    registry.renew([K1], "host-a:1:aa", 300.0)
    assert registry.peek([K1], "host-b:2:bb", 250.0, 0.0) == {K1: "held"}
    assert registry.peek([K1], "host-b:2:bb", 301.0, 0.0) == {K1: "free"}


def test_a_row_stamped_past_fresh_until_is_suspect_not_fresh(registry):
    registry.record_uploads([upload(K1, U1, 500.0)], "host-a:1:aa")
    assert registry.peek([K1], "host-b:2:bb", 160.0, 100.0, 400.0) == {K1: "free"}
    assert registry.claim([K1], "host-b:2:bb", 160.0, 60.0, 100.0, 400.0) == {K1: "claimed"}


def test_a_fresh_row_answers_a_claim_and_a_stale_one_does_not(registry):
    registry.record_uploads([upload(K1, U1, 150.0)], "host-a:1:aa")
    fresh = registry.get_asset(K1)
    assert registry.peek([K1, K2], "host-b:2:bb", 160.0, 100.0) == {K1: fresh, K2: "free"}
    assert registry.claim([K1], "host-b:2:bb", 160.0, 60.0, 100.0) == {K1: fresh}
    assert registry.claim([K1], "host-b:2:bb", 160.0, 60.0, 150.0) == {K1: "claimed"}


def test_a_row_stamped_beyond_fresh_until_is_not_fresh(registry):
    registry.record_uploads([upload(K1, U1, 500.0)], "host-a:1:aa")  # stamped "in the future"
    assert registry.peek([K1], "host-b:2:bb", 160.0, 100.0, 460.0) == {K1: "free"}
    assert registry.claim([K1], "host-b:2:bb", 160.0, 60.0, 100.0, 460.0) == {K1: "claimed"}
    assert isinstance(registry.peek([K1], "host-c:3:cc", 160.0, 100.0)[K1], AssetRow)


def test_only_the_owner_renews_its_lease(registry):
    registry.claim([K1], "host-a:1:aa", 100.0, 60.0, 0.0)
    registry.renew([K1], "host-b:2:bb", 1000.0)  # not theirs to renew
    assert registry.peek([K1], "host-b:2:bb", 170.0, 0.0) == {K1: "free"}  # expired at 160
    registry.renew([K1], "host-a:1:aa", 1000.0)  # the heartbeat of the upload in flight
    assert registry.peek([K1], "host-b:2:bb", 900.0, 0.0) == {K1: "held"}
    assert registry.peek([K1], "host-b:2:bb", 1001.0, 0.0) == {K1: "free"}


def test_recording_an_upload_drops_the_uploaders_lease(registry):
    registry.claim([K1], "host-a:1:aa", 100.0, 60.0, 0.0)
    registry.record_uploads([upload(K1, U1, 110.0)], "host-a:1:aa")
    assert registry.peek([K1], "host-b:2:bb", 120.0, 200.0) == {K1: "free"}


def test_touch_only_moves_the_last_use_forward(registry):
    registry.record_uploads([upload(K1, U1, 1000.0)], "me")
    registry.touch(K1, 900.0)
    assert registry.get_asset(K1).last_used_at == 1000.0
    registry.touch(K1, 1500.0)
    assert registry.get_asset(K1).last_used_at == 1500.0


def test_expire_only_moves_the_last_use_back_and_checks_the_uuid(registry):
    registry.record_uploads([upload(K1, U1, 1000.0)], "me")
    assert registry.expire_asset(K1, 2000.0) == 0  # never forward
    assert registry.expire_asset(K1, 10.0, U2) == 0  # holds another UUID
    assert registry.get_asset(K1).last_used_at == 1000.0
    assert registry.expire_asset(K1, 10.0, U1) >= 1
    assert registry.get_asset(K1).last_used_at == 10.0


def test_merge_never_replaces_a_fresher_row(registry):
    registry.record_uploads([upload(K1, U1, 1000.0)], "me")
    added, replaced, kept = registry.merge_assets(
        [row(K1, U2, 500.0), row(K2, U2, 700.0), row(K2, U3, 800.0), row(K3, U3, 1.0)]
    )
    assert (added, replaced, kept) == (2, 1, 1)
    assert registry.get_asset(K1).image_uuid == U1  # the older import lost
    assert registry.get_asset(K2).image_uuid == U3  # the later, fresher line won
    assert registry.merge_assets([row(K1, U2, 1000.0)]) == (0, 0, 1)  # as fresh: kept
    assert registry.merge_assets([row(K1, U2, 1001.0)]) == (0, 1, 0)
    assert registry.get_asset(K1).image_uuid == U2


def test_select_and_totals_take_typed_filters(registry):
    registry.merge_assets([row(K1, U1, 300.0), row(K2, U2, 100.0), row(K3, U3, 200.0)])
    assert [r.key for r in registry.select_assets()] == [K2, K3, K1]  # soonest to expire first
    assert [r.key for r in registry.select_assets(order="key")] == [K1, K2, K3]
    assert [r.key for r in registry.select_assets(namespace=NS)] == [K2, K1]
    assert [r.key for r in registry.select_assets(used_before=200.0)] == [K2, K3]
    assert [r.key for r in registry.select_assets(used_after=100.0, used_before=300.0)] == [
        K3,
        K1,
    ]
    assert registry.asset_totals() == (3, 300)
    assert registry.asset_totals(namespace=OTHER) == (1, 100)
    assert registry.newest_use() == 300.0
    assert registry.newest_use(NS) == 300.0 and registry.newest_use(OTHER) == 200.0
    assert registry.newest_use("no-such-namespace") is None


def test_prune_keeps_rows_used_since_they_were_read(registry):
    registry.merge_assets([row(K1, U1, 100.0), row(K2, U2, 100.0)])
    old = registry.select_assets(used_before=100.0)
    registry.touch(K2, 500.0)  # used after the listing
    registry.prune_assets(old)
    assert registry.get_asset(K1) is None
    assert registry.get_asset(K2).last_used_at == 500.0


def test_delete_removes_rows_by_key(registry):
    registry.merge_assets([row(K1, U1, 100.0), row(K2, U2, 100.0)])
    assert registry.delete_assets([]) == 0
    assert registry.delete_assets([K1, K3]) >= 1
    assert registry.get_assets([K1, K2]).keys() == {K2}


def test_dead_leases_are_counted_then_dropped(registry):
    registry.claim([K1], "host-a:1:aa", 100.0, 10.0, 0.0)
    registry.claim([K2], "host-a:1:aa", 100.0, 1000.0, 0.0)
    assert registry.drop_expired_leases(200.0, dry_run=True) == 1
    assert registry.peek([K1], "host-b:2:bb", 105.0, 0.0) == {K1: "held"}  # dry run: still there
    assert registry.drop_expired_leases(200.0) == 1
    assert registry.drop_expired_leases(200.0) == 0
    assert registry.peek([K2], "host-b:2:bb", 200.0, 0.0) == {K2: "held"}


def test_counters_add_up_per_namespace(registry):
    registry.add_counters(NS, {"hits": 2, "uploads": 1, "misses": 0})
    registry.add_counters(NS, {"hits": 3})
    registry.add_counters(OTHER, {"hits": 10})
    assert registry.counters(NS) == {"hits": 5, "uploads": 1}
    assert registry.counters() == {"hits": 15, "uploads": 1}


def test_local_rows_are_only_a_fleets_own_copies(registry):
    registry.record_uploads([upload(K1, U1, 100.0)], "me")
    local = registry.local_rows(U1)
    if hasattr(registry, "shared"):  # the fleet: this host's copy of what it recorded
        assert [r.key for r in local] == [K1]
    else:
        assert local == []


def test_every_contract_method_is_covered_here():
    """The contract and this suite stay in step: a new method needs a test above."""
    methods = {n for n in vars(Registry) if not n.startswith("_") and callable(vars(Registry)[n])}
    source = Path(__file__).read_text()
    untested = sorted(m for m in methods if f"registry.{m}(" not in source and m != "close")
    assert untested == []


def test_rows_stream_in_the_order_asked(registry):
    registry.merge_assets([row(K1, U1, 300.0), row(K2, U2, 100.0), row(K3, U3, 200.0)])
    streamed = registry.iter_assets(namespace=NS, order="key")
    assert next(streamed).key == K1  # a generator: rows come as they are asked for
    assert [r.key for r in streamed] == [K2]
    assert list(registry.iter_assets(used_before=200.0)) == registry.select_assets(
        used_before=200.0
    )


def test_listings_page_past_the_page_size_in_order(registry, monkeypatch):
    from assetcache._storage import _base

    monkeypatch.setattr(_base, "PAGE_ROWS", 2)  # five rows: three keyset pages
    rows = [row((NS, f"{n:032x}", ""), str(uuid.UUID(int=n)), 100.0 + n % 3) for n in range(5)]
    registry.merge_assets(rows)
    by_key = [r.key for r in registry.iter_assets(namespace=NS, order="key")]
    assert by_key == sorted(r.key for r in rows)
    by_use = [r.key for r in registry.iter_assets(order="last_use")]
    assert by_use == [r.key for r in sorted(rows, key=lambda r: (r.last_used_at, r.key))]
    assert registry.asset_totals(namespace=NS, used_after=100.0, used_before=101.0) == (2, 200)


def test_export_lines_carry_every_exported_field_or_are_left_to_the_caller(registry):
    import json
    from dataclasses import replace

    registry.merge_assets(
        [
            replace(row(K1, U1, 1700000000.123456789), url="https://im.example/a.png"),
            row(K3, U3, 5.5),
        ]
    )
    made = registry.export_lines(NS, 1)
    if made is None:  # the caller builds the lines from iter_assets
        return
    lines = [json.loads(line) for line in made]
    assert [(d["namespace"], d["hash"]) for d in lines] == [K1[:2]]
    (d,) = lines
    assert d["uuid"] == U1 and d["url"] == "https://im.example/a.png" and d["v"] == 1
    assert d["last_used_at"] == 1700000000.123456789  # the very same double
    everyone = [json.loads(line) for line in registry.export_lines(None, 1) or ()]
    assert [d["hash"] for d in everyone] == [K1[1], K3[1]]
    assert "url" not in everyone[1]
