"""The task path: a Runware task in; its images as cached UUIDs; sent, healed, evidenced.

``run``/``run_many`` are the two halves :func:`plan_prepare` and
:func:`plan_settle` with a send and a healing loop between them:

1. **prepare**: walk the task along the map (``_taskmap``); every local image
   (path, bytes, file object, PIL image, data URI, long base64) becomes the
   cached UUID, all of a call's images resolved in one batch (one upload per
   content); URLs pass untouched; a UUID the cache knows is *bound* to its
   entry. A value that cannot be used fails the task before anything is
   sent, naming the parameter (``referenceImages[3]``).
2. **send**: through the cache's own client (one request for all tasks, the
   answer's ``data`` objects per task), or the caller's ``send``.
3. **heal**: when the answer says Runware does not know a bound image (the
   one rule, :func:`._protocol.unknown_media`), only the rejected inputs are
   invalidated and uploaded again, and the task goes again with a fresh
   taskUUID; each input at most ``reuploads`` times per call, then
   :class:`~assetcache.RetryBudgetExhausted` with the server's error chained.
4. **settle**: a task that succeeded is evidence that every bound UUID was
   used on Runware now (:meth:`Engine.record_evidence`); a failure is not.

Everything here is a plan (``_effects``): the sync and async caches drive
the same decisions.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _lifecycle, _taskmap
from ._effects import Call, Concurrent, Http, Invoke, Plan, Sleep
from ._engine import Engine
from ._errors import (
    AssetCacheError,
    ConfigurationError,
    RemoteError,
    RetryBudgetExhausted,
    SourceError,
    TaskInputError,
)
from ._ingest import stat_source
from ._protocol import (
    MediaRejection,
    backoff_delay,
    is_transient,
    is_uuid,
    json_body,
    new_task_uuid,
    parse_task_response,
    unknown_media,
)
from ._resolve import plan_resolve_many
from ._sources import _B64_IMAGE_PREFIXES as _B64_PREFIXES
from ._sources import Source, _looks_base64

log = logging.getLogger("assetcache")

ExtraParams = Mapping[str, Iterable[str]] | Iterable[str] | None


@dataclass(slots=True)
class Binding:
    """One image parameter of a task, bound to a cache entry."""

    parameter: str  # as Runware names it: "referenceImages[3]"
    target: Any  # what to resolve again: the source, or the known imageUUID
    label: str
    uuid: str
    last_used: float | None  # the entry's last use as the cache knows it
    uploaded: bool = False  # uploaded during this call: the server holds it now
    reuploads: int = 0


@dataclass(slots=True)
class PreparedTask:
    """A task with its images replaced by cached UUIDs (:meth:`AssetCache.prepare`).

    ``task`` is what to send (a copy: the caller's task is untouched);
    ``uuids`` maps each bound parameter to its UUID. Hand it back to
    :meth:`AssetCache.settle` once the answer is known.
    """

    task: Any
    original: Any = field(repr=False)
    bindings: list[Binding] = field(default_factory=list)
    extra_params: Any = field(default=None, repr=False)
    #: Every image parameter the task sets, bound or not (URLs, foreign UUIDs).
    parameters: tuple[str, ...] = field(default=(), repr=False)
    settled: bool = field(default=False, repr=False)

    @property
    def uuids(self) -> dict[str, str]:
        return {b.parameter: b.uuid for b in self.bindings}

    @property
    def task_type(self) -> str:
        kind = _taskmap.task_type_of(self.task)
        return kind if isinstance(kind, str) else "task"


# -- classifying a mapped value (blocking: may read a file object) ---------------------


@dataclass(slots=True)
class _Item:
    parameter: str
    kind: str  # "source" | "uuid"
    value: Any
    label: str


def _classify(
    engine: Engine, parameter: str, value: Any, local_files: bool = True
) -> _Item | None | TaskInputError:
    """What a mapped value is: a source to resolve, a UUID to bind, ``None`` to
    pass untouched (URLs, UUIDs the cache does not know), or why it is unusable.

    Without ``local_files`` a string is never read as a path: only data URIs
    and base64 are taken and anything else passes untouched (a server that
    rewrites other people's tasks, as the proxy does, must not upload its own
    files)."""
    try:
        if isinstance(value, str):
            text = value.strip()
            if is_uuid(text):
                return _Item(parameter, "uuid", text.lower(), text)
            head = text[:16].lower()
            if "://" in head and not head.startswith("data:"):
                return None  # a URL: the server fetches it
            if not text:
                raise SourceError("''", "empty value")
            if not local_files:
                if head.startswith("data:"):
                    src = Source.from_data_uri(text)
                elif _looks_base64(text):
                    src = Source.from_base64(text)
                else:
                    return None
                return _Item(parameter, "source", src, src.label)
            if not head.startswith("data:") and not _looks_base64(text):
                # A path: a missing or special file fails the task before any upload.
                stat_source(os.path.abspath(value), value)
                return _Item(parameter, "source", value, value)
            src = Source.coerce(value)
            return _Item(parameter, "source", value if src.kind == "path" else src, src.label)
        if isinstance(value, (bytes, bytearray, memoryview)):
            src = Source.from_bytes(value)
            return _Item(parameter, "source", src, src.label)
        if isinstance(value, os.PathLike):
            src = Source.from_path(value)
            assert src.path is not None
            stat_source(src.path, src.label)
            return _Item(parameter, "source", value, src.label)
        if isinstance(value, io.TextIOBase):
            raise SourceError(
                f"<{type(value).__name__}>", "a text file object: open the image in binary mode"
            )
        pil = _pil_png(value)
        if pil is not None:
            src = Source("bytes", f"<PIL image {value.size[0]}x{value.size[1]}>", data=pil)
            return _Item(parameter, "source", src, src.label)
        if hasattr(value, "read"):
            src = Source.from_file(value)
            # Read once now: a healing round cannot read a stream again.
            prepared = engine.prepare(src)
            if isinstance(prepared, AssetCacheError):
                raise prepared
            return _Item(parameter, "source", prepared, src.label)
        raise SourceError(
            f"<{type(value).__name__}>",
            "not an image: give a path, bytes, a binary file object, a PIL image, "
            "a data URI, base64, a URL or an imageUUID",
        )
    except SourceError as exc:
        return TaskInputError(parameter, exc.source, exc.reason)


def _pil_png(value: Any) -> bytes | None:
    """A PIL image, encoded losslessly (PNG); ``None`` for anything else."""
    if not type(value).__module__.startswith("PIL.") or not hasattr(value, "save"):
        return None
    out = io.BytesIO()
    image = value
    try:
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            image = image.convert("RGBA")
        image.save(out, format="PNG")
    except Exception as exc:  # Pillow's own errors (a closed image, an exotic mode)
        raise SourceError(
            f"<PIL image {type(value).__name__}>", f"cannot be encoded as PNG: {exc}"
        ) from None
    return out.getvalue()


# -- prepare -------------------------------------------------------------------------


def _walk(task: Any, extra: ExtraParams) -> list[tuple[str, Any]]:
    if task is None or not (isinstance(task, dict) or _taskmap.is_container(task)):
        raise ConfigurationError(
            f"a task is a dict (or an SDK request object), not {type(task).__name__}"
        )
    try:
        return _taskmap.find(task, extra)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def plan_prepare_many(
    engine: Engine, tasks: Sequence[Any], extra: ExtraParams, local_files: bool = True
) -> Plan:
    """Every task prepared, all images resolved in one batch; per task a
    :class:`PreparedTask` or the error that fails it (nothing sent)."""
    found = [_walk(task, extra) for task in tasks]
    classified: list[list[_Item | TaskInputError]] = []
    for entries in found:
        items: list[_Item | TaskInputError] = []
        for parameter, value in entries:
            if (
                type(value) is not str
                and hasattr(value, "read")
                and not isinstance(value, (bytes, io.TextIOBase))
            ):
                item = yield Call(_classify, engine, parameter, value, local_files)
            else:
                item = _classify(engine, parameter, value, local_files)
            if item is not None:
                items.append(item)
        classified.append(items)

    out: list[PreparedTask | AssetCacheError] = []
    # Sources of every task in one resolve: one upload per content, batched.
    sources: list[Any] = []
    where: list[tuple[int, int]] = []
    resolved: dict[tuple[int, int], Any] = {}
    # Warm hits first: every path string of the call, in one SELECT.
    # A task with an unusable value fails whole: none of its images is resolved.
    spots = [
        (t, n)
        for t, items in enumerate(classified)
        if not any(isinstance(item, TaskInputError) for item in items)
        for n, item in enumerate(items)
        if isinstance(item, _Item) and item.kind == "source"
    ]
    named = [s for s in spots if isinstance(_value(classified, s), str)]
    hits = engine.hit_rows([_value(classified, s) for s in named], False) if named else []
    resolved.update((s, hit) for s, hit in zip(named, hits, strict=True) if hit is not None)
    for spot in spots:
        if spot not in resolved:
            sources.append(_value(classified, spot))
            where.append(spot)
    if sources:
        results = yield from plan_resolve_many(engine, sources, None, touch=False)
        resolved.update(zip(where, results, strict=True))
    for t, items in enumerate(classified):
        prepared = PreparedTask(
            tasks[t], tasks[t], extra_params=extra, parameters=tuple(n for n, _ in found[t])
        )
        bad = next((item for item in items if isinstance(item, TaskInputError)), None)
        if bad is not None:
            out.append(bad)
            continue
        error: AssetCacheError | None = None
        for n, item in enumerate(items):
            assert isinstance(item, _Item)
            if item.kind == "source":
                res = resolved[(t, n)]
                if isinstance(res, tuple):  # (lookup row, last use): a warm hit
                    row, last_used = res
                    prepared.bindings.append(
                        Binding(item.parameter, item.value, item.label, row[8], last_used)
                    )
                    continue
                if res.error is not None:
                    error = error or _input_error(item, res.error)
                    continue
                last = (
                    res.expires_at - engine.policy.retention if res.expires_at is not None else None
                )
                prepared.bindings.append(
                    Binding(
                        item.parameter,
                        item.value,
                        item.label,
                        str(res.uuid),
                        last,
                        uploaded=res.outcome in ("uploaded", "reuploaded"),
                    )
                )
            else:
                binding = yield from _plan_bind_uuid(engine, item)
                if binding is not None:
                    prepared.bindings.append(binding)
        if error is not None:
            out.append(error)
            continue
        prepared.task = _taskmap.replace(
            tasks[t], {b.parameter: b.uuid for b in prepared.bindings}, extra
        )
        out.append(prepared)
    return out


def _value(classified: list[list[_Item | TaskInputError]], spot: tuple[int, int]) -> Any:
    item = classified[spot[0]][spot[1]]
    assert isinstance(item, _Item)
    return item.value


def _input_error(item: _Item, err: AssetCacheError) -> AssetCacheError:
    if isinstance(err, SourceError):
        return TaskInputError(item.parameter, err.source or item.label, err.reason)
    return err  # the store or the server failed: not the input's fault


def _plan_bind_uuid(engine: Engine, item: _Item) -> Plan:
    """A UUID the cache knows, bound to its entry (uploaded again if the cache
    no longer serves it and still has the bytes); ``None`` when unknown."""
    rows = yield Call(_lifecycle.uuid_rows, engine, item.value)
    if not rows:
        return None
    row = rows[0]
    now = engine.clock()
    if row.last_used_at > engine.fresh_since(now):
        return Binding(item.parameter, item.value, item.label, row.image_uuid, row.last_used_at)
    try:
        uuid = yield from _lifecycle.plan_from_rows(engine, rows, item.label)
    except SourceError:
        # The bytes are nowhere: send it as it is; the server's answer decides.
        return Binding(item.parameter, item.value, item.label, row.image_uuid, row.last_used_at)
    return Binding(item.parameter, item.value, item.label, uuid, now, uploaded=True)


def prepare_warm(engine: Engine, task: Any, extra: ExtraParams) -> PreparedTask | None:
    """The warm task in one step, outside any plan (like the warm hit of a path):
    a dict task whose images are all path strings the cache answers from stat
    data, looked up in one SELECT; ``None`` sends the task down the full plan.
    Decides nothing the plan would decide otherwise; it only skips its machinery."""
    if type(task) is not dict:
        return None
    try:
        found = _taskmap.find(task, extra)
    except ValueError:
        return None  # a bad extra path: the plan reports it
    if not found:
        return None
    names: list[str] = []
    paths: list[str] = []
    for name, value in found:
        if type(value) is not str:
            return None
        head = value[:16].lower()
        if "://" in head and not head.startswith("data:"):
            continue  # a URL: passes untouched, bound to nothing
        if (
            (len(value) == 36 and is_uuid(value))
            or head.startswith("data:")
            or not value
            or (
                (len(value) >= 1024 or value.lstrip().startswith(_B64_PREFIXES))
                and _looks_base64(value)
            )
        ):
            return None  # a UUID to bind, or data: the plan's work
        names.append(name)
        paths.append(value)
    if not paths:
        return None
    hits = engine.hit_rows(paths, False, all_or_nothing=True)
    bindings = []
    for name, value, hit in zip(names, paths, hits, strict=True):
        if hit is None:
            return None
        row, last_used = hit
        bindings.append(Binding(name, value, value, row[8], last_used))
    replaced = _taskmap.replace(task, {b.parameter: b.uuid for b in bindings}, extra)
    return PreparedTask(replaced, task, bindings, extra, tuple(n for n, _ in found))


def plan_prepare(engine: Engine, task: Any, extra: ExtraParams, local_files: bool = True) -> Plan:
    """:func:`plan_prepare_many` for one task, raising; a dict task gets a taskUUID."""
    (prepared,) = yield from plan_prepare_many(engine, [task], extra, local_files)
    if isinstance(prepared, AssetCacheError):
        raise prepared
    if isinstance(prepared.task, dict) and not prepared.task.get("taskUUID"):
        prepared.task = {**prepared.task, "taskUUID": new_task_uuid()}
    return prepared


# -- settle --------------------------------------------------------------------------


def plan_settle(engine: Engine, prepared: PreparedTask, ok: bool, error: object = None) -> Plan:
    """Record a task's outcome: on success, evidence that its UUIDs were used;
    on a failure that says an image is unknown, invalidate the rejected ones.
    Returns the parameters invalidated (prepare the task again to re-upload them)."""
    if not isinstance(prepared, PreparedTask):
        raise ConfigurationError(
            f"settle() takes what prepare() returned, not {type(prepared).__name__}"
        )
    if ok:
        if _evidence_due(engine, prepared.bindings):
            yield Call(_record_evidence, engine, prepared.bindings)
        return []
    if error is None:
        return []
    rejection = unknown_media(error, known=[b.parameter for b in prepared.bindings])
    if rejection is None:
        return []
    rejected = _rejected(prepared, rejection, narrow=False)
    yield Call(_invalidate, engine, rejected)
    return [b.parameter for b in rejected]


def _evidence_due(engine: Engine, bindings: Sequence[Binding]) -> bool:
    """Whether recording this success would write at all (the window is slid at
    most every ``touch_every``): a warm task that needs no write yields nothing."""
    now = engine.clock()
    every = engine.policy.touch_every
    return any(b.last_used is None or now - b.last_used >= every for b in bindings)


def _record_evidence(engine: Engine, bindings: Sequence[Binding]) -> None:
    """The engine's one "evidence of use" call, for the bindings whose slide is due."""
    now = engine.clock()
    every = engine.policy.touch_every
    due = [b for b in bindings if b.last_used is None or now - b.last_used >= every]
    engine.record_evidence(dict.fromkeys(b.uuid for b in due), at=now)
    for b in due:
        b.last_used = now


def _invalidate(engine: Engine, bindings: Sequence[Binding]) -> None:
    for uuid in dict.fromkeys(b.uuid for b in bindings):
        _lifecycle.expire_uuid(engine, uuid)


def _rejected(
    prepared: PreparedTask, rejection: MediaRejection, narrow: bool = True
) -> list[Binding]:
    """The bindings a rejection designates. A named parameter is matched against
    every image parameter of the task: one the cache did not bind (a URL) is not
    ours to heal. Unnamed: all of them. An array named without an index spares
    the images uploaded during this very call (the server holds those)."""
    bindings = prepared.bindings
    if not bindings:
        return []
    names = list(dict.fromkeys([*prepared.parameters, *(b.parameter for b in bindings)]))
    if not rejection.parameters:
        chosen = list(bindings)
    else:
        hit: dict[str, None] = {}
        for param in rejection.parameters:
            for name in _taskmap.match(param, names):
                hit[name] = None
        chosen = [b for b in bindings if b.parameter in hit]
    if narrow and len(chosen) > 1:
        older = [b for b in chosen if not b.uploaded]
        if older:
            chosen = older
    return chosen


# -- run -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    prepared: PreparedTask
    first: bool = True
    error: BaseException | None = None
    result: Any = None
    done: bool = False
    failed: bool = False


def plan_run_many(
    engine: Engine,
    tasks: Sequence[Any],
    send: Callable[[Any], Any] | None,
    extra: ExtraParams,
    reuploads: int,
    concurrency: int | None,
    warm: PreparedTask | None = None,
) -> Plan:
    """Prepare, send, heal and settle every task; per task ``(True, result)`` or
    ``(False, error)``. ``warm``: the one task, prepared already by :func:`prepare_warm`."""
    if isinstance(reuploads, bool) or not isinstance(reuploads, int) or reuploads < 0:
        raise ConfigurationError(f"reuploads must be an integer >= 0, not {reuploads!r}")
    if warm is not None:
        prepared: list[PreparedTask | AssetCacheError] = [warm]
    else:
        prepared = yield from plan_prepare_many(engine, tasks, extra)
    out: list[tuple[bool, Any]] = [(False, None)] * len(tasks)
    jobs: dict[int, _Job] = {}
    for i, p in enumerate(prepared):
        if isinstance(p, AssetCacheError):
            out[i] = (False, p)
        elif send is None and not isinstance(p.task, dict):
            out[i] = (
                False,
                ConfigurationError(
                    f"task {i}: the cache's own client sends dicts; pass send= to run "
                    f"{type(p.task).__name__} objects"
                ),
            )
        else:
            jobs[i] = _Job(p)
    if send is None:
        if jobs:
            engine.headers()  # no key: a configuration error before anything is sent
        yield from _plan_rounds(engine, jobs, reuploads)
    elif len(jobs) == 1:
        yield from _plan_rounds(engine, jobs, reuploads, send)
    else:
        plans = [_plan_rounds(engine, {i: job}, reuploads, send) for i, job in jobs.items()]
        limit = max(1, concurrency or engine.concurrency)
        for outcome in (yield Concurrent(plans, limit)):
            if isinstance(outcome, BaseException):  # a bug or a store failure: that task's
                raise outcome
    for i, job in jobs.items():
        out[i] = (False, job.error) if job.failed else (True, job.result)
    return out


def _plan_rounds(
    engine: Engine,
    jobs: dict[int, _Job],
    reuploads: int,
    send: Callable[[Any], Any] | None = None,
) -> Plan:
    """Send the open jobs, heal the rejected, until every job is done."""
    while True:
        active = [job for job in jobs.values() if not job.done]
        if not active:
            return None
        bodies = [_outgoing(job) for job in active]
        if send is None:
            answers = yield from _plan_post(engine, bodies)
        else:
            answers = []
            for body in bodies:
                try:
                    value = yield Invoke(send, body)
                except Exception as exc:  # the caller's client: its errors are its own
                    answers.append((False, exc))
                else:
                    answers.append((not _answer_failed(value), value))
        heal: list[tuple[_Job, list[Binding], object]] = []
        for job, (ok, answer) in zip(active, answers, strict=True):
            bindings = job.prepared.bindings
            if ok:
                if _evidence_due(engine, bindings):
                    yield Call(_record_evidence, engine, bindings)
                job.result, job.done = answer, True
                continue
            rejection = unknown_media(answer, known=[b.parameter for b in bindings])
            chosen = _rejected(job.prepared, rejection) if rejection is not None else []
            if not chosen:
                _finish_failed(job, answer, send)
                continue
            # The server's answer is the final word: learn it whatever happens next.
            yield Call(_invalidate, engine, chosen)
            spent = [b for b in chosen if b.reuploads >= reuploads]
            if spent:
                job.error = _exhausted(engine, job.prepared, spent, reuploads, answer)
                job.failed = job.done = True
                continue
            heal.append((job, chosen, answer))
        if heal:
            yield from _plan_heal(engine, heal)


def _outgoing(job: _Job) -> Any:
    """The task to send: the first time as prepared (the caller's taskUUID kept),
    after that with a fresh taskUUID (a re-sent one is a conflict)."""
    task = job.prepared.task
    if job.first:
        job.first = False
        if isinstance(task, dict) and not task.get("taskUUID"):
            task = {**task, "taskUUID": new_task_uuid()}
        return task
    if isinstance(task, dict):
        return {**task, "taskUUID": new_task_uuid()}
    import copy

    task = copy.copy(task)
    if hasattr(task, "taskUUID"):
        task.taskUUID = new_task_uuid()
    return task


def _answer_failed(value: object) -> bool:
    """Whether what ``send`` returned is an error answer (no evidence of use)."""
    status = getattr(value, "status_code", None)
    if isinstance(status, int) and type(value).__module__.split(".")[0] in ("httpx", "httpx2"):
        return status >= 400
    if isinstance(value, dict):
        errors = value.get("errors")
        return bool(errors) and not value.get("data")
    return False


def _finish_failed(job: _Job, answer: object, send: Callable[[Any], Any] | None) -> None:
    job.done = True
    if isinstance(answer, BaseException):
        job.error, job.failed = answer, True
    else:
        job.result = answer  # the caller's own answer: returned as it is


def _exhausted(
    engine: Engine,
    prepared: PreparedTask,
    spent: Sequence[Binding],
    reuploads: int,
    answer: object,
) -> RetryBudgetExhausted:
    where = ", ".join(b.parameter for b in spent)
    detail = engine.redact(_lifecycle._describe(answer)).rstrip(".")
    if reuploads == 0:
        text = (
            f"{prepared.task_type}: Runware does not know the image in {where} (expired or "
            f"deleted) and reuploads=0; the entry is invalidated, so the next run uploads it "
            f"again. Answer: {detail}"
        )
    else:
        text = (
            f"{prepared.task_type}: Runware still rejects {where} after {reuploads} fresh "
            f"upload(s) per input; giving up. Last answer: {detail}"
        )
    err = RetryBudgetExhausted(
        text,
        source=where,
        uuids=tuple(b.uuid for b in spent),
        attempts=max(b.reuploads for b in spent) + 1,
        parameters=tuple(b.parameter for b in spent),
    )
    if isinstance(answer, BaseException):
        err.__cause__ = answer
        err.__suppress_context__ = True
    return err


def _plan_heal(engine: Engine, heal: list[tuple[_Job, list[Binding], object]]) -> Plan:
    """Upload the rejected inputs again (all jobs' in one batch) and rebind them."""
    sources: list[Binding] = []
    uuids: list[Binding] = []
    for _, chosen, _ in heal:
        for b in chosen:
            b.reuploads += 1
            log.info("%s: Runware no longer knows %s; uploading it again", b.parameter, b.uuid)
            (uuids if isinstance(b.target, str) and is_uuid(b.target) else sources).append(b)
    failures: dict[int, AssetCacheError] = {}
    if sources:
        results = yield from plan_resolve_many(
            engine, [b.target for b in sources], None, touch=False
        )
        for b, res in zip(sources, results, strict=True):
            if res.error is None:
                b.uuid, b.uploaded, b.last_used = str(res.uuid), True, engine.clock()
            else:
                missing = yield from _plan_gone(engine, b, res.error)
                if isinstance(missing, AssetCacheError):
                    failures[id(b)] = missing
    for b in uuids:
        try:
            rows = yield Call(_lifecycle.uuid_rows, engine, b.target)
            b.uuid = yield from _lifecycle.plan_from_rows(engine, rows, b.label)
            b.uploaded, b.last_used = True, engine.clock()
        except AssetCacheError as exc:
            failures[id(b)] = exc
    for job, chosen, answer in heal:
        bad = [failures[id(b)] for b in chosen if id(b) in failures]
        if bad:
            err = bad[0]
            if isinstance(answer, BaseException) and err.__cause__ is None:
                err.__cause__ = answer
            job.error, job.failed, job.done = err, True, True
            continue
        job.prepared.task = _taskmap.replace(
            job.prepared.original,
            {b.parameter: b.uuid for b in job.prepared.bindings},
            job.prepared.extra_params,
        )


def _plan_gone(engine: Engine, b: Binding, error: AssetCacheError) -> Plan:
    """A path that vanished since the task was prepared: the entry of its content."""
    from ._errors import SourceNotFound

    if not isinstance(error, SourceNotFound) or not isinstance(b.target, (str, os.PathLike)):
        return _input_error(_Item(b.parameter, "source", b.target, b.label), error)
    try:
        rows = yield Call(_lifecycle.gone_path_rows, engine, b.target, error)
        b.uuid = yield from _lifecycle.plan_from_rows(engine, rows, b.label, error)
    except AssetCacheError as exc:
        return exc
    b.uploaded, b.last_used = True, engine.clock()
    return None


# -- the cache's own client --------------------------------------------------------------


def _plan_post(engine: Engine, tasks: list[Any]) -> Plan:
    """POST ``tasks`` as one request; ``[(ok, data objects | error), ...]``.

    Transient failures (5xx, 429, a dropped connection, a task the answer
    lost) are sent again with fresh taskUUIDs and backoff, like uploads.
    """
    headers = engine.headers()
    out: list[tuple[bool, Any] | None] = [None] * len(tasks)
    pending = list(range(len(tasks)))
    last: dict[int, AssetCacheError] = {}
    attempts = max(1, engine.retry.attempts)
    bodies = list(tasks)
    for attempt in range(attempts):
        if attempt:
            bodies = [
                {**t, "taskUUID": new_task_uuid()} if i in pending else t
                for i, t in enumerate(bodies)
            ]
        by_task = {str(bodies[i]["taskUUID"]): i for i in pending}
        body = json_body([bodies[i] for i in pending])
        retry_after: float | None = None
        try:
            resp = yield Http(
                engine.base_url,
                headers,
                functools.partial(list, [body]),
                len(body),
                engine.retry.timeout,
            )
            answers = parse_task_response(
                resp.status, resp.headers, resp.body, list(by_task), engine.redact
            )
        except RemoteError as exc:
            if not is_transient(exc):
                for i in pending:
                    out[i] = (False, exc)
                pending = []
                break
            for i in pending:
                last[i] = exc
            retry_after = getattr(exc, "retry_after", None)
        else:
            still = []
            for tid, i in by_task.items():
                answer = answers[tid]
                if isinstance(answer, list):
                    out[i] = (True, answer)
                elif is_transient(answer):
                    still.append(i)
                    last[i] = answer
                else:
                    out[i] = (False, answer)
            pending = still
        if not pending:
            break
        if attempt + 1 < attempts:
            engine.count(retries=1)
            yield Sleep(
                backoff_delay(
                    attempt,
                    retry_after,
                    base=engine.retry.base_delay,
                    cap=engine.retry.max_delay,
                    jitter=_jitter(),
                )
            )
    for i in pending:
        out[i] = (False, last[i])
    # Asynchronous delivery: the answer was an acknowledgement; the results
    # come from getResponse for the same taskUUID (what the official SDKs do).
    acked = {
        str(bodies[i]["taskUUID"]): i
        for i, o in enumerate(out)
        if o is not None
        and o[0]
        and bodies[i].get("deliveryMethod") == "async"
        and not _results_in(o[1])
    }
    if acked:
        polled = yield from _plan_async_results(engine, bodies, acked)
        for tid, i in acked.items():
            out[i] = polled[tid]
    return [o if o is not None else (False, AssetCacheError("no answer")) for o in out]


#: Keys of a result item that carry an output (an acknowledgement has none).
_OUTPUT_KEYS = (
    "imageUUID",
    "imageURL",
    "imageBase64Data",
    "videoUUID",
    "videoURL",
    "audioUUID",
    "audioURL",
    "mediaUUID",
    "text",
)


def _results_in(items: list[dict[str, Any]]) -> bool:
    return any(
        item.get("status") == "success" or any(k in item for k in _OUTPUT_KEYS) for item in items
    )


def _plan_async_results(engine: Engine, bodies: list[Any], acked: dict[str, int]) -> Plan:
    """Poll ``getResponse`` for acknowledged asynchronous tasks until each has its
    ``numberResults`` results (or an error), with backoff and at most
    ``retry.attempts`` polls; ``{taskUUID: (ok, data objects | error)}``."""
    headers = engine.headers()
    retry = engine.retry
    out: dict[str, tuple[bool, Any]] = {}
    waiting = list(acked)
    attempts = max(1, retry.attempts)
    for attempt in range(attempts):
        yield Sleep(
            backoff_delay(
                attempt, None, base=retry.base_delay, cap=retry.max_delay, jitter=_jitter()
            )
        )
        body = json_body([{"taskType": "getResponse", "taskUUID": t} for t in waiting])
        try:
            resp = yield Http(
                engine.base_url, headers, functools.partial(list, [body]), len(body), retry.timeout
            )
            answers = parse_task_response(
                resp.status, resp.headers, resp.body, waiting, engine.redact
            )
        except RemoteError as exc:
            if not is_transient(exc):
                out.update((t, (False, exc)) for t in waiting)
                return out
            continue
        still = []
        for tid in waiting:
            answer = answers[tid]
            if isinstance(answer, list):
                done = [item for item in answer if _results_in([item])]
                failed = [item for item in answer if item.get("status") == "error"]
                want = bodies[acked[tid]].get("numberResults") or 1
                if failed:
                    out[tid] = (
                        False,
                        RemoteError(
                            f"Runware reports task {tid} failed", task_uuid=tid, code="taskFailed"
                        ),
                    )
                elif len(done) >= (want if isinstance(want, int) else 1):
                    out[tid] = (True, done)
                else:
                    still.append(tid)
            elif is_transient(answer):
                still.append(tid)
            else:
                out[tid] = (False, answer)
        waiting = still
        if not waiting:
            return out
    for tid in waiting:
        out[tid] = (
            False,
            RemoteError(
                f"no results for asynchronous task {tid} after {attempts} getResponse polls",
                task_uuid=tid,
                code="timeout",
            ),
        )
    return out


def _jitter() -> float:
    import random

    return random.random()
