"""The public :class:`Emulator`: configuration, auth, faults and lifecycle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal

from ._clock import Clock
from ._downscale import AVAILABLE as DOWNSCALE_AVAILABLE
from ._engine import Engine, Json, StoredImage, error_item
from ._faults import NOT_PROCESSED, TRANSIENT_FAULTS, FaultPlan
from ._http import Reply, Server
from ._state import StateError

ResponseShape = Literal["list", "object"]

_FAULT_STATUS: dict[str, tuple[int, str, str]] = {
    "500": (500, "internalServerError", "Internal server error (injected by the emulator)."),
    "503": (503, "serviceUnavailable", "Service temporarily unavailable (injected)."),
    "429": (429, "rateLimitExceeded", "Too many requests (injected by the emulator)."),
}


def _errors_frame(error: Json) -> str:
    return json.dumps({"errors": [error]})


_IMAGE_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
}


@dataclass
class WsConnection:
    """One open WebSocket connection; ``session`` is set once it authenticated."""

    id: int
    session: str | None = None


@dataclass
class WsOutcome:
    """What to send back for one WebSocket message, each string its own frame;
    ``hang_up``: then close the connection (1001) as a restarting server would."""

    frames: list[str] = field(default_factory=list)
    hang_up: bool = False


@dataclass
class _Session:
    key_digest: str
    #: Frames produced for this session that no connection received yet.
    buffered: list[str] = field(default_factory=list)


class Emulator:
    """A local, in-process stand-in for Runware's REST upload API.

    Example::

        with Emulator(api_key="k") as emu:
            httpx.post(emu.base_url, headers={"Authorization": "Bearer k"},
                       json=[{"taskType": "imageUpload", "taskUUID": str(uuid4()),
                              "image": data_uri}])
            emu.advance(days=31)          # the upload has now expired
            assert emu.upload_count == 1

    ``api_key`` is one accepted key, a collection of them, or None to accept
    any non-empty key. See the package docstring for every other option.
    """

    def __init__(
        self,
        *,
        api_key: str | Collection[str] | None = "k",
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/v1",
        retention: timedelta = timedelta(days=30),
        response_shape: ResponseShape = "list",
        latency: float = 0.0,
        uplink_mbps: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = TRANSIENT_FAULTS,
        seed: int | None = None,
        retry_after: int = 0,
        slow_seconds: float = 2.0,
        start_time: float | None = None,
        frozen: bool = False,
        state_path: str | Path | None = None,
        keep_bytes: bool = True,
        max_side: int | None = 2048,
        media_placeholder: int = 0,
        ws_idle_timeout: float = 300.0,
    ) -> None:
        if isinstance(api_key, str):
            api_key = {api_key}
        self._api_keys: frozenset[str] | None = None if api_key is None else frozenset(api_key)
        self.host = host
        self.port = port
        self.path = "/" + path.strip("/") if path.strip("/") else "/"
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self._faults = FaultPlan(fault_rate, fault_kinds, seed)
        self.set_response_shape(response_shape)
        self.set_latency(latency)
        if uplink_mbps < 0:
            raise ValueError("uplink_mbps must be >= 0")
        # One link shared by every connection, as a client's uplink is.
        self._uplink_bps = uplink_mbps * 1e6
        self._link_lock = threading.Lock()
        self._link_free_at = 0.0
        self._engine = Engine(
            retention_s=retention.total_seconds(),
            keep_bytes=keep_bytes,
            max_side=max_side or None,
            clock=Clock(start_time=start_time, frozen=frozen),
            url_root=self._url_root,
            state_path=Path(state_path) if state_path is not None else None,
        )
        self._lock = self._engine.lock
        self.set_media_placeholder(media_placeholder)
        if ws_idle_timeout <= 0:
            raise ValueError("ws_idle_timeout must be > 0")
        self.ws_idle_timeout = float(ws_idle_timeout)
        self._sessions: dict[str, _Session] = {}
        self._ws_open: dict[int, WsConnection] = {}
        self._ws_ids = 0
        self._hang_ups: list[str | None] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Emulator:
        """Bind (port 0 picks a free port) and serve on a background thread."""
        if self._server is not None:
            return self
        self._server = Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # stop() waits up to one poll interval; tests start and stop a lot.
            kwargs={"poll_interval": 0.01},
            name=f"runware-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; idempotent. State is kept."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock, contextlib.suppress(StateError):
            # Counters move without a save (a ping, a fault); keep the totals.
            self._engine.save_counters()
        self._stopped.set()

    def serve_forever(self) -> None:
        """Start if needed and block until stop() or Ctrl-C (KeyboardInterrupt)."""
        self.start()
        try:
            self._stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API endpoint, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self._url_root() + ("" if self.path == "/" else self.path)

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint on the same port and path, e.g. ``ws://127.0.0.1:PORT/v1``."""
        return "ws" + self.base_url.removeprefix("http")

    @property
    def control_url(self) -> str:
        """Where the control endpoints live (``/_emulator/stats``, ``/_emulator/advance``)."""
        return self._url_root() + "/_emulator"

    def _url_root(self) -> str:
        if self._server is None and self.port == 0:
            raise RuntimeError("the emulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ----------------------------------------------------------------- clock

    def clock(self) -> float:
        """The emulator's current time in epoch seconds."""
        return self._engine.clock.now()

    def http_date(self) -> str:
        """The emulator's now as an HTTP ``Date`` header value."""
        return formatdate(self.clock(), usegmt=True)

    def advance(self, *, seconds: float = 0, hours: float = 0, days: float = 0) -> float:
        """Move the emulator clock forward by the sum given; returns the new time."""
        with self._lock:
            self._engine.clock.advance(seconds + 3600 * hours + 86400 * days)
            self._engine.mark_dirty()
            self._engine.save_if_dirty()
            return self._engine.clock.now()

    # ---------------------------------------------------------------- images

    def holds(self, image_uuid: str) -> bool:
        """Whether the image is stored and not expired at the emulator's now."""
        with self._lock:
            self._engine.refresh()
            return self._engine.live(image_uuid) is not None

    def image(self, image_uuid: str) -> StoredImage | None:
        """The held image's record, or None if unknown, deleted or expired."""
        with self._lock:
            self._engine.refresh()
            return self._engine.live(image_uuid)

    @property
    def downscales(self) -> bool:
        """Whether images larger than ``max_side`` are kept downscaled, as Runware
        keeps them (needs Pillow; without it they are kept as received)."""
        return self._engine.max_side is not None and DOWNSCALE_AVAILABLE

    def images(self) -> list[StoredImage]:
        """Every image still held, oldest upload first."""
        with self._lock:
            self._engine.refresh()
            return self._engine.live_images()

    def persisted_counters(self) -> dict[str, int]:
        """The counters summed over every process that used this state file
        (``state_path``); without one, this process's counters."""
        with self._lock:
            self._engine.refresh()
            return self._engine.persisted_counters()

    def generated_images(self) -> list[StoredImage]:
        """Every generated output still held (usable as a later task's input)."""
        with self._lock:
            return self._engine.live_images("generated")

    def delete(self, image_uuid: str) -> bool:
        """Simulate Runware deleting an image on its own; False if it was not held."""
        with self._lock:
            removed = self._engine.remove(image_uuid)
            self._engine.save_if_dirty()
            return removed

    # -------------------------------------------------------------- counters

    @property
    def upload_count(self) -> int:
        """Uploads stored (imageUpload + mediaStorage upload), faulted ones included."""
        return self._engine.counters.upload_count

    @property
    def request_count(self) -> int:
        """POSTs received on the API path, faulted ones included."""
        return self._engine.counters.request_count

    @property
    def task_count(self) -> int:
        """Task objects processed (authentication tasks and unprocessed faults excluded)."""
        return self._engine.counters.task_count

    @property
    def fault_count(self) -> int:
        """Requests that had a fault injected."""
        return self._engine.counters.fault_count

    @property
    def delete_count(self) -> int:
        """Successful mediaStorage delete tasks (delete() is not counted)."""
        return self._engine.counters.delete_count

    @property
    def inference_count(self) -> int:
        """Accepted consuming tasks (imageInference, upscale, removeBackground)."""
        return self._engine.counters.inference_count

    @property
    def generated_count(self) -> int:
        """Images generated by accepted tasks (each held like an upload)."""
        return self._engine.counters.generated_count

    @property
    def ws_connection_count(self) -> int:
        """WebSocket handshakes accepted."""
        return self._engine.counters.ws_connection_count

    @property
    def ws_message_count(self) -> int:
        """WebSocket messages received (each a JSON array of tasks)."""
        return self._engine.counters.ws_message_count

    @property
    def ws_replayed_count(self) -> int:
        """Buffered frames handed to a connection that resumed their session."""
        return self._engine.counters.ws_replayed_count

    @property
    def bytes_received(self) -> int:
        """Request body bytes received on the API path."""
        return self._engine.counters.bytes_received

    def uploads_by_sha256(self) -> Counter[str]:
        """How many times each content digest was uploaded (URL uploads: digest of the URL)."""
        with self._lock:
            return Counter(self._engine.uploads_by_sha256)

    def reset_counters(self) -> None:
        """Zero every counter; stored images and the clock are untouched."""
        with self._lock:
            self._engine.reset_counters()

    def stats(self) -> dict[str, Any]:
        """Counters, clock and held-image count, as served by GET /_emulator/stats."""
        with self._lock:
            self._engine.refresh()
            counters = vars(self._engine.counters).copy()
            return {
                **counters,
                "state_counters": self._engine.persisted_counters()
                if self._engine.state_path is not None
                else None,
                "clock": self.clock(),
                "images_held": len(self._engine.live_images()),
                "generated_held": len(self._engine.live_images("generated")),
                "ws_connections_open": len(self._ws_open),
                "uploads_by_sha256": dict(self._engine.uploads_by_sha256),
            }

    def describe(self) -> dict[str, Any]:
        """Clock, counters and every held image, as served by GET /_emulator/status
        (what ``assetcache emulator-status`` prints). Counters are summed over
        every process sharing the state file, when there is one."""
        with self._lock:
            self._engine.refresh()
            retention = self._engine.retention_s
            images = sorted(
                self._engine.live_images() + self._engine.live_images("generated"),
                key=lambda r: r.uploaded_at,
            )
            return {
                "clock": self.clock(),
                "retention_seconds": retention,
                "state_path": None
                if self._engine.state_path is None
                else str(self._engine.state_path),
                "counters": self._engine.persisted_counters(),
                "images": [
                    {
                        "uuid": r.uuid,
                        "kind": r.kind,
                        "format": r.format,
                        "size": r.size,
                        "width": r.width,
                        "height": r.height,
                        "sha256": r.sha256,
                        "uploaded_at": r.uploaded_at,
                        "last_used_at": r.last_used_at,
                        "expires_at": r.last_used_at + retention,
                    }
                    for r in images
                ],
            }

    # ------------------------------------------------------------ behaviour

    def set_faults(
        self,
        *,
        rate: float | None = None,
        kinds: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> None:
        """Change random fault injection; arguments left out keep their value."""
        with self._lock:
            self._faults.configure(rate=rate, kinds=kinds, seed=seed)

    def reject(self, *images: bytes) -> None:
        """Refuse uploads of exactly these bytes with ``invalidImage`` (undecodable)."""
        with self._lock:
            self._engine.rejected_sha256.update(hashlib.sha256(data).hexdigest() for data in images)

    def fail_next(self, *kinds: str) -> None:
        """Inject these faults on the next requests, one each, before random faults."""
        with self._lock:
            self._faults.queue(*kinds)

    def hang_up_next(self, count: int = 1, *, task_type: str | None = None) -> None:
        """The next ``count`` WebSocket messages with tasks (with a task of
        ``task_type``, when given) are processed, their answers kept for the
        connection's session, and the connection closed (1001 going away): a
        reconnect that sends the connectionSessionUUID receives them first, as
        Runware replays a session's buffered results."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._hang_ups.extend([task_type] * count)

    def set_media_placeholder(self, answers: int) -> None:
        """Answer mediaStorage uploads with ``mediaUUID: "1"`` (still processing),
        as Runware does for media it is still processing: the upload answer and
        the next ``answers - 1`` getResponse polls carry the placeholder, later
        polls the real result. 0 (the default) answers at once."""
        if isinstance(answers, bool) or not isinstance(answers, int) or answers < 0:
            raise ValueError("media_placeholder must be an integer >= 0")
        with self._lock:
            self._engine.media_placeholder = answers

    def set_response_shape(self, shape: ResponseShape) -> None:
        """Choose "list" (data is always a list) or "object" (a lone result is sent bare)."""
        if shape not in ("list", "object"):
            raise ValueError("response_shape must be 'list' or 'object'")
        self.response_shape: ResponseShape = shape

    @property
    def throttled(self) -> bool:
        """Whether request bodies are read at ``uplink_mbps``."""
        return bool(self._uplink_bps)

    def throttle(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more of a request body would have crossed the uplink."""
        if not self._uplink_bps:
            return
        with self._link_lock:
            now = time.monotonic()
            self._link_free_at = max(now, self._link_free_at) + nbytes * 8 / self._uplink_bps
            wait = self._link_free_at - now
        time.sleep(wait)

    def set_latency(self, seconds: float) -> None:
        """Seconds slept before answering each API request."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self.latency = float(seconds)

    # ------------------------------------------------------- request handling

    @staticmethod
    def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        """A JSON response for the HTTP layer."""
        return Reply(status=status, body=json.dumps(payload).encode(), headers=headers or {})

    def handle_api(self, body: bytes, authorization: str | None) -> Reply:
        """Answer one POST to the API path (called by the HTTP layer's threads)."""
        with self._lock:
            counters = self._engine.counters
            counters.request_count += 1
            counters.bytes_received += len(body)
            fault = self._faults.pick()
            if fault is not None:
                counters.fault_count += 1
        # Processed as it arrives, then the wait: the answer leaves ``latency``
        # after the request arrived plus the CPU time its own work took. A real
        # server has the cores to work on a round's requests side by side; here
        # they take turns on one interpreter, and a request's wait for the others
        # is not counted twice (as part of the round trip and again after it).
        # The wait is outside the lock: slow requests serialise nothing.
        arrived, work = time.monotonic(), time.thread_time()
        if fault in NOT_PROCESSED:
            reply = self._unprocessed_fault(fault, body)
        else:
            reply = self._processed(fault, body, authorization)
        delay = self.latency + (self.slow_seconds if fault == "slow" else 0.0)
        if delay:
            due = arrived + delay + (time.thread_time() - work)
            time.sleep(max(0.0, due - time.monotonic()))
        return reply

    def _processed(self, fault: str | None, body: bytes, authorization: str | None) -> Reply:
        """The answer to a request the server works on (``fault`` may still spoil it)."""
        try:
            status, envelope = self._process(body, authorization)
        except StateError as exc:
            # Another process left a state file this one cannot use: say so, no traceback.
            error = error_item("emulatorStateError", str(exc), None, None, None)
            return self.json_reply(500, {"errors": [error], "data": []})
        if fault == "drop_after":
            return Reply(drop=True)
        if fault == "foreign_task":
            for item in self._items(envelope):
                item["taskUUID"] = str(uuid.uuid4())
        return self.json_reply(status, envelope)

    def _process(self, body: bytes, authorization: str | None) -> tuple[int, Json]:
        try:
            tasks = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            tasks = None
        if not isinstance(tasks, list) or not tasks:
            return 400, {
                "errors": [
                    error_item(
                        "invalidPayload",
                        "The request body must be a non-empty JSON array of task objects.",
                        None,
                        None,
                        None,
                    )
                ],
                "data": [],
            }
        key, tasks = self._split_auth(tasks, authorization)
        if not self._key_ok(key):
            first = tasks[0] if tasks and isinstance(tasks[0], dict) else {}
            task_uuid = first.get("taskUUID")
            return 401, {
                "errors": [
                    error_item(
                        "invalidApiKey",
                        # Never echo the key: responses end up in logs.
                        "Invalid API key. Get a valid one at https://my.runware.ai/keys.",
                        "apiKey",
                        "authentication",
                        task_uuid if isinstance(task_uuid, str) else None,
                    )
                ],
                "data": [],
            }
        staged = self._engine.stage(tasks)  # decoding and downscaling: outside the lock
        with self._lock:
            self._engine.refresh()  # uploads other processes made since our last look
            data, errors = self._engine.run(tasks, staged)
            self._engine.save_if_dirty()
        envelope: Json = {"data": data}
        if errors:
            envelope["errors"] = errors
        if self.response_shape == "object" and len(data) == 1:
            envelope["data"] = data[0]
        status = 400 if errors and not data else 200
        return status, envelope

    # ------------------------------------------------------------ WebSocket

    def open_ws(self) -> WsConnection:
        """Register a connection whose handshake succeeded (called by ``_ws``)."""
        with self._lock:
            self._ws_ids += 1
            connection = WsConnection(self._ws_ids)
            self._ws_open[connection.id] = connection
            self._engine.counters.ws_connection_count += 1
            return connection

    def close_ws(self, connection: WsConnection) -> None:
        """Forget a connection; its session (and anything buffered for it) stays."""
        with self._lock:
            self._ws_open.pop(connection.id, None)

    def buffer_ws(self, connection: WsConnection, frames: list[str]) -> None:
        """Keep frames a connection could not receive, for its session's next connection."""
        with self._lock:
            session = self._sessions.get(connection.session or "")
            if session is not None:
                session.buffered.extend(frames)

    def handle_ws_message(self, connection: WsConnection, body: bytes) -> WsOutcome:
        """Answer one WebSocket message (see :meth:`_ws_message`); a state file
        that cannot be used is answered as an error frame."""
        try:
            return self._ws_message(connection, body)
        except StateError as exc:
            error = error_item("emulatorStateError", str(exc), None, None, None)
            return WsOutcome([_errors_frame(error)])

    def _ws_message(self, connection: WsConnection, body: bytes) -> WsOutcome:
        """Answer one WebSocket message: a JSON array of tasks, the first message
        being an ``authentication`` task. Each result and each error is its own
        frame (``{"data": [item]}`` / ``{"errors": [error]}``) carrying its taskUUID."""
        with self._lock:
            self._engine.counters.ws_message_count += 1
            self._engine.counters.bytes_received += len(body)
        if self.latency:
            time.sleep(self.latency)
        try:
            tasks = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            tasks = None
        if isinstance(tasks, dict):
            tasks = [tasks]
        if not isinstance(tasks, list) or not tasks:
            message = "Each message must be a non-empty JSON array of task objects."
            return WsOutcome(
                [_errors_frame(error_item("invalidPayload", message, None, None, None))]
            )
        outcome = WsOutcome()
        rest: list[Any] = []
        for task in tasks:
            if isinstance(task, dict) and task.get("taskType") == "authentication":
                outcome.frames.extend(self._ws_authenticate(connection, task))
            else:
                rest.append(task)
        if not rest:
            return outcome
        if connection.session is None:
            for task in rest:
                first = task if isinstance(task, dict) else {}
                task_uuid = first.get("taskUUID")
                outcome.frames.append(
                    _errors_frame(
                        error_item(
                            "missingApiKey",
                            "Authenticate first: the first message on a connection must be "
                            'an {"taskType": "authentication", "apiKey": ...} task.',
                            "apiKey",
                            "authentication",
                            task_uuid if isinstance(task_uuid, str) else None,
                        )
                    )
                )
            return outcome
        types = {t.get("taskType") if isinstance(t, dict) else None for t in rest} - {"ping"}
        with self._lock:
            hang_up = bool(types and self._hang_ups) and (
                self._hang_ups[0] is None or self._hang_ups[0] in types
            )
            if hang_up:
                self._hang_ups.pop(0)
        frames: list[str] = []
        for task in rest:
            staged = self._engine.stage([task])  # outside the lock, as for REST
            with self._lock:
                self._engine.refresh()
                data, errors = self._engine.run([task], staged)
                self._engine.save_if_dirty()
            frames += [json.dumps({"data": [item]}) for item in data]
            frames += [_errors_frame(error) for error in errors]
        if hang_up:
            self.buffer_ws(connection, frames)
            outcome.hang_up = True
        else:
            outcome.frames.extend(frames)
        return outcome

    def _ws_authenticate(self, connection: WsConnection, task: dict[str, Any]) -> list[str]:
        key = task.get("apiKey")
        if not isinstance(key, str) or not self._key_ok(key):
            return [
                _errors_frame(
                    error_item(
                        "invalidApiKey",
                        # Never echo the key: responses end up in logs.
                        "Invalid API key. Get a valid one at https://my.runware.ai/keys.",
                        "apiKey",
                        "authentication",
                        None,
                    )
                )
            ]
        digest = hashlib.sha256(key.encode()).hexdigest()
        wanted = task.get("connectionSessionUUID")
        with self._lock:
            session_id = wanted.lower() if isinstance(wanted, str) else ""
            session = self._sessions.get(session_id)
            if session is None or session.key_digest != digest:
                # Unknown (or another account's) session: a new one, as the server gives.
                session_id = str(uuid.uuid4())
                session = self._sessions[session_id] = _Session(digest)
            connection.session = session_id
            replay, session.buffered = session.buffered, []
            self._engine.counters.ws_replayed_count += len(replay)
        auth = {"taskType": "authentication", "connectionSessionUUID": session_id}
        return [json.dumps({"data": [auth]}), *replay]

    def ws_sessions(self) -> dict[str, int]:
        """Every WebSocket session: its connectionSessionUUID -> frames buffered for it."""
        with self._lock:
            return {sid: len(session.buffered) for sid, session in self._sessions.items()}

    @staticmethod
    def _split_auth(tasks: list[Any], authorization: str | None) -> tuple[str | None, list[Any]]:
        """The presented key (header first, else a leading authentication task)."""
        rest = [
            t for t in tasks if not (isinstance(t, dict) and t.get("taskType") == "authentication")
        ]
        if authorization:
            scheme, _, token = authorization.partition(" ")
            return (token.strip() if scheme.lower() == "bearer" else None), rest
        first = tasks[0]
        if isinstance(first, dict) and first.get("taskType") == "authentication":
            key = first.get("apiKey")
            return (key if isinstance(key, str) else None), rest
        return None, rest

    def _key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        return self._api_keys is None or key in self._api_keys

    @staticmethod
    def _items(envelope: Json) -> list[Json]:
        data = envelope.get("data")
        return [data] if isinstance(data, dict) else list(data or [])

    def _unprocessed_fault(self, fault: str, body: bytes) -> Reply:
        if fault == "drop":
            return Reply(drop=True)
        if fault in _FAULT_STATUS:
            status, code, message = _FAULT_STATUS[fault]
            headers = {"Retry-After": str(self.retry_after)} if fault == "429" else {}
            payload = {"errors": [error_item(code, message, None, None, None)], "data": []}
            return self.json_reply(status, payload, headers)
        if fault == "nonjson":
            return Reply(
                body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if fault == "empty":
            return self.json_reply(200, {"data": []})
        # no_uuid / bad_uuid: plausible-looking results for tasks never processed.
        try:
            tasks = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            tasks = []
        data = []
        for task in tasks if isinstance(tasks, list) else []:
            if not isinstance(task, dict) or task.get("taskType") == "authentication":
                continue
            item: Json = {"taskType": task.get("taskType"), "taskUUID": task.get("taskUUID")}
            if fault == "bad_uuid":
                item["mediaUUID" if task.get("taskType") == "mediaStorage" else "imageUUID"] = (
                    "not-a-uuid"
                )
            data.append(item)
        return self.json_reply(200, {"data": data})

    def handle_advance(self, body: bytes) -> Reply:
        """POST /_emulator/advance {"seconds": N} (also "hours", "days")."""
        try:
            spec = json.loads(body or b"{}")
            amounts = {k: float(spec.get(k, 0)) for k in ("seconds", "hours", "days")}
            now = self.advance(**amounts)
        except (ValueError, TypeError, AttributeError) as exc:
            return self.json_reply(400, {"error": f"bad advance request: {exc}"})
        return self.json_reply(200, {"clock": now})

    def handle_image_get(self, name: str) -> Reply:
        """GET /images/<uuid>[.ext]: the stored bytes, when kept."""
        record = self.image(name.split(".", 1)[0])
        if record is None or record.data is None:
            return self.json_reply(404, {"error": "no such image"})
        return Reply(body=record.data, content_type=_IMAGE_TYPES[record.format])
