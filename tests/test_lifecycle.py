"""Lifecycle: use (heal an expired UUID), touch, invalidate, refresh, mediaStorage, forget --remote.

Every claim is checked against the emulator, whose clock the cache shares (or
deliberately does not: skew); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid as uuid_mod
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import EmulatorCLI, invoke
from conftest import FAST_RETRY
from helpers import API_KEY, make_png, use_on_server

from assetcache import (
    AssetCache,
    AsyncAssetCache,
    ConfigurationError,
    RejectedInput,
    RetryBudgetExhausted,
    SourceError,
    UnknownImage,
)
from assetcache._protocol import error_from_object
from assetcache.emulator import Emulator

DAY = 86400.0


def infer(
    base_url: str,
    image_uuid: str | list[str],
    field: str = "seedImage",
    key: str = API_KEY,
    **extra: Any,
) -> httpx.Response:
    """A consuming task (imageInference) naming ``image_uuid`` in ``field``, as an app sends it."""
    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid_mod.uuid4()),
        field: image_uuid,
        "positivePrompt": "a test",
        "model": "runware:100@1",
        "width": 512,
        "height": 512,
        **extra,
    }
    return httpx.post(base_url, json=[task], headers={"Authorization": f"Bearer {key}"}, timeout=10)


def png_file(folder: Path, seed: int) -> Path:
    path = folder / f"img-{seed}.png"
    path.write_bytes(make_png(seed))
    return path


class Recorder:
    """``fn`` for use(): records the UUIDs it was given, answers with ``answer(uuid)``."""

    def __init__(self, answer: Callable[[str], Any]) -> None:
        self.answer = answer
        self.uuids: list[str] = []

    def __call__(self, image_uuid: str) -> Any:
        self.uuids.append(image_uuid)
        return self.answer(image_uuid)


# -- use: healing ------------------------------------------------------------------------


def test_use_on_a_live_upload_calls_once_and_uploads_nothing(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    first = cache.resolve(a)
    fn = Recorder(lambda u: infer(emu.base_url, u))
    resp = cache.use(a, fn)
    assert resp.status_code == 200 and fn.uuids == [first.uuid]
    assert emu.upload_count == 1 and emu.inference_count == 1


def test_use_heals_an_upload_deleted_remotely(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    old = cache.resolve(a).uuid
    assert old is not None and emu.delete(old)  # gone on the server, fresh locally
    assert [e.state for e in cache.entries()] == ["fresh"]
    fn = Recorder(lambda u: infer(emu.base_url, u))
    resp = cache.use(a, fn)
    assert resp.status_code == 200 and "data" in resp.json()
    assert len(fn.uuids) == 2 and fn.uuids[0] == old and fn.uuids[1] != old
    assert emu.upload_count == 2 and emu.holds(fn.uuids[1])
    (entry,) = cache.entries()
    assert (entry.uuid, entry.upload_count) == (fn.uuids[1], 2)
    assert cache.stats().reuploads == 1  # the outcome read "reuploaded"
    hit = cache.resolve(a)
    assert (hit.outcome, hit.uuid) == ("hit", fn.uuids[1])


def test_use_heals_an_upload_expired_under_clock_skew(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    # This machine's clock ran 5 days fast when it recorded the upload, then was
    # corrected: the answer's Date header gave the stamp in the server's time.
    skew = [5 * DAY]
    cache = make_cache(clock=lambda: emu.clock() + skew[0])
    a = png_file(tmp_path, 1)
    first = cache.resolve(a).uuid
    skew[0] = 0.0
    emu.advance(days=31)
    assert not emu.holds(first)
    renewed = cache.resolve(a)
    assert renewed.outcome == "reuploaded" and emu.holds(renewed.uuid)
    # Then Runware drops it behind the cache's back: only a use can find out.
    old = renewed.uuid
    emu.delete(old)
    before = emu.upload_count
    assert cache.resolve(a).outcome == "hit"

    def run(u: str) -> dict[str, Any]:
        resp = infer(emu.base_url, u)
        resp.raise_for_status()  # an httpx.HTTPStatusError carries the answer
        return resp.json()

    fn = Recorder(run)
    result = cache.use(a, fn)
    assert result["data"][0]["taskType"] == "imageInference"
    assert fn.uuids[0] == old and len(fn.uuids) == 2 and emu.upload_count == before + 1
    assert emu.holds(fn.uuids[1])


def _ours(emu: Emulator) -> Callable[[str], Any]:
    def fn(u: str) -> Any:
        resp = infer(emu.base_url, u)
        body = resp.json()
        if body.get("errors"):
            raise error_from_object(body["errors"][0], resp.status_code, str)
        return body

    return fn


def _sdk(emu: Emulator) -> Callable[[str], Any]:
    runware = pytest.importorskip("runware")

    def fn(u: str) -> Any:
        async def go() -> Any:
            async with runware.Runware(
                api_key=API_KEY,
                transport="rest",
                http_base_url=emu.base_url,
                max_retries=0,
                timeout=5_000,
                poll_timeout=10_000,
            ) as rw:
                return await rw.run(
                    {
                        "taskType": "imageInference",
                        "model": "runware:101@1",
                        "positivePrompt": "a lighthouse",
                        "width": 512,
                        "height": 512,
                        "seedImage": u,
                        "deliveryMethod": "sync",
                    }
                )

        return asyncio.run(asyncio.wait_for(go(), timeout=20))

    return fn


def _returned_response(emu: Emulator) -> Callable[[str], Any]:
    return lambda u: infer(emu.base_url, [u], "referenceImages")


def _wrapped(emu: Emulator) -> Callable[[str], Any]:
    class JobFailed(Exception):
        pass

    def fn(u: str) -> Any:
        try:
            return _ours(emu)(u)
        except UnknownImage as exc:
            raise JobFailed("generation failed") from exc

    return fn


@pytest.mark.parametrize(
    "make_fn",
    [_ours, _sdk, _returned_response, _wrapped],
    ids=["own-error", "runware-sdk", "httpx-response", "wrapped-cause"],
)
def test_use_recognises_each_kind_of_answer(
    make_fn: Callable[[Emulator], Callable[[str], Any]], cache: AssetCache, emu: Emulator
) -> None:
    data = make_png(7)
    old = cache.get_uuid(data)
    emu.delete(old)
    fn = Recorder(make_fn(emu))
    result = cache.use(data, fn)
    assert result is not None
    assert len(fn.uuids) == 2 and fn.uuids[0] == old and emu.holds(fn.uuids[1])
    assert emu.upload_count == 2


def test_use_recognises_a_raised_http_status_error_on_mask_image(
    cache: AssetCache, emu: Emulator
) -> None:
    data = make_png(3)
    old = cache.get_uuid(data)
    emu.delete(old)

    def run(u: str) -> Any:
        resp = infer(emu.base_url, u, "maskImage")
        resp.raise_for_status()
        return resp.json()

    fn = Recorder(run)
    assert "data" in cache.use(data, fn)
    assert len(fn.uuids) == 2 and emu.upload_count == 2


def test_use_takes_a_callers_predicate_for_other_answers(cache: AssetCache, emu: Emulator) -> None:
    data = make_png(4)
    old = cache.get_uuid(data)
    emu.delete(old)

    def run(u: str) -> dict[str, Any]:  # an app's own wrapper: errors become values
        body = infer(emu.base_url, u).json()
        return {"ok": not body.get("errors"), "why": (body.get("errors") or [{}])[0].get("code")}

    fn = Recorder(run)
    gone = Recorder(lambda r: isinstance(r, dict) and r.get("why") == "invalidSeedImage")
    result = cache.use(data, fn, is_unknown=gone)
    assert result == {"ok": True, "why": None}
    assert len(fn.uuids) == 2 and emu.upload_count == 2
    # Without the predicate the same answer is just returned.
    emu.delete(fn.uuids[1])
    assert cache.use(data, run) == {"ok": False, "why": "invalidSeedImage"}


def test_use_on_the_async_twin(emu: Emulator, tmp_path: Path) -> None:
    a = png_file(tmp_path, 1)

    async def main() -> tuple[str | None, list[str], int]:
        async with (
            AsyncAssetCache(
                API_KEY,
                base_url=emu.base_url,
                db_path=tmp_path / "c.db",
                clock=emu.clock,
                retry=FAST_RETRY,
            ) as cache,
            httpx.AsyncClient(timeout=10) as http,
        ):
            old = (await cache.resolve(a)).uuid
            emu.delete(old)
            seen: list[str] = []

            async def run(u: str) -> httpx.Response:
                seen.append(u)
                task = {
                    "taskType": "imageInference",
                    "taskUUID": str(uuid_mod.uuid4()),
                    "seedImage": u,
                    "positivePrompt": "x",
                    "model": "runware:100@1",
                    "width": 512,
                    "height": 512,
                }
                resp = await http.post(
                    emu.base_url, json=[task], headers={"Authorization": f"Bearer {API_KEY}"}
                )
                return resp.raise_for_status()

            resp = await cache.use(a, run)
            return old, seen, resp.status_code

    old, seen, status = asyncio.run(main())
    assert status == 200 and seen[0] == old and len(seen) == 2 and emu.holds(seen[1])
    assert emu.upload_count == 2


# -- use: what it leaves alone, and its bound ------------------------------------------------


def test_use_passes_other_failures_through_untouched(cache: AssetCache, emu: Emulator) -> None:
    data = make_png(5)
    live = cache.get_uuid(data)

    def boom(u: str) -> None:
        raise ValueError("not ours")

    with pytest.raises(ValueError, match="not ours"):
        cache.use(data, boom)
    wrong_key = cache.use(data, lambda u: infer(emu.base_url, u, key="not-the-key"))
    assert wrong_key.status_code == 401  # returned as it is: not about the image

    def bad_prompt(u: str) -> None:
        raise RejectedInput("bad prompt", code="invalidPositivePrompt", parameter="positivePrompt")

    with pytest.raises(RejectedInput):
        cache.use(data, bad_prompt)
    assert emu.upload_count == 1 and cache.get_uuid(data) == live
    assert [e.state for e in cache.entries()] == ["fresh"]


def test_use_counts_only_the_parameter_that_carried_the_uuid(
    cache: AssetCache, emu: Emulator
) -> None:
    data = make_png(6)
    live = cache.get_uuid(data)
    stranger = str(uuid_mod.uuid4())  # not from the cache, unknown to the server
    # The request is known: its maskImage (not our seedImage) was rejected.
    resp = cache.use(data, lambda u: infer(emu.base_url, u, maskImage=stranger))
    assert resp.status_code == 400 and resp.json()["errors"][0]["parameter"] == "maskImage"

    def mask_rejected(u: str) -> None:
        raise UnknownImage("no such mask", code="invalidMaskImage", parameter="maskImage")

    with pytest.raises(UnknownImage):  # the caller says where the UUID went
        cache.use(data, mask_rejected, parameter="seedImage")
    assert emu.upload_count == 1 and cache.get_uuid(data) == live


def test_use_gives_up_after_the_bound(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    a = png_file(tmp_path, 1)
    cache.resolve(a)

    def always_lost(u: str) -> Any:  # the server loses every upload before the task runs
        emu.delete(u)
        return infer(emu.base_url, u).raise_for_status()

    fn = Recorder(always_lost)
    with pytest.raises(RetryBudgetExhausted) as caught:
        cache.use(a, fn, retries=2)
    err = caught.value
    assert len(fn.uuids) == 3 and len(set(fn.uuids)) == 3 and emu.upload_count == 3
    assert err.uuids == tuple(fn.uuids) and err.attempts == 3  # type: ignore[attr-defined]
    assert str(a.name) in str(err) and "giving up" in str(err) and "2 fresh upload" in str(err)
    assert isinstance(err.__cause__, httpx.HTTPStatusError)
    assert API_KEY not in str(err)
    # The cache learnt from the last answer too: the next resolve uploads.
    assert cache.resolve(a).outcome == "reuploaded" and emu.upload_count == 4


def test_use_with_no_retries_invalidates_and_says_so(cache: AssetCache, emu: Emulator) -> None:
    data = make_png(8)
    emu.delete(cache.get_uuid(data))
    fn = Recorder(lambda u: infer(emu.base_url, u))
    with pytest.raises(RetryBudgetExhausted, match="retries=0"):
        cache.use(data, fn, retries=0)
    assert len(fn.uuids) == 1 and emu.upload_count == 1
    assert cache.resolve(data).outcome == "reuploaded"
    with pytest.raises(ConfigurationError, match="retries"):
        cache.use(data, fn, retries=-1)


def test_use_by_uuid_heals_from_a_local_copy_after_the_file_was_deleted(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    cache = make_cache(keep_copies=True)
    a = png_file(tmp_path, 1)
    old = cache.resolve(a).uuid
    assert old is not None
    a.unlink()
    emu.delete(old)
    fn = Recorder(lambda u: infer(emu.base_url, u))
    assert cache.use(old, fn).status_code == 200
    assert fn.uuids[0] == old and len(fn.uuids) == 2 and emu.upload_count == 2
    assert emu.image(fn.uuids[1]).data == make_png(1)  # type: ignore[union-attr]
    # The path that is gone still names its content (the stat cache remembers it).
    emu.delete(fn.uuids[1])
    assert cache.use(str(a), fn).status_code == 200 and emu.upload_count == 3


def test_use_without_a_copy_says_the_content_is_gone(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    old = cache.resolve(a).uuid
    assert old is not None
    a.unlink()
    emu.delete(old)
    with pytest.raises(SourceError, match="cannot be uploaded again: content gone"):
        cache.use(old, lambda u: infer(emu.base_url, u))
    with pytest.raises(SourceError, match="no cache entry"):
        cache.use(str(uuid_mod.uuid4()), lambda u: None)


def test_use_with_a_file_object_uploads_the_same_bytes_again(
    cache: AssetCache, emu: Emulator
) -> None:
    import io

    data = make_png(9)
    old = cache.get_uuid(data)
    emu.delete(old)
    fn = Recorder(lambda u: infer(emu.base_url, u))
    assert cache.use(io.BytesIO(data), fn).status_code == 200  # read once, sent again
    assert emu.image(fn.uuids[1]).data == data  # type: ignore[union-attr]


# -- touch ------------------------------------------------------------------------------


def test_touch_at_day_25_keeps_an_upload_alive_at_day_40(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a, b = png_file(tmp_path, 1), png_file(tmp_path, 2)
    ua, ub = cache.resolve(a).uuid, cache.resolve(b).uuid
    assert ua and ub
    emu.advance(days=25)
    for u in (ua, ub):  # a generation job elsewhere uses both...
        assert "errors" not in use_on_server(emu.base_url, u)
    entry = cache.touch(ua)  # ...and tells the cache about the first
    assert entry is not None and entry.state == "fresh"
    assert entry.last_used_at == pytest.approx(emu.clock(), abs=60)
    emu.advance(days=15)  # day 40
    hit = cache.resolve(a)
    assert (hit.outcome, hit.uuid) == ("hit", ua)  # the cache serves it as fresh
    assert emu.holds(ua) and "errors" not in use_on_server(emu.base_url, ua)  # and it is alive
    # Without touch the cache could not know: it uploads the other one again.
    assert cache.resolve(b).outcome == "reuploaded" and emu.holds(ub)
    assert emu.upload_count == 3


def test_touch_by_source_and_at_a_given_time(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    data = make_png(2)
    cache.resolve_many([a, data])
    emu.advance(days=20)
    used_at = emu.clock() - DAY
    assert cache.touch(a, at=used_at).last_used_at == used_at  # type: ignore[union-attr]
    now = cache.touch(data).last_used_at  # type: ignore[union-attr]
    assert now == pytest.approx(emu.clock(), abs=60)
    # A use never moves the window back, nor into the future.
    assert cache.touch(data, at=now - 5 * DAY).last_used_at == now  # type: ignore[union-attr]
    assert cache.touch(data, at=now + DAY).last_used_at < now + 60  # type: ignore[union-attr]
    assert emu.upload_count == 2


def test_touch_does_not_revive_a_deleted_upload(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    ua = cache.resolve(a).uuid
    emu.advance(days=31)
    entry = cache.touch(ua)  # type: ignore[arg-type]
    assert entry is not None and entry.state == "expired"
    assert cache.resolve(a).outcome == "reuploaded"


def test_touch_and_invalidate_of_unknown_things(cache: AssetCache, tmp_path: Path) -> None:
    assert cache.touch(str(uuid_mod.uuid4())) is None
    assert cache.invalidate(make_png(3)) is None
    with pytest.raises(SourceError, match="no such file"):
        cache.touch(str(tmp_path / "missing.png"))
    with pytest.raises(SourceError):
        cache.invalidate(b"not an image")


# -- invalidate ---------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["uuid", "path", "bytes"])
def test_invalidate_makes_the_next_use_upload_once(
    by: str, cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a = png_file(tmp_path, 1)
    old = cache.resolve(a).uuid
    assert old is not None
    target: Any = {"uuid": old, "path": a, "bytes": make_png(1)}[by]
    entry = cache.invalidate(target)
    assert entry is not None and entry.uuid == old and entry.state == "expired"
    assert emu.upload_count == 1  # nothing sent by invalidating
    first, second = cache.resolve_many([a, a])
    assert (first.outcome, second.outcome) == ("reuploaded", "hit")
    assert emu.upload_count == 2
    assert cache.invalidate(old) is None  # the old UUID is no longer any entry's


# -- refresh ------------------------------------------------------------------------------


def test_refresh_within_3_days_renews_exactly_the_horizon(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    v, w, x, y = (png_file(tmp_path, seed) for seed in (1, 2, 3, 4))
    old = {v: cache.resolve(v).uuid}  # day 0: deleted by the server at day 30
    emu.advance(days=4)
    old.update({p: cache.resolve(p).uuid for p in (w, x)})  # served until day 33
    emu.advance(days=6)
    old[y] = cache.resolve(y).uuid  # served until day 39
    emu.advance(days=20.5)  # day 30.5: w and x stop being served in 2.5 days, y in 8.5
    x.unlink()
    uploads = emu.upload_count
    report = cache.refresh(within=timedelta(days=3))
    assert sorted((i.status, i.old_uuid) for i in report.items) == [
        ("content-gone", old[x]),
        ("renewed", old[w]),
    ]
    (gone,) = report.failed
    assert gone.reason and gone.reason.startswith("content gone") and "no such file" in gone.reason
    (renewed,) = (i for i in report.items if i.status == "renewed")
    assert renewed.path == str(w) and renewed.uuid != old[w] and emu.holds(renewed.uuid)
    assert emu.upload_count == uploads + 1  # v (expired) and y (outside) untouched
    assert cache.resolve(y).outcome == "hit" and cache.resolve(w).uuid == renewed.uuid
    assert cache.resolve(v).outcome == "reuploaded"  # expired: on demand


def test_refresh_renews_from_a_local_copy_after_the_file_was_deleted(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    cache = make_cache(keep_copies=True)
    a, b = png_file(tmp_path, 1), png_file(tmp_path, 2)
    old = {r.source: r.uuid for r in cache.resolve_many([a, b])}
    a.unlink()
    b.rename(tmp_path / "moved.png")
    emu.advance(days=28)
    report = cache.refresh(within=timedelta(days=3))
    assert [i.status for i in report.items] == ["renewed", "renewed"]
    assert all("local copy" in (i.path or "") for i in report.items)
    assert {i.old_uuid for i in report.items} == set(old.values())
    assert not {i.uuid for i in report.items} & set(old.values())
    held = {emu.image(i.uuid).data for i in report.items}  # type: ignore[arg-type,union-attr]
    assert held == {make_png(1), make_png(2)}


# -- mediaStorage ------------------------------------------------------------------------------


class Recording(httpx.HTTPTransport):
    """A real transport that keeps each request body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Any] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.read()))
        return super().handle_request(request)


