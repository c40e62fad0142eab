"""The settings of a cache, resolved once into one checked :class:`Config`.

The table of every setting (its default, environment variable and type) is
``_settings.SETTINGS``, which also layers the sources (flags > environment >
project > user > defaults); :func:`resolve` turns that into one frozen
:class:`Config`, checked. The cache classes and the CLI build the same object,
and nothing else reads the environment or the config files::

    >>> cfg = resolve(api_key="k", base_url="https://api.runware.ai/v1/", db=":memory:")
    >>> cfg.base_url, cfg.namespace.startswith("api.runware.ai/v1#")
    ('https://api.runware.ai/v1', True)

The namespace rule lives here too: entries are keyed by the API endpoint and
a one-way fingerprint of the key (:func:`account_fingerprint`), so two
accounts sharing a database never hand out each other's UUIDs.
"""

from __future__ import annotations

import base64
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import _policy
from ._errors import ConfigurationError

DEFAULT_API_URL = "https://api.runware.ai/v1"
#: Local copies are bounded to this many bytes by default (least recently used go first).
DEFAULT_COPIES_MAX = 1 << 30
#: Pixel bound of the longer side when the client resizes (see ``_transform``).
DEFAULT_MAX_SIDE = 2048
TASK_TYPES = ("imageUpload", "mediaStorage")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts per task, exponential backoff, per-request timeout.

    ``timeout`` bounds one whole request (connect, send, the entire answer).
    ``max_retry_after`` is the longest ``Retry-After`` honoured: a server asking
    for a longer wait fails the batch at once, naming its delay. After
    ``unreachable_after`` requests in a row could not reach the endpoint at
    all (refused, unresolvable, TLS failure), the following ones fail at once
    for ``unreachable_pause`` seconds instead of each retrying on its own.
    """

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0
    timeout: float = 60.0
    max_retry_after: float = 60.0
    unreachable_after: int = 3
    unreachable_pause: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """The settings in force, resolved and checked (see :func:`resolve`)."""

    api_key: str | None = field(repr=False)
    #: The API URL without any ``user:password@`` (those are in ``proxy_auth``).
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
    #: Where the retention in force comes from: configured, documented or assumed.
    retention_basis: str
    resize: bool | str
    max_side: int
    keep_copies: bool
    copies_dir: str | None
    copies_max_bytes: int
    #: ``Proxy-Authorization`` value from credentials in the API URL (never shown).
    proxy_auth: str | None = field(default=None, repr=False)
    #: What messages from the server must never echo: the key, the URL's password.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Serving slides the window (the caller passes every served UUID into a task).
    served_is_used: bool = False
    #: A database others own or can write is used on purpose.
    shared_db: bool = False
    #: The default location's folders, checked like the database's own (outermost first).
    default_folders: tuple[str, ...] = ()

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
            "retention_basis": self.retention_basis,
            "retention_note": retention_note(self.task_type, self.retention_basis),
            "margin_seconds": p.margin,
            "touch_every_seconds": p.touch_every,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "batch_bytes": self.batch_bytes,
            "max_bytes": self.max_bytes,
            "task_type": self.task_type,
            "racy_window_seconds": self.racy_ns / 1e9,
            "lease_ttl_seconds": self.lease_ttl,
            "served_is_used": self.served_is_used,
            "shared_db": self.shared_db,
            "future_tolerance_seconds": p.future_tolerance,
            "clock_skew_seconds": p.clock_skew,
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
    retention: timedelta | float | Mapping[str, timedelta | float] | None = None,
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
    served_is_used: bool | None = None,
    shared_db: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """One :class:`Config` from what was given, else the environment, else the default.

    ``environ`` defaults to ``os.environ`` (read here, once). Raises
    :class:`ConfigurationError` naming the setting that is wrong.
    """
    env = os.environ if environ is None else environ
    if upload_task is not None and task_type not in (None, upload_task):
        raise ConfigurationError(
            f"upload_task={upload_task!r} contradicts task_type={task_type!r}: give one"
        )
    # Flags and arguments, then the environment, then [tool.assetcache] in the
    # nearest pyproject.toml, then the user config file, then the defaults.
    from ._settings import layer_library

    # Retention may be given per upload task kind: the one in force is this kind's.
    per_kind = retention if isinstance(retention, Mapping) else None
    layers = layer_library(
        env,
        api_key=api_key,
        base_url=base_url or None,
        db_path=db if db is not None else db_path,
        local_db=local_db,
        host_id=host_id or None,
        namespace=namespace or None,
        racy_window=racy_window,
        batch_bytes=batch_bytes,
        retention=None if isinstance(retention, Mapping) else _seconds(retention),
        margin=_seconds(margin),
        touch_every=_seconds(touch_every),
        concurrency=concurrency,
        batch_size=batch_size,
        max_bytes=None if max_bytes is ... else max_bytes,
        lease_ttl=_seconds(lease_ttl),
        upload_task=upload_task or task_type,
        resize=resize,
        max_side=max_side,
        keep_copies=keep_copies,
        copies_dir=copies_dir,
        copies_max_bytes=copies_max_bytes,
        served_is_used=served_is_used,
        shared_db=shared_db,
    )
    layered = layers.kwargs()
    key = layered["api_key"] or None
    check_api_key(key)
    raw_url = str(layered["base_url"]).rstrip("/")
    # user:password@ in the URL: never stored, shown or logged (see split_url_credentials).
    url, proxy_auth = split_url_credentials(raw_url)
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"API URL must start with http:// or https://: {url}")
    kind = layered["upload_task"]
    if kind not in TASK_TYPES:
        raise ConfigurationError(f"task_type must be imageUpload or mediaStorage, not {kind!r}")
    kept: timedelta | float | Mapping[str, timedelta | float] | None = per_kind
    if per_kind is None and layers.source("retention") != "default":
        kept = layered["retention"]
    try:
        basis = _policy.retention_basis(kept, kind)
        policy = _policy.Policy.from_timedeltas(
            _policy.retention_for(kept, kind), layered["margin"], layered["touch_every"]
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    target = layered["db_path"]
    local = layered["local_db"]
    fleet_dir = None
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        fleet_dir = str(default_db_path(env).parent) if local is None else None
    copies = layered["copies_dir"]
    ttl = _duration("lease_ttl", layered["lease_ttl"])
    if not ttl > 0:
        raise ConfigurationError(f"lease_ttl must be a positive number of seconds, not {ttl!r}")
    racy = _duration("racy_window", layered["racy_window"])
    if racy < 0:
        raise ConfigurationError(f"racy_window must be 0 or more seconds, not {racy!r}")
    folders: tuple[str, ...] = ()
    if not env.get("ASSETCACHE_DB") and layers.source("db") in ("flag", "default"):
        default = default_db_path(env)
        if (
            target is None
            or (
                not (isinstance(target, str) and "://" in target)
                and os.path.abspath(os.fspath(target)) == os.path.abspath(default)
            )
            or fleet_dir is not None
        ):
            folders = default_folders(default)
    return Config(
        api_key=key,
        base_url=url,
        db=target if target is not None else default_db_path(env),
        local_db=os.fspath(local) if local is not None else None,
        host_id=layered["host_id"] or None,
        fleet_dir=fleet_dir,
        namespace=layered["namespace"] or namespace_for(url, key),
        policy=policy,
        retry=retry or RetryPolicy(),
        concurrency=max(1, layered["concurrency"]),
        batch_size=max(1, layered["batch_size"]),
        batch_bytes=layered["batch_bytes"],
        max_bytes=layered["max_bytes"] if max_bytes is ... else max_bytes,  # type: ignore[arg-type]
        racy_ns=int(racy * 1e9),
        lease_ttl=ttl,
        task_type=kind,
        retention_basis=basis,
        resize=layered["resize"],
        max_side=layered["max_side"],
        keep_copies=_flag(layered["keep_copies"]),
        copies_dir=os.fspath(copies) if copies is not None else None,
        copies_max_bytes=_size(layered["copies_max_bytes"]),
        proxy_auth=proxy_auth,
        secrets=tuple(x for x in (key, *url_secrets(raw_url)) if x and len(x) >= 4),
        served_is_used=_flag(layered["served_is_used"]),
        shared_db=_flag(layered["shared_db"]),
        default_folders=folders,
    )


def _duration(name: str, value: float | str | timedelta) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    from ._durations import parse_duration

    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return parse_duration(str(value))
    except ValueError:
        raise ConfigurationError(
            f"{name} must be a duration (e.g. 300 or 5m), not {value!r}"
        ) from None


def _seconds(value: timedelta | float | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def default_folders(db: str | os.PathLike[str]) -> tuple[str, ...]:
    """The default location's folders to check, outermost first: from the home
    folder (or, outside it, the cache root's nearest parents) down to the database's."""
    folder = Path(os.path.abspath(os.fspath(db))).parent
    home = Path(os.path.expanduser("~")).absolute()
    chain = [folder, *folder.parents]
    chain = chain[: chain.index(home) + 1] if home in chain else chain[:3]
    return tuple(str(p) for p in reversed(chain))


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


def retention_note(task_type: str, basis: str) -> str:
    """What the retention in force rests on, in words (``doctor`` prints it)."""
    if basis == "configured":
        return f"{task_type} retention as configured"
    if basis == "documented":
        return (
            f"{task_type}: documented by Runware (deleted 30 days after last use); "
            "mediaStorage's retention is an assumption (not documented)"
        )
    return (
        f"{task_type}: an assumption, not a documented fact (Runware documents no retention "
        "for mediaStorage; the imageUpload rule is assumed; set retention={...} per task kind)"
    )


def account_fingerprint(api_key: str) -> str:
    """A one-way, non-reversible id of an API key (never the key itself)."""
    data = b"assetcache/account/v1\0" + api_key.encode()
    try:  # CPython's own SHA-256: the same digest, without loading OpenSSL at start-up
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256(data).hexdigest()[:16]


def namespace_for(base_url: str, api_key: str | None) -> str:
    """The key prefix of entries: the endpoint and the account's fingerprint."""
    parts = urllib.parse.urlsplit(strip_url_credentials(base_url))
    endpoint = f"{parts.netloc.lower()}{parts.path.rstrip('/')}"
    return f"{endpoint}#{account_fingerprint(api_key) if api_key else 'no-key'}"


def default_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$ASSETCACHE_DB``, else ``<user cache dir>/assetcache/cache.db``."""
    env = (os.environ if environ is None else environ).get("ASSETCACHE_DB")
    if env:
        return Path(env).expanduser()
    if sys.platform.startswith("linux"):  # platformdirs' rule, without its import cost
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.expanduser("~/.cache")
        return Path(base) / "assetcache" / "cache.db"
    import platformdirs

    return Path(platformdirs.user_cache_dir("assetcache", appauthor=False)) / "cache.db"


# -- credentials: checked at once, kept out of everything stored or shown ------------------
#
# check_api_key refuses a key no HTTP header can carry (control characters,
# non-ASCII, surrounding whitespace) as a configuration error naming the
# position and kind of the character, never the key. split_url_credentials
# takes ``user:password@`` out of an API URL: the URL without them is what is
# stored (namespace), shown and logged; the pair is sent as
# ``Proxy-Authorization`` (Basic), so it never replaces the Bearer key.


def check_api_key(key: str | None, where: str = "RUNWARE_API_KEY") -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise ConfigurationError(f"the API key must be a string, not {type(key).__name__}")
    if key != key.strip():
        raise ConfigurationError(f"the API key has leading or trailing whitespace; check {where}")
    for position, ch in enumerate(key, 1):
        code = ord(ch)
        if 0x20 <= code < 0x7F:
            continue
        kind = (
            "a control character"
            if code < 0x20 or 0x7F <= code < 0xA0
            else ("a non-ASCII character")
        )
        raise ConfigurationError(
            f"the API key holds {kind} at position {position}, which no HTTP header "
            f"can carry; check {where}"
        )


def split_url_credentials(url: str) -> tuple[str, str | None]:
    """``(url without user:password@, Proxy-Authorization value or None)``."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    if not user and not password:
        return clean, None
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return clean, "Basic " + base64.b64encode(pair).decode("ascii")


def strip_url_credentials(url: str) -> str:
    return split_url_credentials(url)[0]


def url_secrets(url: str) -> list[str]:
    """The password of ``url`` (as written and decoded), for redaction."""
    netloc = urllib.parse.urlsplit(url).netloc
    if "@" not in netloc:
        return []
    userinfo = netloc.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [p for p in {password, urllib.parse.unquote(password)} if p]
