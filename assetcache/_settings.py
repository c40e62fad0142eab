"""Every setting, where it may come from, and which source wins.

Precedence, highest first: a command-line flag or an ``AssetCache(...)``
argument, the environment, the project table (``[tool.assetcache]`` of the
nearest ``pyproject.toml``), the user file (``config.toml`` in the user config
folder), the default. :func:`resolve` returns each setting's value with its
origin, which ``assetcache config`` prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._configfiles import ConfigFile, find_project_file, load_files, user_config_path
from ._durations import format_duration, parse_duration
from ._errors import ConfigurationError
from ._hashing import RACY_WINDOW_NS

__all__ = [
    "SETTINGS",
    "Resolved",
    "Setting",
    "Value",
    "layer_library",
    "resolve",
    "resolve_library",
]


#: Runware's endpoint (the same as ``_config.DEFAULT_API_URL``, which sits above
#: this module; a test holds them equal).
DEFAULT_API_URL = "https://api.runware.ai/v1"


@dataclass(frozen=True)
class Setting:
    name: str
    env: str | None
    kind: str  # str path db url bool int size duration choice secret
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    #: The ``AssetCache(...)`` keyword (None: the CLI's only).
    kwarg: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("db", "ASSETCACHE_DB", "db", None, "cache database: a path or postgresql://...",
            kwarg="db_path"),
    Setting("api_url", "ASSETCACHE_API_URL", "url", DEFAULT_API_URL, "Runware API endpoint",
            kwarg="base_url"),
    Setting("api_key", "RUNWARE_API_KEY", "secret", None,
            "Runware API key (never printed; from a user file only if mode 600)",
            kwarg="api_key"),
    Setting("api_key_file", "ASSETCACHE_API_KEY_FILE", "path", None,
            "file holding the API key"),
    Setting("upload_task", "ASSETCACHE_UPLOAD_TASK", "choice", "imageUpload",
            "upload task", ("imageUpload", "mediaStorage"), kwarg="upload_task"),
    Setting("keep_copies", "ASSETCACHE_KEEP_COPIES", "bool", False,
            "keep a local copy of each uploaded image", kwarg="keep_copies"),
    Setting("copies_dir", "ASSETCACHE_COPIES_DIR", "path", None,
            "where local copies go (default <db>.copies)", kwarg="copies_dir"),
    Setting("copies_max", "ASSETCACHE_COPIES_MAX", "size", 1 << 30,
            "size bound of the local copies", kwarg="copies_max_bytes"),
    Setting("local_db", "ASSETCACHE_LOCAL_DB", "path", None,
            "this host's SQLite file beside a PostgreSQL registry", kwarg="local_db"),
    Setting("host_id", "ASSETCACHE_HOST_ID", "str", None,
            "this host's name in a fleet's upload leases", kwarg="host_id"),
    Setting("namespace", None, "str", None,
            "key prefix of the entries (two accounts never share one)", kwarg="namespace"),
    Setting("resize", "ASSETCACHE_RESIZE", "choice", "auto",
            "resize images above max_side before upload (auto: when Pillow is installed)",
            ("auto", "true", "false"), kwarg="resize"),
    Setting("max_side", "ASSETCACHE_MAX_SIDE", "int", 2048,
            "longest side, in pixels, of an image sent", kwarg="max_side"),
    Setting("retention", "ASSETCACHE_RETENTION", "duration", 30 * 86400.0,
            "how long Runware keeps an upload after its last use", kwarg="retention"),
    Setting("margin", "ASSETCACHE_MARGIN", "duration", 86400.0,
            "stop serving a UUID this long before it would expire", kwarg="margin"),
    Setting("touch_every", "ASSETCACHE_TOUCH_EVERY", "duration", None,
            "record a use at most this often per entry", kwarg="touch_every"),
    Setting("concurrency", "ASSETCACHE_CONCURRENCY", "int", 8,
            "upload requests in flight at once", kwarg="concurrency"),
    Setting("batch_size", "ASSETCACHE_BATCH_SIZE", "int", 32,
            "images per upload request", kwarg="batch_size"),
    Setting("batch_bytes", None, "size", 16 << 20,
            "body bytes per upload request", kwarg="batch_bytes"),
    Setting("max_bytes", "ASSETCACHE_MAX_BYTES", "size", 1 << 30,
            "largest image accepted", kwarg="max_bytes"),
    Setting("racy_window", None, "duration", RACY_WINDOW_NS / 1e9,
            "a file changed this close to its hashing is hashed again (git's racy-clean rule)",
            kwarg="racy_window"),
    Setting("lease_ttl", "ASSETCACHE_LEASE_TTL", "duration", 300.0,
            "how long an upload lease holds before others may take it over",
            kwarg="lease_ttl"),
    Setting("served_is_used", None, "bool", False,
            "count serving a UUID as a use on Runware (only if every one goes to a task)",
            kwarg="served_is_used"),
    Setting("shared_db", "ASSETCACHE_SHARED_DB", "bool", False,
            "accept a database other users own or can write", kwarg="shared_db"),
)  # fmt: skip

BY_NAME = {s.name: s for s in SETTINGS}
#: Settings whose values are file paths (relative ones in a file: to its folder).
PATH_KEYS = tuple(s.name for s in SETTINGS if s.kind in ("path", "db"))

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


_UNSET = {
    "db": "(default location)",
    "copies_dir": "(beside the database: <db>.copies)",
    "touch_every": "(1h, or margin/4 if less)",
    "local_db": "(one file per server in the user cache folder)",
    "host_id": "(the host name)",
    "namespace": "(the endpoint and the account's fingerprint)",
}


def _bad(where: str, setting: Setting, value: Any, what: str) -> ConfigurationError:
    shown = "***" if setting.kind == "secret" else repr(value)
    return ConfigurationError(f"{where}: {setting.name} = {shown} is not {what}")


def parse(setting: Setting, value: Any, where: str) -> Any:
    """``value`` (a string from the environment, a TOML value, an argument) as the
    setting's type; a ConfigurationError names ``where`` otherwise."""
    kind = setting.kind
    if value is None:
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(where, setting, value, "true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise _bad(where, setting, value, "a whole number")
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise _bad(where, setting, value, "a whole number") from None
        if n < 1:
            raise _bad(where, setting, value, "a positive number")
        return n
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        m = _SIZE.fullmatch(str(value)) if isinstance(value, str) else None
        if not m:
            raise _bad(where, setting, value, "a size (e.g. 500M, 2G)")
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if kind == "duration":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # a negative one is refused where its meaning is known
        try:
            return parse_duration(str(value)) if isinstance(value, str) else None
        except ValueError:
            pass
        raise _bad(where, setting, value, "a duration (e.g. 30d, 12h, 90s)")
    if kind == "choice":
        text = str(value).strip() if not isinstance(value, bool) else str(value).lower()
        if "true" in setting.choices and text.lower() in _TRUE + _FALSE:
            text = "true" if text.lower() in _TRUE else "false"
        for choice in setting.choices:
            if text.lower() == choice.lower():
                return choice
        raise _bad(where, setting, value, "one of " + ", ".join(setting.choices))
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise _bad(where, setting, value, "a non-empty string")
    # A secret is kept as given: whitespace around a key is refused by name
    # (``_config.check_api_key``), never silently dropped.
    text = os.fspath(value)
    if kind == "url" and not text.startswith(("http://", "https://")):
        raise _bad(where, setting, value, "an http:// or https:// URL")
    return text


@dataclass(frozen=True)
class Value:
    value: Any
    #: ``flag``, ``env``, ``project``, ``user`` or ``default``.
    source: str
    #: Where exactly: ``--db``, ``env ASSETCACHE_DB``, ``user file PATH``, ``default``.
    origin: str


@dataclass(frozen=True)
class Resolved:
    values: Mapping[str, Value]
    user_file: str | None  # the user file's path (whether or not it exists)
    project_file: str | None  # the nearest pyproject.toml, if any
    files: tuple[ConfigFile, ...]

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def source(self, name: str) -> str:
        return self.values[name].source

    def kwargs(self, *, set_only: bool = False) -> dict[str, Any]:
        """``AssetCache(...)`` keywords for every library setting (``set_only``: only
        those some layer set, so the library still knows which ones are defaults)."""
        out = {}
        for s in SETTINGS:
            if s.kwarg is not None:
                if set_only and self.values[s.name].source == "default":
                    continue
                value = self.values[s.name].value
                if s.name == "resize" and isinstance(value, str) and value != "auto":
                    value = value == "true"
                out[s.kwarg] = value
        return out

    def display(self, name: str) -> str:
        """The value as ``assetcache config`` prints it (never a secret)."""
        s, v = BY_NAME[name], self.values[name].value
        if v is None:
            return _UNSET.get(name, "(none)")
        if s.kind == "secret":
            return "set"  # never the key (the CLI adds the account's fingerprint)
        if s.kind == "bool":
            return "true" if v else "false"
        if s.kind == "duration":
            return format_duration(v)
        if s.kind == "size":
            for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
                if v % size == 0:
                    return f"{v // size}{unit}"
            return str(v)
        return str(v)


def resolve(
    given: Mapping[str, Any] | None = None,
    *,
    given_origin: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Resolved:
    """Each setting's value and origin. ``given``: what the caller passed (flags,
    arguments), ``None`` values counting as not given; ``given_origin``: how to name
    each (default ``argument NAME``)."""
    env = os.environ if env is None else env
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = set(given) - BY_NAME.keys()
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    files = load_files(cwd=cwd, env=env, path_keys=PATH_KEYS)
    for f in files:
        extra = set(f.values) - BY_NAME.keys()
        if extra:
            raise ConfigurationError(
                f"{f.origin}: unknown setting(s) {', '.join(sorted(extra))} "
                f"(known: {', '.join(BY_NAME)})"
            )
    layers = files[::-1]  # project, then user
    values: dict[str, Value] = {}
    for s in SETTINGS:
        if s.name in given:
            origin = (given_origin or {}).get(s.name, f"argument {s.kwarg or s.name}")
            values[s.name] = Value(parse(s, given[s.name], origin), "flag", origin)
            continue
        raw = env.get(s.env) if s.env else None
        if raw is not None and raw != "":
            origin = f"env {s.env}"
            values[s.name] = Value(parse(s, raw, origin), "env", origin)
            continue
        for f in layers:
            if s.name in f.values:
                values[s.name] = Value(parse(s, f.values[s.name], f.origin), f.kind, f.origin)
                break
        else:
            values[s.name] = Value(s.default, "default", "default")
    user = user_config_path(env)
    project = (
        find_project_file(cwd) if env.get("ASSETCACHE_NO_PROJECT_CONFIG", "") in ("", "0") else None
    )
    return Resolved(
        values,
        str(user) if user is not None else None,
        str(project) if project is not None else None,
        tuple(files),
    )


def layer_library(env: Mapping[str, str] | None = None, **given: Any) -> Resolved:
    """:func:`resolve` for ``AssetCache(...)``'s keywords: each one left ``None``
    filled from the environment, the config files or its default."""
    by_kwarg = {s.kwarg: s for s in SETTINGS if s.kwarg is not None}
    names = {by_kwarg[k].name: v for k, v in given.items() if k in by_kwarg}
    origins = {by_kwarg[k].name: f"argument {k}=" for k in given if k in by_kwarg}
    return resolve(names, given_origin=origins, env=env)


def resolve_library(env: Mapping[str, str] | None = None, **given: Any) -> dict[str, Any]:
    """``AssetCache(...)``'s keywords, each one left ``None`` filled from the
    environment, the config files or its default."""
    return layer_library(env, **given).kwargs()
