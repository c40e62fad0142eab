"""Reading an HTTP answer with a bound on its size, compressed answers included.

The transport feeds the raw (still encoded) bytes of an answer to a
:class:`BodyReader`, which decodes ``gzip`` and ``deflate`` itself with a
bounded output per step: a 600 KB gzip bomb costs at most the cap, never the
gigabytes it expands to. Pure, no I/O.
"""

from __future__ import annotations

import zlib

#: The largest answer (after decoding) the client reads. A batch of 16 upload
#: results is a few KiB; 16 MiB leaves room for any real answer.
MAX_ANSWER_BYTES = 16 << 20

#: The encodings :class:`BodyReader` decodes (and so the only ones asked for).
ACCEPT_ENCODING = "gzip, deflate"


class BadAnswer(Exception):
    """The answer cannot be read; ``str()`` says why."""


class AnswerTooLarge(BadAnswer):
    """The answer grew past the cap."""

    def __init__(self, size: int, cap: int = MAX_ANSWER_BYTES) -> None:
        super().__init__(f"larger than {cap >> 20} MiB after decoding (at least {size} bytes)")


class BodyReader:
    """Accumulates an answer's decoded bytes, refusing more than ``cap``."""

    def __init__(self, encoding: str | None, cap: int = MAX_ANSWER_BYTES) -> None:
        self.cap = cap
        self.buf = bytearray()
        self._deflate_raw_tried = False
        codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise BadAnswer(f"content encoding {', '.join(codings)} was not asked for")
        self.coding = codings[0] if codings else None
        self._z: zlib._Decompress | None
        if self.coding is None:
            self._z = None
        elif self.coding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.coding == "deflate":
            self._z = zlib.decompressobj()
        else:
            raise BadAnswer(f"content encoding {self.coding} was not asked for")
        self._pending = b""  # deflate: the first bytes, kept until the header is known

    def declared(self, content_length: str | None) -> None:
        """Refuse at once an answer whose declared length is already above the cap."""
        try:
            n = int(content_length) if content_length else None
        except ValueError:
            return
        if n is not None and n > self.cap:
            raise AnswerTooLarge(n, self.cap)

    def feed(self, raw: bytes) -> None:
        if not raw:
            return
        if self._z is None:
            self._add(raw)
            return
        if self.coding == "deflate" and not self._deflate_raw_tried:
            self._pending += raw
            if len(self._pending) < 2:
                return
            self._deflate_raw_tried = True
            raw, self._pending = self._pending, b""
            if (raw[0] & 0x0F) != 8 or ((raw[0] << 8) | raw[1]) % 31:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header
        data = raw
        while data:
            try:
                out = self._z.decompress(data, self.cap - len(self.buf) + 1)
            except zlib.error as exc:
                raise BadAnswer(f"undecodable {self.coding} data: {exc}") from None
            self._add(out)
            data = self._z.unconsumed_tail

    def _add(self, data: bytes) -> None:
        if len(self.buf) + len(data) > self.cap:
            raise AnswerTooLarge(len(self.buf) + len(data), self.cap)
        self.buf += data

    def finish(self) -> bytes:
        if self._pending:
            self._deflate_raw_tried = True
            pending, self._pending = self._pending, b""
            self.feed(pending)
        if self._z is not None:
            self._add(self._z.flush())
        return bytes(self.buf)
