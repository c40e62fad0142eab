"""The shared asset registry on PostgreSQL, for a fleet of hosts.

Only the registry lives here (namespace + content hash + variant -> imageUUID,
last use, counts, upload leases, usage counters). Each host keeps its file
index, a copy of the registry rows it has used, and an *outbox* of uploads not
yet shared, in its local SQLite file (see ``_fleet.FleetRegistry``), so a warm
hit never leaves the machine and an upload is never lost to a database blip.

Single flight across hosts: a claim takes a transaction-scoped advisory lock
per key (in key order, so two claimers cannot deadlock) before reading the
asset and lease rows, so two hosts can never both see "no lease". No
transaction is held across an upload: the lease row is what other hosts wait
on, and its owner's heartbeat is what keeps it alive.

Every operation has a deadline (:class:`FleetSettings`): libpq's connect
timeout and TCP keepalives, server-side ``statement_timeout``, ``lock_timeout``
and ``idle_in_transaction_session_timeout``, and a client-side watchdog that
shuts a connection whose answer does not come in time (a partition the
kernel cannot see). Transient errors are retried with backoff for
``retry_for`` seconds.

Requires the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import logging
import os
import random
import re
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from .._errors import ConfigurationError, SchemaTooNew, StoreError
from ._base import ASSET_COLUMNS, AssetRow, FileRow, Key, SQLRegistry, UploadRecord

log = logging.getLogger("assetcache")

T = TypeVar("T")

#: Serialises schema migrations when several hosts start at once.
_MIGRATION_LOCK = 0x61737365  # "asse"

_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS assetcache_assets (
        namespace TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT '',
        image_uuid TEXT NOT NULL,
        size BIGINT NOT NULL,
        format TEXT NOT NULL,
        uploaded_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION NOT NULL,
        upload_count INTEGER NOT NULL DEFAULT 1,
        hits BIGINT NOT NULL DEFAULT 0,
        bytes_sent BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, content_hash, variant)
    );
    CREATE INDEX IF NOT EXISTS assetcache_assets_by_uuid ON assetcache_assets (image_uuid);
    CREATE INDEX IF NOT EXISTS assetcache_assets_by_last_use ON assetcache_assets (last_used_at);
    CREATE TABLE IF NOT EXISTS assetcache_leases (
        namespace TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        variant TEXT NOT NULL,
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (namespace, content_hash, variant)
    );
    CREATE TABLE IF NOT EXISTS assetcache_counters (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, name)
    );
    """,
    # 2: evidence, not belief (SQLite migration 5): serving slid last_used_at until
    # now; the only evidence of a use that survives is the upload itself. And one
    # spelling of a UUID: lower case.
    """
    UPDATE assetcache_assets SET last_used_at = uploaded_at WHERE last_used_at > uploaded_at;
    UPDATE assetcache_assets SET image_uuid = lower(image_uuid)
        WHERE image_uuid <> lower(image_uuid);
    """,
    # 3: the URL an upload answer carried, for answers served from the cache.
    "ALTER TABLE assetcache_assets ADD COLUMN IF NOT EXISTS url TEXT",
    # 4: lease heartbeats (server time of the owner's last renewal), leases by
    # owner (renewal and clean-up), and flush tokens that make a retried
    # counter update count once.
    """
    ALTER TABLE assetcache_leases ADD COLUMN IF NOT EXISTS heartbeat_at DOUBLE PRECISION;
    CREATE INDEX IF NOT EXISTS assetcache_leases_by_owner ON assetcache_leases (owner);
    CREATE TABLE IF NOT EXISTS assetcache_counter_flushes (
        token TEXT PRIMARY KEY,
        flushed_at DOUBLE PRECISION NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLS = ", ".join(ASSET_COLUMNS)
_NOW = "extract(epoch FROM clock_timestamp())"


# -- settings -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FleetSettings:
    """Deadlines and sizes of the shared store, read from its URL's query.

    ``postgresql://app@db/assets?pool_size=2&statement_timeout=5`` (seconds;
    every name below is also a URL parameter; the others go to libpq as given).
    """

    #: Connections this process may open (each busy worker thread needs one).
    pool_size: int = 4
    #: libpq's limit on establishing a connection (TCP, TLS, authentication).
    connect_timeout: float = 5.0
    #: Server-side limit on one statement.
    statement_timeout: float = 10.0
    #: Server-side limit on waiting for a row or advisory lock.
    lock_timeout: float = 5.0
    #: The server ends a session that sits in an open transaction this long.
    idle_in_transaction_timeout: float = 30.0
    #: TCP keepalive: first probe after this many idle seconds ...
    keepalives_idle: int = 10
    #: ... then one every this many seconds ...
    keepalives_interval: int = 3
    #: ... and the connection is dead after this many unanswered probes.
    keepalives_count: int = 3
    #: Sent data unacknowledged this long kills the connection (Linux).
    tcp_user_timeout: float = 10.0
    #: How long a transient error (server gone, connection cut, deadlock) is retried.
    retry_for: float = 30.0
    #: Lease renewal period; a lease whose heartbeat stopped is taken over
    #: after ``stale_beats`` periods.
    heartbeat: float = 2.0
    stale_beats: float = 2.5
    #: psycopg prepares a statement after this many runs; 0: never (pgbouncer < 1.21).
    prepare_threshold: int = 5

    @property
    def stale_after(self) -> float:
        return self.heartbeat * self.stale_beats

    @property
    def deadline(self) -> float:
        """The most one round of an operation may take before the watchdog ends it."""
        return self.statement_timeout + max(0.5, min(2.0, self.statement_timeout / 2))

    @classmethod
    def from_url(cls, url: str) -> tuple[FleetSettings, str]:
        """Settings from the URL's query, and the URL with them removed."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        given: dict[str, Any] = {}
        rest = []
        for name, value in query:
            if name in fields:
                kind = int if fields[name].type in ("int", int) else float
                try:
                    number = kind(value.removesuffix("s"))
                except ValueError:
                    raise ConfigurationError(
                        f"database URL parameter {name}={value!r} is not a number"
                    ) from None
                if number < 0 or (name in ("pool_size", "heartbeat") and number <= 0):
                    raise ConfigurationError(
                        f"database URL parameter {name}={value!r} must be positive"
                    )
                given[name] = number
            else:
                rest.append((name, value))
        stripped = urllib.parse.urlunsplit(
            parts._replace(query=urllib.parse.urlencode(rest, quote_via=urllib.parse.quote))
        )
        return cls(**given), stripped

    def libpq(self) -> dict[str, Any]:
        """Connection keywords: libpq timeouts and the session's server-side limits."""
        ms = lambda s: str(int(s * 1000))  # noqa: E731
        return {
            "connect_timeout": max(1, round(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": self.keepalives_interval,
            "keepalives_count": self.keepalives_count,
            "tcp_user_timeout": ms(self.tcp_user_timeout),
            "options": (
                f"-c statement_timeout={ms(self.statement_timeout)} "
                f"-c lock_timeout={ms(self.lock_timeout)} "
                f"-c idle_in_transaction_session_timeout={ms(self.idle_in_transaction_timeout)}"
            ),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "stale_after": self.stale_after}


def redact_url(url: str) -> str:
    """The URL without any credential (password in the user part or the query)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    safe = [
        (k, "***" if re.search(r"pass|secret|token|key|sslcert|sslkey", k, re.I) else v)
        for k, v in query
    ]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(safe, safe="*/"), "")
    )


def _host_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def _lock_id(key: Key) -> int:
    digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _by_namespace(keys: Iterable[Key]) -> dict[str, list[str]]:
    """Content hashes grouped by namespace, sorted: each group one indexed lookup."""
    out: dict[str, set[str]] = {}
    for ns, digest, _ in keys:
        out.setdefault(ns, set()).add(digest)
    return {ns: sorted(d) for ns, d in sorted(out.items())}


def host_id(value: str | None = None) -> str:
    """This host's name in lease owners: ``value`` (the ``host_id`` setting), else the
    host name; made safe for the ``host:pid:random`` owner format."""
    text = value or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:64] or "host"


def fleet_owner(host: str) -> str:
    """A lease owner: ``host:pid:random``."""
    return f"{host}:{os.getpid()}:{os.urandom(4).hex()}"


def _pid_dead(lease_owner: str, host: str) -> bool:
    """True only when the owner provably died: our host id, no such process."""
    owner_host, _, rest = lease_owner.partition(":")
    pid_text = rest.partition(":")[0]
    if owner_host != host or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


# -- error classification ------------------------------------------------------------------

#: SQLSTATEs worth retrying: the server or the connection, not the request.
_TRANSIENT_STATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown (pg_terminate_backend, server stopping)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
    "53300",  # too_many_connections
    "25P03",  # idle_in_transaction_session_timeout
}


def _cause(text: str, url: str) -> str:
    """One line naming what went wrong, for the messages people read at 3 a.m."""
    flat = " ".join(text.split())
    low = flat.lower()
    where = _host_of(url)
    if "password" in low and ("authentication" in low or "no password" in low):
        return "authentication failed (check the user and password)"
    if "authentication failed" in low or ("role" in low and "does not exist" in low):
        return "authentication failed (check the user and password)"
    m = re.search(r'database "([^"]+)" does not exist', flat)
    if m:
        return f'no such database "{m.group(1)}" on {where}'
    if (
        "too many connections" in low
        or "too many clients" in low
        or "remaining connection slots" in low
    ):
        return (
            f"too many connections: {where} is at max_connections "
            "(lower pool_size, or put pgbouncer in front)"
        )
    if "connection refused" in low:
        return f"connection refused by {where} (is PostgreSQL running and listening there?)"
    if "timeout expired" in low or "timed out" in low:
        return f"no answer from {where} within the deadline"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"unknown host {where}"
    if "terminating connection" in low or "server closed the connection" in low:
        return "the server closed the connection"
    if "canceling statement due to statement timeout" in low:
        return "a statement ran past statement_timeout"
    if "lock timeout" in low:
        return "waited past lock_timeout for a lock"
    return flat[:300]


# -- deadlines and connections -----------------------------------------------------------------


class _Watchdog:
    """Ends a connection whose operation outlived its deadline.

    Server-side timeouts cannot fire when the server never sees the request
    (a partition, a stalled proxy) and TCP keepalives cannot see a peer that
    acknowledges and forwards nothing; shutting the socket down makes the
    blocked call fail at once with a connection error, which is retried.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, Any] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self.fired = 0

    @contextlib.contextmanager
    def guard(self, conn: Any, seconds: float) -> Iterator[None]:
        token = next(self._ids)
        due = time.monotonic() + seconds
        with self._cond:
            self._live[token] = conn
            # The thread sleeps until the earliest deadline: wake it only if this is earlier.
            wake = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="assetcache-watchdog", daemon=True
                )
                self._thread.start()
            if wake:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._live.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(5.0)
                    continue
                due, token = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                conn = self._live.pop(token, None)
            if conn is not None:
                self.fired += 1
                _shut(conn)


