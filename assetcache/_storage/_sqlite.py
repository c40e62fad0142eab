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
import itertools
import json
import logging
import os
import sqlite3
import stat as stat_mod
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, SchemaTooNew, StoreError
from . import _scan
from ._base import (
    ASSET_COLUMNS,
    PAGE_ROWS,
    AssetRow,
    FileRow,
    Key,
    Order,
    SQLRegistry,
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

#: How long a writer waits for the write lock, in this process or another.
WRITE_WAIT = 30.0

#: One lock per database file for this process's writers. Its threads queue on it
#: and are woken the moment it is free, where SQLite's busy handler would have
#: them poll, sleeping 1, 2, 5, 10 ... ms between tries (a batch's parts write
#: from several threads at once). Other processes still meet the busy handler.
_writers: dict[str, threading.RLock] = {}
_writers_guard = threading.Lock()


def _writer_lock(key: str) -> threading.RLock:
    """The writer lock of the file whose real path is ``key``."""
    lock = _writers.get(key)
    if lock is None:
        with _writers_guard:
            lock = _writers.setdefault(key, threading.RLock())
    return lock


def _fresh_writer_locks() -> None:
    """In a forked child: locks held by the parent's other threads would never be
    released here (those threads do not exist in the child)."""
    global _writers_guard
    _writers_guard = threading.Lock()
    for key in _writers:
        _writers[key] = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_writer_locks)


#: Databases holding this many entries or more are told about when migrated.
NOTICE_ROWS = 100_000
_log = logging.getLogger("assetcache")

#: SQL statements at DEBUG (``-vv``); values are paths and hashes, never a key.
_sql_log = logging.getLogger("assetcache.sql")


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


def _m5(conn: sqlite3.Connection) -> None:
    # Evidence, not belief: ``assets.last_used_at`` is the last *evidence* that
    # Runware used the upload (the upload, a task seen to succeed with it,
    # use(), touch()); the last time the cache handed the UUID out goes to
    # ``served``, for display. Until now serving slid ``last_used_at`` too, and
    # the two cannot be told apart afterwards: the only evidence kept is the
    # upload itself, and the old value becomes the last-served time. Entries
    # uploaded more than 29 days ago are uploaded again on their next request.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS served (namespace TEXT NOT NULL, content_hash TEXT NOT NULL, "
        "variant TEXT NOT NULL DEFAULT '', last_served_at REAL NOT NULL, "
        "PRIMARY KEY (namespace, content_hash, variant)) WITHOUT ROWID"
    )
    # A database rolled back from schema 7 or later names namespaces in the view.
    rows = "asset_rows" if _compact(conn) else "assets"
    conn.execute(
        "INSERT OR REPLACE INTO served SELECT namespace, content_hash, variant, last_used_at "
        f"FROM {rows} WHERE last_used_at > uploaded_at"
    )
    conn.execute("UPDATE assets SET last_used_at = uploaded_at WHERE last_used_at > uploaded_at")
    # One spelling of a UUID, stored, compared and printed: lower case.
    conn.execute(
        "UPDATE assets SET image_uuid = lower(image_uuid) WHERE image_uuid <> lower(image_uuid)"
    )


def _m6(conn: sqlite3.Connection) -> None:
    # The URL an upload answer carried (``imageURL``/``mediaURL``), so an answer
    # given from the cache (the proxy's) carries it as the server's would.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(assets)")}
    if "url" not in columns:  # a database rolled back to an older version keeps it
        conn.execute("ALTER TABLE assets ADD COLUMN url TEXT")


def _compact(conn: sqlite3.Connection) -> bool:
    """Whether the assets table has ``_m7``'s layout (namespace ids)."""
    return "ns" in {row[1] for row in conn.execute("PRAGMA table_info(assets)")}


