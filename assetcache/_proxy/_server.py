"""The :class:`Proxy`: Runware's REST and WebSocket endpoint, answered through the cache.

Point any Runware client's API URL at ``proxy.base_url`` (REST) or
``proxy.ws_url`` (WebSocket); the proxy forwards to one upstream fixed by its
configuration, with the client's own key, and answers inline uploads from the
cache (see ``_relay``).

>>> with Proxy(upstream="https://api.runware.ai/v1") as proxy:   # doctest: +SKIP
...     httpx.post(proxy.base_url, headers={"Authorization": "Bearer KEY"}, json=[...])
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._errors import AssetCacheError, ConfigurationError
from ._relay import (
    MAX_HEAL_ROUNDS,
    CachePool,
    Flight,
    Json,
    Renames,
    Savings,
    answer_uploads,
    api_key_of,
    heal_flight,
    prepare_flight,
    settle_flight,
)
from ._wire import HEADER_LIMIT, Reply, Request, WebSocket, WireError, read_request

log = logging.getLogger("assetcache.proxy")

DEFAULT_PORT = 8787
#: Largest request body the proxy reads (a batch of inline images).
DEFAULT_MAX_BODY = 256 << 20
#: Seconds one upstream exchange may take (generation tasks can be slow).
DEFAULT_TIMEOUT = 300.0
#: How often usage counters are written while the proxy runs.
COUNTER_FLUSH_SECONDS = 30.0


def ws_url_for(upstream: str) -> str:
    """Runware's WebSocket endpoint beside a REST one (``api.`` -> ``ws-api.``)."""
    parts = urllib.parse.urlsplit(upstream)
    scheme = "wss" if parts.scheme == "https" else "ws"
    host = parts.netloc
    if parts.hostname == "api.runware.ai":
        host = host.replace("api.runware.ai", "ws-api.runware.ai")
    return urllib.parse.urlunsplit((scheme, host, parts.path, "", ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}], "data": []}).encode()


