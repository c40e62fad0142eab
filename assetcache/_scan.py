"""``status``: what the cache knows about files on disk, without uploading.

A folder is scanned as a merge of two streams sorted the same way (by path
bytes): the folder walked depth-first with each directory's entries sorted,
and the stat cache's rows under the folder, read in keyset pages of one
indexed range scan. So a folder costs one ``stat`` per file and one query per
few thousand files, never one per file, and the results come in path order,
each missing file in its place. Only racily-clean files (see ``_hashing``)
are read, exactly as git re-reads them.

The per-file work is kept to a minimum: each row carries its stat signature
packed in one blob (``files.sig``) and a racy flag computed by SQLite, so a
file is judged by one bytes comparison.

A big folder is split in two at one of its cached paths: a helper process
scans the upper part on the other core while this one scans the lower part
and hands its results out. The helper is a fresh interpreter with its own
read-only SQLite connection (never a fork: that is unsafe in a threaded
program and with open SQLite handles); if it cannot start or fails, this
process scans that part itself. A caller that knows a big scan is coming
(the ``status`` command) can :func:`prestart` the helper, so its start-up
overlaps this process's own.

>>> for st in scan(engine, ["photos"]):          # doctest: +SKIP
...     print(st.state, st.path)
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
import stat as stat_mod
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import starmap
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

    from ._cache import _Engine

#: The states a file can be in, in the order a report lists them.
STATES = ("fresh", "expiring", "expired", "changed", "new", "missing")

#: A helper process pays off from about this many cached files below a folder
#: (it takes ~50 ms to start; a file takes ~3-5 us to scan).
PARALLEL_MIN = 20_000
#: Share of a split folder the helper scans (measured on 2 cores): this process
#: also unpacks and hands out the helper's results, but the helper scans each
#: file a little slower (a cold process, a core shared with others): even.
HELPER_SHARE = 0.5
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
#: After the last row: its key sorts after every path (which start with a
#: separator or a drive letter, never with byte 0xff).
_END = (b"\xff",)
# ``_store.file_sig`` inlined: the same packing of the same five fields.
_PACK = struct.Struct("<QQQqq").pack

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


def _sig(st: os.stat_result) -> bytes:
    from ._store import file_sig  # only for fields beyond 64 bits

    return file_sig(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        return cls(
            engine.store.path,
            engine.namespace,
            engine.fit_variant,
            engine.max_side,
            engine.racy_ns,
            (p.retention, p.margin, p.touch_every, p.expiring_soon),
            engine.clock(),
        )

    def fields(self) -> tuple[Any, ...]:
        return (
            self.db_path,
            self.namespace,
            self.variant,
            self.max_side,
            self.racy_ns,
            self.policy,
            self.now,
        )

    def rows(
        self,
        read: Callable[..., list[Any]],
        lo: bytes,
        hi: bytes,
    ) -> Iterator[tuple[Any, ...]]:
        """``(path, sig, racy, hash, uuid, last_used)`` of the file rows with
        ``lo <= path < hi`` in path order, a page at a time."""
        from ._store import SQLiteStore

        while True:
            sql, params = SQLiteStore.scan_query(
                self.namespace, self.variant, self.max_side, self.racy_ns, lo, hi, PAGE_ROWS
            )
            page = read(sql, params)
            yield from page
            if len(page) < PAGE_ROWS:
                return
            lo = page[-1][0] + b"\0"  # the smallest key after the last one read

    def results(
        self,
        runs: Iterable[list[tuple[bytes, bytes]]],
        rows: Iterator[tuple[Any, ...]],
        make: Callable[..., Any],
    ) -> Iterator[Any]:
        """Join the walk (runs of ``(path, sig)``) and the rows, both sorted by path,
        into ``make(path, state, uuid, hash, expires_at, time_left)`` per file, in path order."""
        from . import _policy

        now = self.now
        policy = _policy.Policy(*self.policy)
        timings: dict[float, tuple[str, float, float]] = {}
        encoding, errors = _FS_ENCODING, _FS_ERRORS
        end = _END
        row = next(rows, end)
        for run in runs:
            for key, sig in run:
                if row[0] != key:
                    while row[0] < key:  # rows of files no longer there
                        yield make(row[0].decode(encoding, errors), "missing", None, row[3])
                        row = next(rows, end)
                    if row[0] != key:
                        yield make(key.decode(encoding, errors), "new")
                        continue
                known, row = row, next(rows, end)
                if sig != known[1]:
                    yield make(key.decode(encoding, errors), "changed", None, known[3])
                    continue
                if known[2]:
                    # Racily clean: equal stat data proves nothing, the content decides.
                    state = _racy_state(key, known[3])
                    if state:
                        yield make(key.decode(encoding, errors), state, None, known[3])
                        continue
                last_used = known[5]
                if last_used is None:
                    yield make(key.decode(encoding, errors), "new", None, known[3])
                    continue
                timing = timings.get(last_used)
                if timing is None:  # files uploaded in one batch share it: compute once
                    timing = timings[last_used] = (
                        _LABELS[_policy.state(policy, last_used, now)],
                        _policy.expires_at(policy, last_used),
                        _policy.serve_until(policy, last_used) - now,
                    )
                yield make(
                    key.decode(encoding, errors),
                    timing[0],
                    known[4],
                    known[3],
                    timing[1],
                    timing[2],
                )
        while row is not end:
            yield make(row[0].decode(encoding, errors), "missing", None, row[3])
            row = next(rows, end)


def _racy_state(key: bytes, digest: str) -> str:
    """``""`` when a racily-clean file still has ``digest``, else its state."""
    from . import _hashing

    try:
        same = _hashing.hash_file(key)[0] == digest
    except OSError:
        return "missing"
    return "" if same else "changed"


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
                sig = _sig(st) if stat_mod.S_ISREG(st.st_mode) else None
            except (OSError, ValueError):
                sig = None
            rows = list(job.rows(read, key, key + b"\0"))
            if sig is None and not rows:
                yield FileStatus(top, "missing")
                continue
            results = job.results([[(key, sig)]] if sig is not None else [], iter(rows), FileStatus)
        yield from results


# -- one folder -----------------------------------------------------------------


def _scan_folder(engine: _Engine, job: _Job, top: bytes) -> Iterator[FileStatus]:
    prefix = top if top.endswith(_SEP) else top + _SEP
    lo, hi = prefix, prefix[:-1] + _AFTER_SEP  # every path below the folder, nothing else
    read = engine.store.read
    mid = hi
    helper = None
    if (os.cpu_count() or 1) > 1:
        ((count,),) = read(_COUNT_SQL, (lo, hi), "count tracked files")
        if count >= PARALLEL_MIN:
            ((mid,),) = read(_NTH_SQL, (lo, hi, int(count * (1 - HELPER_SHARE))), "split a scan")
            helper = _Helper.start(job, prefix, mid, hi)
            if helper is None:
                mid = hi
    try:
        yield from job.results(_walk(prefix, lo, mid), job.rows(read, lo, mid), FileStatus)
        if mid != hi:
            upper = helper.results() if helper is not None else None
            if upper is None:  # the helper failed: do its share here
                yield from job.results(_walk(prefix, mid, hi), job.rows(read, mid, hi), FileStatus)
            else:
                yield from starmap(FileStatus, upper)
    finally:
        if helper is not None:
            helper.close()


def _walk(prefix: bytes, lo: bytes, hi: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
    """Regular files (symlinks followed) below ``prefix`` with ``lo <= path < hi``,
    in path-byte order, each with its packed stat signature, in runs (lists).

    Within a directory a subdirectory sorts as ``name/``, which makes the
    depth-first order equal to the byte order of whole paths (the order of the
    files table), so the walk and the rows can be merged without sorting.
    """
    entries, mixed = _listing(prefix, lo, hi)
    if not mixed:
        yield entries
        return
    stack = [iter(entries)]
    while stack:
        run: list[tuple[bytes, Any]] = []
        for key, sig in stack[-1]:
            if sig is None:
                if run:
                    yield run
                    run = []
                entries, mixed = _listing(key, lo, hi)
                if mixed:
                    stack.append(iter(entries))
                    break
                if entries:
                    yield entries
                continue
            run.append((key, sig))
        else:
            stack.pop()
        if run:
            yield run


def _listing(prefix: bytes, lo: bytes, hi: bytes) -> tuple[list[tuple[bytes, Any]], bool]:
    """One directory's files (with signatures) and subdirectories (``key/``,
    signature ``None``), sorted; and whether there are subdirectories."""
    out: list[tuple[bytes, Any]] = []
    try:
        names = os.listdir(prefix)
    except OSError:
        return out, False  # unreadable or vanished: like git, report what can be seen
    names.sort()
    fd = None
    if _STAT_AT:
        # Statting by name relative to the open directory spares the kernel the
        # walk down the whole path for every file.
        with contextlib.suppress(OSError):
            fd = os.open(prefix, _DIR_FLAGS)
    stat, pack, is_reg, is_dir = os.stat, _PACK, stat_mod.S_ISREG, stat_mod.S_ISDIR
    # Most directories lie wholly inside the range: no per-entry range checks.
    inside = lo <= prefix and prefix[:-1] + _AFTER_SEP <= hi
    mixed = False
    append = out.append
    try:
        for name in names:
            key = prefix + name
            # Out of range both as a file and as a folder: not ours to stat.
            if (
                not inside
                and not lo <= key < hi
                and not (key + _SEP < hi and key + _AFTER_SEP > lo)
            ):
                continue
            try:
                # Every entry is stat'ed anyway (following symlinks, as uploads
                # do), so the mode tells files from folders: no readdir types.
                st = stat(name, dir_fd=fd) if fd is not None else stat(key)
            except (OSError, ValueError):
                continue  # vanished, dangling symlink, permission: not a file we can judge
            mode = st.st_mode
            if is_reg(mode):
                if inside or lo <= key < hi:
                    try:
                        append(
                            (
                                key,
                                pack(
                                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
                                ),
                            )
                        )
                    except struct.error:
                        append((key, _sig(st)))
            elif is_dir(mode) and not os.path.islink(key):  # symlinked folders: not walked
                key += _SEP
                if inside or (key < hi and key[:-1] + _AFTER_SEP > lo):
                    append((key, None))
                    mixed = True
    finally:
        if fd is not None:
            os.close(fd)
    if mixed:
        out.sort()  # "b/" sorts after "b.png" but the name "b" before it
    return out, mixed


# -- the helper process ------------------------------------------------------------

#: What the helper runs: put the parent's import path in place (``-S`` skips
#: site, which saves a third of its start-up), load what the scan needs while
#: the parent is still busy, then read the job, scan and answer.
_BOOT = (
    "import sys, marshal; sys.path[:0] = marshal.load(sys.stdin.buffer); "
    "from assetcache._scan import _helper_main; _helper_main(sys.stdin.buffer)"
)

_prestarted: list[subprocess.Popen[bytes]] = []


def prestart() -> None:
    """Start a helper interpreter now, for a big scan coming soon.

    It loads its modules and waits for its job; an unused one ends when this
    process exits (its stdin closes). Does nothing on a single core.
    """
    if (os.cpu_count() or 1) > 1 and not _prestarted:
        proc = _spawn()
        if proc is not None:
            _prestarted.append(proc)


def discard_prestarted() -> None:
    """End a helper :func:`prestart` started that no scan took."""
    while _prestarted:
        _Helper(_prestarted.pop()).close()


def _spawn() -> subprocess.Popen[bytes] | None:
    if not sys.executable or getattr(sys, "frozen", False):
        return None
    import subprocess  # here: only big folders need it, and it costs start-up time

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(marshal.dumps([package_root, *sys.path]))
        proc.stdin.flush()
    except (OSError, ValueError):
        return None
    return proc


class _Helper:
    """A child interpreter scanning ``mid <= path < hi`` of one folder."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, job: _Job, prefix: bytes, mid: bytes, hi: bytes) -> _Helper | None:
        proc = _prestarted.pop() if _prestarted else _spawn()
        if proc is None:
            return None
        helper = cls(proc)
        try:
            assert proc.stdin is not None
            proc.stdin.write(marshal.dumps((job.fields(), prefix, mid, hi)))
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
            return marshal.loads(data)
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


def _helper_main(stdin: IO[bytes]) -> None:
    """The helper's side: wait for a job, scan its key range, write the results to stdout."""
    from . import _policy  # noqa: F401  (loaded before the job arrives)

    try:
        fields, prefix, mid, hi = marshal.load(stdin)
    except EOFError:
        return  # prestarted, never used
    job = _Job(*fields)
    conn = sqlite3.connect(job.db_path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = 1")  # it only reads; make that a guarantee
    conn.execute("PRAGMA mmap_size = 268435456")

    def read(sql: str, params: tuple[Any, ...]) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    results = list(job.results(_walk(prefix, mid, hi), job.rows(read, mid, hi), _pack))
    conn.close()
    out: IO[bytes] = sys.stdout.buffer
    out.write(marshal.dumps(results))
    out.flush()
