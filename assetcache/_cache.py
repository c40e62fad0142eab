"""AssetCache and AsyncAssetCache: sources in, imageUUIDs out.

Both classes share one :class:`_Engine`; its ``_plan_*`` generators hold every
decision (hit, stale, miss, who uploads, retries) and yield effects that the
sync or async driver performs (see ``_effects``).

The warm-hit path (:meth:`_Engine.fast_hit`) is one ``os.stat`` plus one
indexed SELECT joining the file's stat row to its asset row; it opens no file
and starts no write transaction (except, at most once per ``touch_every`` per
asset, to slide the stored window).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import logging
import os
import stat as stat_mod
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath
from typing import IO, Any, TypeVar, cast

from . import _hashing, _policy, _transform
from ._copies import DEFAULT_MAX_BYTES as DEFAULT_COPIES_MAX
from ._copies import Copies
from ._effects import Call, Concurrent, Driver, Http, Map, Plan, Sleep, Wait, run_async, run_sync
from ._errors import (
    AssetCacheError,
    ConfigurationError,
    InvalidImage,
    RemoteError,
    SourceError,
    SourceNotFound,
    SourceTooLarge,
    StoreError,
    UnsupportedFormat,
)
from ._formats import DECLARED, MEDIA_TYPES, FormatCheck
from ._lifecycle import (
    LifecycleMixin,
    UnknownPredicate,
    keep_uploaded_copies,
)
from ._maintenance import MaintenanceMixin
from ._protocol import (
    Payload,
    Task,
    TaskResult,
    backoff_delay,
    body_length,
    is_transient,
    iter_body,
    new_task_uuid,
    parse_response,
)
from ._sources import Source, SourceLike
from ._store import AssetRow, FileRow, Key, SQLiteStore, UploadRecord, open_stores, owner_id
from ._version import __version__

log = logging.getLogger("assetcache")
T = TypeVar("T")

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

DEFAULT_API_URL = "https://api.runware.ai/v1"
#: Inputs up to this size are kept in memory after hashing (one read, no
#: TOCTOU window); larger files are streamed again at upload time and verified.
INLINE_LIMIT = 8 << 20
#: Originals resized per upload group: big photos go a few per request, as soon
#: as they are ready; small conversions (BMP, GIF) still share requests.
FIT_GROUP_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Resolution:
    """What :meth:`AssetCache.resolve` found or did for one source.

    ``outcome`` is ``"hit"``, ``"uploaded"``, ``"reuploaded"`` or ``"failed"``;
    on failure ``uuid`` is ``None`` and ``error`` holds the exception.
    """

    source: str
    uuid: str | None
    content_hash: str | None
    outcome: str
    error: AssetCacheError | None = None
    size: int | None = None
    format: str | None = None
    expires_at: float | None = None
    bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts per task, exponential backoff, per-request timeout."""

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0
    timeout: float = 60.0


@dataclass(slots=True)
class _Prepared:
    """A source that was classified, hashed and validated, ready to look up."""

    label: str
    key: Key
    size: int
    format: str
    payload: Callable[[], Payload]
    file_row: FileRow | None = None  # a new or refreshed stat row to record


def account_fingerprint(api_key: str) -> str:
    """A one-way, non-reversible id of an API key (never the key itself)."""
    return hashlib.sha256(b"assetcache/account/v1\0" + api_key.encode()).hexdigest()[:16]


def namespace_for(base_url: str, api_key: str | None) -> str:
    parts = urllib.parse.urlsplit(base_url)
    endpoint = f"{parts.netloc.lower()}{parts.path.rstrip('/')}"
    return f"{endpoint}#{account_fingerprint(api_key) if api_key else 'no-key'}"


