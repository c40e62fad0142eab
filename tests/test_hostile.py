"""Hostile input: each bad input gives one clear message naming it and saying
why, the rest of the batch carries on, and nothing is half-written.

Every input of the issue's list goes through ``resolve_many`` (mixed with
good images) and through ``assetcache upload`` (CliRunner in-process, and the
real console script in a subprocess). Bad databases (an unwritable folder, a
file that is not SQLite, a newer schema) give a :class:`StoreError` and exit
code 2, and are left exactly as they were.

The tests run as root in CI, where permission bits do not stop reads: there a
file's "permission denied" is produced by making ``os.open`` refuse it, and an
unwritable folder is one on a filesystem that refuses even root (``/sys``).
"""

from __future__ import annotations

import base64
import errno
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import invoke, script
from helpers import API_KEY, make_jpeg, make_png

from assetcache import (
    AssetCache,
    InvalidImage,
    SchemaTooNew,
    SourceError,
    SourceNotFound,
    SourceTooLarge,
    StoreError,
    UnsupportedFormat,
    _hashing,
)
from assetcache.emulator import Emulator

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MAX_BYTES = 4096
PNG = make_png(1)


@dataclass
class Case:
    """One hostile input: what is passed, how messages name it, and why it fails."""

    name: str
    source: Any
    shown: str  # how the message names the input
    reason: str  # what the message must say
    error: type[SourceError] = SourceError
    cli: bool = True  # can be given to ``assetcache upload``
    subprocess: bool = True  # needs no monkeypatching in this process
    cli_shown: str | None = None  # how a CLI row names it, when not as ``shown``


