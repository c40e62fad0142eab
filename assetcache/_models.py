"""The nouns callers get back: resolutions, entries, reports, file statuses.

Plain data, no I/O. Each has ``as_dict()``: JSON-ready, times in ISO 8601
UTC, built by one helper (:func:`to_dict`) from the class's ``_SPEC``, so the
CLI prints ``as_dict()`` and never builds JSON by hand::

    >>> ImportReport(1, 0, 0, ((3, "not valid JSON"),)).as_dict()["errors"]
    [{'line': 3, 'reason': 'not valid JSON'}]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from ._errors import AssetCacheError

#: One output field: a name (the attribute of that name, as it is) or
#: ``(name, attribute, convert)``; ``attribute=None`` hands ``convert`` the object.
Spec = tuple[str | tuple[str, str | None, Callable[[Any], Any] | None], ...]


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2025-01-31T12:00:00Z``).

    >>> iso(0.0), iso(1738324800.9)
    ('1970-01-01T00:00:00Z', '2025-01-31T12:00:00Z')
    """
    if ts is None:
        return None
    # The date through datetime once per day seen; the time by arithmetic (a
    # listing of a million entries formats four million of these).
    day, second = divmod(math.floor(ts), 86400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%dT")
        if len(_DAYS) < 100_000:
            _DAYS[day] = prefix
    clock = _TIMES[second]
    if clock is None:
        minute, sec = divmod(second, 60)
        clock = _TIMES[second] = f"{minute // 60:02d}:{minute % 60:02d}:{sec:02d}Z"
    return prefix + clock


def _json(value: Any) -> str:
    """``value`` as ``json.JSONEncoder(default=str).encode`` writes it."""
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _encode(value)


def _json_time(ts: float | None) -> str:
    return "null" if ts is None else '"' + iso(ts) + '"'  # type: ignore[operator]


#: The C string encoder ``json.dumps`` uses (``ensure_ascii``): the same bytes.
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
_encode = json.JSONEncoder(default=str).encode

_DAYS: dict[int, str] = {}
#: "HH:MM:SSZ" of each second of a day, filled in as seen: formatting all
#: 86,400 up front cost ~80 ms at import, paid by every command (even ``status``).
_TIMES: list[str | None] = [None] * 86400


def to_dict(obj: Any, spec: Spec) -> dict[str, Any]:
    """``obj`` as a JSON-ready dict following ``spec`` (see :data:`Spec`)."""
    out: dict[str, Any] = {}
    for item in spec:
        if isinstance(item, str):
            out[item] = _plain(getattr(obj, item))
            continue
        name, attr, convert = item
        value = obj if attr is None else getattr(obj, attr)
        out[name] = convert(value) if convert is not None else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _fields(cls: type) -> Spec:
    """Every dataclass field, as it is."""
    return tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _error_text(err: AssetCacheError | None) -> str | None:
    if err is None:
        return None
    return str(getattr(err, "reason", None) or err)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What :meth:`AssetCache.resolve` found or did for one source.

    ``outcome`` is ``"hit"``, ``"uploaded"``, ``"reuploaded"`` or ``"failed"``;
    on failure ``uuid`` is ``None`` and ``error`` holds the exception.
    """

    source: str
    uuid: str | None
    content_hash: str | None
    outcome: str
    error: AssetCacheError | None = None
    size: int | None = None
    format: str | None = None
    expires_at: float | None = None
    bytes_sent: int = 0
    #: The ``imageURL`` (``mediaURL``) the upload answer carried, if any.
    url: str | None = None

    _SPEC: ClassVar[Spec] = (
        "source",
        "uuid",
        "outcome",
        ("hash", "content_hash", None),
        "size",
        "format",
        "bytes_sent",
        ("error", "error", _error_text),
    )

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached upload: content hash -> imageUUID, with its timing and known paths."""

    namespace: str
    content_hash: str
    variant: str
    uuid: str
    size: int
    format: str
    uploaded_at: float
    last_used_at: float
    expires_at: float
    serve_until: float
    state: str  # fresh | expiring | stale | expired | suspect
    paths: tuple[str, ...] = ()
    upload_count: int = 1
    bytes_sent: int = 0
    #: When the cache last handed the UUID out (``None``: never since it was
    #: recorded). Serving is not evidence of a use: ``last_used_at`` is the last
    #: evidence (upload, a task seen to succeed, use(), touch()); only it slides
    #: the window.
    last_served_at: float | None = None

    _SPEC: ClassVar[Spec] = (
        ("hash", "content_hash", None),
        "uuid",
        "size",
        "format",
        ("uploaded_at", "uploaded_at", iso),
        ("last_used_at", "last_used_at", iso),
        ("last_served_at", "last_served_at", iso),
        ("expires_at", "expires_at", iso),
        ("serve_until", "serve_until", iso),
        "state",
        ("paths", "paths", list),
        "upload_count",
        "namespace",
    )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.content_hash, self.variant)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields ``assetcache ls --json`` prints (times in ISO 8601 UTC)."""
        # _SPEC spelt out (same keys, same order): a listing builds one per entry.
        return {
            "hash": self.content_hash,
            "uuid": self.uuid,
            "size": self.size,
            "format": self.format,
            "uploaded_at": iso(self.uploaded_at),
            "last_used_at": iso(self.last_used_at),
            "last_served_at": iso(self.last_served_at),
            "expires_at": iso(self.expires_at),
            "serve_until": iso(self.serve_until),
            "state": self.state,
            "paths": list(self.paths),
            "upload_count": self.upload_count,
            "namespace": self.namespace,
        }

    def as_json(self) -> str:
        """``as_dict()`` as ``json.dumps`` writes it, without the dict: ``ls --json``
        writes one per entry (measured: half the time of the dict and its encoding)."""
        paths = self.paths
        return (
            f'{{"hash": {_json(self.content_hash)}, "uuid": {_json(self.uuid)}, '
            f'"size": {_json(self.size)}, "format": {_json(self.format)}, '
            f'"uploaded_at": {_json_time(self.uploaded_at)}, '
            f'"last_used_at": {_json_time(self.last_used_at)}, '
            f'"last_served_at": {_json_time(self.last_served_at)}, '
            f'"expires_at": {_json_time(self.expires_at)}, '
            f'"serve_until": {_json_time(self.serve_until)}, "state": {_json(self.state)}, '
            f'"paths": {"[" + ", ".join(map(_json_str, paths)) + "]" if paths else "[]"}, '
            f'"upload_count": {_json(self.upload_count)}, "namespace": {_json(self.namespace)}}}'
        )


@dataclass(frozen=True, slots=True)
class CopiesUsage:
    """What the copies folder holds: ``files`` copies, ``bytes`` in all."""

    path: str
    enabled: bool
    files: int
    bytes: int
    max_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, _fields(CopiesUsage))


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What ``stats()`` reports; counters include this process's."""

    entries: int
    bytes: int
    files: int
    hits: int
    misses: int
    uploads: int
    reuploads: int
    failures: int
    retries: int
    bytes_sent: int
    bytes_saved: int
    db_path: str
    db_bytes: int
    #: Local copies of uploaded bytes (``CopiesUsage.as_dict()``), on or off.
    copies: dict[str, Any] | None = None
    #: The newest evidence of a use on Runware (upload, task, use(), touch()) of any entry.
    last_used_at: float | None = None
    #: The last time the cache handed out any entry's UUID (not evidence of a use).
    last_served_at: float | None = None
    #: What ``assetcache proxy`` spared the upstream: ``uploads_answered``,
    #: ``bytes_not_sent``, ``inline_swapped``, ``healed`` (all 0 without a proxy).
    proxy: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = to_dict(self, _fields(CacheStats))
        out["last_used_at"] = iso(self.last_used_at)
        out["last_served_at"] = iso(self.last_served_at)
        return out


