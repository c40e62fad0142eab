"""A fleet of hosts sharing one registry on PostgreSQL, against per-host SQLite.

    ASSETCACHE_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
        python scripts/bench_fleet.py [--images 1000] [--hosts 4] [--workers 4]

4 simulated hosts (each its own local SQLite file) x 4 worker processes each
resolve the same 1,000 images against one emulator (50 ms latency, its own
process) and, in the fleet run, one PostgreSQL. The same run with per-host
SQLite only uploads every image once per host. Then the warm-hit cost
(``get_uuid(path)`` on unchanged cached files) in fleet mode against the
SQLite-only warm hit, in one process, interleaved.

Then the registry's cold-miss cost (look up, peek, claim, release a key no
host has: what a miss costs before its upload) against a registry of 300,000
rows and one of 1,000, interleaved in one run: every lookup uses an index, so
the big one costs at most 2x (``--cold-only`` runs only this part).

Targets: exactly N uploads in the fleet run (N x hosts with per-host SQLite),
a warm hit at most 1.5x the SQLite-only one, a cold miss at 300k rows at most
2x the one at 1k.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _benchlib import KEY, count_line, emulator_stats, ratio_line, start_emulator, write_images

from assetcache import AssetCache

WORKER = """
import json, random, sys
from assetcache import AssetCache
url, db, local, seed = sys.argv[1:5]
files = json.loads(sys.stdin.readline())
random.Random(int(seed)).shuffle(files)
kw = {"local_db": local} if db.startswith("postgresql") else {}
with AssetCache(sys.argv[5], base_url=url, db_path=db, **kw) as cache:
    print("ready", flush=True)
    sys.stdin.readline()
    results = cache.resolve_many(files)
