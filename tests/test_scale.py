"""Maintenance at scale: 100,000 entries in bounded memory, work kept in chunks.

Memory is measured as the peak RSS of each command run as its own process
(``os.wait4``), never timed. Before the commands streamed, ``ls --json`` on
100,000 entries peaked near 450 MiB and ``export`` near 100 MiB; streaming,
each stays near the interpreter's own size whatever the number of entries.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assetcache import AssetCache

N = 100_000
DAY = 86400.0
#: Peak RSS allowed to any command (the interpreter, click and SQLite take
#: about 30 MiB; SQLite's page cache and mmap of this 37 MB database add at
#: most their size). A listing held in memory takes several times this.
BOUND_MIB = 120

pytestmark = pytest.mark.skipif(
    not hasattr(os, "wait4"), reason="peak RSS per process needs os.wait4 (POSIX)"
)

KEY = "scale-test-key"
URL = "http://127.0.0.1:9/v1"  # never contacted: every command here stays local


def write_export(path: Path, n: int, namespace: str, now: float) -> None:
    rng = random.Random(3)
    lines = []
    for i in range(n):
        used = now - rng.random() * 40 * DAY
        digest = f"{rng.getrandbits(128):032x}"
        u = f"{rng.getrandbits(128):032x}"
        lines.append(
            json.dumps(
                {
                    "v": 1,
                    "namespace": namespace,
                    "hash": digest,
                    "variant": "",
                    "uuid": f"{u[:8]}-{u[8:12]}-4{u[13:16]}-a{u[17:20]}-{u[20:]}",
                    "size": 1000 + i % 500,
                    "format": "png",
                    "uploaded_at": used - DAY,
                    "last_used_at": used,
                    "upload_count": 1,
                    "bytes_sent": 1400 + i % 500,
                },
                separators=(",", ":"),
            )
        )
    path.write_text("\n".join(lines) + "\n")


#: Runs the command from a small interpreter and reports its peak RSS: a child
#: forked straight from this (big) test process would count its parent's pages.
_MEASURE = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run(db: Path, *args: str, out: Path | None = None) -> tuple[int, float]:
    """``assetcache --db DB ARGS`` in its own process: ``(exit code, peak RSS MiB)``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["RUNWARE_API_KEY"] = KEY
    result = db.with_name("measured.txt")
    cmd = [sys.executable, "-m", "assetcache", "--api-url", URL, "--db", str(db), *args]
    with open(out or os.devnull, "wb") as sink:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(result), *cmd],
            stdout=sink,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    code_text, kib = result.read_text().split()
    code = int(code_text)
    assert code in (0, 1), done.stderr.decode(errors="replace")[-2000:]
    return code, int(kib) / 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    base = tmp_path_factory.mktemp("scale")
    db = base / "cache.db"
    with AssetCache(KEY, base_url=URL, db_path=db) as cache:
        namespace = cache.namespace
        now = cache.now()
    export = base / "export.jsonl"
    write_export(export, N, namespace, now)
    return base, export, now


