"""Every setting of a cache: its default and its environment variable, resolved once.

:data:`SETTINGS` is the table (as python-diskcache's ``DEFAULT_SETTINGS``);
:func:`resolve` turns what a caller gave, the environment and the defaults
into one frozen :class:`Config`, checked. The cache classes and the CLI build
the same object, and nothing else reads the environment::

    >>> cfg = resolve(api_key="k", base_url="https://api.runware.ai/v1/", db=":memory:")
    >>> cfg.base_url, cfg.namespace.startswith("api.runware.ai/v1#")
    ('https://api.runware.ai/v1', True)

The namespace rule lives here too: entries are keyed by the API endpoint and
a one-way fingerprint of the key (:func:`account_fingerprint`), so two
accounts sharing a database never hand out each other's UUIDs.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import _hashing, _policy
from ._errors import ConfigurationError

DEFAULT_API_URL = "https://api.runware.ai/v1"
#: Local copies are bounded to this many bytes by default (least recently used go first).
DEFAULT_COPIES_MAX = 1 << 30
#: Pixel bound of the longer side when the client resizes (see ``_transform``).
DEFAULT_MAX_SIDE = 2048
TASK_TYPES = ("imageUpload", "mediaStorage")


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of :data:`SETTINGS`: the default and the environment variable."""

    default: Any
    env: str | None
    doc: str


