"""``status``: what the cache knows about files on disk, without uploading.

A folder is walked depth-first with each directory's entries sorted, which
yields its files in path-byte order, the order of the stat cache's rows. The
walk comes in tiles: a directory's files between two of its subdirectories,
each tile owning a key range, the ranges covering the folder without gap.
So a file costs one ``stat``, and only racily-clean files (see ``_hashing``)
are read, exactly as git re-reads them.

Two ways to judge a tile:

- one by one (:func:`scan`, every file listed): the tile's rows, joined to
  their assets, are merged with its files; each row carries its stat
  signature packed in one blob (``files.sig``) and a racy flag computed by
  SQLite, so a file is judged by one bytes comparison;
- in bulk (:func:`report`, fresh files only counted, as ``git status`` does):
  a tile whose files were all found fresh is remembered (``scan_marks``, see
  ``_storage._sqlite._m4``) with a digest of its files' paths and stat data and their
  oldest use. While the scan generation is the same (triggers bump it on any
  change to a file row and on any asset row going away or getting older),
  a tile whose files still match the digest is fresh until that oldest use
  ages: no row is read at all. Otherwise SQLite sums the tile's rows up in
  one row to hold against the walk, and the tile is remembered again or
  judged one by one.

Both cores walk a big folder. With the C listing (``_walk.c``, optional),
two threads list its directories ahead of the walk, smallest path first:
the C listing reads and stats a directory without the GIL, so they run
beside this thread, which judges what they found (:class:`_Lister`).
Without it (pure Python holds the GIL between its ``stat``s) the folder is
split in two: a helper process scans the upper part on the other core while
this one scans the lower part and hands its results out. The helper is a
fresh interpreter with its own read-only SQLite connection (never a fork:
that is unsafe in a threaded program and with open SQLite handles); if it
cannot start or fails, this process scans that part itself. A caller that
knows a big scan is coming (the ``status`` command) can :func:`prestart` it:
the threads begin listing (the walk needs no database) or the helper boots
while the cache opens.

>>> for st in scan(engine, ["photos"]):          # doctest: +SKIP
...     print(st.state, st.path)
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat as stat_mod
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO, TYPE_CHECKING, Any

from ._errors import AssetCacheError

if TYPE_CHECKING:
    import subprocess

    from ._engine import Engine
    from ._models import FileStatus, StatusReport

# ``_models`` (dataclasses, ~10 ms to load) is imported by the functions that
# build results: the helper process, which hands out plain tuples, never loads it.

#: The states a file can be in, in the order a report lists them.
STATES = ("fresh", "expiring", "expired", "changed", "new", "invalid", "missing")
#: Bytes read of a new file to tell whether it can ever upload (its signature).
SNIFF_BYTES = 64


def uploadable(path: str, max_bytes: int | None) -> str | None:
    """Why the file at ``path`` can never upload (``None``: it can, as far as its
    size and signature tell): it is not an image, empty, unreadable or too big."""
    from ._errors import UnsupportedFormat
    from ._formats import sniff

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file"
        if max_bytes is not None and st.st_size > max_bytes:
            return f"larger than the limit of {max_bytes} bytes"
        head = os.read(fd, SNIFF_BYTES)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    finally:
        os.close(fd)
    try:
        sniff(head)
    except UnsupportedFormat as exc:
        return exc.reason
    return None


def _judged(found: Any, max_bytes: int | None) -> Any:
    """A new file that can never upload is ``invalid`` (with the reason), not ``new``."""
    if type(found) is int or found.state != "new":
        return found
    from ._models import FileStatus

    reason = uploadable(found.path, max_bytes)
    return found if reason is None else FileStatus(found.path, "invalid", reason=reason)


#: A helper process pays off from about this many cached files below a folder
#: (it takes ~50 ms to start; a file takes ~3-5 us to scan).
PARALLEL_MIN = 20_000
#: Share of a split folder the helper scans (measured on 2 cores): a little
#: under half, as the helper starts a little after this process and runs cold.
HELPER_SHARE = 0.46
#: Rows per keyset page: large enough that queries are few, small enough that
#: no cursor stays open while results are handed out.
PAGE_ROWS = 4096

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_SEP = os.sep.encode()
_AFTER_SEP = bytes([_SEP[0] + 1])  # the byte after the separator: "0" after "/"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_STAT_AT = os.stat in os.supports_dir_fd
_LABELS = {
    "fresh": "fresh",
    "expiring": "expiring",
    "stale": "expired",
    "expired": "expired",
    "suspect": "expired",  # stamped in the future: the next use uploads again
}
#: After the last row: its key sorts after every path (which start with a
#: separator or a drive letter, never with byte 0xff).
_END = (b"\xff",)
# ``_storage._base.file_sig`` inlined: the same packing of the same five fields.
_SIG = struct.Struct("<QQQqq")
_PACK = _SIG.pack

# The C listing (``_walk.c``, built where a compiler is at hand) does what
# :func:`_listing` does for a directory wholly inside the range, for ~60% of
# its cost per file (measured: 50,000 files, 0.18 s of CPU in Python against
# 0.11 s, nearly all of it the kernel's ``stat``); ``ASSETCACHE_PURE_PYTHON=1``
# turns it off (the helper process inherits the choice).
_c_listing: Callable[..., tuple[Any, bool] | None] | None = None
#: A folder's files as the walk hands them on: ``(path, sig)`` pairs, or (a
#: folder without folders, from the C listing) packed as :func:`_joined` packs
#: them, with their number: ``(packed, files)``.
Run = list[tuple[bytes, bytes]] | tuple[bytes, int]
_SIG_BYTES = _SIG.size


def _unpacked(packed: bytes, files: int) -> list[tuple[bytes, bytes]]:
    """The ``(path, sig)`` pairs of a packed run (a folder that is not all fresh)."""
    out = []
    at = 0
    for _ in range(files):
        end = packed.index(b"\0", at + _SIG_BYTES)
        out.append((packed[at + _SIG_BYTES : end], packed[at : at + _SIG_BYTES]))
        at = end + 1
    return out


def _files(entries: Any) -> int:
    """How many entries a listing holds (packed or not)."""
    return entries[1] if isinstance(entries, tuple) else len(entries)


def _joined_py(run: list[tuple[bytes, bytes]]) -> bytes:
    """What a tile's digest is taken of: each file's ``sig + key + NUL``, in order
    (the format of ``_storage._scan.TILE_SQL``)."""
    return b"".join([sig + key + b"\0" for key, sig in run])


_joined: Callable[[list[tuple[bytes, bytes]]], bytes] = _joined_py
if not os.environ.get("ASSETCACHE_PURE_PYTHON"):
    with contextlib.suppress(ImportError):  # not built: the pure-Python listing does it all
        from ._walk import joined as _joined  # the same, in C: no two objects per file
        from ._walk import listing as _c_listing


def _sig(st: os.stat_result) -> bytes:
    from ._storage._base import file_sig  # only for fields beyond 64 bits

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
    def of(cls, engine: Engine) -> _Job:
        p = engine.policy
        return cls(
            engine.store.path,
            engine.namespace,
            engine.fit_variant,
            engine.max_side,
            engine.racy_ns,
            (p.retention, p.margin, p.touch_every, p.expiring_soon),
            engine.judge_now(),
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

    def pages(
        self, read: Callable[..., list[Any]], lo: bytes, hi: bytes, *, join: bool = True
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The file rows with ``lo <= path < hi`` in path order, a page (list) at a
        time: ``(path, sig, racy, hash, uuid, last_used)``, or with ``join=False``
        ``(path, sig, racy, hash, transformed)`` (no asset columns)."""
        from ._storage import _scan

        while True:
            sql, params = _scan.scan_query(
                self.namespace,
                self.variant,
                self.max_side,
                self.racy_ns,
                lo,
                hi,
                PAGE_ROWS,
                join=join,
            )
            page = read(sql, params)
            if page:
                yield page
            if len(page) < PAGE_ROWS:
                return
            lo = page[-1][0] + b"\0"  # the smallest key after the last one read

    def rows(
        self,
        read: Callable[..., list[Any]],
        lo: bytes,
        hi: bytes,
    ) -> Iterator[tuple[Any, ...]]:
        """``(path, sig, racy, hash, uuid, last_used)`` of the file rows with
        ``lo <= path < hi`` in path order."""
        return chain.from_iterable(self.pages(read, lo, hi))

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
                    last_used,
                )
        while row is not end:
            yield make(row[0].decode(encoding, errors), "missing", None, row[3])
            row = next(rows, end)

    @property
    def view(self) -> str:
        """Which assets the files map to (the variant and, with a transform, its size)."""
        return f"{self.variant}|{self.max_side}" if self.variant and self.max_side else self.variant

    def marks(
        self, read: Callable[..., list[Any]], gen: int, lo: bytes, hi: bytes
    ) -> list[tuple[bytes, bytes, bytes, float, int]]:
        """The remembered fresh ranges starting in ``[lo, hi)``, in path order:
        ``(lo, hi, digest, oldest_use, files)``."""
        from ._storage import _scan

        return read(_scan.MARKS_SQL, (self.namespace, self.view, lo, hi, gen))

    def survey(
        self,
        tiles: Iterable[tuple[bytes, bytes, Run]],
        read: Callable[..., list[Any]],
        marks: list[tuple[bytes, bytes, bytes, float, int]],
        found: list[tuple[bytes, bytes, bytes, float, int]],
        make: Callable[..., Any],
    ) -> Iterator[Any]:
        """:meth:`results` tile by tile (see :func:`_tiles`), except that a tile
        whose files are all fresh yields only their number (an ``int``).

        ``marks`` are the ranges remembered fresh as of the current generation
        (see ``_storage._sqlite._m4``): a tile whose files on disk still match its mark's
        digest costs no read at all. Otherwise SQLite sums up the tile's rows
        in one row; when their paths and stat data equal the folder's and none
        is racily clean, the rows are read with their assets, and all fresh
        makes a new mark (appended to ``found``). Anything else is judged file
        by file.
        """
        from xxhash import xxh3_128_digest

        from . import _policy
        from ._storage import _scan

        policy, now = _policy.Policy(*self.policy), self.now
        tile_sql, racy_ns = _scan.TILE_SQL, self.racy_ns
        known = {mark[0]: mark for mark in marks}
        for lo, hi, tile in tiles:
            if isinstance(tile, tuple):
                mine, count = tile
            else:
                mine, count = _joined(tile), len(tile)
            mark = known.get(lo)
            if (
                mark is not None
                and mark[1] == hi
                and mark[2] == xxh3_128_digest(mine)
                and _policy.state(policy, mark[3], now) == "fresh"
            ):
                yield count
                continue
            run = _unpacked(mine, count) if isinstance(tile, tuple) else tile
            ((got, racy),) = read(tile_sql, (racy_ns, lo, hi))
            if (got or b"") != mine or racy:
                yield from self.results([run], self.rows(read, lo, hi), make)
                continue
            if not run:  # nothing on disk, no row: remember that too
                found.append((lo, hi, xxh3_128_digest(mine), now, 0))
                yield 0
                continue
            rows = list(self.rows(read, lo, hi))
            uses = [row[5] for row in rows]
            if (
                None not in uses
                and _policy.state(policy, min(uses), now) == "fresh"
                and [(row[0], row[1]) for row in rows] == run
            ):
                found.append((lo, hi, xxh3_128_digest(mine), min(uses), len(run)))
                yield len(run)
                continue
            yield from self.results([run], iter(rows), make)


