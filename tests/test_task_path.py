"""The task path: run/run_many/prepare/settle against the emulator, and healing."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid as uuid_mod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import API_KEY, make_png, write_images

from assetcache import (
    AssetCache,
    AsyncAssetCache,
    InsufficientCredits,
    RejectedInput,
    RetryBudgetExhausted,
    TaskInputError,
    UnknownImage,
)
from assetcache.emulator import Emulator

UUID_CHARS = set("0123456789abcdef-")


def is_uuid(value: object) -> bool:
    try:
        uuid_mod.UUID(str(value))
    except ValueError:
        return False
    return True


def emulator_reads_image_objects(emu: Emulator) -> bool:
    """Whether this emulator takes ``inputs.referenceImages`` as ``{"image": ...}`` objects
    (older emulators refuse them; the scenario then uses the string form there)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    up = {"taskType": "imageUpload", "taskUUID": str(uuid_mod.uuid4())}
    up["image"] = "data:image/png;base64," + base64.b64encode(make_png(12345)).decode()
    uuid = httpx.post(emu.base_url, json=[up], headers=headers).json()["data"][0]["imageUUID"]
    probe = {
        "taskType": "imageInference",
        "taskUUID": str(uuid_mod.uuid4()),
        "inputs": {"referenceImages": [{"image": uuid}]},
    }
    ok = httpx.post(emu.base_url, json=[probe], headers=headers).status_code == 200
    emu.delete(uuid)
    emu.reset_counters()
    return ok


def big_task(paths: list[Path], mask: bytes, objects: bool = True) -> dict[str, Any]:
    last: Any = {"image": paths[6]} if objects else paths[6]
    return {
        "taskType": "imageInference",
        "model": "runware:100@1",
        "positivePrompt": "a cat",
        "width": 512,
        "height": 512,
        "seedImage": str(paths[0]),
        "maskImage": mask,
        "referenceImages": [str(p) for p in paths[1:5]],
        "controlNet": [{"model": "canny", "guideImage": str(paths[5]), "weight": 0.5}],
        "inputs": {"referenceImages": ["https://example.com/a.png", last]},
    }


def uuids_in(task: dict[str, Any]) -> list[str]:
    last = task["inputs"]["referenceImages"][1]
    return [
        task["seedImage"],
        task["maskImage"],
        *task["referenceImages"],
        task["controlNet"][0]["guideImage"],
        last["image"] if isinstance(last, dict) else last,
    ]


