"""Maintenance operations behind the CLI: list, stats, preview, refresh, prune,
verify, forget, export/import, doctor, settings.

Plain functions of an :class:`~._engine.Engine`, so nothing the
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
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from . import _policy
from ._effects import Call, Map, Plan
from ._engine import Engine
from ._errors import AssetCacheError, ConfigurationError
from ._formats import ACCEPTED
from ._ingest import Prepared, label_of, rehash
from ._models import (
    CacheStats,
    CopiesUsage,
    DoctorReport,
    Entry,
    ForgetItem,
    ImportReport,
    PruneReport,
    RefreshItem,
    RefreshReport,
    Resolution,
    VerifyItem,
)
from ._resolve import failed, plan_resolve_many
from ._sources import SourceLike
from ._storage._base import PAGE_ROWS, AssetRow, FileRow
from ._storage._repair import db_size, inspect_database
from ._tasks import plan_delete

#: Progress callbacks get ``(done, total)``.
Progress = Callable[[int, int], None]

EXPORT_VERSION = 1
#: Bounds of imported numbers: what SQLite (and PostgreSQL) store exactly.
_MAX_INT = 1 << 53
_MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
#: What a namespace, resp. a variant, may not hold (one regex search per line,
#: not a Python loop over the characters: an import reads millions of lines).
_NS_BAD_RE = re.compile("[\x00-\x1f\x7f]")
_VARIANT_BAD_RE = re.compile("[\x00-\x20\x7f]")
#: Identifiers are matched whole: ``\Z``, not ``$`` (which also matches before a final newline).
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)
HASH_RE = re.compile(r"^[0-9a-f]{32}\Z")
#: A hash prefix ``forget`` takes (``ls`` and ``refresh`` print 12 digits).
PREFIX_RE = re.compile(r"^[0-9a-f]{8,31}\Z")
_FORMATS = frozenset((*ACCEPTED, "url"))
#: Entries listed per lookup of their known paths.
_PAGE = 500


# -- reading -------------------------------------------------------------------------


def entries(
    engine: Engine,
    expiring_within: timedelta | float | None = None,
    expired: bool = False,
    *,
    all_accounts: bool = False,
) -> Iterator[Entry]:
    """This account's entries, soonest to expire first (see ``AssetCache.entries``)."""
    policy = engine.policy
    now = engine.judge_now()
    window = policy.retention - policy.margin  # serve_until = last_used_at + window
    within = _seconds(expiring_within)
    # expiring: serve_until in (now, now + within]; expired: serve_until <= now;
    # both: either, i.e. serve_until <= now + within.
    used_after = now - window if within is not None and not expired else None
    used_before = now + within - window if within is not None else now - window if expired else None
    # Through the registry: in a fleet, the fleet's entries. Streamed, and the
    # known paths looked up a page at a time: memory stays bounded.
    namespace = None if all_accounts else engine.namespace
    rows: Iterator[AssetRow] = engine.registry.iter_assets(
        namespace=namespace, used_after=used_after, used_before=used_before, order="last_use"
    )
    if expired and (used_after is not None or used_before is not None):
        # Stamped in the future (suspect): not served either, so "expired" lists them
        # (after the others; a row cannot be in both ranges).
        suspect = engine.registry.iter_assets(
            namespace=namespace, used_after=now + policy.future_tolerance, order="last_use"
        )
        rows = itertools.chain(rows, suspect)
    for page in batched(rows, _PAGE):
        paths = engine.store.paths_of({a.content_hash for a in page})
        served = engine.served_times(a.key for a in page)
        for a in page:
            yield engine.entry(a, paths.get(a.content_hash, ()), now, served.get(a.key))


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``n`` (the last one shorter), lazily."""
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


#: Usage counters the proxy keeps (stored as ``proxy_<name>``).
PROXY_COUNTERS = ("uploads_answered", "bytes_not_sent", "inline_swapped", "healed")


def stats(engine: Engine, *, all_accounts: bool = False) -> CacheStats:
    """Counts, bytes and usage counters (stored ones plus this process's unflushed ones)."""
    store = engine.store
    namespace = None if all_accounts else engine.namespace
    n, total = engine.registry.asset_totals(namespace=namespace)
    files = store.count_files()
    # Counters live with the registry (shared by a fleet), the rest in the local file.
    counts = dict(engine.registry.counters(namespace))
    for name, value in engine.pending_counts().items():
        counts[name] = counts.get(name, 0) + value
    newest = engine.registry.newest_use(namespace)
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
        copies_info(engine),
        newest,
        engine.last_served(namespace),
        {name: c(f"proxy_{name}", 0) for name in PROXY_COUNTERS},
    )


