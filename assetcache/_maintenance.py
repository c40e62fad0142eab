"""Maintenance operations behind the CLI: list, stats, refresh, prune, verify,
forget, export/import, doctor.

A mixin of :class:`~assetcache.AssetCache` and its async twin; every method
works on the cache's own store and engine (``self._engine``), so nothing the
``assetcache`` command does is impossible from Python::

    with AssetCache() as cache:
        for entry in cache.entries(expiring_within=timedelta(days=2)):
            print(entry.uuid, entry.paths)
        report = cache.refresh(timedelta(days=2))     # renew before callers pay
        cache.prune(older_than=timedelta(days=90))

Expiry words, used the same way everywhere: an entry is *fresh* while the
cache serves it, *expiring* within ``Policy.expiring_soon`` of the moment it
stops serving it (``serve_until`` = last use + 30 days - margin), *stale*
between then and ``expires_at`` (when Runware deletes the upload), *expired*
after. Listings treat stale and expired alike ("the cache will upload again").

The methods are blocking on both twins, except :meth:`refresh`, which uploads:
on :class:`~assetcache.AsyncAssetCache` it returns an awaitable.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import stat as stat_mod
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from . import _hashing, _policy
from ._effects import Call, Map, Plan
from ._errors import AssetCacheError, ConfigurationError, SchemaTooNew, StoreError
from ._formats import ACCEPTED, FormatCheck
from ._scan import FileStatus, StatusReport, report, scan
from ._store import (
    ASSET_COLUMNS,
    SCHEMA_VERSION,
    AssetRow,
    FileRow,
    SQLiteStore,
    path_key,
    row_sig,
)

if TYPE_CHECKING:
    from ._cache import Resolution, _Engine, _Prepared
    from ._sources import SourceLike

#: Progress callbacks get ``(done, total)``.
Progress = Callable[[int, int], None]

EXPORT_VERSION = 1
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
HASH_RE = re.compile(r"^[0-9a-f]{32}$")
_FORMATS = frozenset((*ACCEPTED, "url"))
#: SQLite caps bound parameters per statement; stay well below.
_IN_CHUNK = 500


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2025-01-31T12:00:00Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"a duration must be a positive number of seconds, not {value!r}")
    return seconds


# -- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached upload: content hash -> imageUUID, with its timing and known paths."""

    namespace: str
    content_hash: str
    variant: str
    uuid: str
    size: int
    format: str
    uploaded_at: float
    last_used_at: float
    expires_at: float
    serve_until: float
    state: str  # fresh | expiring | stale | expired
    paths: tuple[str, ...] = ()
    upload_count: int = 1
    bytes_sent: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.content_hash, self.variant)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields ``assetcache ls --json`` prints (times in ISO 8601 UTC)."""
        return {
            "hash": self.content_hash,
            "uuid": self.uuid,
            "size": self.size,
            "format": self.format,
            "uploaded_at": iso(self.uploaded_at),
            "last_used_at": iso(self.last_used_at),
            "expires_at": iso(self.expires_at),
            "serve_until": iso(self.serve_until),
            "state": self.state,
            "paths": list(self.paths),
            "upload_count": self.upload_count,
            "namespace": self.namespace,
        }


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What :meth:`MaintenanceMixin.stats` reports; counters include this process's."""

    entries: int
    bytes: int
    files: int
    hits: int
    misses: int
    uploads: int
    reuploads: int
    failures: int
    retries: int
    bytes_sent: int
    bytes_saved: int
    db_path: str
    db_bytes: int
    #: Local copies of uploaded bytes (``CopiesUsage.as_dict()``), on or off.
    copies: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class RefreshItem:
    """One entry :meth:`~MaintenanceMixin.refresh` looked at.

    ``status``: ``renewed``, ``would-renew`` (dry run), ``content-gone`` (no
    known copy of the bytes is left) or ``failed`` (the upload failed).
    """

    content_hash: str
    old_uuid: str
    status: str
    uuid: str | None = None
    path: str | None = None
    reason: str | None = None
    expires_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "hash": self.content_hash,
            "old_uuid": self.old_uuid,
            "status": self.status,
            "uuid": self.uuid,
            "path": self.path,
            "reason": self.reason,
            "expires_at": iso(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class RefreshReport:
    within: float
    dry_run: bool
    items: tuple[RefreshItem, ...]

    @property
    def failed(self) -> list[RefreshItem]:
        """Items that could not be refreshed (content gone or upload failed)."""
        return [i for i in self.items if i.status in ("content-gone", "failed")]

    def as_dict(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("renewed", "would-renew", "content-gone", "failed")}
        for item in self.items:
            counts[item.status] += 1
        return {
            "within_seconds": self.within,
            "dry_run": self.dry_run,
            "items": [i.as_dict() for i in self.items],
            "summary": counts,
        }


@dataclass(frozen=True, slots=True)
class PruneReport:
    entries: tuple[Entry, ...]
    files: tuple[str, ...]
    leases: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "entries": [e.as_dict() for e in self.entries],
            "files": list(self.files),
            "leases": self.leases,
            "summary": {
                "entries": len(self.entries),
                "files": len(self.files),
                "bytes": sum(e.size for e in self.entries),
            },
        }