def test_uploads_through_media_storage(
    make_cache: Callable[..., AssetCache], emu: Emulator
) -> None:
    sent = Recording()
    cache = make_cache(upload_task="mediaStorage", transport=sent)
    data = make_png(1)
    r = cache.resolve(data)
    assert r.outcome == "uploaded" and emu.holds(r.uuid)  # type: ignore[arg-type]
    ((task,),) = sent.bodies
    assert (task["taskType"], task["operation"]) == ("mediaStorage", "upload")
    assert "errors" not in use_on_server(emu.base_url, r.uuid)  # type: ignore[arg-type]
    assert cache.resolve(data).outcome == "hit" and len(sent.bodies) == 1
    emu.advance(days=31)
    assert cache.resolve(data).outcome == "reuploaded"  # same retention rule
    assert cache.doctor().settings["task_type"] == "mediaStorage"
    with pytest.raises(ConfigurationError, match="contradicts"):
        make_cache(
            upload_task="mediaStorage", task_type="imageUpload", db_path=cache.db_path + "-other"
        )


def test_cli_upload_task_option(tmp_path: Path) -> None:
    ecli = EmulatorCLI(tmp_path)
    a = png_file(tmp_path, 1)
    result = ecli("--upload-task", "mediaStorage", "upload", "--json", a)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["results"][0]["outcome"] == "uploaded"
    doctor = ecli("--upload-task", "mediaStorage", "doctor")
    assert "mediaStorage, 8 requests" in doctor.stdout
    assert ecli("--upload-task", "bogus", "upload", a).exit_code == 2


