"""What the proxy does to a batch of Runware tasks, whatever carried it.

For one client key (its cache namespace):

- an ``imageUpload`` or ``mediaStorage`` upload whose image is inline (a data
  URI or base64) is answered from the cache, uploading once when the cache
  has no evidence the server still holds those bytes;
- every other task goes upstream untouched, except that mapped image
  parameters holding inline bytes are swapped for cached UUIDs first.

Anything the cache cannot take (a URL, a UUID, bytes that are no image, a
cache failure) goes upstream exactly as the client sent it, so the client sees
the server's own answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _taskmap
from .._errors import AssetCacheError
from .._protocol import is_uuid
from .._sources import Source

Json = dict[str, Any]

#: Caches kept open at once, one per client key and upload task kind.
POOL_SIZE = 32


@dataclass
class Savings:
    """What the proxy spared the upstream since it started."""

    uploads_answered: int = 0
    uploads_sent: int = 0
    bytes_not_sent: int = 0
    inline_swapped: int = 0
    healed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def api_key_of(authorization: str, tasks: list[Any]) -> str | None:
    """The client's key: a Bearer header, else an ``authentication`` task."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for task in tasks:
        if isinstance(task, dict) and task.get("taskType") == "authentication":
            key = task.get("apiKey")
            if isinstance(key, str) and key:
                return key
    return None


def upload_kind(task: Any) -> tuple[str, str] | None:
    """``(upload task type, field)`` for an upload task the cache can answer."""
    if not isinstance(task, dict) or not isinstance(task.get("taskUUID"), str):
        return None
    if task.get("taskType") == "imageUpload" and isinstance(task.get("image"), str):
        return "imageUpload", "image"
    if (
        task.get("taskType") == "mediaStorage"
        and task.get("operation") == "upload"
        and isinstance(task.get("media"), str)
    ):
        return "mediaStorage", "media"
    return None


def inline_source(value: str) -> Source | None:
    """A data URI or bare base64 as a Source; None for URLs, UUIDs and the rest."""
    text = value.strip()
    try:
        if text[:5].lower() == "data:":
            return Source.from_data_uri(text)
        if "://" in text[:16] or len(text) < 64:
            return None
        return Source.from_base64(text)
    except AssetCacheError:
        return None


def _worth_binding(value: Any) -> bool:
    """Whether a mapped value may become (or be) a cached UUID: inline bytes or a UUID."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return (
        text[:5].lower() == "data:" or is_uuid(text) or (len(text) >= 64 and "://" not in text[:16])
    )


def upload_answer(task: Json, kind: str, uuid: str, url: str | None) -> Json:
    """The result an upstream upload answer would carry, under the client's taskUUID."""
    if kind == "mediaStorage":
        out: Json = {
            "taskType": "mediaStorage",
            "taskUUID": task["taskUUID"],
            "operation": "upload",
            "mediaUUID": uuid,
        }
        if url:
            out["mediaURL"] = url
        return out
    out = {"taskType": "imageUpload", "taskUUID": task["taskUUID"], "imageUUID": uuid}
    if url:
        out["imageURL"] = url
    return out


@dataclass
class CachePool:
    """One open ``AsyncAssetCache`` per (client key, upload task kind), least recently used out.

    The keys live only in this process's memory, as the cache's own
    ``api_key``; the database sees their one-way fingerprint.
    """

    factory: Callable[[str, str], Any]
    size: int = POOL_SIZE
    _open: collections.OrderedDict[tuple[str, str], Any] = field(
        default_factory=collections.OrderedDict
    )
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, key: str, kind: str) -> Any:
        async with self._lock:
            cache = self._open.pop((key, kind), None)
            if cache is None:
                cache = self.factory(key, kind)
            self._open[(key, kind)] = cache
            evicted = []
            while len(self._open) > self.size:
                evicted.append(self._open.popitem(last=False)[1])
        for old in evicted:
            await old.aclose()
        return cache

    async def flush(self) -> None:
        """Write every open cache's usage counters (a proxy runs for long)."""
        for cache in list(self._open.values()):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cache._engine.flush_counters)

    async def close(self) -> None:
        async with self._lock:
            caches = list(self._open.values())
            self._open.clear()
        for cache in caches:
            await cache.aclose()


async def answer_uploads(
    pool: CachePool, key: str, tasks: list[Any], savings: Savings
) -> tuple[dict[int, Json], list[int]]:
    """Answer the batch's inline uploads from the cache.

    Returns ``({index: result}, indexes that still go upstream)``. The uploads
    run side by side, so a batch of new images is one cache call each, batched
    and deduplicated by the cache.
    """
    answered: dict[int, Json] = {}
    jobs: list[tuple[int, str, Source]] = []
    rest: list[int] = []
    for i, task in enumerate(tasks):
        found = upload_kind(task)
        src = inline_source(task[found[1]]) if found else None
        if found is None or src is None:
            rest.append(i)
        else:
            jobs.append((i, found[0], src))
    if not jobs:
        return answered, rest

    async def one(kind: str, src: Source) -> Any:
        cache = await pool.get(key, kind)
        try:
            return await cache.resolve(src)
        except AssetCacheError:
            return None  # a bad image, a refused key, an unreachable server

    results = await asyncio.gather(*(one(kind, src) for _, kind, src in jobs))
    for (i, upload_type, _), res in zip(jobs, results, strict=True):
        if res is None or res.uuid is None:
            rest.append(i)  # the server gives its own answer, as it would without the proxy
            continue
        answered[i] = upload_answer(tasks[i], upload_type, res.uuid, res.url)
        if res.outcome == "hit":
            savings.uploads_answered += 1
            savings.bytes_not_sent += res.size or 0
            cache = await pool.get(key, upload_type)
            count(cache, uploads_answered=1, bytes_not_sent=res.size or 0)
        else:
            savings.uploads_sent += 1
    rest.sort()
    return answered, rest