def _racy_state(key: bytes, digest: str) -> str:
    """``""`` when a racily-clean file still has ``digest``, else its state."""
    from . import _hashing

    try:
        same = _hashing.hash_file(key)[0] == digest
    except FileNotFoundError:
        return "missing"
    except OSError:  # unreadable, or no longer a regular file
        return "changed"
    return "" if same else "changed"


def _pack(*fields: Any) -> tuple[Any, ...]:
    return fields


def scan(engine: Engine, paths: Iterable[str]) -> Iterator[FileStatus]:
    """Statuses of the files named (folders: every file below them, in path order)."""
    limit = engine.max_bytes
    return (_judged(found, limit) for found in _statuses(engine, paths, survey=False))


def report(engine: Engine, paths: Iterable[str], *, fresh: bool = False) -> StatusReport:
    """A :class:`StatusReport` of the files named; fresh files listed only with ``fresh``.

    Without them a big folder costs much less: runs of unchanged files with
    fresh assets are only counted (see :meth:`_Job.survey`).
    """
    from ._models import StatusReport

    counts = dict.fromkeys(STATES, 0)
    files: list[FileStatus] = []
    limit = engine.max_bytes
    for found in _statuses(engine, paths, survey=not fresh):
        found = _judged(found, limit)
        if type(found) is int:
            counts["fresh"] += found
        else:
            counts[found.state] += 1
            if fresh or found.state != "fresh":
                files.append(found)
    _add_served(engine, files)
    return StatusReport(counts, files)


