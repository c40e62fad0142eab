"""Lifecycle operations: record outside uses, invalidate, heal, renew, delete remotely.

A mixin of :class:`~assetcache.AssetCache` and its async twin. The cache only
sees the uses it serves, and Runware offers no way to ask whether an upload
still exists, so the server's answer to a real task is the final word::

    with AssetCache() as cache:
        result = cache.use("cat.png", lambda uuid: run_inference(seedImage=uuid))
        cache.touch(uuid)              # a task ran elsewhere with a cached UUID
        cache.invalidate("cat.png")    # forget what the cache believes; next use uploads
        cache.forget(["cat.png"], remote=True)   # delete the upload on Runware too

:meth:`use` calls ``fn(uuid)``; when the answer says Runware does not know the
UUID (``invalid<Parameter>`` on the parameter that carried it: Runware has no
dedicated "expired" code), the entry is invalidated, the image uploaded again
(exactly once) and ``fn`` called once more, up to ``retries`` times, after
which :class:`~assetcache.RetryBudgetExhausted` says so. The answer is
recognised in this project's :class:`~assetcache.UnknownImage`, in the
``runware-sdk``'s ``RunwareError`` (``code == "validation"`` on an image
parameter: the SDK keeps no raw code) and in an ``httpx.Response`` (returned)
or ``httpx.HTTPStatusError`` (raised; httpx2's alike) whose JSON body holds such an error, and
for a response whose request is known, only when the rejected parameter held
the cached UUID; a caller's ``is_unknown`` predicate covers anything else.

The decision logic of :meth:`use` is written once, as a plan
(:meth:`LifecycleMixin._use_steps`); the caller's function is one more effect
(``Invoke``), so the sync and async drivers of ``_effects`` run it unchanged.

:meth:`touch`, :meth:`invalidate` and ``forget(remote=True)`` are blocking on
both twins (they touch SQLite, and ``forget`` is blocking anyway).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import _policy
from ._effects import Call, Driver, Invoke, Plan, run_sync
from ._errors import (
    AssetCacheError,
    ConfigurationError,
    RemoteError,
    RetryBudgetExhausted,
    SourceError,
    SourceNotFound,
    UnknownImage,
)
from ._httpx import is_response, is_status_error
from ._protocol import (
    TaskResult,
    is_uuid,
    json_body,
)

if TYPE_CHECKING:
    from ._cache import _Engine, _Prepared
    from ._copies import Copies, CopiesUsage
    from ._maintenance import Entry
    from ._sources import SourceLike
    from ._store import AssetRow, Key

log = logging.getLogger("assetcache")

#: ``use()``'s caller predicate: gets what ``fn`` raised or returned.
UnknownPredicate = Callable[[object], bool]
#: Top-level parameters that carry new bytes (uploads), not a stored image.
_UPLOAD_PARAMS = frozenset({"image", "media"})
_IMAGE_WORDS = ("image", "mask", "frame")
_PARAM_SPLIT = re.compile(r"[.\[\]]+")
#: Runware's wording for a UUID it does not hold (there is no dedicated code).
_UNKNOWN_WORDING = "previously uploaded"


# -- recognising "the server does not know this UUID" (pure) -----------------------


def rejects_uuid(obj: object, uuid: str | None = None, parameters: Collection[str] = ()) -> bool:
    """Whether ``obj`` (an exception, or a value such as an ``httpx.Response``) is
    Runware saying it does not know an image UUID it was given.

    ``parameters``: the task parameters the UUID went in (only a rejection of
    one of them counts). Exceptions are followed along their causes, so an
    SDK error wrapped in the caller's own still counts.

    >>> rejects_uuid(UnknownImage("...", code="invalidSeedImage", parameter="seedImage"))
    True
    """
    names = frozenset(_leaf(p).lower() for p in parameters)
    seen = 0
    while obj is not None and seen < 8:
        if _rejects_one(obj, uuid, names):
            return True
        if not isinstance(obj, BaseException):
            return False
        obj = obj.__cause__ or (None if obj.__suppress_context__ else obj.__context__)
        seen += 1
    return False


def _rejects_one(obj: object, uuid: str | None, names: frozenset[str]) -> bool:
    if isinstance(obj, RemoteError):
        if isinstance(obj, UnknownImage):
            return _named(obj.parameter, names)
        return _error_says_unknown(obj.code, obj.parameter, obj.message, names)
    # The SDK and httpx are looked up, never imported: if their module is not
    # loaded, ``obj`` cannot be one of their objects.
    sdk = sys.modules.get("runware.errors")
    sdk_error = getattr(sdk, "RunwareError", None) if sdk is not None else None
    if isinstance(sdk_error, type) and isinstance(obj, sdk_error):
        return _sdk_says_unknown(obj, names)
    if is_status_error(obj):
        obj = obj.response  # type: ignore[attr-defined]
    if is_response(obj):
        return _response_says_unknown(obj, uuid, names)
    return False


def _leaf(parameter: str) -> str:
    """``inputs.seedImage`` -> ``seedImage``; ``ipAdapters[0].guideImage`` -> ``guideImage``."""
    parts = [p for p in _PARAM_SPLIT.split(parameter.strip()) if p and not p.isdigit()]
    return parts[-1] if parts else parameter.strip()


def _params(parameter: object) -> list[str]:
    if isinstance(parameter, str):
        return [p for p in parameter.split(",") if p.strip()]
    if isinstance(parameter, (list, tuple)):
        return [p for p in parameter if isinstance(p, str) and p.strip()]
    return []


def _named(parameter: object, names: frozenset[str]) -> bool:
    return not names or any(_leaf(p).lower() in names for p in _params(parameter))


def _names_image(parameter: str) -> bool:
    leaf = _leaf(parameter).lower()
    if parameter.strip().lower() in _UPLOAD_PARAMS:
        return False  # an upload's own input: bad bytes, not an unknown UUID
    return any(word in leaf for word in _IMAGE_WORDS)


def _error_says_unknown(
    code: object, parameter: object, message: object, names: frozenset[str]
) -> bool:
    """A Runware error object: ``invalid<Param>`` on the image parameter it names."""
    if not isinstance(code, str) or not code.startswith("invalid"):
        return False
    params = _params(parameter)
    if names and not any(_leaf(p).lower() in names for p in params):
        return False
    wanted = code[len("invalid") :].lower()
    if any(_leaf(p).lower() == wanted and _names_image(p) for p in params):
        return True
    return isinstance(message, str) and _UNKNOWN_WORDING in message.lower()


def _sdk_says_unknown(exc: Any, names: frozenset[str]) -> bool:
    """runware-sdk's RunwareError: it maps every ``invalid*`` code to ``"validation"``
    and keeps the parameter (and HTTP status, when there was one)."""
    if getattr(exc, "code", None) != "validation":
        return False
    status = getattr(exc, "status_code", None)
    if status is not None and status != 400:
        return False
    parameter = getattr(exc, "parameter", None)
    params = _params(parameter)
    if names:
        return any(_leaf(p).lower() in names for p in params)
    if any(_names_image(p) for p in params):
        return True
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return isinstance(message, str) and _UNKNOWN_WORDING in message.lower()


def _response_says_unknown(resp: Any, uuid: str | None, names: frozenset[str]) -> bool:
    try:
        doc = json.loads(resp.content)
    except Exception:  # unread stream, not JSON, nested too deep: not a Runware answer
        return False
    if not isinstance(doc, dict):
        return False
    errors = doc.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if not isinstance(errors, list):
        return False
    tasks = _request_tasks(resp)
    for err in errors:
        if not isinstance(err, dict):
            continue
        if not _error_says_unknown(
            err.get("code"), err.get("parameter"), err.get("message"), names
        ):
            continue
        if uuid is None or tasks is None:
            return True
        task = tasks.get(str(err.get("taskUUID", "")).lower())
        held = None if task is None else _holds(task, _params(err.get("parameter")), uuid)
        if held is not False:  # unknown where it went: the wording decides
            return True
    return False


def _request_tasks(resp: Any) -> dict[str, dict[str, Any]] | None:
    """The tasks of the request behind ``resp``, by taskUUID, when its body is known."""
    try:
        body = json.loads(resp.request.content)
    except Exception:  # no request attached, a streamed body, not JSON
        return None
    items = body if isinstance(body, list) else [body]
    return {str(t.get("taskUUID", "")).lower(): t for t in items if isinstance(t, dict)}


def _holds(task: dict[str, Any], params: list[str], uuid: str) -> bool | None:
    """Whether the rejected parameter of ``task`` held ``uuid`` (None: not found)."""
    found: list[object] = []
    for param in params:
        leaf = _leaf(param)
        _collect(task, leaf, found, 0)
    if not found:
        return None
    wanted = uuid.lower()
    return any(wanted in _strings(value) for value in found)


def _collect(node: object, key: str, out: list[object], depth: int) -> None:
    if depth > 6:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append(v)
            else:
                _collect(v, key, out, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _collect(v, key, out, depth + 1)


def _strings(value: object) -> set[str]:
    if isinstance(value, str):
        return {value.lower()}
    if isinstance(value, list):
        return {v.lower() for v in value if isinstance(v, str)}
    return set()


def _describe(obj: Any) -> str:
    """One line on what ``fn`` answered, for the give-up message."""
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
    from ._sources import Source

    if isinstance(target, Source):
        return target.kind == "file"
    return hasattr(target, "read")


def _uuid_target(target: object) -> bool:
    return isinstance(target, str) and is_uuid(target) and not os.path.lexists(target)


# -- the mixin ------------------------------------------------------------------------


class LifecycleMixin:
    _engine: _Engine
    _driver: Driver
    _copies: Copies
    # From MaintenanceMixin (both mixins make up every cache class).
    _entry: Callable[[AssetRow, Sequence[str], float], Entry]
    _paths_of: Callable[[set[str]], dict[str, tuple[str, ...]]]
    _locate: Callable[[Entry], tuple[_Prepared | None, str | None, str | None]]

    # -- touch / invalidate -----------------------------------------------------------
    def touch(self, target: SourceLike, *, at: float | None = None) -> Entry | None:
        """Record a use made outside the cache (a task run elsewhere with a cached
        UUID), sliding the entry's window; ``at``: when it happened (epoch seconds,
        default now). Returns the entry, or ``None`` if the cache does not know it.

        ``target`` is an imageUUID or any source (hashed, never uploaded). An
        entry whose upload Runware had already deleted by then is not revived.

        >>> cache.touch("5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44").state   # doctest: +SKIP
        'fresh'
        """
        engine = self._engine
        now = engine.clock()
        when = now if at is None else min(float(at), now)
        rows = self._rows_for(target)
        for row in rows:
            # Runware extends only what it still holds: a use after expires_at failed.
            if when < _policy.expires_at(engine.policy, row.last_used_at):
                engine.registry.touch(row.key, when)
        return self._entry_of(rows, now)

    def invalidate(self, target: SourceLike) -> Entry | None:
        """Drop what the cache believes about an upload: the next use uploads again
        (outcome ``"reuploaded"``). ``target`` is an imageUUID or any source (hashed,
        never uploaded). Returns the entry as it now stands, or ``None`` if unknown.

        >>> cache.invalidate("photo.png").state                     # doctest: +SKIP
        'expired'
        """
        if _uuid_target(target):
            assert isinstance(target, str)
            rows = self._uuid_rows(target)
            for row in rows:
                self._expire(row.key, row.image_uuid)
        else:
            rows = self._rows_for(target)
            for row in rows:
                self._expire(row.key, None)
        return self._entry_of(rows, self._engine.clock())

    def _entry_of(self, rows: list[AssetRow], now: float) -> Entry | None:
        if not rows:
            return None
        row = self._engine.registry.get_asset(rows[0].key) or rows[0]
        return self._entry(row, self._paths_of({row.content_hash}).get(row.content_hash, ()), now)

    def _rows_for(self, target: SourceLike) -> list[AssetRow]:
        """The registry rows an imageUUID or a source stands for (no upload, no write)."""
        engine = self._engine
        if _uuid_target(target):
            assert isinstance(target, str)
            return engine.registry.find_uuid(target.lower())
        prepared = engine.prepare(target)
        if isinstance(prepared, SourceNotFound):
            return self._gone_path_rows(target, prepared)
        if isinstance(prepared, AssetCacheError):
            raise prepared
        row = engine.registry.get_asset(prepared.key)
        return [row] if row is not None else []

    def _gone_path_rows(self, target: SourceLike, missing: SourceNotFound) -> list[AssetRow]:
        """A path that is gone: the entry of the content it held when last hashed."""
        engine = self._engine
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

    def _expire(self, key: Key, image_uuid: str | None) -> int:
        """Mark an entry as deleted on the server (kept, so the next upload reads
        "reuploaded"); with ``image_uuid``, only while it still holds that UUID."""
        engine = self._engine
        stamp = engine.clock() - engine.policy.retention
        return _expire_rows(engine.registry, key, image_uuid, stamp)

    def _uuid_rows(self, image_uuid: str) -> list[AssetRow]:
        """Rows holding ``image_uuid``: the registry's and, in a fleet, this host's
        local copy (which may still hold a UUID another host has replaced)."""
        registry = self._engine.registry
        rows = registry.find_uuid(image_uuid.lower())
        local = getattr(registry, "local", None)
        if local is not None:
            rows += [
                r for r in local.find_uuid(image_uuid.lower()) if r.key not in {x.key for x in rows}
            ]
        return rows

    def _expire_uuid(self, image_uuid: str) -> int:
        return sum(self._expire(row.key, row.image_uuid) for row in self._uuid_rows(image_uuid))

    # -- use ------------------------------------------------------------------------
    def _use_steps(
        self,
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
        from ._cache import _label

        label = target if _uuid_target(target) else _label(target)
        assert isinstance(label, str)
        if _one_shot(target):
            target = yield Call(self._prepare_or_raise, target)
        uuid: str = yield from self._plan_uuid(target, str(label))
        rejected: list[str] = []
        last: object = None
        for attempt in range(retries + 1):
            try:
                value = yield Invoke(fn, uuid)
            except Exception as exc:
                if not self._rejected(exc, uuid, is_unknown, names):
                    raise
                last = exc
            else:
                if not self._rejected(value, uuid, is_unknown, names):
                    return value
                last = value
            rejected.append(uuid)
            # The server's answer is the final word: learn it whatever happens next.
            yield Call(self._expire_uuid, uuid)
            if attempt == retries:
                break
            log.info("%s: Runware no longer knows %s; uploading it again", label, uuid)
            uuid = yield from self._plan_uuid(target, str(label))
        raise self._exhausted(str(label), rejected, retries, last)

    def _rejected(
        self, obj: object, uuid: str, is_unknown: UnknownPredicate | None, names: Sequence[str]
    ) -> bool:
        if rejects_uuid(obj, uuid, names):
            return True
        return bool(is_unknown(obj)) if is_unknown is not None else False

    def _exhausted(
        self, label: str, rejected: list[str], retries: int, last: object
    ) -> RetryBudgetExhausted:
        detail = self._engine.redact(_describe(last)).rstrip(".")
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
        err = RetryBudgetExhausted(
            text, source=label, uuids=tuple(rejected), attempts=len(rejected)
        )
        if isinstance(last, BaseException):
            err.__cause__ = last
            err.__suppress_context__ = True
        return err

    def _prepare_or_raise(self, target: SourceLike) -> _Prepared:
        prepared = self._engine.prepare(target)
        if isinstance(prepared, AssetCacheError):
            raise prepared
        return prepared

    def _plan_uuid(self, target: SourceLike | _Prepared, label: str) -> Plan:
        """The UUID to hand to ``fn``: resolved (uploading if needed) from the
        source, or from the entry of an imageUUID or of a path that is gone."""
        engine = self._engine
        if _uuid_target(target):
            assert isinstance(target, str)
            rows = yield Call(engine.registry.find_uuid, target.lower())
            return (yield from self._plan_from_rows(rows, label))
        sources: list[Any] = [target]  # a source, or one prepared already (file objects)
        (res,) = yield from engine.plan_resolve_many(sources, 1)
        if res.error is None:
            return res.uuid
        if isinstance(res.error, SourceNotFound) and isinstance(target, (str, os.PathLike)):
            rows = yield Call(self._gone_path_rows, target, res.error)
            return (yield from self._plan_from_rows(rows, label, res.error))
        raise res.error

    def _plan_from_rows(
        self, rows: list[AssetRow], label: str, missing: AssetCacheError | None = None
    ) -> Plan:
        engine = self._engine
        if not rows:
            raise missing or SourceError(label, "no cache entry holds this imageUUID")
        row = rows[0]
        now = engine.clock()
        if row.last_used_at > engine.fresh_since(now):
            if _policy.needs_touch(engine.policy, row.last_used_at, now):
                yield Call(engine.registry.touch, row.key, now)
            engine.count(hits=1, bytes_saved=row.size)
            return row.image_uuid
        # Not served any more: upload again from wherever the bytes still are.
        paths = yield Call(self._paths_of, {row.content_hash})
        entry = self._entry(row, paths.get(row.content_hash, ()), now)
        prepared, _, reason = yield Call(self._locate, entry)
        if prepared is None:
            raise SourceError(label, f"cannot be uploaded again: {reason}")
        (res,) = yield from engine.plan_resolve_many([prepared], 1)
        if res.error is not None:
            raise res.error
        return res.uuid

    # -- local copies ---------------------------------------------------------------
    def copies_usage(self) -> CopiesUsage:
        """Where local copies go and what they hold (``enabled`` False when off).

        >>> cache.copies_usage().bytes                              # doctest: +SKIP
        """
        return self._copies.usage(enabled=self._engine.copies is not None)

    def _refresh_fallback(self, entry: Entry) -> Any:
        """The entry's bytes from the local copies, for refresh and recovery.

        Read even while keeping new copies is off: copies an earlier run kept
        are checked against their hash, so using them can only help.
        """
        from ._sources import Source

        copies = self._copies
        stream = copies.open(entry.content_hash)
        if stream is None:
            return None
        return Source("file", f"local copy {copies.path_for(entry.content_hash)}", stream=stream)

    # -- deleting on the server -------------------------------------------------------
    def _forget_remote(self, entries: Sequence[Entry]) -> list[str | AssetCacheError]:
        """Delete ``entries``' uploads on Runware (``mediaStorage`` ``delete``): one
        outcome per entry, ``"deleted"``, ``"already gone"`` or the error."""
        engine = self._engine
        engine.headers()  # no key: a configuration error before anything is sent
        own = [e.uuid for e in entries if e.namespace == engine.namespace]
        done = self._drive_blocking(self._plan_delete(list(dict.fromkeys(own)))) if own else {}
        out: list[str | AssetCacheError] = []
        for e in entries:
            if e.namespace != engine.namespace:
                out.append(
                    ConfigurationError(
                        f"{e.uuid} belongs to another account ({e.namespace}); not deleted"
                    )
                )
            else:
                out.append(done[e.uuid])
        return out

    def _drive_blocking(self, plan: Plan) -> Any:
        """Drive ``plan`` to the end in this thread, on either twin."""
        if self._driver.make_sync_client is not None:
            return run_sync(plan, self._driver)
        httpx = self._http_module()  # type: ignore[attr-defined]

        # The async twin's client lives on its event loop: a short-lived
        # blocking one does this one job (forget is blocking on both twins).
        kwargs = self._client_kwargs()  # type: ignore[attr-defined]
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

    def _plan_delete(self, uuids: list[str]) -> Plan:
        """``{uuid: "deleted" | "already gone" | error}``, batch by batch."""
        engine = self._engine
        out: dict[str, str | AssetCacheError] = {}
        for start in range(0, len(uuids), engine.batch_size):
            out.update(
                (yield from self._plan_delete_batch(uuids[start : start + engine.batch_size]))
            )
        return out

    def _plan_delete_batch(self, uuids: list[str]) -> Plan:
        """One request of ``mediaStorage`` deletes, retried like uploads (fresh taskUUIDs)."""

        def encode(pairs: list[tuple[str, str]]) -> tuple[Callable[[], list[bytes]], int]:
            body = json_body(
                [
                    {"taskType": "mediaStorage", "taskUUID": t, "operation": "delete", "media": u}
                    for t, u in pairs
                ]
            )
            return (lambda: [body]), len(body)

        answers = yield from self._engine.plan_tasks(
            [(u, u) for u in uuids], encode, "mediaUUID", "deletion"
        )
        out: dict[str, str | AssetCacheError] = {}
        for u, answer in answers.items():
            if isinstance(answer, TaskResult):
                if answer.image_uuid.lower() == u.lower():
                    out[u] = "deleted"
                else:
                    out[u] = RemoteError(
                        f"Runware confirmed deleting {answer.image_uuid}, not {u}",
                        task_uuid=answer.task_uuid,
                    )
            elif getattr(answer, "code", None) == "invalidMedia":
                out[u] = "already gone"  # what deleting was for
            else:
                out[u] = answer
        return out


def keep_uploaded_copies(copies: Copies, done: Iterable[tuple[_Prepared, Any, int]]) -> None:
    """After uploads were recorded: keep the original bytes of each (never raises)."""
    for prepared, _, _ in done:
        payload = getattr(prepared.payload, "original", None)
        if payload is None:
            if prepared.key[2]:
                continue  # transformed, and the original is not at hand
            payload = prepared.payload()
        try:
            copies.keep(prepared.key[1], payload)
        except (OSError, AssetCacheError) as exc:
            log.warning("could not keep a local copy of %s: %s", prepared.label, exc)


def _expire_rows(registry: Any, key: Key, image_uuid: str | None, stamp: float) -> int:
    """Set ``last_used_at`` back to ``stamp`` (never forward) wherever the registry keeps it."""
    return int(registry.expire_asset(key, stamp, image_uuid))
