"""The SQLite store: this machine's file index and its asset registry in one file.

Implements both contracts of ``_base`` (:class:`~._base.FileIndex` and
:class:`~._base.Registry`).

Concurrency: one connection per thread (sqlite3 connections are not shared
across threads), WAL so readers never block the writer, every write inside an
explicit ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a
transaction never fails half-way on lock upgrade), and never a transaction
held across a network call.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import SchemaTooNew, StoreError
from ._base import (
    ASSET_COLUMNS,
    ORDERS,
    AssetRow,
    FileRow,
    Order,
    SQLRegistry,
    _values,
    asset_filter,
    file_sig,
    path_key,
    row_sig,
)

if TYPE_CHECKING:
    import sqlite_utils

#: Pragmas set on every connection, each for a reason.
PRAGMAS = (
    # Writers wait (up to 30 s) for the lock instead of failing with "database is locked".
    "PRAGMA busy_timeout = 30000",
    # With WAL, NORMAL never corrupts; at worst the last commits roll back on power loss,
    # which for a cache means one re-upload.
    "PRAGMA synchronous = NORMAL",
    # Read-mostly table lookups: keep the index pages mapped instead of copied.
    "PRAGMA mmap_size = 268435456",
    "PRAGMA temp_store = MEMORY",
)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it COMMITs first, which would break the
    # migration's BEGIN IMMEDIATE and let two processes migrate at once.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _m1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE assets (
            namespace TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            variant TEXT NOT NULL DEFAULT '',
            image_uuid TEXT NOT NULL,
            size INTEGER NOT NULL,
            format TEXT NOT NULL,
            uploaded_at REAL NOT NULL,
            last_used_at REAL NOT NULL,
            upload_count INTEGER NOT NULL DEFAULT 1,
            hits INTEGER NOT NULL DEFAULT 0,
            bytes_sent INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (namespace, content_hash, variant)
        ) WITHOUT ROWID;
        CREATE INDEX assets_by_uuid ON assets (image_uuid);
        CREATE INDEX assets_by_last_use ON assets (last_used_at);
        CREATE TABLE files (
            path BLOB PRIMARY KEY,
            dev INTEGER NOT NULL,
            ino INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            format TEXT,
            hashed_at_ns INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX files_by_hash ON files (content_hash);
        CREATE TABLE leases (
            namespace TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            variant TEXT NOT NULL,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (namespace, content_hash, variant)
        ) WITHOUT ROWID;
        CREATE TABLE counters (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            value INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (namespace, name)
        ) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    )


def _m2(conn: sqlite3.Connection) -> None:
    # Keyed by content, not path: a size never goes stale, and the files table
    # (whose column list other code relies on) stays as it is.
    conn.execute(
        "CREATE TABLE dimensions (content_hash TEXT PRIMARY KEY, width INTEGER NOT NULL, "
        "height INTEGER NOT NULL) WITHOUT ROWID"
    )


def _m3(conn: sqlite3.Connection) -> None:
    # ``status`` compares one packed signature per file instead of five integer
    # columns, and picks the per-image variant from the row itself (``side``:
    # the longer pixel side, 0 unreadable, NULL unknown) without a join.
    conn.execute("ALTER TABLE files ADD COLUMN sig BLOB NOT NULL DEFAULT x''")
    conn.execute("ALTER TABLE files ADD COLUMN side INTEGER")
    rows = conn.execute("SELECT path, dev, ino, size, mtime_ns, ctime_ns FROM files").fetchall()
    conn.executemany(
        "UPDATE files SET sig = ? WHERE path = ?", [(file_sig(*r[1:]), r[0]) for r in rows]
    )
    conn.execute(
        "UPDATE files SET side = (SELECT max(d.width, d.height) FROM dimensions d "
        "WHERE d.content_hash = files.content_hash)"
    )


#: Bumped by triggers whenever a file row changes in any way, or an asset row
#: goes away or gets older (deleted, replaced by an older row, ``last_used_at``
#: moved back): what ``status`` remembers about fresh ranges of files (see
#: ``_m4``) holds only while it is unchanged. Uses only make entries fresher
#: and hits write nothing, so neither touches it.
_BUMP = "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'scan_gen'"


def _m4(conn: sqlite3.Connection) -> None:
    # ``status`` of a big folder remembers, per range of paths whose files
    # were all fresh, a digest of those files' paths and stat data as found on
    # disk, their number and their oldest use. While the generation is the
    # same, the file rows and their assets are as they were: a range whose
    # files on disk still match the digest is still fresh until that oldest
    # use ages, with no read of its rows at all.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS scan_marks (namespace TEXT NOT NULL, view TEXT NOT NULL, "
        "lo BLOB NOT NULL, hi BLOB NOT NULL, digest BLOB NOT NULL, oldest_use REAL NOT NULL, "
        "files INTEGER NOT NULL, gen INTEGER NOT NULL, PRIMARY KEY (namespace, view, lo)) "
        "WITHOUT ROWID"
    )
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('scan_gen', '0')")
    # Triggers hold whatever code writes (one statement each: the script
    # splitter would cut them at their inner semicolons).
    for event in ("INSERT", "UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS scan_gen_files_{event.lower()} AFTER {event} ON files "
            f"BEGIN {_BUMP}; END"
        )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS scan_gen_assets_delete AFTER DELETE ON assets "
        f"BEGIN {_BUMP}; END"
    )
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS scan_gen_assets_update AFTER UPDATE ON assets "
        "WHEN new.last_used_at < old.last_used_at OR new.namespace IS NOT old.namespace "
        "OR new.content_hash IS NOT old.content_hash OR new.variant IS NOT old.variant "
        f"BEGIN {_BUMP}; END"
    )
    # INSERT OR REPLACE deletes without firing delete triggers: catch a newer
    # row about to be replaced by an older one before it happens.
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS scan_gen_assets_replace BEFORE INSERT ON assets "
        "WHEN EXISTS (SELECT 1 FROM assets a WHERE a.namespace = new.namespace "
        "AND a.content_hash = new.content_hash AND a.variant = new.variant "
        f"AND a.last_used_at > new.last_used_at) BEGIN {_BUMP}; END"
    )


#: Numbered migrations; ``PRAGMA user_version`` holds the number applied last.
MIGRATIONS: tuple[Any, ...] = (_m1, _m2, _m3, _m4)
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore(SQLRegistry):
    """File index + registry in one SQLite file.

    >>> store = SQLiteStore("/tmp/cache.db")   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._prepare_file()
        self._migrate()

    # -- connections -----------------------------------------------------
    def _prepare_file(self) -> None:
        folder = os.path.dirname(self.path)
        try:
            _private_dirs(folder)
            # Created 0600 before SQLite sees it; SQLite gives -wal/-shm the same mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot create the cache database {self.path}: {exc.strerror or exc}",
                path=self.path,
            ) from None

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"the cache database {self.path} is closed", path=self.path)
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            for pragma in PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of this thread's connection (maintenance paths)."""
        return utils(self.conn())

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._closed = True
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def _error(self, exc: sqlite3.Error, doing: str = "use") -> StoreError:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            reason = "is not a valid SQLite database (run `assetcache doctor --fix` to rebuild it)"
        elif "unable to open" in text:
            reason = "cannot be opened (check the folder exists and is writable)"
        elif "readonly" in text:
            reason = "is read-only"
        elif "locked" in text:
            reason = "stayed locked by another process for 30 s"
        else:
            reason = f"failed: {text}"
        return StoreError(
            f"cache database {self.path} {reason} (while trying to {doing})", path=self.path
        )

    @contextlib.contextmanager
    def write(self, doing: str = "write") -> Iterator[sqlite3.Connection]:
        """An explicit ``BEGIN IMMEDIATE`` transaction on this thread's connection."""
        conn = self.conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from None
        try:
            yield conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):  # a statement in the block: one clear message
                raise self._error(exc, doing) from None
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise self._error(exc, doing) from None

    def read(self, sql: str, params: Sequence[Any] = (), doing: str = "read") -> list[Any]:
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from None

    def _migrate(self) -> None:
        # Our own migrations on raw sqlite3: the version check and every step run
        # under one BEGIN IMMEDIATE after re-reading user_version, so processes
        # starting at once migrate one after the other. sqlite-utils 4's
        # Migrations is not safe then, executescript() would COMMIT mid-way, and
        # sqlite-utils' create() cannot make the WITHOUT ROWID tables the hit path uses.
        conn = self.conn()
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"cache database {self.path} was written by a newer assetcache "
                    f"(schema {version}, this version reads up to {SCHEMA_VERSION}); "
                    "upgrade assetcache or point --db elsewhere",
                    path=self.path,
                )
            if version == SCHEMA_VERSION:
                return
            # WAL is a property of the file: set once, before the first write.
            _enable_wal(conn)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc, "open") from None
        except SchemaTooNew:
            self.close()
            raise
        with self.write("migrate the schema") as conn:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, SCHEMA_VERSION):
                MIGRATIONS[number](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])

    # -- file index ------------------------------------------------------
    #: The hot path: one indexed lookup joining the stat row to its asset row.
    HIT_SQL = (
        "SELECT f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.hashed_at_ns, f.content_hash, "
        "f.format, a.image_uuid, a.last_used_at, a.size, a.variant "
        "FROM files f LEFT JOIN assets a "
        "ON a.namespace = ? AND a.content_hash = f.content_hash AND a.variant = ? "
        "WHERE f.path = ?"
    )
    #: The same when the client transforms images: the variant is per image,
    #: ``_transform.Transform.variant_for`` in SQL (keep both in step), on the
    #: longer side recorded with the row. An unknown size matches nothing, so
    #: the slow path reads and records it.
    FIT_HIT_SQL = (
        "SELECT f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.hashed_at_ns, f.content_hash, "
        "f.format, a.image_uuid, a.last_used_at, a.size, a.variant "
        "FROM files f LEFT JOIN assets a ON a.namespace = ? AND a.content_hash = f.content_hash "
        "AND a.variant = CASE WHEN f.format IN ('bmp', 'gif') THEN ? "
        "WHEN f.side IS NULL THEN NULL WHEN f.side > ? THEN ? ELSE '' END "
        "WHERE f.path = ?"
    )

    #: ``status``: a page of the file rows of a path range, in path order, as
    #: ``(path, sig, racy, content_hash, image_uuid, last_used_at)``: joined to
    #: their asset rows, the variant chosen as in the hit path above; ``racy``
    #: is git's racily-clean test (``max(mtime, ctime) + window > hashed_at``).
    SCAN_SQL = (
        "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
        "f.content_hash, a.image_uuid, a.last_used_at "
        "FROM files f LEFT JOIN assets a "
        "ON a.namespace = ? AND a.content_hash = f.content_hash AND a.variant = ? "
        "WHERE f.path >= ? AND f.path < ? ORDER BY f.path LIMIT ?"
    )
    FIT_SCAN_SQL = (
        "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
        "f.content_hash, a.image_uuid, a.last_used_at "
        "FROM files f LEFT JOIN assets a ON a.namespace = ? AND a.content_hash = f.content_hash "
        "AND a.variant = CASE WHEN f.format IN ('bmp', 'gif') THEN ? "
        "WHEN f.side IS NULL THEN NULL WHEN f.side > ? THEN ? ELSE '' END "
        "WHERE f.path >= ? AND f.path < ? ORDER BY f.path LIMIT ?"
    )
    #: The same without the join, for a caller holding the asset rows: the last
    #: column says which variant applies (0 untouched, 1 transformed, NULL unknown).
    SCAN_FILES_SQL = (
        "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
        "f.content_hash, 0 FROM files f WHERE f.path >= ? AND f.path < ? ORDER BY f.path LIMIT ?"
    )
    FIT_SCAN_FILES_SQL = (
        "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
        "f.content_hash, CASE WHEN f.format IN ('bmp', 'gif') THEN 1 "
        "WHEN f.side IS NULL THEN NULL WHEN f.side > ? THEN 1 ELSE 0 END "
        "FROM files f WHERE f.path >= ? AND f.path < ? ORDER BY f.path LIMIT ?"
    )

    #: ``status``: one range of file rows summed up in one row: their
    #: ``sig || path || NUL`` concatenated in path order (to hold against the
    #: folder) and how many are racily clean. SQLite concatenates in scan
    #: order (the primary key's); were it ever otherwise, the range would only
    #: be judged file by file.
    TILE_SQL = (
        "SELECT CAST(group_concat(sig || path || x'00', '') AS BLOB), "
        "total(hashed_at_ns - max(mtime_ns, ctime_ns) < ?) "
        "FROM files WHERE path >= ? AND path < ?"
    )
    MARKS_SQL = (
        "SELECT lo, hi, digest, oldest_use, files FROM scan_marks WHERE namespace = ? "
        "AND view = ? AND lo >= ? AND lo < ? AND gen = ? ORDER BY lo"
    )
    GEN_SQL = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'scan_gen'"
    #: ``status``: how many rows a path range holds, and where its n-th row is
    #: (to split a big folder with a helper process).
    COUNT_SQL = "SELECT count(*) FROM files WHERE path >= ? AND path < ?"
    NTH_SQL = "SELECT path FROM files WHERE path >= ? AND path < ? ORDER BY path LIMIT 1 OFFSET ?"

    def save_scan_marks(
        self,
        namespace: str,
        view: str,
        gen: int,
        marks: Sequence[tuple[bytes, bytes, bytes, float, int]],
    ) -> None:
        """Remember ranges ``status`` found all fresh (``(lo, hi, digest, oldest_use,
        files)``), as of generation ``gen``; marks of older generations go."""
        with self.write("remember fresh ranges") as conn:
            conn.execute("DELETE FROM scan_marks WHERE gen <> ?", (gen,))
            conn.executemany(
                "INSERT OR REPLACE INTO scan_marks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(namespace, view, *mark, gen) for mark in marks],
            )

    @classmethod
    def scan_query(
        cls,
        namespace: str,
        variant: str,
        max_side: int,
        racy_ns: int,
        lo: bytes,
        hi: bytes,
        limit: int,
        *,
        join: bool = True,
    ) -> tuple[str, tuple[Any, ...]]:
        """SQL and parameters of one page of :attr:`SCAN_SQL` (``lo <= path < hi``);
        with ``join=False``, of :attr:`SCAN_FILES_SQL`."""
        fit = bool(variant and max_side)
        if not join:
            if fit:
                return cls.FIT_SCAN_FILES_SQL, (racy_ns, max_side, lo, hi, limit)
            return cls.SCAN_FILES_SQL, (racy_ns, lo, hi, limit)
        if fit:
            return cls.FIT_SCAN_SQL, (racy_ns, namespace, variant, max_side, variant, lo, hi, limit)
        return cls.SCAN_SQL, (racy_ns, namespace, variant, lo, hi, limit)

    def lookup_path(
        self, key: bytes, namespace: str, variant: str, max_side: int = 0
    ) -> tuple[Any, ...] | None:
        """Stat row + asset row of a path; ``variant``/``max_side`` from the transform, if any."""
        # Raw sqlite3, not sqlite-utils: its query() wraps each statement in a
        # SAVEPOINT and builds a dict per row, which measured 2x a bare
        # execute().fetchone() of HIT_SQL (138 us vs 69 us, same loaded machine),
        # and the warm hit is held to 2x the stat + SELECT floor (bench_hit.py).
        try:
            if variant and max_side:
                return (
                    self.conn()
                    .execute(self.FIT_HIT_SQL, (namespace, variant, max_side, variant, key))
                    .fetchone()
                )
            return self.conn().execute(self.HIT_SQL, (namespace, variant, key)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, "look up a file") from None

    def get_file(self, path: str) -> FileRow | None:
        rows = self.read(
            "SELECT f.path, f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.content_hash, "
            "f.format, f.hashed_at_ns, d.width, d.height "
            "FROM files f LEFT JOIN dimensions d ON d.content_hash = f.content_hash "
            "WHERE f.path = ?",
            (path_key(path),),
        )
        return _file_row(rows[0]) if rows else None

    def files_under(self, prefix: str) -> Iterator[FileRow]:
        """Every file row whose path is ``prefix`` or below it (one range scan)."""
        low = path_key(prefix.rstrip(os.sep) + os.sep)
        high = low[:-1] + bytes([low[-1] + 1])
        rows = self.read(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, content_hash, format, hashed_at_ns "
            "FROM files WHERE path >= ? AND path < ?",
            (low, high),
        )
        for row in rows:
            yield _file_row(row)

    def put_files(self, rows: Iterable[FileRow]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.write("record file hashes") as conn:
            _put_files(conn, rows)

    def delete_files(self, paths: Iterable[str]) -> int:
        keys = [(path_key(p),) for p in paths]
        with self.write("forget files") as conn:
            cur = conn.executemany("DELETE FROM files WHERE path = ?", keys)
            return cur.rowcount

    def tracked_files(self) -> list[FileRow]:
        """Every file row, in path order."""
        rows = self.read(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, content_hash, format, hashed_at_ns "
            "FROM files ORDER BY path",
            (),
            "list tracked files",
        )
        return [_file_row(r) for r in rows]

    def tracked_paths(self) -> list[str]:
        rows = self.read("SELECT path FROM files ORDER BY path", (), "list files")
        return [os.fsdecode(r[0]) for r in rows]

    def count_files(self) -> int:
        try:
            # sqlite3, for the reason given at iter_assets (doctor counts with sqlite-utils).
            return int(self.conn().execute("SELECT count(*) FROM files").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error(exc, "count files") from None

    def paths_of(self, hashes: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Known paths of each content hash, sorted."""
        found: dict[str, list[str]] = {}
        for chunk in _chunks(sorted(set(hashes))):
            for digest, raw in self.read(
                f"SELECT content_hash, path FROM files WHERE content_hash IN "
                f"({', '.join('?' * len(chunk))})",
                chunk,
                "find known paths",
            ):
                found.setdefault(digest, []).append(os.fsdecode(raw))
        return {h: tuple(sorted(p)) for h, p in found.items()}

    def fix_files(self, fixes: Sequence[FileRow], drops: Sequence[str]) -> None:
        """Replace changed rows and drop the rows of files gone, in one transaction."""
        if not fixes and not drops:
            return
        with self.write("fix the stat cache") as conn:
            _put_files(conn, fixes)
            conn.executemany("DELETE FROM files WHERE path = ?", [(path_key(p),) for p in drops])

    def restore(
        self,
        assets: Sequence[tuple[Any, ...]],
        files: Sequence[tuple[Any, ...]],
        counters: Sequence[tuple[Any, ...]],
    ) -> None:
        """Write rows salvaged from a damaged file (``_repair``); malformed ones are skipped."""
        with self.write("restore salvaged rows") as conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO assets ({', '.join(ASSET_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ASSET_COLUMNS))})",
                [r for r in assets if len(r) == len(ASSET_COLUMNS)],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO files (path, dev, ino, size, mtime_ns, ctime_ns, "
                "content_hash, format, hashed_at_ns, sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, row_sig(r)) for r in files if len(r) == 9],
            )
            conn.executemany("INSERT OR IGNORE INTO counters VALUES (?, ?, ?)", counters)

    # -- registry (the methods are SQLRegistry's; these are SQLite's part) ----
    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(conn.executemany(sql, rows).rowcount)

    def _record_files(self, conn: Any, files: Sequence[FileRow]) -> None:
        _put_files(conn, files)

    def iter_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]:
        """:meth:`select_assets`, streamed: rows are fetched as they are used.

        sqlite3's own cursor, not sqlite-utils' query(): ``entries()`` and
        ``stats()`` are library calls that apps repeat, and the first sqlite-utils
        import costs a process 60-700 ms (pluggy, measured on this 2-core machine
        under load); test_contention's eight short-lived workers lost half their
        operations to it. Imports, doctor and the CLI's one-shot commands pay it."""
        where, params = asset_filter(namespace, used_after, used_before)
        sql = f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets {where} {ORDERS[order]}"
        try:
            for found in self.conn().execute(sql, params):
                yield AssetRow(*found)
        except sqlite3.Error as exc:
            raise self._error(exc, "list entries") from None

    def _upsert_rows(self, conn: Any, rows: Sequence[AssetRow]) -> None:
        # sqlite-utils 4 nests its writes in a SAVEPOINT inside our BEGIN IMMEDIATE,
        # so the merge rule's reads and these writes stay one transaction. sqlite-utils
        # 3 commits each batch of its own (``with conn:``), which would end that
        # transaction half-way: there the registry's one upsert statement does it.
        db = utils(conn)
        if not hasattr(db, "atomic"):
            super()._upsert_rows(conn, rows)
            return
        # Any: sqlite-utils 3 types table() as Table | View, 4 as Table.
        table: Any = db.table("assets")
        table.upsert_all(
            [dict(zip(ASSET_COLUMNS, _values(r), strict=True)) for r in rows],
            pk=("namespace", "content_hash", "variant"),
        )

    def put_assets(self, rows: Iterable[AssetRow]) -> None:
        """Store whole rows as given (the fleet's local copy of shared rows)."""
        params = [tuple(getattr(r, c) for c in ASSET_COLUMNS) for r in rows]
        if not params:
            return
        with self.write("copy shared entries") as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO assets ({', '.join(ASSET_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ASSET_COLUMNS))})",
                params,
            )

    def assets_for(
        self, namespace: str | None, image_uuid: str | None = None, hashes: Iterable[str] = ()
    ) -> list[AssetRow]:
        """This file's rows holding ``image_uuid``, or else any of ``hashes``."""
        where, params = asset_filter(namespace, None, None)
        glue = "AND" if where else "WHERE"
        if image_uuid is not None:
            rows = self.read(
                f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets {where} {glue} image_uuid = ?",
                [*params, image_uuid],
            )
            return [AssetRow(*r) for r in rows]
        out: list[AssetRow] = []
        for chunk in _chunks(sorted(set(hashes))):
            marks = ", ".join("?" * len(chunk))
            out += [
                AssetRow(*r)
                for r in self.read(
                    f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets {where} {glue} "
                    f"content_hash IN ({marks})",
                    [*params, *chunk],
                )
            ]
        return out


def _enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """``PRAGMA journal_mode = WAL``, waiting for the lock as ``busy_timeout`` would.

    The switch needs an exclusive lock, and SQLite does not call the busy handler
    for it: processes opening a new database together got "database is locked"
    at once. They wait their turn here instead.
    """
    import time

    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _private_dirs(folder: str) -> None:
    """Create ``folder`` and any missing parent, each 0700 (``os.makedirs`` gives
    the parents it creates the default mode, so ~/.cache/assetcache could be 0755)."""
    missing: list[str] = []
    while folder and not os.path.isdir(folder) and folder not in missing:
        missing.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process, or a file (ENOTDIR next)
            os.mkdir(path, 0o700)


def _file_row(row: Sequence[Any]) -> FileRow:
    return FileRow(os.fsdecode(row[0]), *row[1:])


def _put_files(conn: sqlite3.Connection, rows: Iterable[FileRow]) -> None:
    """Write file rows (and their pixel sizes), keeping ``files.side`` in step
    with ``dimensions``: every writer of either goes through here."""
    rows = list(rows)
    conn.executemany(
        "INSERT OR REPLACE INTO files (path, dev, ino, size, mtime_ns, ctime_ns, content_hash, "
        "format, hashed_at_ns, sig, side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "coalesce(?, (SELECT max(d.width, d.height) FROM dimensions d WHERE d.content_hash = ?)))",
        [
            (
                path_key(r.path),
                r.dev,
                r.ino,
                r.size,
                r.mtime_ns,
                r.ctime_ns,
                r.content_hash,
                r.format,
                r.hashed_at_ns,
                file_sig(r.dev, r.ino, r.size, r.mtime_ns, r.ctime_ns),
                None if r.width is None else max(r.width, r.height or 0),
                r.content_hash,
            )
            for r in rows
        ],
    )
    sizes = [
        (r.content_hash, r.width, r.height)
        for r in rows
        if r.width is not None and r.height is not None
    ]
    if sizes:
        conn.executemany(
            "INSERT OR REPLACE INTO dimensions (content_hash, width, height) VALUES (?, ?, ?)",
            sizes,
        )
        # Other paths with the same content learn its size too.
        conn.executemany(
            "UPDATE files SET side = ? WHERE content_hash = ? AND side IS NOT ?",
            [(max(w, h), digest, max(w, h)) for digest, w, h in sizes],
        )


#: SQLite caps bound parameters per statement; stay well below.
_IN_CHUNK = 500


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield list(values[start : start + _IN_CHUNK])


def open_readonly(path: str) -> sqlite3.Connection:
    """A query-only connection for ``status``'s helper process (it only reads;
    ``query_only`` makes that a guarantee)."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA mmap_size = 268435456")
    return conn


def utils(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils over one of our connections, leaving it as it is: no plugins,
    and ``recursive_triggers`` off (on, a REPLACE would fire delete triggers)."""
    # Imported here: it costs more start-up time than the rest of the store.
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
