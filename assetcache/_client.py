"""AssetCache and AsyncAssetCache: sources in, imageUUIDs out. The whole public surface.

Laid out as httpx's ``_client.py``: :class:`BaseCache` holds construction
and everything that does no I/O; :class:`AssetCache` and
:class:`AsyncAssetCache` list every public method, each a few lines calling
the rooms below it: resolve plans (``_resolve``), lifecycle (``_lifecycle``),
maintenance (``_maintenance``), status (``_status``). Each decision is
written once, as a plan of effects (``_effects``); the blocking twin runs it
with :func:`run_sync`, the asyncio twin with :func:`run_async`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, cast

from . import _lifecycle, _maintenance, _status
from ._config import Config, resolve
from ._effects import Driver, Plan, run_async, run_sync
from ._engine import Engine
from ._errors import ConfigurationError
from ._models import (
    CacheStats,
    CopiesUsage,
    DoctorReport,
    Entry,
    FileStatus,
    ForgetItem,
    ImportReport,
    PruneReport,
    RefreshReport,
    Resolution,
    StatusReport,
    VerifyItem,
)
from ._protocol import UnknownPredicate
from ._resolve import plan_resolve_many
from ._sources import SourceLike
from ._storage._sqlite import SQLiteStore
from ._transport import client_kwargs

T = TypeVar("T")
Progress = Callable[[int, int], None]


class BaseCache:
    """Construction and the non-I/O surface shared by both twins.

    ``AssetCache(api_key=None, **settings)``: every setting of
    ``_config.SETTINGS`` (``db_path``, ``base_url``, ``retention``,
    ``concurrency``, ``resize``, ``keep_copies`` ...), given here or else
    from its environment variable, else its default; or a whole ``config``
    (what the CLI builds). ``clock``, ``transport``, ``sleep`` and ``store``
    are injected (tests, emulators).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        config: Config | None = None,
        clock: Callable[[], float] | None = None,
        transport: Any = None,
        sleep: Callable[[float], None] | None = None,
        store: SQLiteStore | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = resolve(api_key, **settings)
        elif settings or api_key is not None:
            raise ConfigurationError("give either config= or settings, not both")
        self._engine = Engine(config, clock=clock, store=store)
        self._transport = transport
        self._driver = Driver(sleep=sleep or time.sleep)
        self._closed = False

    def _client_kwargs(self) -> dict[str, Any]:
        engine = self._engine
        return client_kwargs(engine.retry, engine.concurrency, self._transport)

    @property
    def config(self) -> Config:
        """The settings in force (frozen)."""
        return self._engine.config

    @property
    def namespace(self) -> str:
        return self._engine.namespace

    @property
    def db_path(self) -> str:
        return self._engine.store.path

    @property
    def store(self) -> SQLiteStore:
        return self._engine.store

    @property
    def account(self) -> str | None:
        """The API key's one-way fingerprint (``None`` without a key)."""
        return self._engine.account

    def now(self) -> float:
        """The cache's clock, in epoch seconds (what expiry is measured against)."""
        return self._engine.clock()

    def settings(self) -> dict[str, Any]:
        """The settings in force (never the API key)."""
        return _maintenance.settings(self._engine)

    def copies_usage(self) -> CopiesUsage:
        """Where local copies go and what they hold (``enabled`` False when off).

        >>> cache.copies_usage().bytes                              # doctest: +SKIP
        """
        engine = self._engine
        return engine.copies.usage(enabled=engine.keep_copies)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} db={self.db_path!r} api={self._engine.base_url!r} "
            f"account={self.account}>"
        )


