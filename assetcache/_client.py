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

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _status
from ._config import Config, resolve
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
    RefreshItem,
    RefreshReport,
    Resolution,
    StatusReport,
    VerifyItem,
)
from ._sources import SourceLike
from ._storage._sqlite import SQLiteStore
from ._transport import client_kwargs, plain_http_tls

if TYPE_CHECKING:
    from ._effects import Driver, Plan
    from ._protocol import UnknownPredicate
    from ._taskpath import PreparedTask

T = TypeVar("T")
Progress = Callable[[int, int], None]


class BaseCache:
    """Construction and the non-I/O surface shared by both twins.

    ``AssetCache(api_key=None, **settings)``: every setting of
    ``_settings.SETTINGS`` (``db_path``, ``base_url``, ``retention``,
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
        self._sleep = sleep or time.sleep
        self._driver_made: Driver | None = None
        self._driver_lock = threading.Lock()
        self._closed = False

    @property
    def _driver(self) -> Driver:
        """What runs this cache's plans, made on first use: a status or a warm
        hit runs none, and does not import the effects, plans and HTTP rooms."""
        driver = self._driver_made
        if driver is None:
            with self._driver_lock:
                driver = self._driver_made
                if driver is None:
                    from ._effects import Driver

                    driver = Driver(sleep=self._sleep)
                    self._wire(driver)
                    self._driver_made = driver
        return driver

    def _wire(self, driver: Driver) -> None:
        """Give ``driver`` the way to make this twin's HTTP client."""

    @functools.cached_property
    def _taskpath(self) -> ModuleType:
        """The task path's room, loaded on first use (it loads the effects and the
        resolve plans), then one attribute away (a warm task is a few hits)."""
        from . import _taskpath

        return _taskpath

    def _client_kwargs(self) -> dict[str, Any]:
        engine = self._engine
        kwargs = client_kwargs(engine.retry, engine.concurrency, self._transport)
        context = plain_http_tls(engine.base_url) if self._transport is None else None
        if context is not None:
            kwargs["verify"] = context  # still verifying: it trusts no certificate
        return kwargs

    @property
    def config(self) -> Config:
        """The settings in force (frozen)."""
        return self._engine.config

    # -- metrics (the ``metrics`` extra) ---------------------------------------------------
    def register_metrics(self, registry: Any = None, *, prefix: str = "assetcache") -> Any:
        """Expose this cache's Prometheus metrics in ``registry`` (default: the global
        ``prometheus_client.REGISTRY``); returns the collector.

        Counters are this process's since it started (hits, misses, uploads,
        re-uploads, heals, bytes sent and saved, failures, retries, store errors,
        lease waits, takeovers); gauges (entries, stored bytes, files, database
        size) are read at each scrape. Needs ``pip install 'assetcache[metrics]'``.
        """
        from ._metrics import register_metrics

        return register_metrics(lambda: self._metrics(lifetime=False), registry, prefix=prefix)

    def _write_metrics(self, path: str | os.PathLike[str], prefix: str) -> None:
        from ._metrics import write_textfile

        write_textfile(path, self._metrics(lifetime=True), prefix=prefix)

    def _metrics(self, *, lifetime: bool) -> Any:
        from ._metrics import Sample
        from ._storage._repair import db_size

        engine = self._engine
        if lifetime:
            counts = dict(engine.registry.counters(engine.namespace))
            for name, value in engine.pending_counts().items():
                counts[name] = counts.get(name, 0) + value
        else:
            counts = engine.process_counts()
        n, total = engine.registry.asset_totals(namespace=engine.namespace)
        gauges = {
            "entries": float(n),
            "stored_bytes": float(total),
            "files": float(engine.store.count_files()),
            "db_bytes": float(db_size(engine.store.path)),
        }
        return Sample(counts, gauges)

    @property
    def namespace(self) -> str:
        return self._engine.namespace

    @property
    def db_path(self) -> str:
        return self._engine.store.path

    @property
    def account(self) -> str | None:
        """The API key's one-way fingerprint (``None`` without a key)."""
        return self._engine.account

    def now(self) -> float:
        """The cache's clock, in epoch seconds (what expiry is measured against): the
        server's time when this run has learnt it and this machine's is off."""
        return self._engine.judge_now()

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

    def _wire(self, driver: Driver) -> None:
        from ._effects import run_sync

        driver.make_sync_client = self._make_client
        self._run_plan = run_sync  # kept here: no import on each run

    def _make_client(self) -> Any:
        from ._httpx import for_transport

        return for_transport(self._transport).Client(**self._client_kwargs())

    def _run(self, plan: Plan) -> Any:
        driver = self._driver  # made, and this twin wired to it, on first use
        return self._run_plan(plan, driver)

    def write_metrics(self, path: str | os.PathLike[str], *, prefix: str = "assetcache") -> None:
        """Write the node-exporter textfile format to ``path``, atomically, with the
        totals the database keeps (every process's, for cron jobs)."""
        self._write_metrics(path, prefix)

    # -- resolving ---------------------------------------------------------------------
    def resolve(self, source: SourceLike) -> Resolution:
        """The imageUUID of ``source``, uploading it if needed; raises on failure."""
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        from ._resolve import plan_resolve_many

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
        from ._resolve import plan_resolve_many

        return cast(
            list[Resolution], self._run(plan_resolve_many(self._engine, list(sources), concurrency))
        )

    def preview(self, sources: Iterable[SourceLike]) -> list[Resolution]:
        """What :meth:`resolve_many` would do, without uploading or writing anything.

        Each result's ``outcome`` is ``hit`` (with the UUID), ``uploaded`` or
        ``reuploaded`` (would be: ``uuid`` is None), ``duplicate`` (the same
        content as an earlier source of this call: sent once, with that one) or
        ``failed`` (bad input).
        """
        from . import _maintenance

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
        from . import _lifecycle

        plan = _lifecycle.plan_use(self._engine, source, fn, retries, is_unknown, parameter)
        return cast(T, self._run(plan))

    # -- the task path (plans in _taskpath) ----------------------------------------------
    def run(
        self,
        task: Any,
        send: Callable[[Any], Any] | None = None,
        *,
        extra_params: Any = None,
        reuploads: int = 1,
    ) -> Any:
        """Run one Runware task whose image parameters may hold local images.

        Paths, bytes, file objects, PIL images, data URIs and base64 in any
        image parameter (``_taskmap.TASK_PARAMS``, plus ``extra_params``)
        become cached UUIDs; a rejected input is uploaded again alone (at most
        ``reuploads`` times) and the task re-sent with a fresh taskUUID.
        Without ``send``, the cache's own client sends it and the result is the
        list of ``data`` objects of the task; with ``send``, ``send(task)``
        sends it and its return value is returned.

        >>> cache.run({"taskType": "imageInference", "seedImage": "cat.png", ...})  # doctest: +SKIP
        """
        engine = self._engine
        warm = self._taskpath.prepare_warm(engine, task, extra_params)
        plan = self._taskpath.plan_run_many(
            engine, [task], send, extra_params, reuploads, None, warm
        )
        ((ok, value),) = self._run(plan)
        if not ok:
            raise value
        return value

    def run_many(
        self,
        tasks: Iterable[Any],
        send: Callable[[Any], Any] | None = None,
        *,
        extra_params: Any = None,
        reuploads: int = 1,
        concurrency: int | None = None,
    ) -> list[Any]:
        """:meth:`run` for several tasks: their images resolved in one batch and,
        without ``send``, the tasks sent in one request. One result per task, in
        order; a task that failed holds its exception instead (nothing raised)."""
        plan = self._taskpath.plan_run_many(
            self._engine, list(tasks), send, extra_params, reuploads, concurrency
        )
        return [value for _, value in self._run(plan)]

    def prepare(
        self, task: Any, *, extra_params: Any = None, local_files: bool = True
    ) -> PreparedTask:
        """The first half of :meth:`run`, for callers with their own client: the
        task with its images as cached UUIDs (``prepared.task``); raises
        :class:`TaskInputError` naming the parameter when one is unusable.
        ``local_files=False`` never reads a string as a path (only data URIs and
        base64 are taken): for servers that rewrite tasks others send."""
        plan = self._taskpath.plan_prepare(self._engine, task, extra_params, local_files)
        return cast("PreparedTask", self._run(plan))

    def settle(self, prepared: PreparedTask, ok: bool = True, error: object = None) -> list[str]:
        """The second half: ``ok=True`` records that Runware used the task's
        images now (their windows slide); ``ok=False, error=answer`` invalidates
        the images the answer says Runware no longer has. Returns the
        parameters invalidated (prepare the task again to upload them)."""
        plan = self._taskpath.plan_settle(self._engine, prepared, ok, error)
        return cast(list[str], self._run(plan))

    def touch(self, target: SourceLike, *, at: float | None = None) -> Entry | None:
        """Record a use made outside the cache (a task run elsewhere with a cached
        UUID), sliding the entry's window; ``at``: when it happened (epoch seconds,
        default now). Returns the entry, or ``None`` if the cache does not know it.

        ``target`` is an imageUUID or any source (hashed, never uploaded). An
        entry whose upload Runware had already deleted by then is not revived.

        >>> cache.touch("5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44").state   # doctest: +SKIP
        'fresh'
        """
        from . import _lifecycle
        from ._tasks import plan_server_time

        engine = self._engine
        return _lifecycle.touch(engine, target, at, lambda: self._run(plan_server_time(engine)))

    def invalidate(self, target: SourceLike) -> Entry | None:
        """Drop what the cache believes about an upload: the next use uploads again
        (outcome ``"reuploaded"``). ``target`` is an imageUUID or any source (hashed,
        never uploaded). Returns the entry as it now stands, or ``None`` if unknown.

        >>> cache.invalidate("photo.png").state                     # doctest: +SKIP
        'expired'
        """
        from . import _lifecycle

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
        from . import _maintenance

        return _maintenance.entries(
            self._engine, expiring_within, expired, all_accounts=all_accounts
        )

    def stats(self, *, all_accounts: bool = False) -> CacheStats:
        """Counts, bytes and usage counters (stored ones plus this process's unflushed ones)."""
        from . import _maintenance

        return _maintenance.stats(self._engine, all_accounts=all_accounts)

    # -- maintenance ---------------------------------------------------------------------
    def refresh(
        self,
        within: timedelta | float,
        *,
        dry_run: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
        on_item: Callable[[RefreshItem], None] | None = None,
    ) -> RefreshReport:
        """Upload again every entry the cache would stop serving within ``within``
        whose bytes are still at a known path (same hash) or in the local copies,
        so no caller waits for it. Entries Runware has already deleted are left
        to be uploaded on demand.

        The work goes a chunk at a time, each upload recorded as it answers: a
        run stopped halfway keeps what it renewed. With ``on_item``, each item
        is handed over as soon as it is known and the report keeps none, so
        memory stays bounded whatever the number of entries.

        >>> cache.refresh(timedelta(days=2)).failed             # doctest: +SKIP
        []
        """
        from . import _maintenance

        plan = _maintenance.plan_refresh(
            self._engine, within, dry_run, concurrency, progress, on_item
        )
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
        from . import _maintenance

        return _maintenance.prune(self._engine, older_than, dry_run, all_accounts=all_accounts)

    def prune_items(
        self,
        older_than: timedelta | float | None = None,
        dry_run: bool = False,
        *,
        all_accounts: bool = False,
    ) -> Iterator[Entry | str]:
        """:meth:`prune` as it goes, in bounded memory: each entry dropped (an
        :class:`Entry`), then each path whose file is gone (a ``str``). Work is
        committed a page at a time: stopped halfway, it keeps what it did, and a
        second run carries on. Dead leases are left to :meth:`prune`."""
        from . import _maintenance

        return _maintenance.prune_items(
            self._engine, older_than, dry_run, all_accounts=all_accounts
        )

    def drop_expired_leases(self, dry_run: bool = False) -> int:
        """Drop upload leases whose holder's time ran out; how many (would) go."""
        return int(self._engine.registry.drop_expired_leases(self._engine.judge_now(), dry_run))

    def verify(
        self, paths: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> list[VerifyItem]:
        """Re-hash tracked files (all, or those at/below ``paths``) and fix the stat cache:
        changed files get their new hash, missing ones are dropped.

        >>> [v.path for v in cache.verify() if v.state == "changed"]   # doctest: +SKIP
        """
        from . import _maintenance

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
        from . import _maintenance

        plan = _maintenance.plan_forget(
            self._engine, items, remote=remote, all_accounts=all_accounts
        )
        return cast(list[ForgetItem], self._run(plan))

    def export_entries(self, *, all_accounts: bool = False) -> Iterator[str]:
        """JSON lines (no newline) of this account's entries, for :meth:`import_entries`."""
        from . import _maintenance

        return _maintenance.export_entries(self._engine, all_accounts=all_accounts)

    def import_entries(self, lines: Iterable[str | bytes]) -> ImportReport:
        """Merge exported JSON lines; an entry never replaces a fresher one.

        Malformed lines are refused with their line number; the others are imported.

        >>> cache.import_entries(open("entries.jsonl")).errors     # doctest: +SKIP
        ()
        """
        from . import _maintenance

        return _maintenance.import_entries(self._engine, lines)

    def doctor(self, fix: bool = False) -> DoctorReport:
        """Integrity, schema, size, settings and the account fingerprint (never the key).

        ``fix=True`` rebuilds a damaged database (moved aside, salvaged rows carried
        over; ``report.lost`` says what could not be). Other users of the file should
        be closed first.
        """
        from . import _maintenance
        from ._tasks import plan_server_time

        engine = self._engine
        report = _maintenance.doctor(engine, fix)
        _maintenance.check_clock(engine, report, lambda: self._run(plan_server_time(engine)))
        return report

    def settings(self) -> dict[str, Any]:
        """The settings in force (never the API key)."""
        from . import _maintenance

        return _maintenance.settings(self._engine)

    def copies_usage(self) -> CopiesUsage:
        """Where local copies go and what they hold (``enabled`` False when off).

        >>> cache.copies_usage().bytes                              # doctest: +SKIP
        """
        from . import _maintenance

        return _maintenance.copies_usage(self._engine)

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._driver_made is not None:
            self._driver_made.close()  # the HTTP client too, even one being made right now
        self._engine.close()

    def __enter__(self) -> AssetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAssetCache(BaseCache):
    """The asyncio twin of :class:`AssetCache`, sharing its logic.

    Every method that touches the disk, the database or the network is a
    coroutine: its plan runs on :func:`run_async`, blocking steps on worker
    threads, so the event loop never waits on them (the warm hit excepted: one
    ``stat`` and one indexed lookup, cheaper than a thread hop).

    >>> async with AsyncAssetCache(db_path="cache.db") as cache:   # doctest: +SKIP
    ...     await cache.get_uuid("photo.png")
    """

    def _wire(self, driver: Driver) -> None:
        driver.make_async_client = self._make_client

    def _make_client(self) -> Any:
        from ._httpx import for_transport

        return for_transport(self._transport).AsyncClient(**self._client_kwargs())

    async def _run(self, plan: Plan) -> Any:
        from ._effects import run_async

        return await run_async(plan, self._driver)

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a worker thread (a plan of one ``Call``)."""
        from ._effects import plan_call

        return cast(T, await self._run(plan_call(fn, *args, **kwargs)))

    async def write_metrics(
        self, path: str | os.PathLike[str], *, prefix: str = "assetcache"
    ) -> None:
        """The twin of :meth:`AssetCache.write_metrics` (on a worker thread)."""
        await self._call(self._write_metrics, path, prefix)

    # -- resolving ---------------------------------------------------------------------
    async def resolve(self, source: SourceLike) -> Resolution:
        """The twin of :meth:`AssetCache.resolve`."""
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        from ._resolve import plan_resolve_many

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
        from ._resolve import plan_resolve_many

        plan = plan_resolve_many(self._engine, list(sources), concurrency)
        return cast(list[Resolution], await self._run(plan))

    async def preview(self, sources: Iterable[SourceLike]) -> list[Resolution]:
        """The twin of :meth:`AssetCache.preview`."""
        from . import _maintenance

        return await self._call(_maintenance.preview, self._engine, list(sources))

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
        from . import _lifecycle

        plan = _lifecycle.plan_use(self._engine, source, fn, retries, is_unknown, parameter)
        return await self._run(plan)

    # -- the task path (plans in _taskpath) ----------------------------------------------
    async def run(
        self,
        task: Any,
        send: Callable[[Any], Any] | None = None,
        *,
        extra_params: Any = None,
        reuploads: int = 1,
    ) -> Any:
        """The twin of :meth:`AssetCache.run`; ``send`` may be a coroutine function."""
        engine = self._engine
        warm = self._taskpath.prepare_warm(engine, task, extra_params)
        plan = self._taskpath.plan_run_many(
            engine, [task], send, extra_params, reuploads, None, warm
        )
        ((ok, value),) = await self._run(plan)
        if not ok:
            raise value
        return value

    async def run_many(
        self,
        tasks: Iterable[Any],
        send: Callable[[Any], Any] | None = None,
        *,
        extra_params: Any = None,
        reuploads: int = 1,
        concurrency: int | None = None,
    ) -> list[Any]:
        """The twin of :meth:`AssetCache.run_many`."""
        plan = self._taskpath.plan_run_many(
            self._engine, list(tasks), send, extra_params, reuploads, concurrency
        )
        return [value for _, value in await self._run(plan)]

    async def prepare(
        self, task: Any, *, extra_params: Any = None, local_files: bool = True
    ) -> PreparedTask:
        """The twin of :meth:`AssetCache.prepare`."""
        plan = self._taskpath.plan_prepare(self._engine, task, extra_params, local_files)
        return cast("PreparedTask", await self._run(plan))

    async def settle(
        self, prepared: PreparedTask, ok: bool = True, error: object = None
    ) -> list[str]:
        """The twin of :meth:`AssetCache.settle`."""
        plan = self._taskpath.plan_settle(self._engine, prepared, ok, error)
        return cast(list[str], await self._run(plan))

    async def touch(self, target: SourceLike, *, at: float | None = None) -> Entry | None:
        """The twin of :meth:`AssetCache.touch` (the server's time is asked on this loop)."""
        from . import _lifecycle
        from ._tasks import plan_server_time

        engine = self._engine
        if engine.account is not None and not engine.server_time_recent():
            await self._run(plan_server_time(engine))
        return await self._call(_lifecycle.touch, engine, target, at)

    async def invalidate(self, target: SourceLike) -> Entry | None:
        """The twin of :meth:`AssetCache.invalidate`."""
        from . import _lifecycle

        return await self._call(_lifecycle.invalidate, self._engine, target)

    # -- reading -------------------------------------------------------------------------
    async def status(self, paths: Iterable[str]) -> list[FileStatus]:
        """The twin of :meth:`AssetCache.status`, as a list."""
        return await self._call(lambda: list(_status.scan(self._engine, list(paths))))

    async def status_report(self, paths: Iterable[str], *, fresh: bool = False) -> StatusReport:
        """The twin of :meth:`AssetCache.status_report`."""
        return await self._call(_status.report, self._engine, list(paths), fresh=fresh)

    async def entries(
        self,
        expiring_within: timedelta | float | None = None,
        expired: bool = False,
        *,
        all_accounts: bool = False,
    ) -> list[Entry]:
        """The twin of :meth:`AssetCache.entries`, as a list."""
        from . import _maintenance

        engine = self._engine
        return await self._call(
            lambda: list(
                _maintenance.entries(engine, expiring_within, expired, all_accounts=all_accounts)
            )
        )

    async def stats(self, *, all_accounts: bool = False) -> CacheStats:
        """The twin of :meth:`AssetCache.stats`."""
        from . import _maintenance

        return await self._call(_maintenance.stats, self._engine, all_accounts=all_accounts)

    async def settings(self) -> dict[str, Any]:
        """The twin of :meth:`AssetCache.settings`."""
        from . import _maintenance

        return await self._call(_maintenance.settings, self._engine)

    async def copies_usage(self) -> CopiesUsage:
        """The twin of :meth:`AssetCache.copies_usage`."""
        from . import _maintenance

        return await self._call(_maintenance.copies_usage, self._engine)

    # -- maintenance ---------------------------------------------------------------------
    async def refresh(
        self,
        within: timedelta | float,
        *,
        dry_run: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
        on_item: Callable[[RefreshItem], None] | None = None,
    ) -> RefreshReport:
        """The twin of :meth:`AssetCache.refresh`."""
        from . import _maintenance

        plan = _maintenance.plan_refresh(
            self._engine, within, dry_run, concurrency, progress, on_item
        )
        return cast(RefreshReport, await self._run(plan))

    async def prune(
        self,
        older_than: timedelta | float | None = None,
        dry_run: bool = False,
        *,
        all_accounts: bool = False,
    ) -> PruneReport:
        """The twin of :meth:`AssetCache.prune`."""
        from . import _maintenance

        return await self._call(
            _maintenance.prune, self._engine, older_than, dry_run, all_accounts=all_accounts
        )

    async def prune_items(
        self,
        older_than: timedelta | float | None = None,
        dry_run: bool = False,
        *,
        all_accounts: bool = False,
    ) -> list[Entry | str]:
        """The twin of :meth:`AssetCache.prune_items`, as a list."""
        from . import _maintenance

        engine = self._engine
        return await self._call(
            lambda: list(
                _maintenance.prune_items(engine, older_than, dry_run, all_accounts=all_accounts)
            )
        )

    async def drop_expired_leases(self, dry_run: bool = False) -> int:
        """The twin of :meth:`AssetCache.drop_expired_leases`."""
        engine = self._engine
        return await self._call(
            lambda: int(engine.registry.drop_expired_leases(engine.judge_now(), dry_run))
        )

    async def verify(
        self, paths: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> list[VerifyItem]:
        """The twin of :meth:`AssetCache.verify`."""
        from . import _maintenance

        targets = None if paths is None else list(paths)
        return await self._call(_maintenance.verify, self._engine, targets, progress=progress)

    async def forget(
        self, items: Iterable[str], *, remote: bool = False, all_accounts: bool = False
    ) -> list[ForgetItem]:
        """The twin of :meth:`AssetCache.forget`; remote deletes go on this loop's client."""
        from . import _maintenance

        plan = _maintenance.plan_forget(
            self._engine, list(items), remote=remote, all_accounts=all_accounts
        )
        return cast(list[ForgetItem], await self._run(plan))

    async def export_entries(self, *, all_accounts: bool = False) -> list[str]:
        """The twin of :meth:`AssetCache.export_entries`, as a list of lines."""
        from . import _maintenance

        engine = self._engine
        return await self._call(
            lambda: list(_maintenance.export_entries(engine, all_accounts=all_accounts))
        )

    async def import_entries(self, lines: Iterable[str | bytes]) -> ImportReport:
        """The twin of :meth:`AssetCache.import_entries`."""
        from . import _maintenance

        return await self._call(_maintenance.import_entries, self._engine, lines)

    async def doctor(self, fix: bool = False) -> DoctorReport:
        """The twin of :meth:`AssetCache.doctor`."""
        from . import _maintenance
        from ._tasks import plan_server_time

        engine = self._engine
        report = await self._call(_maintenance.doctor, engine, fix)
        if engine.clock_offset() is None and engine.account is not None:
            await self._run(plan_server_time(engine))
        _maintenance.check_clock(engine, report, lambda: None)
        return report

    # -- closing -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Save the counters and close the stores and the HTTP client."""
        if self._closed:
            return
        self._closed = True
        driver = self._driver_made
        if driver is not None and driver.async_client is not None:
            await driver.async_client.aclose()
        await self._call(self._close_blocking)

    def _close_blocking(self) -> None:
        if self._driver_made is not None:
            self._driver_made.close()
        self._engine.close()

    async def __aenter__(self) -> AsyncAssetCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
