"""The storage contract: rows, keys, and what every store must do.

Two interfaces, because the fleet setup splits them: the *file index*
(absolute path -> stat fingerprint -> content hash) always describes this
machine and stays in a local SQLite file (:class:`FileIndex`); the *registry*
(namespace + content hash + variant -> imageUUID, last use, counts, upload
leases, usage counters) may live in a shared store (:class:`Registry`).
``_sqlite.SQLiteStore`` implements both; ``_postgres.PostgresRegistry`` and
``_fleet.FleetRegistry`` the registry. Nothing outside this package holds SQL.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from .. import _policy

Key = tuple[str, str, str]  # (namespace, content_hash, variant)
#: Orders of :meth:`Registry.select_assets`: by last use (soonest to expire
#: first), or by key (stable, for exports).
Order = Literal["last_use", "key"]


@dataclass(frozen=True, slots=True)
class AssetRow:
    namespace: str
    content_hash: str
    variant: str
    image_uuid: str
    size: int
    format: str
    uploaded_at: float
    last_used_at: float
    upload_count: int = 1
    hits: int = 0
    bytes_sent: int = 0
    #: The ``imageURL``/``mediaURL`` the upload answer carried, when it did:
    #: an answer served from the cache carries it too (some clients need it).
    url: str | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.content_hash, self.variant)


ASSET_COLUMNS = tuple(AssetRow.__dataclass_fields__)
#: The sort columns of each :data:`Order`: unique, so a listing can resume
#: after any row (keyset pages); "last_use" is the order of SQLite's
#: ``assets_by_last_use`` index, which carries the primary key after the time.
ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "last_use": ("last_used_at", "namespace", "content_hash", "variant"),
    "key": ("namespace", "content_hash", "variant"),
}
#: Rows per keyset page of a listing: memory stays bounded whatever the
#: number of entries, and no cursor stays open while the caller works.
PAGE_ROWS = 2000


def paged_assets(
    read: Callable[[str, Sequence[Any], str], list[Any]],
    table: str,
    where: str,
    params: Sequence[Any],
    order: Order,
    mark: str = "?",
    fixed: Sequence[str] = (),
) -> Iterator[AssetRow]:
    """The rows of ``SELECT ... FROM table where`` in ``order``, a page at a time.

    ``fixed``: leading sort columns ``where`` holds equal (a namespace), left out
    of the seek so that it stays one range of the primary key."""
    cols = ORDER_COLUMNS[order]
    order_by = ", ".join(cols)
    seek_cols = cols[len(fixed) :] if tuple(cols[: len(fixed)]) == tuple(fixed) else cols
    seek = f"({', '.join(seek_cols)}) > ({', '.join([mark] * len(seek_cols))})"
    after: list[Any] | None = None
    while True:
        clause, args = where, list(params)
        if after is not None:
            clause = f"{where} AND {seek}" if where else f"WHERE {seek}"
            args += after
        rows = read(
            f"SELECT {', '.join(ASSET_COLUMNS)} FROM {table} {clause} "
            f"ORDER BY {order_by} LIMIT {PAGE_ROWS}",
            args,
            "list entries",
        )
        for row in rows:
            yield AssetRow(*row)
        if len(rows) < PAGE_ROWS:
            return
        last = AssetRow(*rows[-1])
        after = [getattr(last, c) for c in seek_cols]


@dataclass(frozen=True, slots=True)
class FileRow:
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    content_hash: str
    format: str | None
    hashed_at_ns: int
    # Pixel size of the content (``dimensions`` table; 0 when unreadable, None
    # when never recorded): decides the variant without reading the file again.
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """What an upload established, written in one transaction with its file rows."""

    namespace: str
    content_hash: str
    variant: str
    image_uuid: str
    size: int
    format: str
    now: float
    bytes_sent: int
    url: str | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.content_hash, self.variant)


class Registry(Protocol):
    """namespace + content hash + variant -> imageUUID; shared in a fleet.

    Leases: :meth:`claim` answers per key the fresh row, ``"claimed"`` or
    ``"held"``; :meth:`peek` the same read-only (``"free"`` for worth
    claiming). Rows are fresh when ``fresh_since < last_used_at <= fresh_until``
    (a row stamped further in the future is suspect: a clock ahead wrote it).
    :meth:`renew` is the heartbeat of an upload in flight, and its fencing
    (the keys whose lease is still the owner's).
    """

    path: str

    def get_asset(self, key: Key) -> AssetRow | None: ...
    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]: ...
    def find_uuid(self, image_uuid: str) -> list[AssetRow]: ...
    def find_uuids(self, image_uuids: Sequence[str]) -> dict[str, list[AssetRow]]: ...
    def claim(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        ttl: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]: ...
    def peek(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]: ...
    def record_uploads(
        self, records: Sequence[UploadRecord], owner: str, files: Sequence[FileRow] = ()
    ) -> None: ...
    def release(self, keys: Iterable[Key], owner: str) -> None: ...
    def renew(self, keys: Iterable[Key], owner: str, expires_at: float) -> set[Key]: ...
    def touch(self, key: Key, now: float) -> None: ...
    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int: ...
    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]: ...
    def select_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> list[AssetRow]: ...
    def iter_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]: ...
    def export_lines(self, namespace: str | None, version: int) -> Iterator[str] | None: ...
    def asset_totals(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
    ) -> tuple[int, int]: ...
    def newest_use(self, namespace: str | None = None) -> float | None: ...
    def prune_assets(self, rows: Iterable[AssetRow]) -> None: ...
    def delete_assets(self, keys: Iterable[Key]) -> int: ...
    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int: ...
    def add_counters(self, namespace: str, counts: dict[str, int]) -> None: ...
    def counters(self, namespace: str | None = None) -> dict[str, int]: ...
    def local_rows(self, image_uuid: str) -> list[AssetRow]: ...
    def close(self) -> None: ...


class FileIndex(Protocol):
    """This machine's absolute path -> stat fingerprint -> content hash."""

    path: str

    def lookup_path(
        self, key: bytes, namespace: str, variant: str, max_side: int = 0
    ) -> tuple[Any, ...] | None: ...
    def get_file(self, path: str) -> FileRow | None: ...
    def files_under(self, prefix: str) -> Iterator[FileRow]: ...
    def tracked_files(self) -> Iterator[FileRow]: ...
    def tracked_paths(self) -> Iterator[str]: ...
    def count_files(self) -> int: ...
    def paths_of(self, hashes: Iterable[str]) -> dict[str, tuple[str, ...]]: ...
    def put_files(self, rows: Iterable[FileRow]) -> None: ...
    def delete_files(self, paths: Iterable[str]) -> int: ...
    def fix_files(self, fixes: Sequence[FileRow], drops: Sequence[str]) -> None: ...
    def mark_served(self, served: Iterable[tuple[Key, float]]) -> None: ...
    def served_times(self, keys: Iterable[Key]) -> dict[Key, float]: ...
    def last_served(self, namespace: str | None = None) -> float | None: ...
    def close(self) -> None: ...


def _hostname() -> str:
    # os.uname() asks the kernel as socket.gethostname() does, without the
    # socket module's import cost on every start-up.
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


#: This process's own token: a lease naming this host and this pid but another
#: token was taken by a predecessor that had the same pid (a restarted
#: container's main process): it is dead. A forked child gets a token of its own.
_PROCESS_TOKEN = os.urandom(4).hex()


def _new_process_token() -> None:
    global _PROCESS_TOKEN
    _PROCESS_TOKEN = os.urandom(4).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process_token)


