"""Ctrl-C and SIGTERM end a CLI run cleanly: the results already known are
printed, what was uploaded is recorded, the exit code is 130 or 143, and no
traceback is written."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cli_support import script
from helpers import API_KEY, make_png, sigint_default

from assetcache._cli import UPLOAD_CHUNK
from assetcache.emulator import Emulator

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

FILES = UPLOAD_CHUNK * 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_prints_what_is_known_records_uploads_and_exits(
    tmp_path: Path, signum: int, code: int
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"img-{i:03d}.png").write_bytes(make_png(90_000 + i))
    db = tmp_path / "c.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETCACHE_", "RUNWARE_"))}
    env["RUNWARE_API_KEY"] = API_KEY
    with Emulator(api_key=API_KEY, latency=0.4) as emu:
        proc = subprocess.Popen(
            [script(), "-v", "--db", str(db), "--api-url", emu.base_url, "upload", str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=sigint_default,
        )
        # Past the first chunk (8 requests of 16), while the second is in flight.
        first_chunk = -(-UPLOAD_CHUNK // 16)
        deadline = time.monotonic() + 60
        while emu.request_count <= first_chunk and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, (proc.returncode, stderr[-2000:])
        assert "Traceback" not in stderr
        rows = [line.split("\t") for line in stdout.splitlines()]
        stderr = "\n".join(line for line in stderr.splitlines() if "HTTP Request" not in line)
        assert UPLOAD_CHUNK <= len(rows) < FILES, (len(rows), stderr[-2000:])
        assert all(outcome == "uploaded" for _, _, outcome in rows)
        assert "after" in stderr and f"of {FILES} file(s)" in stderr
        conn = sqlite3.connect(db)
        try:
            cached = dict(conn.execute("SELECT image_uuid, content_hash FROM assets").fetchall())
        finally:
            conn.close()
        # Every printed UUID is recorded and held by the server; the uploads the
        # server made for the chunk in flight were recorded too.
        for _, uuid, _ in rows:
            assert uuid in cached and emu.image(uuid) is not None
        # (A request retried after a lost answer leaves an upload the client never
        # learnt of: the only case where the server holds more than was recorded.)
        if "retrying" in stderr:
            assert len(cached) <= emu.upload_count
        else:
            assert len(cached) == emu.upload_count, (len(cached), emu.upload_count, stderr)
