"""runware 0.5.24 (the WebSocket-only SDK), unchanged, against the emulator's /v1 socket.

Runs in .venv-sdk/runware (see .ci/sdk-envs), driven by tests/test_sdk_envs.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import API_KEY, png
from runware import IControlNetGeneral, IImageInference, Runware, RunwareAPIError

from assetcache.emulator import Emulator

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
MODEL = "runware:100@1"


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def inference(**fields: Any) -> IImageInference:
    return IImageInference(
        model=MODEL, positivePrompt="a lighthouse", width=512, height=512, **fields
    )


def test_upload_then_seed_and_controlnet_guide_by_uuid(emulator: Emulator, tmp_path: Path):
    image = tmp_path / "seed.png"
    image.write_bytes(png(1))

    async def scenario() -> tuple[str, list[Any]]:
        client = Runware(api_key=API_KEY, url=emulator.ws_url)
        await client.connect()
        try:
            uploaded = await client.uploadImage(str(image))
            assert uploaded is not None
            emulator.advance(days=10)
            images = await client.imageInference(
                inference(
                    seedImage=uploaded.imageUUID,
                    controlNet=[IControlNetGeneral(model="c", guideImage=uploaded.imageUUID)],
                )
            )
            return uploaded.imageUUID, images
        finally:
            await client.disconnect()

    image_uuid, images = run(scenario())
    assert emulator.upload_count == 1  # the guide was sent as a UUID, not uploaded again
    held = emulator.image(image_uuid)
    assert held is not None and held.last_used_at == pytest.approx(emulator.clock(), abs=5)
    assert len(images) == 1 and images[0].imageUUID != image_uuid
    assert emulator.holds(images[0].imageUUID)  # a generated image is held too
    served = httpx.get(images[0].imageURL)
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    assert emulator.ws_connection_count == 1


@pytest.mark.parametrize(
    ("where", "code", "parameter"),
    [
        ("seedImage", "invalidSeedImage", "seedImage"),
        ("controlNet", "invalidGuideImage", "controlNet[0].guideImage"),
    ],
)
def test_deleted_uuid_raises_the_sdks_api_error(
    emulator: Emulator, tmp_path: Path, where: str, code: str, parameter: str
):
    async def scenario() -> RunwareAPIError:
        client = Runware(api_key=API_KEY, url=emulator.ws_url)
        await client.connect()
        try:
            uploaded = await client.uploadImage(_file(tmp_path, 2))
            assert uploaded is not None and emulator.delete(uploaded.imageUUID)
            if where == "seedImage":
                task = inference(seedImage=uploaded.imageUUID)
            else:
                guide = IControlNetGeneral(model="c", guideImage=uploaded.imageUUID)
                task = inference(controlNet=[guide])
            with pytest.raises(RunwareAPIError) as caught:
                await client.imageInference(task)
            return caught.value
        finally:
            await client.disconnect()

    error = run(scenario())
    assert error.code == code
    assert error.error_data["parameter"] == parameter
    assert error.error_data["taskUUID"]
    assert emulator.inference_count == 0


def test_reconnect_with_the_session_uuid_receives_the_buffered_result(
    emulator: Emulator, tmp_path: Path
):
    """The server hangs up (1001) before answering; the SDK's next connection
    authenticates with its connectionSessionUUID and gets the result it missed."""

    async def scenario() -> tuple[str, list[Any]]:
        client = Runware(api_key=API_KEY, url=emulator.ws_url)
        await client.connect()
        try:
            uploaded = await client.uploadImage(_file(tmp_path, 3))
            assert uploaded is not None
            (session,) = emulator.ws_sessions()
            emulator.hang_up_next(task_type="imageInference")
            pending = asyncio.ensure_future(
                client.imageInference(inference(seedImage=uploaded.imageUUID))
            )
            deadline = time.monotonic() + 10
            while emulator.ws_sessions().get(session) != 1:
                assert time.monotonic() < deadline, "the emulator never buffered the result"
                await asyncio.sleep(0.02)
            assert not pending.done()
            await client.ensureConnection()  # reconnects, presenting the session UUID
            images = await asyncio.wait_for(pending, 10)
            return session, images
        finally:
            await client.disconnect()

    session, images = run(scenario())
    assert emulator.ws_connection_count == 2
    assert list(emulator.ws_sessions()) == [session]  # resumed, not a new session
    assert emulator.ws_replayed_count == 1
    assert len(images) == 1 and emulator.holds(images[0].imageUUID)
    assert emulator.inference_count == 1  # answered from the buffer, not run twice


def test_wrong_key_is_refused_at_authentication(emulator: Emulator, tmp_path: Path):
    async def scenario() -> None:
        client = Runware(api_key="not-the-key", url=emulator.ws_url)
        try:
            with pytest.raises(ConnectionError) as caught:
                await client.uploadImage(_file(tmp_path, 4))
            assert "not-the-key" not in str(caught.value)
        finally:
            await client.disconnect()

    run(scenario())
    assert emulator.upload_count == 0


def _file(folder: Path, seed: int) -> str:
    """The SDK uploads local files only (a data URI is passed through as it is)."""
    path = folder / f"image-{seed}.png"
    path.write_bytes(png(seed))
    return str(path)