class _Engine:
    """Everything both twins share. Blocking methods only; no HTTP here."""

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None,
        db_path: str | os.PathLike[str] | None,
        clock: Callable[[], float] | None,
        retention: timedelta | float | None,
        margin: timedelta | float | None,
        touch_every: timedelta | float | None,
        namespace: str | None,
        retry: RetryPolicy | None,
        concurrency: int,
        batch_size: int,
        batch_bytes: int,
        max_bytes: int | None,
        racy_window: float,
        lease_ttl: float,
        task_type: str,
        store: SQLiteStore | None,
        local_db: str | os.PathLike[str] | None = None,
        resize: bool | str | None = None,
        max_side: int = _transform.MAX_SIDE,
        host_id: str | None = None,
    ) -> None:
        self._api_key = (
            api_key if api_key is not None else os.environ.get("RUNWARE_API_KEY") or None
        )
        self.base_url = (
            base_url or os.environ.get("ASSETCACHE_API_URL") or DEFAULT_API_URL
        ).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"API URL must start with http:// or https://: {self.base_url}"
            )
        try:
            self.policy = _policy.Policy.from_timedeltas(retention, margin, touch_every)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if task_type not in ("imageUpload", "mediaStorage"):
            raise ConfigurationError(
                f"task_type must be imageUpload or mediaStorage, not {task_type!r}"
            )
        self.clock = clock or time.time
        self.namespace = namespace or namespace_for(self.base_url, self._api_key)
        # Keys carry a per-image variant: "" for bytes sent untouched (``variant``),
        # ``fit_variant`` for images the client resized or converted (_transform).
        self.variant = ""
        self.transform = _transform.configure(resize, max_side)
        self.fit_variant = self.transform.tag if self.transform else ""
        self.max_side = self.transform.max_side if self.transform else 0
        self._fit_gate = threading.BoundedSemaphore(min(4, os.cpu_count() or 1))
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.batch_size = max(1, batch_size)
        self.batch_bytes = batch_bytes
        self.max_bytes = max_bytes
        self.racy_ns = int(racy_window * 1e9)
        self.lease_ttl = lease_ttl
        self.task_type = task_type
        self.copies: Copies | None = None  # local copies of uploaded bytes (_copies)
        self.hash_workers = min(4, os.cpu_count() or 1)
        # The registry is the store itself, or (fleet) the shared registry.
        self.registry: Any
        if store is not None:
            self.store, self.registry = store, store
        else:
            self.store, self.registry = open_stores(db_path, local_db, host_id=host_id)
            if self.registry is not self.store:
                self.registry.fresh_since = lambda: self.fresh_since(self.clock())
        # A fleet names its lease owner after the host id (``host_id=``).
        self.owner = getattr(self.registry, "owner", None) or owner_id()
        self._flights: dict[Key, concurrent.futures.Future[AssetRow]] = {}
        self._flight_lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    # -- small helpers ---------------------------------------------------
    @property
    def account(self) -> str | None:
        return account_fingerprint(self._api_key) if self._api_key else None

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def count(self, **counts: int) -> None:
        with self._count_lock:
            self._counts.update(counts)

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

    def _resolution(self, label: str, row: AssetRow, outcome: str, sent: int = 0) -> Resolution:
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
            self.registry.touch((self.namespace, row[6], row[11]), now)
            last_used = now
        with self._count_lock:
            self._counts["hits"] += 1
            self._counts["bytes_saved"] += row[10]
        return row, last_used

    # -- preparing sources (blocking: stat, read, hash) ----------------------
    def prepare(self, obj: SourceLike | _Prepared) -> _Prepared | AssetCacheError:
        if isinstance(obj, _Prepared):
            return obj  # checked by the caller already (refresh): not read twice
        try:
            src = Source.coerce(obj)
            if src.kind == "path":
                return self._prepare_path(src)
            if src.kind == "url":
                return self._prepare_url(src)
            if src.kind == "file":
                return self._prepare_stream(src)
            return self._prepare_data(src)
        except AssetCacheError as exc:
            return exc

    def _check_size(self, label: str, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise SourceTooLarge(
                label, f"{size} bytes is above the limit of {self.max_bytes} bytes"
            )

    def _prepare_data(self, src: Source) -> _Prepared:
        data = src.data
        assert data is not None
        if not data:
            raise SourceError(src.label, "empty input")
        self._check_size(src.label, len(data))
        check = FormatCheck()
        check(memoryview(data))
        fmt = _finish(src.label, check)
        if src.declared_type:
            declared = DECLARED.get(src.declared_type)
            if declared != fmt:
                raise InvalidImage(
                    src.label,
                    f"declared {src.declared_type} but the data is {fmt.upper()}",
                )
        digest = _hashing.hash_bytes(data)
        payload = Payload(src.label, len(data), MEDIA_TYPES[fmt], data=data)
        variant, make = self._fit(fmt, check.width, check.height, payload)
        return _Prepared(src.label, (self.namespace, digest, variant), len(data), fmt, make)

    def _prepare_url(self, src: Source) -> _Prepared:
        assert src.url is not None
        digest = _hashing.hash_bytes(b"url\0" + src.url.encode())
        payload = Payload(src.label, 0, "", url=src.url)
        return _Prepared(
            src.label, (self.namespace, digest, self.variant), 0, "url", lambda: payload
        )

    def _prepare_stream(self, src: Source) -> _Prepared:
        import tempfile  # here: it pulls in shutil, lzma and bz2, slow for start-up

        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=INLINE_LIMIT)  # noqa: SIM115
        check = FormatCheck()
        try:

            def spool_sink(chunk: memoryview) -> None:
                spool.write(chunk)

            digest, size = _hashing.hash_stream(
                src.stream, limit=self.max_bytes, sinks=(check, spool_sink)
            )
        except OverflowError:
            spool.close()
            raise SourceTooLarge(
                src.label, f"more than the limit of {self.max_bytes} bytes"
            ) from None
        except OSError as exc:
            spool.close()
            raise SourceError(src.label, f"cannot be read: {exc.strerror or exc}") from None
        if size == 0:
            spool.close()
            raise SourceError(src.label, "empty input")
        fmt = _finish(src.label, check)
        if size <= INLINE_LIMIT:
            spool.seek(0)
            data = spool.read()
            spool.close()
            payload = Payload(src.label, size, MEDIA_TYPES[fmt], data=data)
        else:

            def reopen() -> IO[bytes]:
                spool.seek(0)
                return cast(IO[bytes], _NoClose(spool))

            payload = Payload(src.label, size, MEDIA_TYPES[fmt], open=reopen, expected_hash=digest)
        variant, make = self._fit(fmt, check.width, check.height, payload)
        return _Prepared(src.label, (self.namespace, digest, variant), size, fmt, make)

    def _prepare_path(self, src: Source) -> _Prepared:
        path, label = src.path, src.label
        assert path is not None
        st = _stat_source(path, label)
        self._check_size(label, st.st_size)
        fp = _hashing.Fingerprint.of(st)
        known = self.store.get_file(path)
        if (
            known is not None
            and known.format is not None
            and (known.dev, known.ino, known.size, known.mtime_ns, known.ctime_ns) == fp.as_tuple()
            and not _hashing.is_racy(fp, known.hashed_at_ns, self.racy_ns)
            # A size never recorded (older rows) is learnt by reading the file once.
            and (
                self.transform is None
                or self.transform.variant_for(known.format, known.width, known.height) is not None
            )
        ):
            # Stat data proves the content: no read now; the upload (if any)
            # streams the file and verifies it still hashes the same.
            payload = Payload(
                label,
                fp.size,
                MEDIA_TYPES[known.format],
                open=lambda: open(path, "rb"),  # noqa: SIM115 - the payload closes it
                expected_hash=known.content_hash,
            )
            variant, make = self._fit(known.format, known.width, known.height, payload)
            return _Prepared(
                label, (self.namespace, known.content_hash, variant), fp.size, known.format, make
            )
        return self._read_path(path, label)

    def _read_path(self, path: str, label: str) -> _Prepared:
        started = _hashing.now_ns()
        try:
            # O_NONBLOCK: a FIFO swapped in after the stat must not hang the open.
            fd = os.open(
                path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
            )
        except OSError as exc:
            raise _os_error(label, exc) from None
        with open(fd, "rb", buffering=0, closefd=True) as f:
            before = os.fstat(fd)
            if not stat_mod.S_ISREG(before.st_mode):
                raise SourceError(label, "is not a regular file")
            self._check_size(label, before.st_size)
            check = FormatCheck()
            keep: list[bytes] = []
            sinks: list[Callable[[memoryview], None]] = [check]
            if before.st_size <= INLINE_LIMIT:
                sinks.append(lambda chunk: keep.append(bytes(chunk)))
            try:
                digest, size = _hashing.hash_stream(f, limit=self.max_bytes, sinks=sinks)
            except OverflowError:
                raise SourceTooLarge(
                    label, f"grew above the limit of {self.max_bytes} bytes"
                ) from None
            except OSError as exc:
                raise _os_error(label, exc) from None
            after = os.fstat(fd)
        fp = _hashing.Fingerprint.of(before)
        if fp != _hashing.Fingerprint.of(after) or size != before.st_size:
            raise SourceError(label, "changed while being read; try again once it is written")
        if size == 0:
            raise SourceError(label, "empty file")
        fmt = _finish(label, check)
        # 0x0: size unreadable without decoding; such an image is sent as it is.
        width, height = check.width or 0, check.height or 0
        row = FileRow(path, *fp.as_tuple(), digest, fmt, started, width, height)
        if keep:
            data = b"".join(keep)
            payload = Payload(label, size, MEDIA_TYPES[fmt], data=data)
        else:
            payload = Payload(
                label,
                size,
                MEDIA_TYPES[fmt],
                open=lambda: open(path, "rb"),  # noqa: SIM115 - the payload closes it
                expected_hash=digest,
            )
        variant, make = self._fit(fmt, width, height, payload)
        return _Prepared(label, (self.namespace, digest, variant), size, fmt, make, file_row=row)

    def _fit(
        self, fmt: str, width: int | None, height: int | None, payload: Payload
    ) -> tuple[str, Callable[[], Payload]]:
        """The key's variant and the payload maker: the original as it is, or the
        transform's output, made on first call (only an upload calls it)."""
        transform = self.transform
        variant = transform.variant_for(fmt, width, height) if transform else ""
        if not variant or transform is None:
            return "", lambda: payload
        made: list[Payload] = []
        lock = threading.Lock()

        def make() -> Payload:
            with lock:
                if not made:
                    made.append(_fitted(transform, fmt, payload))
                return made[0]

        make.original = payload  # type: ignore[attr-defined]  # what local copies keep
        return variant, make

    # -- lookups and records (blocking SQLite) --------------------------------
    def fresh_since(self, now: float) -> float:
        """Rows used after this instant are still served."""
        return now - (self.policy.retention - self.policy.margin)

    def settle(
        self, items: Sequence[_Prepared], force: Collection[Key] = ()
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
            self.registry.touch(key, now)
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

    def record(
        self, done: Sequence[tuple[_Prepared, TaskResult, int]], files: Sequence[FileRow]
    ) -> list[AssetRow]:
        now = self.clock()
        records = [
            UploadRecord(p.key[0], p.key[1], p.key[2], r.image_uuid, p.size, p.format, now, sent)
            for p, r, sent in done
        ]
        self.registry.record_uploads(records, self.owner, files)
        if self.copies is not None:
            keep_uploaded_copies(self.copies, done)
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

    def release(self, keys: Iterable[Key]) -> None:
        self.registry.release(keys, self.owner)

    # -- the plans -----------------------------------------------------------
    def plan_resolve_many(
        self, sources: Sequence[SourceLike], concurrency: int | None, force: Collection[Key] = ()
    ) -> Plan:
        """Resolve every source; results in input order, failures as values.

        Keys in ``force`` are uploaded again even if fresh (``refresh``).
        """
        limit = max(1, concurrency or self.concurrency)
        started = self.clock() if force else 0.0
        results: list[Resolution | None] = [None] * len(sources)
        todo: list[int] = []
        for i, obj in enumerate(sources):
            try:
                hit = self.fast_hit(obj) if not force else None
            except StoreError:
                hit = None  # the slow path meets the same error and reports it per item
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        if not todo:
            return results

        prepared: list[_Prepared | AssetCacheError] = yield Map(
            self.prepare, [sources[i] for i in todo], self.hash_workers if len(todo) > 1 else 1
        )
        ready: list[tuple[int, _Prepared]] = []
        for i, p in zip(todo, prepared, strict=True):
            if isinstance(p, AssetCacheError):
                results[i] = _failed(_label(sources[i]), p)
                self.count(failures=1)
            else:
                ready.append((i, p))

        try:
            rows = yield Call(self.settle, [p for _, p in ready], force)
        except AssetCacheError as exc:
            # The store cannot answer: every remaining item fails with its reason.
            self._fail_group(results, ready, exc)
            return results
        groups: dict[Key, list[tuple[int, _Prepared]]] = {}
        for (i, p), row in zip(ready, rows, strict=True):
            if row is not None:
                results[i] = self._resolution(p.label, row, "hit")
                self.count(hits=1, bytes_saved=p.size)
            else:
                groups.setdefault(p.key, []).append((i, p))

        late_files: list[FileRow] = []  # stat rows of items answered by someone else's upload
        poll = 0.02
        chunk = self.batch_size * limit  # keys leased at a time: one round of requests
        while groups:
            lead, follow = self.join_flights(list(groups))
            claimed: dict[Key, AssetRow | str] = {}
            if lead:
                try:
                    claimed = yield Call(self.claim, lead, force, started, chunk)
                except AssetCacheError as exc:
                    for key in lead:
                        self.land(key, exc)
                        self._fail_group(results, groups.pop(key), exc)
                    claimed = {}
            to_upload: list[Key] = []
            held: list[Key] = []
            later: list[Key] = []
            for key, state in claimed.items():
                if isinstance(state, AssetRow):
                    self.land(key, state)
                    self._hit_group(results, groups.pop(key), state, late_files)
                elif state == "claimed":
                    to_upload.append(key)
                elif state == "later":
                    later.append(key)
                else:
                    held.append(key)
            for key in later:  # free, beyond this round's chunk: the next round claims them
                self.land(key, _Retry())

            if to_upload:
                yield from self._upload_groups(results, groups, to_upload, limit)

            for key, fut in follow.items():
                try:
                    row = yield Wait(fut)
                except SourceError:
                    continue  # the leader's own input failed; ours may be fine: try again
                except AssetCacheError as exc:
                    self._fail_group(results, groups.pop(key), exc)
                    continue
                self._hit_group(results, groups.pop(key), row, late_files)

            if held:
                # Another process holds the lease: keep our in-process flight (so
                # our own threads keep waiting on us) and poll for its result.
                for key in held:
                    self.land(key, _Retry())
                if not to_upload:
                    yield Sleep(poll)
                    poll = min(poll * 2, 0.25)

        if late_files:
            try:
                yield Call(self.store.put_files, late_files)
            except StoreError as exc:  # the answers stand; only the stat shortcut is lost
                log.warning("could not record file hashes: %s", exc)
        return results

    def _upload_groups(
        self,
        results: list[Resolution | None],
        groups: dict[Key, list[tuple[int, _Prepared]]],
        keys: list[Key],
        limit: int,
    ) -> Plan:
        renew = getattr(self.registry, "renew", None)
        if renew is not None:
            # Fencing (a fleet): upload only what we still hold, its lease renewed just
            # now; a process stalled since its claim may have been taken over meanwhile.
            try:
                mine = yield Call(renew, keys, self.owner)
            except AssetCacheError as exc:
                with contextlib.suppress(AssetCacheError):
                    yield Call(self.release, keys)
                for key in keys:
                    self.land(key, exc)
                    self._fail_group(results, groups.pop(key), exc)
                return
            for key in keys:
                if key not in mine:
                    self.land(key, _Retry())  # another host's now: wait for its upload
            keys = [key for key in keys if key in mine]
            if not keys:
                return
        leaders = {key: groups[key][0][1] for key in keys}
        try:
            found = yield Call(self.registry.get_assets, keys, inline=True)
            previous = {k: row.image_uuid for k, row in found.items()}
        except AssetCacheError:
            previous = {}  # only the outcome's name depends on it
        failed: dict[Key, AssetCacheError] = {}
        batches = self._pack([(key, leaders[key].payload()) for key in keys if not key[2]])
        plans = [self._plan_send(batch) for batch in batches]
        slots = [[key for key, _ in batch] for batch in batches]
        # Keys with a variant are resized first (decode, re-encode): in small
        # groups, each sent as soon as it is ready, so resizing overlaps uploading.
        for group in self._fit_groups([key for key in keys if key[2]], leaders):
            plans.append(self._plan_fit_send([(key, leaders[key]) for key in group]))
            slots.append(group)
        outcomes = yield Concurrent(
            [self._plan_recorded(plan, leaders, groups) for plan in plans], limit
        )
        recorded: dict[Key, tuple[AssetRow, int]] = {}
        for slot, outcome in zip(slots, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                err = (
                    outcome
                    if isinstance(outcome, AssetCacheError)
                    else AssetCacheError(f"upload failed: {type(outcome).__name__}: {outcome}")
                )
                for key in slot:
                    failed[key] = err
                continue
            answers, rows, record_error = outcome
            for key, (sent, res) in answers.items():
                if key in rows:
                    recorded[key] = (rows[key], sent)
                elif isinstance(res, TaskResult):
                    failed[key] = record_error or AssetCacheError("upload not recorded")
                else:
                    failed[key] = res
        for key, (row, sent) in recorded.items():
            outcome_name = _policy.outcome_for_upload(previous.get(key))
            self.count(
                uploads=1,
                bytes_sent=sent,
                misses=1,
                reuploads=1 if outcome_name == "reuploaded" else 0,
            )
            members = groups.pop(key)
            first_i, first_p = members[0]
            results[first_i] = self._resolution(first_p.label, row, outcome_name, sent)
            self._hit_group(results, members[1:], row)
            self.land(key, row)
        if failed:
            with contextlib.suppress(AssetCacheError):
                yield Call(self.release, list(failed))
            for key, err in failed.items():
                self.land(key, err)
                self._fail_group(results, groups.pop(key), err)

    def _plan_recorded(
        self,
        send: Plan,
        leaders: dict[Key, _Prepared],
        groups: dict[Key, list[tuple[int, _Prepared]]],
    ) -> Plan:
        """Run one request's plan and record its successes as soon as it answers,
        so a crash later in a long batch loses only the requests in flight."""
        answers = yield from send
        done = [
            (key, sent, res) for key, (sent, res) in answers.items() if isinstance(res, TaskResult)
        ]
        rows: dict[Key, AssetRow] = {}
        error: AssetCacheError | None = None
        if done:
            files = [p.file_row for key, _, _ in done for _, p in groups[key] if p.file_row]
            try:
                stored = yield Call(
                    self.record, [(leaders[k], res, sent) for k, sent, res in done], files
                )
            except AssetCacheError as exc:
                error = exc
            else:
                rows = {key: row for (key, _, _), row in zip(done, stored, strict=True)}
        return answers, rows, error

    def _hit_group(
        self,
        results: list[Resolution | None],
        members: Sequence[tuple[int, _Prepared]],
        row: AssetRow,
        files: list[FileRow] | None = None,
    ) -> None:
        for i, p in members:
            results[i] = self._resolution(p.label, row, "hit")
            self.count(hits=1, bytes_saved=p.size)
            if files is not None and p.file_row is not None:
                files.append(p.file_row)

    def _fail_group(
        self,
        results: list[Resolution | None],
        members: Sequence[tuple[int, _Prepared]],
        err: AssetCacheError,
    ) -> None:
        for i, p in members:
            results[i] = _failed(p.label, err)
            self.count(failures=1)

    def _pack(self, items: list[tuple[Key, Payload]]) -> list[list[tuple[Key, Payload]]]:
        """Group uploads into requests bounded by task count and by body bytes."""
        batches: list[list[tuple[Key, Payload]]] = []
        current: list[tuple[Key, Payload]] = []
        size = 0
        for key, payload in items:
            n = payload.encoded_length()
            if current and (len(current) >= self.batch_size or size + n > self.batch_bytes):
                batches.append(current)
                current, size = [], 0
            current.append((key, payload))
            size += n
        if current:
            batches.append(current)
        return batches

    def _fit_groups(self, keys: list[Key], leaders: dict[Key, _Prepared]) -> list[list[Key]]:
        """Keys to resize, grouped up to ``batch_size`` items or 4 MB of originals."""
        groups: list[list[Key]] = []
        size = 0
        for key in keys:
            if not groups or len(groups[-1]) >= self.batch_size or size >= FIT_GROUP_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(key)
            size += leaders[key].size
        return groups

    def _plan_fit_send(self, items: list[tuple[Key, _Prepared]]) -> Plan:
        """Make the resized payloads (on a worker thread), then send them."""
        made = yield Call(self._make_payloads, [p for _, p in items])
        out: dict[Key, tuple[int, TaskResult | AssetCacheError]] = {}
        ready: list[tuple[Key, Payload]] = []
        for (key, _), payload in zip(items, made, strict=True):
            if isinstance(payload, AssetCacheError):
                out[key] = (0, payload)
            else:
                ready.append((key, payload))
        for batch in self._pack(ready):
            out.update((yield from self._plan_send(batch)))
        return out

    def _make_payloads(self, items: list[_Prepared]) -> list[Payload | AssetCacheError]:
        made: list[Payload | AssetCacheError] = []
        for prepared in items:
            # At most hash_workers images decoded at once, whatever the upload
            # concurrency: decoding is CPU- and memory-bound.
            with self._fit_gate:
                try:
                    made.append(prepared.payload())
                except AssetCacheError as exc:
                    made.append(exc)
        return made

    def _plan_send(self, batch: list[tuple[Key, Payload]]) -> Plan:
        """:meth:`_plan_upload`, answering ``{key: (bytes sent, outcome)}``."""
        answers = yield from self._plan_upload(batch)
        return {key: (payload.encoded_length(), answers[key]) for key, payload in batch}

    def _plan_upload(self, batch: list[tuple[Key, Payload]]) -> Plan:
        """POST one batch of uploads with retries; per-key TaskResult or error."""

        def encode(pairs: list[tuple[str, Payload]]) -> tuple[Callable[[], Any], int]:
            tasks = [Task(tid, payload, self.task_type) for tid, payload in pairs]
            return functools.partial(iter_body, tasks), body_length(tasks)

        uuid_field = "mediaUUID" if self.task_type == "mediaStorage" else "imageUUID"
        return (yield from self.plan_tasks(batch, encode, uuid_field, "upload"))

    def plan_tasks(
        self,
        batch: Sequence[tuple[Any, Any]],
        encode: Callable[[list[tuple[str, Any]]], tuple[Callable[[], Any], int]],
        uuid_field: str,
        what: str,
    ) -> Plan:
        """POST ``batch`` (``(key, item)`` pairs) as one request of tasks, re-sending the
        transient failures with fresh taskUUIDs and backoff; ``{key: TaskResult | error}``.

        ``encode([(taskUUID, item), ...])`` gives the body (a re-callable chunk
        producer) and its length. Shared by uploads and remote deletes.
        """
        url = self.base_url
        headers = self.headers()
        pending = list(range(len(batch)))
        out: dict[Any, TaskResult | AssetCacheError] = {}
        last: dict[int, AssetCacheError] = {}
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            by_task = {new_task_uuid(): i for i in pending}
            body, length = encode([(tid, batch[i][1]) for tid, i in by_task.items()])
            retry_after: float | None = None
            try:
                resp = yield Http(url, headers, body, length, self.retry.timeout)
                answers = parse_response(
                    resp.status, resp.headers, resp.body, list(by_task), self.redact, uuid_field
                )
            except SourceError as exc:
                # An upload's file changed under us: that item fails, the others go on.
                culprits = [
                    i for i in pending if getattr(batch[i][1], "label", None) == exc.source
                ] or pending
                for i in culprits:
                    out[batch[i][0]] = exc
                pending = [i for i in pending if i not in culprits]
                if not pending:
                    break
                continue
            except RemoteError as exc:
                if not is_transient(exc):
                    for i in pending:
                        out[batch[i][0]] = exc
                    return out
                for i in pending:
                    last[i] = exc
                retry_after = getattr(exc, "retry_after", None)
            else:
                still = []
                for tid, i in by_task.items():
                    answer = answers[tid]
                    if isinstance(answer, TaskResult):
                        out[batch[i][0]] = answer
                    elif is_transient(answer):
                        still.append(i)
                        last[i] = answer
                        ra = getattr(answer, "retry_after", None)
                        if ra is not None:
                            retry_after = max(retry_after or 0.0, ra)
                    else:
                        out[batch[i][0]] = answer
                pending = still
            if not pending:
                break
            if attempt + 1 < attempts:
                self.count(retries=1)
                log.info("retrying %d %s(s) after: %s", len(pending), what, last[pending[0]])
                yield Sleep(
                    backoff_delay(
                        attempt,
                        retry_after,
                        base=self.retry.base_delay,
                        cap=self.retry.max_delay,
                        jitter=_jitter(),
                    )
                )
        # One request-level error is shared by every task of the batch: amend it once.
        for err in {id(last[i]): last[i] for i in pending}.values():
            err.message = f"{err.message} (gave up after {attempts} attempts)"
        for i in pending:
            out[batch[i][0]] = last[i]
        return out

    def close(self) -> None:
        self.flush_counters()
        if self.registry is not self.store:
            self.registry.close()
        self.store.close()


class _Retry(SourceError):
    """Tells in-process followers to ask again (the key is held elsewhere)."""

    def __init__(self) -> None:
        super().__init__("", "held by another process")


class _NoClose(io.BufferedIOBase):
    """A view of a spooled file that the payload may 'close' without closing it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, n: int | None = -1) -> bytes:
        return self._f.read(-1 if n is None else n)

    def close(self) -> None:
        pass


def _fitted(transform: _transform.Transform, fmt: str, payload: Payload) -> Payload:
    """What to send for ``payload`` under ``transform`` (blocking: reads and re-encodes)."""
    data = payload.data
    if data is None:
        assert payload.open is not None
        try:
            with payload.open() as stream:
                data = stream.read(payload.size + 1)
        except OSError as exc:
            raise SourceError(payload.label, f"cannot be read: {exc.strerror or exc}") from None
        if len(data) != payload.size or (
            payload.expected_hash is not None and _hashing.hash_bytes(data) != payload.expected_hash
        ):
            raise SourceError(payload.label, "changed since it was hashed; try again")
    out = transform.apply(data, fmt, payload.label)
    if out is None:
        if payload.data is not None:
            return payload
        return Payload(payload.label, len(data), payload.media_type, data=data)
    body, out_fmt = out
    return Payload(payload.label, len(body), MEDIA_TYPES[out_fmt], data=body)


def _jitter() -> float:
    import random

    return random.random()


def _label(obj: Any) -> str:
    try:
        return Source.coerce(obj).label
    except AssetCacheError as exc:
        return getattr(exc, "source", "") or f"<{type(obj).__name__}>"


def _failed(label: str, err: AssetCacheError) -> Resolution:
    return Resolution(label, None, None, "failed", err)


def _finish(label: str, check: FormatCheck) -> str:
    try:
        return check.finish()
    except (UnsupportedFormat, InvalidImage) as exc:
        raise type(exc)(label, exc.reason) from None


def _stat_source(path: str, label: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(label, exc, path) from None
    if stat_mod.S_ISDIR(st.st_mode):
        raise SourceError(label, "is a directory, not a file")
    if not stat_mod.S_ISREG(st.st_mode):
        kind = (
            "FIFO"
            if stat_mod.S_ISFIFO(st.st_mode)
            else "socket"
            if stat_mod.S_ISSOCK(st.st_mode)
            else "device"
            if (stat_mod.S_ISCHR(st.st_mode) or stat_mod.S_ISBLK(st.st_mode))
            else "special file"
        )
        raise SourceError(label, f"is a {kind}, not a regular file")
    return st


def _os_error(label: str, exc: OSError, path: str | None = None) -> SourceError:
    import errno

    if exc.errno == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return SourceNotFound(label, "is a dangling symlink (its target does not exist)")
        return SourceNotFound(label, "no such file")
    if exc.errno == errno.ELOOP:
        return SourceError(label, "is a symlink loop")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceError(label, "permission denied")
    if exc.errno == errno.EISDIR:
        return SourceError(label, "is a directory, not a file")
    if exc.errno == errno.ENAMETOOLONG:
        return SourceError(label, "file name too long")
    if exc.errno == errno.ENOTDIR:
        return SourceNotFound(label, "a parent of this path is not a directory")
    return SourceError(label, f"cannot be read: {exc.strerror or exc}")


class _CacheBase(MaintenanceMixin, LifecycleMixin):
    """Construction and the non-I/O surface shared by both twins."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        db_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] | None = None,
        retention: timedelta | float | None = None,
        margin: timedelta | float | None = None,
        touch_every: timedelta | float | None = None,
        namespace: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        batch_size: int = 16,
        batch_bytes: int = 16 << 20,
        max_bytes: int | None = 1 << 30,
        racy_window: float = _hashing.RACY_WINDOW_NS / 1e9,
        lease_ttl: float = 300.0,
        task_type: str | None = None,
        transport: Any = None,
        sleep: Callable[[float], None] | None = None,
        store: SQLiteStore | None = None,
        local_db: str | os.PathLike[str] | None = None,
        resize: bool | str | None = None,
        max_side: int = _transform.MAX_SIDE,
        upload_task: str | None = None,
        keep_copies: bool = False,
        copies_dir: str | os.PathLike[str] | None = None,
        copies_max_bytes: int = DEFAULT_COPIES_MAX,
        host_id: str | None = None,
    ) -> None:
        if upload_task is not None and task_type not in (None, upload_task):
            raise ConfigurationError(
                f"upload_task={upload_task!r} contradicts task_type={task_type!r}: give one"
            )
        task_type = upload_task or task_type or "imageUpload"
        self._engine = _Engine(
            api_key,
            base_url=base_url,
            db_path=db_path,
            clock=clock,
            retention=retention,
            margin=margin,
            touch_every=touch_every,
            namespace=namespace,
            retry=retry,
            concurrency=concurrency,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            max_bytes=max_bytes,
            racy_window=racy_window,
            lease_ttl=lease_ttl,
            task_type=task_type,
            store=store,
            local_db=local_db,
            resize=resize,
            max_side=max_side,
            host_id=host_id,
        )
        try:
            self._copies = Copies(
                copies_dir or self._engine.store.path + ".copies", copies_max_bytes
            )
        except ConfigurationError:
            self._engine.close()
            raise
        self._engine.copies = self._copies if keep_copies else None
        self._transport = transport
        self._driver = Driver(sleep=sleep or time.sleep)
        self._closed = False

    def _client_kwargs(self) -> dict[str, Any]:
        import httpx

        n = self._engine.concurrency
        kwargs: dict[str, Any] = {
            "timeout": httpx.Timeout(self._engine.retry.timeout, connect=10.0),
            "limits": httpx.Limits(max_connections=n, max_keepalive_connections=n),
            "follow_redirects": False,
        }
        if self._transport is not None:
            kwargs["transport"] = self._transport
        return kwargs

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

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} db={self.db_path!r} api={self._engine.base_url!r} "
            f"account={self.account}>"
        )


