"""The HTTP client library: ``httpx2`` when it is installed, else ``httpx``.

``httpx`` has had no release since 0.28.1; ``httpx2`` is its maintained fork
with the same API (Python >= 3.11). Every module of the cache that talks HTTP
gets the library from :func:`http`, the one import point, loaded on first
use (``--version`` and warm ``status`` import no HTTP stack).

Objects the *caller* hands in (a response returned, an error raised by the
caller's own client) may come from either library, whichever the cache uses:
:func:`is_response` and :func:`is_status_error` recognise both, looking only at
libraries already imported (an object of a library that was never imported
cannot exist).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

__all__ = [
    "MODULES",
    "error_types",
    "for_transport",
    "http",
    "is_response",
    "is_status_error",
    "loaded",
]

#: The libraries, preferred first.
MODULES = ("httpx2", "httpx")

_chosen: ModuleType | None = None


def http() -> ModuleType:
    """The HTTP library the cache uses (``ASSETCACHE_HTTP=httpx`` forces plain httpx)."""
    global _chosen
    if _chosen is None:
        forced = os.environ.get("ASSETCACHE_HTTP", "").strip()
        names = (forced,) if forced in MODULES else MODULES
        error: ImportError | None = None
        for name in names:
            try:
                _chosen = __import__(name)
                break
            except ImportError as exc:
                error = exc
        else:
            raise ImportError(f"assetcache needs httpx2 or httpx: {error}")
    return _chosen


def for_transport(transport: Any) -> ModuleType:
    """The library a client must come from to use ``transport`` (the caller's, if
    the caller built it with the other library), else :func:`http`."""
    if transport is not None:
        for cls in type(transport).__mro__:  # a subclass of either library's transport
            name = cls.__module__.split(".", 1)[0]
            mod = sys.modules.get(name)
            if name in MODULES and mod is not None:
                return mod
    return http()


def loaded() -> list[ModuleType]:
    """The HTTP libraries this process has imported (ours first)."""
    out = [http()]
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is not None and mod not in out:
            out.append(mod)
    return out


def _types(attr: str) -> tuple[type[Any], ...]:
    found = []
    for name in MODULES:
        mod = sys.modules.get(name)
        cls = getattr(mod, attr, None) if mod is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def is_response(obj: object) -> bool:
    """Whether ``obj`` is an ``httpx.Response`` or an ``httpx2.Response``."""
    types = _types("Response")
    return bool(types) and isinstance(obj, types)


def is_status_error(obj: object) -> bool:
    """Whether ``obj`` is an ``HTTPStatusError`` of either library."""
    types = _types("HTTPStatusError")
    return bool(types) and isinstance(obj, types)


def error_types(attr: str) -> tuple[type[Exception], ...]:
    """The exception class ``attr`` (``TimeoutException``, ``HTTPError``, ...) of each
    loaded library, for ``except`` and ``isinstance``."""
    http()
    return tuple(t for t in _types(attr) if issubclass(t, Exception))
