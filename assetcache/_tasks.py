"""Send a batch of Runware tasks, with retries and fresh taskUUIDs: uploads and deletes.

:func:`plan_tasks` is the one retrying loop: it POSTs ``(key, item)`` pairs as
one request, re-sends the transient failures under fresh taskUUIDs (a
taskUUID is never reused: the server may have seen it) with backoff, and
answers ``{key: TaskResult | error}``. Uploads (:func:`plan_send`) and
remote deletes (:func:`plan_delete`) differ only in their encoders.

Plans yield effects (``_effects``)::

    answers = yield from plan_send(engine, [(key, payload)])   # {key: (sent, outcome)}
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ._durations import format_duration
from ._effects import Http, Plan, Sleep
from ._engine import UNREACHABLE, Engine
from ._errors import AssetCacheError, RemoteError, SourceError
from ._protocol import (
    Payload,
    StillProcessing,
    Task,
    TaskResult,
    backoff_delay,
    body_length,
    get_response_body,
    is_transient,
    iter_body,
    json_body,
    media_gone,
    new_task_uuids,
    parse_response,
)
from ._storage._base import Key

log = logging.getLogger("assetcache")

#: ``encode([(taskUUID, item), ...])`` -> (re-callable chunk producer, body length).
Encoder = Callable[[list[tuple[str, Any]]], tuple[Callable[[], Any], int]]


def plan_tasks(
    engine: Engine,
    batch: Sequence[tuple[Any, Any]],
    encode: Encoder,
    uuid_field: str,
    what: str,
) -> Plan:
    """POST ``batch`` (``(key, item)`` pairs) as one request of tasks, re-sending the
    transient failures with fresh taskUUIDs and backoff; ``{key: TaskResult | error}``.

    ``encode([(taskUUID, item), ...])`` gives the body (a re-callable chunk
    producer) and its length. Shared by uploads and remote deletes.
    """
    url = engine.base_url
    headers = engine.headers()
    retry = engine.retry
    pending = list(range(len(batch)))
    out: dict[Any, TaskResult | AssetCacheError] = {}
    last: dict[int, AssetCacheError] = {}
    attempts = max(1, retry.attempts)
    for attempt in range(attempts):
        blocked = engine.breaker.blocked()
        if blocked is not None:  # the endpoint could not be reached, again and again
            for i in pending:
                out[batch[i][0]] = blocked
            return out
        by_task = dict(zip(new_task_uuids(len(pending)), pending, strict=True))
        body, length = encode([(tid, batch[i][1]) for tid, i in by_task.items()])
        retry_after: float | None = None
        try:
            try:
                resp = yield Http(url, headers, body, length, retry.timeout)
            except RemoteError as exc:
                if getattr(exc, "code", None) in UNREACHABLE and engine.breaker.failed(exc):
                    for i in pending:
                        out[batch[i][0]] = exc
                    return out
                raise
            engine.breaker.reached()
            engine.learn_server_time(resp.headers)
            answers = parse_response(
                resp.status, resp.headers, resp.body, list(by_task), engine.redact, uuid_field
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
            polls: dict[str, int] = {}
            for tid, i in by_task.items():
                answer = answers[tid]
                if isinstance(answer, TaskResult):
                    out[batch[i][0]] = answer
                elif isinstance(answer, StillProcessing):
                    polls[tid] = i  # stored, not ready: poll it, never send it again
                elif is_transient(answer):
                    still.append(i)
                    last[i] = answer
                    ra = getattr(answer, "retry_after", None)
                    if ra is not None:
                        retry_after = max(retry_after or 0.0, ra)
                else:
                    out[batch[i][0]] = answer
            if polls:
                polled = yield from plan_poll(engine, list(polls), uuid_field)
                for tid, i in polls.items():
                    out[batch[i][0]] = polled[tid]
            pending = still
        if not pending:
            break
        if retry_after is not None and retry_after > retry.max_retry_after:
            # Waiting longer than the policy allows would only stall the run.
            waited = format_duration(retry_after)
            limit = format_duration(retry.max_retry_after)
            for err in {id(last[i]): last[i] for i in pending}.values():
                err.message = (
                    f"{err.message}: the server asks to retry after {waited} "
                    f"(Retry-After), longer than the {limit} this cache waits; not retried"
                )
            for i in pending:
                out[batch[i][0]] = last[i]
            return out
        if attempt + 1 < attempts:
            engine.count(retries=1)
            log.info("retrying %d %s(s) after: %s", len(pending), what, last[pending[0]])
            yield Sleep(
                backoff_delay(
                    attempt,
                    retry_after,
                    base=retry.base_delay,
                    cap=retry.max_delay,
                    jitter=_jitter(),
                )
            )
    # One request-level error is shared by every task of the batch: amend it once.
    for err in {id(last[i]): last[i] for i in pending}.values():
        err.message = f"{err.message} (gave up after {attempts} attempts)"
    for i in pending:
        out[batch[i][0]] = last[i]
    return out


def plan_poll(engine: Engine, task_uuids: list[str], uuid_field: str) -> Plan:
    """Poll ``getResponse`` for tasks still processing (a mediaStorage placeholder),
    with backoff, at most ``retry.attempts`` times; ``{taskUUID: TaskResult | error}``."""
    retry = engine.retry
    headers = engine.headers()
    out: dict[str, TaskResult | AssetCacheError] = {}
    waiting = list(task_uuids)
    attempts = max(1, retry.attempts)
    for attempt in range(attempts):
        yield Sleep(
            backoff_delay(
                attempt, None, base=retry.base_delay, cap=retry.max_delay, jitter=_jitter()
            )
        )
        body = get_response_body(waiting)
        try:
            resp = yield Http(
                engine.base_url, headers, functools.partial(list, [body]), len(body), retry.timeout
            )
            answers = parse_response(
                resp.status, resp.headers, resp.body, waiting, engine.redact, uuid_field
            )
        except RemoteError as exc:
            if not is_transient(exc):
                for tid in waiting:
                    out[tid] = exc
                return out
            continue
        engine.count(polls=1)
        still = []
        for tid in waiting:
            answer = answers[tid]
            if isinstance(answer, TaskResult):
                out[tid] = answer
            elif is_transient(answer):  # still processing, or not reported yet
                still.append(tid)
            else:
                out[tid] = answer
        waiting = still
        if not waiting:
            return out
    for tid in waiting:
        out[tid] = RemoteError(
            f"Runware was still processing upload task {tid} after {attempts} polls "
            "(getResponse); not sent again, as that would upload it twice",
            task_uuid=tid,
            code="stillProcessing",
        )
    return out


def plan_server_time(engine: Engine) -> Plan:
    """One cheap request (a ``ping`` task) for the server's ``Date``; errors are
    fine (any answer carries the header), no answer leaves the time unknown."""
    body = json_body([{"taskType": "ping", "ping": True}])
    try:
        resp = yield Http(
            engine.base_url, engine.headers(), lambda: [body], len(body), engine.retry.timeout
        )
    except AssetCacheError as exc:
        log.info("could not learn the server's time: %s", exc)
        return
    engine.learn_server_time(resp.headers)


def _jitter() -> float:
    import random

    return random.random()


# -- uploads ------------------------------------------------------------------------------


def upload_encoder(task_type: str) -> Encoder:
    """The body of a request of ``imageUpload``/``mediaStorage`` upload tasks."""

    def encode(pairs: list[tuple[str, Payload]]) -> tuple[Callable[[], Any], int]:
        tasks = [Task(tid, payload, task_type) for tid, payload in pairs]
        return functools.partial(iter_body, tasks), body_length(tasks)

    return encode


def pack(
    items: list[tuple[Key, Payload]], batch_size: int, batch_bytes: int
) -> list[list[tuple[Key, Payload]]]:
    """Group uploads into requests bounded by task count and by body bytes."""
    batches: list[list[tuple[Key, Payload]]] = []
    current: list[tuple[Key, Payload]] = []
    size = 0
    for key, payload in items:
        n = payload.encoded_length()
        if current and (len(current) >= batch_size or size + n > batch_bytes):
            batches.append(current)
            current, size = [], 0
        current.append((key, payload))
        size += n
    if current:
        batches.append(current)
    return batches


def plan_send(engine: Engine, batch: list[tuple[Key, Payload]]) -> Plan:
    """POST one batch of uploads with retries: ``{key: (bytes sent, TaskResult | error)}``."""
    uuid_field = "mediaUUID" if engine.task_type == "mediaStorage" else "imageUUID"
    answers = yield from plan_tasks(
        engine, batch, upload_encoder(engine.task_type), uuid_field, "upload"
    )
    return {key: (payload.encoded_length(), answers[key]) for key, payload in batch}


# -- deletes ------------------------------------------------------------------------------


def delete_encoder(pairs: list[tuple[str, str]]) -> tuple[Callable[[], list[bytes]], int]:
    """The body of a request of ``mediaStorage`` ``delete`` tasks."""
    body = json_body(
        [
            {"taskType": "mediaStorage", "taskUUID": t, "operation": "delete", "media": u}
            for t, u in pairs
        ]
    )
    return (lambda: [body]), len(body)


def plan_delete(engine: Engine, uuids: list[str]) -> Plan:
    """``{uuid: "deleted" | "already gone" | error}``, batch by batch."""
    out: dict[str, str | AssetCacheError] = {}
    for start in range(0, len(uuids), engine.batch_size):
        part = uuids[start : start + engine.batch_size]
        answers = yield from plan_tasks(
            engine, [(u, u) for u in part], delete_encoder, "mediaUUID", "deletion"
        )
        for u, answer in answers.items():
            if isinstance(answer, TaskResult):
                if answer.image_uuid.lower() == u.lower():
                    out[u] = "deleted"
                else:
                    out[u] = RemoteError(
                        f"Runware confirmed deleting {answer.image_uuid}, not {u}",
                        task_uuid=answer.task_uuid,
                    )
            elif media_gone(answer):
                out[u] = "already gone"  # what deleting was for
            else:
                out[u] = answer
    return out
