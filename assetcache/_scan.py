"""``status``: what the cache knows about files on disk, without uploading.

A folder is scanned as a merge of two streams sorted the same way (by path
bytes): the folder walked depth-first with each directory's entries sorted,
and the stat cache's rows under the folder, read in keyset pages of one
indexed range scan already joined to their asset rows. So a folder costs one
``stat`` per file and one query per few thousand files, never one per file,
and the results come in path order, each missing file in its place. Only
racily-clean files (see ``_hashing``) are read, exactly as git re-reads them.

A big folder is split in two at one of its cached paths: a helper process
scans the upper part on the other core while this one scans the lower part
and hands its results out. The helper is a fresh interpreter with its own
read-only SQLite connection (never a fork: that is unsafe in a threaded
program and with open SQLite handles); if it cannot start or fails, this
process scans that part itself.

>>> for st in scan(engine, ["photos"]):          # doctest: +SKIP
...     print(st.state, st.path)
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
import stat as stat_mod
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from . import _hashing, _policy
from ._store import SQLiteStore

if TYPE_CHECKING:
    import subprocess

    from ._cache import _Engine

#: The states a file can be in, in the order a report lists them.
STATES = ("fresh", "expiring", "expired", "changed", "new", "missing")

#: A helper process pays off from about this many cached files below a folder
#: (it takes ~50 ms to start; a file takes ~5-10 us to scan).
PARALLEL_MIN = 20_000
#: Share of a split folder the helper scans (measured best on 2 cores). It
#: starts late and this process also unpacks the helper's results, but this
#: process keeps a little more than half all the same.
HELPER_SHARE = 0.45
#: Rows per keyset page: large enough that queries are few, small enough that
#: no cursor stays open while results are handed out.
PAGE_ROWS = 4096

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_SEP = os.sep.encode()
_AFTER_SEP = bytes([_SEP[0] + 1])  # the byte after the separator: "0" after "/"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_STAT_AT = os.stat in os.supports_dir_fd
_LABELS = {"fresh": "fresh", "expiring": "expiring", "stale": "expired", "expired": "expired"}

#: (dev, ino, size, mtime_ns, ctime_ns), as stored in the files table.
Sig = tuple[int, int, int, int, int]

_COUNT_SQL = "SELECT count(*) FROM files WHERE path >= ? AND path < ?"
_NTH_SQL = "SELECT path FROM files WHERE path >= ? AND path < ? ORDER BY path LIMIT 1 OFFSET ?"


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


@dataclass(frozen=True, slots=True)
class _Job:
    """What a scan of one path range needs; plain data, so the helper can get it."""

    db_path: str
    namespace: str
    variant: str
    max_side: int
    racy_ns: int
    policy: tuple[float, float, float, float]
    now: float

    @classmethod
    def of(cls, engine: _Engine) -> _Job:
        p = engine.policy
        return cls(engine.store.path, engine.namespace, engine.fit_variant, engine.max_side,
                   engine.racy_ns, (p.retention, p.margin, p.touch_every, p.expiring_soon),
                   engine.clock())

    def pages(self, read: Callable[..., list[Any]], lo: bytes, hi: bytes,
              ) -> Iterator[tuple[Any, ...]]:
        """File rows joined to their assets, ``lo <= path < hi`` in path order, a page at a time."""
        while True:
            sql, params = SQLiteStore.scan_query(self.namespace, self.variant, self.max_side,
                                                 lo, hi, PAGE_ROWS)
            rows = read(sql, params)
            yield from rows
            if len(rows) < PAGE_ROWS:
                return
            lo = rows[-1][0] + b"\0"  # the smallest key after the last one read

    def results(self, files: Iterable[tuple[bytes, Sig]], rows: Iterator[tuple[Any, ...]],
                make: Callable[..., Any]) -> Iterator[Any]:
        """Join the walk and the rows, both sorted by path, into ``make(path, state,
        uuid, hash, expires_at, time_left)`` for each file, in path order."""
        racy_ns, now = self.racy_ns, self.now
        policy = _policy.Policy(*self.policy)
        timings: dict[float, tuple[str, float, float]] = {}
        encoding, errors = _FS_ENCODING, _FS_ERRORS
        row = next(rows, None)
        for key, sig in files:
            while row is not None and row[0] < key:
                yield make(row[0].decode(encoding, errors), "missing", None, row[7], None, None)
                row = next(rows, None)
            path = key.decode(encoding, errors)
            if row is None or row[0] != key:
                yield make(path, "new", None, None, None, None)
                continue
            known, row = row, next(rows, None)
            digest = known[7]
            if sig != known[1:6]:
                yield make(path, "changed", None, digest, None, None)
                continue
            if max(known[4], known[5]) + racy_ns > known[6]:
                # Racily clean: equal stat data proves nothing, the content decides.
                try:
                    same = _hashing.hash_file(key)[0] == digest
                except OSError:
                    yield make(path, "missing", None, digest, None, None)
                    continue
                if not same:
                    yield make(path, "changed", None, digest, None, None)
                    continue
            last_used = known[9]
            if last_used is None:
                yield make(path, "new", None, digest, None, None)
                continue
            timing = timings.get(last_used)
            if timing is None:  # files uploaded in one batch share it: compute once
                timing = timings[last_used] = (
                    _LABELS[_policy.state(policy, last_used, now)],
                    _policy.expires_at(policy, last_used),
                    _policy.serve_until(policy, last_used) - now,
                )
            yield make(path, timing[0], known[8], digest, timing[1], timing[2])
        while row is not None:
            yield make(row[0].decode(encoding, errors), "missing", None, row[7], None, None)
            row = next(rows, None)


def _pack(*fields: Any) -> tuple[Any, ...]:
    return fields


def scan(engine: _Engine, paths: Iterable[str]) -> Iterator[FileStatus]:
    """Statuses of the files named (folders: every file below them, in path order)."""
    job = _Job.of(engine)
    read = engine.store.read
    for raw in paths:
        top = os.path.abspath(raw)
        if os.path.isdir(top):
            results: Iterable[FileStatus] = _scan_folder(engine, job, os.fsencode(top))
        else:
            key = os.fsencode(top)
            try:
                st = os.stat(key)
                sig: Sig | None = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns) if stat_mod.S_ISREG(st.st_mode) else None
            except (OSError, ValueError):
                sig = None
            rows = list(job.pages(read, key, key + b"\0"))
            if sig is None and not rows:
                yield FileStatus(top, "missing")
                continue
            results = job.results([(key, sig)] if sig is not None else [], iter(rows), FileStatus)
        yield from results


# -- one folder -----------------------------------------------------------------

def _scan_folder(engine: _Engine, job: _Job, top: bytes) -> Iterator[FileStatus]:
    prefix = top if top.endswith(_SEP) else top + _SEP
    lo, hi = prefix, prefix[:-1] + _AFTER_SEP  # every path below the folder, nothing else
    read = engine.store.read
    mid = hi
    helper = None
    if (os.cpu_count() or 1) > 1:
        (count,), = read(_COUNT_SQL, (lo, hi), "count tracked files")
        if count >= PARALLEL_MIN:
            (mid,), = read(_NTH_SQL, (lo, hi, int(count * (1 - HELPER_SHARE))), "split a scan")
            helper = _Helper.start(job, prefix, mid, hi)
            if helper is None:
                mid = hi
    try:
        yield from job.results(_walk(prefix, lo, mid), job.pages(read, lo, mid), FileStatus)
        if mid != hi:
            upper = helper.results() if helper is not None else None
            if upper is None:  # the helper failed: do its share here
                yield from job.results(_walk(prefix, mid, hi), job.pages(read, mid, hi),
                                       FileStatus)
            else:
                for fields in upper:
                    yield FileStatus(*fields)
    finally:
        if helper is not None:
            helper.close()


def _walk(prefix: bytes, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, Sig]]:
    """Regular files (symlinks followed) below ``prefix`` with ``lo <= path < hi``,
    in path-byte order, each with its stat signature.

    Within a directory a subdirectory sorts as ``name/``, which makes the
    depth-first order equal to the byte order of whole paths (the order of the
    files table), so the walk and the rows can be merged without sorting.
    """
    stack = [iter(_listing(prefix, lo, hi))]
    while stack:
        for key, sig in stack[-1]:
            if sig is None:
                stack.append(iter(_listing(key, lo, hi)))
                break
            yield key, sig
        else:
            stack.pop()


def _listing(prefix: bytes, lo: bytes, hi: bytes) -> list[tuple[bytes, Sig | None]]:
    """One directory's files (stat'ed) and subdirectories (``key/``, no signature), sorted."""
    out: list[tuple[bytes, Sig | None]] = []
    try:
        names = os.listdir(prefix)
    except OSError:
        return out  # unreadable or vanished: like git, report what can be seen
    fd = None
    if _STAT_AT:
        # Statting by name relative to the open directory spares the kernel the
        # walk down the whole path for every file.
        with contextlib.suppress(OSError):
            fd = os.open(prefix, _DIR_FLAGS)
    stat, is_reg, is_dir = os.stat, stat_mod.S_ISREG, stat_mod.S_ISDIR
    try:
        for name in names:
            key = prefix + name
            # Out of range both as a file and as a folder: not ours to stat.
            if not lo <= key < hi and not (key + _SEP < hi and key + _AFTER_SEP > lo):
                continue
            try:
                # Every entry is stat'ed anyway (following symlinks, as uploads
                # do), so the mode tells files from folders: no readdir types.
                st = stat(name, dir_fd=fd) if fd is not None else stat(key)
            except (OSError, ValueError):
                continue  # vanished, dangling symlink, permission: not a file we can judge
            mode = st.st_mode
            if is_reg(mode):
                if lo <= key < hi:
                    out.append((key, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                      st.st_ctime_ns)))
            elif is_dir(mode) and not os.path.islink(key):  # symlinked folders: not walked
                key += _SEP
                if key < hi and key[:-1] + _AFTER_SEP > lo:
                    out.append((key, None))
    finally:
        if fd is not None:
            os.close(fd)
    out.sort()
    return out


# -- the helper process ------------------------------------------------------------

#: What the helper runs: read the job, put the parent's import path in place
#: (``-S`` skips site, which saves a third of its start-up), scan, answer.
_BOOT = (
    "import sys, marshal; job = marshal.load(sys.stdin.buffer); sys.path[:0] = job[0]; "
    "from assetcache._scan import _helper_main; _helper_main(job[1:])"
)


class _Helper:
    """A child interpreter scanning ``mid <= path < hi`` of one folder."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, job: _Job, prefix: bytes, mid: bytes, hi: bytes) -> _Helper | None:
        if not sys.executable or getattr(sys, "frozen", False):
            return None
        import subprocess  # here: only big folders need it, and it costs start-up time

        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        message = ([package_root, *sys.path], *_job_fields(job), prefix, mid, hi)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _BOOT], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            )
        except OSError:
            return None
        helper = cls(proc)
        try:
            assert proc.stdin is not None
            proc.stdin.write(marshal.dumps(message))
            proc.stdin.close()
        except (OSError, ValueError):
            helper.close()
            return None
        return helper

    def results(self) -> list[tuple[Any, ...]] | None:
        """The helper's results, or ``None`` if it failed."""
        assert self.proc.stdout is not None
        try:
            data = self.proc.stdout.read()
            code = self.proc.wait()
        except OSError:
            return None
        if code != 0:
            return None
        try:
            return marshal.loads(data)  # type: ignore[no-any-return]
        except (EOFError, ValueError, TypeError):
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _job_fields(job: _Job) -> tuple[Any, ...]:
    return (job.db_path, job.namespace, job.variant, job.max_side, job.racy_ns, job.policy,
            job.now)


def _helper_main(message: tuple[Any, ...]) -> None:
    """The helper's side: scan a key range, write the results to stdout."""
    *fields, prefix, mid, hi = message
    job = _Job(*fields)
    conn = sqlite3.connect(job.db_path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = 1")  # it only reads; make that a guarantee
    conn.execute("PRAGMA mmap_size = 268435456")

    def read(sql: str, params: tuple[Any, ...]) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    results = list(job.results(_walk(prefix, mid, hi), job.pages(read, mid, hi), _pack))
    conn.close()
    out: IO[bytes] = sys.stdout.buffer
    out.write(marshal.dumps(results))
    out.flush()
