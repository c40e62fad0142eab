"""Shared pieces of the benchmark scripts (not a public module)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx

KEY = "bench-key"


def noisy_png(seed: int, side: int = 80) -> bytes:
    """A PNG of about 20 KB that does not compress (random pixels)."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.png"
        path.write_bytes(noisy_png(i))
        paths.append(path)
    return paths


def start_emulator(latency: float, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """An emulator in its own process on 127.0.0.1: ``(process, base_url)``."""
    env = dict(os.environ, RUNWARE_API_KEY=KEY)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assetcache.emulator",
            "--port",
            "0",
            "--latency",
            str(latency),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def emulator_stats(url: str) -> dict:
    return httpx.get(url.rsplit("/", 1)[0] + "/_emulator/stats").json()


def ratio_line(name: str, value: float, op: str, target: float) -> bool:
    ok = value >= target if op == ">=" else value <= target
    print(f"RATIO {name} {value:.2f} (target {op} {target:g}){'' if ok else '  MISSED'}")
    return ok


def count_line(name: str, got: int, want: int) -> bool:
    ok = got == want
    print(f"COUNT {name} {got} (target == {want}){'' if ok else '  MISSED'}")
    return ok
