"""Lifecycle operations: record outside uses, invalidate, heal (``use``).

Plain functions of an :class:`~._engine.Engine`. The cache only sees the
uses it serves, and Runware offers no way to ask whether an upload still
exists, so the server's answer to a real task is the final word::

    with AssetCache() as cache:
        result = cache.use("cat.png", lambda uuid: run_inference(seedImage=uuid))
        cache.touch(uuid)              # a task ran elsewhere with a cached UUID
        cache.invalidate("cat.png")    # forget what the cache believes; next use uploads

``use()`` calls ``fn(uuid)``; when the answer says Runware does not know the
UUID (``_protocol.rejects_uuid`` over the one rule the task path reads too,
``_protocol.unknown_media``: ``invalid<Parameter>`` on the parameter that
carried it, ``mediaNotFound``/``*Expired``, both SDKs' errors), the entry is
invalidated, the image uploaded again (exactly once) and ``fn`` called once
more, up to ``retries`` times, after which
:class:`~assetcache.RetryBudgetExhausted` says so; a caller's ``is_unknown``
predicate covers anything else.

The decision logic of ``use()`` is written once, as a plan
(:func:`plan_use`); the caller's function is one more effect (``Invoke``),
so the sync and async drivers of ``_effects`` run it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _policy
from ._effects import Call, Invoke, Plan
from ._engine import Engine
from ._errors import (
    AssetCacheError,
    ConfigurationError,
    RetryBudgetExhausted,
    SourceError,
    SourceNotFound,
)
from ._ingest import Prepared, label_of
from ._models import Entry
from ._protocol import UnknownPredicate, is_uuid, rejects_uuid
from ._resolve import plan_resolve_many
from ._sources import Source, SourceLike
from ._storage._base import AssetRow, Key
from ._tasks import plan_server_time

log = logging.getLogger("assetcache")


# -- touch / invalidate -------------------------------------------------------------------


def touch(
    engine: Engine,
    target: SourceLike,
    at: float | None = None,
    learn_time: Callable[[], object] | None = None,
) -> Entry | None:
    """Record a use made outside the cache, sliding the entry's window (see
    ``AssetCache.touch``); an entry Runware had already deleted is not revived.

    Evidence is stamped in the server's time: ``learn_time()`` (one ``ping``)
    runs first when this run has no recent server time and a key is configured."""
    rows = rows_for(engine, target)
    if rows and learn_time is not None and engine.account and not engine.server_time_recent():
        try:
            learn_time()
        except AssetCacheError as exc:
            log.info("could not learn the server's time: %s", exc)
    engine.record_evidence([row.key for row in rows], at)
    return entry_of(engine, rows, engine.judge_now())


def invalidate(engine: Engine, target: SourceLike) -> Entry | None:
    """Mark the entries of an imageUUID or a source as deleted on the server."""
    if uuid_target(target):
        assert isinstance(target, str)
        rows = uuid_rows(engine, target)
        for row in rows:
            expire(engine, row.key, row.image_uuid)
    else:
        rows = rows_for(engine, target)
        for row in rows:
            expire(engine, row.key, None)
    return entry_of(engine, rows, engine.judge_now())


def entry_of(engine: Engine, rows: list[AssetRow], now: float) -> Entry | None:
    if not rows:
        return None
    row = engine.registry.get_asset(rows[0].key) or rows[0]
    paths = engine.store.paths_of({row.content_hash}).get(row.content_hash, ())
    return engine.entry(row, paths, now, engine.served_times([row.key]).get(row.key))


def rows_for(engine: Engine, target: SourceLike) -> list[AssetRow]:
    """The registry rows an imageUUID or a source stands for (no upload, no write)."""
    if uuid_target(target):
        assert isinstance(target, str)
        return uuid_rows(engine, target)
    prepared = engine.prepare(target)
    if isinstance(prepared, SourceNotFound):
        return gone_path_rows(engine, target, prepared)
    if isinstance(prepared, AssetCacheError):
        raise prepared
    row = engine.registry.get_asset(prepared.key)
    return [row] if row is not None else []


def gone_path_rows(engine: Engine, target: Any, missing: SourceNotFound) -> list[AssetRow]:
    """A path that is gone: the entry of the content it held when last hashed."""
    if not isinstance(target, (str, os.PathLike)):
        raise missing
    known = engine.store.get_file(os.path.abspath(os.fspath(target)))
    if known is None:
        raise missing
    variant = ""
    if engine.transform is not None and known.format is not None:
        variant = engine.transform.variant_for(known.format, known.width, known.height) or ""
    for v in dict.fromkeys((variant, "", engine.fit_variant)):
        row = engine.registry.get_asset((engine.namespace, known.content_hash, v))
        if row is not None:
            return [row]
    return []


def expire(engine: Engine, key: Key, image_uuid: str | None) -> int:
    """Mark an entry as deleted on the server (kept, so the next upload reads
    "reuploaded"); with ``image_uuid``, only while it still holds that UUID."""
    policy = engine.policy
    # Well before any judge's "now" (a clock ahead included): expired for everyone.
    stamp = engine.judge_now() - policy.retention - policy.clock_skew
    return engine.registry.expire_asset(key, stamp, image_uuid)


def uuid_rows(engine: Engine, image_uuid: str) -> list[AssetRow]:
    """Rows holding ``image_uuid``: the registry's and, in a fleet, this host's
    local copy (which may still hold a UUID another host has replaced)."""
    registry = engine.registry
    rows = registry.find_uuid(image_uuid.lower())
    seen = {x.key for x in rows}
    rows += [r for r in registry.local_rows(image_uuid.lower()) if r.key not in seen]
    # Only this account's entries: another key must not touch or expire ours.
    return [r for r in rows if r.namespace == engine.namespace]


def expire_uuid(engine: Engine, image_uuid: str) -> int:
    return sum(expire(engine, row.key, row.image_uuid) for row in uuid_rows(engine, image_uuid))


# -- use ----------------------------------------------------------------------------------


def plan_use(
    engine: Engine,
    target: SourceLike,
    fn: Callable[[str], Any],
    retries: int,
    is_unknown: UnknownPredicate | None,
    parameter: str | Iterable[str] | None,
) -> Plan:
    """``use()``'s decisions, as a plan: the caller's ``fn`` runs as an ``Invoke`` effect."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"use(): retries must be an integer >= 0, not {retries!r}")
    names = [parameter] if isinstance(parameter, str) else list(parameter or ())
    label = target if uuid_target(target) else label_of(target)
    assert isinstance(label, str)
    if _one_shot(target):
        target = yield Call(engine.ingest.prepare_or_raise, target)
    uuid: str = yield from plan_uuid(engine, target, str(label))
    rejected: list[str] = []
    last: object = None
    for attempt in range(retries + 1):
        try:
            value = yield Invoke(fn, uuid)
        except Exception as exc:
            if not _rejected(exc, uuid, is_unknown, names):
                raise
            last = exc
        else:
            if not _rejected(value, uuid, is_unknown, names):
                # The task succeeded with this UUID: evidence that Runware used it,
                # stamped in the server's time (asked for first if this run has none).
                if not engine.server_time_recent():
                    yield from plan_server_time(engine)
                yield Call(engine.record_evidence, [uuid])
                return value
            last = value
        rejected.append(uuid)
        # The server's answer is the final word: learn it whatever happens next.
        yield Call(expire_uuid, engine, uuid)
        if attempt == retries:
            break
        log.info("%s: Runware no longer knows %s; uploading it again", label, uuid)
        engine.count(heals=1)
        uuid = yield from plan_uuid(engine, target, str(label))
    raise _exhausted(engine, str(label), rejected, retries, last)


