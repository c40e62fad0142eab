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
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _transport
from ._transport import Response  # noqa: F401  (what an Http effect answers)

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

    def blocking_client(self) -> Any:
        """The ``httpx.Client`` (made on first use)."""
        if self.sync_client is None:
            assert self.make_sync_client is not None
            self.sync_client = self.make_sync_client()
        return self.sync_client

    def asyncio_client(self) -> Any:
        """The ``httpx.AsyncClient`` (made on first use)."""
        if self.async_client is None:
            assert self.make_async_client is not None
            self.async_client = self.make_async_client()
        return self.async_client

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
        return _transport.post_sync(effect, driver.blocking_client())
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
        return await _transport.post_async(effect, driver.asyncio_client())
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
