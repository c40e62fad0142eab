"""The HTTP layer against httpx.MockTransport: shapes, errors, retries."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from helpers import API_KEY, make_png, store_of

from assetcache import (
    AssetCache,
    AsyncAssetCache,
    AuthenticationError,
    InsufficientCredits,
    RejectedInput,
    RetryPolicy,
    ServerError,
)
from assetcache._protocol import (
    Payload,
    Task,
    backoff_delay,
    body_length,
    iter_body,
    parse_response,
    parse_retry_after,
)


class Server:
    """A scripted handler: each entry answers one request (callable or Response)."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests: list[httpx.Request] = []
        self.bodies: list[list] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        step = self.script.pop(0) if self.script else ok_list
        return step(body) if callable(step) else step


def ok_list(body):
    return httpx.Response(
        200,
        json={
            "data": [
                {
                    "taskType": "imageUpload",
                    "taskUUID": t["taskUUID"],
                    "imageUUID": str(uuid.uuid4()),
                }
                for t in body
            ]
        },
    )


def ok_object(body):
    (t,) = body
    return httpx.Response(
        200,
        json={
            "data": {
                "taskType": "imageUpload",
                "taskUUID": t["taskUUID"],
                "imageUUID": str(uuid.uuid4()),
            }
        },
    )


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make(tmp_path, sleeps):
    caches = []

    def build(server, **kw):
        kw.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.5, max_delay=4))
        cache = AssetCache(
            API_KEY,
            base_url="https://api.example.test/v1",
            db_path=tmp_path / "c.db",
            transport=httpx.MockTransport(server),
            sleep=sleeps.append,
            **kw,
        )
        caches.append(cache)
        return cache

    yield build
    for c in caches:
        c.close()


def test_request_shape(make):
    server = Server()
    make(server).get_uuid(make_png(1))
    (req,) = server.requests
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    assert req.headers["content-type"] == "application/json"
    (task,) = server.bodies[0]
    assert task["taskType"] == "imageUpload"
    assert uuid.UUID(task["taskUUID"]).version == 4
    assert task["image"].startswith("data:image/png;base64,")
    assert int(req.headers["content-length"]) == len(req.content)


def test_every_task_of_a_batch_request_has_its_own_version_4_uuid(make):
    """The task UUIDs of one request come from one read of the system's
    randomness: still distinct, still version 4, and new in the next request."""
    server = Server()
    cache = make(server)
    cache.resolve_many([make_png(40 + i) for i in range(5)], concurrency=1)
    cache.resolve_many([make_png(50 + i) for i in range(5)], concurrency=1)
    ids = [task["taskUUID"] for body in server.bodies for task in body]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert all(uuid.UUID(t).version == 4 and uuid.UUID(t).variant == uuid.RFC_4122 for t in ids)


def test_data_as_object_is_accepted(make):
    assert make(Server(ok_object)).resolve(make_png(2)).outcome == "uploaded"


def test_503_then_success_retries_with_fresh_task_uuid(make, sleeps):
    server = Server(httpx.Response(503, text="busy"), ok_list)
    make(server).get_uuid(make_png(3))
    assert len(server.requests) == 2
    assert server.bodies[0][0]["taskUUID"] != server.bodies[1][0]["taskUUID"]
    assert len(sleeps) == 1


def test_retry_after_is_honoured(make, sleeps):
    server = Server(httpx.Response(429, headers={"Retry-After": "3"}, json={"errors": []}), ok_list)
    make(server).get_uuid(make_png(4))
    assert sleeps[0] >= 3


@pytest.mark.parametrize(
    "status, exc",
    [
        (400, RejectedInput),
        (401, AuthenticationError),
        (402, InsufficientCredits),
        (403, RejectedInput),
    ],
)
def test_no_retry_on_other_4xx(make, sleeps, status, exc):
    server = Server(
        httpx.Response(status, json={"errors": [{"code": "somethingNew", "message": "no"}]})
    )
    with pytest.raises(exc):
        make(server).get_uuid(make_png(5))
    assert len(server.requests) == 1
    assert sleeps == []


def test_gives_up_after_the_attempt_budget(make, sleeps):
    server = Server(*[httpx.Response(500)] * 10)
    with pytest.raises(ServerError, match="gave up after 4 attempts"):
        make(server).get_uuid(make_png(6))
    assert len(server.requests) == 4
    assert len(sleeps) == 3


def test_connection_errors_are_retried(make):
    calls = []

    def flaky(body):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        return ok_list(body)

    assert make(Server(flaky, flaky)).resolve(make_png(7)).outcome == "uploaded"


def test_partial_batch_caches_successes_and_reports_failures(make):
    bad = b"\x89PNG\r\n\x1a\n" + make_png(99)[8:]  # valid locally; the server will refuse it

    def mixed(body):
        data, errors = [], []
        for t in body:
            if t["image"].endswith(__import__("base64").b64encode(bad).decode()[-20:]):
                errors.append(
                    {
                        "code": "invalidImage",
                        "message": "bad",
                        "parameter": "image",
                        "taskUUID": t["taskUUID"],
                        "taskType": "imageUpload",
                    }
                )
            else:
                data.append(
                    {
                        "taskType": "imageUpload",
                        "taskUUID": t["taskUUID"],
                        "imageUUID": str(uuid.uuid4()),
                    }
                )
        return httpx.Response(200, json={"data": data, "errors": errors})

    cache = make(Server(mixed))
    results = cache.resolve_many([make_png(10), bad, make_png(11)])
    assert [r.outcome for r in results] == ["uploaded", "failed", "uploaded"]
    assert isinstance(results[1].error, RejectedInput)
    assert results[1].error.code == "invalidImage"
    assert cache.resolve(make_png(10)).outcome == "hit"