@dataclass(frozen=True, slots=True)
class VerifyItem:
    """One tracked file re-hashed: ``ok``, ``changed``, ``missing``, ``unreadable`` or
    ``untracked`` (named, but the cache has never hashed it)."""

    path: str
    state: str
    old_hash: str | None = None
    new_hash: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state,
            "old_hash": self.old_hash,
            "new_hash": self.new_hash,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ForgetItem:
    """What forgetting one path, hash or UUID removed (``error`` when nothing matched)."""

    item: str
    kind: str  # path | hash | uuid
    entries: tuple[Entry, ...] = ()
    files: tuple[str, ...] = ()
    error: str | None = None
    #: With ``remote=True``: ``(uuid, "deleted" | "already gone" | "failed: ...")``.
    remote: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "kind": self.kind,
            "entries": [{"hash": e.content_hash, "uuid": e.uuid} for e in self.entries],
            "files": list(self.files),
            "error": self.error,
            "remote": [{"uuid": u, "status": s} for u, s in self.remote],
        }


@dataclass(frozen=True, slots=True)
class ImportReport:
    added: int
    replaced: int
    kept: int  # the database already held a fresher (or equally fresh) entry
    errors: tuple[tuple[int, str], ...]  # (line number, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "kept": self.kept,
            "errors": [{"line": n, "reason": r} for n, r in self.errors],
        }


@dataclass(slots=True)
class DoctorReport:
    """The database's health; ``problems`` empty means healthy."""

    db_path: str
    exists: bool = False
    db_bytes: int = 0
    schema_version: int | None = None
    schema_supported: int = SCHEMA_VERSION
    integrity: str = "unknown"
    entries: int | None = None
    files: int | None = None
    problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    lost: str | None = None
    account: str | None = None
    namespace: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    needs_rebuild: bool = False
    #: A fleet: the shared server (reachable, schema, leases) and this host's outbox.
    fleet: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.fleet is None:
            del out["fleet"]
        out["ok"] = self.ok
        return out


def doctor_fleet(url: str, fix: bool = False, now: float | None = None) -> DoctorReport:
    """``doctor`` for a fleet: the shared server, then this host's local file.

    Never opens the cache (a server that is down is the thing to report), never
    creates a file named after the URL, and redacts every credential.
    """
    from . import _postgres

    now = time.time() if now is None else now
    local = _postgres.local_db_for(url)
    facts, problems = _postgres.inspect_shared(url, now)
    if fix and facts.get("expired_leases"):
        try:
            dropped = _postgres.drop_expired_leases(url, now)
        except AssetCacheError as exc:
            problems.append(" ".join(str(exc).split()))
        else:
            problems = [p for p in problems if "expired upload lease" not in p]
            facts["expired_leases"] = 0
            fixed = [f"dropped {dropped} expired upload lease(s)"]
    else:
        fixed = []
    if os.path.exists(local):
        report = inspect_database(local)
        if fix and report.needs_rebuild:
            report = rebuild_database(local)
    else:
        report = DoctorReport(local)  # created by the first run on this host
    report.actions += fixed
    backlog = _postgres.outbox_backlog(local)
    facts["outbox"] = backlog or 0
    if backlog:
        problems.append(
            f"{backlog} upload(s) made on this host are not yet in the shared store "
            "(they are shared as soon as a cache runs here and reaches the server)"
        )
    report.problems = problems + report.problems
    report.fleet = facts
    return report