def _add_served(engine: Engine, files: list[FileStatus]) -> None:
    """When each listed file's upload was last handed out (not evidence of a use)."""
    hashes = {f.content_hash for f in files if f.uuid is not None and f.content_hash}
    if not hashes:
        return
    variants = dict.fromkeys((engine.variant, engine.fit_variant))
    served = engine.served_times((engine.namespace, h, v) for h in sorted(hashes) for v in variants)
    best: dict[str, float] = {}
    for (_, digest, _), when in served.items():
        best[digest] = max(best.get(digest, when), when)
    for f in files:
        if f.content_hash in best:
            f.last_served_at = best[f.content_hash]


def _statuses(engine: Engine, paths: Iterable[str], *, survey: bool) -> Iterator[Any]:
    """:func:`scan`; with ``survey``, also numbers of fresh files counted in bulk."""
    from ._models import FileStatus

    job = _Job.of(engine)
    read = engine.store.read
    for raw in paths:
        top = os.path.abspath(raw)
        if os.path.isdir(top):
            results: Iterable[Any] = _scan_folder(engine, job, os.fsencode(top), survey)
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


def _scan_folder(engine: Engine, job: _Job, top: bytes, survey: bool) -> Iterator[Any]:
    from ._models import FileStatus

    prefix = top if top.endswith(_SEP) else top + _SEP
    lo, hi = prefix, prefix[:-1] + _AFTER_SEP  # every path below the folder, nothing else
    store = engine.store
    read = store.read
    mid = hi
    helper = None
    lister = _Lister.take_prestarted(prefix)
    if lister is None and _Lister.usable():
        lister = _Lister(prefix)
    # Read before anything else: a mark found with the rows read after it is
    # stamped with it, so a change to the assets in between voids the mark.
    gen = _generation(read) if survey else None
    marks = job.marks(read, gen, lo, hi) if gen is not None else []
    if lister is None and (os.cpu_count() or 1) > 1:
        split = _split(read, lo, hi, marks)
        if split is not None:
            mid = split
            helper = _Helper.start(job, prefix, mid, hi, gen)
            if helper is None:
                mid = hi
    found: list[tuple[bytes, bytes, bytes, float, int]] = []
    try:
        yield from _judge(job, read, prefix, lo, mid, gen, marks, found, FileStatus, lister)
        if mid != hi:
            upper = helper.results() if helper is not None else None
            if upper is None:  # the helper failed: do its share here
                yield from _judge(job, read, prefix, mid, hi, gen, marks, found, FileStatus)
            else:
                results, theirs = upper if gen is not None else (upper, [])
                found += theirs
                yield from (x if type(x) is int else FileStatus(*x) for x in results)
    finally:
        if helper is not None:
            helper.close()
        if lister is not None:
            lister.close()
    if found and gen is not None:
        # Only a speed-up: a busy or read-only database just goes without.
        with contextlib.suppress(AssetCacheError):
            store.save_scan_marks(job.namespace, job.view, gen, found)