def _rejected(
    obj: object, uuid: str, is_unknown: UnknownPredicate | None, names: Sequence[str]
) -> bool:
    if rejects_uuid(obj, uuid, names):
        return True
    return bool(is_unknown(obj)) if is_unknown is not None else False


def _exhausted(
    engine: Engine, label: str, rejected: list[str], retries: int, last: object
) -> RetryBudgetExhausted:
    detail = engine.redact(_describe(last)).rstrip(".")
    if retries == 0:
        text = (
            f"{label}: Runware does not know imageUUID {rejected[-1]} (expired or "
            f"deleted) and retries=0; the entry is invalidated, so the next use "
            f"uploads it again. Answer: {detail}"
        )
    else:
        text = (
            f"{label}: Runware rejected the image {len(rejected)} times, even after "
            f"{retries} fresh upload(s) ({', '.join(rejected)}); giving up. Last answer: "
            f"{detail}. If that parameter does not carry this image, pass parameter= "
            f"to use()."
        )
    err = RetryBudgetExhausted(text, source=label, uuids=tuple(rejected), attempts=len(rejected))
    if isinstance(last, BaseException):
        err.__cause__ = last
        err.__suppress_context__ = True
    return err


def plan_uuid(engine: Engine, target: SourceLike | Prepared, label: str) -> Plan:
    """The UUID to hand to ``fn``: resolved (uploading if needed) from the
    source, or from the entry of an imageUUID or of a path that is gone."""
    if uuid_target(target):
        assert isinstance(target, str)
        rows = yield Call(uuid_rows, engine, target)
        return (yield from plan_from_rows(engine, rows, label))
    sources: list[Any] = [target]  # a source, or one prepared already (file objects)
    (res,) = yield from plan_resolve_many(engine, sources, 1)
    if res.error is None:
        return res.uuid
    if isinstance(res.error, SourceNotFound) and isinstance(target, (str, os.PathLike)):
        rows = yield Call(gone_path_rows, engine, target, res.error)
        return (yield from plan_from_rows(engine, rows, label, res.error))
    raise res.error