@dataclass(frozen=True, slots=True)
class RefreshItem:
    """One entry ``refresh()`` looked at.

    ``status``: ``renewed``, ``would-renew`` (dry run), ``content-gone`` (no
    known copy of the bytes is left) or ``failed`` (the upload failed).
    """

    content_hash: str
    old_uuid: str
    status: str
    uuid: str | None = None
    path: str | None = None
    reason: str | None = None
    expires_at: float | None = None

    _SPEC: ClassVar[Spec] = (
        ("hash", "content_hash", None),
        "old_uuid",
        "status",
        "uuid",
        "path",
        "reason",
        ("expires_at", "expires_at", iso),
    )

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


def _refresh_summary(report: RefreshReport) -> dict[str, int]:
    counts = {s: 0 for s in ("renewed", "would-renew", "content-gone", "failed")}
    for item in report.items:
        counts[item.status] += 1
    return counts


@dataclass(frozen=True, slots=True)
class RefreshReport:
    within: float
    dry_run: bool
    items: tuple[RefreshItem, ...]

    _SPEC: ClassVar[Spec] = (
        ("within_seconds", "within", None),
        "dry_run",
        "items",
        ("summary", None, _refresh_summary),
    )

    @property
    def failed(self) -> list[RefreshItem]:
        """Items that could not be refreshed (content gone or upload failed)."""
        return [i for i in self.items if i.status in ("content-gone", "failed")]

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


def _prune_summary(report: PruneReport) -> dict[str, int]:
    return {
        "entries": len(report.entries),
        "files": len(report.files),
        "bytes": sum(e.size for e in report.entries),
    }


