"""A misbehaving HTTP server on 127.0.0.1, for the hostile-network tests.

Each connection reads one request (headers and ``Content-Length`` body) and
answers with ``behaviour(conn, request_body)``; the server counts requests and
stops (closing every connection) on ``stop()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

Behaviour = Callable[[socket.socket, bytes, threading.Event], None]


class HostileServer:
    def __init__(self, behaviour: Behaviour, greeting: bytes | None = None) -> None:
        self.behaviour = behaviour
        self.greeting = greeting  # sent on accept, then the connection is closed
        self.requests = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostileServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        for t in self._threads:
            t.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            if self.greeting is not None:
                self.requests += 1
                conn.sendall(self.greeting)
                conn.close()
                return
            while not self._stop.is_set():
                body = read_request(conn)
                if body is None:
                    return
                self.requests += 1
                self.behaviour(conn, body, self._stop)


def read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return rest


def answer(
    status: str, headers: dict[str, str], body: bytes = b"", *, length: bool = True
) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def trickle(conn: socket.socket, body: bytes, stop: threading.Event) -> None:
    """Headers at once, then one byte of a never-finished JSON body every 50 ms."""
    conn.sendall(
        answer(
            "200 OK", {"Content-Type": "application/json", "Content-Length": "100000"}, length=False
        )
    )
    conn.sendall(b"{")
    while not stop.is_set():
        time.sleep(0.05)
        conn.sendall(b" ")


def endless_chunked(conn: socket.socket, body: bytes, stop: threading.Event) -> None:
    """A chunked body that never ends (64 KiB chunks, about 6 MB/s)."""
    conn.sendall(
        answer(
            "200 OK",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            length=False,
        )
    )
    piece = b" " * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    conn.sendall(b"1\r\n[\r\n")
    while not stop.is_set():
        conn.sendall(frame)
        time.sleep(0.01)


def fixed(status: str, headers: dict[str, str], body: bytes) -> Behaviour:
    payload = answer(status, headers, body)

    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(payload)

    return behave


@contextlib.contextmanager
def refused_port() -> Iterator[str]:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    yield f"http://127.0.0.1:{port}/v1"
