"""A fleet host's view of the shared registry: the PostgreSQL rows, mirrored locally.

Each host keeps its file index, a copy of the registry rows it has used, and
an outbox of uploads not yet shared, in its local SQLite file, so a warm hit
never leaves the machine and an upload is never lost to a database blip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .._errors import SchemaTooNew, StoreError
from ._base import AssetRow, FileRow, Key, Order, UploadRecord
from ._postgres import FleetSettings, PostgresRegistry, fleet_owner, redact_url
from ._sqlite import SQLiteStore

log = logging.getLogger("assetcache")


# -- this host's view of the fleet --------------------------------------------------------------

_OUTBOX = """
CREATE TABLE IF NOT EXISTS fleet_outbox (
    namespace TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    variant TEXT NOT NULL,
    image_uuid TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    bytes_sent INTEGER NOT NULL,
    owner TEXT NOT NULL,
    url TEXT,
    PRIMARY KEY (namespace, content_hash, variant)
) WITHOUT ROWID
"""


def _create_outbox(conn: Any) -> None:
    conn.execute(_OUTBOX)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(fleet_outbox)")}
    if "url" not in columns:  # an outbox from before uploads kept their URL
        conn.execute("ALTER TABLE fleet_outbox ADD COLUMN url TEXT")


class FleetRegistry:
    """The shared registry seen through this host's local copy.

    Reads prefer the local copy while it is fresh and fall back to the shared
    store, copying what they find. An upload is written to the local file
    first (its row, and an outbox entry), then shared; while the server cannot
    take it, a background thread replays the outbox, and renews the upload's
    lease so no other host uploads it again. The same thread renews every lease
    this process holds (the heartbeat), retries releases, and sends uses
    (``touch``) out, so a hit never waits on the server.
    """

    #: This registry renews the leases it holds itself (the engine's
    #: ``Heartbeat`` leaves them to it): the heartbeat thread below.
    beats_leases = True

    def __init__(
        self,
        local: SQLiteStore,
        shared: PostgresRegistry,
        fresh_since: Callable[[], float] | None = None,
    ) -> None:
        self.local = local
        self.shared = shared
        self.path = shared.path
        self.host = shared.host
        self.owner = fleet_owner(self.host)
        #: Rows used after this instant are fresh (the cache's policy and clock).
        self.fresh_since: Callable[[], float] = fresh_since or (lambda: float("inf"))
        self._lock = threading.Lock()
        self._held: set[Key] = set()
        self._uses: dict[Key, float] = {}
        # (cache clock at the last claim, monotonic then, lease TTL): to extend leases.
        self._clock: tuple[float, float, float] = (time.time(), time.monotonic(), 300.0)
        self._wake = threading.Event()
        #: Wakes the heartbeat early: closing, or a claim whose TTL needs beats
        #: sooner than the thread is asleep for.
        self._beat_wake = threading.Event()
        self._stop = threading.Event()
        self._healthy = True
        self.last_error: StoreError | None = None
        with local.write("create the fleet outbox") as conn:
            _create_outbox(conn)
        try:
            shared.clean_leftovers(self.owner)
        except StoreError as exc:
            log.warning("could not clean up this host's leftover leases: %s", exc)
        # Two threads, each with a connection of its own: the heartbeat must not
        # wait behind a replay stuck on a lock, nor behind the workers' pool.
        self._threads = [
            threading.Thread(target=self._beat_loop, name="assetcache-heartbeat", daemon=True),
            threading.Thread(target=self._sync_loop, name="assetcache-fleet-sync", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def takeovers(self) -> int:
        """Upload leases this process took over (metrics)."""
        return int(self.shared.takeovers)

    # -- background: heartbeat, outbox, uses -------------------------------------------
    def _beat_loop(self) -> None:
        self.shared.use_background_connection()
        backoff = 0.1
        while not self._stop.is_set():
            ok = self._guarded(self.beat_once)
            backoff = 0.1 if ok else min(backoff * 2, 1.0)
            self._beat_wake.wait(self.beat_period() if ok else backoff)
            self._beat_wake.clear()

    def beat_period(self) -> float:
        """Seconds between heartbeats: the ``heartbeat`` setting, and at most a third
        of the lease TTL (a lease must not expire between two beats)."""
        with self._lock:
            ttl = self._clock[2]
        return max(0.01, min(self.shared.settings.heartbeat, ttl / 3))

    def _sync_loop(self) -> None:
        self.shared.use_background_connection()
        backoff = 0.1
        while not self._stop.is_set():
            ok = self._guarded(self.sync_once)
            backoff = 0.1 if ok else min(backoff * 2, 1.0)
            self._wake.wait(self.shared.settings.heartbeat if ok else backoff)
            self._wake.clear()

    @staticmethod
    def _guarded(step: Callable[[], bool]) -> bool:
        """One background step; an unexpected error is logged, and the loop goes on
        (a heartbeat thread that died would let other hosts take our leases)."""
        try:
            return step()
        except Exception:
            log.exception("fleet background step failed; retrying")
            return False

    def beat_once(self, *, final: bool = False) -> bool:
        """Renew the leases this process holds (drop the others it owns). True if it landed."""

        def held() -> tuple[set[Key], float]:
            # Asked inside the beat's transaction (see PostgresRegistry.beat).
            with self._lock:
                keys = set() if final else set(self._held)
                now, mono, ttl = self._clock
            return keys, now + (time.monotonic() - mono) + ttl

        try:
            self.shared.beat(self.owner, held)
        except StoreError as exc:
            self._lost(exc)
            return False
        return True

    def sync_once(self, *, final: bool = False) -> bool:
        """One round: replay the outbox, send uses (and, when closing, drop our leases)."""
        try:
            self._replay_outbox()
            with self._lock:
                uses, self._uses = self._uses, {}
            try:
                self.shared.touch_many(uses, retry=False)
            except StoreError:
                with self._lock:
                    for key, t in uses.items():
                        self._uses[key] = max(t, self._uses.get(key, t))
                raise
        except StoreError as exc:
            self._lost(exc)
            return False
        if final and not self.beat_once(final=True):
            return False
        if not self._healthy:
            log.info("shared store %s is back", self.path)
        self._healthy = True
        self.last_error = None
        return True

    def _lost(self, exc: StoreError) -> None:
        self.shared.blind()
        if self._healthy:
            log.warning("lost the shared store (retrying in the background): %s", exc)
        self._healthy = False
        self.last_error = exc

    def outbox(self, limit: int = 500) -> list[tuple[UploadRecord, str]]:
        """Uploads made on this host that the shared store has not taken yet."""
        rows = self.local.read(
            "SELECT namespace, content_hash, variant, image_uuid, size, format, uploaded_at, "
            f"bytes_sent, owner, url FROM fleet_outbox ORDER BY uploaded_at LIMIT {int(limit)}",
            (),
            "read the fleet outbox",
        )
        return [(UploadRecord(*r[:8], *r[9:10]), r[8]) for r in rows]

    def _replay_outbox(self) -> None:
        pending = self.outbox()
        if not pending:
            return
        records = [r for r, _ in pending]
        self.shared.record_uploads(records, self.owner, owners=[o for _, o in pending], retry=False)
        self._shared_done(records)

    def _shared_done(self, records: Sequence[UploadRecord]) -> None:
        with self.local.write("empty the fleet outbox") as conn:
            conn.executemany(
                "DELETE FROM fleet_outbox WHERE namespace = ? AND content_hash = ? "
                "AND variant = ? AND image_uuid = ?",
                [(*r.key, r.image_uuid) for r in records],
            )
        with self._lock:
            self._held.difference_update(r.key for r in records)

    # -- the registry ---------------------------------------------------------------------
    def use_local(self, local: SQLiteStore) -> None:
        """Switch to a reopened local file (after ``doctor --fix`` rebuilt it)."""
        with local.write("create the fleet outbox") as conn:
            _create_outbox(conn)
        self.local = local

    def settings(self) -> dict[str, Any]:
        """This host's name and the shared store's deadlines (for ``settings()``)."""
        return {"host_id": self.host, "fleet": self.shared.settings.as_dict()}

    def _mirror(self, rows: Iterable[AssetRow]) -> None:
        shared = {r.key: r for r in rows}
        if shared:
            merged = self._with_local_uses(shared, self.local.get_assets(shared))
            self.local.put_assets(merged.values())

    def get_asset(self, key: Key) -> AssetRow | None:
        return self.get_assets([key]).get(key)

    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        """Local rows that are provably fresh; the rest from the server, copied in one write."""
        keys = list(keys)
        since = self.fresh_since()
        local = self.local.get_assets(keys)
        out = {k: r for k, r in local.items() if r.last_used_at > since}
        rest = [k for k in keys if k not in out]
        if rest:
            shared = self._with_local_uses(self.shared.get_assets(rest), local)
            self._mirror(shared.values())
            out.update(shared)
        return out

    @staticmethod
    def _with_local_uses(
        shared: dict[Key, AssetRow], local: dict[Key, AssetRow]
    ) -> dict[Key, AssetRow]:
        """Shared rows, with a later use this host made of the same upload (one the
        background has not shared yet) kept: a copy never moves a use backwards."""
        out = {}
        for key, row in shared.items():
            mine = local.get(key)
            if (
                mine is not None
                and mine.image_uuid == row.image_uuid
                and mine.last_used_at > row.last_used_at
            ):
                row = dataclasses.replace(row, last_used_at=mine.last_used_at)
            out[key] = row
        return out

    def find_uuid(self, image_uuid: str) -> list[AssetRow]:
        return self.shared.find_uuid(image_uuid)

    def find_uuids(self, image_uuids: Sequence[str]) -> dict[str, list[AssetRow]]:
        return self.shared.find_uuids(image_uuids)

    def claim(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        ttl: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        # Held from before the claim: the heartbeat must not drop a lease being taken.
        with self._lock:
            self._held.update(keys)
            self._clock = (now, time.monotonic(), ttl)
        if ttl / 3 < self.shared.settings.heartbeat:
            self._beat_wake.set()
        try:
            out = self.shared.claim(keys, owner, now, ttl, fresh_since, fresh_until)
        except BaseException:
            with self._lock:
                self._held.difference_update(keys)
            raise
        with self._lock:
            self._held.difference_update(k for k, v in out.items() if v != "claimed")
        self._mirror(v for v in out.values() if isinstance(v, AssetRow))
        return out

    def renew(self, keys: Iterable[Key], owner: str, expires_at: float | None = None) -> set[Key]:
        """The keys whose lease is still ours, renewed now (their heartbeat, and
        their expiry moved to ``expires_at``): the fencing before an upload."""
        keys = list(keys)
        mine = self.shared.renew(keys, owner, expires_at)
        with self._lock:
            self._held.difference_update(k for k in keys if k not in mine)
        return mine

    def peek(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        out = self.shared.peek(keys, owner, now, fresh_since, fresh_until)
        self._mirror(v for v in out.values() if isinstance(v, AssetRow))
        return out

    def record_uploads(
        self, records: Sequence[UploadRecord], owner: str, files: Sequence[FileRow] = ()
    ) -> None:
        """Durable here first (row + outbox), then shared; a server error defers, never loses."""
        if records:
            with self.local.write("keep uploads for the fleet") as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO fleet_outbox (namespace, content_hash, variant, "
                    "image_uuid, size, format, uploaded_at, bytes_sent, owner, url) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (*r.key, r.image_uuid, r.size, r.format, r.now, r.bytes_sent, owner, r.url)
                        for r in records
                    ],
                )
        self.local.record_uploads(records, owner, files)
        if not records:
            return
        try:
            self.shared.record_uploads(records, owner, retry=False)
        except StoreError as exc:
            # Kept, and its leases renewed, until the background replay lands it.
            log.info("upload kept locally until the shared store takes it: %s", exc)
            self._wake.set()
            return
        self._shared_done(records)

    def release(self, keys: Iterable[Key], owner: str) -> None:
        keys = list(keys)
        with self._lock:
            self._held.difference_update(keys)
        try:
            self.shared.release(keys, owner, retry=False)
        except StoreError:
            self._wake.set()  # the next heartbeat drops every lease we no longer hold

    def touch(self, key: Key, now: float) -> None:
        """A use the caller asked to record (``AssetCache.touch``): here, then on the
        server within its deadlines; if the server cannot take it now, the
        background sends it when it can."""
        self.local.touch(key, now)
        try:
            self.shared.touch_many({key: now})
        except StoreError as exc:
            log.warning("use kept to share with the fleet later: %s", exc)
            self.note_use(key, now, local=False)

    def note_use(self, key: Key, now: float, *, local: bool = True) -> None:
        """A hit's use: it counts here at once; the fleet hears of it in the
        background, so the hit never waits on the server."""
        if local:
            self.local.touch(key, now)
        with self._lock:
            self._uses[key] = max(now, self._uses.get(key, now))
        self._wake.set()

    def add_counters(self, namespace: str, counts: dict[str, int]) -> None:
        self.shared.add_counters(namespace, counts)

    def counters(self, namespace: str | None = None) -> dict[str, int]:
        return self.shared.counters(namespace)

    def delete_assets(self, keys: Iterable[Key]) -> int:
        keys = list(keys)
        self.local.delete_assets(keys)
        return self.shared.delete_assets(keys)

    def select_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> list[AssetRow]:
        return self.shared.select_assets(
            namespace=namespace, used_after=used_after, used_before=used_before, order=order
        )

    def iter_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> Iterator[AssetRow]:
        return self.shared.iter_assets(
            namespace=namespace, used_after=used_after, used_before=used_before, order=order
        )

    def export_lines(self, namespace: str | None, version: int) -> Iterator[str] | None:
        return self.shared.export_lines(namespace, version)

    def asset_totals(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
    ) -> tuple[int, int]:
        return self.shared.asset_totals(
            namespace=namespace, used_after=used_after, used_before=used_before
        )

    def newest_use(self, namespace: str | None = None) -> float | None:
        return self.shared.newest_use(namespace)

    def local_rows(self, image_uuid: str) -> list[AssetRow]:
        """This host's copies holding ``image_uuid`` (they may still hold a UUID
        another host has replaced in the shared registry)."""
        return self.local.find_uuid(image_uuid)

    def share_uses(self) -> None:
        """Send the uses not yet shared now (maintenance decides on the server's rows:
        a prune must see a use made here, and an invalidation must not be undone by a
        use made before it that arrives after it)."""
        with self._lock:
            uses, self._uses = self._uses, {}
        try:
            self.shared.touch_many(uses)
        except StoreError:
            with self._lock:
                for key, t in uses.items():
                    self._uses[key] = max(t, self._uses.get(key, t))
            raise

    def prune_assets(self, rows: Iterable[AssetRow]) -> None:
        """Drop the rows not used since they were listed: the uses still on their
        way to the server are sent first, so a row used meanwhile is kept."""
        rows = list(rows)
        self.share_uses()
        self.shared.prune_assets(rows)
        self.local.prune_assets(rows)

    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int:
        return self.shared.drop_expired_leases(now, dry_run)

    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int:
        # Other hosts' local copies learn it when their own use is rejected.
        self.share_uses()
        return self.shared.expire_asset(key, stamp, image_uuid) + self.local.expire_asset(
            key, stamp, image_uuid
        )

    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]:
        self.share_uses()
        return self.shared.merge_assets(rows)

    def close(self) -> None:
        """Share what is pending (for up to ``retry_for`` seconds), release leases, close."""
        self._stop.set()
        self._wake.set()
        self._beat_wake.set()
        for t in self._threads:
            t.join(self.shared.settings.deadline + 1.0)
        give_up = time.monotonic() + self.shared.settings.retry_for
        delay = 0.05
        while not self.sync_once(final=True) and time.monotonic() < give_up:
            if isinstance(self.last_error, SchemaTooNew):
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        try:
            left = len(self.outbox())
        except StoreError:
            left = 0
        if left:
            log.warning(
                "%d upload(s) not yet shared with the fleet (%s); they are kept in %s "
                "and shared on the next start",
                left,
                self.last_error,
                self.local.path,
            )
        self.shared.close()


# -- doctor -----------------------------------------------------------------------------------


def local_db_for(
    url: str,
    local_db: str | os.PathLike[str] | None = None,
    default_dir: str | os.PathLike[str] | None = None,
) -> str:
    """This host's SQLite file for the fleet at ``url``: ``local_db``, else one
    file per server (credentials and deadline settings aside) in ``default_dir``."""
    if local_db is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(local_db)))
    assert default_dir is not None
    stripped = FleetSettings.from_url(url)[1]
    tag = hashlib.sha256(redact_url(stripped).encode()).hexdigest()[:12]
    return os.path.join(os.fspath(default_dir), f"fleet-{tag}.db")


def outbox_backlog(local_path: str) -> int | None:
    """Uploads in this host's file not yet shared (``None``: no file, or no outbox yet)."""
    import sqlite3

    if not os.path.exists(local_path):
        return None
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(local_path)}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None
