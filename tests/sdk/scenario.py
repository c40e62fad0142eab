"""The task-path scenario both SDK wrappers must pass (each in its own environment).

A task holding a path in seedImage, bytes in maskImage, four paths in
referenceImages, a ControlNet guide and an ``inputs.referenceImages[1].image``
goes out with UUIDs only, each distinct content uploaded once; run again, it
uploads nothing and sends no image bytes; after the emulator deletes two of
those uploads, one call uploads exactly those two again and succeeds; the
window of every image slid (on the server and in the cache).
"""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from conftest import API_KEY

from assetcache import AsyncAssetCache
from assetcache.emulator import Emulator

T = TypeVar("T")
SIDE = 32  # 32x32 noise: ~3 KB per PNG, so inlined bytes would show
ORDER = [
    "seedImage",
    "maskImage",
    "referenceImages[0]",
    "referenceImages[1]",
    "referenceImages[2]",
    "referenceImages[3]",
    "controlNet[0].guideImage",
    "inputs.referenceImages[1].image",
]


def noise_png(seed: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(SIDE * 3) for _ in range(SIDE))
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def run(coro: Awaitable[T], timeout: float = 90) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def images(tmp_path: Path) -> tuple[list[Path], bytes]:
    """Seven image files (seed, four references, guide, inputs reference) and mask bytes."""
    folder = tmp_path / "img"
    folder.mkdir()
    paths = []
    for seed in range(7):
        path = folder / f"img-{seed}.png"
        path.write_bytes(noise_png(seed + 1))
        paths.append(path)
    return paths, noise_png(99)


def plain_task(paths: list[Path], mask: bytes) -> dict[str, Any]:
    """The scenario's task as a plain dict (what the cache prepares to read UUIDs)."""
    return {
        "taskType": "imageInference",
        "model": "runware:100@1",
        "positivePrompt": "a lighthouse",
        "width": 512,
        "height": 512,
        "seedImage": str(paths[0]),
        "maskImage": mask,
        "referenceImages": [str(p) for p in paths[1:5]],
        "controlNet": [{"model": "runware:25@1", "guideImage": str(paths[5])}],
        "inputs": {"referenceImages": ["https://example.com/style.png", {"image": str(paths[6])}]},
    }


def cache_for(emulator: Emulator, tmp_path: Path) -> AsyncAssetCache:
    return AsyncAssetCache(
        API_KEY, base_url=emulator.base_url, db_path=tmp_path / "cache.db", clock=emulator.clock
    )


async def check(
    emulator: Emulator,
    cache: AsyncAssetCache,
    task: dict[str, Any],
    call: Callable[[], Awaitable[Any]],
) -> None:
    """``call()`` runs the scenario's task through the wrapped client."""

    async def bound() -> list[str]:
        prepared = await cache.prepare(task)  # warm: reads the cache, uploads nothing
        return [prepared.uuids[name] for name in ORDER]

    first = await call()
    assert first, "no result"
    assert emulator.upload_count == 8  # 7 files + the mask bytes, once each
    uuids = await bound()
    assert len(set(uuids)) == 8
    now = emulator.clock()
    assert all(abs(emulator.image(u).last_used_at - now) < 5 for u in uuids)  # each was used

    emulator.reset_counters()
    emulator.advance(hours=2)
    assert await call()
    assert emulator.upload_count == 0
    assert emulator.bytes_received < 8 * 1024  # UUIDs only: eight images inline are ~30 KB
    assert await bound() == uuids

    # Runware deleted two of them: one call uploads exactly those two again.
    assert emulator.delete(uuids[3]) and emulator.delete(uuids[6])
    emulator.reset_counters()
    emulator.advance(hours=3)
    assert await call()
    assert emulator.upload_count == 2
    again = await bound()
    assert [i for i in range(8) if again[i] != uuids[i]] == [3, 6]
    now = emulator.clock()
    assert all(abs(emulator.image(u).last_used_at - now) < 5 for u in again)
    slid = {e.uuid: e.last_used_at for e in await cache.entries()}
    assert all(abs(slid[u] - now) < 5 for u in again)  # the cache saw the evidence too