def _shut(conn: Any) -> None:
    """Shut the connection's socket down under whoever is blocked on it."""
    with contextlib.suppress(Exception):
        fd = conn.fileno()
        s = socket.socket(fileno=os.dup(fd))
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


_WATCHDOG = _Watchdog()


class _Pool:
    """At most ``size`` connections, checked before they are handed out.

    A connection that the server closed (``pg_terminate_backend``, a restart,
    a cut) has its socket readable while idle: that costs a zero-timeout
    ``select``, not a round trip. One idle longer than ``probe_after`` seconds
    also answers a ``SELECT 1`` within the deadline before it is used. New
    connections are made in the caller's thread, so a failure says why.
    """

    def __init__(self, connect: Callable[[], Any], size: int, deadline: float) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[tuple[Any, float]] = []
        self._lock = threading.Lock()
        self._deadline = deadline
        self.size = size
        self.probe_after = 5.0
        self.closed = False

    @contextlib.contextmanager
    def connection(self, wait: float) -> Iterator[Any]:
        if self.closed:
            raise _PoolClosed()
        if not self._slots.acquire(timeout=wait):
            raise _PoolBusy(self.size, wait)
        conn = None
        try:
            conn = self._take()
            yield conn
        except BaseException:
            if conn is not None:
                self._discard(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _take(self) -> Any:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if self._healthy(conn, time.monotonic() - since):
                return conn
            self._discard(conn)
        return self._connect()

    def _healthy(self, conn: Any, idle: float) -> bool:
        if conn.closed or conn.broken:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        if readable:
            return False  # EOF, a reset or the server's goodbye: nothing is owed to us
        if idle < self.probe_after:
            return True
        try:
            with _WATCHDOG.guard(conn, min(self._deadline, 3.0)):
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def _give_back(self, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        if self.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            self._discard(conn)
            return
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    @staticmethod
    def _discard(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._discard(conn)

    def close(self) -> None:
        self.closed = True
        self.drop_idle()


class _PoolBusy(Exception):
    def __init__(self, size: int, wait: float) -> None:
        super().__init__(
            f"all {size} connections of this process stayed busy for {wait:g} s "
            "(raise pool_size, or lower concurrency)"
        )


class _PoolClosed(Exception):
    def __init__(self) -> None:
        super().__init__("the shared store is closed")


# -- the registry on the server -----------------------------------------------------------------


class PostgresRegistry(SQLRegistry):
    """The registry contract (``_base.Registry``) on a PostgreSQL server: the
    maintenance methods are :class:`~._base.SQLRegistry`'s, in this dialect; the
    fleet's hot path (claims, records, heartbeats, counters) is its own.

    >>> reg = PostgresRegistry("postgresql://app@db.internal/assets")   # doctest: +SKIP
    """

    ASSETS = "assetcache_assets"
    LEASES = "assetcache_leases"
    COUNTERS = "assetcache_counters"
    MARK = "%s"

    def __init__(
        self,
        url: str,
        *,
        settings: FleetSettings | None = None,
        host: str | None = None,
        migrate: bool = True,
    ) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "a postgresql:// store needs the postgres extra: pip install 'assetcache[postgres]'"
            ) from None
        parsed, stripped = FleetSettings.from_url(url)
        self.settings = settings or parsed
        self.url = stripped
        self.path = redact_url(url)
        self.host = host_id(host)
        self.too_new: SchemaTooNew | None = None
        # Leases seen held by others: key -> (owner, heartbeat, first seen, monotonic).
        self._seen: dict[Key, tuple[str, float, float]] = {}
        self._seen_lock = threading.Lock()
        try:
            given = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"invalid database URL {self.path}: {_cause(str(exc), self.url)}"
            ) from None
        kwargs = self.settings.libpq()
        if "options" in given:
            kwargs["options"] = f"{given['options']} {kwargs['options']}"
        if "keepalives" in given:
            kwargs.pop("keepalives")
        if "application_name" not in given:
            kwargs["application_name"] = f"assetcache {self.host}"[:63]
        self._kwargs = kwargs
        self._pool = _Pool(self._connect, self.settings.pool_size, self.settings.deadline)
        # The heartbeat and the outbox replay: one connection each, outside the pool.
        self._background_pool = _Pool(self._connect, 2, self.settings.deadline)
        self._thread_role = threading.local()
        # Start-up: one direct connection, so that a failure names its cause. A
        # server that is full or starting up is waited for; anything else is reported.
        give_up = time.monotonic() + self.settings.retry_for
        delay = 0.1
        while True:
            try:
                with self._conn("connect") as conn:
                    conn.execute("SELECT 1")
                break
            except StoreError as exc:
                reason = str(getattr(exc, "reason", exc))
                busy = reason.startswith("too many connections") or "starting up" in reason
                if busy and time.monotonic() + delay < give_up:
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 1.0)
                    continue
                self.close()
                raise StoreError(
                    f"cannot use the shared store {self.path}: {getattr(exc, 'reason', exc)}",
                    path=self.path,
                ) from None
        if migrate:
            self._migrate()

    # -- plumbing --------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, **self._kwargs)
        threshold = self.settings.prepare_threshold
        conn.prepare_threshold = threshold if threshold > 0 else None
        return conn

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        import psycopg

        reason = _cause(str(exc), self.url)
        for secret in {self.url, urllib.parse.urlsplit(self.url).password or "\0"}:
            reason = reason.replace(secret, "***")
        state = getattr(exc, "sqlstate", None)
        transient = isinstance(exc, (_PoolBusy, OSError, psycopg.InterfaceError)) or (
            state in _TRANSIENT_STATES
        )
        if isinstance(exc, psycopg.OperationalError) and state is None:
            # A connection-level failure; the ones a retry cannot fix are named.
            transient = not reason.startswith(("authentication", "no such database", "unknown"))
        return StoreError(
            f"shared store {self.path} failed while trying to {doing}: {reason}",
            path=self.path,
            reason=reason,
            transient=transient,
        )

    @contextlib.contextmanager
    def _conn(self, doing: str) -> Iterator[Any]:
        import psycopg

        if self.too_new is not None:
            raise self.too_new
        s = self.settings
        pool = self._background_pool if getattr(self._thread_role, "bg", False) else self._pool
        try:
            with (
                pool.connection(s.connect_timeout + s.deadline) as conn,
                _WATCHDOG.guard(conn, s.deadline),
            ):
                yield conn
        except (psycopg.Error, _PoolBusy, _PoolClosed, OSError) as exc:
            raise self._error(exc, doing) from None

    @contextlib.contextmanager
    def write(self, doing: str = "write") -> Iterator[Any]:
        """A transaction on a pooled connection (committed on success)."""
        with self._conn(doing) as conn, conn.transaction():
            yield conn

    def _retry(self, doing: str, once: Callable[[], T], *, retry: bool = True) -> T:
        """``once()``, again with backoff while its error is transient, for ``retry_for`` s."""
        give_up = time.monotonic() + (self.settings.retry_for if retry else 0.0)
        delay = 0.05
        while True:
            try:
                return once()
            except StoreError as exc:
                self.blind()
                if not getattr(exc, "transient", False) or time.monotonic() + delay > give_up:
                    raise
                log.debug("retrying after a transient store error: %s", exc)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    def read(self, sql: str, params: Sequence[Any] = (), doing: str = "read") -> list[Any]:
        def once() -> list[Any]:
            with self._conn(doing) as conn:
                return conn.execute(sql, params).fetchall()

        return self._retry(doing, once)

    def _migrate(self) -> None:
        def once() -> None:
            with self.write("migrate the schema") as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS assetcache_meta "
                    "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                row = conn.execute(
                    "SELECT value FROM assetcache_meta WHERE key = 'schema'"
                ).fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise self._schema_too_new(version)
                for number in range(version, SCHEMA_VERSION):
                    conn.execute(_MIGRATIONS[number])
                if version != SCHEMA_VERSION:
                    conn.execute(
                        "INSERT INTO assetcache_meta VALUES ('schema', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(SCHEMA_VERSION),),
                    )

        self._retry("migrate the schema", once)

    def _schema_too_new(self, version: int) -> SchemaTooNew:
        return SchemaTooNew(
            f"shared store {self.path} was written by a newer assetcache "
            f"(schema {version}, this version reads up to {SCHEMA_VERSION}); "
            "upgrade assetcache on this host",
            path=self.path,
        )

    def schema_version(self) -> int:
        rows = self.read("SELECT value FROM assetcache_meta WHERE key = 'schema'")
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        self._pool.close()
        self._background_pool.close()

    def use_background_connection(self) -> None:
        """This thread uses the connections kept for background work."""
        self._thread_role.bg = True

    def blind(self) -> None:
        """Forget what leases looked like: we could not watch them meanwhile."""
        with self._seen_lock:
            self._seen.clear()

    # -- leases: who holds what, and whether its heartbeat goes on -------------------
    def _held_by_other(
        self, key: Key, owner: str, lease: tuple[str, float, float | None], now: float
    ) -> bool:
        """Whether another live owner holds ``key``.

        A lease is over when it expired, when its owner is a process of this
        host that no longer runs, or when its heartbeat has not moved while we
        watched it for ``stale_after`` seconds (watched: a waiter that was
        itself cut off from the server starts watching again, so a fleet-wide
        outage does not look like every owner dying).
        """
        lease_owner, expires, beat = lease
        if lease_owner == owner or expires <= now or _pid_dead(lease_owner, self.host):
            return False
        if beat is None:
            return True  # a lease from an older version: its TTL decides
        mono = time.monotonic()
        with self._seen_lock:
            seen = self._seen.get(key)
            if seen is None or seen[0] != lease_owner or seen[1] != beat:
                self._seen[key] = (lease_owner, beat, mono)
                return True
            return mono - seen[2] < self.settings.stale_after

    def _forget_seen(self, keys: Iterable[Key]) -> None:
        with self._seen_lock:
            for key in keys:
                self._seen.pop(key, None)

    # -- the registry ------------------------------------------------------------
    def get_asset(self, key: Key) -> AssetRow | None:
        return self.get_assets([key]).get(key)

    @staticmethod
    def _assets_of(conn: Any, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        wanted = set(keys)
        out: dict[Key, AssetRow] = {}
        for ns, hashes in _by_namespace(wanted).items():
            for r in conn.execute(
                f"SELECT {_COLS} FROM assetcache_assets "
                "WHERE namespace = %s AND content_hash = ANY(%s)",
                (ns, hashes),
            ).fetchall():
                asset = AssetRow(*r)
                if asset.key in wanted:
                    out[asset.key] = asset
        return out

    @staticmethod
    def _leases_of(conn: Any, keys: Iterable[Key]) -> dict[Key, tuple[str, float, float | None]]:
        wanted = set(keys)
        out: dict[Key, tuple[str, float, float | None]] = {}
        for ns, hashes in _by_namespace(wanted).items():
            for _, digest, variant, lease_owner, expires, beat in conn.execute(
                "SELECT namespace, content_hash, variant, owner, expires_at, heartbeat_at "
                "FROM assetcache_leases WHERE namespace = %s AND content_hash = ANY(%s)",
                (ns, hashes),
            ).fetchall():
                if (ns, digest, variant) in wanted:
                    out[(ns, digest, variant)] = (lease_owner, expires, beat)
        return out

    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]:
        """The rows of many keys: one indexed query per namespace."""
        keys = list(keys)
        if not keys:
            return {}

        def once() -> dict[Key, AssetRow]:
            with self._conn("look up entries") as conn:
                return self._assets_of(conn, keys)

        return self._retry("look up entries", once)

    def find_uuid(self, image_uuid: str) -> list[AssetRow]:
        rows = self.read(
            f"SELECT {_COLS} FROM assetcache_assets WHERE image_uuid = %s",
            (image_uuid,),
            "look up a UUID",
        )
        return [AssetRow(*r) for r in rows]

    @staticmethod
    def _lock_keys(conn: Any, keys: Iterable[Key]) -> None:
        """Take the per-key advisory locks, in one global order (no deadlocks).

        Every writer of a key's asset or lease row takes its lock: under READ
        COMMITTED each statement sees its own snapshot, so without it an upload
        recorded between a claimer's two SELECTs would look like "no asset,
        no lease" and be uploaded again.
        """
        locks = sorted({_lock_id(k) for k in keys})
        if locks:
            # One round trip; the sorted subquery fixes the order the locks are taken in.
            conn.execute(
                "SELECT pg_advisory_xact_lock(x) FROM "
                "(SELECT x FROM unnest(%s::bigint[]) AS t(x) ORDER BY x) AS ordered",
                (locks,),
            )

    def claim(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        ttl: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        """Per key: the fresh row, ``"claimed"`` (ours now) or ``"held"``.

        Safe to retry: a claim whose answer was lost left leases in our name,
        and a lease in our name is claimed again.
        """

        def once() -> dict[Key, AssetRow | str]:
            out: dict[Key, AssetRow | str] = {}
            with self.write("claim uploads") as conn:
                self._lock_keys(conn, keys)
                assets = self._assets_of(conn, keys)
                leases = self._leases_of(conn, keys)
                claimed = []
                taken: list[tuple[Key, tuple[str, float, float | None]]] = []
                for key in keys:
                    row = assets.get(key)
                    # A row stamped beyond ``fresh_until`` is suspect (a clock ahead).
                    if row is not None and fresh_since < row.last_used_at <= fresh_until:
                        out[key] = row
                        continue
                    lease = leases.get(key)
                    if lease is not None and self._held_by_other(key, owner, lease, now):
                        out[key] = "held"
                        continue
                    if lease is not None and lease[0] != owner:
                        taken.append((key, lease))
                    claimed.append((*key, owner, now + ttl))
                    out[key] = "claimed"
                if claimed:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO assetcache_leases "
                            "(namespace, content_hash, variant, owner, expires_at, heartbeat_at) "
                            f"VALUES (%s, %s, %s, %s, %s, {_NOW}) "
                            "ON CONFLICT (namespace, content_hash, variant) DO UPDATE "
                            "SET owner = excluded.owner, expires_at = excluded.expires_at, "
                            "heartbeat_at = excluded.heartbeat_at",
                            claimed,
                        )
            self._forget_seen(k for k, v in out.items() if v != "held")
            for key, (was, expires, beat) in taken:
                log.info(
                    "took over the upload lease of %s from %s (expires %.3f, heartbeat %s)",
                    key[1][:12],
                    was,
                    expires,
                    beat,
                )
            self.takeovers += len(taken)
            return out

        return self._retry("claim uploads", once)

    def peek(
        self,
        keys: Sequence[Key],
        owner: str,
        now: float,
        fresh_since: float,
        fresh_until: float = float("inf"),
    ) -> dict[Key, AssetRow | str]:
        """Read-only :meth:`claim` (no locks): fresh row, ``"held"`` or ``"free"``."""

        def once() -> dict[Key, AssetRow | str]:
            out: dict[Key, AssetRow | str] = dict.fromkeys(keys, "free")
            with self._conn("look up leases") as conn:
                for key, asset in self._assets_of(conn, keys).items():
                    if fresh_since < asset.last_used_at <= fresh_until:
                        out[key] = asset
                leases = self._leases_of(conn, [k for k, v in out.items() if v == "free"])
            for key, lease in leases.items():
                if self._held_by_other(key, owner, lease, now):
                    out[key] = "held"
            return out

        return self._retry("look up leases", once)

    def record_uploads(
        self,
        records: Sequence[UploadRecord],
        owner: str,
        files: Sequence[FileRow] = (),
        *,
        owners: Sequence[str] | None = None,
        retry: bool = True,
    ) -> None:
        """Store uploads and drop their leases. Safe to retry (and to replay).

        ``owners`` (one per record) names whose lease each drops, for uploads
        replayed from an outbox. A row already holding a later upload is kept.
        """
        if not records:
            return
        lease_owners = list(owners) if owners is not None else [owner] * len(records)
        ordered = sorted(zip(records, lease_owners, strict=True), key=lambda p: p[0].key)

        def once() -> None:
            with self.write("record uploads") as conn, conn.cursor() as cur:
                self._lock_keys(conn, (r.key for r, _ in ordered))
                cur.executemany(
                    "INSERT INTO assetcache_assets (namespace, content_hash, variant, "
                    "image_uuid, size, format, uploaded_at, last_used_at, upload_count, hits, "
                    "bytes_sent, url) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, 0, %s, %s) "
                    "ON CONFLICT (namespace, content_hash, variant) DO UPDATE SET "
                    "image_uuid = excluded.image_uuid, size = excluded.size, "
                    "format = excluded.format, uploaded_at = excluded.uploaded_at, "
                    "last_used_at = greatest(assetcache_assets.last_used_at, "
                    "excluded.last_used_at), "
                    # A replay of an upload already recorded counts once.
                    "upload_count = assetcache_assets.upload_count + CASE WHEN "
                    "assetcache_assets.image_uuid = excluded.image_uuid THEN 0 ELSE 1 END, "
                    "bytes_sent = assetcache_assets.bytes_sent + CASE WHEN "
                    "assetcache_assets.image_uuid = excluded.image_uuid THEN 0 "
                    "ELSE excluded.bytes_sent END, "
                    "url = coalesce(excluded.url, assetcache_assets.url) "
                    "WHERE assetcache_assets.uploaded_at <= excluded.uploaded_at",
                    [
                        (
                            *r.key,
                            r.image_uuid,
                            r.size,
                            r.format,
                            r.now,
                            r.now,
                            r.bytes_sent,
                            r.url,
                        )
                        for r, _ in ordered
                    ],
                )
                cur.executemany(
                    "DELETE FROM assetcache_leases WHERE namespace = %s AND content_hash = %s "
                    "AND variant = %s AND owner = %s",
                    [(*r.key, o) for r, o in ordered],
                )

        self._retry("record uploads", once, retry=retry)

    def release(self, keys: Iterable[Key], owner: str, *, retry: bool = True) -> None:
        keys = sorted(set(keys))
        if not keys:
            return

        def once() -> None:
            with self.write("release upload leases") as conn, conn.cursor() as cur:
                self._lock_keys(conn, keys)
                cur.executemany(
                    "DELETE FROM assetcache_leases WHERE namespace = %s AND content_hash = %s "
                    "AND variant = %s AND owner = %s",
                    [(*k, owner) for k in keys],
                )

        self._retry("release upload leases", once, retry=retry)

    def beat(
        self,
        owner: str,
        held: Callable[[], tuple[Iterable[Key], float]],
        *,
        retry: bool = False,
    ) -> int:
        """Renew ``owner``'s leases on the keys it holds, drop its others; the shared
        schema version. ``held()`` answers ``(keys, expires_at)``.

        Dropping what we no longer hold is how a release that failed gets done.
        ``held()`` is asked only once the server's time is read, inside the
        transaction, and only leases whose heartbeat is older than that time are
        dropped: a lease claimed while this beat was on its way (after ``held()``
        looked) is never taken for one we let go of.
        """

        def once() -> int:
            with self.write("renew upload leases") as conn:
                (started,) = conn.execute(f"SELECT {_NOW}").fetchone()
                keys, expires = held()
                keys = sorted(set(keys))
                cols = [list(c) for c in zip(*keys, strict=True)] if keys else [[], [], []]
                if keys:
                    conn.execute(
                        f"UPDATE assetcache_leases AS l SET heartbeat_at = {_NOW}, "
                        "expires_at = greatest(l.expires_at, %s) "
                        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS h(ns, ch, v) "
                        "WHERE l.owner = %s AND l.namespace = h.ns "
                        "AND l.content_hash = h.ch AND l.variant = h.v",
                        (expires, *cols, owner),
                    )
                conn.execute(
                    "DELETE FROM assetcache_leases WHERE owner = %s "
                    "AND coalesce(heartbeat_at, 0) < %s "
                    "AND (namespace, content_hash, variant) NOT IN "
                    "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
                    (owner, started, *cols),
                )
                row = conn.execute(
                    "SELECT value FROM assetcache_meta WHERE key = 'schema'"
                ).fetchone()
            return int(row[0]) if row else 0

        version = self._retry("renew upload leases", once, retry=retry)
        if version > SCHEMA_VERSION:
            self.too_new = self._schema_too_new(version)
        return version

    def renew(
        self,
        keys: Iterable[Key],
        owner: str,
        expires_at: float | None = None,
        *,
        retry: bool = True,
    ) -> set[Key]:
        """Renew ``owner``'s leases on ``keys`` now (their heartbeat; their expiry
        moved to ``expires_at`` when given): the keys it still holds."""
        keys = sorted(set(keys))
        if not keys:
            return set()
        cols = [list(c) for c in zip(*keys, strict=True)]

        def once() -> set[Key]:
            with self._conn("renew upload leases") as conn:
                rows = conn.execute(
                    f"UPDATE assetcache_leases AS l SET heartbeat_at = {_NOW}, "
                    "expires_at = greatest(l.expires_at, "
                    "coalesce(%s::double precision, l.expires_at)) "
                    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS h(ns, ch, v) "
                    "WHERE l.owner = %s AND l.namespace = h.ns "
                    "AND l.content_hash = h.ch AND l.variant = h.v "
                    "RETURNING l.namespace, l.content_hash, l.variant",
                    (expires_at, *cols, owner),
                ).fetchall()
            return {(ns, ch, v) for ns, ch, v in rows}

        return self._retry("renew upload leases", once, retry=retry)

    def clean_leftovers(self, owner: str) -> int:
        """Drop leases of this host's processes that no longer run (at start)."""
        prefix = self.host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        owners = [
            o
            for (o,) in self.read(
                "SELECT DISTINCT owner FROM assetcache_leases WHERE owner LIKE %s",
                (prefix,),
                "look up leftover leases",
            )
            if o != owner and _pid_dead(o, self.host)
        ]
        if not owners:
            return 0

        def once() -> int:
            with self.write("drop leftover leases") as conn:
                return int(
                    conn.execute(
                        "DELETE FROM assetcache_leases WHERE owner = ANY(%s)", (owners,)
                    ).rowcount
                )

        return self._retry("drop leftover leases", once)

    def touch(self, key: Key, now: float) -> None:
        self.touch_many({key: now})

    def touch_many(self, uses: dict[Key, float], *, retry: bool = True) -> None:
        """Slide the window of many keys in one statement (keys in order: no deadlocks)."""
        items = sorted(uses.items())
        if not items:
            return
        cols = [list(c) for c in zip(*[(*k, t) for k, t in items], strict=True)]

        def once() -> None:
            with self._conn("record uses") as conn:
                conn.execute(
                    "UPDATE assetcache_assets AS a SET last_used_at = u.t FROM "
                    "unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS u(ns, ch, v, t) "
                    "WHERE a.namespace = u.ns AND a.content_hash = u.ch AND a.variant = u.v "
                    "AND a.last_used_at < u.t",
                    cols,
                )

        self._retry("record uses", once, retry=retry)

    def add_counters(
        self, namespace: str, counts: dict[str, int], token: str | None = None
    ) -> None:
        """Add to the usage counters, exactly once even when retried.

        Rows are updated in name order (two hosts closing at once cannot
        deadlock); the flush token makes a retry whose first answer was lost
        a no-op instead of a double count.
        """
        items = sorted((name, n) for name, n in counts.items() if n)
        if not items:
            return
        token = token or os.urandom(12).hex()

        def once() -> None:
            with self.write("update counters") as conn, conn.cursor() as cur:
                first = conn.execute(
                    f"INSERT INTO assetcache_counter_flushes VALUES (%s, {_NOW}) "
                    "ON CONFLICT (token) DO NOTHING RETURNING token",
                    (token,),
                ).fetchone()
                if first is None:
                    return  # this flush landed already
                cur.executemany(
                    "INSERT INTO assetcache_counters VALUES (%s, %s, %s) "
                    "ON CONFLICT (namespace, name) DO UPDATE "
                    "SET value = assetcache_counters.value + excluded.value",
                    [(namespace, name, n) for name, n in items],
                )
                if random.random() < 0.02:  # tokens are only needed while a retry may come
                    conn.execute(
                        f"DELETE FROM assetcache_counter_flushes WHERE flushed_at < {_NOW} - 86400"
                    )

        self._retry("update counters", once)

    def counters(self, namespace: str | None = None) -> dict[str, int]:
        if namespace is None:
            rows = self.read("SELECT name, SUM(value) FROM assetcache_counters GROUP BY name")
        else:
            rows = self.read(
                "SELECT name, value FROM assetcache_counters WHERE namespace = %s", (namespace,)
            )
        return {name: int(value) for name, value in rows}

    def health(self, now: float) -> dict[str, Any]:
        """What ``doctor`` reports of the server: version, schema, leases."""
        version = self.read("SHOW server_version")[0][0]
        leases = self.read(
            f"SELECT count(*), count(*) FILTER (WHERE expires_at < %s), "
            f"coalesce(max({_NOW} - heartbeat_at), 0) FROM assetcache_leases",
            (now,),
        )[0]
        settings = self.read(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('max_connections', 'statement_timeout', 'lock_timeout')"
        )
        return {
            "server_version": version,
            "schema": self.schema_version(),
            "schema_supported": SCHEMA_VERSION,
            "leases": int(leases[0]),
            "expired_leases": int(leases[1]),
            "oldest_heartbeat_seconds": round(float(leases[2]), 1),
            "server_settings": dict(settings),
        }

    # -- this dialect's part of the shared registry code (``_base.SQLRegistry``) --------
    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
            return int(cur.rowcount)


