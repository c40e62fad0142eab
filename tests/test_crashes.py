"""Crashes: ``kill -9`` of a running ``assetcache upload`` never corrupts the
database, never leaves a UUID the server does not hold, and never makes the
next run upload again what was already cached.

The real console script uploads 500 files to an emulator in this process,
which answers each request after 0.3 s. Each of 10 runs is killed with
SIGKILL at a random moment (seeded) in one of three phases: start-up and
hashing, requests in flight, or just after the last answer of a chunk arrived
(while the answers are recorded). After every kill: ``PRAGMA
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
from pathlib import Path

from cli_support import script
from helpers import API_KEY, make_png

from assetcache import _hashing
from assetcache._cli import UPLOAD_CHUNK
from assetcache.emulator import Emulator

FILES = 500
KILLS = 10
LATENCY = 0.3
#: The CLI resolves (and records) UPLOAD_CHUNK files at a time, in requests of 16 tasks.
CHUNK_REQUESTS = -(-UPLOAD_CHUNK // 16)


class Killer:
    """Kills the current run at a moment anchored on the requests the emulator sees."""

    def __init__(self, emu: Emulator) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.target: tuple[int, str, float] | None = None  # (request no., "arrive"|"answer", delay)
        self.fired = threading.Event()
        real = emu.handle_api

        def handle(body: bytes, authorization: str | None):  # type: ignore[no-untyped-def]
            with self.lock:
                self.count += 1
                mine = self.target if self.target and self.target[0] == self.count else None
            if mine and mine[1] == "arrive":
                self.fire(mine[2])
            reply = real(body, authorization)
            if mine and mine[1] == "answer":
                self.fire(mine[2])
            return reply

        emu.handle_api = handle  # type: ignore[method-assign]

    def arm(self, proc: subprocess.Popen[bytes], target: tuple[int, str, float] | None) -> None:
        with self.lock:
            self.proc, self.count, self.target = proc, 0, target
            self.fired.clear()

    def fire(self, delay: float) -> None:
        proc = self.proc
        assert proc is not None

        def kill() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            self.fired.set()

        threading.Timer(delay, kill).start()


def run(db: Path, folder: Path, emu: Emulator) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
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
            left = -(-(FILES - (cached_after[-1] if cached_after else 0)) // UPLOAD_CHUNK)
            if phase == "answer" and left < 2:
                phase = phases[n] = "arrive"  # after the last chunk the run would finish first
            if phase == "start":
                target, timer = None, rng.uniform(0.05, 0.5)
            elif phase == "arrive":  # while the chunk's requests wait on the server
                target, timer = (
                    (rng.randint(1, CHUNK_REQUESTS), "arrive", rng.uniform(0.0, LATENCY * 0.8)),
                    None,
                )
            else:  # just after a chunk's last answer: while it is being recorded
                chunk = rng.randint(1, min(2, left - 1))
                target, timer = (CHUNK_REQUESTS * chunk, "answer", rng.uniform(0.0, 0.04)), None
            proc = run(db, folder, emu)
            killer.arm(proc, target)
            if timer is not None:
                killer.fire(timer)
            assert killer.fired.wait(60), f"{phase}: the kill never fired"
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
