"""HTTP/1.1 and WebSocket framing for the proxy, on asyncio streams.

Only what a Runware client sends is understood: ``POST`` with a
``Content-Length`` or chunked body, and a ``GET`` that upgrades to a WebSocket.
The WebSocket side drives ``websockets``' Sans-I/O protocol over the same
stream, so REST and WebSocket share one port and one path, as on Runware.
Every read has a size cap and every wait a deadline, so a slow or hostile
client costs one connection, never the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

#: Request line plus headers; Runware clients send well under 2 KiB.
HEADER_LIMIT = 64 << 10
#: Seconds a client may take to send one request's headers or body.
READ_TIMEOUT = 60.0


class WireError(Exception):
    """A request that cannot be read; ``status`` is what the client is told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    @property
    def wants_websocket(self) -> bool:
        return self.method == "GET" and "websocket" in self.header("Upgrade").lower()

    @property
    def keep_alive(self) -> bool:
        return self.header("Connection").lower() != "close"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        phrase = _phrase(self.status)
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        headers = {"Content-Type": "application/json", **self.headers}
        headers["Content-Length"] = str(len(self.body))
        headers["Connection"] = "keep-alive" if keep_alive else "close"
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request | None:
    """The next request on a keep-alive connection, or None when the client is done."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise WireError(400, "the request ended inside its headers") from None
        return None
    except asyncio.LimitOverrunError:
        raise WireError(431, f"request headers over {HEADER_LIMIT} bytes") from None
    except (asyncio.TimeoutError, ConnectionError):
        return None
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise WireError(400, "undecodable headers") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise WireError(400, "not an HTTP/1.1 request line")
    method, path, _ = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise WireError(400, "malformed header line")
        headers.append((name, value.strip()))
    request = Request(method.upper(), path, headers)
    if request.method in ("GET", "HEAD"):
        return request
    request.body = await _read_body(reader, request, max_body)
    return request


async def _read_body(reader: asyncio.StreamReader, request: Request, max_body: int) -> bytes:
    async def exactly(n: int) -> bytes:
        try:
            return await asyncio.wait_for(reader.readexactly(n), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            raise WireError(400, "the request body ended early or came too slowly") from None

    if "chunked" in request.header("Transfer-Encoding").lower():
        body = bytearray()
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT)
                size = int(line.split(b";")[0].strip(), 16)
            except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                raise WireError(400, "bad chunked encoding") from None
            except asyncio.TimeoutError:
                raise WireError(408, "the request body came too slowly") from None
            if size == 0:
                while (await exactly(2)) != b"\r\n":  # trailers: none expected
                    await reader.readuntil(b"\r\n")
                return bytes(body)
            if len(body) + size > max_body:
                raise WireError(413, f"request body over the proxy's cap of {max_body} bytes")
            body += await exactly(size)
            await exactly(2)
    raw = request.header("Content-Length", "0")
    if not raw.isdigit():
        raise WireError(400, "bad Content-Length")
    length = int(raw)
    if length > max_body:
        raise WireError(413, f"request body over the proxy's cap of {max_body} bytes")
    return await exactly(length) if length else b""


class WebSocket:
    """One accepted WebSocket connection: ``async for text in ws`` and ``await ws.send(text)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: Any):
        self._reader = reader
        self._writer = writer
        self._proto = proto
        self._send_lock = asyncio.Lock()

    @classmethod
    async def accept(
        cls,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_size: int,
    ) -> WebSocket | None:
        from websockets.http11 import Request as WsRequest
        from websockets.server import ServerProtocol

        proto = ServerProtocol(max_size=max_size)
        # The protocol parses the handshake itself, so it is fed the head again.
        head = f"GET {request.path} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in request.headers) + "\r\n"
        proto.receive_data(head.encode("latin-1"))
        events = proto.events_received()
        if not events or not isinstance(events[0], WsRequest):
            return None
        response = proto.accept(events[0])
        proto.send_response(response)
        ws = cls(reader, writer, proto)
        await ws._flush()
        return ws if response.status_code == 101 else None

    async def _flush(self) -> None:
        for data in self._proto.data_to_send():
            if data:
                self._writer.write(data)
            elif self._writer.can_write_eof():
                self._writer.write_eof()
        await self._writer.drain()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            self._proto.send_text(text.encode("utf-8"))
            await self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        from websockets.frames import CloseCode

        async with self._send_lock:
            try:
                self._proto.send_close(CloseCode(code), reason)
                await self._flush()
            except Exception:  # already closing, or the peer is gone
                pass

    async def __aiter__(self) -> AsyncIterator[str]:
        from websockets.frames import Opcode

        parts: list[bytes] = []
        while True:
            try:
                data = await self._reader.read(1 << 16)
            except ConnectionError:
                return
            if data:
                self._proto.receive_data(data)
            else:
                self._proto.receive_eof()
            for frame in self._proto.events_received():
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY) or (
                    frame.opcode == Opcode.CONT and parts
                ):
                    parts.append(bytes(frame.data))
                    if frame.fin:
                        message = b"".join(parts)
                        parts = []
                        yield message.decode("utf-8", "replace")
            async with self._send_lock:
                await self._flush()  # pongs and the closing handshake
            if not data or self._proto.close_code is not None:
                return
