"""assetcache: never upload the same image to Runware twice.

>>> from assetcache import AssetCache
>>> with AssetCache() as cache:                     # doctest: +SKIP
...     cache.get_uuid("photo.png")                 # uploads once, then answers from the cache
'5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44'

The whole public API is re-exported here; every other module is private.
The cache classes load on first use, so ``import assetcache`` (and the
``assetcache --version`` command) stays free of SQLite and HTTP imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    AssetCacheError,
    AuthenticationError,
    ConfigurationError,
    InsufficientCredits,
    InvalidImage,
    ProtocolError,
    RateLimited,
    RejectedInput,
    RemoteError,
    RetryBudgetExhausted,
    SchemaTooNew,
    ServerError,
    SourceError,
    SourceNotFound,
    SourceTooLarge,
    StoreError,
    UnknownImage,
    UnsupportedFormat,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._client import AssetCache, AsyncAssetCache
    from ._config import RetryPolicy
    from ._models import (
        CacheStats,
        CopiesUsage,
        DoctorReport,
        Entry,
        FileStatus,
        ForgetItem,
        ImportReport,
        PruneReport,
        RefreshItem,
        RefreshReport,
        Resolution,
        StatusReport,
        VerifyItem,
    )
    from ._sources import Source

#: Public names whose modules load on first access (PEP 562).
_LAZY = {
    "AssetCache": "._client",
    "AsyncAssetCache": "._client",
    "RetryPolicy": "._config",
    "Source": "._sources",
    **dict.fromkeys(
        (
            "CacheStats",
            "CopiesUsage",
            "DoctorReport",
            "Entry",
            "FileStatus",
            "ForgetItem",
            "ImportReport",
            "PruneReport",
            "RefreshItem",
            "RefreshReport",
            "Resolution",
            "StatusReport",
            "VerifyItem",
        ),
        "._models",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AssetCache",
    "AssetCacheError",
    "AsyncAssetCache",
    "AuthenticationError",
    "CacheStats",
    "ConfigurationError",
    "CopiesUsage",
    "DoctorReport",
    "Entry",
    "FileStatus",
    "ForgetItem",
    "ImportReport",
    "InsufficientCredits",
    "InvalidImage",
    "ProtocolError",
    "PruneReport",
    "RateLimited",
    "RefreshItem",
    "RefreshReport",
    "RejectedInput",
    "RemoteError",
    "Resolution",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "SchemaTooNew",
    "ServerError",
    "Source",
    "SourceError",
    "SourceNotFound",
    "SourceTooLarge",
    "StatusReport",
    "StoreError",
    "UnknownImage",
    "UnsupportedFormat",
    "VerifyItem",
    "__version__",
]