def copies_usage(engine: Engine) -> CopiesUsage:
    """Where local copies go and what they hold (``enabled`` False when off)."""
    return engine.copies.usage(enabled=engine.keep_copies)


def copies_info(engine: Engine) -> dict[str, Any]:
    return copies_usage(engine).as_dict()


def preview(engine: Engine, sources: Iterable[SourceLike]) -> list[Resolution]:
    """What ``resolve_many`` would do, without uploading or writing anything."""
    items = list(sources)
    with ThreadPoolExecutor(max(1, min(engine.hash_workers, len(items)))) as pool:
        prepared = list(pool.map(engine.prepare, items))
    now = engine.judge_now()
    seen: set[tuple[str, str, str]] = set()
    out: list[Resolution] = []
    for obj, p in zip(items, prepared, strict=True):
        if isinstance(p, AssetCacheError):
            out.append(failed(label_of(obj), p))
            continue
        row = engine.registry.get_asset(p.key)
        if row is not None and _policy.is_fresh(engine.policy, row.last_used_at, now):
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
            # Not a cache hit: the content goes once, with the first of its paths.
            out.append(Resolution(p.label, None, p.key[1], "duplicate", None, p.size, p.format))
        else:
            outcome = _policy.outcome_for_upload(row.image_uuid if row else None)
            out.append(Resolution(p.label, None, p.key[1], outcome, None, p.size, p.format))
        seen.add(p.key)
    return out


# -- refresh ---------------------------------------------------------------------------


def plan_refresh(
    engine: Engine,
    within: timedelta | float,
    dry_run: bool,
    concurrency: int | None,
    progress: Progress | None,
    on_item: Callable[[RefreshItem], None] | None = None,
) -> Plan:
    """Upload again every entry the cache would stop serving within ``within``
    whose bytes are still at hand (see ``AssetCache.refresh``).

    The candidates are read, located and renewed a chunk at a time, each
    chunk's uploads recorded as they answer: memory stays bounded, and a run
    stopped halfway keeps what it renewed (a second run finds the rest). With
    ``on_item``, each item goes there as soon as it is known and the report
    keeps none (a listing of millions of entries stays small).
    """
    seconds = _seconds(within)
    assert seconds is not None
    kept: list[RefreshItem] = []
    emit = on_item if on_item is not None else kept.append
    total: int = yield Call(count_refresh_candidates, engine, seconds)
    done = 0
    if progress and total:
        progress(0, total)
    chunk = max(256, engine.concurrency * engine.batch_size)
    pages = refresh_candidates(engine, seconds)
    while True:
        candidates: list[Entry] = yield Call(_next_chunk, pages, chunk)
        if not candidates:
            break
        found = yield Map(engine.locate, candidates, engine.hash_workers)
        todo: list[tuple[Entry, Prepared, str]] = []
        for entry, (prepared, label, reason) in zip(candidates, found, strict=True):
            if prepared is None:
                emit(
                    RefreshItem(
                        entry.content_hash,
                        entry.uuid,
                        "content-gone",
                        reason=reason,
                        expires_at=entry.expires_at,
                    )
                )
            elif dry_run:
                emit(
                    RefreshItem(
                        entry.content_hash,
                        entry.uuid,
                        "would-renew",
                        path=label,
                        expires_at=entry.expires_at,
                    )
                )
            else:
                todo.append((entry, prepared, label))
        if todo:
            ready: list[Any] = [p for _, p, _ in todo]  # prepared already: not read again
            results = yield from plan_resolve_many(
                engine, ready, concurrency, force={p.key for _, p, _ in todo}
            )
            for (entry, _, label), res in zip(todo, results, strict=True):
                if res.error is not None:
                    emit(
                        RefreshItem(
                            entry.content_hash,
                            entry.uuid,
                            "failed",
                            path=label,
                            reason=str(res.error),
                            expires_at=entry.expires_at,
                        )
                    )
                else:
                    emit(
                        RefreshItem(
                            entry.content_hash,
                            entry.uuid,
                            "renewed",
                            res.uuid,
                            label,
                            None,
                            res.expires_at,
                        )
                    )
        done += len(candidates)
        if progress:
            progress(done, max(total, done))
    return RefreshReport(seconds, dry_run, tuple(kept))


