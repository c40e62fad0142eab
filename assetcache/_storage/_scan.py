"""``status``'s statements and its helper process's connection.

Apart from the store so that the helper, a fresh interpreter scanning half of
a big folder, loads only this (and ``sqlite3``), not the whole store: its
start-up is on the critical path of ``status`` (see ``_status``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

#: ``status``: a page of the file rows of a path range, in path order, as
#: ``(path, sig, racy, content_hash, image_uuid, last_used_at)``: joined to
#: their asset rows, the variant chosen as in the store's hit path (``HIT_SQL``); ``racy``
#: is git's racily-clean test (``max(mtime, ctime) + window > hashed_at``).
#: The id of a namespace name bound as ``?`` (assets hold namespace ids, schema 7).
NS_ID = "(SELECT id FROM namespaces WHERE name = ?)"
SCAN_SQL = (
    "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
    "f.content_hash, a.image_uuid, a.last_used_at "
    "FROM files f LEFT JOIN assets a "
    f"ON a.ns = {NS_ID} AND a.content_hash = f.content_hash AND a.variant = ? "
    "WHERE f.path >= ? AND f.path < ? ORDER BY f.path LIMIT ?"
)
FIT_SCAN_SQL = (
    "SELECT f.path, f.sig, f.hashed_at_ns - max(f.mtime_ns, f.ctime_ns) < ?, "
    "f.content_hash, a.image_uuid, a.last_used_at "
    f"FROM files f LEFT JOIN assets a ON a.ns = {NS_ID} AND a.content_hash = f.content_hash "
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


def scan_query(
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
    """SQL and parameters of one page of :data:`SCAN_SQL` (``lo <= path < hi``);
    with ``join=False``, of :data:`SCAN_FILES_SQL`."""
    fit = bool(variant and max_side)
    if not join:
        if fit:
            return FIT_SCAN_FILES_SQL, (racy_ns, max_side, lo, hi, limit)
        return SCAN_FILES_SQL, (racy_ns, lo, hi, limit)
    if fit:
        return FIT_SCAN_SQL, (racy_ns, namespace, variant, max_side, variant, lo, hi, limit)
    return SCAN_SQL, (racy_ns, namespace, variant, lo, hi, limit)


def open_readonly(path: str) -> sqlite3.Connection:
    """A query-only connection for ``status``'s helper process (it only reads;
    ``query_only`` makes that a guarantee)."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA mmap_size = 268435456")
    return conn
