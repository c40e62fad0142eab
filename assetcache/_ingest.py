"""Source -> prepared item: stat, read, hash, validate, fit. Blocking; no network.

:class:`Ingest` turns anything a caller may pass (a path, bytes, a URL, a
file object, a PIL image; see ``_sources``) into a :class:`Prepared` item:
its key (namespace, content hash, variant), size, format and a payload maker
for the upload. A path whose stat data is known and not racily clean is not
read at all (git's rule, see ``_hashing``).

:func:`read_file` is the one file reader: resolve, ``verify`` and ``forget``
all hash a file through it, so a file that changes while it is read, a FIFO
swapped in after the stat, or a permission error mean the same everywhere::

    >>> read_file("photo.png", "photo.png").digest          # doctest: +SKIP
    '9f2c...'
"""

from __future__ import annotations

import io
import logging
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from . import _hashing, _transform
from ._errors import (
    AssetCacheError,
    InvalidImage,
    SourceError,
    SourceNotFound,
    SourceTooLarge,
    UnsupportedFormat,
)
from ._formats import DECLARED, MEDIA_TYPES, FormatCheck
from ._pausepoints import pause_point
from ._protocol import Payload
from ._sources import Source, SourceLike
from ._storage._base import FileRow, Key

log = logging.getLogger("assetcache")

_UNREAD: Any = object()

#: Inputs up to this size are kept in memory after hashing (one read, no
#: TOCTOU window); larger files are streamed again at upload time and verified.
INLINE_LIMIT = 8 << 20


@dataclass(slots=True)
class Prepared:
    """A source that was classified, hashed and validated, ready to look up."""

    label: str
    key: Key
    size: int
    format: str
    payload: Callable[[], Payload]
    file_row: FileRow | None = None  # a new or refreshed stat row to record


@dataclass(slots=True)
class FileRead:
    """What :func:`read_file` found: the stat data (unchanged while reading), the
    hash, the format check (not finished: callers judge it) and, for small
    files, the bytes."""

    fingerprint: _hashing.Fingerprint
    digest: str
    size: int
    check: FormatCheck
    started_ns: int
    data: bytes | None


def read_file(path: str, label: str, *, limit: int | None = None, keep: bool = False) -> FileRead:
    """Hash the regular file at ``path`` once, checking it did not change meanwhile.

    Raises :class:`SourceError` (``SourceNotFound`` when it is gone) naming
    ``label``; with ``keep``, files up to :data:`INLINE_LIMIT` keep their bytes.
    What is not a regular file is named (a directory, a FIFO, ...), as
    :func:`stat_source` names it: a path may be read without a stat first.
    """
    started = _hashing.now_ns()
    try:
        # O_NONBLOCK: a FIFO (swapped in after a stat, or never stat'ed) must not
        # hang the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        stat_source(path, label)  # the precise reason where it has one: a socket, a link
        raise os_error(label, exc, path) from None
    before = os.fstat(fd)
    if not stat_mod.S_ISREG(before.st_mode):
        os.close(fd)  # before open(): it refuses a directory with its own error
        check_regular(label, before)
        raise SourceError(label, "is not a regular file")
    try:
        check_size(label, before.st_size, limit)
        check = FormatCheck()
        chunks: list[bytes] = []
        sinks: list[Callable[[memoryview], None]] = [check]
        if keep and before.st_size <= INLINE_LIMIT:
            sinks.append(lambda chunk: chunks.append(bytes(chunk)))
        try:
            digest, size = _hashing.hash_fd(fd, before.st_size, limit=limit, sinks=sinks)
        except OverflowError:
            raise SourceTooLarge(label, f"grew above the limit of {limit} bytes") from None
        except OSError as exc:
            raise os_error(label, exc) from None
        after = os.fstat(fd)
    finally:
        os.close(fd)
    fp = _hashing.Fingerprint.of(before)
    if fp != _hashing.Fingerprint.of(after) or size != before.st_size:
        raise SourceError(label, "changed while being read; try again once it is written")
    return FileRead(fp, digest, size, check, started, b"".join(chunks) if chunks else None)


def rehash(path: str, limit: int | None = None) -> FileRow | str | None:
    """A fresh stat row for ``path`` (``verify``, ``forget``); ``None`` if it is
    gone, the reason if it cannot be read. A file that is no longer a valid
    image gets ``format=None``: the next upload attempt says why.

    The same guards as an upload: no FIFO, device or other special file is
    opened (read), nothing above ``limit`` (the cache's ``max_bytes``) is read."""
    try:
        found = read_file(path, path, limit=limit)
    except SourceNotFound:
        return None
    except SourceError as exc:
        return exc.reason
    try:
        fmt: str | None = found.check.finish()
    except AssetCacheError:
        fmt = None
    return FileRow(path, *found.fingerprint.as_tuple(), found.digest, fmt, found.started_ns)