def _next_chunk(items: Iterator[Entry], n: int) -> list[Entry]:
    return list(itertools.islice(items, n))


def _refreshable(engine: Engine, e: Entry, now: float) -> bool:
    # Only this account's uploads can be renewed with this key; entries Runware
    # already deleted are not "about to expire" and stay on-demand.
    return (
        e.namespace == engine.namespace
        and e.variant in (engine.variant, engine.fit_variant)
        and e.expires_at > now
    )


def refresh_candidates(engine: Engine, within: float) -> Iterator[Entry]:
    now = engine.judge_now()
    return (
        e
        for e in entries(engine, expiring_within=within, expired=True)
        if _refreshable(engine, e, now)
    )


def count_refresh_candidates(engine: Engine, within: float) -> int:
    """How many entries :func:`refresh_candidates` yields at most (for progress)."""
    policy = engine.policy
    now = engine.judge_now()
    window = policy.retention - policy.margin
    # Not yet deleted by Runware: last use within the retention.
    n, _ = engine.registry.asset_totals(
        namespace=engine.namespace,
        used_after=now - policy.retention,
        used_before=now + within - window,
    )
    return n


# -- pruning and verification -------------------------------------------------------------


def prune(
    engine: Engine,
    older_than: timedelta | float | None = None,
    dry_run: bool = False,
    *,
    all_accounts: bool = False,
) -> PruneReport:
    """Drop old entries, stat rows of files gone and dead leases (``AssetCache.prune``)."""
    found: list[Entry] = []
    gone: list[str] = []
    for item in prune_items(engine, older_than, dry_run, all_accounts=all_accounts):
        if isinstance(item, str):
            gone.append(item)
        else:
            found.append(item)
    leases = engine.registry.drop_expired_leases(engine.judge_now(), dry_run=dry_run)
    return PruneReport(tuple(found), tuple(gone), int(leases), dry_run)


def prune_items(
    engine: Engine,
    older_than: timedelta | float | None = None,
    dry_run: bool = False,
    *,
    all_accounts: bool = False,
) -> Iterator[Entry | str]:
    """:func:`prune` as it goes, in bounded memory: each entry dropped (an
    :class:`Entry`), then each path whose file is gone (a ``str``). The work is
    committed a page at a time, so a run stopped halfway keeps what it did and
    a second run carries on (leases are left to :func:`prune`)."""
    store = engine.store
    now = engine.judge_now()
    age = _seconds(older_than)
    # By default, what Runware has deleted: everything last used a retention ago;
    # and rows stamped in the future (a clock ahead wrote them: no evidence at all).
    cutoff = now - (engine.policy.retention if age is None else age)
    registry = engine.registry  # in a fleet: the fleet's entries and leases
    namespace = None if all_accounts else engine.namespace
    # Streamed in keyset pages: deleting a page does not move the next one.
    assets = itertools.chain(
        registry.iter_assets(namespace=namespace, used_before=cutoff),
        registry.iter_assets(namespace=namespace, used_after=now + engine.policy.future_tolerance),
    )
    for page in batched(assets, PAGE_ROWS):
        paths = store.paths_of({a.content_hash for a in page})
        if not dry_run:
            # Deleted only where last_used_at is unchanged: an entry used since we looked stays.
            registry.prune_assets(page)
        for a in page:
            yield engine.entry(a, paths.get(a.content_hash, ()), now)
    for page in batched(store.tracked_paths(), PAGE_ROWS):
        gone = [p for p in page if _missing(p)]
        if gone and not dry_run:
            store.delete_files(gone)
        yield from gone


