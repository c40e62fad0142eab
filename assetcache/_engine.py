"""The engine: one cache's config, stores, clock, counters and blocking steps.

Both twins of ``_client`` own one :class:`Engine`. The plans (``_resolve``,
``_tasks``, ``_lifecycle``, ``_maintenance``) decide; the engine only does
blocking things they ask for through ``Call`` effects: look up, claim, record,
release. No HTTP here.

The warm-hit path (:meth:`Engine.hit_row`) is one ``os.stat`` plus one
indexed SELECT joining the file's stat row to its asset row; it opens no file
and starts no write transaction (except, at most once per ``touch_every`` per
asset, to slide the stored window).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import PurePath
from typing import Any

from . import _policy, _transform
from ._config import Config
from ._copies import Copies
from ._errors import AssetCacheError, ConfigurationError, StoreError
from ._ingest import Ingest, Prepared
from ._models import Entry, Resolution
from ._protocol import TaskResult
from ._sources import Source
from ._storage import open_stores
from ._storage._base import AssetRow, FileRow, Key, Registry, UploadRecord, owner_id
from ._storage._repair import rebuild_database
from ._storage._sqlite import SQLiteStore
from ._version import __version__

log = logging.getLogger("assetcache")

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


class Engine:
    """Everything both twins share. Blocking methods only; no HTTP here."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] | None = None,
        store: SQLiteStore | None = None,
    ) -> None:
        self.config = config
        self._api_key = config.api_key
        self.base_url = config.base_url
        self.policy = config.policy
        self.clock = clock or time.time
        self.namespace = config.namespace
        # Keys carry a per-image variant: "" for bytes sent untouched (``variant``),
        # ``fit_variant`` for images the client resized or converted (_transform).
        self.variant = ""
        self.transform = _transform.configure(config.resize, config.max_side)
        self.fit_variant = self.transform.tag if self.transform else ""
        self.max_side = self.transform.max_side if self.transform else 0
        self.retry = config.retry
        self.concurrency = config.concurrency
        self.batch_size = config.batch_size
        self.batch_bytes = config.batch_bytes
        self.max_bytes = config.max_bytes
        self.racy_ns = config.racy_ns
        self.lease_ttl = config.lease_ttl
        self.task_type = config.task_type
        self.hash_workers = min(4, os.cpu_count() or 1)
        self._counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        # The registry is the store itself, or (fleet) the shared registry.
        self.store: SQLiteStore
        self.registry: Registry
        if store is not None:
            self.store, self.registry = store, store
        else:
            self.store, self.registry = open_stores(
                config.db,
                config.local_db,
                fresh_since=lambda: self.fresh_since(self.clock()),
                default_dir=config.fleet_dir,
                host_id=config.host_id,
            )
        try:
            self.copies = Copies(
                config.copies_dir or self.store.path + ".copies", config.copies_max_bytes
            )
        except ConfigurationError:
            self.close()
            raise
        #: Whether uploads keep a local copy (the copies kept earlier are read anyway).
        self.keep_copies = config.keep_copies
        self.ingest = Ingest(
            self.namespace, self.transform, self.max_bytes, self.racy_ns, self._get_file
        )
        # A fleet names its lease owner after the host id (``host_id=``).
        self.owner: str = getattr(self.registry, "owner", None) or owner_id()
        self._flights: dict[Key, concurrent.futures.Future[AssetRow]] = {}
        self._flight_lock = threading.Lock()

    # -- small helpers ---------------------------------------------------
    @property
    def account(self) -> str | None:
        return self.config.account

    def _get_file(self, path: str) -> FileRow | None:
        return self.store.get_file(path)

    def prepare(self, obj: Any) -> Prepared | AssetCacheError:
        """The prepared item of ``obj`` (``_ingest``), or its error."""
        return self.ingest.prepare(obj)

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def count(self, **counts: int) -> None:
        with self._count_lock:
            self._counts.update(counts)

    def pending_counts(self) -> dict[str, int]:
        """This process's counters not yet saved."""
        with self._count_lock:
            return dict(self._counts)

    def flush_counters(self) -> None:
        with self._count_lock:
            counts, self._counts = dict(self._counts), collections.Counter()
        if counts:
            try:
                self.registry.add_counters(self.namespace, counts)
            except StoreError:
                log.warning("could not save usage counters", exc_info=True)

    def headers(self) -> dict[str, str]:
        if not self._api_key:
            raise ConfigurationError(
                "no Runware API key: set RUNWARE_API_KEY (or pass api_key=...), "
                "or use the bundled emulator (assetcache --emulator ...)"
            )
        return {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"assetcache/{__version__}",
        }

    def resolution(self, label: str, row: AssetRow, outcome: str, sent: int = 0) -> Resolution:
        return Resolution(
            label,
            row.image_uuid,
            row.content_hash,
            outcome,
            None,
            row.size,
            row.format,
            _policy.expires_at(self.policy, row.last_used_at),
            sent,
        )

    def entry(self, a: AssetRow, paths: Sequence[str], now: float) -> Entry:
        """The :class:`Entry` of a registry row, judged at ``now``."""
        policy = self.policy
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

    # -- the warm-hit path -------------------------------------------------
    def fast_hit(self, obj: Any) -> Resolution | None:
        """Answer a path whose stat data and asset are known and fresh, or ``None``."""
        hit = self.hit_row(obj)
        if hit is None:
            return None
        row, last_used = hit
        return Resolution(
            obj if isinstance(obj, str) else str(obj),
            row[8],
            row[6],
            "hit",
            None,
            row[10],
            row[7],
            last_used + self.policy.retention,
        )

    def hit_row(self, obj: Any) -> tuple[tuple[Any, ...], float] | None:
        """The warm-hit core: ``(lookup row, last use)``, or ``None`` to take the slow path.

        Costs one ``os.stat`` and one indexed SELECT (``scripts/bench_hit.py``
        holds it to twice that floor); reads no file content and writes only
        when the stored last use is ``touch_every`` old. ``tests/test_hit_path.py``
        guards both promises.
        """
        if isinstance(obj, str):
            if obj[:5].lower() == "data:" or "://" in obj[:16]:
                return None
            path = obj
        elif isinstance(obj, PurePath):
            path = str(obj)
        else:
            return None
        if not path or "\x00" in path:
            return None
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        row = self.store.lookup_path(
            path.encode(_FS_ENCODING, _FS_ERRORS), self.namespace, self.fit_variant, self.max_side
        )
        if row is None or row[8] is None:
            return None
        if (
            row[0] != st.st_dev
            or row[1] != st.st_ino
            or row[2] != st.st_size
            or row[3] != st.st_mtime_ns
            or row[4] != st.st_ctime_ns
            or max(row[3], row[4]) + self.racy_ns > row[5]
        ):
            return None
        now = self.clock()
        last_used = row[9]
        policy = self.policy
        if now >= last_used + policy.retention - policy.margin:
            return None
        if now - last_used >= policy.touch_every:
            self.note_use((self.namespace, row[6], row[11]), now)
            last_used = now
        with self._count_lock:
            self._counts["hits"] += 1
            self._counts["bytes_saved"] += row[10]
        return row, last_used

    # -- lookups and records (blocking SQLite) --------------------------------
    def fresh_since(self, now: float) -> float:
        """Rows used after this instant are still served."""
        return now - (self.policy.retention - self.policy.margin)

    def settle(
        self, items: Sequence[Prepared], force: Collection[Key] = ()
    ) -> list[AssetRow | None]:
        """The fresh row for each prepared item (touched if due), else ``None``.

        Keys in ``force`` count as misses even when fresh (refresh renews them).
        Also records the stat rows of items that hit, in one transaction.
        """
        now = self.clock()
        since = self.fresh_since(now)
        rows: list[AssetRow | None] = []
        touches: list[Key] = []
        files: list[FileRow] = []
        found = self.registry.get_assets(item.key for item in items)
        for item in items:
            row = found.get(item.key)
            if row is not None and row.last_used_at > since and item.key not in force:
                if _policy.needs_touch(self.policy, row.last_used_at, now):
                    touches.append(row.key)
                if item.file_row is not None:
                    files.append(item.file_row)
                rows.append(row)
            else:
                rows.append(None)
        for key in dict.fromkeys(touches):
            self.note_use(key, now)
        self.store.put_files(files)
        return rows

    def join_flights(
        self, keys: Iterable[Key]
    ) -> tuple[list[Key], dict[Key, concurrent.futures.Future[AssetRow]]]:
        """Single flight in this process: the first asker of a key leads."""
        lead: list[Key] = []
        follow: dict[Key, concurrent.futures.Future[AssetRow]] = {}
        with self._flight_lock:
            for key in keys:
                fut = self._flights.get(key)
                if fut is None:
                    self._flights[key] = concurrent.futures.Future()
                    lead.append(key)
                else:
                    follow[key] = fut
        return lead, follow

    def land(self, key: Key, result: AssetRow | BaseException) -> None:
        with self._flight_lock:
            fut = self._flights.pop(key, None)
        if fut is None:
            return
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    def claim(
        self,
        keys: Sequence[Key],
        force: Collection[Key] = (),
        started: float = 0.0,
        limit: int | None = None,
    ) -> dict[Key, AssetRow | str]:
        """Leases for ``keys``; a forced key counts as done only if renewed after ``started``.

        At most ``limit`` keys are claimed (request-sized chunks: other processes
        take the rest side by side); free keys beyond it come back as ``"later"``.
        """
        now = self.clock()
        since = self.fresh_since(now)
        out: dict[Key, AssetRow | str] = {}
        room = len(keys) if limit is None else max(1, limit)
        # Another refresher (or a use) renewed a forced key since we started: theirs is as good.
        for group, threshold in (
            ([k for k in keys if k not in force], since),
            ([k for k in keys if k in force], max(started, since)),
        ):
            if not group:
                continue
            # Look first, without locks: while another process uploads, waiters poll,
            # and taking every key's lock on each poll would slow that very upload.
            seen = self.registry.peek(group, self.owner, now, threshold)
            out.update((k, v) for k, v in seen.items() if v != "free")
            free = [k for k in group if seen[k] == "free"]
            out.update((k, "later") for k in free[room:])
            free = free[:room]
            room -= len(free)
            if free:
                out.update(self.registry.claim(free, self.owner, now, self.lease_ttl, threshold))
        return out

    def note_use(self, key: Key, now: float) -> None:
        """A hit's use: a fleet records it here and shares it in the background (a
        hit never waits on the server); a single file records it at once."""
        note = getattr(self.registry, "note_use", None)
        if note is not None:
            note(key, now)
        else:
            self.registry.touch(key, now)

    def renew(self, keys: Sequence[Key]) -> set[Key]:
        """Fencing before an upload: the keys whose lease is still ours, renewed now
        (a fleet; a single SQLite file has no other host to lose a lease to)."""
        renew = getattr(self.registry, "renew", None)
        return set(keys) if renew is None else set(renew(keys, self.owner))

    def fleet_settings(self) -> dict[str, Any]:
        """A fleet's host id and deadlines (empty for a single database file)."""
        describe = getattr(self.registry, "settings", None)
        return describe() if callable(describe) else {}

    def record(
        self, done: Sequence[tuple[Prepared, TaskResult, int]], files: Sequence[FileRow]
    ) -> list[AssetRow]:
        now = self.clock()
        records = [
            UploadRecord(p.key[0], p.key[1], p.key[2], r.image_uuid, p.size, p.format, now, sent)
            for p, r, sent in done
        ]
        self.registry.record_uploads(records, self.owner, files)
        if self.keep_copies:
            self._keep_copies(done)
        return [
            AssetRow(
                rec.namespace,
                rec.content_hash,
                rec.variant,
                rec.image_uuid,
                rec.size,
                rec.format,
                now,
                now,
            )
            for rec in records
        ]

    def _keep_copies(self, done: Iterable[tuple[Prepared, Any, int]]) -> None:
        """After uploads were recorded: keep the original bytes of each (never raises)."""
        for prepared, _, _ in done:
            payload = getattr(prepared.payload, "original", None)
            if payload is None:
                if prepared.key[2]:
                    continue  # transformed, and the original is not at hand
                payload = prepared.payload()
            try:
                self.copies.keep(prepared.key[1], payload)
            except (OSError, AssetCacheError) as exc:
                log.warning("could not keep a local copy of %s: %s", prepared.label, exc)

    def locate(self, entry: Entry) -> tuple[Prepared | None, str | None, str | None]:
        """The entry's bytes, checked to still hash the same: ``(prepared, label, reason)``.

        Known paths first, then the local copies: read even while keeping new
        copies is off, as copies an earlier run kept are checked against their
        hash, so using them can only help.
        """
        tried: list[str] = []
        for path in entry.paths:
            try:
                prepared = self.prepare(Source.from_path(path))
            except AssetCacheError as exc:
                prepared = exc
            if isinstance(prepared, AssetCacheError):
                tried.append(str(prepared))
            elif prepared.key[1] != entry.content_hash:
                tried.append(f"{prepared.label}: changed since it was uploaded")
            else:
                return prepared, prepared.label, None
        stream = self.copies.open(entry.content_hash)
        if stream is not None:
            label = f"local copy {self.copies.path_for(entry.content_hash)}"
            prepared = self.prepare(Source("file", label, stream=stream))
            if isinstance(prepared, AssetCacheError):
                tried.append(str(prepared))
            elif prepared.key[1] == entry.content_hash:
                return prepared, prepared.label, None
        why = "; ".join(tried) if tried else "no known path holds these bytes"
        return None, None, f"content gone: {why}"

    def release(self, keys: Iterable[Key]) -> None:
        self.registry.release(keys, self.owner)

    def rebuild_store(self) -> Any:
        """Rebuild a damaged database file in place (``doctor(fix=True)``): the
        stores are closed, the file rebuilt (``_storage._repair``) and reopened."""
        old = self.store
        old.close()
        report = rebuild_database(old.path)
        self.store = SQLiteStore(old.path)
        if self.registry is old:
            self.registry = self.store
        else:
            from ._storage._fleet import FleetRegistry

            if isinstance(self.registry, FleetRegistry):
                self.registry.use_local(self.store)  # a fleet's local copy lives here too
        return report

    def close(self) -> None:
        self.flush_counters()
        if self.registry is not self.store:
            self.registry.close()
        self.store.close()
