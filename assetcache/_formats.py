"""Image format sniffing and cheap structural validation.

The format comes from magic bytes, never from a file name or a declared media
type. Beyond the magic, each accepted format is checked for the structure that
a truncated or garbage file cannot fake cheaply: PNG's chunk chain ending in
IEND, JPEG's marker segments up to the scan and its EOI marker, GIF's trailer,
WEBP's RIFF length, BMP's header sizes. The check is streamed alongside the
hash and costs O(chunks), not O(bytes): it never decodes pixels.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ._errors import InvalidImage, UnsupportedFormat

ACCEPTED = ("jpeg", "png", "webp", "bmp", "gif")

MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
}

#: Declared media types (data URIs) that name an accepted format.
DECLARED = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/x-png": "png",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/x-bmp": "bmp",
    "image/x-ms-bmp": "bmp",
    "image/gif": "gif",
}

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_TAIL = 1 << 16


def sniff(head: bytes) -> str:
    """Name the accepted format whose magic starts ``head``, or raise.

    Raises :class:`UnsupportedFormat` with the recognised foreign format, or
    "not an image", in ``reason``; the caller adds the input's name.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIG):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18:
        return "bmp"
    raise UnsupportedFormat("", _foreign(head))


def _foreign(head: bytes) -> str:
    if not head:
        return "empty input"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        name = "TIFF"
    elif head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        name = "AVIF"
    elif head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        name = "HEIC/HEIF"
    elif head.startswith(b"%PDF"):
        name = "PDF"
    elif head[:4] == b"\x00\x00\x01\x00":
        name = "ICO"
    elif head[:4] == b"8BPS":
        name = "PSD"
    elif head.startswith(b"\xff\x0a") or head[4:12] == b"JXL \r\n\x87\n":
        name = "JPEG XL"
    elif b"<svg" in head[:1024].lower() or head.lstrip()[:5].lower() == b"<?xml":
        name = "SVG/XML"
    elif head[:4] == b"RIFF":
        name = "RIFF (not WEBP)"
    else:
        name = ""
    if name:
        return f"unsupported image format {name} (accepted: JPEG, PNG, WEBP, BMP, GIF)"
    return "not an image (no JPEG, PNG, WEBP, BMP or GIF signature)"


class _Walker:
    """Feeds a stream through a skip/collect state machine.

    A parser sets ``want`` (bytes to collect, then ``on_full(data)``) or
    ``skip`` (bytes to pass over). Bytes arriving with neither set are
    counted in ``trailing``.
    """

    def __init__(self) -> None:
        self.skip = 0
        self.want = 0
        self.buf = bytearray()
        self.on_full: Callable[[bytes], None] | None = None
        self.trailing = 0

    def expect(self, n: int, then: Callable[[bytes], None]) -> None:
        self.want = n
        self.on_full = then

    def feed(self, mv: memoryview) -> None:
        i, n = 0, len(mv)
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
            elif self.want:
                k = min(self.want - len(self.buf), n - i)
                self.buf += mv[i : i + k]
                i += k
                if len(self.buf) == self.want:
                    data = bytes(self.buf)
                    self.buf.clear()
                    self.want = 0
                    callback, self.on_full = self.on_full, None
                    assert callback is not None
                    callback(data)
            else:
                self.trailing += n - i
                return

    @property
    def pending(self) -> bool:
        return bool(self.skip or self.want)


