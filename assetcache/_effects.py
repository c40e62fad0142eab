"""One decision logic, two drivers.

The cache's logic (what to hash, when to hit, whom to upload, how to retry) is
written once, as generators that *yield* effects: "call this blocking
function", "POST this", "sleep", "wait for that upload", "run these plans side
by side". :func:`run_sync` performs them with threads; :func:`run_async` with
asyncio and ``httpx.AsyncClient``. Neither driver decides anything, so the sync
and async caches cannot drift apart.

>>> def plan():
...     x = yield Call(lambda: 20)
...     return x + 1
>>> run_sync(plan(), Driver())
21
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import AssetCacheError, RemoteError, ServerError

Plan = Generator[Any, Any, Any]


class Call:
    """Run a blocking function (file reads, SQLite). Async runs it in a thread
    unless ``inline`` (cheap calls are not worth a thread hop)."""

    __slots__ = ("fn", "args", "inline")

    def __init__(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.inline = inline


class Invoke:
    """Call the caller's own function (``use()``'s ``fn``) with ``arg``; the async
    driver awaits what it returns when that is awaitable."""

    __slots__ = ("fn", "arg")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg


@dataclass(slots=True)
class Map:
    """``[fn(x) for x in items]`` on up to ``workers`` threads (hashing)."""

    fn: Callable[[Any], Any]
    items: Sequence[Any]
    workers: int


@dataclass(slots=True)
class Http:
    """POST ``body`` (an iterable factory, so a retry can produce it again)."""

    url: str
    headers: dict[str, str] = field(repr=False)  # Authorization: never in a repr or a log
    body: Callable[[], Iterable[bytes]]
    content_length: int
    timeout: float


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Wait:
    """Wait for a :class:`concurrent.futures.Future` set by another thread or task."""

    future: concurrent.futures.Future[Any]


@dataclass(slots=True)
class Concurrent:
    """Run sub-plans side by side, at most ``limit`` at once; results in order.
    A sub-plan's exception is returned in its slot, not raised."""

    plans: Sequence[Plan]
    limit: int


class TransportError(ServerError):
    """The request did not get an HTTP answer (refused, dropped, timed out)."""


@dataclass
class Driver:
    """What the drivers need from the outside world; tests swap the sleep."""

    sync_client: Any = None
    async_client: Any = None
    sleep: Callable[[float], None] = time.sleep
    make_sync_client: Callable[[], Any] | None = None
    make_async_client: Callable[[], Any] | None = None
    _pool: concurrent.futures.ThreadPoolExecutor | None = None
    _pool_size: int = 0
    _client_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def client(self) -> Any:
        """The sync HTTP client, made on first use: once, though the first
        requests of a batch come from several threads at the same moment (each
        client loads the CA bundle, some 25 ms of CPU)."""
        client = self.sync_client
        if client is None:
            with self._client_lock:
                client = self.sync_client
                if client is None:
                    assert self.make_sync_client is not None
                    client = self.sync_client = self.make_sync_client()
        return client

    def pool(self, workers: int) -> concurrent.futures.ThreadPoolExecutor:
        """A long-lived pool for ``Map``: its threads keep their SQLite
        connections, where a pool per call would open (and keep) new ones."""
        if self._pool is None or self._pool_size < workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = concurrent.futures.ThreadPoolExecutor(workers, "assetcache-hash")
            self._pool_size = workers
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def run_sync(plan: Plan, driver: Driver) -> Any:
    """Drive ``plan`` to completion in this thread."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = _perform_sync(effect, driver)
        except Exception as exc:  # handed back to the plan, which decides
            error = exc


def _perform_sync(effect: Any, driver: Driver) -> Any:
    if isinstance(effect, Call):
        return effect.fn(*effect.args)
    if isinstance(effect, Invoke):
        return effect.fn(effect.arg)
    if isinstance(effect, Http):
        return _http_sync(effect, driver)
    if isinstance(effect, Sleep):
        if effect.seconds > 0:
            driver.sleep(effect.seconds)
        return None
    if isinstance(effect, Wait):
        return effect.future.result()
    if isinstance(effect, Map):
        if effect.workers <= 1 or len(effect.items) <= 1:
            return [effect.fn(x) for x in effect.items]
        return list(driver.pool(effect.workers).map(effect.fn, effect.items))
    if isinstance(effect, Concurrent):
        if len(effect.plans) == 1:
            return [_capture(functools.partial(run_sync, effect.plans[0], driver))]
        with concurrent.futures.ThreadPoolExecutor(max(1, effect.limit)) as pool:
            futures = [
                pool.submit(_capture, functools.partial(run_sync, p, driver)) for p in effect.plans
            ]
            return [f.result() for f in futures]
    raise TypeError(f"unknown effect {effect!r}")


def _capture(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return exc


async def run_async(plan: Plan, driver: Driver) -> Any:
    """Drive ``plan`` to completion on the running event loop."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = await _perform_async(effect, driver)
        except Exception as exc:
            error = exc


