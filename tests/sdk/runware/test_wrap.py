"""assetcache.runware.wrap() around runware 0.5.24 (the WebSocket SDK)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import API_KEY  # noqa: E402
from runware import (  # noqa: E402
    IControlNetGeneral,
    IImageInference,
    IImageUpscale,
    IInputReference,
    IInputs,
    Runware,
)
from scenario import cache_for, check, images, plain_task, run  # noqa: E402

from assetcache.emulator import Emulator  # noqa: E402
from assetcache.runware import WebSocketSdkClient, wrap  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def test_scenario(emulator: Emulator, tmp_path: Path) -> None:
    paths, mask = images(tmp_path)
    task = plain_task(paths, mask)

    def request() -> Any:
        return IImageInference(
            model="runware:100@1",
            positivePrompt="a lighthouse",
            width=512,
            height=512,
            seedImage=str(paths[0]),
            maskImage=mask,  # bytes: the SDK alone cannot send these
            referenceImages=[str(p) for p in paths[1:5]],
            controlNet=[IControlNetGeneral(model="runware:25@1", guideImage=str(paths[5]))],
            inputs=IInputs(
                referenceImages=[
                    "https://example.com/style.png",
                    IInputReference(image=str(paths[6])),
                ]
            ),
        )

    async def scenario() -> None:
        async with cache_for(emulator, tmp_path) as cache:
            client = wrap(Runware(api_key=API_KEY, url=emulator.ws_url), cache)
            assert isinstance(client, WebSocketSdkClient)
            await client.connect()
            try:

                async def call() -> Any:
                    return await client.imageInference(request())

                await check(emulator, cache, task, call)
                # Other task methods take local images too.
                emulator.reset_counters()
                upscaled = await client.imageUpscale(
                    IImageUpscale(inputImage=paths[0], upscaleFactor=2)
                )
                assert upscaled and emulator.upload_count == 0
            finally:
                await client.disconnect()

    run(scenario())