def deterministic_garbage(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def noisy_png(side: int) -> bytes:
    """A PNG that does not compress (above MAX_BYTES)."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + deterministic_garbage(side * 3 + y)[: side * 3] for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def deny_reading(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Make ``path`` unreadable; True when done with permission bits (works in a subprocess)."""
    if not AS_ROOT:
        path.chmod(0)
        return True
    real_open = os.open
    target = os.fspath(path)

    def refusing_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    return False


def change_while_hashing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Append to ``path`` from inside its hashing loop (after the first chunk is read)."""
    inode = path.stat().st_ino
    real = _hashing.hash_stream

    def appender() -> Any:
        done: list[bool] = []

        def writer(chunk: memoryview) -> None:
            if not done:
                done.append(True)
                with open(path, "ab") as f:
                    f.write(b"appended while the file was being hashed")

        return writer

    def hash_stream(stream: Any, *, limit: int | None = None, sinks: Any = ()) -> Any:
        try:
            mine = os.fstat(stream.fileno()).st_ino == inode
        except (AttributeError, OSError, ValueError):
            mine = False
        if mine:
            sinks = (*sinks, appender())
        return real(stream, limit=limit, sinks=sinks)

    real_fd = _hashing.hash_fd

    def hash_fd(fd: int, size: int, *, limit: int | None = None, sinks: Any = ()) -> Any:
        if os.fstat(fd).st_ino == inode:
            sinks = (*sinks, appender())
        return real_fd(fd, size, limit=limit, sinks=sinks)

    monkeypatch.setattr(_hashing, "hash_stream", hash_stream)
    monkeypatch.setattr(_hashing, "hash_fd", hash_fd)


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Case]:
    folder = tmp_path / "in"
    folder.mkdir()

    def put(name: str | bytes, data: bytes) -> Path:
        path = Path(os.fsdecode(os.fsencode(folder) + b"/" + os.fsencode(name)))
        path.write_bytes(data)
        return path

    jpeg = make_jpeg()
    cases = [
        Case("empty file", put("empty.png", b""), "empty.png", "empty"),
        Case(
            "text named .png",
            put("notes.png", b"just some notes, not an image\n"),
            "notes.png",
            "not an image",
            UnsupportedFormat,
        ),
        Case(
            "truncated PNG",
            put("cut.png", PNG[: len(PNG) // 2]),
            "cut.png",
            "truncated",
            InvalidImage,
        ),
        Case(
            "truncated JPEG",
            put("cut.jpg", jpeg[: len(jpeg) // 2]),
            "cut.jpg",
            "truncated",
            InvalidImage,
        ),
        Case(
            "PNG header on garbage",
            put("fake.png", PNG[:16] + deterministic_garbage(300)),
            "fake.png",
            "damaged PNG",
            InvalidImage,
        ),
        Case(
            "JPEG header on garbage",
            put("fake.jpg", jpeg[:20] + deterministic_garbage(301)),
            "fake.jpg",
            "damaged JPEG",
            InvalidImage,
        ),
        Case(
            "TIFF",
            put("scan.tiff", b"II*\x00\x08\x00\x00\x00" + bytes(120)),
            "scan.tiff",
            "TIFF",
            UnsupportedFormat,
        ),
        Case(
            "SVG",
            put("logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>"),
            "logo.svg",
            "SVG",
            UnsupportedFormat,
        ),
        Case(
            "HEIC",
            put("phone.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + bytes(120)),
            "phone.heic",
            "HEIC",
            UnsupportedFormat,
        ),
        Case("missing path", folder / "missing.png", "missing.png", "no such file", SourceNotFound),
        Case(
            "directory where a file was expected",
            folder / "album.png",
            "album.png",
            "is a directory",
            cli=False,
        ),
        Case("unreadable file", put("secret.png", make_png(2)), "secret.png", "permission denied"),
        Case(
            "dangling symlink",
            folder / "dangling.png",
            "dangling.png",
            "dangling symlink",
            SourceNotFound,
        ),
        Case("symlink loop", folder / "loop-a.png", "loop-a.png", "symlink loop"),
        Case("FIFO", folder / "pipe.png", "pipe.png", "FIFO"),
        Case(
            "above the size limit",
            put("huge.png", noisy_png(64)),
            "huge.png",
            f"above the limit of {MAX_BYTES} bytes",
            SourceTooLarge,
            cli=False,
        ),
        Case(
            "changes while hashed",
            put("growing.png", make_png(3)),
            "growing.png",
            "changed while being read",
            subprocess=False,
        ),
        Case(
            "invalid base64",
            "iVBORw0KGgo" + base64.b64encode(PNG).decode()[11:60] + "=A",
            "base64 'iVBORw0KGgo",
            "invalid base64",
            InvalidImage,
        ),
        Case(
            "invalid base64 in a data URI",
            "data:image/png;base64,@@not base64@@",
            "data URI 'data:image/png;base64,@@",
            "invalid base64",
            InvalidImage,
        ),
        Case(
            "data URI without a comma",
            "data:image/png;base64",
            "'data:image/png;base64' (",
            "no comma",
            InvalidImage,
        ),
        Case(
            "data URI with a broken media type",
            "data:image png;base64,AAAA",
            "data URI 'data:image png",
            "media type",
            InvalidImage,
        ),
        Case(
            "data URI declaring JPEG holding PNG",
            "data:image/jpeg;base64," + base64.b64encode(PNG).decode(),
            "data URI 'data:image/jpeg;base64,",
            "declared image/jpeg but the data is PNG",
            InvalidImage,
        ),
        Case("file:// URL", "file:///etc/passwd", "file:///etc/passwd", "not supported"),
        Case(
            "ftp:// URL",
            "ftp://example.com/photo.png",
            "ftp://example.com/photo.png",
            "not supported",
        ),
        Case(
            "non-UTF-8 file name",
            put(b"caf\xe9-junk.png", b"\x00\x01junk" * 20),
            "caf\\xe9-junk.png",
            "not an image",
            UnsupportedFormat,
            cli_shown="caf\\351-junk.png",  # quoted as git does: octal escapes
        ),
    ]
    (folder / "album.png").mkdir()
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    os.symlink(folder / "loop-b.png", folder / "loop-a.png")
    os.symlink(folder / "loop-a.png", folder / "loop-b.png")
    os.mkfifo(folder / "pipe.png")
    by_name = {c.name: c for c in cases}
    unreadable = by_name["unreadable file"]
    unreadable.subprocess = deny_reading(unreadable.source, monkeypatch)
    change_while_hashing(by_name["changes while hashed"].source, monkeypatch)
    return cases


@pytest.fixture
def good(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "good"
    folder.mkdir()
    paths = []
    for i, name in enumerate([b"one.png", b"two.png", b"caf\xe9-ok.png"]):
        path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
        path.write_bytes(make_png(100 + i))
        paths.append(path)
    return paths


def interleave(bad: list[Any], good: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(bad):
        out.append(item)
        if i % 8 == 0 and good[i // 8 :]:
            out.append(good[i // 8])
    return out


def assert_nothing_half_written(db: Path, emu: Emulator, good: list[Path]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assets = conn.execute("SELECT content_hash, image_uuid FROM assets").fetchall()
        files = {os.fsdecode(p) for (p,) in conn.execute("SELECT path FROM files")}
        leases = conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
    finally:
        conn.close()
    assert {h for h, _ in assets} == {_hashing.hash_bytes(p.read_bytes()) for p in good}
    assert all(emu.holds(u) for _, u in assets)
    assert files == {str(p) for p in good}
    assert leases == 0
    assert emu.upload_count == len(good)


@pytest.mark.timeout(60)  # a FIFO must not hang the batch
def test_resolve_many_names_each_bad_input_and_carries_on(hostile, good, emu, tmp_path):
    sources = interleave([c.source for c in hostile], good)
    db = tmp_path / "cache.db"
    with AssetCache(API_KEY, base_url=emu.base_url, db_path=db, max_bytes=MAX_BYTES) as cache:
        results = cache.resolve_many(sources)
        assert len(results) == len(sources)
        by_source = dict(zip(map(id, sources), results, strict=True))
        for case in hostile:
            res = by_source[id(case.source)]
            assert res.outcome == "failed" and res.uuid is None, case.name
            assert isinstance(res.error, case.error), (case.name, res.error)
            text = str(res.error)
            assert case.shown in text, (case.name, text)
            assert case.reason in text, (case.name, text)
            assert "\n" not in text and len(text) < 400, (case.name, text)
            text.encode("utf-8")  # printable, whatever the file name
        for path in good:
            res = by_source[id(path)]
            assert res.outcome == "uploaded", (path, res.error)
            res.source.encode("utf-8")
    assert_nothing_half_written(db, emu, good)


@pytest.mark.timeout(60)
def test_the_async_twin_fails_the_same_inputs_the_same_way(hostile, good, emu, tmp_path):
    import asyncio

    from assetcache import AsyncAssetCache

    sources = interleave([c.source for c in hostile], good)

    async def main() -> list[Any]:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "a.db", max_bytes=MAX_BYTES
        ) as cache:
            return await cache.resolve_many(sources)

    results = asyncio.run(main())
    failed = [r for r in results if r.error is not None]
    assert len(failed) == len(hostile)
    assert sorted(r.source for r in results if r.ok) == sorted(
        str(p).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for p in good
    )
    assert_nothing_half_written(tmp_path / "a.db", emu, good)


def cli_args(emu: Emulator, db: Path) -> list[str]:
    return ["--db", str(db), "--api-url", emu.base_url, "upload"]


def check_cli_output(stdout: str, cases: list[Case], good: list[Path]) -> None:
    lines = stdout.splitlines()
    assert len(lines) == len(cases) + len(good), stdout
    assert "Traceback" not in stdout
    for case in cases:
        shown = case.cli_shown or case.shown
        mine = [line for line in lines if shown in line.split("\t")[0]]
        assert len(mine) == 1, (case.name, mine)
        source, uuid, outcome = mine[0].split("\t")
        assert uuid == "-"
        assert outcome.startswith("failed: ") and case.reason in outcome, (case.name, outcome)
    assert sum(line.endswith("\tuploaded") for line in lines) == len(good)


@pytest.mark.timeout(60)
def test_cli_upload_prints_one_line_per_bad_input_and_exits_1(hostile, good, emu, tmp_path):
    cases = [c for c in hostile if c.cli]
    args = [
        os.fsdecode(os.fspath(c.source)) if isinstance(c.source, Path) else c.source for c in cases
    ]
    db = tmp_path / "cli.db"
    result = invoke(
        *cli_args(emu, db),
        *interleave(args, [str(p) for p in good]),
        env={"RUNWARE_API_KEY": API_KEY},
    )
    assert result.exit_code == 1, result.output
    check_cli_output(result.stdout, cases, good)
    assert "Traceback" not in result.stderr
    assert f"{len(cases)} failed" in result.stderr
    assert_nothing_half_written(db, emu, good)


@pytest.mark.timeout(120)
def test_the_console_script_survives_the_same_inputs(hostile, good, emu, tmp_path):
    cases = [c for c in hostile if c.cli and c.subprocess]
    args = [os.fsencode(c.source) if isinstance(c.source, Path) else c.source for c in cases]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
    db = tmp_path / "sub.db"
    done = subprocess.run(
        [script(), *cli_args(emu, db), *interleave(args, [os.fsencode(p) for p in good])],
        capture_output=True,
        env=env,
        timeout=100,
    )
    stdout = done.stdout.decode("utf-8")
    stderr = done.stderr.decode("utf-8")
    assert done.returncode == 1, stderr
    check_cli_output(stdout, cases, good)
    assert "Traceback" not in stderr
    assert_nothing_half_written(db, emu, good)


# -- bad databases -----------------------------------------------------------------


def unwritable_folder(tmp_path: Path) -> Iterator[Path]:
    """Folders where creating a file fails for this user (root included)."""
    if not AS_ROOT:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        yield locked
        yield locked / "sub"
        return
    for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
        probe = candidate / ".assetcache-probe"
        try:
            os.close(os.open(probe, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                yield candidate
                yield candidate / "assetcache-sub"
                return
        else:
            os.unlink(probe)


def bad_databases(tmp_path: Path) -> list[tuple[str, Path, type[StoreError], str]]:
    out: list[tuple[str, Path, type[StoreError], str]] = []
    for folder in unwritable_folder(tmp_path):
        out.append(
            (
                f"unwritable folder {folder}",
                folder / "cache.db",
                StoreError,
                "cannot create the cache database",
            )
        )
    parent_is_file = tmp_path / "plain-file"
    parent_is_file.write_text("a file, not a folder")
    out.append(
        (
            "a file as its folder",
            parent_is_file / "cache.db",
            StoreError,
            "cannot create the cache database",
        )
    )
    not_sqlite = tmp_path / "not-sqlite.db"
    not_sqlite.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
    out.append(("not SQLite", not_sqlite, StoreError, "is not a valid SQLite database"))
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    out.append(("newer schema", newer, SchemaTooNew, "written by a newer assetcache"))
    return out


def snapshot(path: Path) -> dict[str, bytes]:
    folder = path.parent
    if not folder.is_dir():
        return {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    return {
        n: (folder / n).read_bytes()
        for n in names
        if n.startswith(path.name) and (folder / n).is_file()
    }


def test_bad_databases_give_a_store_error_and_are_left_alone(tmp_path, emu):
    cases = bad_databases(tmp_path)
    if not AS_ROOT:  # as root, only where a filesystem refuses root too (else: the next test)
        assert any(name.startswith("unwritable") for name, *_ in cases)
    for name, db, error, reason in cases:
        before = snapshot(db)
        with pytest.raises(error) as info:
            AssetCache(API_KEY, base_url=emu.base_url, db_path=db)
        text = str(info.value)
        assert str(db) in text and reason in text, (name, text)
        assert info.value.path == str(db)
        assert snapshot(db) == before, name  # not a byte changed, no -wal/-shm left behind


def test_unwritable_folder_when_permission_bits_cannot_stop_us(tmp_path, emu, monkeypatch):
    """As root, the permission error is produced; the message is the same either way."""
    folder = tmp_path / "private"
    real_open, real_mkdir, real_makedirs = os.open, os.mkdir, os.makedirs

    def refused(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path).startswith(str(folder)):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    image = tmp_path / "ok.png"
    image.write_bytes(make_png(8))
    monkeypatch.setattr(os, "open", refused(real_open))
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))
    monkeypatch.setattr(os, "makedirs", refused(real_makedirs))
    for db in (folder / "cache.db", folder / "deeper" / "cache.db"):
        with pytest.raises(StoreError, match="Permission denied") as info:
            AssetCache(API_KEY, base_url=emu.base_url, db_path=db)
        assert str(db) in str(info.value)
        result = invoke(
            "--db", db, "--api-url", emu.base_url, "upload", image, env={"RUNWARE_API_KEY": API_KEY}
        )
        assert result.exit_code == 2
        # An explicit --db in a missing folder is refused before any mkdir.
        assert str(db) in result.stderr
        assert "Permission denied" in result.stderr or "does not exist" in result.stderr
    assert not folder.exists()


def test_bad_databases_through_the_cli_exit_2_with_one_line(tmp_path, emu):
    image = tmp_path / "ok.png"
    image.write_bytes(make_png(7))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
    for name, db, _, reason in bad_databases(tmp_path):
        before = snapshot(db)
        result = invoke(
            "--db", db, "--api-url", emu.base_url, "upload", image, env={"RUNWARE_API_KEY": API_KEY}
        )
        assert result.exit_code == 2, (name, result.output)
        assert reason in result.stderr and str(db) in result.stderr, (name, result.stderr)
        assert result.stdout == ""
        done = subprocess.run(
            [script(), "--db", str(db), "--api-url", emu.base_url, "upload", str(image)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2, (name, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and reason in errors[0], (name, done.stderr)
        assert "Traceback" not in done.stderr
        assert snapshot(db) == before, name
    assert emu.upload_count == 0