# -- forget --remote ----------------------------------------------------------------------------


def test_forget_remote_deletes_on_the_server(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a, b = png_file(tmp_path, 1), png_file(tmp_path, 2)
    ua, ub = (r.uuid for r in cache.resolve_many([a, b]))
    assert emu.delete(ub)  # b is gone already: forgetting it is what was wanted
    out = cache.forget([str(a), str(b)], remote=True)
    assert [i.remote for i in out] == [((ua, "deleted"),), ((ub, "already gone"),)]
    assert all(i.error is None for i in out)
    assert not emu.holds(ua) and emu.delete_count == 1
    assert list(cache.entries()) == []
    assert cache.resolve(a).outcome == "uploaded"


def test_forget_remote_retries_and_keeps_what_it_could_not_delete(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    a, b = png_file(tmp_path, 1), png_file(tmp_path, 2)
    ua, ub = (r.uuid for r in cache.resolve_many([a, b]))
    emu.fail_next("503")  # transient: retried with fresh taskUUIDs
    (first,) = cache.forget([str(a)], remote=True)
    assert first.remote == ((ua, "deleted"),) and not emu.holds(ua)
    emu.set_faults(rate=1.0, kinds=["500"])
    (second,) = cache.forget([str(b)], remote=True)
    emu.set_faults(rate=0.0)
    assert second.error and "not deleted on Runware, entry kept" in second.error
    assert "gave up after" in second.error and second.entries == ()
    assert second.remote[0][1].startswith("failed: ")
    assert emu.holds(ub) and [e.uuid for e in cache.entries()] == [ub]


def test_forget_remote_needs_a_key(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNWARE_API_KEY", raising=False)
    with AssetCache(
        API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock, retry=FAST_RETRY
    ) as cache:
        uuid = cache.get_uuid(make_png(1))
    with (
        AssetCache(
            None,
            base_url=emu.base_url,
            db_path=tmp_path / "c.db",
            namespace=cache.namespace,
            clock=emu.clock,
        ) as keyless,
        pytest.raises(ConfigurationError, match="no Runware API key"),
    ):
        keyless.forget([uuid], remote=True)
    assert emu.holds(uuid)


def test_forget_remote_on_the_async_twin(emu: Emulator, tmp_path: Path) -> None:
    async def main() -> tuple[str | None, Any]:
        async with AsyncAssetCache(
            API_KEY,
            base_url=emu.base_url,
            db_path=tmp_path / "c.db",
            clock=emu.clock,
            retry=FAST_RETRY,
        ) as cache:
            uuid = (await cache.resolve(make_png(1))).uuid
            return uuid, await cache.forget([uuid], remote=True)

    uuid, (item,) = asyncio.run(main())
    assert item.remote == ((uuid, "deleted"),) and not emu.holds(uuid)


def test_cli_forget_remote(tmp_path: Path) -> None:
    ecli = EmulatorCLI(tmp_path)
    a = png_file(tmp_path, 1)
    uuid = json.loads(ecli("upload", "--json", a).stdout)["results"][0]["uuid"]
    result = ecli("forget", "--remote", a)
    assert result.exit_code == 0
    assert result.stdout == f"forgot\t{a}\t{uuid} (deleted on Runware)\n"
    emu = Emulator(api_key="x", state_path=f"{ecli.db}.emulator.json")
    assert not any(img.uuid == uuid for img in emu.images())
    as_json = ecli("forget", "--remote", "--json", a)
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)[0]["error"]
    keyless = invoke("--db", tmp_path / "c.db", "forget", "--remote", a)
    assert keyless.exit_code == 2 and "no Runware API key" in keyless.stderr


# -- a fleet ---------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("ASSETCACHE_TEST_POSTGRES"),
    reason="no PostgreSQL: set ASSETCACHE_TEST_POSTGRES (see test_fleet.py)",
)
def test_invalidate_and_touch_reach_the_whole_fleet(emu: Emulator, tmp_path: Path) -> None:
    import psycopg

    base = os.environ["ASSETCACHE_TEST_POSTGRES"]
    schema = "t_" + uuid_mod.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:

        def host(name: str) -> AssetCache:
            return AssetCache(
                API_KEY,
                base_url=emu.base_url,
                db_path=url,
                clock=emu.clock,
                local_db=tmp_path / f"{name}.db",
                retry=FAST_RETRY,
            )

        data = make_png(1)
        with host("a") as a, host("b") as b:
            old = a.get_uuid(data)
            assert b.resolve(data).outcome == "hit"
            emu.advance(days=25)
            use_on_server(emu.base_url, old)
            assert b.touch(old).last_used_at == pytest.approx(emu.clock(), abs=60)  # type: ignore[union-attr]
            emu.advance(days=10)
            assert a.resolve(data).outcome == "hit"  # b's touch reached a
            emu.delete(old)
            fn = Recorder(lambda u: infer(emu.base_url, u))
            assert a.use(data, fn).status_code == 200 and len(fn.uuids) == 2
            assert emu.upload_count == 2
            # b still believes its local copy; its own use heals it, without uploading.
            seen = Recorder(lambda u: infer(emu.base_url, u))
            assert b.use(data, seen).status_code == 200
            assert seen.uuids == [old, fn.uuids[1]] and emu.upload_count == 2
            assert b.invalidate(data).state == "expired"  # type: ignore[union-attr]
            assert b.resolve(data).outcome == "reuploaded"
            assert emu.upload_count == 3
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
