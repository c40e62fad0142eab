"""Server-side decoding of the ``image``/``media`` field of upload tasks.

This is the emulator's own reading of what a client sent. It deliberately
shares nothing with the client half of ``assetcache`` so that a sniffing bug
on one side cannot hide the same bug on the other.

    >>> decode("https://example.com/cat.png").format
    'url'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

# Formats the real API accepts for imageUpload, with the extension used in URLs.
EXTENSIONS: dict[str, str] = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "bmp": "bmp",
    "gif": "gif",
}

# Declared data-URI media types that name an accepted format.
_DECLARED: dict[str, str] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/x-bmp": "bmp",
    "image/x-ms-bmp": "bmp",
    "image/gif": "gif",
}

# Media types that say nothing about the bytes: the runware SDK's
# ``file_to_data_uri(bytes)`` sends application/octet-stream and relies on the
# server sniffing the format, so these must not count as a contradiction.
_NEUTRAL_TYPES = frozenset({"", "application/octet-stream"})

# Sizes of the BMP DIB headers that follow the 14-byte file header.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


class MediaError(ValueError):
    """The value is not an image the emulated server accepts; str() is the reason."""


@dataclass(frozen=True)
class Media:
    """A decoded upload: raw bytes and their sniffed format, or an opaque URL."""

    format: str
    data: bytes | None = None
    source_url: str | None = None

    @property
    def sha256(self) -> str:
        """Digest of the bytes, or of the URL text for URL uploads (never fetched)."""
        payload = self.data if self.data is not None else (self.source_url or "").encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def size(self) -> int:
        """Byte length of the image; 0 for URL uploads, whose bytes are never fetched."""
        return len(self.data) if self.data is not None else 0


def decode(value: object) -> Media:
    """Decode a data URI, bare base64 or http(s) URL; raise MediaError if unusable."""
    if not isinstance(value, str):
        raise MediaError("expected a string (data URI, base64 or URL)")
    text = value.strip()
    if not text:
        raise MediaError("the value is empty")
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        if not urlsplit(text).netloc:
            raise MediaError("the URL has no host")
        return Media(format="url", source_url=text)
    if lowered.startswith("data:"):
        return _decode_data_uri(text)
    return _from_bytes(_b64decode(text), declared=None)


def sniff(data: bytes) -> str | None:
    """Return the accepted format named by the magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if data[12:16] in (b"VP8 ", b"VP8L", b"VP8X"):
            return "webp"
        return None
    # "BM" alone is too weak a signature (plenty of text starts with it), so
    # also require a plausible DIB header size right after the file header.
    if (
        len(data) >= 26
        and data[:2] == b"BM"
        and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES
    ):
        return "bmp"
    return None


def _name_unsupported(data: bytes) -> str:
    """A human name for common formats the API refuses, for clearer errors."""
    head = data[:512].lstrip()
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
            return "HEIC"
        return "ISO media (video)"
    if data.startswith(b"%PDF"):
        return "PDF"
    if data.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    return "unrecognised"


def _b64decode(text: str) -> bytes:
    if text:
        try:
            # Most clients send one unbroken, padded line: decoded as it is, not
            # copied first (a strict decode refuses whitespace and bad padding).
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    # Line-wrapped base64 (MIME style) is common; padding is often dropped.
    compact = "".join(text.split())
    if not compact:
        raise MediaError("the base64 payload is empty")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("the value is not valid base64") from None


def _decode_data_uri(text: str) -> Media:
    header, sep, payload = text[5:].partition(",")
    if not sep:
        raise MediaError("malformed data URI: no comma before the data")
    params = [p.strip().lower() for p in header.split(";")]
    if "base64" not in params[1:]:
        raise MediaError("the data URI must be base64-encoded (data:<type>;base64,...)")
    return _from_bytes(_b64decode(payload), declared=params[0])


def _from_bytes(data: bytes, declared: str | None) -> Media:
    if not data:
        raise MediaError("the decoded image is empty")
    fmt = sniff(data)
    if fmt is None:
        raise MediaError(
            f"unsupported image format ({_name_unsupported(data)}); "
            "supported formats are JPEG, PNG, WEBP, BMP and GIF"
        )
    if declared is not None and declared not in _NEUTRAL_TYPES and _DECLARED.get(declared) != fmt:
        raise MediaError(f"the data URI declares {declared!r} but the bytes are {fmt.upper()}")
    return Media(format=fmt, data=data)
