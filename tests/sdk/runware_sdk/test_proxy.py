"""runware-sdk 1.8.0, unchanged, pointed at ``assetcache proxy`` over REST and WebSocket.

The emulator is the upstream; the SDK knows nothing of the cache.
Runs in .venv-sdk/runware-sdk (see .ci/sdk-envs), driven by tests/test_sdk_envs.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import API_KEY, png
from runware import Runware, file_to_data_uri

from assetcache import Proxy
from assetcache.emulator import Emulator

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
OTHER_KEY = "sdk-scenario-second-key"
TRANSPORTS = ["rest", "websocket"]

UPLOAD = """
import asyncio, sys
from runware import Runware, file_to_data_uri

async def main():
    url = sys.argv[1]
    kind = sys.argv[2]
    where = {"http_base_url": url} if kind == "rest" else {"ws_base_url": url}
    async with Runware(api_key=sys.argv[3], transport=kind, **where) as client:
        data = open(sys.argv[4], "rb").read()
        (result,) = await client.image_upload({"image": file_to_data_uri(data)})
        print(result["imageUUID"])

asyncio.run(asyncio.wait_for(main(), 60))
"""


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def client_for(proxy: Proxy, transport: str, key: str = API_KEY) -> Runware:
    where = (
        {"http_base_url": proxy.base_url} if transport == "rest" else {"ws_base_url": proxy.ws_url}
    )
    return Runware(api_key=key, transport=transport, max_retries=0, **where)


def inference(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "model": "runware:100@1",
        "positivePrompt": "a lighthouse",
        "width": 512,
        "height": 512,
        **fields,
    }


@pytest.fixture
def upstream() -> Iterator[Emulator]:
    with Emulator(api_key={API_KEY, OTHER_KEY}) as emu:
        yield emu


@pytest.fixture
def proxy(upstream: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    options = {"clock": upstream.clock}
    with Proxy(upstream=upstream.base_url, db_path=tmp_path / "p.db", cache_options=options) as p:
        yield p


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_same_image_from_two_client_processes_is_uploaded_once(
    proxy: Proxy, upstream: Emulator, tmp_path: Path, transport: str
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(png(1))
    url = proxy.base_url if transport == "rest" else proxy.ws_url
    uuids = {
        subprocess.run(
            [sys.executable, "-c", UPLOAD, url, transport, API_KEY, str(image)],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(uuids) == 1 and upstream.holds(uuids.pop())
    assert upstream.upload_count == 1


@pytest.mark.parametrize("delivery", ["sync", "async"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_inline_images_go_up_as_uuids_and_a_lost_one_heals_unseen(
    proxy: Proxy, upstream: Emulator, transport: str, delivery: str
) -> None:
    seed = file_to_data_uri(png(2))
    refs = [file_to_data_uri(png(3)), file_to_data_uri(png(4))]
    task = inference(seedImage=seed, referenceImages=refs, deliveryMethod=delivery)

    async def scenario() -> list[Any]:
        async with client_for(proxy, transport) as client:
            first = await client.run(dict(task))
            assert upstream.upload_count == 3
            inputs = sorted(i.uuid for i in upstream.images() if i.uuid != first[0]["imageUUID"])
            upstream.reset_counters()
            again = await client.run(dict(task))
            assert upstream.upload_count == 0
            assert upstream.bytes_received < 3000  # UUIDs only
            assert upstream.delete(inputs[0])
            healed = await client.run(dict(task))
            return [first, again, healed]

    results = run(scenario())
    assert all(len(r) == 1 and r[0]["imageUUID"] for r in results)
    assert upstream.upload_count == 1  # only the deleted input went up again
    assert proxy.savings.healed == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_second_key_gets_its_own_uploads(
    proxy: Proxy, upstream: Emulator, transport: str
) -> None:
    image = file_to_data_uri(png(5))

    async def upload(key: str) -> str:
        async with client_for(proxy, transport, key) as client:
            (result,) = await client.image_upload({"image": image})
            return str(result["imageUUID"])

    mine, theirs = run(upload(API_KEY)), run(upload(OTHER_KEY))
    assert mine != theirs
    assert upstream.upload_count == 2
