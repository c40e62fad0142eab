"""Image format sniffing and cheap structural validation.

The format comes from magic bytes, never from a file name or a declared media
type. Beyond the magic, each accepted format is checked for the structure that
a truncated or garbage file cannot fake cheaply: PNG's chunk chain, JPEG's
marker segments up to the scan and its EOI marker, GIF's block chain, WEBP's
RIFF length, BMP's pixel array size. The check is streamed alongside the hash
and costs O(chunks), not O(bytes): it never decodes pixels.

Strict about structure, never stricter than the decoders: what mainstream
decoders (libpng, libjpeg, giflib, Pillow) read in full is accepted. A BMP's
file-size field, stray bytes between JPEG markers (libjpeg skips them with a
warning), a JPEG segment shorter than its content, a PNG that ends after its
image data without IEND and a GIF without its trailer all decode, so none of
them is refused; a file cut inside its image data is.
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
        #: Skip bytes up to and including the next 0xFF, then call this.
        self.hunt: Callable[[], None] | None = None

    def expect(self, n: int, then: Callable[[bytes], None]) -> None:
        self.want = n
        self.on_full = then

    def feed(self, mv: memoryview) -> None:
        i, n = 0, len(mv)
        while i < n:
            if self.hunt is not None:
                found = bytes(mv[i:]).find(b"\xff")
                if found < 0:
                    return
                i += found + 1
                then, self.hunt = self.hunt, None
                then()
            elif self.skip:
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
        return bool(self.skip or self.want or self.hunt)


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
        if len(self._head) >= 64 and not self._early:
            self._start()  # the first chunk has the head: nothing to replay
            self._consume(chunk)
            return
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
        if self.format != "jpeg":
            return  # only a JPEG is judged by its tail (the end-of-image marker)
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
        starters = {"png": self._start_png, "jpeg": self._start_jpeg, "gif": self._start_gif}
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
        tail = self._tail
        problem = checks[fmt](head, bytes(tail if len(tail) <= _TAIL else tail[-_TAIL:]))
        if problem:
            raise InvalidImage("", f"damaged {fmt.upper()}: {problem}")
        return fmt

    # -- PNG -----------------------------------------------------------------
    def _start_png(self, w: _Walker) -> None:
        state = {"first": True}
        self._png_where = "chunk"  # chunk: between chunks; idat: in an IDAT chunk
        self._png_idat = False

        def chunk_header(data: bytes) -> None:
            length, ctype = struct.unpack(">I4s", data)
            if length > 0x7FFFFFFF or not ctype.isalpha():
                raise _Bad("broken chunk structure")
            if state["first"]:
                state["first"] = False
                if ctype != b"IHDR" or length != 13:
                    raise _Bad("first chunk is not IHDR")
                self._png_where = "other"
                w.expect(13 + 4, ihdr)
                return
            if ctype == b"IEND":
                self._done = True
                w.skip = length + 4
                return
            if ctype == b"IDAT":
                self._png_idat = True
                self._png_where = "idat"
                w.skip = length
                w.expect(4, after_chunk)
                return
            self._png_where = "other"
            w.skip = length + 4
            w.expect(8, chunk_header)

        def after_chunk(data: bytes) -> None:
            self._png_where = "chunk"
            w.expect(8, chunk_header)

        def ihdr(data: bytes) -> None:
            self.width, self.height = struct.unpack(">II", data[:8])
            if not self.width or not self.height:
                raise _Bad("zero image size")
            self._png_where = "chunk"
            w.expect(8, chunk_header)

        w.skip = 8
        w.expect(8, chunk_header)

    def _finish_png(self, head: bytes, tail: bytes) -> str | None:
        w = self._walker
        assert w is not None
        if self._done and not w.pending:
            return None
        # Decoders stop at the end of the image data: a file that ends after
        # its last IDAT chunk (or inside that chunk's CRC) without IEND reads.
        at_end = self._png_where == "idat" or (self._png_where == "chunk" and not w.buf)
        if self._png_idat and not w.skip and at_end:
            return None
        if not self._png_idat:
            return "truncated (no image data)"
        return "truncated (cut inside a chunk)"

    # -- JPEG ----------------------------------------------------------------
    def _start_jpeg(self, w: _Walker) -> None:
        def code_follows() -> None:
            w.expect(1, lambda d: marker(b"\xff" + d))

        def marker(data: bytes) -> None:
            if data[0] != 0xFF:
                # Stray bytes between segments (or a segment longer than its
                # length says): libjpeg skips to the next marker, and so do we.
                if data[1] == 0xFF:
                    code_follows()
                else:
                    w.hunt = code_follows
                return
            code = data[1]
            if code == 0xFF:  # fill byte: the real marker code follows
                code_follows()
                return
            if code == 0x00:  # a stuffed 0xFF is no marker: still junk
                w.hunt = code_follows
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
                if self.width is None:
                    raise _Bad("no frame header before the image data")
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
    def _start_gif(self, w: _Walker) -> None:
        self._gif_images = 0
        self._gif_between = False  # at a block boundary (where decoders may stop)

        def screen(data: bytes) -> None:
            flags = data[10]
            w.skip = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
            boundary()

        def boundary() -> None:
            self._gif_between = True
            w.expect(1, block)

        def block(data: bytes) -> None:
            self._gif_between = False
            kind = data[0]
            if kind == 0x3B:  # trailer: whatever follows is not the image's
                self._done = True
                return
            if kind == 0x21:
                w.expect(1, lambda d: w.expect(1, sub_block))
                return
            if kind == 0x2C:
                w.expect(9, descriptor)
                return
            # Decoders pass over an unknown byte between blocks.
            boundary()

        def descriptor(data: bytes) -> None:
            flags = data[8]
            w.skip = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
            self._gif_images += 1
            w.expect(1, lambda d: w.expect(1, sub_block))  # LZW code size, then data

        def sub_block(data: bytes) -> None:
            if data[0] == 0:
                boundary()
                return
            w.skip = data[0]
            w.expect(1, sub_block)

        w.expect(13, screen)

    def _finish_gif(self, head: bytes, tail: bytes) -> str | None:
        if self.size < 14:
            return "truncated header"
        self.width, self.height = struct.unpack("<HH", head[6:10])
        assert self._walker is not None
        if self._done:
            return None
        if not self._gif_images:
            return "truncated (no image data)"
        # Decoders read a GIF without its trailer when its last block is whole.
        if self._gif_between and not self._walker.buf and not self._walker.skip:
            return None
        return "truncated (cut inside a block)"

    # -- WEBP ----------------------------------------------------------------
    def _finish_webp(self, head: bytes, tail: bytes) -> str | None:
        (riff_size,) = struct.unpack("<I", head[4:8])
        if head[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
            return "unknown WEBP chunk"
        self._webp_size(head)
        (first,) = struct.unpack("<I", head[16:20])
        if riff_size < 12 + first:
            return "RIFF size smaller than its first chunk"
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
        # The header's file-size field is not checked: decoders ignore it, and
        # writers get it wrong. The pixel array's size is what must be there.
        _, _, _, pixel_offset, dib_size = struct.unpack("<IHHII", head[2:18])
        if dib_size not in _BMP_DIB_SIZES:
            return "unknown BMP header"
        if dib_size == 12:
            w, h, _, bpp = struct.unpack("<HHHH", head[18:26])
            compression = 0
        else:
            w, h, _, bpp, compression = struct.unpack("<iiHHI", head[18:34])
        self.width, self.height = abs(w), abs(h)
        if pixel_offset >= self.size or pixel_offset < 14 + dib_size:
            return "pixel data missing"
        if compression in (0, 3, 6) and bpp in (1, 2, 4, 8, 16, 24, 32):
            need = pixel_offset + ((abs(w) * bpp + 31) // 32) * 4 * abs(h)
            if self.size < need:
                return f"truncated ({self.size} of {need} bytes)"
        return None


class _Bad(Exception):
    pass


def validate(data: bytes | memoryview) -> str:
    """Sniff and validate a complete in-memory image: its format name, or raise."""
    check = FormatCheck()
    check(memoryview(data))
    return check.finish()
