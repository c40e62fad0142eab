"""The main job, end to end: make a folder of images, upload it twice.

    python scripts/demo.py [FOLDER]

With RUNWARE_API_KEY set it talks to Runware; without, to the bundled
emulator (``assetcache --emulator``), so it needs no account and no network.
The first run uploads each distinct image once (a duplicate file is a hit);
the second run uploads nothing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path


def png(seed: int, size: int = 32) -> bytes:
    rows = b"".join(
        b"\x00" + bytes(((x * seed + y * 7 + seed * 13) % 256) for x in range(size * 3))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo")
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(1, 9):
        (images / f"photo-{i:02d}.png").write_bytes(png(i))
    shutil.copyfile(images / "photo-01.png", images / "photo-01-copy.png")

    exe = shutil.which("assetcache") or str(Path(sys.executable).with_name("assetcache"))
    base = [exe, "--db", str(root / "cache.db")]
    if not os.environ.get("RUNWARE_API_KEY"):
        print("RUNWARE_API_KEY is not set: using the bundled emulator (--emulator)\n")
        base.append("--emulator")
    for run in ("first", "second"):
        print(f"$ assetcache upload {images}   # {run} run")
        proc = subprocess.run([*base, "upload", str(images)], text=True, capture_output=True)
        print(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return proc.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