def test_import_then_every_listing_stays_in_bounded_memory(big) -> None:
    base, export, now = big
    db = base / "cache.db"
    code, rss = run(db, "import", str(export))
    assert code == 0 and rss < BOUND_MIB, f"import: {rss:.0f} MiB"

    listing = base / "ls.json"
    code, rss = run(db, "ls", "--json", out=listing)
    assert code == 0 and rss < BOUND_MIB, f"ls --json: {rss:.0f} MiB"
    entries = json.loads(listing.read_text())
    assert len(entries) == N
    # Soonest to expire first, each entry once.
    uses = [e["last_used_at"] for e in entries]
    assert uses == sorted(uses) and len({e["hash"] for e in entries}) == N

    dumped = base / "export-again.jsonl"
    code, rss = run(db, "export", out=dumped)
    assert code == 0 and rss < BOUND_MIB, f"export: {rss:.0f} MiB"
    again = [json.loads(line) for line in dumped.read_text().splitlines()]
    original = [json.loads(line) for line in export.read_text().splitlines()]
    key = lambda o: (o["namespace"], o["hash"], o["variant"])  # noqa: E731
    assert again == sorted(original, key=key)  # the same values, exactly, by key

    code, rss = run(db, "ls", "--jsonl", out=base / "ls.jsonl")
    assert code == 0 and rss < BOUND_MIB, f"ls --jsonl: {rss:.0f} MiB"
    with open(base / "ls.jsonl") as fh:
        assert sum(1 for _ in fh) == N

    code, rss = run(db, "refresh", "--within", "1d", "--dry-run", "--json", out=base / "r.json")
    assert rss < BOUND_MIB, f"refresh --dry-run: {rss:.0f} MiB"
    report = json.loads((base / "r.json").read_text())
    # No file is known for any entry: each candidate is "content-gone" (exit 1).
    assert (
        code == 1 and report["items"] and report["summary"]["content-gone"] == len(report["items"])
    )

    code, rss = run(db, "prune", "--dry-run", "--older-than", "35d", "--json", out=base / "p.json")
    assert code == 0 and rss < BOUND_MIB, f"prune --dry-run: {rss:.0f} MiB"
    later = time.time()
    pruned = json.loads((base / "p.json").read_text())
    # Exactly the entries last used 35 days before the moment prune ran (between
    # the fixture's clock and now).
    at_least = sum(1 for o in original if o["last_used_at"] <= now - 35 * DAY)
    at_most = sum(1 for o in original if o["last_used_at"] <= later - 35 * DAY)
    n = len(pruned["entries"])
    assert 0 < at_least <= n <= at_most < N and pruned["summary"]["entries"] == n


def test_prune_works_in_committed_chunks_and_a_rerun_resumes(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    with AssetCache(KEY, base_url=URL, db_path=db) as cache:
        namespace, now = cache.namespace, cache.now()
    export = tmp_path / "export.jsonl"
    write_export(export, 20000, namespace, now)
    with AssetCache(KEY, base_url=URL, db_path=db) as cache:
        assert cache.import_entries(export.read_text().splitlines()).added == 20000
        old = sum(1 for e in cache.entries() if e.last_used_at <= now - 35 * DAY)
        assert old > 2000  # more than one page
        # Stopped after the first page: what it dropped stays dropped.
        items = cache.prune_items(35 * DAY)
        first = [next(items) for _ in range(10)]
        items.close()
        left = sum(1 for e in cache.entries() if e.last_used_at <= now - 35 * DAY)
        assert len(first) == 10 and 0 < left < old
        # A second run carries on with the rest.
        report = cache.prune(35 * DAY)
        assert len(report.entries) == left
        assert not [e for e in cache.entries() if e.last_used_at <= now - 35 * DAY]


def test_a_dry_run_refresh_keeps_nothing_per_entry(tmp_path: Path) -> None:
    # 30,000 candidates, every one content-gone: the dry run prints each as it
    # goes and keeps none of them (a run that saves the log of gone entries
    # keeps a short key each). Python's own allocations are traced: not timed.
    import tracemalloc

    from click.testing import CliRunner

    from assetcache._cli import cli

    db = tmp_path / "cache.db"
    with AssetCache(KEY, base_url=URL, db_path=db) as cache:
        namespace, now = cache.namespace, cache.now()
    export = tmp_path / "export.jsonl"
    write_export(export, 30_000, namespace, now)
    lines = []
    for line in export.read_text().splitlines():  # all due within the day to come
        entry = json.loads(line)
        entry["last_used_at"] = now - 28.2 * DAY - (entry["last_used_at"] % 1000) * 50
        entry["uploaded_at"] = entry["last_used_at"] - DAY
        lines.append(json.dumps(entry))
    with AssetCache(KEY, base_url=URL, db_path=db) as cache:
        assert cache.import_entries(lines).added == 30_000
    runner = CliRunner()
    args = ["--api-url", URL, "--db", str(db), "refresh", "--within", "1d", "--dry-run"]
    tracemalloc.start()
    try:
        result = runner.invoke(cli, args, env={"RUNWARE_API_KEY": KEY})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("content-gone\t")]
    assert len(lines) > 20_000
    # About 10 MiB, most of it the output the runner captures; keeping each
    # entry's report (as before) took 20 MiB.
    assert peak < 14 << 20, f"{peak / 2**20:.1f} MiB of Python objects at the peak"
