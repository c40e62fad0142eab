"""runware 0.5.24 (the WebSocket SDK), unchanged, pointed at ``assetcache proxy``.

The emulator is the upstream; the SDK knows nothing of the cache.
Runs in .venv-sdk/runware (see .ci/sdk-envs), driven by tests/test_sdk_envs.py.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import API_KEY, png
from runware import IImageInference, Runware

from assetcache import Proxy
from assetcache.emulator import Emulator

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
OTHER_KEY = "sdk-scenario-second-key"

UPLOAD = """
import asyncio, sys
from runware import Runware

async def main():
    client = Runware(api_key=sys.argv[2], url=sys.argv[1])
    await client.connect()
    try:
        uploaded = await client.uploadImage(sys.argv[3])
        print(uploaded.imageUUID, uploaded.imageURL)
    finally:
        await client.disconnect()

asyncio.run(asyncio.wait_for(main(), 60))
"""


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def data_uri(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(seed)).decode()


def inference(**fields: Any) -> IImageInference:
    return IImageInference(
        model="runware:100@1", positivePrompt="a lighthouse", width=512, height=512, **fields
    )


@pytest.fixture
def upstream() -> Iterator[Emulator]:
    with Emulator(api_key={API_KEY, OTHER_KEY}) as emu:
        yield emu


@pytest.fixture
def proxy(upstream: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    options = {"clock": upstream.clock}
    with Proxy(upstream=upstream.base_url, db_path=tmp_path / "p.db", cache_options=options) as p:
        yield p


def test_the_same_image_from_two_client_processes_is_uploaded_once(
    proxy: Proxy, upstream: Emulator, tmp_path: Path
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(png(1))
    outputs = [
        subprocess.run(
            [sys.executable, "-c", UPLOAD, proxy.ws_url, API_KEY, str(image)],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]  # same imageUUID and imageURL
    assert upstream.holds(outputs[0][0]) and outputs[0][1].startswith("http")
    assert upstream.upload_count == 1


def test_inline_images_go_up_as_uuids_and_a_lost_one_heals_unseen(
    proxy: Proxy, upstream: Emulator
) -> None:
    seed, refs = data_uri(2), [data_uri(3), data_uri(4)]

    async def scenario() -> list[Any]:
        client = Runware(api_key=API_KEY, url=proxy.ws_url)
        await client.connect()
        try:
            first = await client.imageInference(inference(seedImage=seed, referenceImages=refs))
            assert upstream.upload_count == 3
            upstream.reset_counters()
            again = await client.imageInference(inference(seedImage=seed, referenceImages=refs))
            assert upstream.upload_count == 0
            assert upstream.bytes_received < 3000  # UUIDs only
            lost = sorted(i.uuid for i in upstream.images() if i.uuid not in _outputs(first, again))
            assert len(lost) == 3
            upstream.delete(lost[0])
            healed = await client.imageInference(inference(seedImage=seed, referenceImages=refs))
            return [first, again, healed]
        finally:
            await client.disconnect()

    results = run(scenario())
    assert all(len(r) == 1 for r in results)
    assert upstream.upload_count == 1  # only the deleted input went up again
    assert proxy.savings.healed == 1


def test_a_second_key_gets_its_own_uploads(
    proxy: Proxy, upstream: Emulator, tmp_path: Path
) -> None:
    image = tmp_path / "dog.png"
    image.write_bytes(png(5))

    async def upload(key: str) -> str:
        client = Runware(api_key=key, url=proxy.ws_url)
        await client.connect()
        try:
            uploaded = await client.uploadImage(str(image))
            assert uploaded is not None
            return uploaded.imageUUID
        finally:
            await client.disconnect()

    mine, theirs = run(upload(API_KEY)), run(upload(OTHER_KEY))
    assert mine != theirs
    assert upstream.upload_count == 2


def _outputs(*batches: list[Any]) -> set[str]:
    return {image.imageUUID for batch in batches for image in batch}
