"""Magic-byte sniffing and structural validation."""

from __future__ import annotations

import struct

import pytest
from helpers import make_bmp, make_gif, make_png

from assetcache import InvalidImage, UnsupportedFormat
from assetcache._formats import FormatCheck, validate


def feed_in_pieces(data: bytes, size: int) -> str:
    check = FormatCheck()
    for i in range(0, len(data), size):
        check(memoryview(data[i : i + size]))
    return check.finish()


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1 << 20])
def test_png_in_any_chunking(piece):
    assert feed_in_pieces(make_png(3, 20, 20), piece) == "png"


def test_png_dimensions():
    check = FormatCheck()
    check(memoryview(make_png(1, 13, 7)))
    assert check.finish() == "png"
    assert (check.width, check.height) == (13, 7)


def test_gif_bmp_webp():
    assert validate(make_gif()) == "gif"
    assert validate(make_bmp()) == "bmp"
    payload = b"VP8L" + struct.pack("<I", 5) + b"\x2f\x00\x00\x00\x00" + b"\x00"
    webp = b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload
    assert validate(webp) == "webp"
    with pytest.raises(InvalidImage):
        validate(webp[:-4])


def test_jpeg():
    pytest.importorskip("PIL")
    from helpers import make_jpeg

    data = make_jpeg()
    assert validate(data) == "jpeg"
    with pytest.raises(InvalidImage, match="truncated"):
        validate(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data, match",
    [
        (make_png(1)[:-30], "truncated"),  # cut inside IDAT
        (make_png(1)[:33] + b"\xde\xad\xbe\xef" * 40, "damaged PNG"),  # header on garbage
        (make_gif()[:-3], "truncated"),  # cut inside the image data
        (make_bmp()[:-3], "truncated"),
        (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"garbage" * 20, "damaged JPEG"),
    ],
)
def test_damaged(data, match):
    with pytest.raises(InvalidImage, match=match):
        validate(data)


@pytest.mark.parametrize(
    "data, name",
    [
        (b"II*\x00" + b"\x00" * 60, "TIFF"),
        (b"MM\x00*" + b"\x00" * 60, "TIFF"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 60, "HEIC"),
        (b"<?xml version='1.0'?><svg></svg>" + b" " * 40, "SVG"),
        (b"%PDF-1.7" + b"\x00" * 60, "PDF"),
        (b"", "empty"),
        (b"hello world", "not an image"),
    ],
)
def test_foreign(data, name):
    with pytest.raises(UnsupportedFormat, match=name):
        validate(data)