def _generation(read: Callable[..., list[Any]]) -> int | None:
    from ._storage import _scan

    rows = read(_scan.GEN_SQL, (), "read the scan generation")
    return int(rows[0][0]) if rows else None


def _split(
    read: Callable[..., list[Any]],
    lo: bytes,
    hi: bytes,
    marks: list[tuple[bytes, bytes, bytes, float, int]],
) -> bytes | None:
    """Where a helper process's share of ``[lo, hi)`` begins, or ``None`` when
    the range is too small to share. The remembered fresh ranges know their
    sizes (one small read); without them the files table is counted."""
    total = sum(mark[4] for mark in marks)
    if total >= PARALLEL_MIN:
        below = 0
        for mark in marks:
            if below >= total * (1 - HELPER_SHARE):
                return mark[0]
            below += mark[4]
    from ._storage import _scan

    ((count,),) = read(_scan.COUNT_SQL, (lo, hi), "count tracked files")
    if count < PARALLEL_MIN:
        return None
    ((mid,),) = read(_scan.NTH_SQL, (lo, hi, int(count * (1 - HELPER_SHARE))), "split a scan")
    return bytes(mid)


def _judge(
    job: _Job,
    read: Callable[..., list[Any]],
    prefix: bytes,
    lo: bytes,
    hi: bytes,
    gen: int | None,
    marks: list[tuple[bytes, bytes, bytes, float, int]],
    found: list[tuple[bytes, bytes, bytes, float, int]],
    make: Callable[..., Any],
    lister: _Lister | None = None,
) -> Iterator[Any]:
    """The results of the files below ``prefix`` with ``lo <= path < hi``: a
    survey (fresh files counted in bulk) given the scan generation and its
    ``marks``, else one by one."""
    if gen is None:
        return job.results(_walk(prefix, lo, hi, lister), job.rows(read, lo, hi), make)
    return job.survey(_tiles(prefix, lo, hi, lister), read, marks, found, make)