class AssetCache(_CacheBase):
    """Content-addressed cache of Runware imageUUIDs (blocking API, thread-safe).

    >>> with AssetCache(db_path="cache.db") as cache:        # doctest: +SKIP
    ...     cache.get_uuid("photo.png")
    '5d1f9c62-...'
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)

        def make_client() -> Any:
            import httpx

            return httpx.Client(**self._client_kwargs())

        self._driver.make_sync_client = make_client

    def resolve(self, source: SourceLike) -> Resolution:
        """The imageUUID of ``source``, uploading it if needed; raises on failure."""
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        (result,) = run_sync(self._engine.plan_resolve_many([source], 1), self._driver)
        if result.error is not None:
            raise result.error
        return result

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
        return run_sync(self._engine.plan_resolve_many(list(sources), concurrency), self._driver)

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
        steps = self._use_steps(source, fn, retries, is_unknown, parameter)
        return cast(T, run_sync(steps, self._driver))

    def _drive(self, plan: Plan) -> Any:
        return run_sync(plan, self._driver)

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


class AsyncAssetCache(_CacheBase):
    """The asyncio twin of :class:`AssetCache`, sharing its logic.

    >>> async with AsyncAssetCache(db_path="cache.db") as cache:   # doctest: +SKIP
    ...     await cache.get_uuid("photo.png")
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)

        def make_client() -> Any:
            import httpx

            return httpx.AsyncClient(**self._client_kwargs())

        self._driver.make_async_client = make_client

    async def resolve(self, source: SourceLike) -> Resolution:
        hit = self._engine.fast_hit(source)
        if hit is not None:
            return hit
        (result,) = await run_async(self._engine.plan_resolve_many([source], 1), self._driver)
        if result.error is not None:
            raise result.error
        return result

    async def get_uuid(self, source: SourceLike) -> str:
        uuid = (await self.resolve(source)).uuid
        assert uuid is not None
        return uuid

    async def resolve_many(
        self, sources: Iterable[SourceLike], concurrency: int | None = None
    ) -> list[Resolution]:
        return await run_async(
            self._engine.plan_resolve_many(list(sources), concurrency), self._driver
        )

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
        steps = self._use_steps(source, fn, retries, is_unknown, parameter)
        return await run_async(steps, self._driver)

    async def _drive(self, plan: Plan) -> Any:
        return await run_async(plan, self._driver)

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