@pytest.mark.parametrize(
    "answer",
    [
        lambda body: httpx.Response(200, text="<html>oops</html>"),
        lambda body: httpx.Response(200, json={"data": []}),
        lambda body: httpx.Response(200, json={"data": [{"taskUUID": body[0]["taskUUID"]}]}),
        lambda body: httpx.Response(
            200, json={"data": [{"taskUUID": body[0]["taskUUID"], "imageUUID": "nope"}]}
        ),
        lambda body: httpx.Response(
            200, json={"data": [{"taskUUID": str(uuid.uuid4()), "imageUUID": str(uuid.uuid4())}]}
        ),
    ],
)
def test_malformed_success_is_never_cached(make, answer):
    server = Server(answer, ok_list)
    cache = make(server)
    res = cache.resolve(make_png(12))
    assert res.outcome == "uploaded"
    assert len(server.requests) == 2
    uuids = [r[0] for r in store_of(cache).read("SELECT image_uuid FROM assets")]
    assert uuids == [res.uuid]


def test_key_is_not_in_errors(make):
    server = Server(
        httpx.Response(
            400, json={"errors": [{"code": "invalidImage", "message": f"echo {API_KEY}"}]}
        )
    )
    with pytest.raises(RejectedInput) as info:
        make(server).get_uuid(make_png(13))
    assert API_KEY not in str(info.value)


def test_async_twin_speaks_the_same_protocol(tmp_path):
    import asyncio

    server = Server(httpx.Response(503), ok_list)

    async def main():
        async with AsyncAssetCache(
            API_KEY,
            base_url="https://api.example.test/v1",
            db_path=tmp_path / "a.db",
            transport=httpx.MockTransport(server),
            retry=RetryPolicy(base_delay=0.0001, max_delay=0.0002),
        ) as cache:
            first = await cache.resolve(make_png(14))
            second = await cache.resolve(make_png(14))
            return first, second

    first, second = asyncio.run(main())
    assert (first.outcome, second.outcome) == ("uploaded", "hit")
    assert len(server.requests) == 2


def test_backoff_grows_and_is_capped():
    delays = [backoff_delay(a, None, base=0.5, cap=8, jitter=0.0) for a in range(8)]
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(delays) == 4.0
    assert backoff_delay(0, None, base=0.5, cap=8, jitter=0.999) < 0.5
    assert backoff_delay(0, 7.0, base=0.5, cap=8, jitter=0.0) == 7.0


def test_retry_after_forms():
    assert parse_retry_after("5") == 5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_streamed_body_is_the_json_it_claims():
    data = make_png(15, 50, 50)
    tasks = [
        Task("a" * 8, Payload("x", len(data), "image/png", data=data)),
        Task("b" * 8, Payload("u", 0, "", url='https://h/x.png?a="q"')),
    ]
    body = b"".join(iter_body(tasks))
    assert len(body) == body_length(tasks)
    doc = json.loads(body)
    assert doc[1]["image"] == 'https://h/x.png?a="q"'


def test_parse_response_reports_missing_tasks():
    out = parse_response(200, {}, json.dumps({"data": []}).encode(), ["t1"], str)
    assert out["t1"].code == "missingResult"


def test_an_abort_mid_batch_keeps_what_was_already_answered(make):
    """Each request's successes are recorded when it answers, not at the end of the call."""
    calls = []

    def second_request_dies(body):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is being killed
        return ok_list(body)

    from assetcache._hashing import hash_bytes

    cache = make(Server(*[second_request_dies] * 4), batch_size=2)
    images = [make_png(300 + i) for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        cache.resolve_many(images, concurrency=1)
    stored = {row[0] for row in store_of(cache).read("SELECT content_hash FROM assets")}
    # The first request's two uploads survive the abort (recorded when it answered);
    # the aborted request's do not.
    assert {hash_bytes(images[0]), hash_bytes(images[1])} <= stored
    assert not {hash_bytes(images[2]), hash_bytes(images[3])} & stored


@pytest.mark.parametrize("simd", [True, False], ids=["pybase64", "standard library"])
def test_an_upload_body_is_the_standard_base64_of_the_bytes(simd: bool, monkeypatch) -> None:
    """In memory or streamed from a file, at every length around the encoder's
    3-byte groups and its chunk size, with pybase64 or without it."""
    import base64
    import io
    import random
    import sys

    from assetcache import _protocol

    if not simd:
        monkeypatch.setitem(sys.modules, "pybase64", None)  # as if not installed
    _protocol._b64encoder.cache_clear()
    try:
        encoder = _protocol._b64encoder()
        assert (encoder is base64.b64encode) is (not simd)
        rng = random.Random(7)
        chunk = _protocol._B64_CHUNK
        for n in (1, 2, 3, 4, 5, 1000, chunk - 1, chunk, chunk + 1, 2 * chunk + 2):
            data = rng.randbytes(n)
            want = b"data:image/png;base64," + base64.b64encode(data)
            kept = Payload("x", n, "image/png", data=data)
            streamed = Payload("y", n, "image/png", open=lambda d=data: io.BytesIO(d))
            assert b"".join(kept.chunks()) == want, n
            assert b"".join(streamed.chunks()) == want, n
            assert kept.encoded_length() == len(want)
    finally:
        _protocol._b64encoder.cache_clear()
