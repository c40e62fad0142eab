"""Local copies of uploaded bytes, so renewal and recovery outlive the original file.

Off by default (``AssetCache(keep_copies=True)``). After an upload succeeds,
the original bytes (before any client-side resize: the cache key is the hash
of the original, so a copy re-enters the cache through the usual ``prepare``)
are written to a content-addressed folder, ``<db>.copies/<hash[:2]>/<hash>``
by default. Copies already on disk are read (verified) even in a run that
keeps no new ones::

    copies = Copies("/var/cache/assetcache/cache.db.copies", max_bytes=1 << 30)
    copies.keep(digest, payload)        # after an upload (temp file + rename)
    stream = copies.open(digest)        # verified against the hash, or None

The folder is bounded by ``max_bytes``; the least recently used copies go first
(a copy's mtime is its last use: written, kept again, or read back). Files are
0600 and folders 0700: they hold the user's images. Every read is checked
against the hash in the file name, so a damaged copy is dropped, never sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

from . import _hashing
from ._config import DEFAULT_COPIES_MAX as DEFAULT_MAX_BYTES
from ._models import CopiesUsage
from ._protocol import Payload

log = logging.getLogger("assetcache")

_NAME = re.compile(r"^[0-9a-f]{32}$")
#: Copies at most this large are verified in memory; larger ones spool to disk.
_SPOOL_LIMIT = 8 << 20


class Copies:
    """A content-addressed, size-bounded folder of original image bytes.

    >>> Copies("/tmp/c.db.copies").path_for("0" * 32)      # doctest: +SKIP
    '/tmp/c.db.copies/00/00000000000000000000000000000000'
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            from ._errors import ConfigurationError

            raise ConfigurationError(
                f"copies_max_bytes must be a number of bytes >= 0, not {max_bytes!r}"
            )
        self.folder = os.path.abspath(os.fspath(folder))
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # Bytes held, as this process last counted them (None: not counted yet).
        # Other processes write here too, so it is only a hint that decides
        # when to count again and evict; eviction itself always re-counts.
        self._estimate: int | None = None

    def path_for(self, digest: str) -> str:
        return os.path.join(self.folder, digest[:2], digest)

    # -- writing ------------------------------------------------------------------
    def keep(self, digest: str, payload: Payload) -> bool:
        """Store ``payload``'s bytes under ``digest`` unless present; True when held after.

        The bytes are hashed while written: a source that changed since it was
        uploaded is not kept under the old hash.
        """
        if payload.url is not None or not _NAME.match(digest):
            return False
        if payload.size > self.max_bytes:
            return False
        target = self.path_for(digest)
        if self._bump(target, payload.size):
            return True
        folder = os.path.dirname(target)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        import tempfile  # here: it pulls in shutil, lzma and bz2, slow for start-up

        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                if payload.data is not None:
                    got = _hashing.hash_bytes(payload.data)
                    out.write(payload.data)
                    size = len(payload.data)
                else:
                    assert payload.open is not None

                    def sink(chunk: memoryview) -> None:
                        out.write(chunk)

                    with payload.open() as stream:
                        got, size = _hashing.hash_stream(
                            cast(BinaryIO, stream), limit=payload.size, sinks=(sink,)
                        )
                out.flush()
                os.fsync(out.fileno())
            if got != digest or size != payload.size:
                log.info(
                    "not keeping a local copy of %s: it changed since it was uploaded",
                    payload.label,
                )
                os.unlink(tmp)
                return False
            os.replace(tmp, target)
            _mark_used(target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            if self._estimate is not None:
                self._estimate += size
            over = self._estimate is None or self._estimate > self.max_bytes
        if over:
            self.evict(keep=target)
        return True

    def _bump(self, path: str, size: int) -> bool:
        """Mark an existing copy as just used; False if there is none of that size."""
        try:
            if os.stat(path).st_size != size:
                return False
            _mark_used(path)
        except OSError:
            return False
        return True

    def evict(self, keep: str | None = None) -> int:
        """Drop least recently used copies until the folder fits; returns bytes freed."""
        with self._lock:
            found = sorted(self._scan(), key=lambda item: item[1])
            total = sum(size for _, _, size in found)
            freed = 0
            for path, _, size in found:
                if total - freed <= self.max_bytes:
                    break
                if path == keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    freed += size
            self._estimate = total - freed
            return freed

    # -- reading ------------------------------------------------------------------
    def open(self, digest: str) -> IO[bytes] | None:
        """The copy of ``digest``, verified, as a stream at its start; ``None`` if
        there is none (a damaged copy is removed)."""
        if not _NAME.match(digest):
            return None
        path = self.path_for(digest)
        import tempfile

        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_LIMIT)  # noqa: SIM115

        def sink(chunk: memoryview) -> None:
            spool.write(chunk)

        try:
            with open(path, "rb") as f:
                got, _ = _hashing.hash_stream(f, sinks=(sink,))
        except OSError:
            spool.close()
            return None
        if got != digest:
            spool.close()
            log.warning(
                "local copy %s is damaged (its bytes no longer match its name); removed", path
            )
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with contextlib.suppress(OSError):
            _mark_used(path)
        spool.seek(0)
        return spool

    def discard(self, digest: str) -> bool:
        """Remove the copy of ``digest``; False if there was none."""
        if not _NAME.match(digest):
            return False
        try:
            os.unlink(self.path_for(digest))
        except OSError:
            return False
        with self._lock:
            self._estimate = None
        return True

    def usage(self, enabled: bool = True) -> CopiesUsage:
        found = list(self._scan())
        return CopiesUsage(
            self.folder, enabled, len(found), sum(s for _, _, s in found), self.max_bytes
        )

    def _scan(self) -> Iterator[tuple[str, float, int]]:
        """``(path, last use, size)`` of every copy (temp files of live writers skipped,
        stale ones removed)."""
        try:
            shards = list(os.scandir(self.folder))
        except OSError:
            return
        stale = time.time() - 3600
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if _NAME.match(entry.name):
                    yield entry.path, st.st_mtime, st.st_size
                elif entry.name.startswith(".tmp-") and st.st_mtime < stale:
                    # Left by a process killed mid-write.
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def _mark_used(path: str) -> None:
    # Explicit, fine-grained stamps: the kernel's own file times tick only every
    # few milliseconds, too coarse to order copies written one after another.
    now = time.time_ns()
    os.utime(path, ns=(now, now))
