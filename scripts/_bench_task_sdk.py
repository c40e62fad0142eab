"""The SDK side of bench_task.py: runs in .venv-sdk/runware (the WebSocket SDK's own
environment) and prints ``{"inline": bytes, "cached": bytes}`` for one call."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import write_images  # noqa: E402
from runware import IImageInference, Runware  # noqa: E402

from assetcache import AsyncAssetCache  # noqa: E402
from assetcache.emulator import Emulator  # noqa: E402
from assetcache.runware import wrap  # noqa: E402

KEY = "bench-sdk-key"


def request(paths: list[str]) -> IImageInference:
    return IImageInference(
        model="runware:100@1",
        positivePrompt="a lighthouse at dusk",
        width=1024,
        height=1024,
        seedImage=paths[0],
        referenceImages=paths[1:4],
    )


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-task-sdk-"))
    paths = [str(p) for p in write_images(tmp / "images", 4)]
    with Emulator(api_key=KEY) as emu:
        client = Runware(api_key=KEY, url=emu.ws_url)
        await client.connect()
        try:
            await client.imageInference(request(paths))  # connection warm
            before = emu.bytes_received
            await client.imageInference(request(paths))
            inline = emu.bytes_received - before
            async with AsyncAssetCache(KEY, base_url=emu.base_url, db_path=tmp / "c.db") as cache:
                wrapped = wrap(client, cache)
                await wrapped.imageInference(request(paths))  # uploads once
                before = emu.bytes_received
                await wrapped.imageInference(request(paths))
                cached = emu.bytes_received - before
        finally:
            await client.disconnect()
    print(json.dumps({"inline": inline, "cached": cached}))


if __name__ == "__main__":
    asyncio.run(main())
