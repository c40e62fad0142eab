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
import contextlib
import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _transport
from ._errors import AssetCacheError
from ._transport import Response  # noqa: F401  (what an Http effect answers)

#: A decision written once: it yields :data:`Effect` values, is sent what each
#: one gave (or thrown what it raised), and returns its result.
Plan = Generator["Effect", Any, Any]
T = TypeVar("T")


class Call:
    """Run a blocking function (file reads, SQLite). Async runs it in a thread
    unless ``inline`` (cheap calls are not worth a thread hop)."""

    __slots__ = ("fn", "args", "inline")

    def __init__(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.inline = inline


def plan_call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Generator[Effect, Any, T]:
    """A plan of one blocking call: the async driver runs it on a worker thread.

    >>> run_sync(plan_call(divmod, 7, 2), Driver())
    (3, 1)
    """
    result: T = yield Call(functools.partial(fn, *args, **kwargs))
    return result


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


class Slots:
    """A number of slots shared by plans run side by side (requests in flight):
    ``yield Acquire(slots)`` waits for a free one, ``yield Release(slots)`` frees it.
    Each driver makes its own primitive (a thread or an asyncio semaphore)."""

    __slots__ = ("count", "_thread_sem", "_async_sem", "_lock")

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._thread_sem: threading.Semaphore | None = None
        self._async_sem: Any = None
        self._lock = threading.Lock()

    def thread_semaphore(self) -> threading.Semaphore:
        with self._lock:
            if self._thread_sem is None:
                self._thread_sem = threading.Semaphore(self.count)
            return self._thread_sem

    def async_semaphore(self) -> Any:
        import asyncio

        if self._async_sem is None:
            self._async_sem = asyncio.Semaphore(self.count)
        return self._async_sem


@dataclass(slots=True)
class Acquire:
    """Wait for a free slot of ``slots``."""

    slots: Slots


@dataclass(slots=True)
class Release:
    """Free a slot of ``slots`` taken with :class:`Acquire`."""

    slots: Slots


def plan_in_slot(slots: Slots, plan: Plan) -> Plan:
    """Run ``plan`` holding one of ``slots``, freed however the plan ends."""
    yield Acquire(slots)
    try:
        result = yield from plan
    except Exception:
        yield Release(slots)
        raise
    yield Release(slots)
    return result


#: The closed set of effects a plan may yield; each driver performs every one.
Effect = Call | Invoke | Map | Http | Sleep | Wait | Concurrent | Acquire | Release


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
    _closed: bool = False

    def blocking_client(self) -> Any:
        """The ``httpx.Client``, made on first use: once, though the first
        requests of a batch come from several threads at the same moment (each
        client loads the CA bundle, some 25 ms of CPU)."""
        client = self.sync_client
        if client is None:
            with self._client_lock:
                client = self.sync_client
                if client is None:
                    if self._closed:
                        raise AssetCacheError("the cache is closed: it sends no more requests")
                    assert self.make_sync_client is not None
                    client = self.sync_client = self.make_sync_client()
        return client

    def warm_blocking_client(self) -> None:
        """Start making the ``httpx.Client`` on a thread of its own, if it is not made
        yet: plans run side by side hash before their first request, and the
        client's CA bundle loads (without the GIL) meanwhile instead of after."""
        if self.sync_client is not None or self.make_sync_client is None:
            return
        threading.Thread(
            target=_capture, args=(self.blocking_client,), name="assetcache-client", daemon=True
        ).start()

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
        """Close the ``httpx.Client`` (once one being made meanwhile is made) and
        the hashing threads; no client is made after this."""
        with self._client_lock:
            self._closed = True
            client, self.sync_client = self.sync_client, None
        if client is not None:
            client.close()
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
    if isinstance(effect, Acquire):
        effect.slots.thread_semaphore().acquire()
        return None
    if isinstance(effect, Release):
        effect.slots.thread_semaphore().release()
        return None
    if isinstance(effect, Map):
        items, fn = effect.items, effect.fn
        if effect.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        # A few items per hand-off (two pieces per worker), not one: each costs a
        # future, a lock and a thread switch, more than hashing a small file.
        step = -(-len(items) // (2 * effect.workers))
        pieces = [items[i : i + step] for i in range(0, len(items), step)]
        done = driver.pool(effect.workers).map(lambda piece: [fn(x) for x in piece], pieces)
        return [y for piece in done for y in piece]
    if isinstance(effect, Concurrent):
        if len(effect.plans) == 1:
            return [_capture(functools.partial(run_sync, effect.plans[0], driver))]
        main = threading.current_thread() is threading.main_thread()
        driver.warm_blocking_client()  # the side-by-side plans of a cache all send requests
        pool = concurrent.futures.ThreadPoolExecutor(max(1, effect.limit))
        try:
            with _signals_held(main):  # every started worker is known to the pool
                futures = [
                    pool.submit(_capture, functools.partial(run_sync, p, driver))
                    for p in effect.plans
                ]
            return [f.result() for f in futures]
        finally:
            # Normally all done. On Ctrl-C/SIGTERM: start nothing new, and let the
            # requests in flight finish (and record their uploads).
            pool.shutdown(wait=True, cancel_futures=True)
    raise TypeError(f"unknown effect {effect!r}")


@contextlib.contextmanager
def _signals_held(main: bool) -> Iterator[None]:
    """Defer SIGINT/SIGTERM while workers are started (main thread only): an
    interrupt between a worker's start and the pool knowing it would leave a
    request running unseen. A signal that came meanwhile is raised on leaving."""
    import signal

    if not main:
        yield
        return
    came: list[int] = []
    saved: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            saved[signum] = signal.signal(signum, lambda n, frame: came.append(n))
    try:
        yield
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous)
        if came:
            handler = saved.get(came[0])
            if callable(handler):
                handler(came[0], None)  # raises (KeyboardInterrupt, the CLI's Terminated)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), came[0])


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
    if isinstance(effect, Acquire):
        await effect.slots.async_semaphore().acquire()
        return None
    if isinstance(effect, Release):
        effect.slots.async_semaphore().release()
        return None
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