@dataclass(frozen=True, slots=True)
class PruneReport:
    entries: tuple[Entry, ...]
    files: tuple[str, ...]
    leases: int
    dry_run: bool

    _SPEC: ClassVar[Spec] = (
        "dry_run",
        "entries",
        "files",
        "leases",
        ("summary", None, _prune_summary),
    )

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


@dataclass(frozen=True, slots=True)
class VerifyItem:
    """One tracked file re-hashed: ``ok``, ``changed``, ``missing``, ``unreadable`` or
    ``untracked`` (named, but the cache has never hashed it)."""

    path: str
    state: str
    old_hash: str | None = None
    new_hash: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, _fields(VerifyItem))


@dataclass(frozen=True, slots=True)
class ForgetItem:
    """What forgetting one path, hash or UUID removed (``error`` when nothing matched)."""

    item: str
    kind: str  # path | hash | uuid
    entries: tuple[Entry, ...] = ()
    files: tuple[str, ...] = ()
    error: str | None = None
    #: With ``remote=True``: ``(uuid, "deleted" | "already gone" | "failed: ...")``.
    remote: tuple[tuple[str, str], ...] = ()

    _SPEC: ClassVar[Spec] = (
        "item",
        "kind",
        ("entries", "entries", lambda es: [{"hash": e.content_hash, "uuid": e.uuid} for e in es]),
        ("files", "files", list),
        "error",
        ("remote", "remote", lambda rs: [{"uuid": u, "status": s} for u, s in rs]),
    )

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


@dataclass(frozen=True, slots=True)
class ImportReport:
    added: int
    replaced: int
    kept: int  # the database already held a fresher (or equally fresh) entry
    errors: tuple[tuple[int, str], ...]  # (line number, reason)

    _SPEC: ClassVar[Spec] = (
        "added",
        "replaced",
        "kept",
        ("errors", "errors", lambda es: [{"line": n, "reason": r} for n, r in es]),
    )

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


@dataclass(slots=True)
class DoctorReport:
    """The database's health; ``problems`` empty means healthy."""

    db_path: str
    exists: bool = False
    db_bytes: int = 0
    schema_version: int | None = None
    schema_supported: int = 0
    integrity: str = "unknown"
    entries: int | None = None
    files: int | None = None
    problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    lost: str | None = None
    account: str | None = None
    namespace: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    needs_rebuild: bool = False
    #: Server time minus this machine's (from an answer's Date header), or None
    #: when unknown; ``clock`` says it in words.
    clock_skew_seconds: float | None = None
    clock: str = "not checked"
    #: A fleet: the shared server (reachable, schema, leases) and this host's outbox.
    fleet: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        out = to_dict(self, (*_fields(DoctorReport), ("ok", "ok", None)))
        if self.fleet is None:
            del out["fleet"]  # a single database file: the report is as it always was
        return out


# Not frozen: a status run builds one per file, and a frozen dataclass's
# __init__ is five times slower (object.__setattr__ per field).
@dataclass(slots=True)
class FileStatus:
    """One file's standing. ``expires_at`` is when Runware deletes the upload
    if it is not used again (epoch seconds); ``time_left`` is seconds until the
    cache stops serving it (negative once past)."""

    path: str
    state: str
    uuid: str | None = None
    content_hash: str | None = None
    expires_at: float | None = None
    time_left: float | None = None
    #: The last evidence of a use on Runware (only it slides the window).
    last_used_at: float | None = None
    #: When the cache last handed the UUID out (``status_report`` only; not a use).
    last_served_at: float | None = None
    #: Why an ``invalid`` file can never upload (not an image, empty, too big, ...).
    reason: str | None = None

    _SPEC: ClassVar[Spec] = (
        "path",
        "state",
        "uuid",
        ("hash", "content_hash", None),
        ("expires_at", "expires_at", iso),
        ("time_left_seconds", "time_left", None),
        ("last_used_at", "last_used_at", iso),
        ("last_served_at", "last_served_at", iso),
        "reason",
    )

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self, self._SPEC)


@dataclass(slots=True)
class StatusReport:
    """What ``status_report()`` found: how many files are in each state
    (``counts``, every state present, in ``STATES`` order) and the files
    listed, in path order: every file but the fresh ones, unless asked for
    those too."""

    counts: dict[str, int]
    files: list[FileStatus]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def all_fresh(self) -> bool:
        """Whether every file that can upload is fresh (``invalid`` ones never can)."""
        return self.counts["fresh"] == self.total - self.counts.get("invalid", 0)

    def as_dict(self) -> dict[str, Any]:
        return {"files": [f.as_dict() for f in self.files], "summary": self.counts}