class Ingest:
    """Prepares sources for one cache: its namespace, transform, size limit and
    racy window, and its file index (the stat cache)."""

    def __init__(
        self,
        namespace: str,
        transform: _transform.Transform | None,
        max_bytes: int | None,
        racy_ns: int,
        get_file: Callable[[str], FileRow | None],
        get_files: Callable[[list[str]], dict[str, FileRow]] | None = None,
    ) -> None:
        self.namespace = namespace
        self.transform = transform
        self.max_bytes = max_bytes
        self.racy_ns = racy_ns
        self.get_file = get_file
        self.get_files = get_files
        # File rows read ahead for a batch's paths (index_files), each used once.
        self._index: dict[str, FileRow | None] = {}
        self._index_lock = threading.Lock()
        #: Warn (once) when an image above ``max_side`` goes unresized (no Pillow).
        self.warn_unresized = False
        self.max_side = _transform.MAX_SIDE
        # At most this many images decoded at once, whatever the upload
        # concurrency: decoding is CPU- and memory-bound.
        self.fit_gate = threading.BoundedSemaphore(min(4, os.cpu_count() or 1))

    def prepare(self, obj: SourceLike | Prepared) -> Prepared | AssetCacheError:
        """The prepared item of ``obj``, or the error that makes it unusable."""
        if isinstance(obj, Prepared):
            return obj  # checked by the caller already (refresh): not read twice
        try:
            return self._prepare_source(Source.coerce(obj))
        except AssetCacheError as exc:
            return exc

    def index_files(self, objs: Sequence[Any]) -> tuple[list[Any], list[str]]:
        """Read the file index for the paths among ``objs`` in one query (not one
        per file); their :meth:`prepare` then takes its row from here. Returns
        ``objs`` with the paths classified (:class:`Source`, not classified again
        by :meth:`prepare`) and the paths, for :meth:`drop_index` once prepared."""
        items = list(objs)
        if self.get_files is None:
            return items, []
        paths: list[str] = []
        for i, obj in enumerate(items):
            if not isinstance(obj, (str, os.PathLike)):
                continue
            try:
                src = Source.coerce(obj)
            except AssetCacheError:
                continue  # prepare() says why
            items[i] = src
            if src.kind == "path" and src.path:
                paths.append(src.path)
        if len(paths) < 2:
            return items, []
        try:
            rows = self.get_files(paths)
        except AssetCacheError:
            return items, []  # each file meets the error in a lookup of its own, and says so
        with self._index_lock:
            for path in paths:
                self._index[path] = rows.get(path)
        return items, paths

    def drop_index(self, paths: Sequence[str]) -> None:
        """Forget what :meth:`index_files` read and :meth:`prepare` did not use."""
        with self._index_lock:
            for path in paths:
                self._index.pop(path, None)

    def _known_file(self, path: str) -> FileRow | None:
        with self._index_lock:
            row = self._index.pop(path, _UNREAD)
        return self.get_file(path) if row is _UNREAD else row

    def _prepare_source(self, src: Source) -> Prepared:
        if src.kind == "path":
            return self._prepare_path(src)
        if src.kind == "url":
            return self._prepare_url(src)
        if src.kind == "file":
            return self._prepare_stream(src)
        return self._prepare_data(src)

    def prepare_or_raise(self, obj: SourceLike | Prepared) -> Prepared:
        prepared = self.prepare(obj)
        if isinstance(prepared, AssetCacheError):
            raise prepared
        return prepared

    def make_payloads(self, items: list[Prepared]) -> list[Payload | AssetCacheError]:
        """The payloads to send (resized where the transform says so), or their errors."""
        made: list[Payload | AssetCacheError] = []
        for prepared in items:
            with self.fit_gate:
                try:
                    made.append(prepared.payload())
                except AssetCacheError as exc:
                    made.append(exc)
        return made

    def _prepare_data(self, src: Source) -> Prepared:
        data = src.data
        assert data is not None
        if not data:
            raise SourceError(src.label, "empty input")
        check_size(src.label, len(data), self.max_bytes)
        check = FormatCheck()
        check(memoryview(data))
        fmt = finish(src.label, check)
        if src.declared_type:
            declared = DECLARED.get(src.declared_type)
            if declared != fmt:
                raise InvalidImage(
                    src.label,
                    f"declared {src.declared_type} but the data is {fmt.upper()}",
                )
        digest = _hashing.hash_bytes(data)
        payload = Payload(src.label, len(data), MEDIA_TYPES[fmt], data=data)
        variant, make = self._fit(fmt, check.width, check.height, payload)
        return Prepared(src.label, (self.namespace, digest, variant), len(data), fmt, make)

    def _prepare_url(self, src: Source) -> Prepared:
        assert src.url is not None
        digest = _hashing.hash_bytes(b"url\0" + src.url.encode())
        payload = Payload(src.label, 0, "", url=src.url)
        return Prepared(src.label, (self.namespace, digest, ""), 0, "url", lambda: payload)

    def _prepare_stream(self, src: Source) -> Prepared:
        import tempfile  # here: it pulls in shutil, lzma and bz2, slow for start-up

        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=INLINE_LIMIT)  # noqa: SIM115
        check = FormatCheck()
        try:

            def spool_sink(chunk: memoryview) -> None:
                spool.write(chunk)

            digest, size = _hashing.hash_stream(
                src.stream, limit=self.max_bytes, sinks=(check, spool_sink)
            )
        except OverflowError:
            spool.close()
            raise SourceTooLarge(
                src.label, f"more than the limit of {self.max_bytes} bytes"
            ) from None
        except OSError as exc:
            spool.close()
            raise SourceError(src.label, f"cannot be read: {exc.strerror or exc}") from None
        if size == 0:
            spool.close()
            raise SourceError(src.label, "empty input")
        fmt = finish(src.label, check)
        if size <= INLINE_LIMIT:
            spool.seek(0)
            data = spool.read()
            spool.close()
            payload = Payload(src.label, size, MEDIA_TYPES[fmt], data=data)
        else:

            def reopen() -> IO[bytes]:
                spool.seek(0)
                return cast(IO[bytes], _NoClose(spool))

            payload = Payload(src.label, size, MEDIA_TYPES[fmt], open=reopen, expected_hash=digest)
        variant, make = self._fit(fmt, check.width, check.height, payload)
        return Prepared(src.label, (self.namespace, digest, variant), size, fmt, make)

    def _prepare_path(self, src: Source) -> Prepared:
        path, label = src.path, src.label
        assert path is not None
        known = self._known_file(path)
        if known is None:
            # Not in the file index: a stat would prove nothing, and the read
            # checks what it would (and says why a file cannot be read).
            log.info("%s: hashing: not in the file index", label)
            return self._read_path(path, label)
        st = stat_source(path, label)
        check_size(label, st.st_size, self.max_bytes)
        fp = _hashing.Fingerprint.of(st)
        if (
            known.format is not None
            and (known.dev, known.ino, known.size, known.mtime_ns, known.ctime_ns) == fp.as_tuple()
            and not _hashing.is_racy(fp, known.hashed_at_ns, self.racy_ns)
            # A size never recorded (older rows) is learnt by reading the file once.
            and (
                self.transform is None
                or self.transform.variant_for(known.format, known.width, known.height) is not None
            )
        ):
            # Stat data proves the content: no read now; the upload (if any)
            # streams the file and verifies it still hashes the same.
            payload = Payload(
                label,
                fp.size,
                MEDIA_TYPES[known.format],
                open=lambda: open(path, "rb"),  # noqa: SIM115 - the payload closes it
                expected_hash=known.content_hash,
            )
            variant, make = self._fit(known.format, known.width, known.height, payload)
            return Prepared(
                label, (self.namespace, known.content_hash, variant), fp.size, known.format, make
            )
        if log.isEnabledFor(logging.INFO):
            if (
                known.dev,
                known.ino,
                known.size,
                known.mtime_ns,
                known.ctime_ns,
            ) != fp.as_tuple():
                why = "changed since it was hashed (stat data differs)"
            elif _hashing.is_racy(fp, known.hashed_at_ns, self.racy_ns):
                why = "racily clean (modified too close to its last hash to trust stat data)"
            else:
                why = "its pixel size is not recorded yet"
            log.info("%s: hashing: %s", label, why)
        return self._read_path(path, label)

    def _read_path(self, path: str, label: str) -> Prepared:
        found = read_file(path, label, limit=self.max_bytes, keep=True)
        size, digest, check = found.size, found.digest, found.check
        if size == 0:
            raise SourceError(label, "empty file")
        pause_point("hashed")
        fmt = finish(label, check)
        # 0x0: size unreadable without decoding; such an image is sent as it is.
        width, height = check.width or 0, check.height or 0
        row = FileRow(
            path, *found.fingerprint.as_tuple(), digest, fmt, found.started_ns, width, height
        )
        if found.data is not None:
            payload = Payload(label, size, MEDIA_TYPES[fmt], data=found.data)
        else:
            payload = Payload(
                label,
                size,
                MEDIA_TYPES[fmt],
                open=lambda: open(path, "rb"),  # noqa: SIM115 - the payload closes it
                expected_hash=digest,
            )
        variant, make = self._fit(fmt, width, height, payload)
        return Prepared(label, (self.namespace, digest, variant), size, fmt, make, file_row=row)

    def _fit(
        self, fmt: str, width: int | None, height: int | None, payload: Payload
    ) -> tuple[str, Callable[[], Payload]]:
        """The key's variant and the payload maker: the original as it is, or the
        transform's output, made on first call (only an upload calls it)."""
        transform = self.transform
        if (
            transform is None
            and self.warn_unresized
            and max(width or 0, height or 0) > self.max_side
        ):
            _warn_unresized(payload.label, width or 0, height or 0, self.max_side)
        variant = transform.variant_for(fmt, width, height) if transform else ""
        if not variant or transform is None:
            return "", lambda: payload
        made: list[Payload] = []
        lock = threading.Lock()

        def make() -> Payload:
            with lock:
                if not made:
                    made.append(_fitted(transform, fmt, payload))
                return made[0]

        make.original = payload  # type: ignore[attr-defined]  # what local copies keep
        return variant, make


