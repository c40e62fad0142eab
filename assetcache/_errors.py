"""The exceptions assetcache raises.

Every error a caller can see derives from :class:`AssetCacheError`; lower-level
errors (``OSError``, ``sqlite3.Error``, ``httpx.HTTPError``) are mapped at the
boundary with ``raise ... from exc`` so the original stays on ``__cause__``::

    AssetCacheError
    ├── SourceError                 the input itself is unusable (names it, says why)
    │   ├── SourceNotFound          missing path, dangling symlink
    │   ├── UnsupportedFormat       readable, but not JPEG/PNG/WEBP/BMP/GIF
    │   ├── InvalidImage            claims a format it does not hold (truncated, garbage)
    │   └── SourceTooLarge          above the configured ``max_bytes``
    ├── ConfigurationError          no API key, bad URL, bad setting
    ├── StoreError                  the cache database cannot be used
    │   └── SchemaTooNew            written by a newer assetcache
    ├── RemoteError                 the Runware API said no, or could not be reached
    │   ├── AuthenticationError     invalidApiKey (401)
    │   ├── InsufficientCredits     402
    │   ├── RateLimited             429 after all retries
    │   ├── ServerError             5xx / timeouts / dropped connections after all retries
    │   │   └── TransportError      no HTTP answer at all (refused, dropped, timed out)
    │   ├── ProtocolError           a response we cannot trust (malformed, foreign taskUUID)
    │   └── RejectedInput           a 4xx naming one task's parameter (invalidImage ...)
    │       └── UnknownImage        ``invalid<Param>`` on a parameter that carried a UUID
    └── RetryBudgetExhausted        ``use()`` gave up after its bound
"""

from __future__ import annotations

from typing import Any


class AssetCacheError(Exception):
    """Base class of every assetcache error."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in attrs.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class SourceError(AssetCacheError):
    """An input cannot be used. ``.source`` names it, ``.reason`` says why."""

    source: str
    reason: str

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}", source=source, reason=reason)


class SourceNotFound(SourceError):
    pass


class UnsupportedFormat(SourceError):
    pass


class InvalidImage(SourceError):
    pass


class SourceTooLarge(SourceError):
    pass


class ConfigurationError(AssetCacheError):
    pass


class StoreError(AssetCacheError):
    """The cache database cannot be opened, read or written. ``.path`` names it."""

    path: str


class SchemaTooNew(StoreError):
    pass


class RemoteError(AssetCacheError):
    """The API answered with an error, or could not be reached.

    ``code``, ``parameter``, ``task_uuid`` and ``status`` carry what the server
    said, where it said it; any of them may be ``None``.
    """

    code: str | None
    parameter: str | None
    task_uuid: str | None
    status: int | None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        parameter: str | None = None,
        task_uuid: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            parameter=parameter,
            task_uuid=task_uuid,
            status=status,
            retry_after=retry_after,
        )


class AuthenticationError(RemoteError):
    pass


class InsufficientCredits(RemoteError):
    pass


class RateLimited(RemoteError):
    pass


class ServerError(RemoteError):
    pass


class TransportError(ServerError):
    """The request did not get an HTTP answer (refused, dropped, timed out)."""


class ProtocolError(RemoteError):
    pass


class RejectedInput(RemoteError):
    pass


class UnknownImage(RejectedInput):
    """The server does not know a UUID it was given (expired, deleted, foreign)."""


class RetryBudgetExhausted(AssetCacheError):
    pass


#: Errors worth retrying at the transport level.
TRANSIENT_ERRORS = (ServerError, RateLimited)