def resize_settings(variant: str | None) -> dict[str, Any]:
    """Whether uploads are resized (``variant``: the cache's transform tag, "" for
    off, None if no cache is open) and whether this machine can (Pillow)."""
    from ._transform import resize_available

    available, note = resize_available()
    return {
        "resize": variant if variant is not None else available,
        "resize_available": available,
        "resize_note": note,
    }


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
    report = DoctorReport(path, exists=os.path.exists(path), db_bytes=db_size(path))
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
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
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
            assets = _salvage(old, f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets")
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
        with store.write("restore salvaged rows") as conn:
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


# -- the mixin -------------------------------------------------------------------


class MaintenanceMixin:
    _engine: _Engine
    _drive: Callable[[Plan], Any]

    # -- reading ---------------------------------------------------------------
    def now(self) -> float:
        """The cache's clock, in epoch seconds (what expiry is measured against)."""
        return self._engine.clock()

    def status(self, paths: Iterable[str]) -> Iterator[FileStatus]:
        """Each file's standing (fresh, expiring, expired, changed, new, missing); no upload."""
        return scan(self._engine, paths)

    def status_report(self, paths: Iterable[str], *, fresh: bool = False) -> StatusReport:
        """How many of the files named are in each state, and which files are not
        fresh (with ``fresh=True``: every file), in path order; no upload.

        For big folders this is much cheaper than :meth:`status`: unchanged files
        with fresh uploads are counted in bulk, not judged one by one.

        >>> r = cache.status_report(["photos"])              # doctest: +SKIP
        >>> r.counts["fresh"], [f.path for f in r.files]     # doctest: +SKIP
        """
        return report(self._engine, paths, fresh=fresh)

    def entries(
        self,
        expiring_within: timedelta | float | None = None,
        expired: bool = False,
        *,
        all_accounts: bool = False,
    ) -> Iterator[Entry]:
        """This account's entries, soonest to expire first.

        ``expiring_within``: only entries the cache stops serving within that
        time; ``expired``: only entries it no longer serves (with both: either).

        >>> [e.uuid for e in cache.entries(expired=True)]     # doctest: +SKIP
        """
        engine = self._engine
        policy = engine.policy
        now = engine.clock()
        window = policy.retention - policy.margin  # serve_until = last_used_at + window
        clauses, params = self._scope(all_accounts)
        filters = []
        within = _seconds(expiring_within)
        if within is not None:
            filters.append("(last_used_at > ? AND last_used_at <= ?)")
            params += [now - window, now + within - window]
        if expired:
            filters.append("last_used_at <= ?")
            params.append(now - window)
        if filters:
            clauses.append("(" + " OR ".join(filters) + ")")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Through the registry: in a fleet, the fleet's entries.
        assets = engine.registry.select_assets(where, params, "ORDER BY last_used_at, content_hash")
        paths = self._paths_of({a.content_hash for a in assets})
        for a in assets:
            yield self._entry(a, paths.get(a.content_hash, ()), now)

    def stats(self, *, all_accounts: bool = False) -> CacheStats:
        """Counts, bytes and usage counters (stored ones plus this process's unflushed ones)."""
        engine = self._engine
        store = engine.store
        clauses, params = self._scope(all_accounts)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        n, total = engine.registry.asset_totals(where, params)
        (files,) = store.read("SELECT count(*) FROM files", (), "count files")[0]
        # Counters live with the registry (shared by a fleet), the rest in the local file.
        counts = dict(engine.registry.counters(None if all_accounts else engine.namespace))
        with engine._count_lock:
            pending = dict(engine._counts)
        for name, value in pending.items():
            counts[name] = counts.get(name, 0) + value
        c = counts.get
        return CacheStats(
            int(n),
            int(total),
            int(files),
            c("hits", 0),
            c("misses", 0),
            c("uploads", 0),
            c("reuploads", 0),
            c("failures", 0),
            c("retries", 0),
            c("bytes_sent", 0),
            c("bytes_saved", 0),
            store.path,
            db_size(store.path),
            self._copies_info(),
        )

    def _copies_info(self) -> dict[str, Any] | None:
        usage = getattr(self, "copies_usage", None)  # the lifecycle layer's
        return usage().as_dict() if usage is not None else None

    def preview(self, sources: Iterable[SourceLike]) -> list[Resolution]:
        """What :meth:`resolve_many` would do, without uploading or writing anything.

        Each result's ``outcome`` is ``hit`` (with the UUID), ``uploaded`` or
        ``reuploaded`` (would be: ``uuid`` is None) or ``failed`` (bad input).
        """
        from ._cache import Resolution, _failed, _label

        engine = self._engine
        items = list(sources)
        with ThreadPoolExecutor(max(1, min(engine.hash_workers, len(items)))) as pool:
            prepared = list(pool.map(engine.prepare, items))
        now = engine.clock()
        since = engine.fresh_since(now)
        seen: set[tuple[str, str, str]] = set()
        out: list[Resolution] = []
        for obj, p in zip(items, prepared, strict=True):
            if isinstance(p, AssetCacheError):
                out.append(_failed(_label(obj), p))
                continue
            row = engine.registry.get_asset(p.key)
            if row is not None and row.last_used_at > since:
                out.append(
                    Resolution(
                        p.label,
                        row.image_uuid,
                        row.content_hash,
                        "hit",
                        None,
                        p.size,
                        p.format,
                        _policy.expires_at(engine.policy, row.last_used_at),
                    )
                )
            elif p.key in seen:
                out.append(Resolution(p.label, None, p.key[1], "hit", None, p.size, p.format))
            else:
                outcome = _policy.outcome_for_upload(row.image_uuid if row else None)
                out.append(Resolution(p.label, None, p.key[1], outcome, None, p.size, p.format))
            seen.add(p.key)
        return out

    # -- refresh ---------------------------------------------------------------
    def refresh(
        self,
        within: timedelta | float,
        *,
        dry_run: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> RefreshReport:
        """Upload again every entry the cache would stop serving within ``within``
        whose bytes are still at a known path (same hash), so no caller waits for it.

        Entries Runware has already deleted are left to be uploaded on demand.
        On :class:`~assetcache.AsyncAssetCache` this returns an awaitable.

        >>> cache.refresh(timedelta(days=2)).failed             # doctest: +SKIP
        []
        """
        seconds = _seconds(within)
        assert seconds is not None
        report: RefreshReport = self._drive(
            self._plan_refresh(seconds, dry_run, concurrency, progress)
        )
        return report

    def _plan_refresh(
        self, within: float, dry_run: bool, concurrency: int | None, progress: Progress | None
    ) -> Plan:
        engine = self._engine
        candidates: list[Entry] = yield Call(self._refresh_candidates, within)
        if not candidates:
            return RefreshReport(within, dry_run, ())
        found = yield Map(self._locate, candidates, engine.hash_workers)
        items: list[RefreshItem | None] = [None] * len(candidates)
        todo: list[tuple[int, _Prepared, str]] = []
        for i, (entry, (prepared, label, reason)) in enumerate(zip(candidates, found, strict=True)):
            if prepared is None:
                items[i] = RefreshItem(
                    entry.content_hash,
                    entry.uuid,
                    "content-gone",
                    reason=reason,
                    expires_at=entry.expires_at,
                )
            elif dry_run:
                items[i] = RefreshItem(
                    entry.content_hash,
                    entry.uuid,
                    "would-renew",
                    path=label,
                    expires_at=entry.expires_at,
                )
            else:
                todo.append((i, prepared, label))
        done = len(candidates) - len(todo)
        if progress:
            progress(done, len(candidates))
        # Chunks keep memory bounded (inline payloads) and let a caller show progress.
        chunk = max(64, engine.concurrency * engine.batch_size)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            ready: list[Any] = [p for _, p, _ in part]  # prepared already: not read again
            results = yield from engine.plan_resolve_many(
                ready, concurrency, force={p.key for _, p, _ in part}
            )
            for (i, _, label), res in zip(part, results, strict=True):
                entry = candidates[i]
                if res.error is not None:
                    items[i] = RefreshItem(
                        entry.content_hash,
                        entry.uuid,
                        "failed",
                        path=label,
                        reason=str(res.error),
                        expires_at=entry.expires_at,
                    )
                else:
                    items[i] = RefreshItem(
                        entry.content_hash,
                        entry.uuid,
                        "renewed",
                        res.uuid,
                        label,
                        None,
                        res.expires_at,
                    )
            done += len(part)
            if progress:
                progress(done, len(candidates))
        return RefreshReport(within, dry_run, tuple(i for i in items if i is not None))

    def _refresh_candidates(self, within: float) -> list[Entry]:
        engine = self._engine
        now = engine.clock()
        # Only this account's uploads can be renewed with this key; entries Runware
        # already deleted are not "about to expire" and stay on-demand.
        return [
            e
            for e in self.entries(expiring_within=within, expired=True)
            if e.namespace == engine.namespace
            and e.variant in (engine.variant, engine.fit_variant)
            and e.expires_at > now
        ]

    def _locate(self, entry: Entry) -> tuple[_Prepared | None, str | None, str | None]:
        """The entry's bytes, checked to still hash the same: ``(prepared, label, reason)``."""
        from ._sources import Source

        engine = self._engine
        tried: list[str] = []
        for path in entry.paths:
            try:
                prepared = engine.prepare(Source.from_path(path))
            except AssetCacheError as exc:
                prepared = exc
            if isinstance(prepared, AssetCacheError):
                tried.append(str(prepared))
            elif prepared.key[1] != entry.content_hash:
                tried.append(f"{prepared.label}: changed since it was uploaded")
            else:
                return prepared, prepared.label, None
        # Other copies of the bytes (kept by the lifecycle layer) plug in here.
        fallback = getattr(self, "_refresh_fallback", None)
        if fallback is not None:
            source = fallback(entry)
            if source is not None:
                prepared = engine.prepare(source)
                if isinstance(prepared, AssetCacheError):
                    tried.append(str(prepared))
                elif prepared.key[1] == entry.content_hash:
                    return prepared, prepared.label, None
        why = "; ".join(tried) if tried else "no known path holds these bytes"
        return None, None, f"content gone: {why}"

    # -- pruning and verification ------------------------------------------------
    def prune(
        self,
        older_than: timedelta | float | None = None,
        dry_run: bool = False,
        *,
        all_accounts: bool = False,
    ) -> PruneReport:
        """Drop entries last used more than ``older_than`` ago (default: the retention,
        i.e. the uploads Runware has deleted), stat rows of files that no longer
        exist, and dead leases.

        >>> cache.prune(older_than=timedelta(days=90), dry_run=True).entries   # doctest: +SKIP
        """
        engine = self._engine
        store = engine.store
        now = engine.clock()
        age = _seconds(older_than)
        # By default, what Runware has deleted: everything last used a retention ago.
        cutoff = now - (engine.policy.retention if age is None else age)
        clauses, params = self._scope(all_accounts)
        clauses.append("last_used_at <= ?")
        params.append(cutoff)
        registry = engine.registry  # in a fleet: the fleet's entries and leases
        assets = registry.select_assets(
            f"WHERE {' AND '.join(clauses)}", params, "ORDER BY last_used_at"
        )
        paths = self._paths_of({a.content_hash for a in assets})
        entries = tuple(self._entry(a, paths.get(a.content_hash, ()), now) for a in assets)
        gone = tuple(p for p in self._tracked_paths() if _missing(p))
        leases = registry.drop_expired_leases(now, dry_run=dry_run)
        if not dry_run:
            # Deleted only where last_used_at is unchanged: an entry used since we looked stays.
            registry.prune_assets(assets)
            if gone:
                store.delete_files(gone)
        return PruneReport(entries, gone, int(leases), dry_run)

    def verify(
        self, paths: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> list[VerifyItem]:
        """Re-hash tracked files (all, or those at/below ``paths``) and fix the stat cache:
        changed files get their new hash, missing ones are dropped.

        >>> [v.path for v in cache.verify() if v.state == "changed"]   # doctest: +SKIP
        """
        store = self._engine.store
        targets: list[tuple[str, FileRow | None]] = []
        if paths is None:
            targets = [(r.path, r) for r in self._tracked_rows()]
        else:
            for raw in paths:
                top = os.path.abspath(raw)
                if os.path.isdir(top):
                    targets += [(r.path, r) for r in store.files_under(top)]
                else:
                    targets.append((top, store.get_file(top)))
        results: list[VerifyItem | None] = [None] * len(targets)
        todo = [i for i, (_, row) in enumerate(targets) if row is not None]
        for i, (path, row) in enumerate(targets):
            if row is None:
                results[i] = VerifyItem(path, "untracked")
        fixes: list[FileRow] = []
        drops: list[str] = []
        done = len(targets) - len(todo)
        workers = max(1, min(self._engine.hash_workers, len(todo)))
        with ThreadPoolExecutor(workers) as pool:
            for i, fresh in zip(
                todo, pool.map(lambda i: _rehash(targets[i][0]), todo), strict=True
            ):
                path, row = targets[i]
                assert row is not None
                if fresh is None:
                    results[i] = VerifyItem(path, "missing", row.content_hash)
                    drops.append(path)
                elif isinstance(fresh, str):
                    results[i] = VerifyItem(path, "unreadable", row.content_hash, reason=fresh)
                else:
                    state = "ok" if fresh.content_hash == row.content_hash else "changed"
                    results[i] = VerifyItem(path, state, row.content_hash, fresh.content_hash)
                    if fresh != row:
                        fixes.append(fresh)
                done += 1
                if progress:
                    progress(done, len(targets))
        if fixes or drops:
            with store.write("fix the stat cache") as conn:
                from ._store import _put_files

                _put_files(conn, fixes)
                conn.executemany(
                    "DELETE FROM files WHERE path = ?", [(path_key(p),) for p in drops]
                )
        return [r for r in results if r is not None]

    # -- forgetting ----------------------------------------------------------------
    def forget(
        self, items: Iterable[str], *, remote: bool = False, all_accounts: bool = False
    ) -> list[ForgetItem]:
        """Remove the entries of each path (a folder: the files tracked below it),
        content hash or imageUUID. One :class:`ForgetItem` per item, in order.

        ``remote=True`` also deletes the uploads on Runware (``mediaStorage``
        ``delete``, by the lifecycle layer's ``_forget_remote`` hook); an entry the
        server did not delete is kept, and its item carries the error.

        >>> cache.forget(["cat.png", "5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44"])  # doctest: +SKIP
        """
        hook = getattr(self, "_forget_remote", None) if remote else None
        if remote and hook is None:
            raise ConfigurationError(
                "forget(remote=True): deleting uploads on Runware is not supported yet"
            )
        store = self._engine.store
        now = self._engine.clock()
        out: list[ForgetItem] = []
        for item in items:
            kind, hashes, files, uuids, error = self._classify(item)
            if error is not None:
                out.append(ForgetItem(item, kind, error=error))
                continue
            clauses, params = self._scope(all_accounts)
            if uuids:
                clauses.append("image_uuid = ?")
                params.append(uuids[0])
                rows = store.read(
                    f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets WHERE {' AND '.join(clauses)}",
                    params,
                )
            else:
                rows = []
                for chunk in _chunks(sorted(hashes)):
                    rows += store.read(
                        f"SELECT {', '.join(ASSET_COLUMNS)} FROM assets WHERE "
                        f"{' AND '.join([*clauses, _in('content_hash', chunk)])}",
                        [*params, *chunk],
                    )
            assets = {AssetRow(*r).key: AssetRow(*r) for r in rows}
            for row in self._shared_rows(uuids, hashes, all_accounts):
                assets.setdefault(row.key, row)
            paths = self._paths_of({a.content_hash for a in assets.values()})
            entries = tuple(
                self._entry(a, paths.get(a.content_hash, ()), now) for a in assets.values()
            )
            if not entries and not files:
                out.append(ForgetItem(item, kind, error=f"no cache entry for {item}"))
                continue
            remote_done: tuple[tuple[str, str], ...] = ()
            problem = None
            if hook is not None and entries:
                # One outcome per entry; an entry not deleted on the server stays here.
                outcomes = hook(entries)
                remote_done = tuple(
                    (e.uuid, o if isinstance(o, str) else f"failed: {o}")
                    for e, o in zip(entries, outcomes, strict=True)
                )
                failed = [o for o in outcomes if not isinstance(o, str)]
                if failed:
                    problem = f"{item}: not deleted on Runware, entry kept: {failed[0]}"
                    entries = tuple(
                        e for e, o in zip(entries, outcomes, strict=True) if isinstance(o, str)
                    )
                    files = []
            if entries:
                # Through the registry: in a fleet, the shared row goes too.
                self._engine.registry.delete_assets([e.key for e in entries])
            if files:
                store.delete_files(files)
            out.append(ForgetItem(item, kind, entries, tuple(files), problem, remote_done))
        return out

    def _shared_rows(
        self, uuids: list[str], hashes: set[str], all_accounts: bool
    ) -> list[AssetRow]:
        """In a fleet, rows of the shared registry this host has no copy of."""
        engine = self._engine
        if engine.registry is engine.store:
            return []
        if uuids:
            rows = engine.registry.find_uuid(uuids[0])
        else:
            variants = dict.fromkeys((engine.variant, engine.fit_variant))  # as sent, resized
            found = (
                engine.registry.get_asset((engine.namespace, h, v))
                for h in sorted(hashes)
                for v in variants
            )
            rows = [r for r in found if r is not None]
        return [r for r in rows if all_accounts or r.namespace == engine.namespace]

    def _classify(self, item: str) -> tuple[str, set[str], list[str], list[str], str | None]:
        """``(kind, content hashes, file rows to drop, uuids, error)`` for one forget item."""
        store = self._engine.store
        path = os.path.abspath(item) if item and "\x00" not in item else None
        row = store.get_file(path) if path else None
        if path is not None and (row is not None or os.path.lexists(path)):
            if row is not None:
                return "path", {row.content_hash}, [path], [], None
            if os.path.isdir(path):
                rows = list(store.files_under(path))
                if not rows:
                    return "path", set(), [], [], f"{item}: no file below it is tracked"
                return "path", {r.content_hash for r in rows}, [r.path for r in rows], [], None
            try:
                digest = _hashing.hash_file(path)[0]
            except OSError as exc:
                return "path", set(), [], [], f"{item}: cannot be read: {exc.strerror or exc}"
            return "path", {digest}, [], [], None
        if UUID_RE.match(item):
            return "uuid", set(), [], [item.lower()], None
        if HASH_RE.match(item.lower()):
            return "hash", {item.lower()}, [], [], None
        return (
            "path",
            set(),
            [],
            [],
            (
                f"{item}: not an existing or tracked path, a content hash (32 hex digits) "
                "or an imageUUID"
            ),
        )

    # -- export / import ------------------------------------------------------------
    def export_entries(self, *, all_accounts: bool = False) -> Iterator[str]:
        """JSON lines (no newline) of this account's entries, for :meth:`import_entries`."""
        clauses, params = self._scope(all_accounts)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._engine.registry.select_assets(
            where, params, "ORDER BY namespace, content_hash, variant"
        )
        for a in rows:
            yield json.dumps(
                {
                    "v": EXPORT_VERSION,
                    "namespace": a.namespace,
                    "hash": a.content_hash,
                    "variant": a.variant,
                    "uuid": a.image_uuid,
                    "size": a.size,
                    "format": a.format,
                    "uploaded_at": a.uploaded_at,
                    "last_used_at": a.last_used_at,
                    "upload_count": a.upload_count,
                    "bytes_sent": a.bytes_sent,
                },
                separators=(",", ":"),
            )

    def import_entries(self, lines: Iterable[str | bytes]) -> ImportReport:
        """Merge exported JSON lines; an entry never replaces a fresher one.

        Malformed lines are refused with their line number; the others are imported.

        >>> cache.import_entries(open("entries.jsonl")).errors     # doctest: +SKIP
        ()
        """
        now = self._engine.clock()
        errors: list[tuple[int, str]] = []
        good: list[AssetRow] = []
        for number, line in enumerate(lines, 1):
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    errors.append((number, "not UTF-8 text"))
                    continue
            if not line.strip():
                continue
            parsed = _parse_export_line(line, now)
            if isinstance(parsed, str):
                errors.append((number, parsed))
            else:
                good.append(parsed)
        added = replaced = kept = 0
        if good:
            added, replaced, kept = self._engine.registry.merge_assets(good)
        return ImportReport(added, replaced, kept, tuple(errors))

    # -- doctor -------------------------------------------------------------------
    def doctor(self, fix: bool = False) -> DoctorReport:
        """Integrity, schema, size, settings and the account fingerprint (never the key).

        ``fix=True`` rebuilds a damaged database (moved aside, salvaged rows carried
        over; ``report.lost`` says what could not be). Other users of the file should
        be closed first.
        """
        engine = self._engine
        path = engine.store.path
        report = inspect_database(path)
        if fix and report.needs_rebuild:
            old = engine.store
            old.close()
            report = rebuild_database(path)
            engine.store = SQLiteStore(path)
            if engine.registry is old:
                engine.registry = engine.store
            elif getattr(engine.registry, "local", None) is old:
                fleet: Any = engine.registry
                fleet.local = engine.store  # a fleet's local copy lives here too
        report.account = engine.account
        report.namespace = engine.namespace
        report.settings = self.settings()
        return report

    def settings(self) -> dict[str, Any]:
        """The settings in force (never the API key)."""
        engine = self._engine
        p = engine.policy
        return {
            "api_url": engine.base_url,
            "namespace": engine.namespace,
            "retention_seconds": p.retention,
            "margin_seconds": p.margin,
            "touch_every_seconds": p.touch_every,
            "concurrency": engine.concurrency,
            "batch_size": engine.batch_size,
            "batch_bytes": engine.batch_bytes,
            "max_bytes": engine.max_bytes,
            "task_type": engine.task_type,
            "racy_window_seconds": engine.racy_ns / 1e9,
            "lease_ttl_seconds": engine.lease_ttl,
            # A fleet's shared registry (password redacted), else the database file.
            "registry": getattr(engine.registry, "path", None),
            # A fleet: this host's name in lease owners, and the shared store's deadlines.
            **(
                {
                    "host_id": engine.registry.host,
                    "fleet": engine.registry.shared.settings.as_dict(),
                }
                if hasattr(engine.registry, "shared")
                else {}
            ),
            "local_copies": self._copies_info(),
            **resize_settings(engine.fit_variant),
        }

    # -- helpers ----------------------------------------------------------------------
    def _scope(self, all_accounts: bool) -> tuple[list[str], list[Any]]:
        if all_accounts:
            return [], []
        return ["namespace = ?"], [self._engine.namespace]

    def _entry(self, a: AssetRow, paths: Sequence[str], now: float) -> Entry:
        policy = self._engine.policy
        return Entry(
            a.namespace,
            a.content_hash,
            a.variant,
            a.image_uuid,
            a.size,
            a.format,
            a.uploaded_at,
            a.last_used_at,
            _policy.expires_at(policy, a.last_used_at),
            _policy.serve_until(policy, a.last_used_at),
            _policy.state(policy, a.last_used_at, now),
            tuple(paths),
            a.upload_count,
            a.bytes_sent,
        )

    def _paths_of(self, hashes: set[str]) -> dict[str, tuple[str, ...]]:
        """Known paths of each content hash (the stat cache), sorted."""
        store = self._engine.store
        found: dict[str, list[str]] = {}
        for chunk in _chunks(sorted(hashes)):
            for digest, raw in store.read(
                f"SELECT content_hash, path FROM files WHERE {_in('content_hash', chunk)}",
                chunk,
                "find known paths",
            ):
                found.setdefault(digest, []).append(os.fsdecode(raw))
        return {h: tuple(sorted(p)) for h, p in found.items()}

    def _tracked_rows(self) -> list[FileRow]:
        from ._store import _file_row

        rows = self._engine.store.read(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, content_hash, format, hashed_at_ns "
            "FROM files ORDER BY path",
            (),
            "list tracked files",
        )
        return [_file_row(r) for r in rows]

    def _tracked_paths(self) -> list[str]:
        rows = self._engine.store.read("SELECT path FROM files ORDER BY path", (), "list files")
        return [os.fsdecode(r[0]) for r in rows]


def _in(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})"


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield list(values[start : start + _IN_CHUNK])


def _missing(path: str) -> bool:
    """True only when the path provably no longer exists (not on permission errors)."""
    import errno

    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)
    return False


def _rehash(path: str) -> FileRow | str | None:
    """A fresh stat row for ``path``; ``None`` if it is gone, a reason if unreadable."""
    import errno

    started = _hashing.now_ns()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        return exc.strerror or str(exc)
    before = os.fstat(fd)
    if not stat_mod.S_ISREG(before.st_mode):
        os.close(fd)
        return "is not a regular file"
    check = FormatCheck()
    with open(fd, "rb", buffering=0, closefd=True) as f:
        try:
            digest, _ = _hashing.hash_stream(f, sinks=(check,))
        except OSError as exc:
            return exc.strerror or str(exc)
        after = os.fstat(fd)
    fp = _hashing.Fingerprint.of(before)
    if fp != _hashing.Fingerprint.of(after):
        return "changed while being read; try again once it is written"
    try:
        fmt: str | None = check.finish()
    except AssetCacheError:
        fmt = None  # no longer a valid image: the next upload attempt says why
    return FileRow(path, *fp.as_tuple(), digest, fmt, started)


def _parse_export_line(line: str, now: float) -> AssetRow | str:
    """An :class:`AssetRow` from one export line, or the reason it is refused."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return "expected a JSON object"
    if obj.get("v", EXPORT_VERSION) != EXPORT_VERSION:
        return f"unsupported export version {obj.get('v')!r} (this assetcache: {EXPORT_VERSION})"

    def text(name: str, default: str | None = None) -> str:
        value = obj.get(name, default)
        if not isinstance(value, str):
            raise ValueError(f"{name!r} must be a string")
        return value

    def number(name: str) -> float:
        value = obj.get(name)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0
        ):
            return float(value)
        raise ValueError(f"{name!r} must be a non-negative number of epoch seconds")

    def count(name: str, default: int, low: int) -> int:
        value = obj.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name!r} must be an integer >= {low}")
        return value

    try:
        missing = [
            k
            for k in ("namespace", "hash", "uuid", "size", "format", "uploaded_at", "last_used_at")
            if k not in obj
        ]
        if missing:
            return "missing field(s): " + ", ".join(missing)
        namespace = text("namespace")
        if not namespace:
            return "'namespace' is empty"
        digest = text("hash")
        if not HASH_RE.match(digest):
            return f"'hash' must be 32 lowercase hex digits, not {digest[:40]!r}"
        uuid = text("uuid")
        if not UUID_RE.match(uuid):
            return f"'uuid' is not a UUID: {uuid[:40]!r}"
        fmt = text("format")
        if fmt not in _FORMATS:
            return f"'format' must be one of {', '.join(sorted(_FORMATS))}, not {fmt[:20]!r}"
        size = count("size", 0, 0)
        last_used = number("last_used_at")
        uploaded = number("uploaded_at")
        # Clock skew between machines must not stretch the window past the server's.
        last_used = min(last_used, now)
        uploaded = min(uploaded, last_used)
        return AssetRow(
            namespace,
            digest,
            text("variant", ""),
            uuid.lower(),
            size,
            fmt,
            uploaded,
            last_used,
            count("upload_count", 1, 1),
            0,
            count("bytes_sent", 0, 0),
        )
    except ValueError as exc:
        return str(exc)
