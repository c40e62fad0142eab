"""The emulator's state file, safe for several processes sharing it at once.

Several ``assetcache --emulator`` commands may run at the same time on one
database, each with its own in-process emulator persisting to the same
``<db>.emulator.json``. A plain rewrite would let the last writer win and
lose the other processes' uploads, so every write happens under an exclusive
lock on a sibling ``.lock`` file and *merges*: the file is read again, its
images are added to this process's, deletions travel as tombstones (so a
merge cannot bring a deleted image back), and the clock that is further
ahead wins. The file itself is replaced atomically (temp file + rename), so
readers never need the lock.

Locking uses ``fcntl.flock`` (POSIX); where it is missing (Windows) writes
are atomic but not merged.

A file that cannot be used raises :class:`StateError` with one line naming
the file and the reason; the command lines print it and exit 2.

    >>> str(StateError("/tmp/x.json", "is not JSON"))
    'emulator state /tmp/x.json is not JSON'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: What this emulator writes. Version 1 (no tombstones, no image kinds) is read too.
VERSION = 2
READABLE = (1, 2)
#: Bound on waiting for another process's write (each takes milliseconds).
LOCK_TIMEOUT = 30.0


class StateError(ValueError):
    """The state file cannot be read, parsed or locked; str() is one line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"emulator state {path} {reason}")
        self.path = str(path)
        self.reason = reason


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive write lock of ``path`` (a sibling ``.lock`` file)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        # Private like the cache database it sits beside.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(path, f"cannot be locked: {exc.strerror} ({lock_path})") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(
                        path, f"is locked by another process for more than {LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.002)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def signature(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever the file is replaced (inode, size, mtime), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read(path: Path) -> dict[str, Any] | None:
    """The parsed, checked state, or None if there is no file yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StateError(path, "is a directory, not a state file") from None
    except OSError as exc:
        raise StateError(path, f"cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StateError(path, "is not a state file (not UTF-8 text)") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StateError(path, f"is corrupt (not JSON: {exc})") from None
    if not isinstance(state, dict):
        raise StateError(path, "is corrupt (not a JSON object)")
    version = state.get("version")
    if version not in READABLE:
        raise StateError(
            path,
            f"has version {version!r}; this assetcache reads versions "
            f"{', '.join(map(str, READABLE))} (move it away to start afresh)",
        )
    clock = state.get("clock")
    images = state.get("images")
    tombstones = state.get("deleted", {})
    if (
        not isinstance(clock, dict)
        or not all(isinstance(clock.get(k), (int, float)) for k in ("now", "wall"))
        or not isinstance(images, list)
        or not all(isinstance(row, dict) and isinstance(row.get("uuid"), str) for row in images)
        or not isinstance(tombstones, dict)
    ):
        raise StateError(path, "is corrupt (unexpected structure)")
    return state


def write(path: Path, state: dict[str, Any]) -> None:
    """Replace the file atomically: a reader (or a crash) never sees half of it."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise StateError(path, f"cannot be written: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**state, "version": VERSION}, fh)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StateError(path, f"cannot be written: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
