"""Check and rebuild a cache database file, with or without an open cache.

:func:`inspect_database` reads a file without migrating or changing it;
:func:`rebuild_database` moves a damaged one aside and carries over what is
readable; :func:`doctor` is both, as ``assetcache doctor [--fix]`` runs them,
usable when the cache itself cannot open the file (schema too new, not a
database, tables unreadable).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .._errors import SchemaTooNew, StoreError
from .._models import DoctorReport
from ._base import ASSET_COLUMNS
from ._sqlite import SCHEMA_VERSION, SQLiteStore, utils

# -- database health (works when the cache cannot open the file) -----------------


def db_size(path: str) -> int:
    """Bytes of the database and its WAL/shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(path + suffix).st_size
    return total


def inspect_database(path: str | os.PathLike[str]) -> DoctorReport:
    """Check the database at ``path`` without migrating or changing it."""
    path = os.path.abspath(os.fspath(path))
    report = DoctorReport(
        path, exists=os.path.exists(path), db_bytes=db_size(path), schema_supported=SCHEMA_VERSION
    )
    if not report.exists:
        report.integrity = "not created yet"
        return report
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.Error as exc:
        report.integrity = f"cannot be opened: {exc}"
        report.problems.append(f"the database cannot be opened: {exc}")
        report.needs_rebuild = True
        return report
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        report.schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        conn.close()
        report.integrity = f"unreadable: {exc}"
        report.problems.append(f"not a readable SQLite database ({exc})")
        report.needs_rebuild = True
        return report
    try:
        if report.schema_version > SCHEMA_VERSION:
            report.problems.append(
                f"written by a newer assetcache (schema {report.schema_version}, this version "
                f"reads up to {SCHEMA_VERSION}): upgrade assetcache"
            )
        elif report.schema_version >= 1:
            # Counted before the integrity check: a damaged file may still say how
            # many entries it held, which is what a rebuild reports as lost.
            report.entries = _count(conn, "assets")
            report.files = _count(conn, "files")
            if report.entries is None or report.files is None:
                report.problems.append("the cache tables cannot be read")
                report.needs_rebuild = True
        try:
            found = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.Error as exc:
            found = [str(exc)]
        report.integrity = "ok" if found == ["ok"] else "; ".join(found)
        if found != ["ok"]:
            report.problems.append(f"integrity check failed: {report.integrity}")
            report.needs_rebuild = True
    finally:
        conn.close()
    return report


def _count(conn: sqlite3.Connection, table: str) -> int | None:
    """Rows of ``table`` (sqlite-utils' introspection), ``None`` when unreadable."""
    try:
        db = utils(conn)
        return int(db[table].count) if db[table].exists() else None
    except sqlite3.Error:
        return None


def _salvage(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """Rows readable before the damage (a corrupt page ends the scan, not the rescue)."""
    rows: list[tuple[Any, ...]] = []
    try:
        for row in conn.execute(sql):
            rows.append(tuple(row))
    except sqlite3.Error:
        pass
    return rows


def rebuild_database(path: str | os.PathLike[str], *, now: float | None = None) -> DoctorReport:
    """Move a damaged database aside, create a fresh one, carry over what is readable.

    Returns the fresh database's report with ``actions`` and ``lost`` filled in.
    A database written by a newer assetcache is never rebuilt (raises SchemaTooNew).
    """
    path = os.path.abspath(os.fspath(path))
    before = inspect_database(path)
    if before.schema_version is not None and before.schema_version > SCHEMA_VERSION:
        raise SchemaTooNew(before.problems[0], path=path)
    assets: list[tuple[Any, ...]] = []
    files: list[tuple[Any, ...]] = []
    counters: list[tuple[Any, ...]] = []
    if before.exists:
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as old,
        ):
            # Since schema 7 the table holds namespace ids; the view gives names.
            named = _salvage(old, "SELECT 1 FROM sqlite_schema WHERE name = 'asset_rows'")
            table = "asset_rows" if named else "assets"
            assets = _salvage(old, f"SELECT {', '.join(ASSET_COLUMNS)} FROM {table}")
            files = _salvage(
                old,
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, content_hash, "
                "format, hashed_at_ns FROM files",
            )
            counters = _salvage(old, "SELECT namespace, name, value FROM counters")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    actions: list[str] = [f"found: {'; '.join(before.problems)}"] if before.problems else []
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.corrupt-{stamp}-{n}"
    if before.exists:
        try:
            os.replace(path, aside)
            # The old WAL belongs to the old file: left here, SQLite would replay it
            # into the new database and corrupt it again.
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
        except OSError as exc:
            reason = exc.strerror or exc
            raise StoreError(f"cannot move {path} aside: {reason}", path=path) from None
        actions.append(f"moved the damaged database to {aside}")
    store = SQLiteStore(path)
    try:
        store.restore(assets, files, counters)
    finally:
        store.close()
    actions.append(
        f"created a fresh database; carried over {len(assets)} entries and {len(files)} file hashes"
    )
    after = inspect_database(path)
    after.actions = actions
    again = " (the images are uploaded again when next asked for)"
    if before.entries is None:
        after.lost = (
            f"unknown: the old file could not be read{again}"
            if not assets
            else f"unknown: {len(assets)} entries recovered, maybe not all{again}"
        )
    else:
        missing = max(0, before.entries - len(assets))
        after.lost = f"{missing} entries" + (again if missing else "")
    return after


def doctor(
    target: str | os.PathLike[str], fix: bool = False, *, open_error: StoreError | None = None
) -> DoctorReport:
    """The health of the database file at ``target``; with ``fix``, a damaged
    one is rebuilt. Works without an open cache: ``open_error`` is what the
    cache said when it could not open the file (then ``fix`` rebuilds it,
    unless it was written by a newer assetcache, which is only inspected)."""
    path = Path(target)
    if isinstance(open_error, SchemaTooNew):
        return inspect_database(path)
    if open_error is not None:
        return rebuild_database(path) if fix else inspect_database(path)
    report = inspect_database(path)
    if fix and report.needs_rebuild:
        return rebuild_database(path)
    return report
