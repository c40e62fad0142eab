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

from .._errors import ConfigurationError, SchemaTooNew, StoreError
from ._base import Key, SQLRegistry

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


class PostgresRegistry(SQLRegistry):
    """The registry contract (``_base.Registry``) on a PostgreSQL server: the
    methods are :class:`~._base.SQLRegistry`'s, in this dialect.

    >>> reg = PostgresRegistry("postgresql://app@db.internal/assets")   # doctest: +SKIP
    """

    ASSETS = "assetcache_assets"
    LEASES = "assetcache_leases"
    COUNTERS = "assetcache_counters"
    MARK = "%s"

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

    # -- this dialect's part of the registry --------------------------------------
    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
            return int(cur.rowcount)

    def _lock_keys(self, conn: Any, keys: Iterable[Key]) -> None:
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
