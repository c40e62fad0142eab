"""What the performance benchmarks (``bench_hit``, ``bench_scan``, ``bench_hash``,
``bench_memory``, ``bench_startup``) share, on top of ``_benchlib``.

Every benchmark measures both sides in one run, alternating them round by
round so a noisy neighbour slows both alike, and reports medians. Each prints
``RATIO <name> <value> (target <op> <value>)`` lines; :class:`Report` collects
them and turns a missed target into exit status 1.
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _benchlib import KEY, ratio_line, start_emulator

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

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"seed\x00%d" % seed)
        + chunk(b"IDAT", zlib.compress(bytes([0, seed % 256, 7, 9])))
        + chunk(b"IEND", b"")
    )


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
