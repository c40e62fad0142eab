"""The HTTP calls, and the one mapping of httpx and TLS errors to ours.

As httpx's ``map_httpcore_exceptions``: every foreign error of a request is
turned into an assetcache error here and nowhere else (:func:`mapped`).
httpx is imported inside the functions, so start-up stays free of it.
"""

from __future__ import annotations

import contextlib
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
    """Keyword arguments of the ``httpx.Client``/``AsyncClient`` of a cache."""
    import httpx

    kwargs: dict[str, Any] = {
        "timeout": httpx.Timeout(retry.timeout, connect=10.0),
        "limits": httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        "follow_redirects": False,
    }
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


@contextlib.contextmanager
def mapped(url: str) -> Iterator[None]:
    """Turn an httpx error raised inside the block into our error tree."""
    import httpx

    try:
        yield
    except AssetCacheError:
        raise
    except httpx.HTTPError as exc:
        raise _transport_error(exc, url) from None


def _transport_error(exc: Exception, url: str) -> RemoteError:
    import httpx

    untrusted = _certificate_problem(exc)
    if untrusted is not None:
        # Not transient: retrying cannot make an untrusted certificate trusted.
        return RemoteError(
            f"no answer from {url}: TLS certificate verification failed ({untrusted})", code="tls"
        )
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        reason = "connection refused or unreachable"
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
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


def post_sync(effect: Any, client: Any) -> Response:
    """POST an ``Http`` effect on a blocking ``httpx.Client``."""
    with mapped(effect.url):
        resp = client.post(
            effect.url,
            content=_iter(effect.body()),
            headers=_headers(effect),
            timeout=effect.timeout,
        )
    return _response(resp)


async def post_async(effect: Any, client: Any) -> Response:
    """The asyncio twin of :func:`post_sync`, on an ``httpx.AsyncClient``."""

    async def body() -> Any:
        for chunk in effect.body():
            yield chunk

    with mapped(effect.url):
        resp = await client.post(
            effect.url, content=body(), headers=_headers(effect), timeout=effect.timeout
        )
    return _response(resp)


def _headers(effect: Any) -> dict[str, str]:
    headers = dict(effect.headers)
    headers["Content-Length"] = str(effect.content_length)
    return headers


def _response(resp: Any) -> Response:
    return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)


def _iter(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield from chunks
