"""The public surface: everything in ``__all__``, and nothing private leaks into it."""

from __future__ import annotations

import subprocess
import sys

import assetcache

EXPECTED = {
    "AssetCache",
    "AsyncAssetCache",
    "Resolution",
    "RetryPolicy",
    "Source",
    "FileStatus",
    "StatusReport",
    "Entry",
    "CacheStats",
    "RefreshItem",
    "RefreshReport",
    "PruneReport",
    "VerifyItem",
    "ForgetItem",
    "ImportReport",
    "DoctorReport",
    "CopiesUsage",
    "PreparedTask",
    "TaskInputError",
    "AssetCacheError",
    "SourceError",
    "SourceNotFound",
    "UnsupportedFormat",
    "InvalidImage",
    "SourceTooLarge",
    "ConfigurationError",
    "StoreError",
    "SchemaTooNew",
    "RemoteError",
    "AuthenticationError",
    "InsufficientCredits",
    "RateLimited",
    "ServerError",
    "ProtocolError",
    "Proxy",
    "RejectedInput",
    "UnknownImage",
    "RetryBudgetExhausted",
    "__version__",
}


def test_all_is_pinned():
    assert set(assetcache.__all__) == EXPECTED
    assert len(assetcache.__all__) == len(set(assetcache.__all__))


def test_every_public_name_resolves():
    for name in assetcache.__all__:
        assert getattr(assetcache, name) is not None, name


def test_errors_share_one_base():
    for name in assetcache.__all__:
        obj = getattr(assetcache, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, assetcache.AssetCacheError), name


def test_import_is_light():
    code = (
        "import sys, assetcache; "
        "print(sorted(m for m in ('httpx', 'sqlite3', 'sqlite_utils', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