def verify(
    engine: Engine, paths: Iterable[str] | None = None, *, progress: Progress | None = None
) -> list[VerifyItem]:
    """Re-hash tracked files and fix the stat cache (``AssetCache.verify``)."""
    store = engine.store
    targets: list[tuple[str, FileRow | None]] = []
    if paths is None:
        targets = [(r.path, r) for r in store.tracked_files()]
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
    workers = max(1, min(engine.hash_workers, len(todo)))
    with ThreadPoolExecutor(workers) as pool:
        for i, fresh in zip(
            todo, pool.map(lambda i: rehash(targets[i][0], engine.max_bytes), todo), strict=True
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
    store.fix_files(fixes, drops)
    return [r for r in results if r is not None]


# -- forgetting ---------------------------------------------------------------------------


def plan_forget(
    engine: Engine, items: Iterable[str], *, remote: bool = False, all_accounts: bool = False
) -> Plan:
    """Remove the entries of each path, content hash or imageUUID (``AssetCache.forget``);
    with ``remote``, only entries the server deleted (or no longer had)."""
    out: list[ForgetItem] = []
    for item in items:
        found = yield Call(forget_targets, engine, item, all_accounts)
        if isinstance(found, ForgetItem):
            out.append(found)
            continue
        kind, entries, files = found
        remote_done: tuple[tuple[str, str], ...] = ()
        problem = None
        if remote and entries:
            # One outcome per entry; an entry not deleted on the server stays here.
            outcomes = yield from plan_forget_remote(engine, entries)
            remote_done = tuple(
                (e.uuid, o if isinstance(o, str) else f"failed: {o}")
                for e, o in zip(entries, outcomes, strict=True)
            )
            failures = [o for o in outcomes if not isinstance(o, str)]
            if failures:
                problem = f"{item}: not deleted on Runware, entry kept: {failures[0]}"
                entries = tuple(
                    e for e, o in zip(entries, outcomes, strict=True) if isinstance(o, str)
                )
                files = []
        yield Call(forget_rows, engine, entries, files)
        out.append(ForgetItem(item, kind, entries, tuple(files), problem, remote_done))
    return out


def forget_targets(
    engine: Engine, item: str, all_accounts: bool
) -> ForgetItem | tuple[str, tuple[Entry, ...], list[str]]:
    """What forgetting ``item`` would remove: ``(kind, entries, file rows)``, or
    the :class:`ForgetItem` that says why nothing."""
    kind, hashes, files, uuids, error = classify(engine, item)
    if error is not None:
        return ForgetItem(item, kind, error=error)
    namespace = None if all_accounts else engine.namespace
    rows = engine.store.assets_for(namespace, uuids[0] if uuids else None, hashes)
    assets = {row.key: row for row in rows}
    for row in _shared_rows(engine, uuids, hashes, all_accounts):
        assets.setdefault(row.key, row)
    now = engine.judge_now()
    paths = engine.store.paths_of({a.content_hash for a in assets.values()})
    found = tuple(engine.entry(a, paths.get(a.content_hash, ()), now) for a in assets.values())
    if not found and not files:
        return ForgetItem(item, kind, error=f"no cache entry for {item}")
    return kind, found, files


def forget_rows(engine: Engine, entries: Sequence[Entry], files: Sequence[str]) -> None:
    if entries:
        # Through the registry: in a fleet, the shared row goes too.
        engine.registry.delete_assets([e.key for e in entries])
    if files:
        engine.store.delete_files(files)


def plan_forget_remote(engine: Engine, found: Sequence[Entry]) -> Plan:
    """Delete ``found``'s uploads on Runware (``mediaStorage`` ``delete``): one
    outcome per entry, ``"deleted"``, ``"already gone"`` or the error."""
    engine.headers()  # no key: a configuration error before anything is sent
    own = [e.uuid for e in found if e.namespace == engine.namespace]
    done = (yield from plan_delete(engine, list(dict.fromkeys(own)))) if own else {}
    out: list[str | AssetCacheError] = []
    for e in found:
        if e.namespace != engine.namespace:
            out.append(
                ConfigurationError(
                    f"{e.uuid} belongs to another account ({e.namespace}); not deleted"
                )
            )
        else:
            out.append(done[e.uuid])
    return out


def _shared_rows(
    engine: Engine, uuids: list[str], hashes: set[str], all_accounts: bool
) -> list[AssetRow]:
    """In a fleet, rows of the shared registry this host has no copy of."""
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


def classify(engine: Engine, item: str) -> tuple[str, set[str], list[str], list[str], str | None]:
    """``(kind, content hashes, file rows to drop, uuids, error)`` for one forget item."""
    store = engine.store
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
        fresh = rehash(path, engine.max_bytes)
        if not isinstance(fresh, FileRow):
            return "path", set(), [], [], f"{item}: cannot be read: {fresh or 'no such file'}"
        return "path", {fresh.content_hash}, [], [], None
    if UUID_RE.match(item):
        return "uuid", set(), [], [item.lower()], None
    if HASH_RE.match(item.lower()):
        return "hash", {item.lower()}, [], [], None
    if PREFIX_RE.match(item.lower()):
        prefix = item.lower()
        hashes = sorted(
            {
                a.content_hash
                for a in engine.registry.select_assets(order="key")
                if a.content_hash.startswith(prefix)
            }
        )
        if len(hashes) == 1:
            return "hash", set(hashes), [], [], None
        if not hashes:
            return "hash", set(), [], [], f"{item}: no entry's content hash starts with it"
        shown = ", ".join(h[:16] for h in hashes[:3])
        return (
            "hash",
            set(),
            [],
            [],
            f"{item}: ambiguous, {len(hashes)} entries' hashes start with it ({shown}"
            f"{', ...' if len(hashes) > 3 else ''}); give more digits",
        )
    return (
        "path",
        set(),
        [],
        [],
        (
            f"{item}: not an existing or tracked path, a content hash (8 to 32 hex "
            "digits, unambiguous) or an imageUUID"
        ),
    )


# -- export / import ----------------------------------------------------------------------


def export_entries(engine: Engine, *, all_accounts: bool = False) -> Iterator[str]:
    """JSON lines (no newline) of this account's entries, for :func:`import_entries`.

    Lazily, by key; a store that can write the lines itself does (SQLite)."""
    namespace = None if all_accounts else engine.namespace
    made = engine.registry.export_lines(namespace, EXPORT_VERSION)
    if made is not None:
        yield from made
        return
    for a in engine.registry.iter_assets(namespace=namespace, order="key"):
        line = {
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
        }
        if a.url:
            line["url"] = a.url
        yield json.dumps(line, separators=(",", ":"))


def write_export(
    path: str | os.PathLike[str], lines: Iterable[str], protected: Sequence[str]
) -> int:
    """Write ``lines`` to ``path`` atomically and privately; the number written.

    Through a temporary file created exclusively in the target folder
    (``mkstemp``: an unpredictable name, ``O_EXCL``, never a planted symlink's
    target), mode 0600 whatever the umask, flushed to disk, then renamed over
    ``path`` (a symlink at ``path`` is replaced, never followed). Refuses a
    path that is one of ``protected`` (the live database and its ``-wal``/
    ``-shm``/``-journal``), by name, through symlinks or by inode.
    """
    import stat
    import tempfile

    target = os.path.abspath(os.fspath(path))
    for live in protected:
        for suffix in ("", "-wal", "-shm", "-journal"):
            other = os.path.abspath(live + suffix)
            same = os.path.realpath(target) == os.path.realpath(other) or target == other
            if not same:
                with contextlib.suppress(OSError):
                    same = os.path.samefile(target, other)
            if same:
                raise ConfigurationError(
                    f"refusing to write the export over the live database file {other}"
                )
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigurationError(f"cannot write {target}: it is a folder")
    folder, name = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigurationError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    n = 0
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            for line in lines:
                fh.write(line + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return n


#: The longest export line read (an entry is a few hundred bytes).
MAX_IMPORT_LINE = 1 << 20
#: Bytes skipped looking for the end of an over-long line before giving up on
#: the input (``/dev/zero`` never has one).
MAX_LINE_SKIP = 64 << 20
#: Malformed lines reported before the rest of an input is given up on.
MAX_IMPORT_ERRORS = 1000


class _InputEnds(Exception):
    """The input cannot be read further; ``str()`` says why."""


class _LineTooLong:
    """Stands for a line longer than :data:`MAX_IMPORT_LINE` (its text is not kept)."""


def _bounded_lines(stream: Any) -> Iterator[bytes | str | _LineTooLong]:
    """The lines of a file object, none longer than MAX_IMPORT_LINE in memory."""
    while True:
        line = stream.readline(MAX_IMPORT_LINE + 1)
        if not line:
            return
        if len(line) <= MAX_IMPORT_LINE or line[-1:] in (b"\n", "\n"):
            yield line
            continue
        skipped = len(line)
        while True:  # drop the rest of the line, within a bound
            more = stream.readline(1 << 16)
            skipped += len(more)
            if not more or more[-1:] in (b"\n", "\n"):
                break
            if skipped > MAX_LINE_SKIP:
                yield _LineTooLong()
                raise _InputEnds(
                    f"no end of line after {MAX_LINE_SKIP >> 20} MiB: the input was "
                    "given up on (is it an export file?)"
                )
        yield _LineTooLong()


#: Lines merged per transaction by :func:`import_entries`.
IMPORT_CHUNK = 5000


def import_entries(engine: Engine, lines: Iterable[str | bytes]) -> ImportReport:
    """Merge exported JSON lines; an entry never replaces a fresher one.

    Each malformed line is refused with its number (the others are imported);
    a file object is read with a bound on each line's length, and an input
    that never ends a line, or holds nothing but errors, is given up on with
    one last error instead of growing without bound. Read and merged a chunk
    at a time, each chunk its own transaction: memory stays bounded, and an
    import stopped halfway keeps what it merged (running it again merges the
    rest; what is already there is kept).
    """
    now = engine.stamp_now()  # no imported stamp is later than now
    errors: list[tuple[int, str]] = []
    good: list[AssetRow] = []
    added = replaced = kept = 0

    def flush() -> None:
        nonlocal added, replaced, kept
        if good:
            a, r, k = engine.registry.merge_assets(good)
            added, replaced, kept = added + a, replaced + r, kept + k
            good.clear()

    source: Iterable[Any] = _bounded_lines(lines) if hasattr(lines, "readline") else lines
    number = 0
    try:
        for number, line in enumerate(source, 1):
            if len(errors) >= MAX_IMPORT_ERRORS:
                errors.append((number, f"more than {MAX_IMPORT_ERRORS} malformed lines: stopped"))
                break
            _import_line(number, line, now, errors, good)
            if len(good) >= IMPORT_CHUNK:
                flush()
    except _InputEnds as exc:
        errors.append((number, str(exc)))
    flush()
    return ImportReport(added, replaced, kept, tuple(errors))


def _import_line(
    number: int, line: Any, now: float, errors: list[tuple[int, str]], good: list[AssetRow]
) -> None:
    if isinstance(line, _LineTooLong):
        errors.append((number, f"line longer than {MAX_IMPORT_LINE >> 20} MiB"))
        return
    if not isinstance(line, (str, bytes)):
        errors.append((number, f"not a line of text ({type(line).__name__})"))
        return
    if len(line) > MAX_IMPORT_LINE:
        errors.append((number, f"line longer than {MAX_IMPORT_LINE >> 20} MiB"))
        return
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            errors.append((number, "not UTF-8 text"))
            return
    if not line.strip():
        return
    parsed = _parse_export_line(line, now)
    if isinstance(parsed, str):
        errors.append((number, parsed))
    else:
        good.append(parsed)


# -- doctor ---------------------------------------------------------------------------------


def doctor(engine: Engine, fix: bool = False) -> DoctorReport:
    """Integrity, schema, size, settings and the account fingerprint (never the key)."""
    report = inspect_database(engine.store.path)
    if fix and report.needs_rebuild:
        report = engine.rebuild_store()
    report.account = engine.account
    report.namespace = engine.namespace
    report.settings = settings(engine)
    return report


def check_clock(engine: Engine, report: DoctorReport, learn_time: Callable[[], object]) -> None:
    """Compare this machine's clock with the server's (``learn_time()``: one cheap
    request, made only when this run has seen no answer yet and a key is set)."""
    if engine.clock_offset() is None and engine.account is not None:
        try:
            learn_time()
        except AssetCacheError as exc:
            report.clock = f"server time unknown: {exc}"
            return
    offset = engine.clock_offset()
    if offset is None:
        if engine.account is not None:
            report.clock = "server time unknown (no Date header in its answer)"
        return
    report.clock_skew_seconds = offset
    if abs(offset) > engine.policy.margin:
        report.clock = (
            f"this machine's clock is {abs(offset) / 3600:.1f}h "
            f"{'behind' if offset > 0 else 'ahead of'} the server's, more than the "
            "margin: stamps use the server's time (fix the clock: NTP)"
        )
    else:
        report.clock = f"agrees with the server's (within {max(abs(offset), 5):.0f}s)"


def settings(engine: Engine) -> dict[str, Any]:
    """The settings in force (never the API key)."""
    return {
        **engine.config.describe(),
        # A fleet's shared registry (password redacted), else the database file.
        "registry": engine.registry.path,
        # A fleet: this host's name in lease owners, and the shared store's deadlines.
        **engine.fleet_settings(),
        "local_copies": copies_info(engine),
        **resize_settings(engine.fit_variant),
    }


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


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"a duration must be a positive number of seconds, not {value!r}")
    return seconds


def _missing(path: str) -> bool:
    """True only when the path provably no longer exists (not on permission errors)."""
    import errno

    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)
    return False


