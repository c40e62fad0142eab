"""Content hashes (xxh3-128) and stat fingerprints, with git's "racy clean" rule.

A file's stat fingerprint is ``(dev, ino, size, mtime_ns, ctime_ns)``. When it
matches the one recorded at hashing time, the file is assumed unchanged and is
not read again, except when the file was modified so close to the moment it
was hashed that a later rewrite could land in the same timestamp tick and leave
every stat field equal. git calls such entries "racily clean"; like git, we do
not trust them and re-read the content until the file has aged past the window.
"""

from __future__ import annotations

import io
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

#: Read size for hashing. Measured on page-cached files, one thread, readinto
#: into a reused buffer: 64 KiB 6.5 GB/s, 256 KiB 7.3, 1 MiB 10, 4 MiB 10, so
#: 1 MiB (``scripts/bench_hash.py``: 1.2-1.5x ``xxh128sum`` on two threads).
#: mmap would skip the copy (17 GB/s) but a file truncated while mapped kills
#: the process with SIGBUS, so files are read, not mapped.
CHUNK_SIZE = 1 << 20

#: Default width of the racy window. Linux stamps files with a coarse clock
#: (a few ms), other filesystems in whole seconds (HFS+) or two (FAT); two
#: seconds covers all of them at the cost of re-reading files written in the
#: last two seconds.
RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The stat data that must be unchanged for a file's hash to be reused."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


def is_racy(fp: Fingerprint, hashed_at_ns: int, window_ns: int = RACY_WINDOW_NS) -> bool:
    """True when the file changed within ``window_ns`` of being hashed.

    ``hashed_at_ns`` is the wall-clock time at which reading started; a write
    after that instant that kept size and timestamps equal is undetectable from
    stat data alone, so such an entry must be verified by content.
    """
    return max(fp.mtime_ns, fp.ctime_ns) + window_ns > hashed_at_ns


def now_ns() -> int:
    return time.time_ns()


class Hasher:
    """Incremental xxh3-128 hasher that also counts bytes.

    >>> h = Hasher(); h.update(b"abc"); h.hexdigest()
    '06b05ab6733a618578af5f94892f3950'
    """

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def hash_stream(
    stream: BinaryIO,
    *,
    limit: int | None = None,
    sinks: Iterable[Callable[[memoryview], None]] = (),
) -> tuple[str, int]:
    """Hash ``stream`` to its end in bounded memory: ``(hexdigest, size)``.

    Each chunk is also passed to every callable in ``sinks`` (format
    validation, spooling). Stops with :class:`OverflowError` once more than
    ``limit`` bytes were read. A regular file's size (one ``fstat``) sizes the
    read buffer: a small file is not read through a zeroed megabyte.
    """
    hasher = xxhash.xxh3_128()
    sinks = tuple(sinks)
    buf = bytearray(_buffer_size(stream))
    view = memoryview(buf)
    size = 0
    readinto = getattr(stream, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(buf)
            if not n:
                break
            chunk = view[:n]
        else:
            data = stream.read(CHUNK_SIZE)
            if not data:
                break
            n = len(data)
            chunk = memoryview(data)
        size += n
        if limit is not None and size > limit:
            raise OverflowError(size)
        hasher.update(chunk)
        for sink in sinks:
            sink(chunk)
    return hasher.hexdigest(), size


def hash_fd(
    fd: int,
    size: int,
    *,
    limit: int | None = None,
    sinks: Iterable[Callable[[memoryview], None]] = (),
) -> tuple[str, int]:
    """:func:`hash_stream` of the regular file open at ``fd`` (at its start)
    whose ``fstat`` gave ``size``.

    A file of up to :data:`CHUNK_SIZE` bytes is read in one ``read`` of its
    size, without the second read that finds its end: each system call hands
    the GIL over, and a batch reads thousands of small files on several
    threads. The caller's ``fstat`` after the read tells a file that grew
    meanwhile, as it does for any file; one that reads short is read again
    from its start, to its end.
    """
    sinks = tuple(sinks)
    if 0 < size <= CHUNK_SIZE and (limit is None or size <= limit):
        data = os.read(fd, size)
        if len(data) == size:
            chunk = memoryview(data)
            for sink in sinks:
                sink(chunk)
            return xxhash.xxh3_128_hexdigest(data), size
        os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        return hash_stream(f, limit=limit, sinks=sinks)


def _buffer_size(stream: BinaryIO) -> int:
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return CHUNK_SIZE
    if not stat_mod.S_ISREG(st.st_mode):
        return CHUNK_SIZE
    # One byte more than the file, so the read that finds its end is the second.
    return max(1, min(CHUNK_SIZE, st.st_size + 1))


def hash_file(path: str | bytes, limit: int | None = None) -> tuple[str, int]:
    """Hash a whole regular file: ``(hexdigest, size)``. No validation.

    A FIFO, device or other special file is never read (``OSError``), nor more
    than ``limit`` bytes (``OverflowError``)."""
    import errno

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fsdecode(path))
        return hash_fd(fd, st.st_size, limit=limit)
    finally:
        os.close(fd)
