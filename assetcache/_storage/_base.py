"""The storage contract: rows, keys, and what every store must do.

Two interfaces, because the fleet setup splits them: the *file index*
(absolute path -> stat fingerprint -> content hash) always describes this
machine and stays in a local SQLite file (:class:`FileIndex`); the *registry*
(namespace + content hash + variant -> imageUUID, last use, counts, upload
leases, usage counters) may live in a shared store (:class:`Registry`).
``_sqlite.SQLiteStore`` implements both; ``_postgres.PostgresRegistry`` and
``_fleet.FleetRegistry`` the registry. Nothing outside this package holds SQL.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Key = tuple[str, str, str]  # (namespace, content_hash, variant)
#: Orders of :meth:`Registry.select_assets`: by last use (soonest to expire
#: first), or by key (stable, for exports).
Order = Literal["last_use", "key"]


@dataclass(frozen=True, slots=True)
class AssetRow:
    namespace: str
    content_hash: str
    variant: str
    image_uuid: str
    size: int
    format: str
    uploaded_at: float
    last_used_at: float
    upload_count: int = 1
    hits: int = 0
    bytes_sent: int = 0

    @property
    def key(self) -> Key:
        return (self.namespace, self.content_hash, self.variant)


ASSET_COLUMNS = tuple(AssetRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class FileRow:
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    content_hash: str
    format: str | None
    hashed_at_ns: int
    # Pixel size of the content (``dimensions`` table; 0 when unreadable, None
    # when never recorded): decides the variant without reading the file again.
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """What an upload established, written in one transaction with its file rows."""

    namespace: str
    content_hash: str
    variant: str
    image_uuid: str
    size: int
    format: str
    now: float
    bytes_sent: int

    @property
    def key(self) -> Key:
        return (self.namespace, self.content_hash, self.variant)


class Registry(Protocol):
    """namespace + content hash + variant -> imageUUID; shared in a fleet.

    Leases: :meth:`claim` answers per key the fresh row, ``"claimed"`` or
    ``"held"``; :meth:`peek` the same read-only (``"free"`` for worth
    claiming). Rows are fresh when ``last_used_at > fresh_since``.
    """

    path: str

    def get_asset(self, key: Key) -> AssetRow | None: ...
    def get_assets(self, keys: Iterable[Key]) -> dict[Key, AssetRow]: ...
    def find_uuid(self, image_uuid: str) -> list[AssetRow]: ...
    def claim(
        self, keys: Sequence[Key], owner: str, now: float, ttl: float, fresh_since: float
    ) -> dict[Key, AssetRow | str]: ...
    def peek(
        self, keys: Sequence[Key], owner: str, now: float, fresh_since: float
    ) -> dict[Key, AssetRow | str]: ...
    def record_uploads(
        self, records: Sequence[UploadRecord], owner: str, files: Sequence[FileRow] = ()
    ) -> None: ...
    def release(self, keys: Iterable[Key], owner: str) -> None: ...
    def touch(self, key: Key, now: float) -> None: ...
    def expire_asset(self, key: Key, stamp: float, image_uuid: str | None = None) -> int: ...
    def merge_assets(self, rows: Iterable[AssetRow]) -> tuple[int, int, int]: ...
    def select_assets(
        self,
        *,
        namespace: str | None = None,
        used_after: float | None = None,
        used_before: float | None = None,
        order: Order = "last_use",
    ) -> list[AssetRow]: ...
    def asset_totals(self, *, namespace: str | None = None) -> tuple[int, int]: ...
    def prune_assets(self, rows: Iterable[AssetRow]) -> None: ...
    def delete_assets(self, keys: Iterable[Key]) -> int: ...
    def drop_expired_leases(self, now: float, dry_run: bool = False) -> int: ...
    def add_counters(self, namespace: str, counts: dict[str, int]) -> None: ...
    def counters(self, namespace: str | None = None) -> dict[str, int]: ...
    def local_rows(self, image_uuid: str) -> list[AssetRow]: ...
    def close(self) -> None: ...


class FileIndex(Protocol):
    """This machine's absolute path -> stat fingerprint -> content hash."""

    path: str

    def lookup_path(
        self, key: bytes, namespace: str, variant: str, max_side: int = 0
    ) -> tuple[Any, ...] | None: ...
    def get_file(self, path: str) -> FileRow | None: ...
    def files_under(self, prefix: str) -> Iterator[FileRow]: ...
    def tracked_files(self) -> list[FileRow]: ...
    def tracked_paths(self) -> list[str]: ...
    def count_files(self) -> int: ...
    def paths_of(self, hashes: Iterable[str]) -> dict[str, tuple[str, ...]]: ...
    def put_files(self, rows: Iterable[FileRow]) -> None: ...
    def delete_files(self, paths: Iterable[str]) -> int: ...
    def fix_files(self, fixes: Sequence[FileRow], drops: Sequence[str]) -> None: ...
    def close(self) -> None: ...


def _hostname() -> str:
    # os.uname() asks the kernel as socket.gethostname() does, without the
    # socket module's import cost on every start-up.
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def owner_id() -> str:
    """Identify this process for leases: ``host:pid:random``."""
    return f"{_hostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner provably died: same host, no such process."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _hostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- migrations --------------------------------------------------------------

_SIG = struct.Struct("<QQQqq")


def file_sig(dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> bytes:
    """The ``files.sig`` of a stat result: its five compared fields, packed.

    Fields beyond 64 bits (128-bit inode numbers exist) get a longer text form,
    which can never equal a packed one.
    """
    try:
        return _SIG.pack(dev, ino, size, mtime_ns, ctime_ns)
    except struct.error:
        return b"%d,%d,%d,%d,%d;" % (dev, ino, size, mtime_ns, ctime_ns) + b"\0" * 40


def row_sig(row: Sequence[Any]) -> bytes:
    """The ``files.sig`` of a ``(path, dev, ino, size, mtime_ns, ctime_ns, ...)`` row;
    empty, which matches no file, when a field is not an integer (salvaged rows)."""
    fields = row[1:6]
    if len(fields) == 5 and all(type(v) is int for v in fields):
        return file_sig(*fields)
    return b""


def path_key(path: str) -> bytes:
    """The files-table key of an absolute path (bytes: any filename is storable)."""
    return os.fsencode(path)