print(json.dumps({"failed": sum(1 for r in results if r.error)}))
"""


def run_fleet(
    url: str, files: list[str], hosts: int, workers: int, db_for_host
) -> tuple[float, int]:
    """Start hosts x workers processes together; (wall seconds, failed items)."""
    procs = []
    for h in range(hosts):
        db, local = db_for_host(h)
        for w in range(workers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, url, db, local, str(h * 100 + w), KEY],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
    for p in procs:
        p.stdin.write(json.dumps(files) + "\n")
        p.stdin.flush()
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit("a worker failed to start")
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    failed = 0
    for p in procs:
        out, _ = p.communicate(timeout=600)
        failed += json.loads(out)["failed"]
    return time.perf_counter() - t0, failed


def warm_hit_cost(cache: AssetCache, files: list[str]) -> float:
    t0 = time.perf_counter()
    for path in files:
        cache.get_uuid(path)
    return (time.perf_counter() - t0) / len(files)


def cold_miss_ratio(pg: str, big: int = 300_000, small: int = 1_000, rounds: int = 300) -> bool:
    """RATIO of a cold miss's registry cost at ``big`` rows to ``small`` rows."""
    import psycopg

    from assetcache._storage._postgres import PostgresRegistry

    schemas = {n: f"bench_{n}_{uuid.uuid4().hex[:8]}" for n in (small, big)}
    regs = {}
    try:
        for n, name in schemas.items():
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {name}")
            url = f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{name}"
            regs[n] = PostgresRegistry(url)
            with psycopg.connect(pg, autocommit=True) as conn:
                # Several namespaces and variants, as a real fleet's registry holds.
                conn.execute(
                    f"INSERT INTO {name}.assetcache_assets (namespace, content_hash, variant, "
                    "image_uuid, size, format, uploaded_at, last_used_at) "
                    "SELECT 'ns' || (i %% 7), md5(i::text), CASE WHEN i %% 5 = 0 THEN 'fit' "
                    "ELSE '' END, md5('u' || i), 1000, 'png', 1, extract(epoch FROM now()) "
                    "FROM generate_series(1, %s) AS i",
                    (n,),
                )
                conn.execute(f"ANALYZE {name}.assetcache_assets")
        owner = "bench:1:aa"
        costs: dict[int, list[float]] = {small: [], big: []}
        for r in range(rounds):
            for n in (small, big) if r % 2 else (big, small):
                key = ("ns3", uuid.uuid4().hex, "")
                reg = regs[n]
                now = time.time()
                t0 = time.perf_counter()
                reg.get_assets([key])
                reg.peek([key], owner, now, 0.0)
                reg.claim([key], owner, now, 300.0, 0.0)
                reg.release([key], owner)
                costs[n].append(time.perf_counter() - t0)
        s_med, b_med = statistics.median(costs[small]), statistics.median(costs[big])
        print(
            f"cold miss (registry round trips): {small} rows {s_med * 1e3:.2f} ms, "
            f"{big} rows {b_med * 1e3:.2f} ms"
        )
        return ratio_line(f"cold_miss_{big // 1000}k_vs_{small // 1000}k", b_med / s_med, "<=", 2)
    finally:
        for reg in regs.values():
            reg.close()
        with psycopg.connect(pg, autocommit=True) as conn:
            for name in schemas.values():
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--cold-only", action="store_true", help="only the cold-miss ratio")
    args = parser.parse_args()
    pg = os.environ.get("ASSETCACHE_TEST_POSTGRES")
    if not pg:
        print(
            "set ASSETCACHE_TEST_POSTGRES=postgresql://user@127.0.0.1:5432/db (a database the "
            "benchmark may create a schema in)",
            file=sys.stderr,
        )
        return 2
    import psycopg

    if args.cold_only:
        return 0 if cold_miss_ratio(pg) else 1
    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    shared = f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}"
    proc, url = start_emulator(args.latency)
    ok = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = [str(p) for p in write_images(Path(tmp, "images"), args.images)]
            time.sleep(2.1)  # let the files age past the racy window before they are hashed
            print(
                f"{args.hosts} hosts x {args.workers} workers, {len(files)} images, "
                f"emulator latency {args.latency * 1000:.0f} ms"
            )

            before = emulator_stats(url)["upload_count"]
            t_fleet, failed = run_fleet(
                url,
                files,
                args.hosts,
                args.workers,
                lambda h: (shared, str(Path(tmp, f"fleet-host{h}.db"))),
            )
            stats = emulator_stats(url)
            fleet_uploads = stats["upload_count"] - before
            with psycopg.connect(pg, autocommit=True) as conn:
                retries = conn.execute(
                    f"SELECT coalesce(sum(value), 0) FROM {schema}.assetcache_counters "
                    "WHERE name = 'retries'"
                ).fetchone()[0]
            twice = [h for h, n in stats["uploads_by_sha256"].items() if n > 1]
            print(
                f"fleet (PostgreSQL):  {t_fleet:7.2f} s  {fleet_uploads} uploads  {failed} failed  "
                f"{retries} retried requests  {len(twice)} contents uploaded twice"
            )

            before = emulator_stats(url)["upload_count"]
            t_local, failed_local = run_fleet(
                url,
                files,
                args.hosts,
                args.workers,
                lambda h: (str(Path(tmp, f"solo-host{h}.db")), ""),
            )
            local_uploads = emulator_stats(url)["upload_count"] - before
            print(
                f"per-host SQLite:     {t_local:7.2f} s  {local_uploads} uploads  "
                f"{failed_local} failed"
            )
            print(f"wall time fleet / per-host: {t_fleet / t_local:.2f}")

            sample = files[: min(2000, len(files))]
            with (
                AssetCache(
                    KEY, base_url=url, db_path=shared, local_db=Path(tmp, "fleet-host0.db")
                ) as fleet,
                AssetCache(KEY, base_url=url, db_path=Path(tmp, "solo-host0.db")) as solo,
            ):
                for cache in (fleet, solo):  # warm both (re-verifies any racy rows)
                    warm_hit_cost(cache, sample)
                fleet_t, solo_t = [], []
                for _ in range(7):
                    fleet_t.append(warm_hit_cost(fleet, sample))
                    solo_t.append(warm_hit_cost(solo, sample))
            f_med, s_med = statistics.median(fleet_t), statistics.median(solo_t)
            print(
                f"warm hit: fleet {f_med * 1e6:.1f} us, SQLite-only {s_med * 1e6:.1f} us per call"
            )
            ok += [
                count_line("fleet_uploads", fleet_uploads, len(files)),
                count_line("per_host_uploads", local_uploads, len(files) * args.hosts),
                count_line("failed", failed + failed_local, 0),
                ratio_line("warm_hit_fleet_vs_sqlite", f_med / s_med, "<=", 1.5),
            ]
            ok.append(cold_miss_ratio(pg))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