# -- doctor -----------------------------------------------------------------------------------


def inspect_shared(
    url: str, now: float, host: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The shared server as ``doctor`` sees it: facts, and problems (one line each).

    Makes one attempt with the configured deadlines; never migrates; every
    credential in the URL is redacted from what it returns.
    """
    settings, _ = FleetSettings.from_url(url)
    facts: dict[str, Any] = {
        "url": redact_url(url),
        "host_id": host_id(host),
        "reachable": False,
        "settings": settings.as_dict(),
    }
    problems: list[str] = []
    try:
        reg = PostgresRegistry(
            url, settings=dataclasses.replace(settings, retry_for=0.0), host=host, migrate=False
        )
    except (StoreError, ConfigurationError) as exc:
        problems.append(" ".join(str(exc).split()))
        return facts, problems
    try:
        facts["reachable"] = True
        try:
            facts["server_version"] = reg.read("SHOW server_version")[0][0]
            facts["max_connections"] = int(reg.read("SHOW max_connections")[0][0])
            facts.update(reg.health(now))
        except StoreError as exc:
            if "assetcache_" in str(exc) and "does not exist" in str(exc):
                facts["schema"] = 0
                problems.append(
                    f"shared store {reg.path} has no assetcache tables yet "
                    "(the first host to start creates them)"
                )
            else:
                problems.append(" ".join(str(exc).split()))
            return facts, problems
        if facts["schema"] > SCHEMA_VERSION:
            problems.append(
                f"shared store {reg.path} has schema {facts['schema']}, newer than this "
                f"assetcache reads ({SCHEMA_VERSION}): upgrade assetcache"
            )
        if facts["expired_leases"]:
            problems.append(
                f"{facts['expired_leases']} expired upload lease(s) on {reg.path} "
                "(`assetcache doctor --fix` or `assetcache prune` drops them)"
            )
    finally:
        reg.close()
    return facts, problems


def drop_expired_leases(url: str, now: float) -> int:
    """``doctor --fix`` on the server: drop leases past their TTL."""
    settings, _ = FleetSettings.from_url(url)
    reg = PostgresRegistry(
        url, settings=dataclasses.replace(settings, retry_for=0.0), migrate=False
    )
    try:
        return reg.drop_expired_leases(now)
    finally:
        reg.close()
