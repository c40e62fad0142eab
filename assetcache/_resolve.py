"""Resolve plans: sources in, one :class:`Resolution` per source out.

:func:`plan_resolve_many` runs in named phases, each a plan of its own:

1. warm hits: a path whose stat data and asset are known answers at once;
2. :func:`plan_prepare`: the rest are classified, hashed and validated
   (``_ingest``) on worker threads;
3. :func:`plan_settle`: fresh registry rows answer what they can;
4. :func:`plan_claim_loop`: per content key, in-process single flight, then a
   lease (``claimed``: we upload; ``held``: another process does, poll);
5. :func:`plan_upload_groups`: the claimed keys are packed into requests
   (resized first where the transform says so), sent side by side, and each
   request's uploads recorded as soon as it answers.

Failures are values: one bad source never fails the batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from . import _policy
from ._durations import format_duration
from ._effects import (
    Acquire,
    Call,
    Concurrent,
    Map,
    Plan,
    Release,
    Sleep,
    Slots,
    Wait,
    plan_in_slot,
)
from ._engine import Engine
from ._errors import AssetCacheError, SourceError, StoreError
from ._ingest import Prepared, label_of
from ._models import Resolution
from ._protocol import TaskResult
from ._sources import SourceLike
from ._storage._base import AssetRow, FileRow, Key
from ._tasks import pack, plan_send, plan_server_time

log = logging.getLogger("assetcache")

#: Parts of a big batch prepared ahead of the requests in flight: one per this
#: many slots (8 requests in flight: 4 more requests' worth hash and claim
#: meanwhile).
PARTS_AHEAD = 2

#: Requests per part of a big batch (at most; at least two parts send side by
#: side). A part is read and hashed, looked up, claimed and recorded as one: a
#: few statements and transactions for all of its items, where parts of one
#: request each would pay them for every request. Its requests go out side by
#: side, each holding a slot of the batch's.
PART_REQUESTS = 2

#: Originals resized per upload group: big photos go a few per request, as soon
#: as they are ready; small conversions (BMP, GIF) still share requests.
FIT_GROUP_BYTES = 4 << 20

Results = list[Resolution | None]
#: Items waiting on one content key: ``(index in the results, prepared item)``.
Groups = dict[Key, list[tuple[int, Prepared]]]


class _Retry(SourceError):
    """Tells in-process followers to ask again (the key is held elsewhere)."""

    def __init__(self) -> None:
        super().__init__("", "held by another process")


def failed(label: str, err: AssetCacheError) -> Resolution:
    return Resolution(label, None, None, "failed", err)


def plan_resolve_many(
    engine: Engine,
    sources: Sequence[SourceLike | Prepared],
    concurrency: int | None,
    force: Collection[Key] = (),
    touch: bool = True,
) -> Plan:
    """Resolve every source; results in input order, failures as values.

    Keys in ``force`` are uploaded again even if fresh (``refresh``).
    ``touch=False``: serving slides no window (the task path records the
    task's outcome instead, with :meth:`Engine.record_evidence`).
    """
    limit = max(1, concurrency or engine.concurrency)
    started = engine.stamp_now() if force else 0.0
    results: Results = [None] * len(sources)
    sizes: dict[int, int] = {}  # of the paths, as their hit check found them
    if not force:
        results = list(engine.fast_hits(sources, touch, sizes))
    todo = [i for i, r in enumerate(results) if r is None]
    verbose = log.isEnabledFor(logging.INFO)
    if verbose:
        for r in results:
            if r is not None:
                log.info("%s: hit, served from the file index (stat unchanged, not read)", r.source)
    if not todo:
        return results
    step = engine.batch_size
    if limit == 1 or len(todo) <= step:
        yield from plan_resolve_part(engine, sources, todo, force, started, limit, results, touch)
        return results
    # A big batch goes in parts of one request each. At most ``limit`` requests
    # are in flight (``gate``), and a few more parts hash, look up and claim
    # meanwhile, so a request goes out as soon as another answers: at most
    # ``limit + ahead`` parts' bytes are in memory, each part about a request's.
    per_part = max(1, min(PART_REQUESTS, limit // 2))
    parts = yield Call(  # stats the files the hit check did not
        split_parts, sources, todo, step * per_part, engine.batch_bytes * per_part, sizes
    )
    gate = Slots(limit)
    hashing = Slots(engine.hash_workers)
    outcomes = yield Concurrent(
        [
            plan_resolve_part(
                engine, sources, part, force, started, per_part, results, touch, gate, hashing
            )
            for part in parts
        ],
        -(-limit // per_part) + max(1, limit // (PARTS_AHEAD * per_part)),
    )
    for part, outcome in zip(parts, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            err = (
                outcome
                if isinstance(outcome, AssetCacheError)
                else AssetCacheError(f"upload failed: {type(outcome).__name__}: {outcome}")
            )
            for i in part:
                if results[i] is None:
                    results[i] = failed(label_of(sources[i]), err)
                    engine.count(failures=1)
    return results


def split_parts(
    sources: Sequence[Any],
    todo: list[int],
    count: int,
    budget: int,
    known: Mapping[int, int] | None = None,
) -> list[list[int]]:
    """``todo`` in parts, in order: at most ``count`` items and, as far as sizes
    are known before reading (``known``, by index, else a ``stat`` of each
    path), ``budget`` bytes (what a part holds in memory while it waits to
    send). Other sizes count as a request's share of the budget.

    >>> split_parts([b"x" * 60, b"y" * 60, b"z"], [0, 1, 2], 16, 100)
    [[0], [1, 2]]
    """
    guess = max(1, budget // max(1, count))
    sizes = dict.fromkeys(todo, guess)
    for i in todo:
        src = sources[i]
        if isinstance(src, Prepared):
            sizes[i] = src.size
        elif isinstance(src, (bytes, bytearray, memoryview)):
            sizes[i] = len(src)
    known = known or {}
    sizes.update((i, known[i]) for i in todo if i in known)
    named = [i for i in todo if i not in known and isinstance(sources[i], (str, PurePath))]
    for i, found in zip(named, Engine.stat_paths([str(sources[i]) for i in named]), strict=True):
        if found is not None:
            sizes[i] = found[1].st_size
    parts: list[list[int]] = []
    part: list[int] = []
    size = 0
    for i in todo:
        if part and (len(part) >= count or size + sizes[i] > budget):
            parts.append(part)
            part, size = [], 0
        part.append(i)
        size += sizes[i]
    if part:
        parts.append(part)
    return parts


def plan_resolve_part(
    engine: Engine,
    sources: Sequence[SourceLike | Prepared],
    todo: list[int],
    force: Collection[Key],
    started: float,
    limit: int,
    results: Results,
    touch: bool = True,
    gate: Slots | None = None,
    hashing: Slots | None = None,
) -> Plan:
    """Phases 2 to 5 for ``sources[i]``, ``i`` in ``todo``, at most ``limit``
    requests at once (each also holding a slot of ``gate``, shared with the
    other parts of a batch), filling their slots of ``results``.

    A part of a big batch hashes on its own thread, holding a slot of
    ``hashing`` (as many as the cache has hashing threads): handing 16 small
    files to the hashing threads costs more thread switches than it saves, and
    parts taking turns in order get the first request out soonest, where all of
    them hashing at once would finish together."""
    verbose = log.isEnabledFor(logging.INFO)
    if hashing is None:
        ready = yield from plan_prepare(engine, sources, todo, results, engine.hash_workers)
        groups = yield from plan_settle(engine, ready, force, results, touch)
    else:
        groups = yield from plan_in_slot(
            hashing, plan_prepare_settle(engine, sources, todo, results, force, touch)
        )
    if groups is not None:
        if verbose:
            log_upload_reasons(engine, groups, force)
        yield from plan_claim_loop(engine, groups, force, started, limit, results, gate)
    if verbose:
        for i in todo:
            r = results[i]
            if r is None:
                continue
            if r.outcome == "failed":
                log.info("%s: skipped: %s", r.source, getattr(r.error, "reason", None) or r.error)
            elif r.outcome == "hit":
                log.info("%s: hit by content (hashed; the same bytes are cached)", r.source)
            else:
                log.info("%s: %s (%s)", r.source, r.outcome, r.uuid)


def plan_prepare_settle(
    engine: Engine,
    sources: Sequence[Any],
    todo: list[int],
    results: Results,
    force: Collection[Key],
    touch: bool,
) -> Plan:
    """:func:`plan_prepare` on this thread, then :func:`plan_settle`."""
    ready = yield from plan_prepare(engine, sources, todo, results, 1)
    return (yield from plan_settle(engine, ready, force, results, touch))


def log_upload_reasons(engine: Engine, groups: Groups, force: Collection[Key]) -> None:
    """Say (at -v) why each content needs an upload: new, expired, renewal."""
    now = engine.clock()
    for key, members in groups.items():
        label = members[0][1].label
        if key in force:
            log.info("%s: uploading again ahead of expiry (refresh)", label)
            continue
        try:
            row = engine.registry.get_asset(key)
        except AssetCacheError:
            row = None
        if row is None:
            log.info("%s: uploading: new content (%s), never uploaded", label, key[1][:12])
        else:
            ago = format_duration(now - row.last_used_at)
            log.info(
                "%s: re-uploading: the old upload %s is expired or was rejected "
                "(last use recorded %s ago)",
                label,
                row.image_uuid,
                ago,
            )


def plan_prepare(
    engine: Engine, sources: Sequence[Any], todo: list[int], results: Results, workers: int
) -> Plan:
    """Prepare ``sources[i]`` for each ``i`` in ``todo`` on up to ``workers``
    threads; the ready ones as ``(i, prepared)``, the others failed in ``results``."""
    # The file index of all the paths in one query, not one per file.
    objs, indexed = yield Call(engine.ingest.index_files, [sources[i] for i in todo])
    prepared: list[Prepared | AssetCacheError] = yield Map(
        engine.prepare, objs, workers if len(todo) > 1 else 1
    )
    if indexed:
        yield Call(engine.ingest.drop_index, indexed, inline=True)
    ready: list[tuple[int, Prepared]] = []
    for i, p in zip(todo, prepared, strict=True):
        if isinstance(p, AssetCacheError):
            results[i] = failed(label_of(sources[i]), p)
            engine.count(failures=1)
        else:
            ready.append((i, p))
    return ready


def plan_settle(
    engine: Engine,
    ready: list[tuple[int, Prepared]],
    force: Collection[Key],
    results: Results,
    touch: bool = True,
) -> Plan:
    """Answer the items whose rows are fresh; the rest grouped by key (``None``
    when the store cannot answer: every item then failed with its reason)."""
    try:
        rows = yield Call(engine.settle, [p for _, p in ready], force, touch)
        if rows is None:  # a row in doubt: learn the server's time (once), then decide
            yield from plan_server_time(engine)
            rows = yield Call(engine.settle, [p for _, p in ready], force, touch, True)
    except AssetCacheError as exc:
        fail_group(engine, results, ready, exc)
        return None
    groups: Groups = {}
    for (i, p), row in zip(ready, rows, strict=True):
        if row is not None:
            results[i] = engine.resolution(p.label, row, "hit")
            engine.count(hits=1, bytes_saved=p.size)
        else:
            groups.setdefault(p.key, []).append((i, p))
    return groups


def plan_claim_loop(
    engine: Engine,
    groups: Groups,
    force: Collection[Key],
    started: float,
    limit: int,
    results: Results,
    gate: Slots | None = None,
) -> Plan:
    """Until every key is answered: lead or follow in this process, claim the
    lease, upload what we claimed, wait for what others hold."""
    late_files: list[FileRow] = []  # stat rows of items answered by someone else's upload
    waited: set[Key] = set()  # keys this call waited on another process for (metrics)
    poll = 0.02
    chunk = engine.batch_size * limit  # keys leased at a time: one round of requests
    elsewhere: dict[Key, None] = {}  # keys another process held at the last look, in order
    while groups:
        # A round looks at the keys held elsewhere (polled) and at most a chunk
        # of the others, not at every key left: a big batch in one part would
        # otherwise look up and fly each key once per round (quadratic).
        window = [key for key in elsewhere if key in groups]
        fresh = 0
        for key in groups:
            if fresh >= chunk:
                break
            if key not in elsewhere:
                window.append(key)
                fresh += 1
        beyond = len(groups) > len(window)  # keys for a later round
        lead, follow = engine.join_flights(window)
        claimed: dict[Key, AssetRow | str] = {}
        if lead:
            try:
                claimed = yield Call(engine.claim, lead, force, started, chunk)
            except AssetCacheError as exc:
                for key in lead:
                    engine.land(key, exc)
                    fail_group(engine, results, groups.pop(key), exc)
                claimed = {}
        to_upload: list[Key] = []
        held: list[Key] = []
        for key, state in claimed.items():
            if isinstance(state, AssetRow):
                engine.land(key, state)
                hit_group(engine, results, groups.pop(key), state, late_files)
            elif state == "claimed":
                to_upload.append(key)
            elif state == "later":  # free, beyond this round's chunk: the next round's
                engine.land(key, _Retry())
            else:
                held.append(key)

        if to_upload:
            yield from plan_upload_groups(engine, results, groups, to_upload, limit, gate)

        for key, fut in follow.items():
            try:
                row = yield Wait(fut)
            except SourceError:
                continue  # the leader's own input failed; ours may be fine: try again
            except AssetCacheError as exc:
                fail_group(engine, results, groups.pop(key), exc)
                continue
            hit_group(engine, results, groups.pop(key), row, late_files)

        newly_held = any(key not in elsewhere for key in held)
        elsewhere = dict.fromkeys(held)
        if held:
            fresh_waits = [k for k in held if k not in waited]
            if fresh_waits:
                waited.update(fresh_waits)
                engine.count(lease_waits=len(fresh_waits))
            # Another process holds the lease: keep our in-process flight (so
            # our own threads keep waiting on us) and poll for its result.
            for key in held:
                engine.land(key, _Retry())
            # Nothing sent this round: wait, unless keys beyond this round's
            # window may be free (the ones looked at were all held elsewhere).
            if not to_upload and not (newly_held and beyond):
                yield Sleep(poll)
                poll = min(poll * 2, 0.25)

    if late_files:
        try:
            yield Call(engine.store.put_files, late_files)
        except StoreError as exc:  # the answers stand; only the stat shortcut is lost
            log.warning("could not record file hashes: %s", exc)


def plan_upload_groups(
    engine: Engine,
    results: Results,
    groups: Groups,
    keys: list[Key],
    limit: int,
    gate: Slots | None = None,
) -> Plan:
    """Upload the claimed ``keys`` (their first item each), at most ``limit``
    requests at once; every item of a key gets the outcome.

    In a big batch (``limit`` 1), each request also holds a slot of the shared
    ``gate`` while it is on its way, and only then: the first is taken before
    the fencing renewal, so the renewal and the upload follow each other at once
    however long the wait, and every slot is freed as soon as its request
    answers, before the answers are recorded."""
    if gate is not None:
        yield Acquire(gate)
    try:
        # Fencing: upload only what we still hold, its lease renewed just now; a
        # process stalled since its claim may have been taken over meanwhile.
        try:
            mine = yield Call(engine.renew, keys)
        except AssetCacheError as exc:
            with contextlib.suppress(AssetCacheError):
                yield Call(engine.release, keys)
            for key in keys:
                engine.land(key, exc)
                fail_group(engine, results, groups.pop(key), exc)
            mine = set()
        for key in keys:
            if key not in mine:
                engine.land(key, _Retry())  # another host's now: wait for its upload
        keys = [key for key in keys if key in mine]
        leaders = {key: groups[key][0][1] for key in keys}
        try:
            found = yield Call(engine.registry.get_assets, keys, inline=True)
            previous = {k: row.image_uuid for k, row in found.items()}
        except AssetCacheError:
            previous = {}  # only the outcome's name depends on it
        batches = pack(
            [(key, leaders[key].payload()) for key in keys if not key[2]],
            engine.batch_size,
            engine.batch_bytes,
        )
        plans = [plan_send(engine, batch) for batch in batches]
        slots = [[key for key, _ in batch] for batch in batches]
        # Keys with a variant are resized first (decode, re-encode): in small
        # groups, each sent as soon as it is ready, so resizing overlaps uploading.
        for group in fit_groups(engine, [key for key in keys if key[2]], leaders):
            plans.append(plan_fit_send(engine, [(key, leaders[key]) for key in group]))
            slots.append(group)
    except Exception:
        if gate is not None:  # the slot taken above: no request holds it yet
            yield Release(gate)
        raise
    if not plans:
        if gate is not None:
            yield Release(gate)
        return
    failures: dict[Key, AssetCacheError] = {}
    outcomes = yield Concurrent(
        [
            plan_recorded(engine, plan, leaders, groups, gate, held=i == 0)
            for i, plan in enumerate(plans)
        ],
        limit,
    )
    recorded: dict[Key, tuple[AssetRow, int]] = {}
    unrecorded: dict[Key, tuple[TaskResult, int, AssetCacheError]] = {}
    for slot, outcome in zip(slots, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            err = (
                outcome
                if isinstance(outcome, AssetCacheError)
                else AssetCacheError(f"upload failed: {type(outcome).__name__}: {outcome}")
            )
            for key in slot:
                failures[key] = err
            continue
        answers, rows, record_error = outcome
        for key, (sent, res) in answers.items():
            if key in rows:
                recorded[key] = (rows[key], sent)
            elif isinstance(res, TaskResult):
                unrecorded[key] = (res, sent, record_error or AssetCacheError("not recorded"))
            else:
                failures[key] = res
    if unrecorded:
        recorded.update((yield from plan_record_again(engine, leaders, unrecorded, failures)))
    for key, (row, sent) in recorded.items():
        outcome_name = _policy.outcome_for_upload(previous.get(key))
        engine.count(
            uploads=1,
            bytes_sent=sent,
            misses=1,
            reuploads=1 if outcome_name == "reuploaded" else 0,
        )
        members = groups.pop(key)
        engine.note_served(key, row.last_used_at)
        first_i, first_p = members[0]
        results[first_i] = engine.resolution(first_p.label, row, outcome_name, sent)
        hit_group(engine, results, members[1:], row)
        engine.land(key, row)
    if failures:
        with contextlib.suppress(AssetCacheError):
            yield Call(engine.release, list(failures))
        for key, err in failures.items():
            engine.land(key, err)
            fail_group(engine, results, groups.pop(key), err)


#: Pauses before recording again uploads that could not be recorded (a full
#: disk, a shared store that blipped): the run ends after these at the latest.
RECORD_RETRIES = (0.05, 0.25, 1.0)


def plan_record_again(
    engine: Engine,
    leaders: dict[Key, Prepared],
    unrecorded: dict[Key, tuple[TaskResult, int, AssetCacheError]],
    failures: dict[Key, AssetCacheError],
) -> Plan:
    """Record again (without the best-effort stat rows) uploads Runware accepted
    but the store refused; what still cannot be recorded fails, naming its UUID."""
    keys = list(unrecorded)
    last: AssetCacheError = unrecorded[keys[0]][2]
    for pause in RECORD_RETRIES:
        yield Sleep(pause)
        try:
            stored = yield Call(
                engine.record, [(leaders[k], unrecorded[k][0], unrecorded[k][1]) for k in keys], []
            )
        except AssetCacheError as exc:
            last = exc
            continue
        return {key: (row, unrecorded[key][1]) for key, row in zip(keys, stored, strict=True)}
    log.warning("could not record %d upload(s): %s", len(keys), last)
    for key in keys:
        uuid = unrecorded[key][0].image_uuid
        failures[key] = StoreError(
            f"uploaded to Runware as {uuid}, but the upload could not be recorded "
            f"({last}); the next run uploads it again"
        )
    return {}


def plan_recorded(
    engine: Engine,
    send: Plan,
    leaders: dict[Key, Prepared],
    groups: Groups,
    gate: Slots | None = None,
    held: bool = False,
) -> Plan:
    """Run one request's plan and record its successes as soon as it answers,
    so a crash later in a long batch loses only the requests in flight.

    With a ``gate``, the request holds one of its slots (``held``: taken
    already) until it answers; the recording then runs without it."""
    if gate is not None:
        if not held:
            yield Acquire(gate)
        try:
            answers = yield from send
        except Exception:
            yield Release(gate)
            raise
        yield Release(gate)
    else:
        answers = yield from send
    done = [(key, sent, res) for key, (sent, res) in answers.items() if isinstance(res, TaskResult)]
    if done:
        # A UUID this account already holds for other bytes is used for neither.
        bad = yield Call(engine.vet, [(key, res) for key, _, res in done])
        for key, err in bad.items():
            answers[key] = (answers[key][0], err)
        done = [d for d in done if d[0] not in bad]
    rows: dict[Key, AssetRow] = {}
    error: AssetCacheError | None = None
    if done:
        files = [p.file_row for key, _, _ in done for _, p in groups[key] if p.file_row]
        try:
            stored = yield Call(
                engine.record, [(leaders[k], res, sent) for k, sent, res in done], files
            )
        except AssetCacheError as exc:
            error = exc
        else:
            rows = {key: row for (key, _, _), row in zip(done, stored, strict=True)}
    return answers, rows, error


def plan_fit_send(engine: Engine, items: list[tuple[Key, Prepared]]) -> Plan:
    """Make the resized payloads (on a worker thread), then send them."""
    made = yield Call(engine.ingest.make_payloads, [p for _, p in items])
    out: dict[Key, tuple[int, TaskResult | AssetCacheError]] = {}
    ready: list[tuple[Key, Any]] = []
    for (key, _), payload in zip(items, made, strict=True):
        if isinstance(payload, AssetCacheError):
            out[key] = (0, payload)
        else:
            ready.append((key, payload))
    for batch in pack(ready, engine.batch_size, engine.batch_bytes):
        out.update((yield from plan_send(engine, batch)))
    return out


def fit_groups(engine: Engine, keys: list[Key], leaders: dict[Key, Prepared]) -> list[list[Key]]:
    """Keys to resize, grouped up to ``batch_size`` items or 4 MB of originals."""
    out: list[list[Key]] = []
    size = 0
    for key in keys:
        if not out or len(out[-1]) >= engine.batch_size or size >= FIT_GROUP_BYTES:
            out.append([])
            size = 0
        out[-1].append(key)
        size += leaders[key].size
    return out


def hit_group(
    engine: Engine,
    results: Results,
    members: Sequence[tuple[int, Prepared]],
    row: AssetRow,
    files: list[FileRow] | None = None,
) -> None:
    for i, p in members:
        results[i] = engine.resolution(p.label, row, "hit")
        engine.count(hits=1, bytes_saved=p.size)
        if files is not None and p.file_row is not None:
            files.append(p.file_row)
    if members:
        engine.note_served(row.key, engine.judge_now())


def fail_group(
    engine: Engine,
    results: Results,
    members: Sequence[tuple[int, Prepared]],
    err: AssetCacheError,
) -> None:
    for i, p in members:
        results[i] = failed(p.label, err)
        engine.count(failures=1)
    if isinstance(err, StoreError):
        engine.count(store_errors=1)
