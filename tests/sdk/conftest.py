"""Fixtures shared by the SDK scenarios (each SDK runs in its own environment).

These tests run as ``.venv-sdk/<env>/bin/python -m pytest -q tests/sdk/<name>``
(see ``.ci/sdk-envs`` and ``tests/test_sdk_envs.py``); they need only
assetcache, pytest and the one SDK installed there.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import pytest

from assetcache.emulator import Emulator

API_KEY = "sdk-scenario-key"


def png(seed: int) -> bytes:
    """A valid 2x2 RGB PNG whose bytes depend on ``seed``."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes((seed * 37 + y * 11 + x) % 256 for x in range(6)) for y in range(2)
    )
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key=API_KEY) as emu:
        yield emu