def owner_id() -> str:
    """Identify a lease owner: ``host:pid:process token:cache token`` (several
    caches in one process are distinct owners, all alive while the process is)."""
    return f"{_hostname()}:{os.getpid()}:{_PROCESS_TOKEN}:{os.urandom(4).hex()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner provably died: same host and no such process, or
    this very pid with another process token (a predecessor that had our pid)."""
    host, _, rest = owner.partition(":")
    pid_text, _, tokens = rest.partition(":")
    if host != _hostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return tokens.partition(":")[0] == _PROCESS_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- migrations --------------------------------------------------------------

_SIG = struct.Struct("<QQQqq")


def file_sig(dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> bytes:
    """The ``files.sig`` of a stat result: its five compared fields, packed.

    Fields beyond 64 bits (128-bit inode numbers exist) get a longer text form,
    which can never equal a packed one.
    """
    try:
        return _SIG.pack(dev, ino, size, mtime_ns, ctime_ns)
    except struct.error:
        return b"%d,%d,%d,%d,%d;" % (dev, ino, size, mtime_ns, ctime_ns) + b"\0" * 40


def row_sig(row: Sequence[Any]) -> bytes:
    """The ``files.sig`` of a ``(path, dev, ino, size, mtime_ns, ctime_ns, ...)`` row;
    empty, which matches no file, when a field is not an integer (salvaged rows)."""
    fields = row[1:6]
    if len(fields) == 5 and all(type(v) is int for v in fields):
        return file_sig(*fields)
    return b""


def path_key(path: str) -> bytes:
    """The files-table key of an absolute path (bytes: any filename is storable)."""
    return os.fsencode(path)


# -- the registry, written once for both SQL dialects ---------------------------------------


class SQLRegistry:
    """Every :class:`Registry` method, written once for SQLite and PostgreSQL.

    A dialect names its tables and placeholder and supplies four operations:
    :meth:`write` (a transaction), :meth:`read`, :meth:`_many` (one statement
    over many rows) and :meth:`_lock_keys` (serialise writers of a key: a
    no-op where the transaction holds the whole write lock, as SQLite's
    ``BEGIN IMMEDIATE`` does). Decisions come from ``_policy``: the lease rule
    and the merge rule are not re-written inside any SQL.
    """

    path: str
    #: Upload leases this process took over from a dead or expired owner (metrics).
    takeovers: int = 0
    ASSETS = "assets"
    #: What reads select asset rows from (``ASSET_COLUMNS``, namespaces by name):
    #: the table itself, or a view where the table stores namespaces compactly.
    ROWS = ""
    #: How writes name a row's namespace: the column, and the value of a
    #: namespace name bound as ``?`` (a subquery where the column holds an id).
    NS_COLUMN = "namespace"
    NS_VALUE = "?"
    #: Reads by UUID: the condition on one bound ``?`` (an index may hold a prefix).
    UUID_IS = "image_uuid = ?"
    #: Reads by content hash alone: what scopes them to an index (nothing, or
    #: "any namespace" where the primary key starts with the namespace).
    ANY_NAMESPACE = ""
    LEASES = "leases"
    COUNTERS = "counters"
    #: The driver's placeholder.
    MARK = "?"
    #: Bound parameters per IN list (SQLite caps them per statement).
    CHUNK = 500

    # -- what a dialect supplies -------------------------------------------------------
    def write(self, doing: str = "write") -> AbstractContextManager[Any]:
        raise NotImplementedError

    def read(self, sql: str, params: Sequence[Any] = (), doing: str = "read") -> list[Any]:
        raise NotImplementedError

    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        raise NotImplementedError

    def _lock_keys(self, conn: Any, keys: Iterable[Key]) -> None:
        """Serialise the writers of these keys for the rest of the transaction."""

    def _record_files(self, conn: Any, files: Sequence[FileRow]) -> None:
        """Write file rows with an upload (only where the file index lives too)."""

    def _upsert_rows(self, conn: Any, rows: Sequence[AssetRow]) -> None:
        """Store whole rows (import), replacing what the keys held."""
        self._add_namespaces(conn, {r.namespace for r in rows})
        self._many(conn, self._q(_UPSERT_ROW), [_values(r) for r in rows])

    def _add_namespaces(self, conn: Any, names: Iterable[str]) -> None:
        """Make these namespaces writable (where rows refer to them by id)."""

    def _q(self, sql: str) -> str:
        return _render(self._dialect, sql)

    @functools.cached_property
    def _dialect(self) -> _Dialect:
        return _Dialect(
            self.ASSETS,
            self.ROWS or self.ASSETS,
            self.LEASES,
            self.COUNTERS,
            self.MARK,
            self.NS_COLUMN,
            self.NS_VALUE,
            self.UUID_IS,
            self.ANY_NAMESPACE,
        )

    def _read_q(self, sql: str, params: Sequence[Any], doing: str) -> list[Any]:
        """:meth:`read` of a statement written with ``{assets}`` and ``?``."""
        return self.read(self._q(sql), params, doing)

    def _listing_where(self, where: str, order: Order) -> str:
        """The WHERE clause of a listing, as this dialect's planner likes it best."""
        return where

    # -- reading ---------------------------------------------------------------------------
    def get_asset(self, key: Key) -> AssetRow | None:
        rows = self.read(self._q(_SELECT_KEY), key, "look up an asset")
        return AssetRow(*rows[0]) if rows else None

    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        """The rows of many keys, in a few queries (not one per key)."""
        wanted = set(keys)
        out: dict[Key, AssetRow] = {}
        for part in self._chunks(sorted({k[1] for k in wanted})):
            for row in self.read(self._in(_SELECT_HASHES, len(part)), part, "look up entries"):
                asset = AssetRow(*row)
                if asset.key in wanted:
                    out[asset.key] = asset
        return out

    def find_uuid(self, image_uuid: str) -> list[AssetRow]:
        rows = self.read(self._q(_SELECT_UUID), (image_uuid,), "look up a UUID")
        return [AssetRow(*r) for r in rows]

    def find_uuids(self, image_uuids: Sequence[str]) -> dict[str, list[AssetRow]]:
        """:meth:`find_uuid` for many UUIDs (vetting a request's answers): ``{uuid:
        rows}``, only for the UUIDs some row holds. One query per UUID here; a
        backend may do better."""
        out: dict[str, list[AssetRow]] = {}
        for image_uuid in dict.fromkeys(image_uuids):
            rows = self.find_uuid(image_uuid)
            if rows:
                out[image_uuid] = rows
        return out

    def local_rows(self, image_uuid: str) -> list[AssetRow]:
        """Rows a host keeps apart from the registry: none here (see the fleet's)."""
        return []

    def select_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> list[AssetRow]:
        """Rows of ``namespace`` (all: ``None``) with ``used_after < last_used_at <=
        used_before`` (either bound optional), soonest to expire or by key first."""
        return list(
            self.iter_assets(
                namespace=namespace, used_after=used_after, used_before=used_before, order=order
            )
        )

    def iter_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]:
        """:meth:`select_assets`, lazily: in keyset pages of :data:`PAGE_ROWS` rows
        (memory stays bounded, and no cursor stays open while the caller works)."""
        where, params = asset_filter(namespace, used_after, used_before)
        fixed = ("namespace",) if namespace is not None else ()
        return paged_assets(
            self._read_q, "{rows}", self._listing_where(where, order), params, order, fixed=fixed
        )

    def export_lines(self, namespace: str | None, version: int) -> Iterator[str] | None:
        """The export's JSON lines built by the database itself, or ``None``: the
        caller builds them from :meth:`iter_assets` (``order="key"``)."""
        return None

    def asset_totals(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
    ) -> tuple[int, int]:
        """``(entries, bytes)`` of ``namespace`` (all: ``None``), optionally of the
        rows with ``used_after < last_used_at <= used_before``."""
        where, params = asset_filter(namespace, used_after, used_before)
        # Without a namespace no view is needed: the table holds size and last use.
        table = "{rows}" if namespace is not None else "{assets}"
        sql = self._q(f"SELECT count(*), coalesce(sum(size), 0) FROM {table} {where}")
        n, total = self.read(sql, params, "count entries")[0]
        return int(n), int(total)

    def newest_use(self, namespace: str | None = None) -> float | None:
        """The last use of the entry of ``namespace`` (all: ``None``) used last, if
        any: read off the index of last uses, not row by row."""
        where, params = asset_filter(namespace, None, None)
        table = "{rows}" if namespace is not None else "{assets}"
        sql = self._q(f"SELECT max(last_used_at) FROM {table} {where}")
        (newest,) = self.read(sql, params, "find the newest use")[0]
        return None if newest is None else float(newest)

    def counters(self, namespace: str | None = None) -> dict[str, int]:
        if namespace is None:
            rows = self.read(self._q(_SUM_COUNTERS), (), "read counters")
        else:
            rows = self.read(self._q(_NS_COUNTERS), (namespace,), "read counters")
        return {name: int(value) for name, value in rows}

    # -- leases ------------------------------------------------------------------------------
    def claim(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        ttl: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        """Claim the right to upload each key, in one transaction.

        Per key: the fresh :class:`AssetRow` if one appeared meanwhile
        (``fresh_since < last_used_at <= fresh_until``), ``"claimed"`` (we hold
        the lease now), or ``"held"`` (a live owner holds an unexpired lease).
        """
        with self.write("claim uploads") as conn:
            self._lock_keys(conn, keys)
            assets, leases = self._rows_of(conn, keys)
            out = self._judge(keys, assets, leases, owner, now, fresh_since, fresh_until)
            free = [k for k, v in out.items() if v == "free"]
            if free:
                self._many(conn, self._q(_UPSERT_LEASE), [(*k, owner, now + ttl) for k in free])
        # A free key whose lease another owner held: taken over (dead or expired owner).
        taken = sum(1 for k in free if k in leases and leases[k][0] != owner)
        if taken:
            self.takeovers = getattr(self, "takeovers", 0) + taken
        out.update(dict.fromkeys(free, "claimed"))
        return out

    def peek(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        """Read-only :meth:`claim` (no locks): per key the fresh row, ``"held"``
        (another live owner's lease) or ``"free"`` (worth claiming)."""
        assets = self.get_assets(keys)
        leases: dict[Key, tuple[str, float]] = {}
        for part in self._chunks(sorted({k[1] for k in keys})):
            for ns, digest, variant, lease_owner, expires in self.read(
                self._in(_SELECT_LEASES, len(part)), part, "look up leases"
            ):
                leases[(ns, digest, variant)] = (lease_owner, expires)
        return self._judge(keys, assets, leases, owner, now, fresh_since, fresh_until)

    @staticmethod
    def _judge(
        keys: Sequence[Key],
        assets: dict[Key, AssetRow],
        leases: dict[Key, tuple[str, float]],
        owner: str,
        now: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        out: dict[Key, AssetRow | str] = {}
        for key in keys:
            row = assets.get(key)
            # A row stamped beyond ``fresh_until`` is suspect (a clock ahead): not fresh.
            if row is not None and fresh_since < row.last_used_at <= fresh_until:
                out[key] = row
            elif _policy.lease_held(leases.get(key), owner, now, owner_alive):
                out[key] = "held"
            else:
                out[key] = "free"
        return out

    def _rows_of(
        self, conn: Any, keys: Sequence[Key]
    ) -> tuple[dict[Key, AssetRow], dict[Key, tuple[str, float]]]:
        """Asset rows and leases of ``keys``, read inside a transaction."""
        wanted = set(keys)
        assets: dict[Key, AssetRow] = {}
        leases: dict[Key, tuple[str, float]] = {}
        for part in self._chunks(sorted({k[1] for k in wanted})):
            for r in conn.execute(self._in(_SELECT_HASHES, len(part)), part).fetchall():
                asset = AssetRow(*r)
                if asset.key in wanted:
                    assets[asset.key] = asset
            for ns, digest, variant, lease_owner, expires in conn.execute(
                self._in(_SELECT_LEASES, len(part)), part
            ).fetchall():
                leases[(ns, digest, variant)] = (lease_owner, expires)
        return assets, leases

    def release(self, keys: Iterable[Key], owner: str) -> None:
        keys = list(keys)
        if not keys:
            return
        with self.write("release upload leases") as conn:
            self._lock_keys(conn, keys)
            self._many(conn, self._q(_DELETE_LEASE), [(*k, owner) for k in keys])

    def renew(self, keys: Iterable[Key], owner: str, expires_at: float) -> set[Key]:
        """Extend the leases ``owner`` still holds (the heartbeat of an upload in
        flight); the keys it still holds (the fencing before an upload)."""
        keys = sorted(set(keys))
        if not keys:
            return set()
        with self.write("renew upload leases") as conn:
            self._many(conn, self._q(_RENEW_LEASE), [(expires_at, *k, owner) for k in keys])
            leases = self._rows_of(conn, keys)[1]
        return {k for k in keys if (lease := leases.get(k)) is not None and lease[0] == owner}

    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int:
        if dry_run:
            return int(self.read(self._q(_COUNT_DEAD_LEASES), (now,), "count leases")[0][0])
        with self.write("drop dead leases") as conn:
            return int(conn.execute(self._q(_DELETE_DEAD_LEASES), (now,)).rowcount)

    # -- writing -----------------------------------------------------------------------------
    def record_uploads(
        self, records: Sequence[UploadRecord], owner: str, files: Sequence[FileRow] = ()
    ) -> None:
        """Store what uploads returned (with their file rows) and drop their leases."""
        if not records and not files:
            return
        with self.write("record uploads") as conn:
            if records:
                self._lock_keys(conn, (r.key for r in records))
                self._add_namespaces(conn, {r.namespace for r in records})
                self._many(
                    conn,
                    self._q(_UPSERT_UPLOAD),
                    [
                        (*r.key, r.image_uuid, r.size, r.format, r.now, r.now, r.bytes_sent, r.url)
                        for r in records
                    ],
                )
                self._many(conn, self._q(_DELETE_LEASE), [(*r.key, owner) for r in records])
            self._record_files(conn, files)

    def touch(self, key: Key, now: float) -> None:
        """Slide the window: ``last_used_at = now`` unless it is already later."""
        with self.write("record a use") as conn:
            conn.execute(self._q(_TOUCH), (now, *key, now))

    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int:
        """Move ``last_used_at`` back to ``stamp`` (never forward): the server no longer
        holds the upload. With ``image_uuid``, only while the row still holds it."""
        sql, params = _EXPIRE, [stamp, *key, stamp]
        if image_uuid is not None:
            sql, params = _EXPIRE + " AND image_uuid = ?", [*params, image_uuid]
        with self.write("invalidate an entry") as conn:
            self._lock_keys(conn, [key])
            return int(conn.execute(self._q(sql), params).rowcount)

    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]:
        """Import rows; one never replaces a fresher one. ``(added, replaced, kept)``."""
        rows = list(rows)
        added = replaced = kept = 0
        with self.write("import entries") as conn:
            keys = [r.key for r in rows]
            self._lock_keys(conn, keys)
            current = {k: r.last_used_at for k, r in self._rows_of(conn, keys)[0].items()}
            winners: dict[Key, AssetRow] = {}
            for a in rows:
                old = current.get(a.key)
                if _policy.keeps_existing(old, a.last_used_at):
                    kept += 1
                    continue
                added, replaced = (added + 1, replaced) if old is None else (added, replaced + 1)
                current[a.key] = a.last_used_at
                winners[a.key] = a
            if winners:
                self._upsert_rows(conn, list(winners.values()))
        return added, replaced, kept

    def prune_assets(self, rows: Iterable[AssetRow]) -> None:
        """Delete these rows unless they were used since they were read."""
        rows = list(rows)
        if not rows:
            return
        with self.write("prune entries") as conn:
            self._lock_keys(conn, (r.key for r in rows))
            self._many(conn, self._q(_PRUNE), [(*r.key, r.last_used_at) for r in rows])

    def delete_assets(self, keys: Iterable[Key]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        with self.write("forget entries") as conn:
            return self._many(conn, self._q(_DELETE_KEY), keys)

    def add_counters(self, namespace: str, counts: dict[str, int]) -> None:
        items = [(namespace, name, n) for name, n in counts.items() if n]
        if not items:
            return
        with self.write("update counters") as conn:
            self._many(conn, self._q(_ADD_COUNTERS), items)

    # -- plumbing ------------------------------------------------------------------------------
    def _chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        for start in range(0, len(values), self.CHUNK):
            yield list(values[start : start + self.CHUNK])

    def _in(self, sql: str, n: int) -> str:
        """``sql`` with its ``(...)`` IN list made of ``n`` placeholders."""
        return self._q(sql.replace("(...)", f"({', '.join('?' * n)})"))


_COLS = ", ".join(ASSET_COLUMNS)
_KEY = "namespace = ? AND content_hash = ? AND variant = ?"
#: The key of a row to write (the namespace as the table stores it).
_WKEY = "{ns_column} = {ns_value} AND content_hash = ? AND variant = ?"
_SELECT_KEY = f"SELECT {_COLS} FROM {{rows}} WHERE {_KEY}"
_SELECT_HASHES = f"SELECT {_COLS} FROM {{rows}} WHERE {{any_namespace}}content_hash IN (...)"
_SELECT_UUID = f"SELECT {_COLS} FROM {{rows}} WHERE {{uuid_is}}"
_SELECT_LEASES = (
    "SELECT namespace, content_hash, variant, owner, expires_at FROM {leases} "
    "WHERE content_hash IN (...)"
)
_UPSERT_LEASE = (
    "INSERT INTO {leases} (namespace, content_hash, variant, owner, expires_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, content_hash, variant) DO UPDATE "
    "SET owner = excluded.owner, expires_at = excluded.expires_at"
)
_DELETE_LEASE = f"DELETE FROM {{leases}} WHERE {_KEY} AND owner = ?"
_RENEW_LEASE = f"UPDATE {{leases}} SET expires_at = ? WHERE {_KEY} AND owner = ?"
_COUNT_DEAD_LEASES = "SELECT count(*) FROM {leases} WHERE expires_at < ?"
_DELETE_DEAD_LEASES = "DELETE FROM {leases} WHERE expires_at < ?"
_UPSERT_UPLOAD = (
    "INSERT INTO {assets} ({ns_column}, content_hash, variant, image_uuid, size, format, "
    "uploaded_at, last_used_at, upload_count, hits, bytes_sent, url) "
    "VALUES ({ns_value}, ?, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?) "
    "ON CONFLICT ({ns_column}, content_hash, variant) DO UPDATE SET "
    "image_uuid = excluded.image_uuid, size = excluded.size, format = excluded.format, "
    "uploaded_at = excluded.uploaded_at, last_used_at = excluded.last_used_at, "
    "upload_count = {assets}.upload_count + 1, "
    "bytes_sent = {assets}.bytes_sent + excluded.bytes_sent, url = excluded.url"
)
_UPSERT_ROW = (
    f"INSERT INTO {{assets}} ({{ns_column}}, {', '.join(ASSET_COLUMNS[1:])}) "
    f"VALUES ({{ns_value}}, {', '.join('?' * (len(ASSET_COLUMNS) - 1))}) "
    "ON CONFLICT ({ns_column}, content_hash, variant) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ASSET_COLUMNS[3:])
)
_TOUCH = f"UPDATE {{assets}} SET last_used_at = ? WHERE {_WKEY} AND last_used_at < ?"
_EXPIRE = f"UPDATE {{assets}} SET last_used_at = ? WHERE {_WKEY} AND last_used_at > ?"
_PRUNE = f"DELETE FROM {{assets}} WHERE {_WKEY} AND last_used_at = ?"
_DELETE_KEY = f"DELETE FROM {{assets}} WHERE {_WKEY}"
_ADD_COUNTERS = (
    "INSERT INTO {counters} (namespace, name, value) VALUES (?, ?, ?) "
    "ON CONFLICT (namespace, name) DO UPDATE SET value = {counters}.value + excluded.value"
)
_SUM_COUNTERS = "SELECT name, SUM(value) FROM {counters} GROUP BY name"
_NS_COUNTERS = "SELECT name, value FROM {counters} WHERE namespace = ?"


def _values(row: AssetRow) -> tuple[Any, ...]:
    return tuple(getattr(row, c) for c in ASSET_COLUMNS)


class _Dialect(NamedTuple):
    """What a statement template (``{assets}``, ``{rows}``, ... and ``?``) needs."""

    assets: str
    rows: str
    leases: str
    counters: str
    mark: str
    ns_column: str
    ns_value: str
    uuid_is: str
    any_namespace: str


@functools.lru_cache(maxsize=512)
def _render(dialect: _Dialect, sql: str) -> str:
    """A statement in a dialect: its table names and placeholder, rendered once."""
    text = sql.format(**{k: v for k, v in dialect._asdict().items() if k != "mark"})
    return text.replace("?", dialect.mark) if dialect.mark != "?" else text


def asset_filter(
    namespace: str | None, used_after: float | None, used_before: float | None
) -> tuple[str, list[Any]]:
    """The WHERE clause of the typed asset queries (``?`` placeholders)."""
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("namespace = ?", namespace),
        ("last_used_at > ?", used_after),
        ("last_used_at <= ?", used_before),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
