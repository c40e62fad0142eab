"""Cold batches: requests in flight bounded by slots while parts prepare ahead,
the file index read per part, answers vetted per request, the emulator's decoding."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FAST_RETRY
from helpers import API_KEY, engine_of, make_png

from assetcache import AssetCache, AsyncAssetCache
from assetcache._effects import (
    Call,
    Concurrent,
    Driver,
    Sleep,
    Slots,
    plan_in_slot,
    run_async,
    run_sync,
)
from assetcache.emulator._media import MediaError, decode


class Gauge:
    """How many holders at once, and the most seen."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def held(gauge: Gauge, fail: bool = False) -> Any:
    yield Call(gauge.enter)
    yield Sleep(0.01)
    yield Call(gauge.leave)
    if fail:
        raise ValueError("boom")
    return "done"


def many(gauge: Gauge, slots: Slots) -> Any:
    plans = [plan_in_slot(slots, held(gauge, fail=i % 3 == 0)) for i in range(9)]
    return (yield Concurrent(plans, 6))


def answer_uploads(request: httpx.Request) -> httpx.Response:
    """What Runware answers a request of uploads: a fresh UUID for each task."""
    data = [
        {"taskType": "imageUpload", "taskUUID": t["taskUUID"], "imageUUID": str(uuid.uuid4())}
        for t in json.loads(request.content)
    ]
    return httpx.Response(200, json={"data": data})


def pngs(tmp_path: Path, prefix: str, seeds: range, *size: int) -> list[Path]:
    """A distinct PNG file per seed (of ``size``, width and height, if given)."""
    files = []
    for seed in seeds:
        path = tmp_path / f"{prefix}{seed}.png"
        path.write_bytes(make_png(seed, *size))
        files.append(path)
    return files


def mocked(tmp_path: Path, server: Any, **settings: Any) -> AssetCache:
    """A cache whose requests go to ``server`` (an httpx.MockTransport handler)."""
    return AssetCache(
        API_KEY,
        base_url="http://127.0.0.1:9/v1",
        db_path=tmp_path / "c.db",
        transport=httpx.MockTransport(server),
        retry=FAST_RETRY,
        **settings,
    )


def test_slots_bound_plans_run_side_by_side_in_both_drivers() -> None:
    for run in (
        lambda plan: run_sync(plan, Driver()),
        lambda plan: asyncio.run(run_async(plan, Driver())),
    ):
        gauge = Gauge()
        slots = Slots(2)
        outcomes = run(many(gauge, slots))
        assert gauge.most <= 2 and gauge.now == 0
        assert [isinstance(o, ValueError) for o in outcomes] == [i % 3 == 0 for i in range(9)]
        # A plan that failed gave its slot back: all of them are free again.
        again = Gauge()
        run(many(again, slots))
        assert 1 <= again.most <= 2


def test_a_big_cold_batch_never_has_more_requests_in_flight_than_concurrency(
    tmp_path: Path,
) -> None:
    gauge = Gauge()

    def server(request: httpx.Request) -> httpx.Response:
        gauge.enter()
        try:
            return answer_uploads(request)
        finally:
            gauge.leave()

    files = pngs(tmp_path, "c", range(50_000, 50_120))
    with mocked(tmp_path, server, batch_size=4, concurrency=3) as cache:
        out = cache.resolve_many(files)
        assert [r.outcome for r in out] == ["uploaded"] * 120
        assert gauge.most <= 3


def test_a_request_frees_its_slot_before_its_answers_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two slots; the first two requests' recordings are held up. Their slots are
    # free by then, so the other requests still go out (they would all wait if
    # a slot were held until its answers were recorded).
    sent: list[int] = []
    all_sent = threading.Event()

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(len(json.loads(request.content)))
        if len(sent) == 6:
            all_sent.set()
        return answer_uploads(request)

    files = pngs(tmp_path, "s", range(60_000, 60_006))
    with mocked(tmp_path, server, batch_size=1, concurrency=2) as cache:
        engine = engine_of(cache)
        real_record = engine.record
        calls: list[bool] = []
        calls_lock = threading.Lock()

        def slow_record(*args: Any, **kwargs: Any) -> Any:
            with calls_lock:
                calls.append(True)
                first_two = len(calls) <= 2
            if first_two:
                calls.append(all_sent.wait(10))  # bounded: fails rather than hangs
            return real_record(*args, **kwargs)

        monkeypatch.setattr(engine, "record", slow_record)
        out = cache.resolve_many(files)
    assert [r.outcome for r in out] == ["uploaded"] * 6
    assert sent == [1] * 6
    assert all(calls), "the other requests waited for the held-up recordings"