#: Every setting, its default and its environment variable.
SETTINGS: dict[str, Setting] = {
    "api_key": Setting(None, "RUNWARE_API_KEY", "Runware API key (never stored or shown)"),
    "base_url": Setting(DEFAULT_API_URL, "ASSETCACHE_API_URL", "Runware API endpoint"),
    "db": Setting(None, "ASSETCACHE_DB", "database path, sqlite:///path or postgresql://..."),
    "local_db": Setting(None, "ASSETCACHE_LOCAL_DB", "a fleet host's own SQLite file"),
    "host_id": Setting(None, "ASSETCACHE_HOST_ID", "this host in a fleet's leases (host name)"),
    "namespace": Setting(None, None, "key prefix of entries (default: endpoint#account)"),
    "retention": Setting(30 * _policy.DAY, None, "Runware deletes an upload this long after use"),
    "margin": Setting(_policy.DAY, None, "stop serving this long before the deletion"),
    "touch_every": Setting(None, None, "persist a use at most this often (default 1 h)"),
    "concurrency": Setting(8, None, "requests in flight at once"),
    "batch_size": Setting(16, None, "tasks per request"),
    "batch_bytes": Setting(16 << 20, None, "body bytes per request"),
    "max_bytes": Setting(1 << 30, None, "largest input accepted"),
    "racy_window": Setting(_hashing.RACY_WINDOW_NS / 1e9, None, "git's racily-clean window"),
    "lease_ttl": Setting(300.0, None, "an upload lease ends after this long"),
    "task_type": Setting("imageUpload", "ASSETCACHE_UPLOAD_TASK", "imageUpload or mediaStorage"),
    "resize": Setting("auto", "ASSETCACHE_RESIZE", "resize before upload: auto, true, false"),
    "max_side": Setting(DEFAULT_MAX_SIDE, None, "longer pixel side when resizing"),
    "keep_copies": Setting(False, "ASSETCACHE_KEEP_COPIES", "keep a copy of uploaded bytes"),
    "copies_dir": Setting(None, "ASSETCACHE_COPIES_DIR", "where copies go (default <db>.copies)"),
    "copies_max_bytes": Setting(DEFAULT_COPIES_MAX, "ASSETCACHE_COPIES_MAX", "copies' bound"),
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts per task, exponential backoff, per-request timeout."""

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    """The settings in force, resolved and checked (see :func:`resolve`)."""

    api_key: str | None = field(repr=False)
    base_url: str
    db: str | os.PathLike[str]
    local_db: str | None
    #: This host's name in a fleet's lease owners (``None``: the host name).
    host_id: str | None
    #: A fleet's default folder for its local file (``None`` unless ``db`` is a server URL).
    fleet_dir: str | None
    namespace: str
    policy: _policy.Policy
    retry: RetryPolicy
    concurrency: int
    batch_size: int
    batch_bytes: int
    max_bytes: int | None
    racy_ns: int
    lease_ttl: float
    task_type: str
    resize: bool | str
    max_side: int
    keep_copies: bool
    copies_dir: str | None
    copies_max_bytes: int

    @property
    def account(self) -> str | None:
        """The API key's one-way fingerprint (``None`` without a key)."""
        return account_fingerprint(self.api_key) if self.api_key else None

    def describe(self) -> dict[str, Any]:
        """The settings as ``doctor`` and ``settings()`` show them (never the key)."""
        p = self.policy
        return {
            "api_url": self.base_url,
            "namespace": self.namespace,
            "retention_seconds": p.retention,
            "margin_seconds": p.margin,
            "touch_every_seconds": p.touch_every,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "batch_bytes": self.batch_bytes,
            "max_bytes": self.max_bytes,
            "task_type": self.task_type,
            "racy_window_seconds": self.racy_ns / 1e9,
            "lease_ttl_seconds": self.lease_ttl,
        }


def resolve(
    api_key: str | None = None,
    *,
    base_url: str | None = None,
    db: str | os.PathLike[str] | None = None,
    db_path: str | os.PathLike[str] | None = None,
    local_db: str | os.PathLike[str] | None = None,
    host_id: str | None = None,
    namespace: str | None = None,
    retention: timedelta | float | None = None,
    margin: timedelta | float | None = None,
    touch_every: timedelta | float | None = None,
    retry: RetryPolicy | None = None,
    concurrency: int | None = None,
    batch_size: int | None = None,
    batch_bytes: int | None = None,
    max_bytes: int | None | object = ...,
    racy_window: float | None = None,
    lease_ttl: float | None = None,
    task_type: str | None = None,
    upload_task: str | None = None,
    resize: bool | str | None = None,
    max_side: int | None = None,
    keep_copies: bool | None = None,
    copies_dir: str | os.PathLike[str] | None = None,
    copies_max_bytes: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """One :class:`Config` from what was given, else the environment, else the default.

    ``environ`` defaults to ``os.environ`` (read here, once). Raises
    :class:`ConfigurationError` naming the setting that is wrong.
    """
    env = os.environ if environ is None else environ

    def pick(name: str, given: Any) -> Any:
        if given is not None:
            return given
        row = SETTINGS[name]
        if row.env and env.get(row.env):
            return env[row.env]
        return row.default

    if upload_task is not None and task_type not in (None, upload_task):
        raise ConfigurationError(
            f"upload_task={upload_task!r} contradicts task_type={task_type!r}: give one"
        )
    key = pick("api_key", api_key) or None
    url = str(pick("base_url", base_url or None)).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"API URL must start with http:// or https://: {url}")
    try:
        policy = _policy.Policy.from_timedeltas(retention, margin, touch_every)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    kind = pick("task_type", upload_task or task_type)
    if kind not in TASK_TYPES:
        raise ConfigurationError(f"task_type must be imageUpload or mediaStorage, not {kind!r}")
    target = db if db is not None else db_path
    local = pick("local_db", local_db)
    fleet_dir = None
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        fleet_dir = str(default_db_path(env).parent) if local is None else None
    copies = pick("copies_dir", copies_dir)
    return Config(
        api_key=key,
        base_url=url,
        db=target if target is not None else default_db_path(env),
        local_db=os.fspath(local) if local is not None else None,
        host_id=pick("host_id", host_id) or None,
        fleet_dir=fleet_dir,
        namespace=namespace or namespace_for(url, key),
        policy=policy,
        retry=retry or RetryPolicy(),
        concurrency=max(1, pick("concurrency", concurrency)),
        batch_size=max(1, pick("batch_size", batch_size)),
        batch_bytes=pick("batch_bytes", batch_bytes),
        max_bytes=SETTINGS["max_bytes"].default if max_bytes is ... else max_bytes,  # type: ignore[arg-type]
        racy_ns=int(pick("racy_window", racy_window) * 1e9),
        lease_ttl=float(pick("lease_ttl", lease_ttl)),
        task_type=kind,
        resize=pick("resize", resize),
        max_side=pick("max_side", max_side),
        keep_copies=_flag(pick("keep_copies", keep_copies)),
        copies_dir=os.fspath(copies) if copies is not None else None,
        copies_max_bytes=_size(pick("copies_max_bytes", copies_max_bytes)),
    )


def _flag(value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _size(value: int | str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(
            f"copies_max_bytes must be a number of bytes, not {value!r}"
        ) from None


def account_fingerprint(api_key: str) -> str:
    """A one-way, non-reversible id of an API key (never the key itself)."""
    return hashlib.sha256(b"assetcache/account/v1\0" + api_key.encode()).hexdigest()[:16]


def namespace_for(base_url: str, api_key: str | None) -> str:
    """The key prefix of entries: the endpoint and the account's fingerprint."""
    parts = urllib.parse.urlsplit(base_url)
    endpoint = f"{parts.netloc.lower()}{parts.path.rstrip('/')}"
    return f"{endpoint}#{account_fingerprint(api_key) if api_key else 'no-key'}"


def default_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$ASSETCACHE_DB``, else ``<user cache dir>/assetcache/cache.db``."""
    env = (os.environ if environ is None else environ).get("ASSETCACHE_DB")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("assetcache", appauthor=False)) / "cache.db"
