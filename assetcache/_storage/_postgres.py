"""The shared asset registry on PostgreSQL, for a fleet of hosts.

Only the registry lives here (namespace + content hash + variant -> imageUUID,
last use, counts, upload leases, usage counters). Each host keeps its file
index, and a copy of the registry rows it has used, in its local SQLite file
(see ``_fleet.FleetRegistry``), so a warm hit never leaves the machine.

Single flight across hosts: a claim takes a transaction-scoped advisory lock
per key (in key order, so two claimers cannot deadlock) before reading the
asset and lease rows, so two hosts can never both see "no lease". No
transaction is held across an upload: the lease row is what other hosts wait on.

Requires the ``postgres`` extra (psycopg 3 and psycopg-pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .. import _policy
from .._errors import ConfigurationError, SchemaTooNew, StoreError
from ._base import (
    ASSET_COLUMNS,
    AssetRow,
    FileRow,
    Key,
    Order,
    UploadRecord,
    owner_alive,
    paged_assets,
)
from ._sqlite import _asset_filter

log = logging.getLogger("assetcache")

#: Serialises schema migrations when several hosts start at once.
_MIGRATION_LOCK = 0x61737365  # "asse"

_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS assetcache_assets (
        namespace TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT '',
        image_uuid TEXT NOT NULL,
        size BIGINT NOT NULL,
        format TEXT NOT NULL,
        uploaded_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION NOT NULL,
        upload_count INTEGER NOT NULL DEFAULT 1,
        hits BIGINT NOT NULL DEFAULT 0,
        bytes_sent BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, content_hash, variant)
    );
    CREATE INDEX IF NOT EXISTS assetcache_assets_by_uuid ON assetcache_assets (image_uuid);
    CREATE INDEX IF NOT EXISTS assetcache_assets_by_last_use ON assetcache_assets (last_used_at);
    CREATE TABLE IF NOT EXISTS assetcache_leases (
        namespace TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        variant TEXT NOT NULL,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (namespace, content_hash, variant)
    );
    CREATE TABLE IF NOT EXISTS assetcache_counters (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, name)
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLS = ", ".join(ASSET_COLUMNS)


def redact_url(url: str) -> str:
    """The URL without its password, fit for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, "")
    )