_unresized_warned = threading.Event()


def _warn_unresized(label: str, width: int, height: int, max_side: int) -> None:
    """Once per process: a big image goes whole because Pillow is missing."""
    if _unresized_warned.is_set():
        return
    _unresized_warned.set()
    log.warning(
        "%s is %dx%d px, above the server's %d px limit, and goes unresized because "
        "Pillow is not installed (install it: %s); further such images are not listed",
        label,
        width,
        height,
        max_side,
        _transform.INSTALL_HINT,
    )


def check_size(label: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise SourceTooLarge(label, f"{size} bytes is above the limit of {limit} bytes")


class _NoClose(io.BufferedIOBase):
    """A view of a spooled file that the payload may 'close' without closing it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, n: int | None = -1) -> bytes:
        return self._f.read(-1 if n is None else n)

    def close(self) -> None:
        pass


def _fitted(transform: _transform.Transform, fmt: str, payload: Payload) -> Payload:
    """What to send for ``payload`` under ``transform`` (blocking: reads and re-encodes)."""
    data = payload.data
    if data is None:
        assert payload.open is not None
        try:
            with payload.open() as stream:
                data = stream.read(payload.size + 1)
        except OSError as exc:
            raise SourceError(payload.label, f"cannot be read: {exc.strerror or exc}") from None
        if len(data) != payload.size or (
            payload.expected_hash is not None and _hashing.hash_bytes(data) != payload.expected_hash
        ):
            raise SourceError(payload.label, "changed since it was hashed; try again")
    out = transform.apply(data, fmt, payload.label)
    if out is None:
        if payload.data is not None:
            return payload
        return Payload(payload.label, len(data), payload.media_type, data=data)
    body, out_fmt = out
    return Payload(payload.label, len(body), MEDIA_TYPES[out_fmt], data=body)


def label_of(obj: Any) -> str:
    """How messages name ``obj``, even when it is unusable."""
    try:
        return Source.coerce(obj).label
    except AssetCacheError as exc:
        return getattr(exc, "source", "") or f"<{type(obj).__name__}>"


def finish(label: str, check: FormatCheck) -> str:
    try:
        return check.finish()
    except (UnsupportedFormat, InvalidImage) as exc:
        raise type(exc)(label, exc.reason) from None


def stat_source(path: str, label: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(label, exc, path) from None
    check_regular(label, st)
    return st


def check_regular(label: str, st: os.stat_result) -> None:
    """Raise, naming what it is, unless ``st`` is a regular file's."""
    if stat_mod.S_ISDIR(st.st_mode):
        raise SourceError(label, "is a directory, not a regular file")
    if not stat_mod.S_ISREG(st.st_mode):
        kind = (
            "FIFO"
            if stat_mod.S_ISFIFO(st.st_mode)
            else "socket"
            if stat_mod.S_ISSOCK(st.st_mode)
            else "device"
            if (stat_mod.S_ISCHR(st.st_mode) or stat_mod.S_ISBLK(st.st_mode))
            else "special file"
        )
        raise SourceError(label, f"is a {kind}, not a regular file")


def os_error(label: str, exc: OSError, path: str | None = None) -> SourceError:
    import errno

    if exc.errno == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return SourceNotFound(label, "is a dangling symlink (its target does not exist)")
        return SourceNotFound(label, "no such file")
    if exc.errno == errno.ELOOP:
        return SourceError(label, "is a symlink loop")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceError(label, "permission denied")
    if exc.errno == errno.EISDIR:
        return SourceError(label, "is a directory, not a regular file")
    if exc.errno == errno.ENAMETOOLONG:
        return SourceError(label, "file name too long")
    if exc.errno == errno.ENOTDIR:
        return SourceNotFound(label, "a parent of this path is not a directory")
    return SourceError(label, f"cannot be read: {exc.strerror or exc}")