def _parse_export_line(line: str, now: float) -> AssetRow | str:
    """An :class:`AssetRow` from one export line, or the reason it is refused."""
    try:
        obj = json.loads(line)
    except RecursionError:
        return "not an export entry (JSON nested too deeply)"
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
        if value != value.strip() or _CONTROL_RE.search(value):
            raise ValueError(f"{name!r} has surrounding whitespace or control characters")
        if len(value) > 1024:
            raise ValueError(f"{name!r} is longer than 1024 characters")
        return value

    def number(name: str) -> float:
        value = obj.get(name)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and 0 <= value <= _MAX_EPOCH
        ):
            return float(value)
        raise ValueError(
            f"{name!r} must be a number of epoch seconds between 0 and {_MAX_EPOCH:.0f}"
        )

    def count(name: str, default: int, low: int) -> int:
        value = obj.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_INT:
            raise ValueError(f"{name!r} must be an integer from {low} to 2**53")
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
        if namespace != namespace.strip() or _NS_BAD_RE.search(namespace):
            return f"'namespace' holds blanks or control characters: {namespace[:40]!r}"
        variant = text("variant", "")
        if _VARIANT_BAD_RE.search(variant):
            return f"'variant' holds blanks or control characters: {variant[:40]!r}"
        digest = text("hash")
        if not HASH_RE.fullmatch(digest):
            return f"'hash' must be 32 lowercase hex digits, not {digest[:40]!r}"
        uuid = text("uuid")
        if not UUID_RE.fullmatch(uuid):
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
        url = obj.get("url")
        if url is not None and not (
            isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) < 4096
        ):
            return "'url' must be an http(s) URL"
        return AssetRow(
            namespace,
            digest,
            variant,
            uuid.lower(),
            size,
            fmt,
            uploaded,
            last_used,
            count("upload_count", 1, 1),
            0,
            count("bytes_sent", 0, 0),
            url,
        )
    except ValueError as exc:
        return str(exc)