def _lock_id(key: Key) -> int:
    digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresRegistry:
    """The registry interface (see ``_base.Registry``) on a PostgreSQL server.

    >>> reg = PostgresRegistry("postgresql://app@db.internal/assets")   # doctest: +SKIP
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, connect_timeout: float = 5.0
    ) -> None:
        try:
            import psycopg  # noqa: F401
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigurationError(
                "a postgresql:// store needs the postgres extra: pip install 'assetcache[postgres]'"
            ) from None
        self.url = url
        self.path = redact_url(url)
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="assetcache",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self._pool.close()
            raise self._error(exc, "connect") from None
        self._migrate()

    # -- plumbing --------------------------------------------------------------
    def _error(self, exc: BaseException, doing: str) -> StoreError:
        text = " ".join(str(exc).split())
        text = text.replace(self.url, self.path)
        if re.search(r"password", text, re.I):
            text = "authentication failed"
        return StoreError(
            f"shared store {self.path} failed while trying to {doing}: {text}", path=self.path
        )

    @contextlib.contextmanager
    def _conn(self, doing: str) -> Iterator[Any]:
        import psycopg
        import psycopg_pool

        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise self._error(exc, doing) from None

    @contextlib.contextmanager
    def write(self, doing: str = "write") -> Iterator[Any]:
        """A transaction on a pooled connection (committed on success)."""
        with self._conn(doing) as conn, conn.transaction():
            yield conn

    def read(self, sql: str, params: Sequence[Any] = (), doing: str = "read") -> list[Any]:
        with self._conn(doing) as conn:
            return conn.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self.write("migrate the schema") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS assetcache_meta "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute("SELECT value FROM assetcache_meta WHERE key = 'schema'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"shared store {self.path} was written by a newer assetcache "
                    f"(schema {version}, this version reads up to {SCHEMA_VERSION}); "
                    "upgrade assetcache",
                    path=self.path,
                )
            for number in range(version, SCHEMA_VERSION):
                conn.execute(_MIGRATIONS[number])
            conn.execute(
                "INSERT INTO assetcache_meta VALUES ('schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def schema_version(self) -> int:
        rows = self.read("SELECT value FROM assetcache_meta WHERE key = 'schema'")
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        self._pool.close()

    # -- the registry ------------------------------------------------------------
    def get_asset(self, key: Key) -> AssetRow | None:
        rows = self.read(
            f"SELECT {_COLS} FROM assetcache_assets "
            "WHERE namespace = %s AND content_hash = %s AND variant = %s",
            key,
            "look up an asset",
        )
        return AssetRow(*rows[0]) if rows else None

    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        """The rows of many keys in one query."""
        wanted = set(keys)
        if not wanted:
            return {}
        rows = self.read(
            f"SELECT {_COLS} FROM assetcache_assets WHERE content_hash = ANY(%s)",
            (sorted({k[1] for k in wanted}),),
            "look up entries",
        )
        assets = (AssetRow(*r) for r in rows)
        return {a.key: a for a in assets if a.key in wanted}

    def find_uuid(self, image_uuid: str) -> list[AssetRow]:
        rows = self.read(
            f"SELECT {_COLS} FROM assetcache_assets WHERE image_uuid = %s",
            (image_uuid,),
            "look up a UUID",
        )
        return [AssetRow(*r) for r in rows]

    @staticmethod
    def _lock_keys(conn: Any, keys: Iterable[Key]) -> None:
        """Take the per-key advisory locks, in one global order (no deadlocks).

        Every writer of a key's asset or lease row takes its lock: under READ
        COMMITTED each statement sees its own snapshot, so without it an upload
        recorded between a claimer's two SELECTs would look like "no asset,
        no lease" and be uploaded again.
        """
        locks = sorted({_lock_id(k) for k in keys})
        if locks:
            # One round trip; the sorted subquery fixes the order the locks are taken in.
            conn.execute(
                "SELECT pg_advisory_xact_lock(x) FROM "
                "(SELECT x FROM unnest(%s::bigint[]) AS t(x) ORDER BY x) AS ordered",
                (locks,),
            )

    @staticmethod
    def _rows_of(conn: Any, keys: Sequence[Key]) -> tuple[dict[Key, AssetRow], dict[Key, Any]]:
        """Asset rows and leases of ``keys``, read in two queries."""
        wanted = set(keys)
        hashes = sorted({k[1] for k in wanted})
        assets = {
            a.key: a
            for a in (
                AssetRow(*r)
                for r in conn.execute(
                    f"SELECT {_COLS} FROM assetcache_assets WHERE content_hash = ANY(%s)",
                    (hashes,),
                ).fetchall()
            )
            if a.key in wanted
        }
        leases = {
            (ns, digest, variant): (lease_owner, expires)
            for ns, digest, variant, lease_owner, expires in conn.execute(
                "SELECT namespace, content_hash, variant, owner, expires_at "
                "FROM assetcache_leases WHERE content_hash = ANY(%s)",
                (hashes,),
            ).fetchall()
        }
        return assets, leases

    def claim(
        self, keys: Sequence[Key], owner: str, now: float, ttl: float, fresh_since: float
    ) -> dict[Key, AssetRow | str]:
        out: dict[Key, AssetRow | str] = {}
        with self.write("claim uploads") as conn:
            self._lock_keys(conn, keys)
            assets, leases = self._rows_of(conn, keys)
            claimed = []
            for key in keys:
                row = assets.get(key)
                if row is not None and row.last_used_at > fresh_since:
                    out[key] = row
                    continue
                if _policy.lease_held(leases.get(key), owner, now, owner_alive):
                    out[key] = "held"
                    continue
                claimed.append((*key, owner, now + ttl))
                out[key] = "claimed"
            if claimed:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO assetcache_leases VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (namespace, content_hash, variant) DO UPDATE "
                        "SET owner = excluded.owner, expires_at = excluded.expires_at",
                        claimed,
                    )
        return out

    def peek(
        self, keys: Sequence[Key], owner: str, now: float, fresh_since: float
    ) -> dict[Key, AssetRow | str]:
        """Read-only :meth:`claim` (no locks): fresh row, ``"held"`` or ``"free"``."""
        out: dict[Key, AssetRow | str] = dict.fromkeys(keys, "free")
        for key, asset in self.get_assets(keys).items():
            if asset.last_used_at > fresh_since:
                out[key] = asset
        hashes = sorted({k[1] for k in keys})
        for ns, digest, variant, lease_owner, expires in self.read(
            "SELECT namespace, content_hash, variant, owner, expires_at FROM assetcache_leases "
            "WHERE content_hash = ANY(%s)",
            (hashes,),
            "look up leases",
        ):
            key = (ns, digest, variant)
            if out.get(key) == "free" and _policy.lease_held(
                (lease_owner, expires), owner, now, owner_alive
            ):
                out[key] = "held"
        return out

    def record_uploads(
        self, records: Sequence[UploadRecord], owner: str, files: Sequence[FileRow] = ()
    ) -> None:
        if not records:
            return
        with self.write("record uploads") as conn, conn.cursor() as cur:
            self._lock_keys(conn, (r.key for r in records))
            cur.executemany(
                "INSERT INTO assetcache_assets (namespace, content_hash, variant, image_uuid, "
                "size, format, uploaded_at, last_used_at, upload_count, hits, bytes_sent) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, 0, %s) "
                "ON CONFLICT (namespace, content_hash, variant) DO UPDATE SET "
                "image_uuid = excluded.image_uuid, size = excluded.size, "
                "format = excluded.format, "
                "uploaded_at = excluded.uploaded_at, last_used_at = excluded.last_used_at, "
                "upload_count = assetcache_assets.upload_count + 1, "
                "bytes_sent = assetcache_assets.bytes_sent + excluded.bytes_sent",
                [
                    (*r.key, r.image_uuid, r.size, r.format, r.now, r.now, r.bytes_sent)
                    for r in records
                ],
            )
            cur.executemany(
                "DELETE FROM assetcache_leases WHERE namespace = %s AND content_hash = %s "
                "AND variant = %s AND owner = %s",
                [(*r.key, owner) for r in records],
            )

    def release(self, keys: Iterable[Key], owner: str) -> None:
        keys = list(keys)
        params = [(*k, owner) for k in keys]
        if not params:
            return
        with self.write("release upload leases") as conn, conn.cursor() as cur:
            self._lock_keys(conn, keys)
            cur.executemany(
                "DELETE FROM assetcache_leases WHERE namespace = %s AND content_hash = %s "
                "AND variant = %s AND owner = %s",
                params,
            )

    def touch(self, key: Key, now: float) -> None:
        with self.write("record a use") as conn:
            conn.execute(
                "UPDATE assetcache_assets SET last_used_at = %s WHERE namespace = %s "
                "AND content_hash = %s AND variant = %s AND last_used_at < %s",
                (now, *key, now),
            )

    def add_counters(self, namespace: str, counts: dict[str, int]) -> None:
        items = [(namespace, name, n) for name, n in counts.items() if n]
        if not items:
            return
        with self.write("update counters") as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO assetcache_counters VALUES (%s, %s, %s) "
                "ON CONFLICT (namespace, name) DO UPDATE "
                "SET value = assetcache_counters.value + excluded.value",
                items,
            )

    def counters(self, namespace: str | None = None) -> dict[str, int]:
        if namespace is None:
            rows = self.read("SELECT name, SUM(value) FROM assetcache_counters GROUP BY name")
        else:
            rows = self.read(
                "SELECT name, value FROM assetcache_counters WHERE namespace = %s", (namespace,)
            )
        return {name: int(value) for name, value in rows}

    # -- maintenance: the SQLiteStore calls, in this dialect ---------------------------
    def select_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]:
        where, params = _asset_filter(namespace, used_after, used_before, "%s")
        fixed = ("namespace",) if namespace is not None else ()
        return paged_assets(self.read, "assetcache_assets", where, params, order, "%s", fixed=fixed)

    def export_lines(self, namespace: str | None, version: int) -> Iterator[str] | None:
        """``None``: the lines are built from :meth:`select_assets`."""
        return None

    def asset_totals(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
    ) -> tuple[int, int]:
        where, params = _asset_filter(namespace, used_after, used_before, "%s")
        n, total = self.read(
            f"SELECT count(*), coalesce(sum(size), 0) FROM assetcache_assets {where}",
            tuple(params),
            "count entries",
        )[0]
        return int(n), int(total)

    def local_rows(self, image_uuid: str) -> list[AssetRow]:
        """Rows a host keeps apart from the registry: none (see ``FleetRegistry``)."""
        return []

    def prune_assets(self, rows: Iterable[AssetRow]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.write("prune entries") as conn:
            self._lock_keys(conn, (r.key for r in rows))
            for r in rows:
                conn.execute(
                    "DELETE FROM assetcache_assets WHERE namespace = %s AND content_hash = %s "
                    "AND variant = %s AND last_used_at = %s",
                    (*r.key, r.last_used_at),
                )

    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int:
        clause = " AND image_uuid = %s" if image_uuid is not None else ""
        params: tuple[Any, ...] = (stamp, *key, stamp) + ((image_uuid,) if image_uuid else ())
        with self.write("invalidate an entry") as conn:
            self._lock_keys(conn, [key])
            return int(
                conn.execute(
                    "UPDATE assetcache_assets SET last_used_at = %s WHERE namespace = %s "
                    f"AND content_hash = %s AND variant = %s AND last_used_at > %s{clause}",
                    params,
                ).rowcount
            )

    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int:
        if dry_run:
            rows = self.read("SELECT count(*) FROM assetcache_leases WHERE expires_at < %s", (now,))
            return int(rows[0][0])
        with self.write("drop dead leases") as conn:
            return conn.execute(
                "DELETE FROM assetcache_leases WHERE expires_at < %s", (now,)
            ).rowcount

    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]:
        added = replaced = kept = 0
        rows = list(rows)
        with self.write("import entries") as conn:
            self._lock_keys(conn, (r.key for r in rows))
            for a in rows:
                old = conn.execute(
                    "SELECT last_used_at FROM assetcache_assets WHERE namespace = %s "
                    "AND content_hash = %s AND variant = %s",
                    a.key,
                ).fetchone()
                if _policy.keeps_existing(old[0] if old else None, a.last_used_at):
                    kept += 1
                    continue
                conn.execute(
                    f"INSERT INTO assetcache_assets ({_COLS}) VALUES "
                    f"({', '.join(['%s'] * len(ASSET_COLUMNS))}) "
                    "ON CONFLICT (namespace, content_hash, variant) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in ASSET_COLUMNS[3:]),
                    tuple(getattr(a, c) for c in ASSET_COLUMNS),
                )
                if old is None:
                    added += 1
                else:
                    replaced += 1
        return added, replaced, kept

    def delete_assets(self, keys: Iterable[Key]) -> int:
        params = list(keys)
        if not params:
            return 0
        with self.write("forget entries") as conn, conn.cursor() as cur:
            cur.executemany(
                "DELETE FROM assetcache_assets WHERE namespace = %s AND content_hash = %s "
                "AND variant = %s",
                params,
            )
            return cur.rowcount
