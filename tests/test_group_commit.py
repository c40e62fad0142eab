"""Fewer transactions per cold batch: answers recorded together (group commit),
no fencing query for a lease just claimed, connections of ended threads reused,
parts of a few requests each, and the emulator not charging a request for the
others' turns on its interpreter."""

from __future__ import annotations

import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, engine_of, store_of, write_images

from assetcache import AssetCache
from assetcache._coalesce import Coalescer
from assetcache._errors import AssetCacheError
from assetcache.emulator import Emulator

# -- the coalescer -------------------------------------------------------------


class Gate:
    """A ``run`` that blocks until let go, recording the batches it was given."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.go = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.go.wait(10), "never let go"
        if self.fail_on in items:
            raise AssetCacheError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]


def call_in_threads(co: Coalescer, items: list[int]) -> dict[int, Any]:
    out: dict[int, Any] = {}

    def one(item: int) -> None:
        try:
            out[item] = co(item)
        except AssetCacheError as exc:
            out[item] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    return out, threads  # type: ignore[return-value]


def queued(co: Coalescer, n: int) -> bool:
    with co._lock:
        return len(co._queue) >= n


def wait_until(cond: Any) -> None:
    ev = threading.Event()
    for _ in range(2000):
        if cond():
            return
        ev.wait(0.005)
    raise AssertionError("condition never held")


def test_calls_arriving_while_one_runs_are_joined_into_the_next_run() -> None:
    gate = Gate()
    co: Coalescer[int, int] = Coalescer(gate)
    first, t1 = call_in_threads(co, [1])
    assert gate.entered.wait(10)
    rest, t2 = call_in_threads(co, [2, 3, 4])
    wait_until(lambda: queued(co, 3))  # all three wait behind the first run
    gate.go.set()
    for t in t1 + t2:
        t.join(10)
    assert first == {1: 10} and rest == {2: 20, 3: 30, 4: 40}
    assert gate.batches[0] == [1]
    assert sorted(gate.batches[1]) == [2, 3, 4] and len(gate.batches) == 2


def test_a_joined_run_that_fails_fails_only_the_bad_items_caller() -> None:
    gate = Gate(fail_on=3)
    co: Coalescer[int, int] = Coalescer(gate)
    first, t1 = call_in_threads(co, [1])
    assert gate.entered.wait(10)
    rest, t2 = call_in_threads(co, [2, 3, 4])
    wait_until(lambda: queued(co, 3))
    gate.go.set()
    for t in t1 + t2:
        t.join(10)
    assert rest[2] == 20 and rest[4] == 40
    assert isinstance(rest[3], AssetCacheError) and "bad item 3" in str(rest[3])
    # The joined run failed, then each item ran alone.
    assert [b for b in gate.batches if len(b) == 1].count([3]) == 1


def test_the_most_items_a_run_takes_is_bounded() -> None:
    gate = Gate()
    co: Coalescer[int, int] = Coalescer(gate, most=2)
    _, t1 = call_in_threads(co, [0])
    assert gate.entered.wait(10)
    out, t2 = call_in_threads(co, [1, 2, 3, 4, 5])
    wait_until(lambda: queued(co, 5))
    gate.go.set()
    for t in t1 + t2:
        t.join(10)
    assert out == {i: i * 10 for i in range(1, 6)}
    assert max(len(b) for b in gate.batches) == 2


def test_an_interrupted_run_leaves_no_caller_waiting() -> None:
    """Ctrl-C in the thread running a joined batch: it gets the interrupt, the
    others in its batch an error, and the coalescer works on."""
    go = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            assert go.wait(10)
        elif len(calls) == 2:
            raise KeyboardInterrupt
        return items

    co: Coalescer[int, int] = Coalescer(run)
    out: dict[int, Any] = {}

    def one(item: int) -> None:
        try:
            out[item] = co(item)
        except BaseException as exc:  # noqa: BLE001 - the interrupt, as the caller sees it
            out[item] = exc

    first = threading.Thread(target=one, args=(1,))
    first.start()
    wait_until(lambda: len(calls) == 1)
    rest = [threading.Thread(target=one, args=(i,)) for i in (2, 3)]
    for t in rest:
        t.start()
    wait_until(lambda: queued(co, 2))
    go.set()
    for t in [first, *rest]:
        t.join(10)
    assert out[1] == 1
    kinds = sorted(type(out[i]).__name__ for i in (2, 3))
    assert kinds == ["AssetCacheError", "KeyboardInterrupt"]
    assert co(4) == 4


def test_a_forked_child_does_not_wait_for_the_parents_run(monkeypatch) -> None:
    co: Coalescer[int, int] = Coalescer(lambda items: items)
    co._busy = True  # as if a parent thread were mid-run at the fork
    monkeypatch.setattr(os, "getpid", lambda: co._pid + 1)
    assert co(7) == 7


# -- the engine's use of it ---------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """``(emulator, make)``: ``make(**kwargs)`` opens a cache on a new database."""
    with Emulator(api_key=API_KEY, latency=0.02) as emu:
        opened: list[AssetCache] = []

        def make(**kwargs: Any) -> AssetCache:
            cache = AssetCache(API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", **kwargs)
            opened.append(cache)
            return cache

        yield emu, make
        for cache in opened:
            cache.close()


def test_a_big_batch_commits_fewer_transactions_than_it_sends_requests(
    served: Any, tmp_path: Path
) -> None:
    emu, make = served
    cache = make(batch_size=4, concurrency=8)
    store = store_of(cache)
    writes: list[str] = []
    real = store.write

    def counting(doing: str = "write") -> Any:
        writes.append(doing)
        return real(doing)

    store.write = counting  # type: ignore[method-assign]
    files = write_images(tmp_path / "in", *range(96))
    results = cache.resolve_many(files)
    assert [r.outcome for r in results] == ["uploaded"] * 96
    requests = emu.request_count
    assert requests >= 24  # 96 images, 4 per request
    # Claimed per part (of two requests), fenced without a query (just
    # claimed), recorded in groups: fewer writes than requests.
    assert writes.count("claim uploads") <= requests // 2
    assert "renew upload leases" not in writes
    assert writes.count("record uploads") <= requests
    # Every upload is in the database, exactly once.
    rows = store.read("SELECT count(*), count(DISTINCT image_uuid) FROM assets")
    assert tuple(rows[0]) == (96, 96)


def test_a_lease_claimed_long_ago_is_fenced_by_the_database(served: Any) -> None:
    cache = served[1]()
    engine = engine_of(cache)
    clock = [1000.0]
    engine.monotonic = lambda: clock[0]
    key = (engine.namespace, "ab" * 16, "")
    assert engine.claim([key]) == {key: "claimed"}
    asked: list[list[Any]] = []
    real = engine.registry.renew

    def renew(keys: Any, owner: str, expires: float) -> set[Any]:
        asked.append(list(keys))
        return real(keys, owner, expires)

    engine.registry.renew = renew
    clock[0] += engine.lease_ttl * 0.05  # just claimed: ours without asking
    assert engine.renew([key]) == {key} and asked == []
    clock[0] += engine.lease_ttl  # long ago: it may have expired and been taken
    store = store_of(cache)
    with store.write("take over") as conn:  # another owner holds it now
        conn.execute("UPDATE leases SET owner = 'someone-else'")
    assert engine.renew([key]) == set() and asked == [[key]]


def test_connections_of_ended_threads_are_reused_not_piled_up(served: Any) -> None:
    cache = served[1]()
    store = store_of(cache)
    store.conn()  # this thread's
    for _ in range(20):  # threads that come and go, one at a time
        t = threading.Thread(target=lambda: store.read("SELECT 1"))
        t.start()
        t.join(10)
    assert len(store._conns) == 2
    seen: list[Any] = []
    started, done = threading.Barrier(4), threading.Event()

    def hold() -> None:
        seen.append(store.conn())
        started.wait(10)
        done.wait(10)

    side = [threading.Thread(target=hold) for _ in range(3)]
    for t in side:
        t.start()
    started.wait(10)
    assert len({id(c) for c in seen}) == 3  # threads alive at once: their own
    done.set()
    for t in side:
        t.join(10)
    assert len(store._conns) == 4


def test_a_connection_opened_before_a_fork_is_not_reused_in_the_child(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = served[1]()
    store = store_of(cache)
    t = threading.Thread(target=lambda: store.read("SELECT 1"))
    t.start()
    t.join(10)
    parent = set(map(id, store._conns))
    monkeypatch.setattr(os, "getpid", lambda: -1)  # "in the child"
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(store.conn()))
    t.start()
    t.join(10)
    assert id(got[0]) not in parent


# -- the emulator's latency --------------------------------------------------------------


def answer_delay(
    monkeypatch: pytest.MonkeyPatch, wall: list[float], cpu: list[float]
) -> list[float]:
    """What the emulator sleeps for one request, its clocks reading ``wall`` and
    ``cpu`` at arrival and once processed (injected: no real time passes)."""
    from assetcache.emulator import _emulator

    walls, cpus = iter(wall), iter(cpu)
    slept: list[float] = []
    fake = types.SimpleNamespace(
        monotonic=lambda: next(walls),
        thread_time=lambda: next(cpus),
        sleep=slept.append,
        time=__import__("time").time,
    )
    emu = Emulator(api_key=API_KEY, latency=0.05)
    monkeypatch.setattr(emu, "_processed", lambda fault, body, auth: "reply")
    monkeypatch.setattr(_emulator, "time", fake)
    assert emu.handle_api(b"[]", f"Bearer {API_KEY}") == "reply"
    return slept


def test_the_emulator_does_not_charge_a_request_for_the_others_turns(monkeypatch) -> None:
    """A request that arrived at t=100 s, waited 30 ms for the interpreter and
    worked 4 ms of CPU is answered at 100 s + latency + 4 ms."""
    assert answer_delay(monkeypatch, [100.0, 100.030], [5.0, 5.004]) == [pytest.approx(0.024)]


def test_an_emulator_answer_takes_at_least_its_latency(monkeypatch) -> None:
    """Processed at once: the whole latency is waited out after it."""
    assert answer_delay(monkeypatch, [100.0, 100.0], [5.0, 5.0]) == [pytest.approx(0.05)]
