"""Crash run: ``kill -9`` an ``assetcache upload`` over and over; nothing may be lost.

    python scripts/crash.py [--files 6000] [--kills 20] [--latency 0.25] [--seed 1]

The larger twin of ``tests/test_crashes.py``: the installed console script
uploads a folder to an emulator in this process (answering each request after
``--latency`` seconds) and is killed with SIGKILL at a uniformly random moment
of each run, up to ``--kills`` times; then one last run completes. After every
kill: ``PRAGMA integrity_check`` is ok, every cached UUID is held by the
emulator for exactly that content, and every stat row names its file's real
content. The last run must upload exactly the contents not yet cached.
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import KEY, noisy_png

from assetcache import _hashing
from assetcache.emulator import Emulator


def check(db: Path, emu: Emulator, content: dict[str, bytes]) -> tuple[int, list[str]]:
    problems = []
    conn = sqlite3.connect(db)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchall()
        assets = conn.execute("SELECT content_hash, image_uuid FROM assets").fetchall()
        files = conn.execute("SELECT path, content_hash FROM files").fetchall()
    finally:
        conn.close()
    if verdict != [("ok",)]:
        problems.append(f"integrity_check: {verdict[:3]}")
    for digest, uuid in assets:
        held = emu.image(uuid)
        if held is None or held.sha256 != hashlib.sha256(content[digest]).hexdigest():
            problems.append(f"cached UUID {uuid} is not held for its content")
    for path, digest in files:
        if _hashing.hash_bytes(Path(os.fsdecode(path)).read_bytes()) != digest:
            problems.append(f"stat row of {os.fsdecode(path)} names the wrong content")
    return len(assets), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    exe = Path(sys.executable).with_name("assetcache")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = KEY
    problems: list[str] = []

    with tempfile.TemporaryDirectory() as tmp, Emulator(api_key=KEY, latency=args.latency) as emu:
        folder = Path(tmp, "images")
        folder.mkdir()
        content = {}
        for i in range(args.files):
            data = noisy_png(i, side=24)
            (folder / f"img{i:05d}.png").write_bytes(data)
            content[_hashing.hash_bytes(data)] = data
        db = Path(tmp, "cache.db")
        command = [str(exe), "--db", str(db), "--api-url", emu.base_url, "upload", str(folder)]
        print(f"{args.files} files, emulator latency {args.latency} s, up to {args.kills} kills")
        kills = 0
        cached = 0
        while kills < args.kills and cached < args.files:
            moment = rng.uniform(0.05, 2.0)
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
            )
            try:
                proc.wait(moment)
                finished = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                finished = False
            _, stderr = proc.communicate(timeout=60)
            if finished and proc.returncode not in (0, 1):
                problems.append(f"run ended with {proc.returncode}: {stderr[-500:]!r}")
            kills += not finished
            cached, found = check(db, emu, content)
            problems += found
            print(
                f"{'killed' if not finished else 'finished'} at {moment:.2f} s: "
                f"{cached} cached, {len(found)} problem(s)"
            )
        before = emu.upload_count
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        uploaded = emu.upload_count - before
        final, found = check(db, emu, content)
        problems += found
        if done.returncode != 0:
            problems.append(f"the last run exited {done.returncode}: {done.stderr[-500:]}")
        if uploaded != args.files - cached:
            problems.append(f"the last run uploaded {uploaded}, expected {args.files - cached}")
        if final != args.files:
            problems.append(f"{args.files - final} file(s) not cached at the end")
        print(
            f"kills {kills}; last run {time.perf_counter() - started:.1f} s uploaded "
            f"{uploaded} (not cached before: {args.files - cached}); cached {final}; "
            f"server uploads in all {emu.upload_count} "
            f"({emu.upload_count - args.files} lost to kills, sent again)"
        )
    for line in problems[:20]:
        print("PROBLEM", line)
    print("lost: nothing" if not problems else f"lost: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
