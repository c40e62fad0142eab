"""assetcache: never upload the same image to Runware twice.

>>> from assetcache import AssetCache
>>> with AssetCache() as cache:                     # doctest: +SKIP
...     cache.get_uuid("photo.png")                 # uploads once, then answers from the cache
'5d1f9c62-0b7e-4c55-9d1e-3f0a7c1b2e44'

The whole public API is re-exported here; every other module is private.
"""

from ._cache import AssetCache, AsyncAssetCache, Resolution, RetryPolicy
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
from ._sources import Source
from ._version import __version__

__all__ = [
    "AssetCache",
    "AssetCacheError",
    "AsyncAssetCache",
    "AuthenticationError",
    "ConfigurationError",
    "InsufficientCredits",
    "InvalidImage",
    "ProtocolError",
    "RateLimited",
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
    "StoreError",
    "UnknownImage",
    "UnsupportedFormat",
    "__version__",
]
