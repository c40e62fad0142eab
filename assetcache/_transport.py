"""The HTTP calls, and the one mapping of httpx and TLS errors to ours.

As httpx's ``map_httpcore_exceptions``: every foreign error of a request is
turned into an assetcache error here and nowhere else (:func:`mapped`).
httpx2 (when installed) or httpx is imported inside the functions, through
``_httpx``, so start-up stays free of it.

Every exchange is bounded: ``effect.timeout`` covers the whole of it (connect,
send, every byte of the answer; the async twin enforces it exactly, the
blocking one between reads, each read itself bounded by the same timeout), and
an answer is read through :class:`~assetcache._bodies.BodyReader`, so at most
``MAX_ANSWER_BYTES`` after decoding, gzip bombs included.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import AssetCacheError, RemoteError, TransportError

if TYPE_CHECKING:
    from ._config import RetryPolicy


@dataclass(slots=True)
class Response:
    """What one POST answered."""

    status: int
    headers: dict[str, str]
    body: bytes


def client_kwargs(retry: RetryPolicy, concurrency: int, transport: Any = None) -> dict[str, Any]:
    """Keyword arguments of the ``httpx.Client``/``AsyncClient`` of a cache (of the
    library :func:`~assetcache._httpx.for_transport` picks)."""
    from ._httpx import for_transport

    httpx = for_transport(transport)

    kwargs: dict[str, Any] = {
        "timeout": httpx.Timeout(retry.timeout, connect=10.0),
        "limits": httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        "follow_redirects": False,
    }
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


#: The variables through which httpx may reach a plain-http URL via a proxy.
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def plain_http_tls(url: str) -> Any:
    """The TLS context of a client that only ever speaks plain HTTP, or ``None``.

    For an ``http://`` endpoint reached directly (the emulator, the local
    proxy), a context that trusts no certificate at all, so making the client
    does not load the CA bundle (some 25 ms of CPU, more on a cold disk, before
    the first request). Verification stays on, certificates required and host
    names checked: a TLS connection it was ever asked for would fail, never
    pass unchecked. ``None`` (the library's default context, the CA bundle) for
    ``https://`` and whenever a proxy variable is set.
    """
    if not url.lower().startswith("http://") or any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@contextlib.contextmanager
def mapped(url: str) -> Iterator[None]:
    """Turn an httpx (or httpx2) error raised inside the block into our error tree."""
    from ._httpx import error_types

    try:
        yield
    except AssetCacheError:
        raise
    except error_types("HTTPError") as exc:
        raise _transport_error(exc, url) from None


def _transport_error(exc: Exception, url: str) -> RemoteError:
    from ._httpx import error_types

    untrusted = _certificate_problem(exc)
    if untrusted is not None:
        # Not transient: retrying cannot make an untrusted certificate trusted.
        return RemoteError(
            f"no answer from {url}: TLS certificate verification failed ({untrusted})", code="tls"
        )
    dropped = (
        *error_types("RemoteProtocolError"),
        *error_types("ReadError"),
        *error_types("WriteError"),
    )
    if isinstance(exc, error_types("TimeoutException")):
        reason = "timed out"
    elif isinstance(exc, error_types("ConnectError")):
        # Refused, unresolvable, no route, TLS handshake: the endpoint cannot be reached.
        return TransportError(
            f"no answer from {url}: connection refused or unreachable", code="unreachable"
        )
    elif isinstance(exc, dropped):
        reason = "connection dropped"
    else:
        reason = type(exc).__name__
    return TransportError(f"no answer from {url}: {reason}", code="transport")


def _certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what ``exc`` is about."""
    import ssl

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate verify failed"
        cur = cur.__cause__ or cur.__context__
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


class _Deadline(Exception):
    """The whole exchange ran past its bound."""


def _timed_out(effect: Any) -> RemoteError:
    return TransportError(
        f"no answer from {effect.url}: timed out (the whole request, connect to last "
        f"byte, is bounded by {effect.timeout:g} s)",
        code="transport",
    )


def _answer_error(exc: Exception, effect: Any) -> RemoteError:
    from ._bodies import AnswerTooLarge

    code = "answerTooLarge" if isinstance(exc, AnswerTooLarge) else "badAnswer"
    return RemoteError(f"answer from {effect.url} refused: {exc}", code=code)


def _reader(resp: Any) -> Any:
    """A bounded reader of ``resp``'s body. A response built in memory (a mock
    transport) is already decoded: its bytes go through the same cap."""
    from ._bodies import BodyReader

    if resp.is_stream_consumed:
        reader = BodyReader(None)
        reader.feed(resp.content)
        return reader
    reader = BodyReader(resp.headers.get("content-encoding"))
    reader.declared(resp.headers.get("content-length"))
    return reader


def post_sync(effect: Any, client: Any) -> Response:
    """POST an ``Http`` effect on a blocking ``httpx.Client``, reading the whole
    answer within ``effect.timeout`` and at most MAX_ANSWER_BYTES of it."""
    from ._bodies import BadAnswer

    deadline = time.monotonic() + effect.timeout

    def body() -> Iterator[bytes]:
        for chunk in _iter(effect.body()):
            if time.monotonic() > deadline:
                raise _Deadline
            yield chunk

    try:
        with (
            mapped(effect.url),
            client.stream(
                "POST",
                effect.url,
                content=body(),
                headers=_headers(effect),
                timeout=effect.timeout,
            ) as resp,
        ):
            reader = _reader(resp)
            for raw in [] if resp.is_stream_consumed else resp.iter_raw():
                reader.feed(raw)
                if time.monotonic() > deadline:
                    raise _Deadline
            data = reader.finish()
    except _Deadline:
        raise _timed_out(effect) from None
    except BadAnswer as exc:
        raise _answer_error(exc, effect) from None
    return _response(resp, data)


async def post_async(effect: Any, client: Any) -> Response:
    """The asyncio twin of :func:`post_sync`: the bound is exact (``wait_for``)."""
    import asyncio

    from ._bodies import BadAnswer

    async def body() -> Any:
        for chunk in _iter(effect.body()):
            yield chunk

    async def exchange() -> Response:
        async with client.stream(
            "POST", effect.url, content=body(), headers=_headers(effect), timeout=effect.timeout
        ) as resp:
            reader = _reader(resp)
            if not resp.is_stream_consumed:
                async for raw in resp.aiter_raw():
                    reader.feed(raw)
            data = reader.finish()
        return _response(resp, data)

    try:
        with mapped(effect.url):
            return await asyncio.wait_for(exchange(), effect.timeout)
    except asyncio.TimeoutError:
        raise _timed_out(effect) from None
    except BadAnswer as exc:
        raise _answer_error(exc, effect) from None


def _headers(effect: Any) -> dict[str, str]:
    from ._bodies import ACCEPT_ENCODING

    headers = dict(effect.headers)
    headers["Content-Length"] = str(effect.content_length)
    headers["Accept-Encoding"] = ACCEPT_ENCODING  # only what BodyReader decodes
    return headers


def _response(resp: Any, data: bytes) -> Response:
    return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, data)


#: Body pieces are joined up to this size before they reach the connection:
#: each write costs the HTTP stack a fixed overhead, and a batch of small
#: images comes as five pieces per image.
WRITE_SIZE = 1 << 20


def _iter(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` regrouped into writes of about :data:`WRITE_SIZE` bytes (memory
    stays bounded by that size, whatever the body's length)."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= WRITE_SIZE and not parts:
            yield chunk
            continue
        parts.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)
