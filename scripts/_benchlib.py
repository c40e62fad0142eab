"""Shared pieces of the benchmark scripts (not a public module)."""

from __future__ import annotations

import os
import random
import statistics
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KEY = "bench-key"


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def rgb_png(width: int, height: int, rows: bytes, *extra: bytes) -> bytes:
    """A PNG of filtered RGB ``rows``, with ``extra`` chunks before the image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def noisy_png(seed: int, side: int = 80) -> bytes:
    """A PNG of about 20 KB that does not compress (random pixels)."""
    rng = random.Random(seed)
    return rgb_png(side, side, b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side)))


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


__all__ = ["KEY", "EmulatorProcess", "Report", "alternate", "median", "png", "write_big_png"]


@dataclass
class Report:
    """Collects ``RATIO`` lines; :meth:`exit` fails the script if a target was missed."""

    missed: list[str] = field(default_factory=list)

    def ratio(self, name: str, value: float, op: str, target: float) -> None:
        if not ratio_line(name, value, op, target):
            self.missed.append(name)

    def exit(self) -> None:
        if self.missed:
            print(f"missed: {', '.join(self.missed)}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def alternate(
    rounds: int,
    first: Callable[[], float],
    second: Callable[[], float],
) -> tuple[list[float], list[float]]:
    """Run both sides ``rounds`` times, swapping which goes first each round."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


def png(seed: int) -> bytes:
    """A valid 1x1 PNG (about 90 bytes), distinct per ``seed``."""
    return rgb_png(1, 1, bytes([0, seed % 256, 7, 9]), chunk(b"tEXt", b"seed\x00%d" % seed))


def write_big_png(path: Path, seed: int, size: int) -> int:
    """Write a valid 1x1 PNG with ``size`` random bytes in an ancillary chunk,
    in pieces (the writer never holds the file); returns the file's size."""
    head = png(seed)
    end = head.index(b"IDAT") - 4  # the big chunk goes before the image data
    kind = b"zzZz"
    with open(path, "wb") as f:
        f.write(head[:end])
        f.write(struct.pack(">I", size) + kind)
        crc = zlib.crc32(kind)
        left = size
        while left:
            piece = os.urandom(min(left, 16 << 20))
            crc = zlib.crc32(piece, crc)
            f.write(piece)
            left -= len(piece)
        f.write(struct.pack(">I", crc))
        f.write(head[end:])
        return f.tell()


class EmulatorProcess:
    """The emulator in its own process on 127.0.0.1 (any free port), as a context manager."""

    def __enter__(self) -> EmulatorProcess:
        self.proc, self.url = start_emulator(0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
