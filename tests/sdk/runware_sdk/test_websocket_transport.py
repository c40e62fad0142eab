"""runware-sdk 1.8.0 with its WebSocket transport, unchanged, against the emulator.

Runs in .venv-sdk/runware-sdk (see .ci/sdk-envs), driven by tests/test_sdk_envs.py.
The SDK's ``run()`` defaults to ``deliveryMethod: "async"``: an acknowledgement,
then ``getResponse`` polls over the same socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest
from conftest import API_KEY, png
from runware import Runware, RunwareError, file_to_data_uri

from assetcache.emulator import Emulator

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def client_for(emulator: Emulator, **overrides: Any) -> Runware:
    return Runware(api_key=API_KEY, ws_base_url=emulator.ws_url, retry_delay=20, **overrides)


def inference(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "model": "runware:100@1",
        "positivePrompt": "a lighthouse",
        "width": 512,
        "height": 512,
        **fields,
    }


async def upload(client: Runware, seed: int) -> str:
    (result,) = await client.image_upload({"image": file_to_data_uri(png(seed))})
    return str(result["imageUUID"])


@pytest.mark.parametrize("delivery", ["async", "sync"])
def test_upload_then_seed_and_controlnet_guide_by_uuid(emulator: Emulator, delivery: str):
    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with client_for(emulator) as client:
            await client.connect()
            image_uuid = await upload(client, 1)
            emulator.advance(days=10)
            task = inference(
                seedImage=image_uuid,
                controlNet=[{"model": "c", "guideImage": image_uuid}],
                deliveryMethod=delivery,
            )
            return image_uuid, await client.run(task)

    image_uuid, results = run(scenario())
    assert emulator.upload_count == 1
    held = emulator.image(image_uuid)
    assert held is not None and held.last_used_at == pytest.approx(emulator.clock(), abs=5)
    (result,) = results
    assert result["imageUUID"] != image_uuid and emulator.holds(result["imageUUID"])
    served = httpx.get(result["imageURL"])
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("where", "parameter"),
    [("seedImage", "seedImage"), ("controlNet", "controlNet[0].guideImage")],
)
def test_deleted_uuid_raises_the_sdks_validation_error(
    emulator: Emulator, where: str, parameter: str
):
    async def scenario() -> RunwareError:
        async with client_for(emulator) as client:
            image_uuid = await upload(client, 2)
            assert emulator.delete(image_uuid)
            if where == "seedImage":
                task = inference(seedImage=image_uuid)
            else:
                task = inference(controlNet=[{"model": "c", "guideImage": image_uuid}])
            with pytest.raises(RunwareError) as caught:
                await client.run(task)
            return caught.value

    error = run(scenario())
    # The SDK hides raw codes: invalid<Param> becomes its "validation" category.
    assert error.code == "validation"
    assert error.parameter == parameter
    assert error.task_uuid
    assert emulator.inference_count == 0


def test_reconnect_with_the_session_uuid_receives_the_buffered_result(emulator: Emulator):
    """The server answers a getResponse poll only into the session's buffer and
    hangs up (1001); the SDK reconnects on its own with its connectionSessionUUID
    and the buffered result reaches the waiting run()."""

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with client_for(emulator) as client:
            image_uuid = await upload(client, 3)
            (session,) = emulator.ws_sessions()
            emulator.hang_up_next(task_type="getResponse")
            results = await client.run(inference(seedImage=image_uuid))
            return session, results

    session, results = run(scenario())
    assert emulator.ws_connection_count == 2
    assert list(emulator.ws_sessions()) == [session]  # resumed, not a new session
    assert emulator.ws_replayed_count == 1
    (result,) = results
    assert emulator.holds(result["imageUUID"])
    assert emulator.inference_count == 1


def test_wrong_key_is_refused_at_authentication(emulator: Emulator):
    async def scenario() -> RunwareError:
        client = Runware(api_key="not-the-key", ws_base_url=emulator.ws_url)
        try:
            with pytest.raises(RunwareError) as caught:
                await client.connect()
            return caught.value
        finally:
            await client.close()

    error = run(scenario())
    assert error.code == "auth"
    assert "not-the-key" not in str(error)
