"""The maintenance commands on a big cache: memory, time against a floor, size.

    python scripts/bench_scale.py [--entries 1000000] [--rounds 1] [--keep DIR]

Writes an export of ``--entries`` distinct entries (last uses spread over the
past 40 days, so some are expiring within a day and some are older than 35
days) and builds the database from it with ``assetcache import``, the public
path. Then it runs each maintenance command as a whole process (output to
/dev/null) and, side by side in the same run, alternating, a floor doing the
same work with no Python in the way:

- ``ls --json`` and ``export``: the ``sqlite3`` command-line tool printing the
  same rows in the same order (``-json``, resp. one ``json_object`` per line),
  read as assetcache reads them, through the ``asset_rows`` view (namespaces
  by name: the table holds their ids);
- ``import``: a Python process reading the same file and inserting its rows
  with one ``executemany`` into an empty database with the same schema;
- ``refresh --within 1d --dry-run``, ``prune --dry-run --older-than 35d``,
  ``stats``: ``sqlite3`` running the query that selects their rows (reported,
  no target).

Targets (``RATIO`` lines, exit 1 on a miss): each command's peak RSS at most
100 MiB above SQLite's 256 MiB mmap window (``peak_rss_over_mmap_mib``: the
largest peak, minus the window); ``ls --json`` at most 3x its floor, ``export``
2x, ``import`` 3x; the database at most 250 bytes per asset, indexes included.
Exits 2 when the ``sqlite3`` tool is missing.

``--keep DIR`` keeps the export and the database in DIR and reuses them (the
import is still timed, into a fresh copy, each round).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _benchlib import KEY, Report, alternate, median

MMAP_MIB = 256  # _storage._sqlite: PRAGMA mmap_size
DAY = 86400.0
SETUP = "apt-get install -y sqlite3"

_FLOOR_IMPORT = r"""
import json, sqlite3, sys
rows = []
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
cols = ("ns", "content_hash", "variant", "image_uuid", "size", "format",
        "uploaded_at", "last_used_at", "upload_count", "bytes_sent")
sql = f"INSERT INTO assets ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
ids = {}

def ns_id(name):
    if name not in ids:
        conn.execute("INSERT OR IGNORE INTO namespaces (name) VALUES (?)", (name,))
        ids[name] = conn.execute("SELECT id FROM namespaces WHERE name = ?", (name,)).fetchone()[0]
    return ids[name]

conn.execute("BEGIN")
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        o = json.loads(line)
        rows.append((ns_id(o["namespace"]), o["hash"], o["variant"], o["uuid"], o["size"],
                     o["format"], o["uploaded_at"], o["last_used_at"], o["upload_count"],
                     o["bytes_sent"]))
        if len(rows) >= 5000:
            conn.executemany(sql, rows)
            rows.clear()
