"""The HTTP layer: a keep-alive ThreadingHTTPServer that hands bodies to the Emulator.

Routing only; every decision about what to answer lives in ``_emulator.py``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _ws

if TYPE_CHECKING:
    from ._emulator import Emulator


@dataclass
class Reply:
    """What to send back; ``drop`` closes the connection without any response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class Server(ThreadingHTTPServer):
    """Threaded server that can cut idle keep-alive connections when stopped."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on keep-alive sockets.

        Without this a stopped emulator would keep answering on connections a
        client pooled earlier, so "server went away" could not be tested.
        """
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (or stop() cutting them off) is routine here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Routes POST <path>, the /_emulator control endpoints and GET /images/<uuid>."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    server_version = "RunwareEmulator/1"
    timeout = 120  # seconds an idle keep-alive connection is kept open
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm and
        # the client's delayed ACK that costs ~40 ms per keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output and the CLI's stdout stay clean."""

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        emulator = self.server.emulator
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == emulator.path:
            reply = emulator.handle_api(body, self.headers.get("Authorization"))
        elif path == "/_emulator/advance":
            reply = emulator.handle_advance(body)
        else:
            reply = emulator.json_reply(404, {"error": f"no POST route {path}"})
        self._send(reply)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header follows the emulator's clock, as Runware's follows its own."""
        return self.server.emulator.http_date()

    def do_GET(self) -> None:
        emulator = self.server.emulator
        path = urlsplit(self.path).path
        if "websocket" in self.headers.get("Upgrade", "").lower():
            self._upgrade(path)
            return
        if path == "/_emulator/stats":
            reply = emulator.json_reply(200, emulator.stats())
        elif path == "/_emulator/status":
            reply = emulator.json_reply(200, emulator.describe())
        elif path.startswith("/images/"):
            reply = emulator.handle_image_get(path.removeprefix("/images/"))
        else:
            reply = emulator.json_reply(404, {"error": f"no GET route {path}"})
        self._send(reply)

    def _upgrade(self, path: str) -> None:
        emulator = self.server.emulator
        if (path.rstrip("/") or "/") != emulator.path:
            self._send(emulator.json_reply(404, {"error": f"no WebSocket endpoint at {path}"}))
            return
        if not _ws.AVAILABLE:
            self._send(emulator.json_reply(501, {"error": _ws.MISSING}))
            return
        # The connection now belongs to the WebSocket protocol, never back to HTTP.
        self.close_connection = True
        _ws.serve(self.connection, self.requestline, list(self.headers.items()), emulator)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return None
        emulator = self.server.emulator
        if not emulator.throttled:
            return self.rfile.read(length)
        body = bytearray()
        while len(body) < length:
            piece = self.rfile.read(min(1 << 16, length - len(body)))
            if not piece:
                break
            emulator.throttle(len(piece))
            body += piece
        return bytes(body)

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.send_error(400, "bad chunked encoding")
                return None
            if size == 0:
                # Skip trailers up to the blank line that ends the message.
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.server.emulator.throttle(size)
            self.rfile.readline(1024)

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            # No status line at all: the client sees the server hang up.
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