def doctor_fleet(
    url: str,
    local_db: str | None,
    default_dir: str | None,
    fix: bool = False,
    host_id: str | None = None,
) -> DoctorReport:
    """``doctor`` for a fleet: the shared server, then this host's local file.

    Never opens the cache (a server that is down is the thing to report), never
    creates a file named after the URL, and redacts every credential.
    """
    import time

    from ._storage import _fleet, _postgres, _repair

    now = time.time()
    local = _fleet.local_db_for(url, local_db, default_dir)
    facts, problems = _postgres.inspect_shared(url, now, host_id)
    fixed: list[str] = []
    if fix and facts.get("expired_leases"):
        try:
            dropped = _postgres.drop_expired_leases(url, now)
        except AssetCacheError as exc:
            problems.append(" ".join(str(exc).split()))
        else:
            problems = [p for p in problems if "expired upload lease" not in p]
            facts["expired_leases"] = 0
            fixed.append(f"dropped {dropped} expired upload lease(s)")
    # No local file yet: the first run on this host creates it (doctor never does).
    report = _repair.doctor(local, fix) if os.path.exists(local) else DoctorReport(local)
    report.actions += fixed
    backlog = _fleet.outbox_backlog(local)
    facts["outbox"] = backlog or 0
    if backlog:
        problems.append(
            f"{backlog} upload(s) made on this host are not yet in the shared store "
            "(they are shared as soon as a cache runs here and reaches the server)"
        )
    report.problems = problems + report.problems
    report.fleet = facts
    return report
