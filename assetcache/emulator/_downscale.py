"""The emulated server's storage rule: at most 2048 px on the longer side.

Runware keeps an upload at most 2048 px on its longer side, aspect ratio
kept. The emulator does the same to what it receives, with its own code (it
shares nothing with the client's resizing, so a bug in one cannot hide in the
other), so a test can compare what the server keeps when a client sends an
original with what it keeps when the client resized first:

* An image within the limit, or whose size cannot be read, is kept byte for byte.
* A larger one is decoded in full, resized with a Lanczos filter and kept
  re-encoded: JPEG at quality 95 with the upload's chroma subsampling, PNG,
  WEBP (lossless if the upload was, else quality 95), BMP as BMP, GIF as PNG
  (first frame). The EXIF block and the ICC profile are carried over.

Pillow is imported here only, and only when an image arrives; without it the
emulator keeps what it receives and :data:`AVAILABLE` says so.

    >>> fit((6000, 4000), 2048)
    (2048, 1365)
"""

from __future__ import annotations

import importlib.util
import io
import zlib
from dataclasses import dataclass
from typing import Any

MAX_SIDE = 2048


def _pillow_present() -> bool:
    try:
        return importlib.util.find_spec("PIL") is not None
    except (ImportError, ValueError):
        return False


#: Whether this emulator can downscale (Pillow is installed).
AVAILABLE = _pillow_present()


@dataclass(frozen=True)
class Kept:
    """What the server keeps of one upload."""

    data: bytes
    format: str
    width: int | None
    height: int | None


def fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The stored size: the longer side brought down to ``max_side``, aspect kept."""
    width, height = size
    if max(width, height) <= max_side:
        return width, height
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def keep(data: bytes, fmt: str, max_side: int | None) -> Kept:
    """What the emulated server stores for ``data`` (already sniffed as ``fmt``)."""
    if not max_side or not AVAILABLE:
        return Kept(data, fmt, None, None)
    size = _png_size(data) if fmt == "png" else None
    if size is not None and max(size) <= max_side:
        return Kept(data, fmt, *size)  # read from its header: no need to open it
    try:
        from PIL import Image  # the one third-party import of the emulator: optional, lazy
    except ImportError:
        return Kept(data, fmt, None, None)
    try:
        return _keep(Image, data, fmt, max_side)
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError):
        # The sniffed signature was fine; an image Pillow cannot read is kept as sent.
        return Kept(data, fmt, None, None)


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk when it comes first, is 13 bytes
    long and its CRC holds (else ``None``: Pillow decides)."""
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not (0 < width < 1 << 31 and 0 < height < 1 << 31):
        return None
    return width, height


def _keep(pil: Any, data: bytes, fmt: str, max_side: int) -> Kept:
    image = pil.open(io.BytesIO(data))
    size = fit(image.size, max_side)
    if size == image.size:
        return Kept(data, fmt, *image.size)
    info = dict(image.info)
    subsampling = -1
    if fmt == "jpeg":
        from PIL import JpegImagePlugin

        subsampling = JpegImagePlugin.get_sampling(image)
    image.load()
    if image.mode in ("P", "PA", "1"):
        image = image.convert("RGBA" if "transparency" in info or image.mode == "PA" else "RGB")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    resized = image.resize(size, pil.Resampling.LANCZOS)
    options: dict[str, Any] = {}
    for name in ("exif", "icc_profile"):
        if info.get(name):
            options[name] = info[name]
    out = io.BytesIO()
    stored = "png" if fmt == "gif" else fmt
    if stored == "jpeg":
        if subsampling >= 0 and resized.mode == "RGB":
            options["subsampling"] = subsampling
        resized.save(out, "JPEG", quality=95, **options)
    elif stored == "webp":
        lossless = b"VP8L" in data[12:4096] and b"VP8 " not in data[12:4096]
        if lossless:
            resized.save(out, "WEBP", lossless=True, exact=True, **options)
        else:
            resized.save(out, "WEBP", quality=95, **options)
    elif stored == "bmp":
        resized.save(out, "BMP")
    else:
        resized.save(out, "PNG", **options)
    return Kept(out.getvalue(), stored, *resized.size)