def count(cache: Any, **counts: int) -> None:
    """Add to the cache's usage counters (``stats`` shows them as the proxy's)."""
    cache._engine.count(**{f"proxy_{name}": n for name, n in counts.items()})


class Renames:
    """Healed tasks went up again under fresh taskUUIDs; the client still polls
    (``getResponse``) and matches answers by its own. Bounded: the oldest go."""

    def __init__(self, size: int = 10_000) -> None:
        self._up: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._down: dict[str, str] = {}
        self._size = size

    def add(self, client_uuid: str, upstream_uuid: str) -> None:
        old = self._up.pop(client_uuid, None)
        if old is not None:
            self._down.pop(old, None)
        self._up[client_uuid] = upstream_uuid
        self._down[upstream_uuid] = client_uuid
        while len(self._up) > self._size:
            _, gone = self._up.popitem(last=False)
            self._down.pop(gone, None)

    def outgoing(self, tasks: list[Any]) -> list[Any]:
        """``tasks`` with each ``getResponse`` for a healed task asking for its new taskUUID."""
        if not self._up:
            return tasks
        out = []
        for task in tasks:
            if isinstance(task, dict) and task.get("taskType") == "getResponse":
                upstream = self._up.get(str(task.get("taskUUID")))
                if upstream is not None:
                    task = {**task, "taskUUID": upstream}
            out.append(task)
        return out

    def incoming(self, items: list[Json]) -> bool:
        """Put the client's taskUUID back on answers for healed tasks; whether any changed."""
        changed = False
        for item in items:
            client = self._down.get(str(item.get("taskUUID")))
            if client is not None:
                item["taskUUID"] = client
                changed = True
        return changed


# -- tasks that carry images: swapped, healed, evidenced -----------------------------

#: Rounds of healing one task may take: the server may name one rejected
#: input per answer, and a task takes at most 14 reference images plus a few more.
MAX_HEAL_ROUNDS = 16


@dataclass
class Flight:
    """A task whose images the cache bound: what the client sent, what went upstream."""

    original: Json
    prepared: Any  # PreparedTask
    rounds: int = 0

    @property
    def client_uuid(self) -> str:
        return str(self.original["taskUUID"])

    @property
    def sent(self) -> Json:
        return dict(self.prepared.task)


async def prepare_flight(pool: CachePool, key: str, task: Any, savings: Savings) -> Flight | None:
    """The task with inline images swapped for cached UUIDs, or None to send it as it is.

    Only data URIs and base64 are taken (never a path: the proxy must not
    upload its own files); a value the cache cannot use leaves the whole task
    to the server, which answers it as it would without the proxy.
    """
    if not isinstance(task, dict) or not isinstance(task.get("taskUUID"), str):
        return None
    if upload_kind(task) is not None or task.get("taskType") in ("authentication", "ping"):
        return None
    if not any(_worth_binding(value) for _, value in _taskmap.find(task)):
        return None  # nothing inline and no UUID: pass it on without a cache call
    cache = await pool.get(key, "imageUpload")
    try:
        prepared = await cache.prepare(task, local_files=False)
    except AssetCacheError:
        return None
    if not prepared.bindings:
        return None
    swapped = sum(1 for b in prepared.bindings if b.target is not b.uuid)
    savings.inline_swapped += swapped
    if swapped:
        count(cache, inline_swapped=swapped)
    return Flight(task, prepared)


async def heal_flight(pool: CachePool, key: str, flight: Flight, error: Json) -> Json | None:
    """The task to send again under a fresh taskUUID when ``error`` says the
    server lost one of its bound images; None to pass the error on."""
    if flight.rounds >= min(MAX_HEAL_ROUNDS, len(flight.prepared.bindings)):
        return None
    cache = await pool.get(key, "imageUpload")
    invalidated = await cache.settle(flight.prepared, ok=False, error={"errors": [error]})
    if not invalidated:
        return None
    flight.rounds += 1
    count(cache, healed=1)
    fresh = {**flight.original, "taskUUID": str(uuid_mod.uuid4())}
    try:
        flight.prepared = await cache.prepare(fresh, local_files=False)
    except AssetCacheError:
        return None
    return flight.sent


async def settle_flight(pool: CachePool, key: str, flight: Flight) -> None:
    """A task that succeeded: evidence that every bound UUID was used now."""
    cache = await pool.get(key, "imageUpload")
    # Evidence is best effort: the answer reaches the client either way.
    with contextlib.suppress(AssetCacheError):
        await cache.settle(flight.prepared, ok=True)
