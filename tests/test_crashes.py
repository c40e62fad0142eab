"""Crashes: ``kill -9`` of a running ``assetcache upload`` never corrupts the
database, never leaves a UUID the server does not hold, and never makes the
next run upload again what was already cached.

The real console script uploads 500 files to an emulator in this process,
which answers each request after 0.3 s. Each of 10 runs is killed with
SIGKILL in one of three phases, at a moment chosen at random (seeded) but
*forced*, never hoped for, so that a slow or a fast machine kills at the same
step:

``start``
    the run is held at its N-th ``hashed`` pause point (a file was just read
    and hashed) and killed there;
``arrive``
    the emulator, on receiving the run's K-th request, kills the run before it
    answers (requests in flight);
``answer``
    the run is held at its N-th ``record`` pause point (a request's answers
    arrived and are about to be recorded) and killed there.

N and K never exceed what the run must reach (a run with M contents still to
upload hashes at least M files and sends at least ceil(M / 16) requests), so
the run cannot finish before the kill. After every kill: ``PRAGMA
integrity_check`` is ok, every cached UUID is held by the emulator for exactly
that content, and every stat row names its file's real content. A last run
then finishes and uploads exactly the contents that were not cached.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from cli_support import script
from helpers import API_KEY, make_png

from assetcache import _hashing
from assetcache._cli import UPLOAD_CHUNK
from assetcache._settings import BY_NAME
from assetcache.emulator import Emulator

FILES = 500
KILLS = 10
LATENCY = 0.3
TASKS_PER_REQUEST = BY_NAME["batch_size"].default
#: The CLI resolves (and records) UPLOAD_CHUNK files at a time, in requests of
#: ``batch_size`` tasks (its default).
CHUNK_REQUESTS = -(-UPLOAD_CHUNK // TASKS_PER_REQUEST)


def dead(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has died (a zombie not reaped yet counts), without reaping it."""
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        return proc.returncode is not None


class Killer:
    """Kills the current run when the emulator receives its K-th request."""

    def __init__(self, emu: Emulator) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.target: int | None = None
        self.fired = threading.Event()
        real = emu.handle_api

        def handle(body: bytes, authorization: str | None):  # type: ignore[no-untyped-def]
            with self.lock:
                self.count += 1
                mine = self.target is not None and self.target == self.count
                proc = self.proc
            if mine and proc is not None:
                self.kill(proc)
                deadline = time.monotonic() + 30
                while not dead(proc) and time.monotonic() < deadline:
                    time.sleep(0.005)  # answer only once the run cannot read the answer
            return real(body, authorization)

        emu.handle_api = handle  # type: ignore[method-assign]

    def arm(self, proc: subprocess.Popen[bytes], target: int | None) -> None:
        with self.lock:
            self.proc, self.count, self.target = proc, 0, target
            self.fired.clear()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        self.fired.set()


def wait_paused(proc: subprocess.Popen[bytes], notify: Path, timeout: float = 120) -> str:
    """Wait until the run reports being held at its pause point; returns the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if notify.exists():
            return notify.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before its pause point")
        time.sleep(0.01)
    raise AssertionError("the run never reached its pause point")


def run(
    db: Path, folder: Path, emu: Emulator, pause: tuple[str, Path] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
    if pause is not None:
        env["ASSETCACHE_PAUSE_AT"], env["ASSETCACHE_PAUSE_FILE"] = pause[0], str(pause[1])
    return subprocess.Popen(
        [script(), "--db", str(db), "--api-url", emu.base_url, "upload", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def check_database(db: Path, emu: Emulator, content: dict[str, bytes]) -> int:
    """Integrity, UUIDs held for the right bytes, stat rows true; returns assets cached."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assets = conn.execute("SELECT content_hash, image_uuid FROM assets").fetchall()
        files = conn.execute("SELECT path, content_hash FROM files").fetchall()
    finally:
        conn.close()
    for digest, uuid in assets:
        held = emu.image(uuid)
        assert held is not None, f"cached UUID {uuid} is not held by the server"
        assert held.sha256 == hashlib.sha256(content[digest]).hexdigest()
    for path, digest in files:
        assert _hashing.hash_bytes(Path(os.fsdecode(path)).read_bytes()) == digest
    assert len({d for d, _ in assets}) == len(assets)
    return len(assets)


def test_ten_kills_during_a_five_hundred_file_upload_lose_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    content: dict[str, bytes] = {}
    for i in range(FILES):
        data = make_png(70_000 + i)
        (folder / f"img-{i:03d}.png").write_bytes(data)
        content[_hashing.hash_bytes(data)] = data
    db = tmp_path / "cache.db"
    rng = random.Random(6)
    phases = ["start"] * 3 + ["arrive"] * 4 + ["answer"] * 3
    rng.shuffle(phases)

    with Emulator(api_key=API_KEY, latency=LATENCY) as emu:
        killer = Killer(emu)
        cached_after: list[int] = []
        for n, phase in enumerate(phases):
            to_upload = FILES - (cached_after[-1] if cached_after else 0)
            requests = -(-to_upload // TASKS_PER_REQUEST)  # the fewest the run can send
            notify = tmp_path / f"paused-{n}"
            pause: tuple[str, Path] | None = None
            target = None
            if phase == "start":  # held just after hashing its N-th file
                pause = (f"hashed:{rng.randint(1, min(to_upload, UPLOAD_CHUNK))}", notify)
            elif phase == "arrive":  # while the K-th request waits on the server
                target = rng.randint(1, min(CHUNK_REQUESTS, requests))
            else:  # a request answered, its answers about to be recorded
                pause = (f"record:{rng.randint(1, min(2 * CHUNK_REQUESTS, requests))}", notify)
            proc = run(db, folder, emu, pause)
            killer.arm(proc, target)
            if pause is not None:
                wait_paused(proc, notify)
                killer.kill(proc)
            assert killer.fired.wait(120), f"{phase}: the kill never fired"
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL, (phase, proc.returncode, stderr[-2000:])
            cached_after.append(check_database(db, emu, content))

        assert cached_after[-1] < FILES  # the kills really interrupted the work
        before = emu.upload_count
        proc = run(db, folder, emu)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        uploaded = emu.upload_count - before
        assert uploaded == FILES - cached_after[-1]
        assert stdout.decode().count("\tuploaded") == uploaded
        assert stdout.decode().count("\thit") == cached_after[-1]
        assert check_database(db, emu, content) == FILES
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
        finally:
            conn.close()
    print(
        f"\nkills: {KILLS} ({', '.join(phases)}); cached after each: {cached_after}; "
        f"final run uploaded {uploaded}, server uploads in all {emu.upload_count}"
    )