#: The id of a namespace name bound as ``?`` (NULL, which matches no row, when unknown).
NS_ID = _scan.NS_ID
#: The asset rows as the registry reads them: namespaces by name.
_ASSET_ROWS = (
    "CREATE VIEW IF NOT EXISTS asset_rows AS SELECT n.name AS namespace, a.content_hash, "
    "a.variant, a.image_uuid, a.size, a.format, a.uploaded_at, a.last_used_at, a.upload_count, "
    "a.hits, a.bytes_sent, a.url FROM assets a JOIN namespaces n ON n.id = a.ns"
)


def _m7(conn: sqlite3.Connection) -> None:
    # 373 bytes per asset (a million assets: 373 MB) came down to 230 by storing
    # the namespace (40-odd characters, repeated in the row and in both indexes,
    # which carry the primary key) once, in ``namespaces``, and indexing the
    # first 8 characters of the UUID instead of all 36 (find_uuid() compares the
    # whole UUID on the one or two rows the prefix finds). Measured on 100k
    # imported rows: a rowid table (228) costs the hit path a second b-tree
    # lookup; 16-byte BLOB hashes and UUIDs (161) would need a conversion on
    # every value in and out and in the join with ``files``.
    if _compact(conn):  # a database rolled back to an older version keeps it
        return
    conn.execute(
        "CREATE TABLE IF NOT EXISTS namespaces (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"
    )
    conn.execute(
        "INSERT OR IGNORE INTO namespaces (name) SELECT DISTINCT namespace FROM assets "
        "WHERE namespace IS NOT NULL ORDER BY namespace"
    )
    conn.execute(
        """CREATE TABLE assets_new (
            ns INTEGER NOT NULL,
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
            url TEXT,
            PRIMARY KEY (ns, content_hash, variant)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        "INSERT INTO assets_new SELECT n.id, a.content_hash, a.variant, a.image_uuid, a.size, "
        "a.format, a.uploaded_at, a.last_used_at, a.upload_count, a.hits, a.bytes_sent, a.url "
        "FROM assets a JOIN namespaces n ON n.name = a.namespace ORDER BY n.id, a.content_hash, "
        "a.variant"
    )
    for trigger in ("delete", "update", "replace"):
        conn.execute(f"DROP TRIGGER IF EXISTS scan_gen_assets_{trigger}")
    conn.execute("DROP TABLE assets")
    conn.execute("ALTER TABLE assets_new RENAME TO assets")
    conn.execute("CREATE INDEX assets_by_uuid ON assets (substr(image_uuid, 1, 8))")
    conn.execute("CREATE INDEX assets_by_last_use ON assets (last_used_at)")
    conn.execute(_ASSET_ROWS)
    # _m4's triggers, on the new key.
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS scan_gen_assets_delete AFTER DELETE ON assets "
        f"BEGIN {_BUMP}; END"
    )
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS scan_gen_assets_update AFTER UPDATE ON assets "
        "WHEN new.last_used_at < old.last_used_at OR new.ns IS NOT old.ns "
        "OR new.content_hash IS NOT old.content_hash OR new.variant IS NOT old.variant "
        f"BEGIN {_BUMP}; END"
    )
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS scan_gen_assets_replace BEFORE INSERT ON assets "
        "WHEN EXISTS (SELECT 1 FROM assets a WHERE a.ns = new.ns "
        "AND a.content_hash = new.content_hash AND a.variant = new.variant "
        f"AND a.last_used_at > new.last_used_at) BEGIN {_BUMP}; END"
    )


#: Numbered migrations; ``PRAGMA user_version`` holds the number applied last.
MIGRATIONS: tuple[Any, ...] = (_m1, _m2, _m3, _m4, _m5, _m6, _m7)
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore(SQLRegistry):
    """File index + registry in one SQLite file.

    >>> store = SQLiteStore("/tmp/cache.db")   # doctest: +SKIP
    """

    # The registry's statements on the compact table (``_m7``): rows are read
    # through the ``asset_rows`` view, written with the namespace's id.
    ROWS = "asset_rows"
    NS_COLUMN = "ns"
    NS_VALUE = NS_ID
    # The index holds the UUID's first 8 characters. "+": not a constraint to
    # propagate into substr() (SQLite would, and then miss the index).
    UUID_IS = "substr(image_uuid, 1, 8) = substr(?1, 1, 8) AND +image_uuid = ?1"
    # The primary key starts with the namespace id: one seek per namespace.
    ANY_NAMESPACE = "namespace IN (SELECT name FROM namespaces) AND "

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shared: bool | None = None,
        folders: Sequence[str] = (),
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._local = threading.local()
        self._batch_sql: dict[tuple[bool, int], str] = {}
        #: Every connection opened, with the thread it is (or was last) used by
        #: and the process that opened it.
        self._conns: dict[sqlite3.Connection, tuple[threading.Thread, int]] = {}
        self._lock = threading.Lock()
        self._writer_key = os.path.realpath(self.path)
        self._closed = False
        self._shared = sharing_declared(shared)
        self._folders = tuple(folders)
        self._prepare_file()
        self._migrate()

    # -- connections -----------------------------------------------------
    def _prepare_file(self) -> None:
        folder = os.path.dirname(self.path)
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise ConfigurationError(
                f"refusing the cache database {self.path}: it is a symbolic link to "
                f"{os.readlink(self.path)}, which does not exist; assetcache does not create "
                "files through a dangling link (create the target, or point --db elsewhere)"
            )
        try:
            for extra in self._folders:
                if os.path.isdir(extra):
                    check_private(extra, self._shared, is_dir=True, sticky_ok=True)
            _private_dirs(folder)
            real_folder = os.path.dirname(os.path.realpath(self.path))
            check_private(real_folder, self._shared, is_dir=True)
            if os.path.realpath(folder) != real_folder:
                check_private(folder, self._shared, is_dir=True)
            for suffix in ("", "-wal", "-shm", "-journal"):
                if os.path.lexists(self.path + suffix):
                    check_private(self.path + suffix, self._shared, is_dir=False)
            # Created 0600 before SQLite sees it; SQLite gives -wal/-shm the same mode.
            # O_EXCL when new: a link or file planted meanwhile is not opened.
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            if not os.path.lexists(self.path):
                flags |= os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
                os.close(fd)
                check_private(self.path, self._shared, is_dir=False)
            else:
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
        conn = self._adopt()
        if conn is not None:
            self._local.conn = conn
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            for pragma in PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if _sql_log.isEnabledFor(logging.DEBUG):  # -vv: every statement this process runs
            conn.set_trace_callback(_sql_log.debug)
        self._local.conn = conn
        with self._lock:
            self._conns[conn] = (threading.current_thread(), os.getpid())
        return conn

    def _adopt(self) -> sqlite3.Connection | None:
        """The connection of a thread that has ended, now this thread's: the
        threads of a batch come and go, and each opening a connection of its own
        (kept until :meth:`close`) would pile them up, one per thread ever run,
        each starting with no prepared statements."""
        me, pid = threading.current_thread(), os.getpid()
        with self._lock:
            for conn, (user, opened_in) in self._conns.items():
                # Never one opened before a fork: SQLite forbids using it in the child.
                if opened_in == pid and not user.is_alive():
                    self._conns[conn] = (me, pid)
                    break
            else:
                return None
        if conn.in_transaction:  # never left so by our writers; a reused one starts clean
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of this thread's connection (maintenance paths)."""
        return utils(self.conn())

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), {}
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
            reason = f"stayed locked by another writer for {WRITE_WAIT:.0f} s"
        else:
            reason = f"failed: {text}"
        return StoreError(
            f"cache database {self.path} {reason} (while trying to {doing})", path=self.path
        )

    @contextlib.contextmanager
    def write(self, doing: str = "write") -> Iterator[sqlite3.Connection]:
        """An explicit ``BEGIN IMMEDIATE`` transaction on this thread's connection,
        taken after this process's other writers of the file (:func:`_writer_lock`)."""
        conn = self.conn()
        writer = _writer_lock(self._writer_key)
        if not writer.acquire(timeout=WRITE_WAIT):
            raise self._error(sqlite3.OperationalError("database is locked"), doing)
        try:
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
        finally:
            writer.release()

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
            if version >= 1:
                (rows,) = conn.execute("SELECT count(*) FROM assets").fetchone()
                if rows >= NOTICE_ROWS:  # a pause of seconds: say why, once
                    _log.warning(
                        "upgrading the cache database %s from schema %d to %d "
                        "(%d entries, once; about 20 s per million)",
                        self.path,
                        version,
                        SCHEMA_VERSION,
                        rows,
                    )
            for number in range(version, SCHEMA_VERSION):
                MIGRATIONS[number](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if 1 <= version < 7:
            _compact_file(conn)

    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])

    # -- file index ------------------------------------------------------
    #: The hot path: one indexed lookup joining the stat row to its asset row.
    HIT_SQL = (
        "SELECT f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.hashed_at_ns, f.content_hash, "
        "f.format, a.image_uuid, a.last_used_at, a.size, a.variant "
        "FROM files f LEFT JOIN assets a "
        f"ON a.ns = {NS_ID} AND a.content_hash = f.content_hash AND a.variant = ? "
        "WHERE f.path = ?"
    )
    #: The same when the client transforms images: the variant is per image,
    #: ``_transform.Transform.variant_for`` in SQL (keep both in step), on the
    #: longer side recorded with the row. An unknown size matches nothing, so
    #: the slow path reads and records it.
    FIT_HIT_SQL = (
        "SELECT f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.hashed_at_ns, f.content_hash, "
        "f.format, a.image_uuid, a.last_used_at, a.size, a.variant "
        f"FROM files f LEFT JOIN assets a ON a.ns = {NS_ID} AND a.content_hash = f.content_hash "
        "AND a.variant = CASE WHEN f.format IN ('bmp', 'gif') THEN ? "
        "WHEN f.side IS NULL THEN NULL WHEN f.side > ? THEN ? ELSE '' END "
        "WHERE f.path = ?"
    )

    # ``status``'s statements live in ``_scan`` (its helper process loads only
    # that module); here under their old names for the store's other users.
    SCAN_SQL = _scan.SCAN_SQL
    FIT_SCAN_SQL = _scan.FIT_SCAN_SQL
    SCAN_FILES_SQL = _scan.SCAN_FILES_SQL
    FIT_SCAN_FILES_SQL = _scan.FIT_SCAN_FILES_SQL
    TILE_SQL = _scan.TILE_SQL
    MARKS_SQL = _scan.MARKS_SQL
    GEN_SQL = _scan.GEN_SQL
    COUNT_SQL = _scan.COUNT_SQL
    NTH_SQL = _scan.NTH_SQL
    scan_query = staticmethod(_scan.scan_query)

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

    def lookup_paths(
        self, keys: Sequence[bytes], namespace: str, variant: str, max_side: int = 0
    ) -> dict[bytes, tuple[Any, ...]]:
        """:meth:`lookup_path` for several paths in one statement: ``{key: row}``
        (a task's images in one indexed query)."""
        if not keys:
            return {}
        fit = bool(variant and max_side)
        sql = self._batch_sql.get((fit, len(keys)))
        if sql is None:
            base = self.FIT_HIT_SQL if fit else self.HIT_SQL
            head, _ = base.rsplit("WHERE f.path = ?", 1)
            sql = head.replace(" FROM files f", ", f.path FROM files f", 1)
            sql += "WHERE f.path IN (" + ", ".join("?" * len(keys)) + ")"
            self._batch_sql[(fit, len(keys))] = sql
        params = (namespace, variant, max_side, variant) if fit else (namespace, variant)
        try:
            rows = self.conn().execute(sql, (*params, *keys)).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, "look up files") from None
        return {row[12]: row for row in rows}

    def get_file(self, path: str) -> FileRow | None:
        rows = self.read(
            "SELECT f.path, f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.content_hash, "
            "f.format, f.hashed_at_ns, d.width, d.height "
            "FROM files f LEFT JOIN dimensions d ON d.content_hash = f.content_hash "
            "WHERE f.path = ?",
            (path_key(path),),
        )
        return _file_row(rows[0]) if rows else None

    def find_uuids(self, image_uuids: Sequence[str]) -> dict[str, list[AssetRow]]:
        """:meth:`find_uuid` for many UUIDs, a few hundred per statement (vetting a
        request's answers): ``{uuid: rows}``, only for the UUIDs some row holds."""
        out: dict[str, list[AssetRow]] = {}
        for part in _chunks(sorted(set(image_uuids))):
            marks = ", ".join("?" * len(part))
            # The UUID index holds 8-character prefixes (schema 7).
            sql = self._q(
                f"SELECT {', '.join(ASSET_COLUMNS)} FROM {{rows}} "
                f"WHERE substr(image_uuid, 1, 8) IN ({marks}) AND +image_uuid IN ({marks})"
            )
            for r in self.read(sql, [u[:8] for u in part] + list(part), "look up UUIDs"):
                row = AssetRow(*r)
                out.setdefault(row.image_uuid, []).append(row)
        return out

    def get_files(self, paths: Sequence[str]) -> dict[str, FileRow]:
        """:meth:`get_file` for many paths, a few hundred per statement: ``{path: row}``
        (a cold batch looks its files up per request, not per file)."""
        keys = {path_key(p): p for p in paths}
        out: dict[str, FileRow] = {}
        for part in _chunks(list(keys)):
            rows = self.read(
                "SELECT f.path, f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, f.content_hash, "
                "f.format, f.hashed_at_ns, d.width, d.height "
                "FROM files f LEFT JOIN dimensions d ON d.content_hash = f.content_hash "
                f"WHERE f.path IN ({', '.join('?' * len(part))})",
                part,
            )
            for row in rows:
                path = keys.get(row[0])
                if path is not None:
                    out[path] = FileRow(path, *row[1:])
        return out

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

    def tracked_files(self) -> Iterator[FileRow]:
        """Every file row, in path order (lazily, in keyset pages)."""
        for page in self._file_pages(
            "path, dev, ino, size, mtime_ns, ctime_ns, content_hash, format, hashed_at_ns"
        ):
            for r in page:
                yield _file_row(r)

    def tracked_paths(self) -> Iterator[str]:
        """Every tracked path, in path order (lazily, in keyset pages)."""
        for page in self._file_pages("path"):
            for r in page:
                yield os.fsdecode(r[0])

    def _file_pages(self, columns: str) -> Iterator[list[Any]]:
        after: bytes | None = None
        while True:
            if after is None:
                rows = self.read(
                    f"SELECT {columns} FROM files ORDER BY path LIMIT {PAGE_ROWS}", (), "list files"
                )
            else:
                rows = self.read(
                    f"SELECT {columns} FROM files WHERE path > ? ORDER BY path LIMIT {PAGE_ROWS}",
                    (after,),
                    "list files",
                )
            if rows:
                yield rows
            if len(rows) < PAGE_ROWS:
                return
            after = rows[-1][0]

    def count_files(self) -> int:
        try:
            # sqlite3's own cursor, not sqlite-utils' (doctor counts with sqlite-utils):
            # stats() is a library call apps repeat, and the first sqlite-utils import
            # costs a process 60-700 ms (pluggy, measured on a loaded 2-core machine).
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
        assets = [r for r in assets if len(r) == len(ASSET_COLUMNS)]
        with self.write("restore salvaged rows") as conn:
            self._add_namespaces(conn, {r[0] for r in assets})
            # A namespace that is not text finds no id: NOT NULL, and the row is skipped.
            conn.executemany(_insert_rows("OR IGNORE"), assets)
            conn.executemany(
                "INSERT OR IGNORE INTO files (path, dev, ino, size, mtime_ns, ctime_ns, "
                "content_hash, format, hashed_at_ns, sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, row_sig(r)) for r in files if len(r) == 9],
            )
            conn.executemany("INSERT OR IGNORE INTO counters VALUES (?, ?, ?)", counters)

    def mark_served(self, served: Iterable[tuple[Key, float]]) -> None:
        """Remember when each entry was last handed out (display only, never evidence)."""
        params = [(*key, when) for key, when in served]
        if not params:
            return
        with self.write("record served times") as conn:
            conn.executemany(
                "INSERT INTO served VALUES (?, ?, ?, ?) ON CONFLICT "
                "(namespace, content_hash, variant) DO UPDATE SET last_served_at = "
                "max(last_served_at, excluded.last_served_at)",
                params,
            )

    def served_times(self, keys: Iterable[Key]) -> dict[Key, float]:
        """When each entry was last handed out (entries never served are absent)."""
        keys = list(keys)
        out: dict[Key, float] = {}
        one = "(namespace = ? AND content_hash = ? AND variant = ?)"
        for i in range(0, len(keys), 300):
            part = keys[i : i + 300]
            for ns, digest, variant, when in self.read(
                "SELECT namespace, content_hash, variant, last_served_at FROM served "
                f"WHERE {' OR '.join(one for _ in part)}",
                [v for key in part for v in key],
                "read served times",
            ):
                out[(ns, digest, variant)] = when
        return out

    def last_served(self, namespace: str | None = None) -> float | None:
        """The last time any entry (of ``namespace``) was handed out."""
        where, params = ("WHERE namespace = ?", [namespace]) if namespace is not None else ("", [])
        (when,) = self.read(
            f"SELECT max(last_served_at) FROM served {where}", params, "read served times"
        )[0]
        return None if when is None else float(when)

    def delete_assets(self, keys: Iterable[Key]) -> int:
        """Forget entries, and when they were last served."""
        keys = list(keys)
        gone = super().delete_assets(keys)
        if keys:
            with self.write("forget entries") as conn:
                conn.executemany(
                    "DELETE FROM served WHERE namespace = ? AND content_hash = ? AND variant = ?",
                    keys,
                )
        return gone

    # -- registry (the methods are SQLRegistry's; these are SQLite's part) ----
    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(conn.executemany(sql, rows).rowcount)

    def _record_files(self, conn: Any, files: Sequence[FileRow]) -> None:
        _put_files(conn, files)

    def _listing_where(self, where: str, order: Order) -> str:
        if order == "last_use":
            # "+": no primary-key lookup on the namespace (a sort of all its rows
            # per page); the last-use index gives the order and the seek.
            return where.replace("namespace = ?", "+namespace = ?")
        return where

    # An import's rows go in with the registry's one upsert statement
    # (``SQLRegistry._upsert_rows``), not sqlite-utils' upsert_all: that one
    # builds a dict and checks every value for JSON (jsonify_if_needed), a third
    # of an import's time (profiled: 3.5 s of 14.8 s for 100k lines).
    def _add_namespaces(self, conn: Any, names: Iterable[str]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO namespaces (name) VALUES (?)",
            [(n,) for n in names if isinstance(n, str)],
        )

    def namespaces(self) -> list[str]:
        """The namespaces rows were ever written for, sorted."""
        return [n for (n,) in self.read("SELECT name FROM namespaces ORDER BY name")]

    def iter_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]:
        if order == "key" and namespace is None:
            # One namespace after the other: a seek on (namespace, hash, variant)
            # through the view would start each page at its namespace's first row.
            return itertools.chain.from_iterable(
                SQLRegistry.iter_assets(
                    self,
                    namespace=name,
                    used_after=used_after,
                    used_before=used_before,
                    order=order,
                )
                for name in self.namespaces()
            )
        return super().iter_assets(
            namespace=namespace, used_after=used_after, used_before=used_before, order=order
        )

    def put_assets(self, rows: Iterable[AssetRow]) -> None:
        """Store whole rows as given (the fleet's local copy of shared rows)."""
        params = [tuple(getattr(r, c) for c in ASSET_COLUMNS) for r in rows]
        if not params:
            return
        with self.write("copy shared entries") as conn:
            self._add_namespaces(conn, {p[0] for p in params})
            conn.executemany(_insert_rows("OR REPLACE"), params)

    def export_lines(self, namespace: str | None, version: int) -> Iterator[str]:
        """The export's JSON lines (``_maintenance.export_entries``' format) built by
        SQLite itself, by key, one namespace after the other, in keyset pages.
        Timestamps go with 17 significant digits (``%!.17g``), so they read back
        as the very same doubles."""
        for name in [namespace] if namespace is not None else self.namespaces():
            for page in self._export_pages(name, version):
                yield from page

    def _export_pages(self, namespace: str, version: int) -> Iterator[list[str]]:
        # ?1 the namespace, ?2 and ?3 the key the previous page ended with.
        # One printf, not a chain of ||, each of which copies the line so far:
        # measured 0.27 s against 0.32 s per 100k rows (json_object: 0.20 s,
        # but it prints 15 digits, and a timestamp needs 17 to read back).
        line = (
            f"""printf('{{"v":{int(version)},"namespace":%s,"hash":%s,"variant":%s,"uuid":%s,"""
            """"size":%s,"format":%s,"uploaded_at":%!.17g,"last_used_at":%!.17g,"""
            """"upload_count":%s,"bytes_sent":%s%s}', json_quote(?1), json_quote(content_hash), """
            """json_quote(variant), json_quote(image_uuid), size, json_quote(format), """
            """uploaded_at, last_used_at, upload_count, bytes_sent, """
            """CASE WHEN url IS NULL OR url = '' THEN '' ELSE ',"url":' || json_quote(url) END)"""
        )
        ns_id = NS_ID.replace("?", "?1")
        head = f"SELECT {line} AS line, content_hash, variant FROM assets WHERE ns = {ns_id}"
        tail = f"ORDER BY content_hash, variant LIMIT {PAGE_ROWS}"
        first, more = f"{head} {tail}", f"{head} AND (content_hash, variant) > (?2, ?3) {tail}"
        # SQLite joins each page into one string: no Python object per row
        # (a million rows: 2.25 s against 2.65 s for a string each). It joins in
        # the subquery's order, which SQLite does not promise: the page is used
        # only if its last line holds its greatest key, else it is read row by row.
        joined = "SELECT group_concat(line, char(10)), count(*), max(content_hash) FROM ({})"
        sql, args = first, [namespace]
        while True:
            text, n, top = self.read(joined.format(sql), args, "export entries")[0]
            if not n:
                return
            lines = text.split("\n")
            last = _json_object(lines[-1])
            if len(lines) == n and last.get("hash") == top and "variant" in last:
                key = (top, last["variant"])
            else:
                rows = self.read(f"SELECT * FROM ({sql})", args, "export entries")
                lines, key = [r[0] for r in rows], tuple(rows[-1][1:])
            yield lines
            if n < PAGE_ROWS:
                return
            sql, args = more, [namespace, *key]

    def assets_for(
        self, namespace: str | None, image_uuid: str | None = None, hashes: Iterable[str] = ()
    ) -> list[AssetRow]:
        """This file's rows holding ``image_uuid``, or else any of ``hashes``."""
        where, params = asset_filter(namespace, None, None)
        glue = "AND" if where else "WHERE"
        if image_uuid is not None:
            rows = self.read(
                f"SELECT {', '.join(ASSET_COLUMNS)} FROM asset_rows {where} {glue} "
                "substr(image_uuid, 1, 8) = substr(?, 1, 8) AND +image_uuid = ?",
                [*params, image_uuid, image_uuid],
            )
            return [AssetRow(*r) for r in rows]
        scope = "" if namespace is not None else self.ANY_NAMESPACE
        out: list[AssetRow] = []
        for chunk in _chunks(sorted(set(hashes))):
            marks = ", ".join("?" * len(chunk))
            out += [
                AssetRow(*r)
                for r in self.read(
                    f"SELECT {', '.join(ASSET_COLUMNS)} FROM asset_rows {where} {glue} "
                    f"{scope}content_hash IN ({marks})",
                    [*params, *chunk],
                )
            ]
        return out