class FormatCheck:
    """Streaming sink that sniffs and validates an image.

    >>> check = FormatCheck()
    >>> check(memoryview(data))          # doctest: +SKIP  (any number of chunks)
    >>> check.finish()                   # doctest: +SKIP  -> "png", or raises
    """

    def __init__(self) -> None:
        self.format: str | None = None
        self.size = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._walker: _Walker | None = None
        self._problem: str | None = None
        self._done = False  # walker reached the format's end marker
        self.width: int | None = None
        self.height: int | None = None
        self._early: list[bytes] = []
        self._scan = False  # JPEG: the walker reached start-of-scan

    # -- streaming -----------------------------------------------------------
    def __call__(self, chunk: memoryview) -> None:
        self.size += len(chunk)
        if self.format is not None:
            self._consume(chunk)
            return
        # Until 64 bytes are in, the format (and so the parser) is unknown:
        # keep copies (the caller reuses its buffer) and replay them after.
        self._head += chunk[: 64 - len(self._head)]
        self._early.append(bytes(chunk))
        if len(self._head) >= 64:
            self._begin()

    def _begin(self) -> None:
        self._start()
        early, self._early = self._early, []
        for data in early:
            self._consume(memoryview(data))

    def _consume(self, chunk: memoryview) -> None:
        if self._problem is not None:
            return
        if self._walker is not None:
            try:
                self._walker.feed(chunk)
            except _Bad as exc:
                self._problem = str(exc)
        if len(chunk) >= _TAIL:
            self._tail = bytearray(chunk[-_TAIL:])
        else:
            self._tail += chunk
            if len(self._tail) > 2 * _TAIL:
                del self._tail[:-_TAIL]

    def _start(self) -> None:
        try:
            self.format = sniff(bytes(self._head))
        except UnsupportedFormat:
            self.format = "?"
            return
        # Formats whose structure is walked as it streams (the others are
        # judged at the end, from their head and tail).
        starters = {"png": self._start_png, "jpeg": self._start_jpeg}
        starter = starters.get(self.format)
        if starter is not None:
            self._walker = _Walker()
            starter(self._walker)

    # -- end -----------------------------------------------------------------
    def finish(self) -> str:
        """The validated format; raises :class:`UnsupportedFormat`/:class:`InvalidImage`."""
        if self.format is None:
            self._begin()
        head = bytes(self._head)
        if self.format == "?" or self.format is None:
            sniff(head)  # raises with the precise reason
        fmt = self.format
        assert fmt is not None
        if self._problem is not None:
            raise InvalidImage("", f"damaged {fmt.upper()}: {self._problem}")
        checks = {
            "png": self._finish_png,
            "jpeg": self._finish_jpeg,
            "gif": self._finish_gif,
            "webp": self._finish_webp,
            "bmp": self._finish_bmp,
        }
        problem = checks[fmt](head, bytes(self._tail[-_TAIL:]))
        if problem:
            raise InvalidImage("", f"damaged {fmt.upper()}: {problem}")
        return fmt

    # -- PNG -----------------------------------------------------------------
    def _start_png(self, w: _Walker) -> None:
        state = {"first": True}

        def chunk_header(data: bytes) -> None:
            length, ctype = struct.unpack(">I4s", data)
            if length > 0x7FFFFFFF or not ctype.isalpha():
                raise _Bad("broken chunk structure")
            if state["first"]:
                state["first"] = False
                if ctype != b"IHDR" or length != 13:
                    raise _Bad("first chunk is not IHDR")
                w.expect(13 + 4, ihdr)
                return
            if ctype == b"IEND":
                self._done = True
                w.skip = length + 4
                return
            w.skip = length + 4
            w.expect(8, chunk_header)

        def ihdr(data: bytes) -> None:
            self.width, self.height = struct.unpack(">II", data[:8])
            if not self.width or not self.height:
                raise _Bad("zero image size")
            w.expect(8, chunk_header)

        w.skip = 8
        w.expect(8, chunk_header)

    def _finish_png(self, head: bytes, tail: bytes) -> str | None:
        assert self._walker is not None
        if not self._done or self._walker.pending:
            return "truncated (no IEND chunk)"
        return None

    # -- JPEG ----------------------------------------------------------------
    def _start_jpeg(self, w: _Walker) -> None:
        def marker(data: bytes) -> None:
            if data[0] != 0xFF:
                raise _Bad("broken marker structure")
            code = data[1]
            if code == 0xFF:  # fill byte: the real marker code follows
                w.expect(1, lambda d: marker(b"\xff" + d))
                return
            if code == 0xD9:
                self._done = True
                return
            if 0xD0 <= code <= 0xD7 or code == 0x01:
                w.expect(2, marker)
                return
            w.expect(2, lambda d: segment(code, d))

        def segment(code: int, data: bytes) -> None:
            (length,) = struct.unpack(">H", data)
            if length < 2:
                raise _Bad("broken segment length")
            if code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
                w.expect(min(length - 2, 5), lambda d: sof(d, length))
                return
            if code == 0xDA:  # start of scan: entropy-coded data follows, stop walking
                self._scan = True
                w.skip = length - 2
                return
            w.skip = length - 2
            w.expect(2, marker)

        def sof(data: bytes, length: int) -> None:
            if len(data) == 5:
                self.height, self.width = struct.unpack(">HH", data[1:5])
            w.skip = length - 2 - len(data)
            w.expect(2, marker)

        self._scan = False
        w.skip = 2
        w.expect(2, marker)

    def _finish_jpeg(self, head: bytes, tail: bytes) -> str | None:
        if not self._scan and not self._done:
            return "truncated (no image data)"
        # Camera trailers may follow EOI; accept an EOI within the last 64 KiB.
        if b"\xff\xd9" not in tail:
            return "truncated (no end-of-image marker)"
        return None

    # -- GIF -----------------------------------------------------------------
    def _finish_gif(self, head: bytes, tail: bytes) -> str | None:
        if self.size < 14:
            return "truncated header"
        self.width, self.height = struct.unpack("<HH", head[6:10])
        if not tail.rstrip(b"\x00").endswith(b";"):
            return "truncated (no trailer)"
        return None

    # -- WEBP ----------------------------------------------------------------
    def _finish_webp(self, head: bytes, tail: bytes) -> str | None:
        (riff_size,) = struct.unpack("<I", head[4:8])
        if head[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
            return "unknown WEBP chunk"
        self._webp_size(head)
        if self.size < riff_size + 8:
            return f"truncated ({self.size} of {riff_size + 8} bytes)"
        return None

    def _webp_size(self, head: bytes) -> None:
        # The first chunk's header carries the canvas size (RFC 9649): no decoding.
        kind, data = head[12:16], head[20:30]
        if len(data) < 10:
            return
        if kind == b"VP8X":
            self.width = 1 + int.from_bytes(data[4:7], "little")
            self.height = 1 + int.from_bytes(data[7:10], "little")
        elif kind == b"VP8L" and data[0] == 0x2F:
            bits = int.from_bytes(data[1:5], "little")
            self.width, self.height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif kind == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
            self.width = int.from_bytes(data[6:8], "little") & 0x3FFF
            self.height = int.from_bytes(data[8:10], "little") & 0x3FFF

    # -- BMP -----------------------------------------------------------------
    def _finish_bmp(self, head: bytes, tail: bytes) -> str | None:
        file_size, _, _, pixel_offset, dib_size = struct.unpack("<IHHII", head[2:18])
        if dib_size not in _BMP_DIB_SIZES:
            return "unknown BMP header"
        if dib_size >= 40 and len(head) >= 26:
            w, h = struct.unpack("<ii", head[18:26])
            self.width, self.height = abs(w), abs(h)
        if pixel_offset >= self.size or pixel_offset < 14 + dib_size:
            return "pixel data missing"
        if file_size and self.size < file_size:
            return f"truncated ({self.size} of {file_size} bytes)"
        return None


class _Bad(Exception):
    pass


def validate(data: bytes | memoryview) -> str:
    """Sniff and validate a complete in-memory image: its format name, or raise."""
    check = FormatCheck()
    check(memoryview(data))
    return check.finish()
