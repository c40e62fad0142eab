"""Test images built by hand (no Pillow needed) and small utilities."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

API_KEY = "test-key-7f3a9c-SECRET-do-not-log"


def make_png(seed: int = 0, width: int = 4, height: int = 4) -> bytes:
    """A valid RGB PNG whose pixels depend on ``seed`` (distinct seeds, distinct bytes)."""
    rows = b"".join(
        b"\x00" + bytes(((seed * 7919 + y * 31 + x * 17) % 256) for x in range(width * 3))
        for y in range(height)
    )
    tag = struct.pack(">I", seed & 0xFFFFFFFF)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"seed\x00" + tag.hex().encode())
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def make_gif(seed: int = 0) -> bytes:
    """A 1x1 GIF89a."""
    color = bytes([seed % 256, (seed * 3) % 256, (seed * 7) % 256])
    return (
        b"GIF89a"
        + struct.pack("<HH", 1, 1)
        + b"\x80\x00\x00"
        + color
        + b"\x00\x00\x00"
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, 1, 1)
        + b"\x00"
        + b"\x02\x02\x44\x01\x00"
        + b"\x3b"
    )


def make_bmp(seed: int = 0, width: int = 2, height: int = 2) -> bytes:
    """A 24-bit BMP."""
    row = bytes(((seed + i) % 256) for i in range(width * 3))
    row += b"\x00" * (-len(row) % 4)
    pixels = row * height
    header_size = 14 + 40
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", header_size + len(pixels), 0, 0, header_size) + dib + pixels


def make_jpeg() -> bytes:
    """A small real JPEG (needs Pillow)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def use_on_server(base_url: str, image_uuid: str, api_key: str = API_KEY) -> dict:
    """Use an image in a consuming task (imageInference with seedImage), as an app would."""
    import uuid

    import httpx

    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "seedImage": image_uuid,
        "positivePrompt": "a test",
        "model": "runware:100@1",
        "width": 512,
        "height": 512,
    }
    resp = httpx.post(base_url, json=[task], headers={"Authorization": f"Bearer {api_key}"})
    return resp.json()


def write_images(folder: Path, *seeds: int) -> list[Path]:
    """``folder/img-NN.png`` for each seed (distinct content per seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"img-{seed:02d}.png"
        path.write_bytes(make_png(seed))
        paths.append(path)
    return paths


class Blocking:
    """An :class:`~assetcache.AsyncAssetCache` driven from blocking test code: each
    coroutine method runs to the end on one private event loop (its HTTP client
    lives there), other attributes are the cache's own. Lets one behaviour test
    run through both twins (``tests/test_parity.py``)."""

    def __init__(self, cache: Any) -> None:
        import asyncio

        self._cache = cache
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        import inspect

        attr = getattr(self._cache, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def run(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(attr(*args, **kwargs))

        return run

    def close(self) -> None:
        self._loop.run_until_complete(self._cache.aclose())
        self._loop.close()


# -- a few named views of a cache's insides, so that tests do not reach for them --------


def engine_of(cache: Any) -> Any:
    """The cache's engine (``_engine``): for the few tests that drive a step directly."""
    return cache._engine


def store_of(cache: Any) -> Any:
    """The cache's SQLite file index and store (``_storage._sqlite.SQLiteStore``)."""
    return cache._engine.store


def query(cache: Any, sql: str, params: Any = ()) -> list[Any]:
    """Rows of ``sql`` read from the cache's own database connection."""
    return store_of(cache).read(sql, params)


def sigint_default() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT: a child of a background
    job (``cmd &``, nohup, some CI runners) inherits SIGINT ignored, and Python
    then never raises KeyboardInterrupt; give it the default, as a terminal would."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