class Proxy:
    """A local Runware endpoint that gives any client the cache.

    ``upstream`` is the one server it talks to (a client cannot change it);
    ``db_path`` and ``cache_options`` configure the caches it opens, one per
    client key (keys stay in memory, never on disk or in a log).
    """

    def __init__(
        self,
        *,
        upstream: str = "https://api.runware.ai/v1",
        upstream_ws: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: str | Path | None = None,
        cache_options: Mapping[str, Any] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"upstream {upstream!r}: not an http(s) URL")
        if parts.username or parts.password:
            raise ConfigurationError("upstream URL: put no credentials in it")
        self.upstream = upstream
        self.upstream_ws = upstream_ws or ws_url_for(upstream)
        self.host = host
        self.port = port
        self.path = parts.path.rstrip("/") or "/"
        self.max_body = max_body
        self.timeout = timeout
        self.savings = Savings()
        self.renames = Renames()
        self._db_path = db_path
        self._cache_options = dict(cache_options or {})
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._pool: CachePool | None = None
        self._http: Any = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self._netloc()}{self.path}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._netloc()}{self.path}"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> Proxy:
        """Bind (port 0 picks a free port) and serve on a background thread."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run_thread, name="assetcache-proxy", daemon=True
        )
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._thread = None
            raise failure
        return self

    def stop(self) -> None:
        """Stop serving and close the caches; idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        self._thread = None

    def serve_forever(self, ready: Callable[[Proxy], None] | None = None) -> None:
        """Serve in this thread until Ctrl-C; ``ready(proxy)`` runs once it listens."""
        asyncio.run(self._main(ready))

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main(self._ready))
        except BaseException as exc:  # bind errors reach start()
            self._failure = exc
            self._ready.set()

    async def _main(self, ready: threading.Event | Callable[[Proxy], None] | None) -> None:
        from .._client import AsyncAssetCache
        from .._httpx import http

        httpx = http()  # httpx2 when installed, else httpx

        def factory(key: str, kind: str) -> Any:
            return AsyncAssetCache(
                key,
                base_url=self.upstream,
                db_path=self._db_path,
                upload_task=kind,
                **self._cache_options,
            )

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # Open the database once before listening: a database the cache refuses
        # (another user's, a bad path) is one error at start, not one per request.
        probe = factory(None, "imageUpload")  # type: ignore[arg-type]
        await probe.aclose()
        self._pool = CachePool(factory)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0))
        try:
            server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=HEADER_LIMIT
            )
        except OSError as exc:
            await self._http.aclose()
            raise ConfigurationError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = server.sockets[0].getsockname()[1]
        if isinstance(ready, threading.Event):
            ready.set()
        elif ready is not None:
            ready(self)
        flusher = asyncio.create_task(self._flush_every(COUNTER_FLUSH_SECONDS))
        try:
            async with server:
                await self._stop.wait()
        finally:
            flusher.cancel()
            server.close()
            await self._pool.close()
            await self._http.aclose()

    async def _flush_every(self, seconds: float) -> None:
        assert self._pool is not None
        while True:
            await asyncio.sleep(seconds)
            await self._pool.flush()

    # ------------------------------------------------------------- serving

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    request = await read_request(reader, self.max_body)
                except WireError as exc:
                    writer.write(
                        Reply(exc.status, error_body("invalidRequest", exc.reason)).encode(False)
                    )
                    await writer.drain()
                    return
                if request is None:
                    return
                if request.wants_websocket:
                    await self._websocket(request, reader, writer)
                    return
                try:
                    reply = await self._http_request(request)
                except AssetCacheError as exc:
                    log.warning("proxy: %s", exc)
                    reply = Reply(500, error_body("proxyError", f"the proxy's cache failed: {exc}"))
                except Exception:
                    log.exception("proxy: request failed")
                    reply = Reply(500, error_body("proxyError", "the proxy failed on this request"))
                writer.write(reply.encode(request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # one broken connection never stops the proxy
            log.exception("proxy: connection failed")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _http_request(self, request: Request) -> Reply:
        path = urllib.parse.urlsplit(request.path).path.rstrip("/") or "/"
        if request.method != "POST" or path not in (self.path, "/"):
            return Reply(404, error_body("notFound", f"no route {request.method} {path}"))
        try:
            tasks = json.loads(request.body)
        except ValueError:
            tasks = None
        key = (
            api_key_of(request.header("Authorization"), tasks) if isinstance(tasks, list) else None
        )
        if not isinstance(tasks, list) or key is None:
            return await self._forward(request, request.body)
        polls = self.renames.outgoing(tasks)
        if polls != tasks:
            return self._renamed_back(await self._forward(request, json.dumps(polls).encode()))
        pool = self._pool
        assert pool is not None
        answered, rest = await answer_uploads(pool, key, tasks, self.savings)
        local = [answered[i] for i in sorted(answered)]
        if not rest:
            return Reply(200, json.dumps({"data": local}).encode())
        found = await asyncio.gather(
            *(prepare_flight(pool, key, tasks[i], self.savings) for i in rest)
        )
        flights = {f.client_uuid: f for f in found if f is not None}
        if not answered and not flights:
            return await self._forward(request, request.body)
        outgoing = [f.sent if f else tasks[i] for i, f in zip(rest, found, strict=True)]
        reply = await self._forward(request, json.dumps(outgoing).encode())
        if not flights:
            return merge_reply(local, reply)
        return await self._heal_rest(request, key, local, reply, flights)

    def _renamed_back(self, reply: Reply) -> Reply:
        body = _json_object(reply.body)
        if body is None:
            return reply
        data, errors = _items(body, "data"), _items(body, "errors")
        if not (self.renames.incoming(data) | self.renames.incoming(errors)):
            return reply
        if "data" in body:
            body["data"] = data
        if "errors" in body:
            body["errors"] = errors
        return Reply(reply.status, json.dumps(body).encode(), reply.headers)

    async def _heal_rest(
        self,
        request: Request,
        key: str,
        local: list[Json],
        reply: Reply,
        flights: dict[str, Flight],
    ) -> Reply:
        """Send again, alone, each task whose bound image the server lost; answer
        the client under its own taskUUIDs as if nothing had happened."""
        assert self._pool is not None
        body = _json_object(reply.body)
        if body is None:
            return merge_reply(local, reply)
        data, errors = _items(body, "data"), _items(body, "errors")
        status = reply.status
        for _ in range(MAX_HEAL_ROUNDS):
            resend: list[Json] = []
            kept: list[Json] = []
            for err in errors:
                flight = flights.get(str(err.get("taskUUID")))
                again = await heal_flight(self._pool, key, flight, err) if flight else None
                if again is None:
                    kept.append(err)
                else:
                    flights[again["taskUUID"]] = flight  # type: ignore[assignment]
                    self.renames.add(flight.client_uuid, again["taskUUID"])  # type: ignore[union-attr]
                    resend.append(again)
            errors = kept
            if not resend:
                break
            self.savings.healed += len(resend)
            again_reply = await self._forward(request, json.dumps(resend).encode())
            again_body = _json_object(again_reply.body)
            if again_body is None:
                return again_reply  # the server broke mid-heal: say so as it did
            data += _items(again_body, "data")
            errors += _items(again_body, "errors")
            status = again_reply.status
        failed = {str(e.get("taskUUID")) for e in errors}
        done: set[int] = set()
        for item in data:
            flight = flights.get(str(item.get("taskUUID")))
            if flight is None:
                continue
            if str(item["taskUUID"]) not in failed and id(flight) not in done:
                done.add(id(flight))
                await settle_flight(self._pool, key, flight)
            item["taskUUID"] = flight.client_uuid
        for err in errors:
            flight = flights.get(str(err.get("taskUUID")))
            if flight is not None:
                err["taskUUID"] = flight.client_uuid
        body["data"] = local + data
        if errors:
            body["errors"] = errors
        else:
            body.pop("errors", None)
            status = 200
        return Reply(status, json.dumps(body).encode(), reply.headers)

    async def _forward(self, request: Request, body: bytes) -> Reply:
        from .._httpx import error_types

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        auth = request.header("Authorization")
        if auth:
            headers["Authorization"] = auth
        try:
            resp = await self._http.post(self.upstream, content=body, headers=headers)
        except error_types("TimeoutException"):
            return Reply(
                504, error_body("proxyUpstreamTimeout", "the upstream did not answer in time")
            )
        except error_types("HTTPError") as exc:
            return Reply(
                502,
                error_body(
                    "proxyUpstreamUnavailable",
                    f"the upstream cannot be reached ({type(exc).__name__})",
                ),
            )
        out = {"Content-Type": resp.headers.get("Content-Type", "application/json")}
        if "Retry-After" in resp.headers:
            out["Retry-After"] = resp.headers["Retry-After"]
        return Reply(resp.status_code, resp.content, out)

    async def _websocket(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            from websockets.asyncio.client import connect
        except ImportError:
            writer.write(
                Reply(
                    501,
                    error_body(
                        "proxyWebSocketUnavailable",
                        "the proxy's WebSocket endpoint needs the websocket extra: "
                        "pip install 'assetcache[websocket]'",
                    ),
                ).encode(False)
            )
            await writer.drain()
            return
        ws = await WebSocket.accept(request, reader, writer, self.max_body)
        if ws is None:
            return
        try:
            upstream = await asyncio.wait_for(
                connect(self.upstream_ws, max_size=self.max_body, open_timeout=10), 15
            )
        except Exception as exc:
            await ws.close(1011, f"upstream unreachable ({type(exc).__name__})")
            return
        session = _Session(self, ws, upstream)
        await session.run()


class _Session:
    """One client WebSocket relayed to one upstream WebSocket.

    Tasks whose images the cache bound are tracked by the taskUUID they went
    up with; an error saying the server lost one of those images is kept from
    the client, the task healed and sent again under a fresh taskUUID, and its
    results reach the client under the taskUUID it chose.
    """

    def __init__(self, proxy: Proxy, ws: WebSocket, upstream: Any) -> None:
        self.proxy = proxy
        self.ws = ws
        self.upstream = upstream
        self.key: str | None = None
        self.flights: dict[str, Flight] = {}
        self.settled: set[int] = set()

    @property
    def pool(self) -> CachePool:
        assert self.proxy._pool is not None
        return self.proxy._pool

    async def run(self) -> None:
        down = asyncio.create_task(self._downstream())
        try:
            async for text in self.ws:
                await self._from_client(text)
        finally:
            down.cancel()
            with contextlib.suppress(BaseException):
                await down
            with contextlib.suppress(Exception):
                await self.upstream.close()
            await self.ws.close()

    async def _from_client(self, text: str) -> None:
        try:
            tasks = json.loads(text)
        except ValueError:
            tasks = None
        if not isinstance(tasks, list):
            await self.upstream.send(text)
            return
        self.key = api_key_of("", tasks) or self.key
        if self.key is None:
            await self.upstream.send(text)
            return
        polls = self.proxy.renames.outgoing(tasks)
        if polls != tasks:
            tasks = polls
            text = json.dumps(tasks)
        answered, rest = await answer_uploads(self.pool, self.key, tasks, self.proxy.savings)
        for i in sorted(answered):
            await self.ws.send(json.dumps({"data": [answered[i]]}))
        if not rest:
            return
        found = await asyncio.gather(
            *(prepare_flight(self.pool, self.key, tasks[i], self.proxy.savings) for i in rest)
        )
        for flight in found:
            if flight is not None:
                self.flights[flight.prepared.task["taskUUID"]] = flight
        if answered or any(found):
            text = json.dumps([f.sent if f else tasks[i] for i, f in zip(rest, found, strict=True)])
        await self.upstream.send(text)

    async def _downstream(self) -> None:
        try:
            async for message in self.upstream:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                out = await self._from_upstream(text)
                if out is not None:
                    await self.ws.send(out)
        except Exception:
            pass
        await self.ws.close(1011, "upstream closed")

    async def _from_upstream(self, text: str) -> str | None:
        if not self.flights or self.key is None:
            return text
        body = _json_object(text.encode("utf-8"))
        if body is None:
            return text
        changed = self.proxy.renames.incoming(_items(body, "data")) | self.proxy.renames.incoming(
            _items(body, "errors")
        )
        errors = []
        for err in _items(body, "errors"):
            flight = self.flights.get(str(err.get("taskUUID")))
            if flight is None:
                errors.append(err)
                continue
            changed = True
            again = await heal_flight(self.pool, self.key, flight, err)
            if again is None:
                err["taskUUID"] = flight.client_uuid
                errors.append(err)
                continue
            self.flights[again["taskUUID"]] = flight
            self.proxy.renames.add(flight.client_uuid, again["taskUUID"])
            self.proxy.savings.healed += 1
            await self.upstream.send(json.dumps([again]))
        data = _items(body, "data")
        for item in data:
            flight = self.flights.get(str(item.get("taskUUID")))
            if flight is None:
                continue
            changed = True
            if id(flight) not in self.settled:
                self.settled.add(id(flight))
                await settle_flight(self.pool, self.key, flight)
            item["taskUUID"] = flight.client_uuid
        if not changed:
            return text
        if not data and not errors:
            return None  # every error in it is being healed
        out: Json = dict(body)
        if data or "data" in body:
            out["data"] = data
        if errors:
            out["errors"] = errors
        else:
            out.pop("errors", None)
        return json.dumps(out)


def _json_object(raw: bytes) -> Json | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _items(body: Json, name: str) -> list[Json]:
    value = body.get(name)
    items = value if isinstance(value, list) else ([value] if isinstance(value, dict) else [])
    return [item for item in items if isinstance(item, dict)]


def merge_reply(local: list[Json], reply: Reply) -> Reply:
    """Upstream's answer for the tasks it got, with the cache's answers added to ``data``."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return reply  # not a Runware answer: pass it on as it came
    data = body.get("data")
    upstream = data if isinstance(data, list) else ([data] if isinstance(data, dict) else [])
    body["data"] = local + upstream
    return Reply(reply.status, json.dumps(body).encode(), reply.headers)
