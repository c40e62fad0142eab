"""Migration 7 (namespace ids, a UUID-prefix index): a database written at schema 6
gives, once migrated, the very answers a database written at schema 7 gives."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from assetcache._storage import _sqlite
from assetcache._storage._base import AssetRow, FileRow, path_key
from assetcache._storage._sqlite import SQLiteStore

NS, OTHER = "api.example/v1#acct", "api.example/v1#other"
ROWS = [
    AssetRow(
        NS,
        f"{n:032x}",
        "" if n % 3 else "fit1024",
        str(uuid.UUID(int=n)),
        100 + n,
        "png",
        1000.0 + n,
        2000.0 + n % 4,
        1 + n % 2,
        n,
        10 * n,
        None if n % 2 else f"https://im/{n}",
    )
    for n in range(1, 9)
] + [AssetRow(OTHER, "f" * 32, "", str(uuid.UUID(int=99)), 7, "jpg", 5.5, 6.5)]
FILE = FileRow("/img/a.png", 1, 2, 101, 3, 4, f"{1:032x}", "png", 5, 640, 480)


def schema_6_database(path: Path) -> None:
    """A database as assetcache wrote it at schema 6, holding ``ROWS`` and ``FILE``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for migrate in _sqlite.MIGRATIONS[:6]:
        migrate(conn)
    conn.execute("PRAGMA user_version = 6")
    columns = ", ".join(AssetRow.__dataclass_fields__)
    conn.executemany(
        f"INSERT INTO assets ({columns}) VALUES ({', '.join('?' * 12)})",
        [tuple(getattr(r, c) for c in AssetRow.__dataclass_fields__) for r in ROWS],
    )
    _sqlite._put_files(conn, [FILE])
    conn.execute("INSERT INTO served VALUES (?, ?, ?, ?)", (*ROWS[0].key, 3000.0))
    conn.execute("INSERT INTO counters VALUES (?, 'hits', 5)", (NS,))
    conn.execute("COMMIT")
    conn.close()


def answers(store: SQLiteStore) -> dict[str, Any]:
    keys = [r.key for r in ROWS] + [(NS, "0" * 32, "")]
    return {
        "get": [store.get_asset(k) for k in keys],
        "many": store.get_assets(keys),
        "uuid": [store.find_uuid(r.image_uuid) for r in ROWS] + [store.find_uuid("nope")],
        "by_use": store.select_assets(),
        "by_key": store.select_assets(order="key"),
        "ns_by_use": store.select_assets(namespace=NS, used_after=2000.0),
        "ns_by_key": list(store.iter_assets(namespace=OTHER, order="key")),
        "totals": [store.asset_totals(), store.asset_totals(namespace=NS, used_before=2001.0)],
        "export": list(store.export_lines(None, 1)),
        "export_ns": list(store.export_lines(OTHER, 1)),
        "hit": store.lookup_path(path_key(FILE.path), NS, ""),
        "fit_hit": store.lookup_path(path_key(FILE.path), NS, "fit1024", 1024),
        "served": store.served_times([ROWS[0].key]),
        "counters": store.counters(NS),
        "for_uuid": store.assets_for(NS, image_uuid=ROWS[2].image_uuid),
        "for_hashes": store.assets_for(None, hashes=[ROWS[3].content_hash, "f" * 32]),
    }


def test_a_schema_6_database_migrates_to_7_with_the_same_answers(tmp_path: Path) -> None:
    schema_6_database(tmp_path / "old.db")
    old = SQLiteStore(tmp_path / "old.db")
    fresh = SQLiteStore(tmp_path / "new.db")
    fresh.merge_assets(ROWS)
    fresh.put_files([FILE])
    fresh.mark_served([(ROWS[0].key, 3000.0)])
    fresh.add_counters(NS, {"hits": 5})
    try:
        assert old.schema_version() == fresh.schema_version() == 7
        migrated = answers(old)
        assert migrated == answers(fresh)
        assert migrated["get"][:-1] == ROWS and migrated["by_key"] == sorted(
            ROWS, key=lambda r: r.key
        )
        assert migrated["hit"] is not None and migrated["hit"][8] == ROWS[0].image_uuid
        # The namespace is stored once, not in every row.
        columns = {r[1] for r in old.read("PRAGMA table_info(assets)")}
        assert "namespace" not in columns
        assert old.namespaces() == [NS, OTHER]
        # The old table's pages are given back to the file system.
        assert old.read("PRAGMA freelist_count") == [(0,)]
        # And the migrated file keeps working as a store.
        old.touch(ROWS[0].key, 9000.0)
        assert old.get_asset(ROWS[0].key).last_used_at == 9000.0
        assert old.delete_assets([ROWS[-1].key]) == 1
        assert old.find_uuid(ROWS[-1].image_uuid) == []
    finally:
        old.close()
        fresh.close()


def test_export_pages_are_joined_by_sqlite_or_read_row_by_row(tmp_path, monkeypatch) -> None:
    """Export lines come a joined page at a time; a page whose joined text cannot
    be split back into its lines (a raw newline in a salvaged value) is read row
    by row, and the pages still follow each other by key."""
    import json

    monkeypatch.setattr(_sqlite, "PAGE_ROWS", 3)
    store = SQLiteStore(tmp_path / "cache.db")
    try:
        store.merge_assets(ROWS)
        lines = list(store.export_lines(None, 1))
        assert [(d["namespace"], d["hash"], d["variant"]) for d in map(json.loads, lines)] == [
            r.key for r in sorted(ROWS, key=lambda r: r.key)
        ]
        with store.write() as conn:  # what a damaged file may hand back
            conn.execute(
                "UPDATE assets SET size = 'a' || char(10) || 'b' WHERE content_hash = ?",
                (f"{4:032x}",),
            )
        again = list(store.export_lines(NS, 1))
        assert len(again) == len(ROWS) - 1 and '"size":a\nb,' in again[3]
    finally:
        store.close()


def test_migrating_a_big_database_says_so_once(tmp_path: Path, monkeypatch, caplog) -> None:
    # A migration of a big file takes seconds: the pause is explained, once; a
    # small file (or a new one) migrates silently.
    import logging

    schema_6_database(tmp_path / "small.db")
    with caplog.at_level(logging.WARNING, logger="assetcache"):
        SQLiteStore(tmp_path / "small.db").close()
        SQLiteStore(tmp_path / "new.db").close()
    assert not [r for r in caplog.records if "upgrading" in r.getMessage()]
    monkeypatch.setattr(_sqlite, "NOTICE_ROWS", len(ROWS))
    schema_6_database(tmp_path / "big.db")
    with caplog.at_level(logging.WARNING, logger="assetcache"):
        SQLiteStore(tmp_path / "big.db").close()
        SQLiteStore(tmp_path / "big.db").close()  # already migrated: nothing to say
    said = [r.getMessage() for r in caplog.records if "upgrading" in r.getMessage()]
    assert len(said) == 1
    assert str(tmp_path / "big.db") in said[0] and "schema 6 to 7" in said[0]
    assert f"{len(ROWS)} entries" in said[0]