async def _perform_async(effect: Any, driver: Driver) -> Any:
    # Imported here, not at the top: asyncio is a tenth of the CLI's start-up
    # time, and only the async twin needs it (it is loaded by then anyway).
    import asyncio

    if isinstance(effect, Call):
        if effect.inline:
            return effect.fn(*effect.args)
        return await asyncio.to_thread(effect.fn, *effect.args)
    if isinstance(effect, Invoke):
        value = effect.fn(effect.arg)
        return await value if inspect.isawaitable(value) else value
    if isinstance(effect, Http):
        return await _http_async(effect, driver)
    if isinstance(effect, Sleep):
        if effect.seconds > 0:
            await asyncio.sleep(effect.seconds)
        return None
    if isinstance(effect, Wait):
        return await asyncio.wrap_future(effect.future)
    if isinstance(effect, Map):
        if effect.workers <= 1 or len(effect.items) <= 1:
            return await asyncio.to_thread(lambda: [effect.fn(x) for x in effect.items])
        loop = asyncio.get_running_loop()
        pool = driver.pool(effect.workers)
        return await asyncio.gather(
            *(loop.run_in_executor(pool, effect.fn, x) for x in effect.items)
        )
    if isinstance(effect, Concurrent):
        gate = asyncio.Semaphore(max(1, effect.limit))

        async def one(p: Plan) -> Any:
            async with gate:
                try:
                    return await run_async(p, driver)
                except Exception as exc:
                    return exc

        return await asyncio.gather(*(one(p) for p in effect.plans))
    raise TypeError(f"unknown effect {effect!r}")


# -- HTTP (httpx is imported here, lazily: start-up stays free of it) ---------------


def _transport_error(exc: Exception, url: str) -> RemoteError:
    import httpx

    untrusted = _certificate_problem(exc)
    if untrusted is not None:
        # Not transient: retrying cannot make an untrusted certificate trusted.
        return RemoteError(
            f"no answer from {url}: TLS certificate verification failed ({untrusted})", code="tls"
        )
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        reason = "connection refused or unreachable"
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        reason = "connection dropped"
    else:
        reason = type(exc).__name__
    return TransportError(f"no answer from {url}: {reason}", code="transport")


def _certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what ``exc`` is about."""
    import ssl

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate verify failed"
        cur = cur.__cause__ or cur.__context__
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


def _http_sync(effect: Http, driver: Driver) -> Response:
    import httpx

    client = driver.client()
    headers = dict(effect.headers)
    headers["Content-Length"] = str(effect.content_length)
    try:
        resp = client.post(
            effect.url, content=_iter(effect.body()), headers=headers, timeout=effect.timeout
        )
    except AssetCacheError:
        raise
    except httpx.HTTPError as exc:
        raise _transport_error(exc, effect.url) from None
    return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)


async def _http_async(effect: Http, driver: Driver) -> Response:
    import httpx

    client = driver.async_client
    if client is None:
        assert driver.make_async_client is not None
        client = driver.async_client = driver.make_async_client()
    headers = dict(effect.headers)
    headers["Content-Length"] = str(effect.content_length)

    async def body() -> Any:
        for chunk in _iter(effect.body()):
            yield chunk

    try:
        resp = await client.post(
            effect.url, content=body(), headers=headers, timeout=effect.timeout
        )
    except AssetCacheError:
        raise
    except httpx.HTTPError as exc:
        raise _transport_error(exc, effect.url) from None
    return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)


#: Body pieces are joined up to this size before they reach the connection:
#: each write costs the HTTP stack a fixed overhead, and a batch of small
#: images comes as five pieces per image.
WRITE_SIZE = 1 << 20


def _iter(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` regrouped into writes of about :data:`WRITE_SIZE` bytes (memory
    stays bounded by that size, whatever the body's length)."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= WRITE_SIZE and not parts:
            yield chunk
            continue
        parts.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)
