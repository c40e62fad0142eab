"""The cache is a plain SQLite file: the ``sqlite-utils`` tools read it as it is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_images


def sqlite_utils_cli() -> str:
    found = Path(sys.executable).with_name("sqlite-utils")
    if found.exists():
        return str(found)
    which = shutil.which("sqlite-utils")
    if which is None:
        pytest.skip("the sqlite-utils command is not installed (pip install sqlite-utils)")
    return which


def test_the_sqlite_utils_command_reads_a_real_cache(make_cache, tmp_path):
    cache = make_cache()
    paths = write_images(tmp_path / "in", 1, 2, 3)
    assert all(r.ok for r in cache.resolve_many(paths))
    db = cache.db_path
    cache.close()  # counters flushed; the file is left as any user would find it

    out = subprocess.run(
        [sqlite_utils_cli(), "tables", db, "--counts"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts = {t["table"]: t["count"] for t in json.loads(out.stdout)}
    assert counts["assets"] == 3
    assert counts["files"] == 3
    assert counts["counters"] >= 1

    rows = subprocess.run(
        [sqlite_utils_cli(), "query", db, "select image_uuid, size from assets"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = {r["image_uuid"] for r in json.loads(rows.stdout)}
    assert listed == {e.uuid for e in make_cache().entries()}
