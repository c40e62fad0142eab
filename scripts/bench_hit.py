"""Warm hits: ``cache.get_uuid(path)`` against the floor of a stat-cache lookup.

    python scripts/bench_hit.py [--files 5000] [--rounds 15]

``--files`` small distinct PNGs are written, left to age past the racy window
(2 s; a file hashed sooner is re-read on every lookup, by design), then
uploaded once to the emulator (a separate process on 127.0.0.1), which is
then stopped: from there on every call must be a hit. Each round times one
pass of ``get_uuid`` over all files and one pass of the floor, measured in
this process with the standard ``sqlite3`` module on its own connection:
``os.stat(path)`` plus the one indexed SELECT joining the file's stat row to
its asset row (the statement the cache issues, so resizing on or off is
compared like for like). Sides alternate; the ratio is the median of the
per-round ratios. Target: at most 2.0x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from _benchlib import KEY, EmulatorProcess, Report, alternate, median, png

from assetcache import AssetCache
from assetcache._storage._sqlite import SQLiteStore

TARGET = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-hit-"))
    report = Report()
    try:
        paths = []
        for i in range(args.files):
            path = tmp / "images" / f"{i // 1000:02d}" / f"img{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(i))
            paths.append(str(path))
        time.sleep(2.2)  # past the racy window: stat data alone may now vouch for each file
        db = tmp / "cache.db"
        with EmulatorProcess() as emu:
            cache = AssetCache(KEY, base_url=emu.url, db_path=db)
            uuids = [r.uuid for r in cache.resolve_many(paths)]
        if None in uuids:
            raise SystemExit("could not fill the cache")
        # The emulator is gone: a miss would now fail, so every answer below is a hit.
        if [cache.get_uuid(p) for p in paths] != uuids:
            raise SystemExit("warm lookups disagree with the uploads")

        engine = cache._engine
        sql, prefix = SQLiteStore.HIT_SQL, (engine.namespace, engine.fit_variant)
        if engine.fit_variant and engine.max_side:
            sql = SQLiteStore.FIT_HIT_SQL
            prefix = (engine.namespace, engine.fit_variant, engine.max_side, engine.fit_variant)
        conn = sqlite3.connect(db, isolation_level=None)
        stat, fsencode, execute = os.stat, os.fsencode, conn.execute

        def floor() -> float:
            started = time.perf_counter()
            for p in paths:
                stat(p)
                execute(sql, (*prefix, fsencode(p))).fetchone()
            return time.perf_counter() - started

        get_uuid = cache.get_uuid

        def ours() -> float:
            started = time.perf_counter()
            for p in paths:
                get_uuid(p)
            return time.perf_counter() - started

        floor(), ours()  # warm: page cache, statement caches
        ours_t, floor_t = alternate(args.rounds, ours, floor)
        n = len(paths)
        print(
            f"warm hit: get_uuid {median(ours_t) / n * 1e6:.2f} us, floor (stat + SELECT) "
            f"{median(floor_t) / n * 1e6:.2f} us per call; median of {args.rounds} rounds "
            f"of {n} calls"
        )
        ratios = [a / b for a, b in zip(ours_t, floor_t, strict=True)]
        report.ratio("warm_hit_vs_floor", median(ratios), "<=", TARGET)
        cache.close()
        conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.exit()


if __name__ == "__main__":
    main()
