"""A fleet host's view of the shared registry: the PostgreSQL rows, mirrored locally.

Each host keeps its file index, and a copy of the registry rows it has used,
in its local SQLite file, so a warm hit never leaves the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from .._errors import StoreError
from ._base import AssetRow, FileRow, Key, Order, UploadRecord
from ._postgres import PostgresRegistry
from ._sqlite import SQLiteStore

log = logging.getLogger("assetcache")


class FleetRegistry:
    """The shared registry seen through this host's local copy.

    Reads prefer the local copy while it is fresh and fall back to the shared
    store, copying what they find; writes go to the shared store first, then
    to the local copy, so one host's use slides the window for every host.
    """

    def __init__(
        self,
        local: SQLiteStore,
        shared: PostgresRegistry,
        fresh_since: Callable[[], float] | None = None,
    ) -> None:
        self.local = local
        self.shared = shared
        self.path = shared.path
        #: Rows used after this instant are fresh (the cache's policy and clock).
        self.fresh_since: Callable[[], float] = fresh_since or (lambda: float("inf"))

    @property
    def takeovers(self) -> int:
        """Upload leases this process took over (metrics)."""
        return int(self.shared.takeovers)

    def use_local(self, local: SQLiteStore) -> None:
        """Switch to a reopened local file (after ``doctor --fix`` rebuilt it)."""
        self.local = local

    def _mirror(self, rows: Iterable[AssetRow]) -> None:
        rows = list(rows)
        if rows:
            self.local.put_assets(rows)

    def get_asset(self, key: Key) -> AssetRow | None:
        local = self.local.get_asset(key)
        if local is not None and local.last_used_at > self.fresh_since():
            return local  # provably fresh: no round trip to the server
        row = self.shared.get_asset(key)
        if row is not None:
            self._mirror([row])
        return row

    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        """Local rows that are provably fresh; the rest from the server, copied in one write."""
        keys = list(keys)
        since = self.fresh_since()
        out = {k: r for k, r in self.local.get_assets(keys).items() if r.last_used_at > since}
        rest = [k for k in keys if k not in out]
        if rest:
            shared = self.shared.get_assets(rest)
            self._mirror(shared.values())
            out.update(shared)
        return out

    def find_uuid(self, image_uuid: str) -> list[AssetRow]:
        return self.shared.find_uuid(image_uuid)

    def claim(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        ttl: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        out = self.shared.claim(keys, owner, now, ttl, fresh_since, fresh_until)
        self._mirror(v for v in out.values() if isinstance(v, AssetRow))
        return out

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
        self.shared.record_uploads(records, owner)
        self.local.record_uploads(records, owner, files)

    def release(self, keys: Iterable[Key], owner: str) -> None:
        self.shared.release(keys, owner)

    def renew(self, keys: Iterable[Key], owner: str, expires_at: float) -> None:
        self.shared.renew(keys, owner, expires_at)

    def touch(self, key: Key, now: float) -> None:
        self.local.touch(key, now)
        try:
            self.shared.touch(key, now)
        except StoreError as exc:
            # The hit itself was proven locally; the fleet learns of this use
            # with the next one that gets through.
            log.warning("could not share a use with the fleet: %s", exc)

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

    def local_rows(self, image_uuid: str) -> list[AssetRow]:
        """This host's copies holding ``image_uuid`` (they may still hold a UUID
        another host has replaced in the shared registry)."""
        return self.local.find_uuid(image_uuid)

    def prune_assets(self, rows: Iterable[AssetRow]) -> None:
        rows = list(rows)
        self.shared.prune_assets(rows)
        self.local.delete_assets(r.key for r in rows)

    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int:
        return self.shared.drop_expired_leases(now, dry_run)

    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int:
        # Other hosts' local copies learn it when their own use is rejected.
        return self.shared.expire_asset(key, stamp, image_uuid) + self.local.expire_asset(
            key, stamp, image_uuid
        )

    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]:
        return self.shared.merge_assets(rows)

    def close(self) -> None:
        self.shared.close()
