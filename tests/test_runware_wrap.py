"""assetcache.runware.wrap() without the SDKs: how a client is told apart, what is refused.

The real SDKs run in their own environments (tests/sdk/, tests/test_sdk_envs.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, write_images

from assetcache import AssetCache, AsyncAssetCache, ConfigurationError
from assetcache.emulator import Emulator
from assetcache.runware import RunwareSdkClient, WebSocketSdkClient, wrap


class RestClient:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def run(self, params: dict[str, Any], options: Any = None) -> list[dict[str, Any]]:
        self.sent.append((params, options))
        return [{"taskUUID": params.get("taskUUID"), "imageUUID": "out"}]

    async def model_search(self, params: Any) -> str:
        return "passed through"


RestClient.__module__ = "runware.client"


@dataclasses.dataclass
class Upscale:
    inputImage: Any = None
    taskUUID: str | None = None


class WsClient:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def imageInference(self, request: Any) -> list[str]:
        return ["inference"]

    async def imageUpscale(self, request: Any) -> list[Any]:
        self.sent.append(request)
        return ["upscaled"]

    async def getResponse(self, task_uuid: str) -> str:
        return task_uuid


WsClient.__module__ = "runware.server"


def test_wrap_tells_the_sdks_apart_and_refuses_the_rest(emu: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncAssetCache(API_KEY, base_url=emu.base_url, db_path=tmp_path / "a.db") as c:
            assert isinstance(wrap(RestClient(), c), RunwareSdkClient)
            assert isinstance(wrap(WsClient(), c), WebSocketSdkClient)
            with pytest.raises(ConfigurationError, match="not a Runware SDK client"):
                wrap(object(), c)
            with pytest.raises(ConfigurationError, match="wrapped already"):
                wrap(wrap(RestClient(), c), c)

    asyncio.run(main())
    with (
        AssetCache(API_KEY, base_url=emu.base_url, db_path=tmp_path / "s.db") as sync_cache,
        pytest.raises(ConfigurationError, match="AsyncAssetCache"),
    ):
        wrap(RestClient(), sync_cache)


def test_wrapped_methods_take_local_images(emu: Emulator, tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1)

    async def main() -> tuple[Any, ...]:
        async with AsyncAssetCache(API_KEY, base_url=emu.base_url, db_path=tmp_path / "a.db") as c:
            rest, ws = RestClient(), WsClient()
            wrapped_rest, wrapped_ws = wrap(rest, c), wrap(ws, c)
            await wrapped_rest.run({"taskType": "upscale", "inputImage": path})
            # No taskType: the SDK works it out from the model; every mapped path is read.
            await wrapped_rest.run({"model": "x", "seedImage": str(path)}, "opts")
            request = Upscale(inputImage=path)
            assert await wrapped_ws.imageUpscale(request) == ["upscaled"]
            return (
                rest.sent,
                ws.sent,
                request,
                await wrapped_rest.model_search({}),
                await wrapped_ws.getResponse("t"),
                wrapped_ws.unwrapped is ws,
            )

    rest_sent, ws_sent, request, searched, polled, same = asyncio.run(main())
    uuid = rest_sent[0][0]["inputImage"]
    assert isinstance(uuid, str) and len(uuid) == 36
    assert rest_sent[1] == (
        {"model": "x", "seedImage": uuid, "taskUUID": rest_sent[1][0]["taskUUID"]},
        "opts",
    )
    assert ws_sent[0].inputImage == uuid and request.inputImage == path  # the caller's is untouched
    assert emu.upload_count == 1
    assert (searched, polled, same) == ("passed through", "t", True)
