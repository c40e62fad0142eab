"""The engine: one cache's config, stores, clock, counters and blocking steps.

Both twins of ``_client`` own one :class:`Engine`. The plans (``_resolve``,
``_tasks``, ``_lifecycle``, ``_maintenance``) decide; the engine only does
blocking things they ask for through ``Call`` effects: look up, claim, record,
release. No HTTP here.

The warm-hit path (:meth:`Engine.hit_row`) is one ``os.stat`` plus one
indexed SELECT joining the file's stat row to its asset row; it opens no file
and starts no write transaction (serving is remembered in memory and saved
with the counters; only with ``served_is_used``, at most once per
``touch_every`` per asset, does a hit slide the stored window).

Time: ``judge_now()`` is the server's time when this run has learnt it from an
answer's ``Date`` header (and the local clock has not jumped since), else the
local clock; ``stamp_now()`` too (a local clock off by more than the margin
is also warned about, once). :meth:`Engine.record_evidence` is the one way to say
"Runware used these entries": upload answers, ``use()``, ``touch()`` and the
task path all go through it or through :meth:`Engine.record`.
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
from ._coalesce import Coalescer
from ._config import Config, RetryPolicy
from ._copies import Copies
from ._errors import AssetCacheError, ConfigurationError, ProtocolError, StoreError
from ._ingest import Ingest, Prepared
from ._models import Entry, Resolution
from ._pausepoints import pause_point
from ._protocol import TaskResult, canonical_uuid, server_date
from ._sources import Source
from ._storage import open_stores
from ._storage._base import AssetRow, FileRow, Key, Registry, UploadRecord, owner_id
from ._storage._sqlite import SQLiteStore
from ._version import __version__

log = logging.getLogger("assetcache")

#: A server time learnt from an answer's Date header is trusted this long (seconds).
SERVER_TIME_MAX_AGE = 300.0
#: A local clock that moved this much more (or less) than monotonic time since the
#: server's time was learnt has jumped: the learnt offset no longer applies.
CLOCK_JUMP = 60.0
#: Clocks this close agree: the Date header has whole seconds and the answer takes
#: time to arrive, so within this the local clock is the finer one and is used.
CLOCK_AGREE = 5.0

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


#: Paths looked up per SELECT by :meth:`Engine.fast_hits` (well below SQLite's
#: bound-parameter cap).
HIT_CHUNK = 500

#: A lease claimed this fraction of its TTL ago (by the monotonic clock) is
#: still ours without asking the database: it cannot have expired, so no other
#: process can have taken it over (``renew``'s fencing; a fleet always asks).
FENCE_FRESH = 0.1

#: Transport error codes meaning the endpoint cannot be reached at all.
UNREACHABLE = frozenset({"unreachable", "tls"})


class Breaker:
    """Counts requests in a row that could not reach the endpoint at all; once
    ``unreachable_after`` did, requests fail at once with the last such error,
    and one request per ``unreachable_pause`` seconds probes the endpoint again."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.after = max(1, policy.unreachable_after)
        self.pause = policy.unreachable_pause
        self.failures = 0
        self.last: AssetCacheError | None = None
        self.opened_at = 0.0
        self._lock = threading.Lock()

    def blocked(self) -> AssetCacheError | None:
        """The error to fail with at once, or None to go ahead."""
        with self._lock:
            if self.failures < self.after or self.last is None:
                return None
            now = time.monotonic()
            if now - self.opened_at >= self.pause:
                self.opened_at = now  # this one request probes the endpoint
                return None
            last, failures = self.last, self.failures
        return type(last)(
            f"{last.message} (not tried: {failures} requests in a row could not "
            "reach the endpoint)",
            code=getattr(last, "code", None),
        )

    def failed(self, exc: AssetCacheError) -> bool:
        """Record an unreachable endpoint; True when the breaker is (now) open."""
        with self._lock:
            self.failures += 1
            self.last = exc
            if self.failures >= self.after:
                self.opened_at = time.monotonic()
                return True
            return False

    def reached(self) -> None:
        with self._lock:
            self.failures = 0
            self.last = None