def plan_from_rows(
    engine: Engine, rows: list[AssetRow], label: str, missing: AssetCacheError | None = None
) -> Plan:
    if not rows:
        raise missing or SourceError(label, "no cache entry holds this imageUUID")
    row = rows[0]
    now = engine.judge_now()
    if engine.in_doubt(row.last_used_at, now):
        yield from plan_server_time(engine)
        now = engine.judge_now()
    if _policy.is_fresh(engine.policy, row.last_used_at, now) and not engine.in_doubt(
        row.last_used_at, now
    ):
        if engine.served_is_used and _policy.needs_touch(engine.policy, row.last_used_at, now):
            yield Call(engine.note_use, row.key, engine.stamp_now())
        engine.note_served(row.key, now)
        engine.count(hits=1, bytes_saved=row.size)
        return row.image_uuid
    # Not served any more: upload again from wherever the bytes still are.
    paths = yield Call(engine.store.paths_of, {row.content_hash})
    entry = engine.entry(row, paths.get(row.content_hash, ()), now)
    prepared, _, reason = yield Call(engine.locate, entry)
    if prepared is None:
        raise SourceError(label, f"cannot be uploaded again: {reason}")
    (res,) = yield from plan_resolve_many(engine, [prepared], 1)
    if res.error is not None:
        raise res.error
    return res.uuid


def _describe(obj: Any) -> str:
    """One line on what ``fn`` answered, for the give-up message."""
    from ._httpx import is_response, is_status_error

    if is_status_error(obj):
        obj = obj.response
    if isinstance(obj, BaseException):
        text = " ".join(str(obj).split()) or type(obj).__name__
        return text if isinstance(obj, AssetCacheError) else f"{type(obj).__name__}: {text}"
    if is_response(obj):
        try:
            err = json.loads(obj.content)["errors"][0]
            return (
                f"HTTP {obj.status_code} {err.get('code')} on {err.get('parameter')}: "
                f"{err.get('message')}"
            )
        except Exception:
            return f"HTTP {obj.status_code}"
    text = repr(obj)
    return text if len(text) <= 200 else text[:197] + "..."


def _one_shot(target: object) -> bool:
    """A source that can be read only once (a file object): prepared once, reused."""
    if isinstance(target, Source):
        return target.kind == "file"
    return hasattr(target, "read")


def uuid_target(target: object) -> bool:
    """An imageUUID (and no file of that name)."""
    return isinstance(target, str) and is_uuid(target) and not os.path.lexists(target)
