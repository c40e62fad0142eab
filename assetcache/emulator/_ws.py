"""The WebSocket endpoint, on the same port and path as REST.

The HTTP handler notices ``Upgrade: websocket`` on the API path and hands its
socket here. websockets' Sans-I/O :class:`ServerProtocol` does the framing
(handshake, masking, fragmentation, ping/pong control frames, close); this
module only moves bytes between it and the socket, one thread per connection
as the HTTP layer already has. What a message means is decided by
:meth:`Emulator.handle_ws_message`.

``websockets`` is optional (the ``websocket`` extra). Without it the upgrade
is answered with HTTP 501 and one message naming the extra, and REST works.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

try:
    from websockets.frames import Opcode
    from websockets.http11 import Request
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by the no-extra test in a subprocess
    AVAILABLE = False

if TYPE_CHECKING:
    from ._emulator import Emulator, WsConnection

#: The message a client gets when the extra is missing.
MISSING = (
    "the emulator's WebSocket endpoint needs the 'websockets' package: "
    "pip install 'assetcache[websocket]' (REST on the same URL works without it)"
)

_CHUNK = 1 << 16


def serve(
    sock: socket.socket, request_line: str, headers: list[tuple[str, str]], emulator: Emulator
) -> None:
    """Run one WebSocket connection on ``sock`` until either side closes it."""
    protocol = ServerProtocol(max_size=None)
    raw = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    protocol.receive_data(raw.encode("latin-1"))
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request):
        return
    response = protocol.accept(events[0])
    # The emulator's clock, not the machine's, like every other answer.
    del response.headers["Date"]
    response.headers["Date"] = emulator.http_date()
    protocol.send_response(response)
    if not _flush(sock, protocol) or response.status_code != 101:
        return
    connection = emulator.open_ws()
    try:
        _loop(sock, protocol, connection, emulator)
    finally:
        emulator.close_ws(connection)


def _loop(sock: socket.socket, protocol: Any, connection: WsConnection, emulator: Emulator) -> None:
    sock.settimeout(emulator.ws_idle_timeout)
    message: bytearray | None = None
    while protocol.state is not State.CLOSED:
        try:
            data = sock.recv(_CHUNK)
        except TimeoutError:
            # A client that neither sends nor pings for this long is gone.
            protocol.send_close(1001, "idle timeout")
            _flush(sock, protocol)
            return
        except OSError:
            return
        if not data:
            protocol.receive_eof()
            _flush(sock, protocol)
            return
        emulator.throttle(len(data))
        protocol.receive_data(data)
        for frame in protocol.events_received():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                message = bytearray(frame.data)
            elif frame.opcode is Opcode.CONT and message is not None:
                message += frame.data
            else:
                continue  # ping, pong and close are answered by the protocol itself
            if not frame.fin:
                continue
            body, message = bytes(message), None
            outcome = emulator.handle_ws_message(connection, body)
            for index, text in enumerate(outcome.frames):
                protocol.send_text(text.encode())
                if not _flush(sock, protocol):
                    # The client went away mid-answer: keep the rest for its session.
                    emulator.buffer_ws(connection, outcome.frames[index:])
                    return
            if outcome.hang_up:
                protocol.send_close(1001, "going away (emulated): reconnect with your session")
                _flush(sock, protocol)
        if not _flush(sock, protocol):
            return


def _flush(sock: socket.socket, protocol: Any) -> bool:
    """Write what the protocol wants sent; False once the socket is unusable."""
    try:
        for chunk in protocol.data_to_send():
            if chunk:
                sock.sendall(chunk)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True