class Recorder:
    """A ``send`` that posts to the emulator with httpx and keeps what it sent."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.sent: list[Any] = []

    def __call__(self, task: dict[str, Any]) -> httpx.Response:
        self.sent.append(task)
        return httpx.post(
            self.emu.base_url, json=[task], headers={"Authorization": f"Bearer {API_KEY}"}
        )


# -- the done-when scenario --------------------------------------------------------------


def test_task_goes_out_with_uuids_only_and_uploads_each_content_once(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    objects = emulator_reads_image_objects(emu)
    paths = write_images(tmp_path / "img", *range(7))
    mask = make_png(99)
    task = big_task(paths, mask, objects)
    before = json.dumps(task, default=str)
    send = Recorder(emu)

    resp = cache.run(task, send)

    assert resp.status_code == 200, resp.text
    assert json.dumps(task, default=str) == before  # the caller's task is untouched
    (sent,) = send.sent
    assert all(is_uuid(u) for u in uuids_in(sent))
    assert sent["inputs"]["referenceImages"][0] == "https://example.com/a.png"
    assert emu.upload_count == 8  # 7 files + the mask bytes, each once
    assert emu.request_count == 2  # one batched upload request + the task

    emu.reset_counters()
    cache.run(task, send)
    assert emu.upload_count == 0  # warm: nothing uploaded
    assert uuids_in(send.sent[1]) == uuids_in(sent)


def test_duplicate_content_is_uploaded_once(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path, 3)
    task = {
        "taskType": "imageInference",
        "seedImage": str(path),
        "referenceImages": [path, path.read_bytes(), str(path)],
    }
    data = cache.run(task)
    assert emu.upload_count == 1
    assert isinstance(data, list) and data[0]["taskType"] == "imageInference"


def test_run_without_send_returns_the_data_objects(cache: AssetCache, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1)
    data = cache.run({"taskType": "imageInference", "seedImage": path, "numberResults": 3})
    assert len(data) == 3
    assert all(is_uuid(item["imageUUID"]) for item in data)


# Positions in uuids_in(): 0 seedImage, 1 maskImage, 2-5 referenceImages[0..3],
# 6 controlNet[0].guideImage, 7 inputs.referenceImages[1].image.
@pytest.mark.parametrize(
    "gone", [(0, 1), (4, 6), (3, 7)], ids=["seed+mask", "ref2+guide", "ref1+inputs"]
)
def test_deleted_uploads_are_healed_alone(
    gone: tuple[int, int], cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    objects = emulator_reads_image_objects(emu)
    paths = write_images(tmp_path / "img", *range(7))
    task = big_task(paths, make_png(99), objects)
    send = Recorder(emu)
    cache.run(task, send)
    first = uuids_in(send.sent[0])
    # Runware deleted two of them.
    for i in gone:
        assert emu.delete(first[i])
    emu.reset_counters()

    resp = cache.run(task, send)

    assert resp.status_code == 200, resp.text
    assert emu.upload_count == 2  # exactly those two, uploaded again
    last = uuids_in(send.sent[-1])
    assert [i for i in range(len(first)) if last[i] != first[i]] == sorted(gone)
    task_uuids = [t["taskUUID"] for t in send.sent[1:]]
    assert len(set(task_uuids)) == len(task_uuids)  # a fresh taskUUID per attempt


def test_deleted_uploads_heal_through_the_caches_own_client(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "img", *range(7))
    task = big_task(paths, make_png(99), emulator_reads_image_objects(emu))
    first = cache.prepare(task).uuids
    emu.delete(first["referenceImages[3]"])
    emu.delete(first["controlNet[0].guideImage"])
    emu.reset_counters()
    data = cache.run(task)
    assert data and data[0]["taskType"] == "imageInference"
    assert emu.upload_count == 2
    after = cache.prepare(task).uuids
    assert {k for k in first if first[k] != after[k]} == {
        "referenceImages[3]",
        "controlNet[0].guideImage",
    }


def test_windows_slide_on_success_not_on_failure(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    cache = make_cache(touch_every=3600)
    paths = write_images(tmp_path, 1, 2)
    task = {"taskType": "imageInference", "seedImage": paths[0], "referenceImages": [paths[1]]}
    cache.run(task)
    start = {e.uuid: e.last_used_at for e in cache.entries()}
    assert len(start) == 2

    emu.advance(hours=5)
    with pytest.raises(RejectedInput):
        cache.run({**task, "numberResults": 999})  # invalidNumberResults: not a use
    assert {e.uuid: e.last_used_at for e in cache.entries()} == start

    cache.run(task)
    after = {e.uuid: e.last_used_at for e in cache.entries()}
    assert after.keys() == start.keys()
    assert all(after[u] == pytest.approx(start[u] + 5 * 3600) for u in start)


def test_bad_value_fails_the_task_before_anything_is_sent(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 1, 2, 3)
    task = {
        "taskType": "imageInference",
        "seedImage": paths[0],
        "referenceImages": [paths[1], paths[2], str(paths[0]), str(tmp_path / "missing.png")],
    }
    with pytest.raises(TaskInputError) as info:
        cache.run(task)
    assert info.value.parameter == "referenceImages[3]"
    assert "referenceImages[3]" in str(info.value) and "no such file" in str(info.value)
    assert emu.inference_count == 0
    assert emu.upload_count == 0  # the task failed whole: its other images were not uploaded

    (tmp_path / "notes.txt").write_text("not an image at all" * 10)
    for bad, word in (
        (str(tmp_path / "notes.txt"), "referenceImages[0]"),
        (12345, "referenceImages[0]"),
        (io.StringIO("text"), "referenceImages[0]"),
    ):
        with pytest.raises(TaskInputError) as info:
            cache.run({"taskType": "imageInference", "referenceImages": [bad]})
        assert info.value.parameter == word
    assert emu.inference_count == 0


def test_every_kind_of_local_image(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    png = [make_png(i) for i in range(6)]
    (tmp_path / "f.png").write_bytes(png[0])
    b64 = base64.b64encode(png[3]).decode()
    task = {
        "taskType": "imageInference",
        "seedImage": str(tmp_path / "f.png"),
        "maskImage": io.BytesIO(png[1]),
        "referenceImages": [
            bytearray(png[2]),
            b64,
            "data:application/octet-stream;base64," + base64.b64encode(png[4]).decode(),
            "data:image/png;base64," + base64.b64encode(png[5]).decode(),
        ],
    }
    prepared = cache.prepare(task)
    assert len(prepared.uuids) == 6
    assert all(is_uuid(u) for u in prepared.uuids.values())
    assert emu.upload_count == 6


def test_pil_images(cache: AssetCache, emu: Emulator) -> None:
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (8, 8), (10, 20, 30))
    prepared = cache.prepare({"taskType": "upscale", "inputImage": image})
    again = cache.prepare({"taskType": "upscale", "inputImage": image.copy()})
    assert prepared.uuids == again.uuids
    assert emu.upload_count == 1


def test_urls_pass_and_known_uuids_are_bound(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path, 5)
    known = cache.get_uuid(path)
    stranger = str(uuid_mod.uuid4())
    prepared = cache.prepare(
        {
            "taskType": "imageInference",
            "seedImage": known,
            "referenceImages": ["https://example.com/x.png", stranger],
        }
    )
    assert prepared.uuids == {"seedImage": known}
    assert prepared.task["referenceImages"] == ["https://example.com/x.png", stranger]
    # A bound UUID heals: Runware deleted it, the cache still has the file.
    emu.delete(known)
    emu.reset_counters()
    data = cache.run({"taskType": "imageInference", "seedImage": known})
    assert emu.upload_count == 1 and data


def test_budget_then_retry_budget_exhausted_with_the_server_error(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    (path,) = write_images(tmp_path, 1)

    def always_gone(task: dict[str, Any]) -> None:
        raise UnknownImage("gone", code="invalidSeedImage", parameter="seedImage", status=400)

    with pytest.raises(RetryBudgetExhausted) as info:
        cache.run({"taskType": "imageInference", "seedImage": path}, always_gone)
    assert isinstance(info.value.__cause__, UnknownImage)
    assert "seedImage" in str(info.value)
    assert emu.upload_count == 2  # the first upload and one re-upload

    emu.reset_counters()
    with pytest.raises(RetryBudgetExhausted):
        cache.run({"taskType": "imageInference", "seedImage": path}, always_gone, reuploads=0)
    assert emu.upload_count == 1  # the entry was invalidated, so this call uploaded first


def test_unrelated_errors_do_not_heal(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1)
    cache.get_uuid(path)
    emu.reset_counters()
    errors: list[Exception] = [
        RejectedInput("bad", code="invalidSteps", parameter="steps", status=400),
        InsufficientCredits("no money", code="insufficientCredits", status=402),
    ]
    for err in errors:

        def fail(task: dict[str, Any], err: Exception = err) -> None:
            raise err

        with pytest.raises(type(err)):
            cache.run({"taskType": "imageInference", "seedImage": path}, fail)
    assert emu.upload_count == 0

    def http_402(task: dict[str, Any]) -> httpx.Response:
        body = {"errors": [{"code": "insufficientCredits", "parameter": "seedImage"}]}
        return httpx.Response(402, json=body)

    resp = cache.run({"taskType": "imageInference", "seedImage": path}, http_402)
    assert resp.status_code == 402 and emu.upload_count == 0


def test_run_many_one_request_and_failures_as_values(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 1, 2, 3)
    tasks = [
        {"taskType": "imageInference", "seedImage": paths[0]},
        {"taskType": "upscale", "inputImage": paths[1]},
        {"taskType": "imageInference", "seedImage": tmp_path / "nope.png"},
        {"taskType": "imageInference", "seedImage": paths[2], "numberResults": 999},
    ]
    out = cache.run_many(tasks)
    assert isinstance(out[0], list) and isinstance(out[1], list)
    assert isinstance(out[2], TaskInputError) and out[2].parameter == "seedImage"
    assert isinstance(out[3], RejectedInput)
    assert emu.upload_count == 3
    assert emu.request_count == 2  # one upload request, one request of tasks


def test_settle_invalidates_what_the_answer_rejects(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 1, 2)
    task = {"taskType": "imageInference", "seedImage": paths[0], "maskImage": paths[1]}
    prepared = cache.prepare(task)
    emu.delete(prepared.uuids["maskImage"])
    resp = httpx.post(
        emu.base_url, json=[prepared.task], headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert resp.status_code == 400
    assert cache.settle(prepared, ok=False, error=resp) == ["maskImage"]
    emu.reset_counters()
    again = cache.prepare(task)
    assert emu.upload_count == 1
    assert again.uuids["seedImage"] == prepared.uuids["seedImage"]
    assert again.uuids["maskImage"] != prepared.uuids["maskImage"]


def test_extra_params(cache: AssetCache, emu: Emulator, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1)
    task = {"taskType": "futureTask", "styleImages": [{"ref": path}]}
    assert cache.prepare(task).uuids == {}
    prepared = cache.prepare(task, extra_params={"futureTask": ["styleImages[].ref"]})
    assert list(prepared.uuids) == ["styleImages[0].ref"]


def test_async_twin_with_async_send(emu: Emulator, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 1, 2)

    async def main() -> list[Any]:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock
        ) as cache:
            sent: list[Any] = []

            async def send(task: dict[str, Any]) -> httpx.Response:
                sent.append(task)
                async with httpx.AsyncClient() as client:
                    return await client.post(
                        emu.base_url, json=[task], headers={"Authorization": f"Bearer {API_KEY}"}
                    )

            task = {"taskType": "imageInference", "seedImage": paths[0], "maskImage": paths[1]}
            status = (await cache.run(task, send)).status_code
            emu.delete(sent[0]["maskImage"])
            status2 = (await cache.run(task, send)).status_code
            data = await cache.run(task)
            return [status, status2, len(sent), data]

    status, status2, n, data = asyncio.run(main())
    assert status == 200 and status2 == 200  # the 400 was healed
    assert n == 3
    assert data and emu.upload_count == 3


def test_run_many_with_send_heals_each_task_alone(
    cache: AssetCache, emu: Emulator, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 1, 2, 3)
    tasks = [{"taskType": "upscale", "inputImage": p} for p in paths]
    first = [cache.prepare(t).uuids["inputImage"] for t in tasks]
    emu.delete(first[1])
    emu.reset_counters()
    send = Recorder(emu)
    out = cache.run_many(tasks, send, concurrency=2)
    assert [r.status_code for r in out] == [200, 200, 200]
    assert emu.upload_count == 1 and len(send.sent) == 4  # one task sent twice


def test_what_is_not_a_task_is_refused_clearly(cache: AssetCache, tmp_path: Path) -> None:
    from assetcache import ConfigurationError

    with pytest.raises(ConfigurationError, match="a task is a dict"):
        cache.run("seedImage=cat.png")
    with pytest.raises(ConfigurationError, match="bad image parameter path"):
        cache.prepare({"taskType": "x"}, extra_params=["styles[0]..image"])
    with pytest.raises(ConfigurationError, match="reuploads"):
        cache.run({"taskType": "upscale"}, reuploads=-1)
    (path,) = write_images(tmp_path, 7)
    deep: dict[str, Any] = {"taskType": "imageInference", "seedImage": path}
    node = deep
    for _ in range(500):  # nesting far from any mapped path is never walked
        node["x"] = {}
        node = node["x"]
    assert list(cache.prepare(deep).uuids) == ["seedImage"]


def test_async_run_many_with_a_coroutine_send(emu: Emulator, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 1, 2)

    async def main() -> list[Any]:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock
        ) as cache:

            async def send(task: dict[str, Any]) -> str:
                await asyncio.sleep(0)
                return task["inputImage"]

            tasks = [{"taskType": "upscale", "inputImage": p} for p in paths]
            sent = await cache.run_many(tasks, send)
            prepared = [await cache.prepare(t) for t in tasks]
            return [sent, [p.uuids["inputImage"] for p in prepared]]

    sent, uuids = asyncio.run(main())
    assert sent == uuids and emu.upload_count == 2


def test_async_delivery_is_polled_for_its_results(cache: AssetCache, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 4)
    task = {
        "taskType": "imageInference",
        "seedImage": path,
        "deliveryMethod": "async",
        "numberResults": 2,
    }
    data = cache.run(task)
    assert len(data) == 2 and all(is_uuid(item["imageUUID"]) for item in data)