def _duration_text(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d{hours}h" if days else f"{hours}h{rest // 60}m"


class Heartbeat:
    """Renews the upload leases an engine holds, every third of the lease TTL, for
    as long as their uploads are in flight: an upload slower than the TTL (a big
    image on a slow link, long 429 waits) is not taken over and done twice by
    another process. A thread of its own, running only while a lease is held,
    calling the registry's ``renew`` (a fleet registry, which beats on its own, is
    left to do so)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held: set[Key] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, keys: Iterable[Key]) -> None:
        if getattr(self._engine.registry, "beats_leases", False):
            # A fleet renews its leases itself, on a connection of its own and at
            # the period its takeover rule measures (``FleetRegistry``).
            return
        with self._lock:
            self._held.update(keys)
            if self._held and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="assetcache-lease-heartbeat", daemon=True
                )
                self._thread.start()

    def drop(self, keys: Iterable[Key]) -> None:
        with self._lock:
            self._held.difference_update(keys)

    def _run(self) -> None:
        engine = self._engine
        interval = max(0.01, engine.lease_ttl / 3)
        while not self._stop.wait(interval):
            with self._lock:
                keys = sorted(self._held)
                if not keys:
                    self._thread = None
                    return
            try:
                engine.registry.renew(keys, engine.owner, engine.judge_now() + engine.lease_ttl)
            except Exception:  # a blip: the next beat tries again, well within the TTL
                log.warning("could not renew upload leases", exc_info=True)
        with self._lock:
            self._thread = None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(5.0)


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
        self.breaker = Breaker(config.retry)
        self.concurrency = config.concurrency
        self.batch_size = config.batch_size
        self.batch_bytes = config.batch_bytes
        self.max_bytes = config.max_bytes
        self.racy_ns = config.racy_ns
        self.lease_ttl = config.lease_ttl
        #: Serving counts as a use (the caller passes every served UUID into a task).
        self.served_is_used = config.served_is_used
        self.task_type = config.task_type
        self.hash_workers = min(4, os.cpu_count() or 1)
        self._counts: collections.Counter[str] = collections.Counter()
        #: What this process counted and already saved (lifetime totals = this + pending).
        self._flushed: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        # When each entry was last handed out; kept in memory (a hit writes
        # nothing) and saved with the counters.
        self._served: dict[Key, float] = {}
        # The server's time, from the Date header of its answers: server - local.
        self._server_offset: float | None = None
        self._server_seen: float | None = None  # time.monotonic() of the last Date read
        self._server_local = 0.0  # the local clock then
        self._skew_warned = False
        self.heartbeat = Heartbeat(self)
        # The registry is the store itself, or (fleet) the shared registry.
        self.store: SQLiteStore
        self.registry: Registry
        if store is not None:
            self.store, self.registry = store, store
        else:
            self.store, self.registry = open_stores(
                config.db,
                config.local_db,
                fresh_since=lambda: self.fresh_since(self.judge_now()),
                default_dir=config.fleet_dir,
                shared=config.shared_db,
                folders=config.default_folders,
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
            self.namespace,
            self.transform,
            self.max_bytes,
            self.racy_ns,
            self._get_file,
            self._get_files,
        )
        # Resizing wanted ("auto") but impossible: say so when a big image goes whole.
        self.ingest.warn_unresized = (
            self.transform is None
            and str(config.resize).lower() == "auto"
            and not _transform.pillow_installed()
        )
        self.ingest.max_side = config.max_side
        # A fleet names its lease owner after the host id (``host_id=``).
        self.owner: str = getattr(self.registry, "owner", None) or owner_id()
        #: Keys being uploaded by this process: their future once someone waits on it.
        self._flights: dict[Key, concurrent.futures.Future[AssetRow] | None] = {}
        self._flight_lock = threading.Lock()
        self._recorder = Coalescer(self._record_many)
        #: When (``monotonic``) each lease held now was claimed (``renew``'s fencing).
        self._claimed_at: dict[Key, float] = {}
        self.monotonic: Callable[[], float] = time.monotonic

    # -- small helpers ---------------------------------------------------
    @property
    def account(self) -> str | None:
        return self.config.account

    def _get_file(self, path: str) -> FileRow | None:
        return self.store.get_file(path)

    def _get_files(self, paths: list[str]) -> dict[str, FileRow]:
        return self.store.get_files(paths)

    def prepare(self, obj: Any) -> Prepared | AssetCacheError:
        """The prepared item of ``obj`` (``_ingest``), or its error."""
        return self.ingest.prepare(obj)

    def redact(self, text: str) -> str:
        for secret in self.config.secrets:
            text = text.replace(secret, "***")
        return text

    def count(self, **counts: int) -> None:
        with self._count_lock:
            self._counts.update(counts)

    def process_counts(self) -> dict[str, int]:
        """Everything this process counted since it started (saved or not)."""
        with self._count_lock:
            total = self._flushed + self._counts
        return dict(total)

    def pending_counts(self) -> dict[str, int]:
        """This process's counters not yet saved."""
        with self._count_lock:
            return dict(self._counts)

    def flush_counters(self) -> None:
        with self._count_lock:
            counts, self._counts = dict(self._counts), collections.Counter()
            served, self._served = self._served, {}
            self._flushed.update(counts)
        if counts:
            try:
                self.registry.add_counters(self.namespace, counts)
            except StoreError as exc:
                # One line (no traceback): the counters are statistics, not state.
                log.warning("could not save usage counters: %s", exc)
        if served:
            try:
                self.store.mark_served(served.items())
            except StoreError as exc:
                log.warning("could not save when entries were last served: %s", exc)

    # -- serving (not evidence) ------------------------------------------------
    def note_served(self, key: Key, when: float) -> None:
        """Remember that ``key``'s UUID was handed out (not evidence of a use)."""
        with self._count_lock:
            if self._served.get(key, 0.0) < when:
                self._served[key] = when

    def served_times(self, keys: Iterable[Key]) -> dict[Key, float]:
        """When each entry was last handed out: stored, or by this process since."""
        keys = list(keys)
        out = self.store.served_times(keys)
        with self._count_lock:
            for key in keys:
                when = self._served.get(key)
                if when is not None and when > out.get(key, 0.0):
                    out[key] = when
        return out

    def last_served(self, namespace: str | None) -> float | None:
        """The last time any entry (of ``namespace``; all: ``None``) was handed out."""
        stored = self.store.last_served(namespace)
        with self._count_lock:
            pending = [t for k, t in self._served.items() if namespace in (None, k[0])]
        return max([t for t in (stored, *pending) if t is not None], default=None)

    # -- time ------------------------------------------------------------
    def learn_server_time(self, headers: dict[str, str], local: float | None = None) -> None:
        """Note the server's time from an answer's ``Date`` header."""
        server = server_date(headers)
        if server is None:
            return
        local = self.clock() if local is None else local
        # Date has whole seconds and was written before this answer arrived: the
        # server's clock is at least that far on, so stamps made with it are never
        # ahead of the server's own time.
        offset = server - local
        self._server_offset = offset
        self._server_seen = time.monotonic()
        self._server_local = local
        if abs(offset) > self.policy.margin and not self._skew_warned:
            self._skew_warned = True
            log.warning(
                "this machine's clock is %s %s Runware's; assetcache uses the server's "
                "time for its stamps (fix the clock: NTP)",
                _duration_text(abs(offset)),
                "behind" if offset > 0 else "ahead of",
            )

    def _offset(self, local: float) -> float | None:
        """The server's offset, while the local clock has not jumped since it was
        learnt (a clock stepped by NTP, a VM restored): then it is forgotten."""
        seen = self._server_seen
        if seen is None:
            return None
        moved = (local - self._server_local) - (time.monotonic() - seen)
        if abs(moved) > CLOCK_JUMP:
            self._server_offset = self._server_seen = None
            return None
        offset = self._server_offset
        return 0.0 if offset is not None and abs(offset) <= CLOCK_AGREE else offset

    def clock_offset(self) -> float | None:
        """Server time minus local time, when this run knows it."""
        return self._offset(self.clock())

    def server_time_recent(self) -> bool:
        seen = self._server_seen
        return (
            seen is not None
            and time.monotonic() - seen < SERVER_TIME_MAX_AGE
            and self._offset(self.clock()) is not None
        )

    def judge_now(self) -> float:
        """The time freshness is judged by: the server's when this run knows it."""
        local = self.clock()
        return _policy.judge_time(local, self._offset(local))

    def stamp_now(self) -> float:
        """The time evidence is stamped with: the server's when this run knows it
        (a local clock off by more than the margin is also warned about), else
        the local one."""
        local = self.clock()
        return _policy.stamp_time(local, self._offset(local), self.policy.margin)

    def in_doubt(self, last_used_at: float, now: float) -> bool:
        """Near the serve limit (or stamped in the future) with no recent server
        time: this run asks the server's time before it decides."""
        return not self.server_time_recent() and _policy.in_doubt(self.policy, last_used_at, now)

    # -- evidence ----------------------------------------------------------
    def record_evidence(
        self, targets: Iterable[Key | str], at: float | None = None
    ) -> list[AssetRow]:
        """Record evidence that Runware used these entries (keys, or imageUUIDs of this
        account) at ``at`` (default now; never later than now): a task seen to
        succeed with them. Slides their windows; an entry whose upload Runware had
        already deleted by then is not revived. Returns the rows found.

        Stamps are in the server's time when the local clock is off: a caller that
        has the task's answer calls :meth:`learn_server_time` with its headers first.
        """
        now = self.stamp_now()
        when = now if at is None else min(float(at), now)
        rows: dict[Key, AssetRow] = {}
        for target in targets:
            if isinstance(target, str):
                for row in self.registry.find_uuid(canonical_uuid(target)):
                    if row.namespace == self.namespace:
                        rows.setdefault(row.key, row)
            else:
                found = self.registry.get_asset(target)
                if found is not None:
                    rows.setdefault(found.key, found)
        for row in rows.values():
            if row.last_used_at < when < _policy.expires_at(
                self.policy, row.last_used_at
            ) and not _policy.is_suspect(self.policy, row.last_used_at, now):
                self.registry.touch(row.key, when)
        return list(rows.values())

    def vet(self, done: Sequence[tuple[Key, TaskResult]]) -> dict[Key, ProtocolError]:
        """Results whose UUID this account's registry already holds for other bytes:
        a protocol error, and the older entry is no longer served that UUID either."""
        bad: dict[Key, ProtocolError] = {}
        held = self.registry.find_uuids([res.image_uuid for _, res in done])
        for key, res in done:
            found = held.get(res.image_uuid, [])
            others = [r for r in found if r.namespace == key[0] and r.content_hash != key[1]]
            if not others:
                continue
            bad[key] = ProtocolError(
                f"Runware answered {res.image_uuid}, the UUID of other cached bytes "
                f"({others[0].content_hash}); it is used for neither",
                task_uuid=res.task_uuid,
                code="duplicateResult",
            )
            stamp = self.judge_now() - self.policy.retention - self.policy.clock_skew
            for r in others:
                self.registry.expire_asset(r.key, stamp, r.image_uuid)
        return bad

    def headers(self) -> dict[str, str]:
        if not self._api_key:
            raise ConfigurationError(
                "no Runware API key: set RUNWARE_API_KEY (or pass api_key=...), "
                "or use the bundled emulator (assetcache --emulator ...)"
            )
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"assetcache/{__version__}",
        }
        if self.config.proxy_auth:
            headers["Proxy-Authorization"] = self.config.proxy_auth
        return headers

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
            row.url,
        )

    def entry(
        self, a: AssetRow, paths: Sequence[str], now: float, served: float | None = None
    ) -> Entry:
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
            served,
        )

    # -- the warm-hit path -------------------------------------------------
    def fast_hit(self, obj: Any, touch: bool = True) -> Resolution | None:
        """Answer a path whose stat data and asset are known and fresh, or ``None``."""
        hit = self.hit_row(obj, touch)
        if hit is None:
            return None
        return self._hit_resolution(obj if isinstance(obj, str) else str(obj), *hit)

    def _hit_resolution(self, source: str, row: tuple[Any, ...], last_used: float) -> Resolution:
        """A warm hit's answer from its lookup row (see ``lookup_path``)."""
        return Resolution(
            source, row[8], row[6], "hit", None, row[10], row[7], last_used + self.policy.retention
        )

    def fast_hits(
        self, objs: Sequence[Any], touch: bool = True, sizes: dict[int, int] | None = None
    ) -> list[Resolution | None]:
        """:meth:`fast_hit` for a batch: one ``os.stat`` per path, one SELECT per few
        hundred paths (not one per path); ``None`` where the slow path decides.
        ``sizes`` gets the size each missed path had (by index), for splitting them."""
        out: list[Resolution | None] = [None] * len(objs)
        named = [
            (i, obj if isinstance(obj, str) else str(obj))
            for i, obj in enumerate(objs)
            if isinstance(obj, (str, PurePath))
        ]
        for start in range(0, len(named), HIT_CHUNK):
            part = named[start : start + HIT_CHUNK]
            stats = self.stat_paths([text for _, text in part])
            keys = [s[0] for s in stats if s is not None]
            if not keys:
                continue
            try:
                found = self.store.lookup_paths(
                    keys, self.namespace, self.fit_variant, self.max_side
                )
            except StoreError:
                continue  # the slow path meets the same error and reports it per item
            for (i, text), st in zip(part, stats, strict=True):
                if st is None:
                    continue
                try:
                    hit = self._accept(found.get(st[0]), st[1], touch)
                except StoreError:
                    continue
                if hit is not None:
                    out[i] = self._hit_resolution(text, *hit)
                elif sizes is not None:
                    sizes[i] = st[1].st_size
        return out

    def hit_row(self, obj: Any, touch: bool = True) -> tuple[tuple[Any, ...], float] | None:
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
        return self._accept(row, st, touch)

    def _accept(
        self, row: tuple[Any, ...] | None, st: os.stat_result, touch: bool, count: bool = True
    ) -> tuple[tuple[Any, ...], float] | None:
        """A looked-up row is a hit when the stat data still vouch for the content
        (not racily clean) and the entry is served; touched when due."""
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
        local = self.clock()
        offset = self._offset(local) if self._server_seen is not None else None
        now = local if offset is None else local + offset
        last_used = row[9]
        policy = self.policy
        limit = last_used + policy.retention - policy.margin
        future = last_used > now + policy.future_tolerance  # suspect, or a clock behind
        if (now >= limit - policy.clock_skew or future) and (
            now >= limit or future or not self.server_time_recent()
        ):
            return None  # the slow path decides (and asks the server's time if in doubt)
        key = (self.namespace, row[6], row[11])
        if touch and self.served_is_used and now - last_used >= policy.touch_every:
            if not self.server_time_recent():
                return None  # the slow path learns the server's time to stamp the use
            self.note_use(key, self.stamp_now())
            last_used = now
        with self._count_lock:
            if count:
                self._counts["hits"] += 1
                self._counts["bytes_saved"] += row[10]
            if self._served.get(key, 0.0) < now:
                self._served[key] = now
        return row, last_used

    def hit_rows(
        self, paths: Sequence[str], touch: bool = True, all_or_nothing: bool = False
    ) -> list[tuple[tuple[Any, ...], float] | None]:
        """:meth:`hit_row` for several path strings, in one SELECT (a task's images).
        ``all_or_nothing``: unless every path hits, count none (the caller takes
        the slow path for all of them, which counts them then)."""
        stats = self.stat_paths(paths)
        keys = [s[0] for s in stats if s is not None]
        if not keys:
            return [None] * len(paths)
        found = self.store.lookup_paths(keys, self.namespace, self.fit_variant, self.max_side)
        if not all_or_nothing:
            return [
                None if s is None else self._accept(found.get(s[0]), s[1], touch) for s in stats
            ]
        out = [
            None if s is None else self._accept(found.get(s[0]), s[1], touch, False) for s in stats
        ]
        if all(hit is not None for hit in out):
            with self._count_lock:
                self._counts["hits"] += len(out)
                self._counts["bytes_saved"] += sum(hit[0][10] for hit in out if hit is not None)
        return out

    @staticmethod
    def stat_paths(paths: Sequence[str]) -> list[tuple[bytes, os.stat_result] | None]:
        """``(files-table key, stat)`` of each path string; ``None`` for what is no
        path (a data URI, a URL) or cannot be stat'ed."""
        stats: list[tuple[bytes, os.stat_result] | None] = []
        for obj in paths:
            if obj[:5].lower() == "data:" or "://" in obj[:16] or not obj or "\x00" in obj:
                stats.append(None)
                continue
            path = os.path.abspath(obj)
            try:
                stats.append((path.encode(_FS_ENCODING, _FS_ERRORS), os.stat(path)))
            except (OSError, ValueError):
                stats.append(None)
        return stats

    # -- lookups and records (blocking SQLite) --------------------------------
    def fresh_since(self, now: float) -> float:
        """Rows used after this instant are still served."""
        return now - (self.policy.retention - self.policy.margin)

    def settle(
        self,
        items: Sequence[Prepared],
        force: Collection[Key] = (),
        touch: bool = True,
        checked: bool = False,
    ) -> list[AssetRow | None] | None:
        """The fresh row for each prepared item, else ``None``; ``None`` for the
        whole list when a row is in doubt (near its serve limit, or stamped in the
        future) and this run must learn the server's time first (unless
        ``checked``: then a row still in doubt is a miss, uploaded rather than
        guessed). ``touch=False``: a use is never recorded here (the task path
        records evidence once its task succeeded).

        Keys in ``force`` count as misses even when fresh (refresh renews them).
        Serving is remembered apart; it slides the window only with
        ``served_is_used``. Also records the stat rows of items that hit.
        """
        now = self.judge_now()
        rows: list[AssetRow | None] = []
        touches: list[Key] = []
        files: list[FileRow] = []
        found = self.registry.get_assets(item.key for item in items)
        policy = self.policy
        for item in items:
            row = found.get(item.key)
            fresh = False
            if row is not None and item.key not in force:
                doubt = self.in_doubt(row.last_used_at, now)
                if doubt and not checked:
                    return None
                fresh = _policy.is_fresh(policy, row.last_used_at, now) and not doubt
            if fresh and row is not None:
                if (
                    touch
                    and self.served_is_used
                    and _policy.needs_touch(policy, row.last_used_at, now)
                ):
                    if not checked and not self.server_time_recent():
                        return None  # a use to stamp: in the server's time
                    touches.append(row.key)
                if item.file_row is not None:
                    files.append(item.file_row)
                self.note_served(row.key, now)
                rows.append(row)
            else:
                rows.append(None)
        # Best-effort writes: a hit stands on the rows read above. A full disk
        # (or a lost shared store) costs the window slide and the stat shortcut
        # of these files, never the answers.
        try:
            if touches:
                stamp = self.stamp_now()
                for key in dict.fromkeys(touches):
                    self.note_use(key, stamp)
        except StoreError as exc:
            log.warning("could not record uses of cached entries: %s", exc)
        try:
            self.store.put_files(files)
        except StoreError as exc:
            log.warning("could not record file hashes: %s", exc)
        return rows

    def join_flights(
        self, keys: Iterable[Key]
    ) -> tuple[list[Key], dict[Key, concurrent.futures.Future[AssetRow]]]:
        """Single flight in this process: the first asker of a key leads.

        A flight's future is made only when a second asker comes: most keys of a
        batch have one asker, and a future (a lock and a condition) for each
        would be a third of the cost of flying them."""
        lead: list[Key] = []
        follow: dict[Key, concurrent.futures.Future[AssetRow]] = {}
        flights = self._flights
        with self._flight_lock:
            for key in keys:
                if key not in flights:
                    flights[key] = None
                    lead.append(key)
                    continue
                fut = flights[key]
                if fut is None:
                    fut = flights[key] = concurrent.futures.Future()
                follow[key] = fut
        return lead, follow

    def land(self, key: Key, result: AssetRow | BaseException) -> None:
        self.heartbeat.drop([key])
        self._claimed_at.pop(key, None)
        with self._flight_lock:
            fut = self._flights.pop(key, None)
        if fut is None:  # no flight, or nobody waiting on it
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
        now = self.judge_now()
        claimed_at = self.monotonic()  # before the claim: its age is never understated
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
            # A row stamped in the future is suspect: not fresh, whatever its stamp says.
            until = now + self.policy.future_tolerance
            seen = self.registry.peek(group, self.owner, now, threshold, until)
            out.update((k, v) for k, v in seen.items() if v != "free")
            free = [k for k in group if seen[k] == "free"]
            out.update((k, "later") for k in free[room:])
            free = free[:room]
            room -= len(free)
            if free:
                before = getattr(self.registry, "takeovers", 0)
                got = self.registry.claim(free, self.owner, now, self.lease_ttl, threshold, until)
                taken = getattr(self.registry, "takeovers", 0) - before
                if taken > 0:
                    self.count(takeovers=taken)
                mine = [k for k, v in got.items() if v == "claimed"]
                self.heartbeat.hold(mine)
                self._claimed_at.update(dict.fromkeys(mine, claimed_at))
                out.update(got)
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
        (a lease that expired while we waited may have been taken over).

        A lease of a single database claimed less than :data:`FENCE_FRESH` of its
        TTL ago is ours without asking: there, only an expired lease (or a dead
        owner) is taken over. A fleet's takeover rule also watches heartbeats,
        so there every lease is asked for."""
        fresh: set[Key] = set()
        if self.registry is self.store:
            cutoff = self.monotonic() - self.lease_ttl * FENCE_FRESH
            claimed = self._claimed_at
            fresh = {k for k in keys if claimed.get(k, cutoff) > cutoff}
        rest = [k for k in keys if k not in fresh]
        if not rest:
            return fresh
        return fresh | set(self.registry.renew(rest, self.owner, self.judge_now() + self.lease_ttl))

    def fleet_settings(self) -> dict[str, Any]:
        """A fleet's host id and deadlines (empty for a single database file)."""
        describe = getattr(self.registry, "settings", None)
        return describe() if callable(describe) else {}

    def record(
        self, done: Sequence[tuple[Prepared, TaskResult, int]], files: Sequence[FileRow]
    ) -> list[AssetRow]:
        """Store what uploads returned, with their file rows; committed on return.

        The records of threads that answer together are committed together
        (:class:`Coalescer`): one transaction for a wave of answers."""
        pause_point("record")
        return self._recorder((done, files))

    def _record_many(
        self, items: list[tuple[Sequence[tuple[Prepared, TaskResult, int]], Sequence[FileRow]]]
    ) -> list[list[AssetRow]]:
        now = self.stamp_now()  # the upload is evidence, stamped in the server's time
        records = [
            [
                UploadRecord(
                    p.key[0],
                    p.key[1],
                    p.key[2],
                    r.image_uuid,
                    p.size,
                    p.format,
                    now,
                    sent,
                    r.image_url,
                )
                for p, r, sent in done
            ]
            for done, _ in items
        ]
        self.registry.record_uploads(
            [rec for recs in records for rec in recs],
            self.owner,
            [row for _, files in items for row in files],
        )
        if self.keep_copies:
            for done, _ in items:
                self._keep_copies(done)
        return [
            [
                AssetRow(
                    rec.namespace,
                    rec.content_hash,
                    rec.variant,
                    rec.image_uuid,
                    rec.size,
                    rec.format,
                    now,
                    now,
                    url=rec.url,
                )
                for rec in recs
            ]
            for recs in records
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
        keys = list(keys)
        self.heartbeat.drop(keys)
        for key in keys:
            self._claimed_at.pop(key, None)
        self.registry.release(keys, self.owner)

    def rebuild_store(self) -> Any:
        """Rebuild a damaged database file in place (``doctor(fix=True)``): the
        stores are closed, the file rebuilt (``_storage._repair``) and reopened."""
        old = self.store
        old.close()
        from ._storage._repair import rebuild_database  # here: only a repair needs it

        report = rebuild_database(old.path)
        self.store = SQLiteStore(old.path, shared=self.config.shared_db)
        if self.registry is old:
            self.registry = self.store
        else:
            from ._storage._fleet import FleetRegistry

            if isinstance(self.registry, FleetRegistry):
                self.registry.use_local(self.store)  # a fleet's local copy lives here too
        return report

    def close(self) -> None:
        self.heartbeat.close()
        self.flush_counters()
        if self.registry is not self.store:
            self.registry.close()
        self.store.close()
