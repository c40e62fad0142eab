"""Faults: a server that errs, hangs up, stalls or answers nonsense loses nothing.

Every fault kind the emulator knows is injected; afterwards every file is
cached, every cached UUID is one the emulator holds *for that content*, and no
malformed success was ever stored. Retries keep the cache's default policy
(attempts, backoff); only two things are changed, to keep CI fast: the
backoff's sleep is recorded instead of slept (``sleep=``), and the request
timeout is 0.5 s so that the emulator's ``slow`` fault (2 s) is slower than it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import API_KEY, make_png, store_of

from assetcache import AssetCache, ProtocolError, RetryPolicy, ServerError
from assetcache.emulator import FAULT_KINDS, Emulator

#: The default policy (8 attempts, 0.25 s base, 20 s cap), with a timeout the
#: ``slow`` fault exceeds.
SHORT_TIMEOUT = RetryPolicy(timeout=0.5)
SLOW_SECONDS = 2.0
ALL_KINDS = sorted(FAULT_KINDS)


def write_files(folder: Path, n: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img-{i:04d}.png"
        path.write_bytes(make_png(offset + i))
        paths.append(path)
    return paths


def count_faults(emu: Emulator) -> Counter[str]:
    """Record which fault each request got (the emulator only counts them)."""
    seen: Counter[str] = Counter()
    plan = emu._faults
    real_pick = plan.pick

    def pick() -> str | None:
        kind = real_pick()
        if kind is not None:
            seen[kind] += 1
        return kind

    plan.pick = pick  # type: ignore[method-assign]
    return seen


def assert_nothing_lost(cache: AssetCache, emu: Emulator, files: list[Path]) -> None:
    """Each file cached once, under a UUID the emulator holds for exactly its bytes."""
    rows = store_of(cache).read("SELECT content_hash, image_uuid FROM assets")
    assert len(rows) == len(files)
    by_hash = dict(rows)
    for path in files:
        res = cache.resolve(path)
        assert res.outcome == "hit"
        assert by_hash[res.content_hash] == res.uuid
        held = emu.image(res.uuid)
        assert held is not None, f"{path.name}: cached UUID {res.uuid} is not held by the server"
        assert held.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def faulty() -> Iterator[Emulator]:
    with Emulator(
        api_key=API_KEY,
        fault_rate=0.3,
        fault_kinds=ALL_KINDS,
        seed=20240611,
        retry_after=3,
        slow_seconds=SLOW_SECONDS,
    ) as emu:
        yield emu


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def open_cache(
    faulty: Emulator, tmp_path: Path, sleeps: list[float]
) -> Iterator[Callable[..., AssetCache]]:
    caches: list[AssetCache] = []

    def make(**kwargs: object) -> AssetCache:
        cache = AssetCache(
            API_KEY,
            base_url=faulty.base_url,
            db_path=tmp_path / "cache.db",
            clock=faulty.clock,
            retry=SHORT_TIMEOUT,
            sleep=sleeps.append,
            **kwargs,
        )
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def test_two_hundred_files_at_thirty_percent_faults_all_end_cached(
    faulty, open_cache, tmp_path, sleeps
):
    """Default concurrency, 13 requests of 16 tasks, plus retries."""
    seen = count_faults(faulty)
    files = write_files(tmp_path / "in", 200)
    cache = open_cache(batch_size=16)
    results = cache.resolve_many(files)
    failed = [(r.source, str(r.error)) for r in results if r.error]
    assert failed == []
    assert {r.outcome for r in results} == {"uploaded"}
    assert sum(seen.values()) == faulty.fault_count >= 3
    stats = cache.stats()
    assert stats.uploads == 200 and stats.failures == 0
    assert stats.retries == len(sleeps) >= 3
    assert_nothing_lost(cache, faulty, files)
    print(
        f"\nfaults: {sum(seen.values())} of {faulty.request_count} requests {dict(seen)}; "
        f"retries {stats.retries}"
    )


def test_every_fault_kind_many_times_one_request_per_file(faulty, open_cache, tmp_path, sleeps):
    """One task per request: ~280 requests, ~85 faults, every kind several times."""
    seen = count_faults(faulty)
    files = write_files(tmp_path / "in", 200, offset=10_000)
    cache = open_cache(batch_size=1)
    results = cache.resolve_many(files)
    assert [str(r.error) for r in results if r.error] == []
    assert set(seen) == set(FAULT_KINDS), f"kinds never injected: {set(FAULT_KINDS) - set(seen)}"
    assert faulty.fault_count >= 0.2 * faulty.request_count
    assert max(sleeps) >= 3  # a 429's Retry-After: 3 was honoured
    # drop_after, foreign_task and slow store an image the client never learns
    # of: the server holds more than the cache, never the other way round.
    orphans = seen["drop_after"] + seen["foreign_task"]
    assert faulty.upload_count >= 200 + orphans
    assert_nothing_lost(cache, faulty, files)
    print(f"\nfaults: {sum(seen.values())} of {faulty.request_count} requests {dict(seen)}")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_one_fault_then_success(kind, faulty, open_cache, tmp_path, sleeps):
    faulty.set_faults(rate=0.0)
    faulty.fail_next(kind)
    photo = write_files(tmp_path / "in", 1, offset=20_000)[0]
    cache = open_cache()
    res = cache.resolve(photo)
    assert res.outcome == "uploaded"
    assert faulty.request_count == 2
    assert len(sleeps) == 1
    assert_nothing_lost(cache, faulty, [photo])


@pytest.mark.parametrize("kind", ["no_uuid", "bad_uuid", "foreign_task", "empty", "nonjson"])
def test_malformed_success_on_every_attempt_caches_nothing(kind, faulty, open_cache, tmp_path):
    faulty.set_faults(rate=0.0)
    faulty.fail_next(*[kind] * SHORT_TIMEOUT.attempts)
    files = write_files(tmp_path / "in", 3, offset=30_000)
    cache = open_cache()
    results = cache.resolve_many(files)
    assert all(isinstance(r.error, ProtocolError) for r in results)
    assert all(r.uuid is None for r in results)
    assert store_of(cache).read("SELECT COUNT(*) FROM assets")[0][0] == 0
    assert store_of(cache).read("SELECT COUNT(*) FROM leases")[0][0] == 0
    assert faulty.request_count == SHORT_TIMEOUT.attempts
    # The server recovers: the same files upload on the next call.
    assert all(r.outcome == "uploaded" for r in cache.resolve_many(files))
    assert_nothing_lost(cache, faulty, files)


def test_giving_up_reports_each_item_once_and_clearly(faulty, open_cache, tmp_path):
    faulty.set_faults(rate=0.0)
    faulty.fail_next(*["503"] * SHORT_TIMEOUT.attempts)
    files = write_files(tmp_path / "in", 5, offset=40_000)
    results = open_cache().resolve_many(files)
    for res in results:
        assert isinstance(res.error, ServerError)
        text = str(res.error)
        assert text.count(f"gave up after {SHORT_TIMEOUT.attempts} attempts") == 1, text
        assert res.error.status == 503


def test_slow_answers_time_out_and_are_retried(faulty, open_cache, tmp_path, sleeps):
    faulty.set_faults(rate=0.0)
    faulty.fail_next("slow", "slow")
    photo = write_files(tmp_path / "in", 1, offset=50_000)[0]
    cache = open_cache()
    res = cache.resolve(photo)
    assert res.outcome == "uploaded"
    assert len(sleeps) == 2
    # The stalled requests were processed after the client gave up on them:
    # at most orphans on the server, never a UUID in the cache it did not see.
    assert_nothing_lost(cache, faulty, [photo])
