"""Answers you can trust: a UUID is cached only from an answer that can carry it.

A tampering transport sits between the cache and the emulator and rewrites
the answers the way a broken proxy or a buggy server would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import write_images

from assetcache import AssetCache, AssetCacheError
from assetcache.emulator import Emulator

Rewrite = Callable[[int, dict[str, Any]], tuple[int, dict[str, Any]]]


class Tamper(httpx.BaseTransport):
    """Forwards to the emulator, then lets ``rewrite(status, doc)`` change the answer."""

    def __init__(self, rewrite: Rewrite) -> None:
        self.inner = httpx.HTTPTransport()
        self.rewrite = rewrite
        self.enabled = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        resp = self.inner.handle_request(request)
        resp.read()
        if not self.enabled:
            return resp
        status, doc = self.rewrite(resp.status_code, json.loads(resp.content))
        return httpx.Response(status, json=doc, headers={"date": resp.headers.get("date", "")})


def _items(doc: dict[str, Any]) -> list[dict[str, Any]]:
    data = doc.get("data")
    return [data] if isinstance(data, dict) else list(data or [])


def tampered(make_cache: Callable[..., AssetCache], rewrite: Rewrite) -> tuple[AssetCache, Tamper]:
    transport = Tamper(rewrite)
    return make_cache(transport=transport), transport


def test_upper_case_uuid_is_stored_and_found_lower_case(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    def upper(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for item in _items(doc):
            item["imageUUID"] = item["imageUUID"].upper()
        doc["data"] = _items(doc)
        return status, doc

    cache, _ = tampered(make_cache, upper)
    (path,) = write_images(tmp_path / "img", 1)
    uuid = cache.get_uuid(path)
    assert uuid == uuid.lower()
    assert [e.uuid for e in cache.entries()] == [uuid]
    assert cache.touch(uuid) is not None
    assert cache.touch(uuid.upper()) is not None
    entry = cache.invalidate(uuid)
    assert entry is not None and entry.state == "expired"
    assert cache.resolve(path).outcome == "reuploaded"


def test_forget_finds_an_upper_case_answer(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    def upper(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for item in _items(doc):
            item["imageUUID"] = item["imageUUID"].upper()
        return status, doc

    cache, _ = tampered(make_cache, upper)
    (path,) = write_images(tmp_path / "img", 2)
    uuid = cache.get_uuid(path)
    (item,) = cache.forget([uuid])
    assert item.error is None and [e.uuid for e in item.entries] == [uuid]


@pytest.mark.parametrize("suffix", ["\n", " ", "\r\n", "x"])
def test_uuid_with_trailing_text_is_not_cached(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path, suffix: str
) -> None:
    def trail(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for item in _items(doc):
            item["imageUUID"] += suffix
        doc["data"] = _items(doc)
        return status, doc

    cache, _ = tampered(make_cache, trail)
    (path,) = write_images(tmp_path / "img", 3)
    (res,) = cache.resolve_many([path])
    assert res.outcome == "failed" and res.uuid is None
    assert list(cache.entries()) == []


@pytest.mark.parametrize("status", [301, 302, 304, 404, 409, 500, 502, 503])
def test_results_in_an_answer_that_cannot_carry_them_are_ignored(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path, status: int
) -> None:
    cache, transport = tampered(make_cache, lambda _s, doc: (status, doc))
    (path,) = write_images(tmp_path / "img", 4)
    (res,) = cache.resolve_many([path])
    assert res.outcome == "failed" and res.uuid is None
    assert list(cache.entries()) == []
    transport.enabled = False
    res = cache.resolve(path)
    assert res.outcome == "uploaded" and emu.holds(res.uuid)


def test_a_4xx_with_errors_for_other_tasks_still_carries_results(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", 5, 6)
    emu.reject(paths[1].read_bytes())

    def as_400(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return (400 if doc.get("errors") else status), doc

    cache, _ = tampered(make_cache, as_400)
    good, bad = cache.resolve_many(paths)
    assert good.outcome == "uploaded" and emu.holds(good.uuid)
    assert bad.outcome == "failed"


def test_a_task_in_errors_is_failed_even_if_data_names_it(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    def both(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        doc["errors"] = [
            {
                "code": "invalidImage",
                "message": "bad",
                "parameter": "image",
                "taskType": "imageUpload",
                "taskUUID": item["taskUUID"],
            }
            for item in _items(doc)
        ]
        return status, doc

    cache, _ = tampered(make_cache, both)
    (path,) = write_images(tmp_path / "img", 7)
    (res,) = cache.resolve_many([path])
    assert res.outcome == "failed"
    assert list(cache.entries()) == []


def test_a_task_answered_with_two_uuids_is_a_protocol_error(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    def twice(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        items = _items(doc)
        extra = [dict(i, imageUUID="0b7e4c55-9d1e-4f0a-8c1b-2e445d1f9c62") for i in items]
        doc["data"] = items + extra
        return status, doc

    cache, _ = tampered(make_cache, twice)
    (path,) = write_images(tmp_path / "img", 8)
    (res,) = cache.resolve_many([path])
    assert res.outcome == "failed"
    assert "protocol" in str(res.error).lower() or "two" in str(res.error).lower()
    assert list(cache.entries()) == []


def test_one_uuid_for_two_contents_in_one_answer(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    def same(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        items = _items(doc)
        for item in items[1:]:
            item["imageUUID"] = items[0]["imageUUID"]
        doc["data"] = items
        return status, doc

    cache, transport = tampered(make_cache, same)
    paths = write_images(tmp_path / "img", 9, 10)
    results = cache.resolve_many(paths)
    assert [r.outcome for r in results] == ["failed", "failed"]
    assert list(cache.entries()) == []


def test_one_uuid_for_content_already_cached_with_other_bytes(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    first_uuid: list[str] = []

    def replay(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        items = _items(doc)
        if not first_uuid:
            first_uuid.append(items[0]["imageUUID"])
        else:
            for item in items:
                item["imageUUID"] = first_uuid[0]
        doc["data"] = items
        return status, doc

    cache, transport = tampered(make_cache, replay)
    a, b = write_images(tmp_path / "img", 11, 12)
    old = cache.get_uuid(a)
    (res,) = cache.resolve_many([b])
    assert res.outcome == "failed"
    # Neither content is served the UUID any more.
    transport.enabled = False
    again = cache.resolve(a)
    assert again.uuid != old and again.outcome == "reuploaded"
    assert cache.resolve(b).uuid not in (old, again.uuid)


def test_import_rejects_identifiers_with_trailing_newline(
    emu: Emulator, cache: AssetCache, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path / "img", 13)
    cache.get_uuid(path)
    (line,) = list(cache.export_entries())
    good = json.loads(line)
    cache.forget([good["uuid"]])
    lines = []
    for field in ("uuid", "hash", "namespace"):
        bad = dict(good)
        bad[field] = bad[field] + "\n"
        lines.append(json.dumps(bad))
    upper = dict(good, uuid=good["uuid"].upper())
    lines.append(json.dumps(upper))
    report = cache.import_entries(lines)
    assert report.added == 1 and len(report.errors) == 3, report.as_dict()
    assert [e.uuid for e in cache.entries()] == [good["uuid"]]


def test_failures_are_asset_cache_errors(
    emu: Emulator, make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    cache, _ = tampered(make_cache, lambda _s, doc: (302, doc))
    (path,) = write_images(tmp_path / "img", 14)
    with pytest.raises(AssetCacheError):
        cache.get_uuid(path)