#: The columns of the assets table (``_m7``): ``ns``, the namespace's id, first.
_STORED_COLUMNS = ("ns", *ASSET_COLUMNS[1:])


def _insert_rows(conflict: str) -> str:
    """``INSERT <conflict>`` of whole rows (``ASSET_COLUMNS``, the namespace by name)."""
    return (
        f"INSERT {conflict} INTO assets ({', '.join(_STORED_COLUMNS)}) "
        f"VALUES ({NS_ID}, {', '.join('?' * (len(ASSET_COLUMNS) - 1))})"
    )


def _compact_file(conn: sqlite3.Connection) -> None:
    """Give back the pages ``_m7`` freed (the old table: the file would stay at
    its old size, 490 bytes per asset instead of 230, until rows reuse them).
    Best effort, and brief: VACUUM needs the database to itself, and a process
    that cannot have it now leaves the free pages to be reused."""
    (before,) = conn.execute("PRAGMA busy_timeout").fetchone()
    try:
        conn.execute("PRAGMA busy_timeout = 1000")
        conn.execute("VACUUM")
    except sqlite3.Error:
        pass
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(before)}")


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


SHARED_DB_ENV = "ASSETCACHE_SHARED_DB"


def sharing_declared(shared: bool | None) -> bool:
    """Whether the caller said a database others own or can write is shared on purpose
    (``shared_db=True``, ``--shared-db`` or ``ASSETCACHE_SHARED_DB=1``)."""
    if shared is not None:
        return bool(shared)
    value = os.environ.get(SHARED_DB_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on")


def check_private(path: str, shared: bool, *, is_dir: bool, sticky_ok: bool = False) -> None:
    """Refuse a database file (or a folder on its way) that another user owns or that
    group or others can write, unless ``shared``: whoever can write it chooses the
    UUIDs this cache hands out (the rule of ssh's StrictModes and git's
    safe.directory). Folders may be owned by root; files must be ours; with
    ``sticky_ok`` a sticky folder (/tmp) may be writable by all."""
    if shared or not hasattr(os, "geteuid"):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    me = os.geteuid()
    what = "folder" if is_dir else "file"
    hint = (
        "; use a database of your own, or declare the sharing deliberate with "
        f"--shared-db (or {SHARED_DB_ENV}=1, shared_db=True)"
    )
    owners = (me, 0) if is_dir else (me,)
    if st.st_uid not in owners:
        raise ConfigurationError(
            f"refusing the cache database: its {what} {path} is owned by another user "
            f"(uid {st.st_uid}, you are uid {me}){hint}"
        )
    if st.st_mode & 0o022 and not (sticky_ok and is_dir and st.st_mode & stat_mod.S_ISVTX):
        bits = st.st_mode & 0o022
        who = "group and others" if bits == 0o022 else ("group" if bits & 0o020 else "others")
        raise ConfigurationError(
            f"refusing the cache database: its {what} {path} is writable by {who} "
            f"(mode {stat_mod.S_IMODE(st.st_mode):04o}; chmod go-w {path}){hint}"
        )


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


def _json_object(text: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or ``{}``."""
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


#: SQLite caps bound parameters per statement; stay well below.
_IN_CHUNK = 500


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield list(values[start : start + _IN_CHUNK])


def utils(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils over one of our connections, leaving it as it is: no plugins,
    and ``recursive_triggers`` off (on, a REPLACE would fire delete triggers)."""
    # Imported here: it costs more start-up time than the rest of the store.
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
