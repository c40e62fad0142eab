"""assetcache.runware.wrap() around runware-sdk 1.8, over REST and over WebSocket."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import API_KEY  # noqa: E402
from runware import Runware  # noqa: E402
from scenario import cache_for, check, images, plain_task, run  # noqa: E402

from assetcache import TaskInputError  # noqa: E402
from assetcache.emulator import Emulator  # noqa: E402
from assetcache.runware import RunwareSdkClient, wrap  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def client_for(emulator: Emulator, transport: str) -> Any:
    if transport == "rest":
        return Runware(
            api_key=API_KEY, transport="rest", http_base_url=emulator.base_url, max_retries=0
        )
    return Runware(api_key=API_KEY, ws_base_url=emulator.ws_url, max_retries=0)


@pytest.mark.parametrize("transport", ["rest", "websocket"])
def test_scenario(emulator: Emulator, tmp_path: Path, transport: str) -> None:
    paths, mask = images(tmp_path)
    task = plain_task(paths, mask)

    async def scenario() -> None:
        async with cache_for(emulator, tmp_path) as cache:
            client = wrap(client_for(emulator, transport), cache)
            assert isinstance(client, RunwareSdkClient)
            async with client:

                async def call() -> Any:
                    return await client.run({**task, "deliveryMethod": "sync"})

                await check(emulator, cache, task, call)
                # The SDK's default (async delivery, polled) goes the same way.
                assert await client.run(dict(task))

    run(scenario())


def test_bad_input_fails_before_the_sdk_sends(emulator: Emulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cache_for(emulator, tmp_path) as cache:
            client = wrap(client_for(emulator, "rest"), cache)
            with pytest.raises(TaskInputError, match=r"referenceImages\[1\]"):
                await client.run(
                    {
                        "taskType": "imageInference",
                        "model": "runware:100@1",
                        "referenceImages": ["https://example.com/a.png", str(tmp_path / "no.png")],
                    }
                )
            await client.close()

    run(scenario())
    assert emulator.task_count == 0


def test_use_heals_on_the_sdks_own_error(emulator: Emulator, tmp_path: Path) -> None:
    """``use()`` reads runware-sdk's RunwareError (``validation`` on seedImage) as
    "Runware no longer has this image" (moved here from test_lifecycle: the SDK
    is not installed in the main environment)."""
    from assetcache import AssetCache

    image = tmp_path / "seed.png"
    image.write_bytes(images(tmp_path)[1])
    seen: list[str] = []

    def fn(uuid: str) -> Any:
        seen.append(uuid)
        if len(seen) == 1:
            emulator.delete(uuid)  # Runware dropped it just before the task

        async def go() -> Any:
            async with client_for(emulator, "rest") as rw:
                return await rw.run(
                    {
                        "taskType": "imageInference",
                        "model": "runware:101@1",
                        "positivePrompt": "a lighthouse",
                        "width": 512,
                        "height": 512,
                        "seedImage": uuid,
                        "deliveryMethod": "sync",
                    }
                )

        return run(go())

    with AssetCache(
        API_KEY, base_url=emulator.base_url, db_path=tmp_path / "u.db", clock=emulator.clock
    ) as cache:
        result = cache.use(image, fn)
    assert result and len(seen) == 2 and seen[0] != seen[1]
    assert emulator.upload_count == 2