def test_files_rehashed_in_a_batch_hit_by_content(make_cache, emu, tmp_path: Path) -> None:
    cache = make_cache(batch_size=8)
    files = []
    for i in range(40):
        path = tmp_path / f"r{i}.png"
        path.write_bytes(make_png(60_000 + i))
        files.append(path)
    assert {r.outcome for r in cache.resolve_many(files)} == {"uploaded"}
    uploads = emu.upload_count
    for path in files[::2]:  # same bytes, new stat data: read and hashed again
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (tmp_path / "r1.png").write_bytes(make_png(61_000))  # new content: uploaded
    out = cache.resolve_many(files)
    assert [r.outcome for r in out] == ["hit"] + ["uploaded"] + ["hit"] * 38
    assert emu.upload_count == uploads + 1


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_an_answer_reusing_the_uuid_of_other_bytes_is_refused_in_a_batch(
    tmp_path: Path, twin: str
) -> None:
    first = str(uuid.uuid4())
    answers: list[str] = [first]

    def server(request: httpx.Request) -> httpx.Response:
        tasks = json.loads(request.content)
        data = []
        for t in tasks:
            image = answers.pop(0) if answers else str(uuid.uuid4())
            data.append({"taskType": "imageUpload", "taskUUID": t["taskUUID"], "imageUUID": image})
        return httpx.Response(200, json={"data": data})

    kwargs: dict[str, Any] = {
        "base_url": "http://127.0.0.1:9/v1",
        "db_path": tmp_path / "c.db",
        "transport": httpx.MockTransport(server),
        "retry": FAST_RETRY,
    }
    batch = [make_png(70_000 + i) for i in range(5)]
    if twin == "sync":
        with AssetCache(API_KEY, **kwargs) as cache:
            assert cache.resolve(make_png(69_999)).uuid == first
            answers.extend([str(uuid.uuid4()), first])  # the batch's 2nd answer reuses it
            out = cache.resolve_many(batch)
            again = cache.resolve(make_png(69_999))
    else:

        async def main() -> Any:
            async with AsyncAssetCache(API_KEY, **kwargs) as cache:
                assert (await cache.resolve(make_png(69_999))).uuid == first
                answers.extend([str(uuid.uuid4()), first])
                out = await cache.resolve_many(batch)
                return out, await cache.resolve(make_png(69_999))

        out, again = asyncio.run(main())
    assert [r.outcome for r in out] == ["uploaded", "failed", "uploaded", "uploaded", "uploaded"]
    assert getattr(out[1].error, "code", None) == "duplicateResult"
    # The older entry is no longer served that UUID either: uploaded again.
    assert again.outcome != "hit" and again.uuid != first


def test_the_emulator_decodes_wrapped_unpadded_and_plain_base64_alike() -> None:
    data = make_png(3)
    text = base64.b64encode(data).decode()
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    for value in (text, wrapped, text.rstrip("="), "data:image/png;base64," + wrapped):
        assert decode(value).data == data
    with pytest.raises(MediaError, match="the base64 payload is empty"):
        decode("data:image/png;base64,")
    with pytest.raises(MediaError, match="not valid base64"):
        decode("data:image/png;base64,@@@@")
    with pytest.raises(MediaError, match="not valid base64"):
        decode("data:image/png;base64," + text[:8] + "\u00e9" + text[9:])  # not ASCII


def test_a_big_batch_is_split_by_bytes_as_well_as_by_count(tmp_path: Path) -> None:
    # A part holds its files' bytes while it waits for its turn to send: parts
    # of big files are cut at the request's byte budget, not only at its count.
    from assetcache._resolve import split_parts

    big = []
    for i in range(6):
        path = tmp_path / f"big{i}.bin"
        path.write_bytes(b"x" * 400)
        big.append(path)
    sources: list[Any] = [*big, str(big[0]), b"y" * 10, object(), "data:image/png;base64,AAAA"]
    parts = split_parts(sources, list(range(len(sources))), 4, 1000)
    assert parts == [[0, 1], [2, 3], [4, 5], [6, 7, 8, 9]]
    assert split_parts(sources, [7, 8, 9], 2, 10**6) == [[7, 8], [9]]
    # Sizes not known before reading count as a request's share of the budget.
    gone = [tmp_path / "gone.png"] * 6
    assert split_parts(gone, list(range(6)), 4, 40) == [[0, 1, 2, 3], [4, 5]]
    assert split_parts(gone, list(range(6)), 8, 40) == [[0, 1, 2, 3, 4, 5]]