class AssetCache(BaseCache):
    """Content-addressed cache of Runware imageUUIDs (blocking API, thread-safe).

    >>> with AssetCache(db_path="cache.db") as cache:        # doctest: +SKIP
    ...     cache.get_uuid("photo.png")
    '5d1f9c62-...'
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self._driver.make_sync_client = self._make_client

    def _make_client(self) -> Any:
        import httpx

        return httpx.Client(**self._client_kwargs())

    def _run(self, plan: Plan) -> Any:
        return run_sync(plan, self._driver)

    # -- resolving ---------------------------------------------------------------------
    def resolve(self, source: SourceLike) -> Resolution:
        """The imageUUID of ``source``, uploading it if needed; raises on failure."""
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        (result,) = self._run(plan_resolve_many(self._engine, [source], 1))
        if result.error is not None:
            raise result.error
        return cast(Resolution, result)

    def get_uuid(self, source: SourceLike) -> str:
        """Shorthand for ``resolve(source).uuid``."""
        hit = self._engine.hit_row(source)
        if hit is not None:  # a warm hit needs no Resolution: skip building one
            return str(hit[0][8])
        uuid = self.resolve(source).uuid
        assert uuid is not None
        return uuid

    def resolve_many(
        self, sources: Iterable[SourceLike], concurrency: int | None = None
    ) -> list[Resolution]:
        """Resolve many sources at once; never raises for one bad item."""
        return cast(
            list[Resolution], self._run(plan_resolve_many(self._engine, list(sources), concurrency))
        )

    def preview(self, sources: Iterable[SourceLike]) -> list[Resolution]:
        """What :meth:`resolve_many` would do, without uploading or writing anything.

        Each result's ``outcome`` is ``hit`` (with the UUID), ``uploaded`` or
        ``reuploaded`` (would be: ``uuid`` is None) or ``failed`` (bad input).
        """
        return _maintenance.preview(self._engine, sources)

    # -- lifecycle -----------------------------------------------------------------------
    def use(
        self,
        source: SourceLike,
        fn: Callable[[str], T],
        *,
        retries: int = 1,
        is_unknown: UnknownPredicate | None = None,
        parameter: str | Iterable[str] | None = None,
    ) -> T:
        """``fn(uuid)`` with the UUID of ``source`` (or a cached imageUUID); if Runware
        answers that it no longer knows the UUID, upload again and call ``fn`` once
        more (at most ``retries`` times; then :class:`RetryBudgetExhausted`).

        >>> cache.use("cat.png", lambda uuid: run_task(seedImage=uuid))   # doctest: +SKIP
        """
        plan = _lifecycle.plan_use(self._engine, source, fn, retries, is_unknown, parameter)
        return cast(T, self._run(plan))

    def touch(self, target: SourceLike, *, at: float | None = None) -> Entry | None:
        """Record a use made outside the cache (a task run elsewhere with a cached
        UUID), sliding the entry's window; ``at``: when it happened (epoch seconds,
        default now). Returns the entry, or ``None`` if the cache does not know it.

        ``target`` is an imageUUID or any source (hashed, never uploaded). An
        entry whose upload Runware had already deleted by then is not revived.

        >>> cache.touch("5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44").state   # doctest: +SKIP
        'fresh'
        """
        return _lifecycle.touch(self._engine, target, at)

    def invalidate(self, target: SourceLike) -> Entry | None:
        """Drop what the cache believes about an upload: the next use uploads again
        (outcome ``"reuploaded"``). ``target`` is an imageUUID or any source (hashed,
        never uploaded). Returns the entry as it now stands, or ``None`` if unknown.

        >>> cache.invalidate("photo.png").state                     # doctest: +SKIP
        'expired'
        """
        return _lifecycle.invalidate(self._engine, target)

    # -- reading -------------------------------------------------------------------------
    def status(self, paths: Iterable[str]) -> Iterator[FileStatus]:
        """Each file's standing (fresh, expiring, expired, changed, new, missing); no upload."""
        return _status.scan(self._engine, paths)

    def status_report(self, paths: Iterable[str], *, fresh: bool = False) -> StatusReport:
        """How many of the files named are in each state, and which files are not
        fresh (with ``fresh=True``: every file), in path order; no upload.

        For big folders this is much cheaper than :meth:`status`: unchanged files
        with fresh uploads are counted in bulk, not judged one by one.

        >>> r = cache.status_report(["photos"])              # doctest: +SKIP
        >>> r.counts["fresh"], [f.path for f in r.files]     # doctest: +SKIP
        """
        return _status.report(self._engine, paths, fresh=fresh)

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
        return _maintenance.entries(
            self._engine, expiring_within, expired, all_accounts=all_accounts
        )

    def stats(self, *, all_accounts: bool = False) -> CacheStats:
        """Counts, bytes and usage counters (stored ones plus this process's unflushed ones)."""
        return _maintenance.stats(self._engine, all_accounts=all_accounts)

    # -- maintenance ---------------------------------------------------------------------
    def refresh(
        self,
        within: timedelta | float,
        *,
        dry_run: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> RefreshReport:
        """Upload again every entry the cache would stop serving within ``within``
        whose bytes are still at a known path (same hash) or in the local copies,
        so no caller waits for it. Entries Runware has already deleted are left
        to be uploaded on demand.

        >>> cache.refresh(timedelta(days=2)).failed             # doctest: +SKIP
        []
        """
        plan = _maintenance.plan_refresh(self._engine, within, dry_run, concurrency, progress)
        return cast(RefreshReport, self._run(plan))

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
        return _maintenance.prune(self._engine, older_than, dry_run, all_accounts=all_accounts)

    def verify(
        self, paths: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> list[VerifyItem]:
        """Re-hash tracked files (all, or those at/below ``paths``) and fix the stat cache:
        changed files get their new hash, missing ones are dropped.

        >>> [v.path for v in cache.verify() if v.state == "changed"]   # doctest: +SKIP
        """
        return _maintenance.verify(self._engine, paths, progress=progress)

    def forget(
        self, items: Iterable[str], *, remote: bool = False, all_accounts: bool = False
    ) -> list[ForgetItem]:
        """Remove the entries of each path (a folder: the files tracked below it),
        content hash or imageUUID. One :class:`ForgetItem` per item, in order.

        ``remote=True`` also deletes the uploads on Runware (``mediaStorage``
        ``delete``); an entry the server did not delete is kept, and its item
        carries the error.

        >>> cache.forget(["cat.png", "5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44"])  # doctest: +SKIP
        """
        engine = self._engine

        def delete(found: Any) -> Any:
            return self._run(_maintenance.plan_forget_remote(engine, found))

        return _maintenance.forget(
            engine, items, delete_remote=delete if remote else None, all_accounts=all_accounts
        )

    def export_entries(self, *, all_accounts: bool = False) -> Iterator[str]:
        """JSON lines (no newline) of this account's entries, for :meth:`import_entries`."""
        return _maintenance.export_entries(self._engine, all_accounts=all_accounts)

    def import_entries(self, lines: Iterable[str | bytes]) -> ImportReport:
        """Merge exported JSON lines; an entry never replaces a fresher one.

        Malformed lines are refused with their line number; the others are imported.

        >>> cache.import_entries(open("entries.jsonl")).errors     # doctest: +SKIP
        ()
        """
        return _maintenance.import_entries(self._engine, lines)

    def doctor(self, fix: bool = False) -> DoctorReport:
        """Integrity, schema, size, settings and the account fingerprint (never the key).

        ``fix=True`` rebuilds a damaged database (moved aside, salvaged rows carried
        over; ``report.lost`` says what could not be). Other users of the file should
        be closed first.
        """
        return _maintenance.doctor(self._engine, fix)

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._driver.sync_client is not None:
            self._driver.sync_client.close()
        self._driver.close()
        self._engine.close()

    def __enter__(self) -> AssetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAssetCache(BaseCache):
    """The asyncio twin of :class:`AssetCache`, sharing its logic.

    >>> async with AsyncAssetCache(db_path="cache.db") as cache:   # doctest: +SKIP
    ...     await cache.get_uuid("photo.png")
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self._driver.make_async_client = self._make_client

    def _make_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(**self._client_kwargs())

    async def _run(self, plan: Plan) -> Any:
        return await run_async(plan, self._driver)

    def _run_blocking(self, plan: Plan) -> Any:
        """Drive ``plan`` to the end in this thread (``forget(remote=True)``)."""
        import httpx

        # The async twin's client lives on its event loop: a short-lived
        # blocking one does this one job.
        kwargs = self._client_kwargs()
        transport = kwargs.get("transport")
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise ConfigurationError(
                "forget(remote=True) on AsyncAssetCache needs a blocking transport; "
                "use AssetCache for it"
            )
        driver = Driver(sleep=self._driver.sleep, make_sync_client=lambda: httpx.Client(**kwargs))
        try:
            return run_sync(plan, driver)
        finally:
            if driver.sync_client is not None:
                driver.sync_client.close()

    # -- resolving ---------------------------------------------------------------------
    async def resolve(self, source: SourceLike) -> Resolution:
        """The twin of :meth:`AssetCache.resolve`."""
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        (result,) = await self._run(plan_resolve_many(self._engine, [source], 1))
        if result.error is not None:
            raise result.error
        return cast(Resolution, result)

    async def get_uuid(self, source: SourceLike) -> str:
        """The twin of :meth:`AssetCache.get_uuid`."""
        uuid = (await self.resolve(source)).uuid
        assert uuid is not None
        return uuid

    async def resolve_many(
        self, sources: Iterable[SourceLike], concurrency: int | None = None
    ) -> list[Resolution]:
        """The twin of :meth:`AssetCache.resolve_many`."""
        plan = plan_resolve_many(self._engine, list(sources), concurrency)
        return cast(list[Resolution], await self._run(plan))

    def preview(self, sources: Iterable[SourceLike]) -> list[Resolution]:
        """The twin of :meth:`AssetCache.preview` (blocking)."""
        return _maintenance.preview(self._engine, sources)

    # -- lifecycle -----------------------------------------------------------------------
    async def use(
        self,
        source: SourceLike,
        fn: Callable[[str], Any],
        *,
        retries: int = 1,
        is_unknown: UnknownPredicate | None = None,
        parameter: str | Iterable[str] | None = None,
    ) -> Any:
        """The twin of :meth:`AssetCache.use`; ``fn`` may be a coroutine function.

        >>> await cache.use("cat.png", run_task)                        # doctest: +SKIP
        """
        plan = _lifecycle.plan_use(self._engine, source, fn, retries, is_unknown, parameter)
        return await self._run(plan)

    def touch(self, target: SourceLike, *, at: float | None = None) -> Entry | None:
        """The twin of :meth:`AssetCache.touch` (blocking)."""
        return _lifecycle.touch(self._engine, target, at)

    def invalidate(self, target: SourceLike) -> Entry | None:
        """The twin of :meth:`AssetCache.invalidate` (blocking)."""
        return _lifecycle.invalidate(self._engine, target)

    # -- reading -------------------------------------------------------------------------
    def status(self, paths: Iterable[str]) -> Iterator[FileStatus]:
        """The twin of :meth:`AssetCache.status` (blocking)."""
        return _status.scan(self._engine, paths)

    def status_report(self, paths: Iterable[str], *, fresh: bool = False) -> StatusReport:
        """The twin of :meth:`AssetCache.status_report` (blocking)."""
        return _status.report(self._engine, paths, fresh=fresh)

    def entries(
        self,
        expiring_within: timedelta | float | None = None,
        expired: bool = False,
        *,
        all_accounts: bool = False,
    ) -> Iterator[Entry]:
        """The twin of :meth:`AssetCache.entries` (blocking)."""
        return _maintenance.entries(
            self._engine, expiring_within, expired, all_accounts=all_accounts
        )

    def stats(self, *, all_accounts: bool = False) -> CacheStats:
        """The twin of :meth:`AssetCache.stats` (blocking)."""
        return _maintenance.stats(self._engine, all_accounts=all_accounts)

    # -- maintenance ---------------------------------------------------------------------
    async def refresh(
        self,
        within: timedelta | float,
        *,
        dry_run: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> RefreshReport:
        """The twin of :meth:`AssetCache.refresh`."""
        plan = _maintenance.plan_refresh(self._engine, within, dry_run, concurrency, progress)
        return cast(RefreshReport, await self._run(plan))

    def prune(
        self,
        older_than: timedelta | float | None = None,
        dry_run: bool = False,
        *,
        all_accounts: bool = False,
    ) -> PruneReport:
        """The twin of :meth:`AssetCache.prune` (blocking)."""
        return _maintenance.prune(self._engine, older_than, dry_run, all_accounts=all_accounts)

    def verify(
        self, paths: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> list[VerifyItem]:
        """The twin of :meth:`AssetCache.verify` (blocking)."""
        return _maintenance.verify(self._engine, paths, progress=progress)

    def forget(
        self, items: Iterable[str], *, remote: bool = False, all_accounts: bool = False
    ) -> list[ForgetItem]:
        """The twin of :meth:`AssetCache.forget` (blocking)."""
        engine = self._engine

        def delete(found: Any) -> Any:
            return self._run_blocking(_maintenance.plan_forget_remote(engine, found))

        return _maintenance.forget(
            engine, items, delete_remote=delete if remote else None, all_accounts=all_accounts
        )

    def export_entries(self, *, all_accounts: bool = False) -> Iterator[str]:
        """The twin of :meth:`AssetCache.export_entries` (blocking)."""
        return _maintenance.export_entries(self._engine, all_accounts=all_accounts)

    def import_entries(self, lines: Iterable[str | bytes]) -> ImportReport:
        """The twin of :meth:`AssetCache.import_entries` (blocking)."""
        return _maintenance.import_entries(self._engine, lines)

    def doctor(self, fix: bool = False) -> DoctorReport:
        """The twin of :meth:`AssetCache.doctor` (blocking)."""
        return _maintenance.doctor(self._engine, fix)

    # -- closing -------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._driver.async_client is not None:
            await self._driver.async_client.aclose()
        self._driver.close()
        self._engine.close()

    async def __aenter__(self) -> AsyncAssetCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
