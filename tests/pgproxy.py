"""A TCP relay between the workers and PostgreSQL that can misbehave on cue.

    proxy = FaultProxy(("127.0.0.1", 5432))
    url = proxy.url(pg_url)   # the same URL, through the proxy
    proxy.cut()               # drop every connection; refuse new ones (RST)
    proxy.refuse()            # keep live connections, refuse new ones
    proxy.pause()             # accept and hold, forward nothing (a stalled server)
    proxy.blackhole()         # as pause; connections that sent meanwhile die (a partition)
    proxy.delay(0.2)          # forward everything after a delay
    proxy.fatal("53300", "sorry, too many clients already")  # answer new ones with an error
    proxy.restore()           # back to normal

Runs in the test process (threads) or as a small server of its own
(``python tests/pgproxy.py PORT HOST:PORT`` reads commands on stdin), so that
worker processes can be pointed at it. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse


class FaultProxy:
    """A relay with modes: ``up``, ``refuse``, ``pause``, ``blackhole``, ``delay``, ``fatal``."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(128)
        self.mode = "up"
        self.latency = 0.0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._changed = threading.Condition(self._lock)
        #: Bytes clients sent that the proxy is holding back (pause) or dropped (blackhole).
        self.held_bytes = 0
        #: Bytes forwarded from clients to the server, ever.
        self.forwarded = 0
        self.accepted = 0
        self._closed = False
        self._fatal = ("08006", "connection failure")
        threading.Thread(target=self._accept, daemon=True, name="pgproxy-accept").start()

    # -- addressing ----------------------------------------------------------------
    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    # -- modes -----------------------------------------------------------------------
    def _set(self, mode: str) -> None:
        with self._changed:
            self.mode = mode
            self._changed.notify_all()

    def cut(self) -> None:
        """The server went away: every connection reset, new ones refused."""
        self._set("refuse")
        self._drop_all()

    def refuse(self) -> None:
        self._set("refuse")

    def pause(self) -> None:
        """A stalled server: connections stay open, nothing moves."""
        self._set("pause")

    def blackhole(self) -> None:
        """A partition: nothing moves; a connection that sent anything meanwhile is
        dead when it heals (TCP gave up), the others carry on."""
        self._set("blackhole")

    def delay(self, seconds: float) -> None:
        self.latency = seconds
        self._set("delay")

    def fatal(self, sqlstate: str, message: str) -> None:
        """Answer every new connection's start-up with a FATAL error, as a full,
        starting or misconfigured server does."""
        self._fatal = (sqlstate, message)
        self._set("fatal")

    def restore(self) -> None:
        self.latency = 0.0
        self._set("up")

    def close(self) -> None:
        self._closed = True
        self._drop_all()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._set("closed")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                _reset(s)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- relaying ---------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                _reset(client)
                continue
            if self.mode == "fatal":
                threading.Thread(target=self._answer_fatal, args=(client,), daemon=True).start()
                continue
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # A stalled or partitioned server does not answer the handshake either.
        if not self._wait_moving():
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._pairs.append((client, upstream))
            self.accepted += 1
        for a, b, up in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _answer_fatal(self, client: socket.socket) -> None:
        """Play a server that rejects the start-up: decline SSL/GSS, then ErrorResponse."""
        sqlstate, message = self._fatal
        try:
            client.settimeout(5)
            while True:
                head = _read_exact(client, 8)
                length, code = struct.unpack("!II", head)
                _read_exact(client, length - 8)
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    client.sendall(b"N")
                    continue
                break
            fields = (
                b"".join(
                    kind + text.encode() + b"\0"
                    for kind, text in (
                        (b"S", "FATAL"),
                        (b"V", "FATAL"),
                        (b"C", sqlstate),
                        (b"M", message),
                    )
                )
                + b"\0"
            )
            client.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _wait_moving(self) -> bool:
        with self._changed:
            while self.mode in ("pause", "blackhole"):
                self._changed.wait(0.5)
            return self.mode not in ("refuse", "closed")

    def _pump(self, a: socket.socket, b: socket.socket, upward: bool) -> None:
        try:
            while True:
                ready, _, _ = select.select([a], [], [], 0.5)
                if not ready:
                    if self._closed:
                        return
                    continue
                data = a.recv(65536)
                if not data:
                    return
                mode = self.mode
                if mode in ("pause", "blackhole"):
                    with self._lock:
                        self.held_bytes += len(data)
                    if not self._wait_moving():
                        return
                    if mode == "blackhole":
                        # The partition outlived TCP's retransmissions: the connection
                        # is dead on both sides (never a stream with bytes missing).
                        _reset(a)
                        _reset(b)
                        return
                    with self._lock:
                        self.held_bytes -= len(data)
                elif mode == "delay" and self.latency:
                    time.sleep(self.latency)
                b.sendall(data)
                if upward:
                    with self._lock:
                        self.forwarded += len(data)
        except (OSError, ValueError):  # reset, or closed under us by cut()
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = s.recv(n - len(data))
        if not part:
            raise OSError("closed")
        data += part
    return data


def _reset(s: socket.socket) -> None:
    """Close with RST (as a dead server's kernel would answer), not a polite FIN."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


def main(argv: list[str]) -> int:
    """``pgproxy.py PORT HOST:PORT``: commands on stdin (cut, refuse, pause, ...)."""
    port, target = int(argv[0]), argv[1]
    host, _, tport = target.rpartition(":")
    proxy = FaultProxy((host, int(tport)), port)
    print(proxy.port, flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "delay":
            proxy.delay(float(args[0]))
        elif cmd in ("cut", "refuse", "pause", "blackhole", "restore"):
            getattr(proxy, cmd)()
        elif cmd == "quit":
            break
        print("ok", flush=True)
    proxy.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
