"""Inputs: what a caller may pass, and how each is told apart and read.

A source is a filesystem path (``str``/``os.PathLike``), ``bytes``, a binary
file object, a data URI, a bare base64 string, or an http(s) URL. Strings are
classified by rules that cannot mistake one kind for another:

1. ``data:`` (any case) starts a data URI.
2. ``scheme://`` starts a URL; only http and https are accepted.
3. A string made only of base64 characters that either starts like a
   base64-encoded image (``iVBORw0KGgo`` PNG, ``/9j/`` JPEG, ``R0lGOD`` GIF,
   ``UklGR`` WEBP, ``Qk`` BMP) and is at least 32 characters long, or is
   longer than 1 KiB, and is not an existing file, is base64.
4. Anything else is a path. ``Source.path/.base64/.url(...)`` skip the guess.

URLs are keyed by the URL text (normalised scheme and host), not by fetched
content: the server fetches them, so the client never downloads, and a URL whose
content changes must be :meth:`~assetcache.AssetCache.invalidate`-d by the caller.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import IO, Any, Union

from ._errors import InvalidImage, SourceError

SourceLike = Union["Source", str, bytes, bytearray, memoryview, "os.PathLike[str]", IO[bytes]]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_B64_IMAGE_PREFIXES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk")
#: Longer than PATH_MAX-ish names people use: such a base64-only string is data.
_B64_MIN_UNPREFIXED = 1024
#: The smallest valid image (a 1x1 GIF, 26+ bytes) encodes to more than this;
#: shorter strings are file names even when they start like encoded images.
_B64_MIN_PREFIXED = 32
#: Data URI media types that declare nothing about the format.
_UNDECLARED = frozenset({"application/octet-stream", "binary/octet-stream", "application/binary"})


@dataclass(frozen=True, slots=True)
class Source:
    """One input, classified. Build with :meth:`coerce` or the named constructors.

    >>> Source.coerce("photo.png").kind
    'path'
    >>> Source.coerce(b"\\x89PNG...").kind
    'bytes'
    """

    kind: str  # "path" | "bytes" | "file" | "data_uri" | "base64" | "url"
    label: str  # how messages name the input (never the whole payload)
    path: str | None = None
    data: bytes | None = None
    url: str | None = None
    stream: Any = None
    declared_type: str | None = None

    # -- constructors ----------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike[str] | bytes) -> Source:
        raw = os.fsdecode(os.fspath(path))
        if not raw:
            raise SourceError("''", "empty path")
        if "\x00" in raw:
            raise SourceError(_short(raw), "path contains a NUL byte")
        try:
            os.fsencode(raw)
        except UnicodeEncodeError:
            # A lone surrogate that did not come from decoding a file name: no
            # file can have this name, and os.stat would raise, not return ENOENT.
            raise SourceError(
                _printable(raw),
                "path is not a valid file name (it holds characters no file name can)",
            ) from None
        return cls("path", _printable(raw), path=os.path.abspath(raw))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Source:
        data = bytes(data)
        return cls("bytes", f"<{len(data)} bytes>", data=data)

    @classmethod
    def from_file(cls, stream: IO[bytes]) -> Source:
        name = getattr(stream, "name", None)
        label = (
            f"<file {name}>" if isinstance(name, str) else f"<file object {type(stream).__name__}>"
        )
        return cls("file", label, stream=stream)

    @classmethod
    def from_base64(cls, text: str | bytes) -> Source:
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        label = f"base64 {_short(text.strip(), 16)!r} ({len(text)} chars)"
        return cls("base64", label, data=_b64decode(text, label))

    @classmethod
    def from_data_uri(cls, uri: str) -> Source:
        label = f"data URI {_short(uri, 40)!r} ({len(uri)} chars)"
        declared, data = _parse_data_uri(uri, label)
        return cls("data_uri", label, data=data, declared_type=declared)

    @classmethod
    def from_url(cls, url: str) -> Source:
        url = url.strip()
        match = _SCHEME.match(url)
        scheme = match.group(1).lower() if match else ""
        label = _redact_url(url)
        if scheme not in ("http", "https"):
            raise SourceError(
                label,
                f"{scheme or 'this'} URLs are not supported: pass a local path, "
                "or an http(s) URL the server can fetch",
            )
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018  (raises on a port out of range or not a number)
        except ValueError as exc:
            raise SourceError(label, f"malformed URL ({exc})") from None
        if not parts.hostname:
            raise SourceError(label, "URL has no host")
        normalised = urllib.parse.urlunsplit(
            (scheme, parts.netloc.lower(), parts.path or "/", parts.query, "")
        )
        return cls("url", label, url=normalised)

    @classmethod
    def coerce(cls, obj: SourceLike) -> Source:
        """Classify anything a caller may pass (see the module docstring)."""
        if isinstance(obj, Source):
            return obj
        if isinstance(obj, str):
            return _classify_str(obj)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return cls.from_bytes(obj)
        if isinstance(obj, os.PathLike):
            return cls.from_path(obj)
        if hasattr(obj, "read"):
            return cls.from_file(obj)
        raise SourceError(
            f"<{type(obj).__name__}>",
            "not a path, bytes, file object, data URI, base64 string or URL",
        )


def _classify_str(text: str) -> Source:
    head = text[:16].lstrip()
    if head[:5].lower() == "data:":
        return Source.from_data_uri(text)
    if _SCHEME.match(head if len(text) > 16 else text.strip()):
        return Source.from_url(text)
    if _looks_base64(text) and not _exists(text):
        return Source.from_base64(text)
    return Source.from_path(text)


def _looks_base64(text: str) -> bool:
    stripped = text.strip()
    if not stripped or not _B64_CHARS.match(stripped):
        return False
    if len(stripped) >= _B64_MIN_UNPREFIXED:
        return True
    return len(stripped) >= _B64_MIN_PREFIXED and stripped.startswith(_B64_IMAGE_PREFIXES)


def _exists(text: str) -> bool:
    try:
        return os.path.lexists(text)
    except (OSError, ValueError):  # name too long, embedded NUL
        return False


def _b64decode(text: str, label: str) -> bytes:
    compact = "".join(text.split())
    if not compact:
        raise SourceError(label, "empty base64 data")
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if altchars:
            data = base64.b64decode(padded, altchars=altchars, validate=True)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(label, f"invalid base64 ({exc})") from None
    if not data:
        raise SourceError(label, "empty base64 data")
    return data


def _parse_data_uri(uri: str, label: str) -> tuple[str | None, bytes]:
    uri = uri.strip()
    comma = uri.find(",")
    if comma < 0:
        raise InvalidImage(label, "malformed data URI (no comma before the data)")
    meta = uri[5:comma]
    payload = uri[comma + 1 :]
    params = [p.strip() for p in meta.split(";")]
    media_type = params[0].lower() or None
    if media_type and not re.match(r"^[a-z0-9.+\-]+/[a-z0-9.+\-]+$", media_type):
        raise InvalidImage(label, f"malformed data URI (media type {media_type!r})")
    if media_type in _UNDECLARED:
        # "Some bytes": runware-sdk's file_to_data_uri labels bytes so, and the
        # server sniffs the format. The bytes decide, as for bare base64.
        media_type = None
    if "base64" in (p.lower() for p in params[1:]):
        return media_type, _b64decode(payload, label)
    try:
        data = urllib.parse.unquote_to_bytes(payload)
    except UnicodeEncodeError:
        raise InvalidImage(label, "malformed data URI (holds invalid characters)") from None
    if not data:
        raise SourceError(label, "empty data URI")
    return media_type, data


def _redact_url(url: str) -> str:
    """A URL fit for messages: no credentials, no query (signed URLs carry tokens)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        query = "?…" if parts.query else ""
        return _short(f"{parts.scheme}://{host}{parts.path}{query}", 200)
    except ValueError:
        # Unparseable: still drop what may be secret (user:password@, the query).
        head = re.sub(r"//[^/@]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
        return _short(head + ("?…" if "?" in url else ""), 200)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _printable(path: str) -> str:
    """A path as a message may show it: undecodable bytes as \\x escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate: not even a decoded file name
        return path.encode("utf-8", "backslashreplace").decode("ascii")
