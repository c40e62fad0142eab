"""Property tests: arbitrary input to the response parser and the source decoder
gives a result or an :class:`AssetCacheError`, never any other exception.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
from helpers import engine_of, make_gif, make_png
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from assetcache import AssetCache, AssetCacheError, RemoteError, Resolution, Source
from assetcache._protocol import TaskResult, is_uuid, parse_response, parse_retry_after

PROPS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TASKS = [str(uuid.UUID(int=i, version=4)) for i in range(1, 4)]

# -- the response parser -------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
maybe_uuid = st.one_of(
    st.sampled_from(TASKS), st.uuids().map(str), st.text(max_size=40), json_values
)
codes = st.one_of(
    st.sampled_from(
        [
            "invalidApiKey",
            "insufficientCredits",
            "rateLimitExceeded",
            "invalidImage",
            "invalidSeedImage",
            "conflictTaskUUID",
            "timeoutProvider",
            "internalServerError",
            "somethingNew",
            "",
        ]
    ),
    json_values,
)
result_items = st.fixed_dictionaries(
    {},
    optional={
        "taskType": st.sampled_from(["imageUpload", "mediaStorage"]) | json_values,
        "taskUUID": maybe_uuid,
        "imageUUID": maybe_uuid,
        "mediaUUID": maybe_uuid,
        "imageURL": json_values,
    },
)
error_items = st.fixed_dictionaries(
    {},
    optional={
        "code": codes,
        "message": json_values,
        "parameter": st.one_of(st.sampled_from(["image", "seedImage", "apiKey"]), json_values),
        "taskUUID": maybe_uuid,
        "taskType": st.sampled_from(["imageUpload", "authentication"]) | json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(
            st.lists(result_items | json_values, max_size=5), result_items, json_values
        ),
        "errors": st.one_of(
            st.lists(error_items | json_values, max_size=4), error_items, json_values
        ),
    },
)
bodies = st.one_of(
    envelopes.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
statuses = st.one_of(
    st.sampled_from([200, 400, 401, 402, 403, 408, 429, 500, 502, 503]),
    st.integers(min_value=0, max_value=999),
)
retry_after = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(
        [
            "5",
            "-3",
            "nan",
            "inf",
            "1e309",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Mon, 01 Jan 99999 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:60 +2400",
        ]
    ),
)


def _redact(text: str) -> str:
    return text.replace("SECRET", "***")


@PROPS
@given(
    status=statuses,
    ra=retry_after,
    body=bodies,
    wanted=st.lists(st.sampled_from(TASKS), min_size=1, max_size=3, unique=True),
)
@example(status=200, ra=None, body=b"[" * 100_000, wanted=TASKS[:1])
@example(status=200, ra=None, body=b'{"data": ' * 5_000, wanted=TASKS[:1])
@example(status=503, ra="Mon, 01 Jan 99999 00:00:00 GMT", body=b"", wanted=TASKS[:1])
def test_parse_response_gives_outcomes_or_a_project_error(status, ra, body, wanted):
    headers = {} if ra is None else {"retry-after": ra}
    try:
        out = parse_response(status, headers, body, wanted, _redact)
    except AssetCacheError as exc:
        assert isinstance(exc, RemoteError)
        assert "SECRET" not in str(exc)
        return
    assert set(out) == set(wanted)
    doc = _loads(body)
    for tid, outcome in out.items():
        if isinstance(outcome, TaskResult):
            # A result is only ever what the body said for exactly this task.
            assert outcome.task_uuid == tid
            assert is_uuid(outcome.image_uuid)
            assert any(
                item.get("taskUUID") == tid and item.get("imageUUID") == outcome.image_uuid
                for item in _items(doc)
            )
        else:
            assert isinstance(outcome, RemoteError)
            assert "SECRET" not in str(outcome)


def _loads(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _items(doc: object) -> Iterator[dict]:
    data = doc.get("data") if isinstance(doc, dict) else None
    for item in [data] if isinstance(data, dict) else data if isinstance(data, list) else []:
        if isinstance(item, dict):
            yield item


@PROPS
@given(st.one_of(st.none(), st.text(max_size=60), retry_after))
def test_retry_after_is_a_finite_non_negative_number_or_none(value):
    seconds = parse_retry_after(value, now=1_700_000_000.0)
    assert seconds is None or seconds >= 0


# -- the source decoder ----------------------------------------------------------

PNG = make_png(5)
B64 = base64.b64encode(PNG).decode()
prefixes = st.sampled_from(
    [
        "",
        "data:",
        "DATA:image/png;base64,",
        "data:image/png,",
        "data:image/gif;base64,",
        "data:;base64,",
        "data:image/svg+xml,",
        "http://",
        "https://",
        "file://",
        "ftp://",
        "http://[",
        "https://h:99999/",
        "iVBORw0KGgo",
        "/9j/",
        "R0lGOD",
        "Qk",
        "./",
        "/",
        "~",
        B64[:40],
    ]
)
texts = st.one_of(
    st.text(max_size=80),
    st.tuples(prefixes, st.text(max_size=60)).map("".join),
    st.tuples(prefixes, st.text(alphabet="ABCDEFabcdef0123456789+/=-_ \n%", max_size=1200)).map(
        "".join
    ),
)
blobs = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.sampled_from(
            [
                b"\x89PNG\r\n\x1a\n",
                b"\xff\xd8\xff",
                b"GIF89a",
                b"RIFF",
                b"BM",
                b"II*\x00",
                PNG[:40],
                PNG[:-12],
            ]
        ),
        st.binary(max_size=200),
    ).map(b"".join),
)


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory) -> Iterator[AssetCache]:
    """A cache that never reaches a server: only preparing is exercised."""
    folder = tmp_path_factory.mktemp("props")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with AssetCache(
        "k",
        base_url="http://127.0.0.1:9/v1",
        db_path=folder / "c.db",
        transport=httpx.MockTransport(refuse),
        sleep=lambda seconds: None,
    ) as cache:
        yield cache


@pytest.fixture
def in_scratch_dir(tmp_path, monkeypatch):
    # Relative "paths" among the random strings resolve inside an empty folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real.png").write_bytes(PNG)
    return tmp_path


@PROPS
@given(obj=st.one_of(texts, blobs))
@example(obj="\ud800.png")
@example(obj="http://[::1")
@example(obj="https://host:99999/a.png?token=SECRET")
@example(obj="data:,%ZZ\ud800")
@example(obj="data:image/png," + "\udcff" * 3)
@example(obj="a" * 5000)
@example(obj="real.png")
@example(obj="./real.png/inside")
def test_coerce_and_prepare_give_a_result_or_a_source_error(offline_cache, in_scratch_dir, obj):
    try:
        src = Source.coerce(obj)
    except AssetCacheError as exc:
        assert str(exc)  # names the input and the reason
        assert "SECRET" not in str(exc)
    else:
        assert src.kind in ("path", "bytes", "data_uri", "base64", "url")
        assert isinstance(src.label, str)
        src.label.encode("utf-8")  # printable in any message
        assert "SECRET" not in src.label
    prepared = engine_of(offline_cache).prepare(obj)  # never raises: errors are values
    if isinstance(prepared, AssetCacheError):
        assert str(prepared)
    else:
        assert prepared.format in ("png", "jpeg", "gif", "webp", "bmp", "url")


@PROPS
@given(
    obj=st.one_of(
        texts,
        blobs,
        st.builds(bytearray, st.binary(max_size=50)),
        st.integers(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_file_objects_and_odd_types_are_classified_or_refused(obj):
    try:
        src = Source.coerce(obj)
    except AssetCacheError:
        return
    assert isinstance(src, Source)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(st.one_of(texts, blobs), min_size=1, max_size=6))
def test_resolve_many_returns_one_result_per_input(offline_cache, in_scratch_dir, batch):
    """Whole plan, offline: bad inputs fail as values; good ones fail to reach the server."""
    results = offline_cache.resolve_many(batch)
    assert len(results) == len(batch)
    for res in results:
        assert isinstance(res, Resolution)
        assert res.outcome == "failed" and isinstance(res.error, AssetCacheError)
        assert res.uuid is None


def test_the_strategies_reach_valid_images(offline_cache):
    """Guard: the decoder tests are not vacuous (valid inputs are prepared)."""
    for obj in (
        PNG,
        B64,
        "data:image/png;base64," + B64,
        make_gif(3),
        "data:image/gif;base64," + base64.b64encode(make_gif(3)).decode(),
    ):
        assert not isinstance(engine_of(offline_cache).prepare(obj), AssetCacheError)
    assert os.path.exists(offline_cache.db_path)