def _walk(
    prefix: bytes, lo: bytes, hi: bytes, lister: _Lister | None = None
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The files of :func:`_tiles`, in runs (lists), without the empty ones."""
    for _, _, tile in _tiles(prefix, lo, hi, lister):
        run = _unpacked(*tile) if isinstance(tile, tuple) else tile
        if run:
            yield run


def _tiles(
    prefix: bytes, lo: bytes, hi: bytes, lister: _Lister | None = None
) -> Iterator[tuple[bytes, bytes, Run]]:
    """Regular files (symlinks followed) below ``prefix`` with ``lo <= path < hi``,
    in path-byte order, each with its packed stat signature, as tiles
    ``(tile_lo, tile_hi, files)`` (files: a :data:`Run`).

    Within a directory a subdirectory sorts as ``name/``, which makes the
    depth-first order equal to the byte order of whole paths (the order of the
    files table), so the walk and the rows can be merged without sorting. A
    tile is a directory's files between two of its subdirectories; the tiles'
    key ranges cover ``[lo, hi)`` below ``prefix`` without gap or overlap, so
    every row of the files table in it (a file gone, a folder gone) falls in
    exactly one tile. With a ``lister`` (the whole folder only), directories
    are listed ahead on its threads.
    """

    def listing(key: bytes) -> tuple[Any, bool]:
        return lister.take(key) if lister is not None else _listing(key, lo, hi, packed=True)

    entries, _ = listing(prefix)
    cursor = max(prefix, lo)
    if isinstance(entries, tuple):  # no folders: one tile, packed
        edge = min(prefix[:-1] + _AFTER_SEP, hi)
        if cursor < edge:
            yield cursor, edge, entries
        return
    stack = [(iter(entries), prefix[:-1] + _AFTER_SEP)]
    run: list[tuple[bytes, bytes]] = []
    while stack:
        entries_left, end = stack[-1]
        for entry in entries_left:
            if entry[1] is not None:
                run.append(entry)
                continue
            # A subdirectory ``key`` (ending in the separator): the tile so far
            # ends where its range begins, and the walk goes down into it.
            key = entry[0]
            edge = min(key, hi)
            if cursor < edge:
                yield cursor, edge, run
            run = []
            below, folders = listing(key)
            cursor, key_end = max(key, lo), key[:-1] + _AFTER_SEP
            if not folders:  # a leaf (most folders): its files are one tile, as listed
                edge = min(key_end, hi)
                if cursor < edge:
                    yield cursor, edge, below
                cursor = max(key_end, lo)
                continue
            stack.append((iter(below), key_end))
            break
        else:
            stack.pop()
            edge = min(end, hi)
            if cursor < edge:
                yield cursor, edge, run
            run = []
            cursor = max(end, lo)


def _listing(prefix: bytes, lo: bytes, hi: bytes, *, packed: bool = False) -> tuple[Any, bool]:
    """One directory's files (with signatures) and subdirectories (``key/``,
    signature ``None``), sorted; and whether there are subdirectories. With
    ``packed``, a directory without folders may come packed (a :data:`Run`)."""
    # Most directories lie wholly inside the range: no per-entry range checks,
    # and the C listing (when built) can do the whole directory.
    inside = lo <= prefix and prefix[:-1] + _AFTER_SEP <= hi
    if inside and _c_listing is not None:
        listed = _c_listing(prefix, packed)
        if listed is not None:  # None: a value wider than the packing, done below
            return listed
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
    stat, pack, is_reg = os.stat, _PACK, stat_mod.S_ISREG
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
            if is_reg(st.st_mode):
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
            elif _is_folder(st, key):
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


def _is_folder(st: os.stat_result, key: bytes) -> bool:
    """Whether an entry is a folder to walk: symlinked folders are not."""
    return stat_mod.S_ISDIR(st.st_mode) and not os.path.islink(key)


# -- listing threads (with the C listing) -------------------------------------------

#: Entries listed ahead of the walk at most (a bound on memory, not on speed:
#: the walk takes listings much faster than the threads make them).
AHEAD_ENTRIES = 65_536


class _Lister:
    """A folder's directories listed ahead of the walk by two threads, smallest
    path first (the walk's depth-first order is path order).

    The C listing does a directory's reads and ``stat``s without the GIL, so
    the threads use both cores while this one judges what they found: no
    second interpreter to start (the helper process, ~50 ms of CPU, is for
    the pure-Python listing, which holds the GIL between its ``stat``s).
    :meth:`take` gives the walk a listing, waiting for a thread that is on it
    or doing it here if no thread has begun it (so the walk never waits on
    a queue).
    """

    THREADS = 2

    def __init__(self, prefix: bytes) -> None:
        import threading

        self._cond = threading.Condition()
        self._pending: list[bytes] = [prefix]  # a heap of directories to list
        self._claimed: set[bytes] = set()  # taken off the heap by the walk itself
        self._running: set[bytes] = set()
        self._done: dict[bytes, Any] = {}  # listing, or the exception it raised
        self._ahead = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name="assetcache-list", daemon=True)
            for _ in range(self.THREADS)
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def usable() -> bool:
        """Threads pay off with the C listing on more than one core."""
        return _c_listing is not None and (os.cpu_count() or 1) > 1

    @classmethod
    def take_prestarted(cls, prefix: bytes) -> _Lister | None:
        lister = _prelisted.pop(prefix, None)
        return lister if lister is not None and cls.usable() else None

    def _work(self) -> None:
        import heapq

        cond = self._cond
        while True:
            with cond:
                while not self._closed and (not self._pending or self._ahead > AHEAD_ENTRIES):
                    cond.wait()
                if self._closed:
                    return
                key = heapq.heappop(self._pending)
                if key in self._claimed:
                    self._claimed.discard(key)
                    continue
                self._running.add(key)
            got: Any
            try:
                got = _listing(key, key, key[:-1] + _AFTER_SEP, packed=True)
            except BaseException as exc:  # handed to the walk, raised there
                got = exc
            with cond:
                self._running.discard(key)
                self._done[key] = got
                if not isinstance(got, BaseException):
                    self._ahead += _files(got[0])
                    if got[1]:
                        self._queue(got[0])
                cond.notify_all()

    def _queue(self, entries: list[tuple[bytes, Any]]) -> None:
        import heapq

        for key, sig in entries:
            if sig is None:
                heapq.heappush(self._pending, key)

    def take(self, key: bytes) -> tuple[Any, bool]:
        """The listing of directory ``key`` (the next one the walk goes into), as
        :func:`_listing` gives it."""
        cond = self._cond
        with cond:
            while key in self._running:
                cond.wait()
            if key in self._done:
                got = self._done.pop(key)
                if isinstance(got, BaseException):
                    raise got
                self._ahead -= _files(got[0])
                cond.notify_all()
                return got
            self._claimed.add(key)  # not begun: listed here, skipped by the threads
        listed = _listing(key, key, key[:-1] + _AFTER_SEP, packed=True)
        if listed[1]:
            with cond:
                self._queue(listed[0])
                cond.notify_all()
        return listed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()


_prelisted: dict[bytes, _Lister] = {}


# -- the helper process ------------------------------------------------------------

#: What the helper runs: put the parent's import path in place (``-S`` skips
#: site, which saves a third of its start-up), load what the scan needs while
#: the parent is still busy, then read the job, scan and answer.
_BOOT = (
    "import sys, marshal; sys.path[:0] = marshal.load(sys.stdin.buffer); "
    "from assetcache._status import _helper_main; _helper_main(sys.stdin.buffer)"
)

_prestarted: list[subprocess.Popen[bytes]] = []


def prestart(folder: str | None = None) -> None:
    """Get ready now for a big scan of ``folder`` coming soon.

    With the C listing, threads begin listing the folder (the walk needs no
    database: it can run while the cache opens); else a helper interpreter
    starts, loads its modules and waits for its job (an unused one ends when
    this process exits: its stdin closes). Does nothing on a single core.
    """
    if _Lister.usable():
        if folder is not None and os.path.isdir(folder):
            top = os.fsencode(os.path.abspath(folder))
            prefix = top if top.endswith(_SEP) else top + _SEP
            if prefix not in _prelisted:
                _prelisted[prefix] = _Lister(prefix)
        return
    if (os.cpu_count() or 1) > 1 and not _prestarted:
        proc = _spawn()
        if proc is not None:
            _prestarted.append(proc)


def discard_prestarted() -> None:
    """End what :func:`prestart` started that no scan took."""
    while _prestarted:
        _Helper(_prestarted.pop()).close()
    while _prelisted:
        _prelisted.popitem()[1].close()


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
    def start(
        cls, job: _Job, prefix: bytes, mid: bytes, hi: bytes, gen: int | None
    ) -> _Helper | None:
        proc = _prestarted.pop() if _prestarted else _spawn()
        if proc is None:
            return None
        helper = cls(proc)
        try:
            assert proc.stdin is not None
            proc.stdin.write(marshal.dumps((job.fields(), prefix, mid, hi, gen)))
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
        fields, prefix, mid, hi, gen = marshal.load(stdin)
    except EOFError:
        return  # prestarted, never used
    job = _Job(*fields)
    from ._storage._scan import open_readonly

    conn = open_readonly(job.db_path)

    def read(sql: str, params: tuple[Any, ...]) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    found: list[tuple[bytes, bytes, bytes, float, int]] = []
    marks = job.marks(read, gen, mid, hi) if gen is not None else []
    results = list(_judge(job, read, prefix, mid, hi, gen, marks, found, _pack))
    conn.close()
    out: IO[bytes] = sys.stdout.buffer
    out.write(marshal.dumps((results, found) if gen is not None else results))
    out.flush()
    # The parent reads to the end of the pipe: end now, without tearing down
    # an interpreter full of objects first.
    os._exit(0)
