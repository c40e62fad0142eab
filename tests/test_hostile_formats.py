"""Structural validation is strict about structure, never stricter than decoders.

A corpus of variants of real images (made with Pillow) that mainstream
decoders still read in full: each one Pillow opens *and fully decodes* must be
accepted. Files cut inside their image data, which no decoder reads, are
still refused (and Pillow is asked to confirm that it cannot read them either).
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable

import pytest
from helpers import make_bmp, make_gif, make_png

from assetcache import InvalidImage
from assetcache._formats import FormatCheck, validate

PIL = pytest.importorskip("PIL.Image")


def pillow_reads(data: bytes) -> bool:
    try:
        with PIL.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def picture(fmt: str, size: tuple[int, int] = (48, 32), **options: object) -> bytes:
    rng = random.Random(size[0] * 31 + size[1])
    image = PIL.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, marker code) of each header segment up to and including SOS."""
    out, i = [], 2
    while True:
        code = data[i + 1]
        out.append((i, code))
        if code == 0xDA:
            return out
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]


def insert_before(data: bytes, code: int, extra: bytes) -> bytes:
    at = next(off for off, c in jpeg_segments(data) if c == code)
    return data[:at] + extra + data[at:]


def bmp_file_size(data: bytes, value: int) -> bytes:
    return data[:2] + struct.pack("<I", value) + data[6:]


JPEG = picture("JPEG", quality=85)
PROGRESSIVE = picture("JPEG", progressive=True)
BMP = picture("BMP")
PNG = picture("PNG")
GIF = picture("GIF")
WEBP = picture("WEBP")

#: Variants that mainstream decoders read in full.
TOLERATED: dict[str, Callable[[], bytes]] = {
    "bmp: file-size field too big": lambda: bmp_file_size(BMP, len(BMP) * 10),
    "bmp: file-size field too small": lambda: bmp_file_size(BMP, 20),
    "bmp: file-size field zero": lambda: bmp_file_size(BMP, 0),
    "bmp: file-size field wrong, hand-made": lambda: bmp_file_size(make_bmp(3, 5, 3), 1 << 30),
    "bmp: trailing bytes": lambda: BMP + b"\x00" * 7,
    "jpeg: stray bytes before DQT": lambda: insert_before(JPEG, 0xDB, b"\x00\x01junk"),
    "jpeg: stray bytes before SOF": lambda: insert_before(JPEG, 0xC0, b"\x12\x34"),
    "jpeg: stray bytes before SOS": lambda: insert_before(JPEG, 0xDA, b"garbage\x00"),
    "jpeg: stray 0xFF00 before DHT": lambda: insert_before(JPEG, 0xC4, b"\xff\x00\x00"),
    "jpeg: fill bytes before a marker": lambda: insert_before(JPEG, 0xDB, b"\xff\xff\xff"),
    "jpeg: APP1 shorter than its content": lambda: insert_before(
        JPEG, 0xDB, b"\xff\xe1\x00\x08Exif\x00\x00 and what the length forgot"
    ),
    "jpeg: truncated APP segment in a progressive file": lambda: insert_before(
        PROGRESSIVE, 0xDB, b"\xff\xed\x00\x06Ph" + b"otoshop 3.0\x00"
    ),
    "jpeg: trailer after EOI": lambda: JPEG + b"camera trailer" * 10,
    "png: no IEND": lambda: PNG[:-12],
    "png: no IEND, hand-made": lambda: make_png(5, 9, 9)[:-12],
    "png: cut inside the last CRC": lambda: PNG[:-14],
    "png: trailing bytes": lambda: PNG + b"junk",
    "gif: no trailer": lambda: GIF[:-1],
    "gif: no trailer, hand-made": lambda: make_gif(4)[:-1],
    "gif: junk after the trailer": lambda: GIF + b"junk",
    "webp: trailing bytes": lambda: WEBP + b"junkjunk",
}

#: Variants no decoder reads: cut inside the image data.
UNREADABLE: dict[str, Callable[[], bytes]] = {
    "bmp: pixel array cut": lambda: BMP[:-50],
    "jpeg: cut in the scan": lambda: JPEG[: len(JPEG) // 2],
    "jpeg: headers only": lambda: JPEG[: jpeg_segments(JPEG)[-1][0]],
    "png: cut in IDAT": lambda: PNG[: len(PNG) // 2],
    "gif: cut in the image data": lambda: GIF[: len(GIF) // 2],
    "webp: cut": lambda: WEBP[:-10],
}


@pytest.mark.parametrize("name", sorted(TOLERATED))
def test_what_pillow_decodes_is_accepted(name: str) -> None:
    data = TOLERATED[name]()
    assert pillow_reads(data), f"corpus error: Pillow refuses {name}"
    fmt = validate(data)
    assert fmt == PIL.open(io.BytesIO(data)).format.lower()
    # Streamed in small pieces (as from a file) the verdict is the same.
    check = FormatCheck()
    for i in range(0, len(data), 7):
        check(memoryview(data[i : i + 7]))
    assert check.finish() == fmt


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_what_no_decoder_reads_is_refused(name: str) -> None:
    data = UNREADABLE[name]()
    assert not pillow_reads(data), f"corpus error: Pillow reads {name}"
    with pytest.raises(InvalidImage, match="damaged"):
        validate(data)


def test_tolerated_bmp_dimensions_still_read() -> None:
    check = FormatCheck()
    check(memoryview(bmp_file_size(BMP, 3)))
    assert check.finish() == "bmp"
    assert (check.width, check.height) == (48, 32)