def test_a_cold_batch_of_big_files_sends_requests_within_the_byte_budget(
    tmp_path: Path,
) -> None:
    sizes: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.content))
        return answer_uploads(request)

    files = pngs(tmp_path, "b", range(70_000, 70_012), 96, 96)
    each = files[0].stat().st_size
    budget = 3 * (each * 4 // 3 + 300)  # three images a request, base64 and JSON
    with mocked(tmp_path, server, batch_size=16, batch_bytes=budget, concurrency=2) as cache:
        out = cache.resolve_many(files)
    assert [r.outcome for r in out] == ["uploaded"] * 12
    assert len(sizes) >= 4 and max(sizes) <= budget


def test_a_client_being_made_when_the_cache_closes_is_closed_too() -> None:
    # The client is made on a thread of its own while the first parts hash; a
    # close() meanwhile waits for it and closes it, and no client comes after.
    from assetcache import AssetCacheError

    entered, proceed = threading.Event(), threading.Event()
    made: list[Any] = []

    class FakeClient:
        closed = False

        def close(self) -> None:
            self.closed = True

    def make() -> FakeClient:
        entered.set()
        assert proceed.wait(10)
        made.append(FakeClient())
        return made[-1]

    driver = Driver(make_sync_client=make)
    driver.warm_blocking_client()
    assert entered.wait(10)
    closer = threading.Thread(target=driver.close)
    closer.start()
    closer.join(0.2)
    proceed.set()
    closer.join(10)
    assert not closer.is_alive()
    assert len(made) == 1 and made[0].closed and driver.sync_client is None
    with pytest.raises(AssetCacheError, match="closed"):
        driver.blocking_client()


def test_a_part_failing_before_its_request_frees_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two slots, and the first two parts fail unexpectedly between taking their
    # slot and sending: their items fail with the reason, the other parts still
    # get slots and upload (a slot kept would leave them waiting for ever).
    files = pngs(tmp_path, "f", range(80_000, 80_008))
    with mocked(tmp_path, answer_uploads, batch_size=1, concurrency=2) as cache:
        from assetcache import _resolve

        real = _resolve.pack
        calls = [0]

        def flaky(*args: Any) -> Any:
            calls[0] += 1
            if calls[0] <= 2:
                raise RuntimeError("a bug")
            return real(*args)

        monkeypatch.setattr(_resolve, "pack", flaky)
        out: list[Any] = []
        worker = threading.Thread(target=lambda: out.extend(cache.resolve_many(files)))
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the batch waited for a slot no one would free"
    outcomes = [r.outcome for r in out]
    assert outcomes.count("failed") == 2 and outcomes.count("uploaded") == 6
    assert all("a bug" in str(r.error) for r in out if r.outcome == "failed")


def test_a_big_batch_splits_by_the_sizes_its_hit_check_found(monkeypatch) -> None:
    """The hit check stat'ed every path already: splitting the misses into parts
    stats none of them again (and only those it has no size for)."""
    from assetcache import _resolve
    from assetcache._resolve import split_parts

    Engine = _resolve.Engine  # noqa: N806 - the class whose stat_paths the split calls

    asked: list[list[str]] = []
    monkeypatch.setattr(Engine, "stat_paths", staticmethod(lambda paths: asked.append(paths) or []))
    sources = ["/a.png", "/b.png", "/c.png"]
    assert split_parts(sources, [0, 1, 2], 8, 100, {0: 60, 1: 60, 2: 1}) == [[0], [1, 2]]
    assert asked == [[]]
    monkeypatch.setattr(
        Engine, "stat_paths", staticmethod(lambda paths: asked.append(paths) or [None] * len(paths))
    )
    split_parts(sources, [0, 1, 2], 8, 100, {1: 5})
    assert asked[-1] == ["/a.png", "/c.png"]


def test_a_big_batch_on_one_request_at_a_time_looks_at_each_key_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``concurrency=1`` a batch is one part whose claims go a request's
    keys at a time; each round looks at its own chunk, not at every key left
    (that was quadratic: 200 keys in chunks of 4 were looked at ~5,000 times)."""
    files = pngs(tmp_path, "q", range(60_000, 60_200))
    with mocked(tmp_path, answer_uploads, batch_size=4, concurrency=1) as cache:
        registry = engine_of(cache).registry
        looked: list[int] = []
        real = registry.peek

        def peek(keys: Any, *args: Any) -> Any:
            looked.append(len(keys))
            return real(keys, *args)

        monkeypatch.setattr(registry, "peek", peek)
        out = cache.resolve_many(files)
    assert [r.outcome for r in out] == ["uploaded"] * 200
    assert len(looked) == 50 and max(looked) == 4 and sum(looked) == 200


def test_keys_held_elsewhere_do_not_stop_the_rest_of_a_batch(tmp_path: Path) -> None:
    """Another process holds the leases of a batch's first request's worth of
    keys: the others go out first, without a wait, and the held ones are sent
    once they are free (here: released when this process starts waiting)."""
    from assetcache._hashing import hash_bytes

    files = pngs(tmp_path, "h", range(61_000, 61_012))
    sent: list[int] = []
    waits: list[int] = []
    on_wait: list[Any] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(len(json.loads(request.content)))
        return answer_uploads(request)

    with mocked(
        tmp_path, server, batch_size=4, concurrency=1, sleep=lambda s: on_wait[0](s)
    ) as cache:
        engine = engine_of(cache)
        held = [(engine.namespace, hash_bytes(f.read_bytes()), "") for f in files[:4]]
        now = engine.judge_now()
        got = engine.registry.claim(held, "another-host", now, 600.0, now - 1, now + 1)
        assert set(got.values()) == {"claimed"}

        def release(seconds: float) -> None:
            waits.append(len(sent))
            engine.registry.release(held, "another-host")

        on_wait.append(release)
        out = cache.resolve_many(files)
    assert [r.outcome for r in out] == ["uploaded"] * 12
    # The two free requests went out before the first wait; the held keys after.
    assert waits == [2] and sent == [4, 4, 4]
