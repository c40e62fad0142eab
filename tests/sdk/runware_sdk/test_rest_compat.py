"""runware-sdk's REST transport, unchanged, against the emulator (in .venv-sdk/runware-sdk).

If the SDK can upload, use and delete images here and recognises the
emulator's errors as its own, the emulator speaks the protocol the real
clients expect. (The SDK maps raw server codes to a small stable enum:
``invalidApiKey`` becomes ``code == "auth"``, ``invalid<Param>`` becomes
``"validation"``; the raw code itself is not exposed.)
"""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
import zlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

runware = pytest.importorskip("runware")

from assetcache.emulator import Emulator  # noqa: E402

pytestmark = pytest.mark.timeout(30)

KEY = "sdk-key"
T = TypeVar("T")


def make_png() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00\x80\xff"))
        + chunk(b"IEND", b"")
    )


PNG = make_png()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, start_time=1_700_000_000.0, frozen=True) as emulator:
        yield emulator


def client(emu: Emulator, api_key: str = KEY, **config: Any) -> Any:
    """A REST-transport SDK client aimed at the emulator, with tight timeouts."""
    settings: dict[str, Any] = {"max_retries": 0, "timeout": 5_000, "poll_timeout": 10_000}
    settings.update(config)
    return runware.Runware(
        api_key=api_key, transport="rest", http_base_url=emu.base_url, **settings
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def inference(**fields: Any) -> dict[str, Any]:
    # taskType and an AIR model id given explicitly: the SDK then never
    # consults its online model registry.
    return {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": "a lighthouse",
        "width": 512,
        "height": 512,
        **fields,
    }


def test_image_upload_returns_a_held_uuid(emu: Emulator):
    async def go() -> list[dict[str, Any]]:
        async with client(emu) as rw:
            # file_to_data_uri(bytes) labels the data application/octet-stream.
            return await rw.image_upload({"image": runware.file_to_data_uri(PNG)})

    (result,) = run(go())
    assert result["taskType"] == "imageUpload"
    assert uuid.UUID(result["imageUUID"]).version == 4
    record = emu.image(result["imageUUID"])
    assert record is not None and record.data == PNG
    assert emu.upload_count == 1


def test_media_storage_upload_and_delete(emu: Emulator):
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with client(emu) as rw:
            up = await rw.media_storage(
                {"operation": "upload", "media": base64.b64encode(PNG).decode()}
            )
            down = await rw.media_storage({"operation": "delete", "media": up[0]["mediaUUID"]})
            return up, down

    up, down = run(go())
    assert down[0]["mediaUUID"] == up[0]["mediaUUID"]
    assert not emu.holds(up[0]["mediaUUID"]) and emu.delete_count == 1


def test_wrong_key_raises_the_sdk_auth_error(emu: Emulator):
    async def go() -> None:
        async with client(emu, api_key="not-the-key") as rw:
            await rw.image_upload({"image": base64.b64encode(PNG).decode()})

    with pytest.raises(runware.RunwareError) as caught:
        run(go())
    error = caught.value
    assert runware.is_runware_error(error)
    assert error.code == "auth"  # the SDK's category for invalidApiKey
    assert error.status_code == 401
    assert error.parameter == "apiKey"
    assert not error.retryable
    assert "not-the-key" not in str(error)
    assert emu.upload_count == 0


@pytest.mark.parametrize("delivery", ["sync", "async"])
def test_invalid_seed_image_surfaces_as_validation_error(emu: Emulator, delivery: str):
    async def go() -> None:
        async with client(emu) as rw:
            await rw.run(inference(seedImage=str(uuid.uuid4()), deliveryMethod=delivery))

    with pytest.raises(runware.RunwareError) as caught:
        run(go())
    error = caught.value
    assert error.code == "validation"
    assert error.parameter == "seedImage"
    assert error.task_type == "imageInference"
    assert error.status_code == 400
    assert "previously uploaded or generated image" in error.message


def test_expired_upload_is_rejected_on_use(emu: Emulator):
    async def upload() -> str:
        async with client(emu) as rw:
            return (await rw.image_upload({"image": base64.b64encode(PNG).decode()}))[0][
                "imageUUID"
            ]

    async def use(image_uuid: str) -> list[dict[str, Any]]:
        async with client(emu) as rw:
            return await rw.run(inference(seedImage=image_uuid, deliveryMethod="sync"))

    image_uuid = run(upload())
    emu.advance(days=31)
    with pytest.raises(runware.RunwareError) as caught:
        run(use(image_uuid))
    assert (caught.value.code, caught.value.parameter) == ("validation", "seedImage")


def test_inference_with_uploaded_seed_over_async_polling(emu: Emulator):
    """The SDK's default run(): deliveryMethod=async, ack, then getResponse polls."""

    async def go() -> list[dict[str, Any]]:
        async with client(emu) as rw:
            seed = await rw.image_upload({"image": base64.b64encode(PNG).decode()})
            emu.advance(days=20)
            return await rw.run(inference(seedImage=seed[0]["imageUUID"]))

    (result,) = run(go())
    assert uuid.UUID(result["imageUUID"]).version == 4
    (seed,) = emu.images()
    assert seed.last_used_at == emu.clock()  # the use slid the retention window
    assert emu.inference_count == 1


def test_sdk_retries_through_a_transient_fault(emu: Emulator):
    emu.fail_next("503")

    async def go() -> list[dict[str, Any]]:
        async with client(emu, max_retries=2, retry_delay=1) as rw:
            return await rw.image_upload({"image": base64.b64encode(PNG).decode()})

    (result,) = run(go())
    assert emu.holds(result["imageUUID"])
    assert (emu.fault_count, emu.request_count, emu.upload_count) == (1, 2, 1)
