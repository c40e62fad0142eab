"""``status``: what the cache knows about files on disk, without uploading.

Reads the stat cache in bulk (one range scan per folder argument, one query
for the namespace's assets) and stats each file once; only racily-clean files
(see ``_hashing``) are read, exactly as git re-reads them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _hashing, _policy

if TYPE_CHECKING:
    from ._cache import _Engine

#: The states a file can be in, in the order a report lists them.
STATES = ("fresh", "expiring", "expired", "changed", "new", "missing")


@dataclass(frozen=True, slots=True)
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


def scan(engine: _Engine, paths: Iterable[str]) -> Iterator[FileStatus]:
    """Statuses of the files named (folders: every file below them)."""
    store = engine.store
    policy = engine.policy
    now = engine.clock()
    assets = {
        h: (uuid, last)
        for h, uuid, last in store.read(
            "SELECT content_hash, image_uuid, last_used_at FROM assets "
            "WHERE namespace = ? AND variant = ?",
            (engine.namespace, engine.variant),
        )
    }

    def judge(path: str, st: os.stat_result | None, row: object) -> FileStatus:
        if st is None:
            return FileStatus(path, "missing")
        if row is None:
            return FileStatus(path, "new")
        fp = _hashing.Fingerprint.of(st)
        known = row  # FileRow
        digest = known.content_hash  # type: ignore[attr-defined]
        same = (known.dev, known.ino, known.size, known.mtime_ns, known.ctime_ns) == fp.as_tuple()  # type: ignore[attr-defined]
        if same and _hashing.is_racy(fp, known.hashed_at_ns, engine.racy_ns):  # type: ignore[attr-defined]
            try:
                digest = _hashing.hash_file(path)[0]
            except OSError:
                return FileStatus(path, "missing")
            same = digest == known.content_hash  # type: ignore[attr-defined]
        if not same:
            return FileStatus(path, "changed", content_hash=known.content_hash)  # type: ignore[attr-defined]
        asset = assets.get(digest)
        if asset is None:
            return FileStatus(path, "new", content_hash=digest)
        uuid, last_used = asset
        state = _policy.state(policy, last_used, now)
        label = {"fresh": "fresh", "expiring": "expiring", "stale": "expired", "expired": "expired"}[state]
        return FileStatus(path, label, uuid, digest, _policy.expires_at(policy, last_used),
                          _policy.serve_until(policy, last_used) - now)

    for raw in paths:
        top = os.path.abspath(raw)
        if os.path.isdir(top):
            rows = {r.path: r for r in store.files_under(top)}
            seen: set[str] = set()
            for path, st in _walk(top):
                seen.add(path)
                yield judge(path, st, rows.get(path))
            for path in sorted(set(rows) - seen):
                yield FileStatus(path, "missing", content_hash=rows[path].content_hash)
        else:
            try:
                st: os.stat_result | None = os.stat(top)
            except OSError:
                st = None
            yield judge(top, st, store.get_file(top))


def _walk(top: str) -> Iterator[tuple[str, os.stat_result]]:
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                elif entry.is_file():
                    yield entry.path, entry.stat()
            except OSError:
                continue
        stack.extend(reversed(subdirs))
