"""A hostile server: nothing waits without a bound, nothing grows without one.

A 127.0.0.1 server that trickles its answer, sends an endless chunked body, a
gzip bomb, a huge JSON body, a Retry-After of eleven days; an endpoint that
refuses connections or speaks no TLS. Each call ends (a worker thread is given
a generous bound, so a hang fails the test instead of blocking the suite) with
one clear error, and the memory an answer costs stays under the cap.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, make_png
from hostile_server import HostileServer, endless_chunked, fixed, refused_port, trickle

from assetcache import AssetCache, AsyncAssetCache, RetryPolicy

ONE_SHOT = RetryPolicy(attempts=1, base_delay=0.0005, max_delay=0.002, timeout=1.0)
FAST = RetryPolicy(attempts=8, base_delay=0.0005, max_delay=0.002, timeout=5.0)
HANG_BOUND = 60.0  # far above any bound under test: reaching it means "hangs"


def bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread; fail (instead of hanging the suite) if it never ends."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(HANG_BOUND)
    assert not thread.is_alive(), "the call did not end: it waits without a bound"
    return box[0]


def upload_error(url: str, tmp_path: Path, retry: RetryPolicy = ONE_SHOT, **kw: Any) -> str:
    with AssetCache(API_KEY, base_url=url, db_path=tmp_path / "c.db", retry=retry, **kw) as cache:
        (result,) = bounded(lambda: cache.resolve_many([make_png(1)]))
    assert result.error is not None and result.uuid is None
    return str(result.error)


def test_a_trickling_answer_is_cut_at_the_timeout(tmp_path: Path) -> None:
    with HostileServer(trickle) as server:
        message = upload_error(server.url, tmp_path)
    assert "timed out" in message and "1 s" in message


def test_a_trickling_answer_is_cut_at_the_timeout_async(tmp_path: Path) -> None:
    async def run(url: str) -> Any:
        async with AsyncAssetCache(
            API_KEY, base_url=url, db_path=tmp_path / "c.db", retry=ONE_SHOT
        ) as cache:
            return await cache.resolve_many([make_png(1)])

    with HostileServer(trickle) as server:
        (result,) = bounded(lambda: asyncio.run(run(server.url)))
    assert result.error is not None and "timed out" in str(result.error)


def test_an_endless_chunked_body_ends(tmp_path: Path) -> None:
    with HostileServer(endless_chunked) as server:
        message = upload_error(server.url, tmp_path, RetryPolicy(attempts=1, timeout=20.0))
    assert "16 MiB" in message or "timed out" in message


def test_a_gzip_bomb_costs_at_most_the_cap(tmp_path: Path) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    block = b" " * (1 << 20)
    bomb = b"".join(packer.compress(block) for _ in range(200)) + packer.flush()  # -> 200 MiB
    assert len(bomb) < 1 << 20
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with HostileServer(fixed("200 OK", headers, bomb)) as server:
        tracemalloc.start()
        try:
            message = upload_error(server.url, tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "larger than 16 MiB" in message
    assert peak < 48 << 20, f"a gzip bomb cost {peak >> 20} MiB"


def test_a_huge_json_answer_is_refused(tmp_path: Path) -> None:
    body = b'{"data": [' + b" " * (40 << 20) + b"]}"
    with HostileServer(fixed("200 OK", {"Content-Type": "application/json"}, body)) as server:
        tracemalloc.start()
        try:
            message = upload_error(server.url, tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "larger than 16 MiB" in message
    assert peak < 40 << 20, f"a 40 MiB answer cost {peak >> 20} MiB"


def test_a_retry_after_longer_than_the_policy_waits_fails_at_once(tmp_path: Path) -> None:
    eleven_days = str(11 * 86400)
    answer = fixed("429 Too Many Requests", {"Retry-After": eleven_days}, b'{"errors": []}')
    with HostileServer(answer) as server:
        message = upload_error(server.url, tmp_path, FAST)
        assert server.requests == 1  # not retried
    assert "11d" in message and "Retry-After" in message


def test_a_retry_after_within_the_policy_is_honoured(tmp_path: Path) -> None:
    policy = RetryPolicy(attempts=2, base_delay=0.0005, max_delay=0.002, max_retry_after=0.05)
    answer = fixed("429 Too Many Requests", {"Retry-After": "0.01"}, b'{"errors": []}')
    with HostileServer(answer) as server:
        message = upload_error(server.url, tmp_path, policy)
        assert server.requests == 2
    assert "gave up after 2 attempts" in message


def failing_run(url: str, tmp_path: Path, n: int) -> tuple[list[str], int]:
    with AssetCache(
        API_KEY, base_url=url, db_path=tmp_path / "c.db", retry=FAST, batch_size=1, concurrency=1
    ) as cache:
        results = bounded(lambda: cache.resolve_many([make_png(i) for i in range(n)]))
        retries = cache.stats().retries
    assert all(r.error is not None and r.uuid is None for r in results)
    return [str(r.error) for r in results], retries


def test_a_refused_endpoint_fails_the_rest_of_the_run_fast(tmp_path: Path) -> None:
    with refused_port() as url:
        messages, retries = failing_run(url, tmp_path, 30)
    assert all("refused or unreachable" in m for m in messages)
    # A few requests try (with their retries); the rest fail at once.
    assert sum("not tried" in m for m in messages) >= 25
    assert retries <= 3 * FAST.attempts, f"{retries} retries against a refused port"


def test_a_tls_failure_fails_the_rest_of_the_run_fast(tmp_path: Path) -> None:
    # TLS to a server that speaks plain HTTP: the handshake fails.
    plain = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    with HostileServer(fixed("400 Bad Request", {}, b""), greeting=plain) as server:
        url = server.url.replace("http://", "https://")
        messages, retries = failing_run(url, tmp_path, 12)
    assert sum("not tried" in m for m in messages) >= 8
    assert retries <= 3 * FAST.attempts


def test_an_unresolvable_host_fails_fast(tmp_path: Path) -> None:
    messages, retries = failing_run("http://assetcache-test.invalid/v1", tmp_path, 12)
    assert sum("not tried" in m for m in messages) >= 8
    assert retries <= 3 * FAST.attempts


@pytest.mark.parametrize(
    "tail", ["\nX-Injected: 1", "\r", "\u00e9", "\x00", "\x7f", "\u2028", "\t"]
)
def test_an_api_key_no_header_can_carry_is_a_configuration_error(tail: str, tmp_path: Path) -> None:
    from assetcache import ConfigurationError

    for key in (f"sk-7f3a9c{tail}rest", f"sk-7f3a9c{tail}"):
        with pytest.raises(ConfigurationError) as info:
            AssetCache(key, base_url="http://127.0.0.1:9/v1", db_path=tmp_path / "c.db")
        assert "API key" in str(info.value)
        assert "7f3a9c" not in str(info.value)  # the key is never shown


def test_surrounding_whitespace_in_the_key_is_refused(tmp_path: Path) -> None:
    from assetcache import ConfigurationError

    for key in ("sk-7f3a9c ", " sk-7f3a9c", "sk-7f3a9c\n"):
        with pytest.raises(ConfigurationError, match="API key"):
            AssetCache(key, base_url="http://127.0.0.1:9/v1", db_path=tmp_path / "c.db")


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", None])
def test_compressed_answers_are_read_in_full(tmp_path: Path, coding: str | None) -> None:
    """A well-behaved compressed answer still works (and is capped after decoding)."""
    from assetcache._bodies import AnswerTooLarge, BadAnswer, BodyReader

    data = b'{"data": []}' + b" " * 100_000
    if coding == "gzip":
        packed = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    elif coding == "deflate":
        packed = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    elif coding == "deflate-raw":
        packed = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packed.compress(data) + packed.flush() if coding else data
    header = "deflate" if coding == "deflate-raw" else coding
    reader = BodyReader(header)
    for i in range(0, len(body), 7):
        reader.feed(body[i : i + 7])
    assert reader.finish() == data
    small = BodyReader(header, cap=len(data) - 1)
    with pytest.raises(AnswerTooLarge):
        small.feed(body)
        small.finish()
    with pytest.raises(BadAnswer):
        BodyReader("br")