conn.executemany(sql, rows)
conn.execute("COMMIT")
"""


def cli() -> list[str]:
    script = Path(sys.executable).with_name("assetcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "assetcache"]


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` to the end, output discarded: ``(seconds, peak RSS in MiB)``."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    # ``sys.exit(1)`` from refresh means "some could not be refreshed": expected here.
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[-4:])} failed ({proc.returncode}): {err.strip()[-500:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def namespace_of_key(tmp: Path) -> str:
    from assetcache import AssetCache

    with AssetCache(KEY, base_url="http://127.0.0.1:9/v1", db_path=tmp / "ns.db") as cache:
        return cache.namespace


def write_export(path: Path, n: int, namespace: str, now: float) -> None:
    """``n`` distinct entries as an ``assetcache export`` writes them."""
    rng = random.Random(7)
    with open(path, "w", encoding="utf-8") as fh:
        lines = []
        for i in range(n):
            used = now - rng.random() * 40 * DAY
            digest = f"{rng.getrandbits(128):032x}"
            uuid = f"{rng.getrandbits(128):032x}"
            uuid = f"{uuid[:8]}-{uuid[8:12]}-4{uuid[13:16]}-a{uuid[17:20]}-{uuid[20:]}"
            lines.append(
                f'{{"v":1,"namespace":"{namespace}","hash":"{digest}","variant":"",'
                f'"uuid":"{uuid}","size":{20000 + i % 5000},"format":"png",'
                f'"uploaded_at":{used - DAY:.3f},"last_used_at":{used:.3f},'
                f'"upload_count":1,"bytes_sent":{26700 + i % 5000}}}\n'
            )
            if len(lines) >= 10000:
                fh.write("".join(lines))
                lines.clear()
        fh.write("".join(lines))


def empty_db(path: Path) -> None:
    """A database with assetcache's schema and nothing in it."""
    from assetcache import AssetCache

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with AssetCache(KEY, base_url="http://127.0.0.1:9/v1", db_path=path):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1, help="side-by-side rounds per command")
    parser.add_argument("--keep", metavar="DIR", help="keep the export and database in DIR")
    args = parser.parse_args()
    sqlite3_tool = shutil.which("sqlite3")
    if sqlite3_tool is None:
        print(f"the sqlite3 command-line tool is missing (Debian/Ubuntu: {SETUP})", file=sys.stderr)
        sys.exit(2)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    report = Report()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["RUNWARE_API_KEY"] = KEY
    n = args.entries
    try:
        now = time.time()
        export, db = base / f"export-{n}.jsonl", base / f"cache-{n}.db"
        namespace = namespace_of_key(base)
        if not export.exists():
            started = time.perf_counter()
            write_export(export, n, namespace, now)
            print(f"wrote {n} entries in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        ac = [*cli(), "--api-url", "http://127.0.0.1:9/v1", "--db"]

        # import, against executemany of the same rows (each into a fresh database)
        fresh, floor_db = base / "import.db", base / "floor.db"

        def ours_import() -> tuple[float, float]:
            for p in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
                p.unlink(missing_ok=True)
            return run([*ac, str(fresh), "import", str(export)], env)

        def floor_import() -> tuple[float, float]:
            empty_db(floor_db)
            return run([sys.executable, "-c", _FLOOR_IMPORT, str(export), str(floor_db)], env)

        results: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {}
        results["import"] = side_by_side(args.rounds, ours_import, floor_import)
        if not db.exists():
            shutil.copy(fresh, db)
        size = sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())

        cols = (
            "namespace, content_hash, variant, image_uuid, size, format, uploaded_at, "
            "last_used_at, upload_count, hits, bytes_sent"
        )
        export_json = (
            "SELECT json_object('v', 1, 'namespace', namespace, 'hash', content_hash, "
            "'variant', variant, 'uuid', image_uuid, 'size', size, 'format', format, "
            "'uploaded_at', uploaded_at, 'last_used_at', last_used_at, "
            "'upload_count', upload_count, 'bytes_sent', bytes_sent) "
            "FROM asset_rows ORDER BY namespace, content_hash, variant"
        )
        window = 30 * DAY - 3600  # retention minus margin: only for the floor's row choice
        cases: list[tuple[str, list[str], list[str]]] = [
            (
                "ls_json",
                [*ac, str(db), "ls", "--json"],
                [
                    sqlite3_tool,
                    "-json",
                    str(db),
                    f"SELECT {cols} FROM asset_rows ORDER BY last_used_at, namespace, "
                    "content_hash, variant",
                ],
            ),
            ("export", [*ac, str(db), "export"], [sqlite3_tool, str(db), export_json]),
            (
                "refresh_dry_run",
                [*ac, str(db), "refresh", "--within", "1d", "--dry-run"],
                [
                    sqlite3_tool,
                    "-json",
                    str(db),
                    f"SELECT {cols} FROM asset_rows WHERE last_used_at > {now - 30 * DAY} AND "
                    f"last_used_at <= {now + DAY - window} ORDER BY last_used_at",
                ],
            ),
            (
                "prune_dry_run",
                [*ac, str(db), "prune", "--dry-run", "--older-than", "35d"],
                [
                    sqlite3_tool,
                    "-json",
                    str(db),
                    f"SELECT {cols} FROM asset_rows WHERE last_used_at <= {now - 35 * DAY} "
                    "ORDER BY last_used_at",
                ],
            ),
            (
                "stats",
                [*ac, str(db), "stats"],
                [sqlite3_tool, str(db), "SELECT count(*), sum(size) FROM assets"],
            ),
        ]
        for name, ours, floor in cases:
            results[name] = side_by_side(
                args.rounds, lambda c=ours: run(c, env), lambda c=floor: run(c, env)
            )

        print(f"{n} entries; database {size} bytes ({size / n:.0f} bytes per asset)")
        print(f"{'command':18} {'ours s':>8} {'floor s':>8} {'ratio':>6} {'peak RSS MiB':>13}")
        peak = 0.0
        for name, (mine, base_t) in results.items():
            ratio = median([a[0] / b[0] for a, b in zip(mine, base_t, strict=True)])
            rss = max(r for _, r in mine)
            peak = max(peak, rss)
            print(
                f"{name:18} {median([t for t, _ in mine]):8.2f} "
                f"{median([t for t, _ in base_t]):8.2f} {ratio:6.2f} {rss:13.0f}"
            )
            results[name] = (mine, base_t)
        report.ratio("peak_rss_over_mmap_mib", peak - MMAP_MIB, "<=", 100)
        for name, target in (("ls_json", 3.0), ("export", 2.0), ("import", 3.0)):
            mine, base_t = results[name]
            ratio = median([a[0] / b[0] for a, b in zip(mine, base_t, strict=True)])
            report.ratio(f"{name}_vs_floor", ratio, "<=", target)
        report.ratio("db_bytes_per_asset", size / n, "<=", 250)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    report.exit()


def side_by_side(
    rounds: int,
    ours: Callable[[], tuple[float, float]],
    floor: Callable[[], tuple[float, float]],
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Both, ``rounds`` times, alternating which goes first."""
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []

    def first() -> float:
        a.append(ours())
        return a[-1][0]

    def second() -> float:
        b.append(floor())
        return b[-1][0]

    alternate(max(1, rounds), first, second)
    return a, b


if __name__ == "__main__":
    main()
