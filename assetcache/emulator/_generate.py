"""Deterministic stand-ins for generated images: small PNGs written by hand.

A task's outputs depend only on what it asks for (its JSON without the
taskUUID) and the result's index, so a test that runs the same task twice
sees the same pixels, and different prompts give different bytes. The
emulator writes the PNG itself (zlib + struct): no Pillow needed, and nothing
shared with the client's image code.

    >>> png(b"seed")[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    >>> output_uuid("6f1c1a0e-4bd1-4f0e-9d0e-3d9b1f7d2a10", 0) == output_uuid(
    ...     "6f1c1a0e-4bd1-4f0e-9d0e-3d9b1f7d2a10", 0)
    True
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
import zlib
from typing import Any

SIDE = 8  # px: enough to tell images apart, small enough to cost nothing


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png(seed: bytes, side: int = SIDE) -> bytes:
    """An RGB PNG of ``side`` x ``side`` px whose pixels are drawn from ``seed``."""
    stream = b""
    counter = 0
    need = side * side * 3
    while len(stream) < need:
        stream += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    row = side * 3
    raw = b"".join(b"\x00" + stream[y * row : (y + 1) * row] for y in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def task_seed(task: dict[str, Any], index: int) -> bytes:
    """What a generated output depends on: the request minus its taskUUID, and its index."""
    request = {k: v for k, v in task.items() if k not in ("taskUUID", "deliveryMethod")}
    text = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(f"{text}#{index}".encode()).digest()


def output_uuid(task_uuid: str, index: int) -> str:
    """A UUID v4 for output ``index`` of a task, stable for that taskUUID."""
    digest = bytearray(hashlib.sha256(f"{task_uuid.lower()}#{index}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def caption(task: dict[str, Any]) -> str:
    """A caption that names the task's input, so two inputs get two captions."""
    token = hashlib.sha256(
        json.dumps(
            task.get("inputImage") or task.get("inputs") or "", sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:8]
    return f"an emulated image ({token})"
