"""Cold hashing: the cache's own hashing path against ``xxh128sum``.

    python scripts/bench_hash.py [--files 4] [--mib 256] [--rounds 7]

Writes ``--files`` valid PNGs of ``--mib`` MiB each (random bytes in an
ancillary chunk), reads them once so both sides find them in the page cache,
then alternates ``xxh128sum FILES`` (Debian/Ubuntu package ``xxhash``, run as
a process) with ``cache.preview(FILES)`` on a fresh cache: the public call
that hashes and validates inputs exactly as an upload does (``_Engine.prepare``
on the cache's hashing threads) but sends and records nothing, so every round
hashes from scratch. Both must agree on every digest. Target: the cache's
throughput at least 0.9x xxh128sum's. Exit 1 when missed, 2 without xxh128sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _benchlib import KEY, Report, alternate, median, write_big_png

from assetcache import AssetCache

TARGET = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256, help="size of each file")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    tool = shutil.which("xxh128sum")
    if tool is None:
        print(
            "xxh128sum not found: install it (Debian/Ubuntu: apt-get install xxhash)",
            file=sys.stderr,
        )
        sys.exit(2)

    tmp = Path(tempfile.mkdtemp(prefix="bench-hash-"))
    report = Report()
    try:
        files = []
        for i in range(args.files):
            path = tmp / f"big{i}.png"
            write_big_png(path, i, args.mib << 20)
            files.append(str(path))
        total = sum(os.path.getsize(f) for f in files)

        def theirs() -> tuple[float, dict[str, str]]:
            started = time.perf_counter()
            out = subprocess.run([tool, *files], capture_output=True, text=True, check=True)
            elapsed = time.perf_counter() - started
            digests = {}
            for line in out.stdout.splitlines():
                digest, name = line.split(maxsplit=1)
                digests[name] = digest
            return elapsed, digests

        with AssetCache(KEY, base_url="http://127.0.0.1:9/v1", db_path=tmp / "cache.db") as cache:

            def ours() -> tuple[float, dict[str, str]]:
                started = time.perf_counter()
                results = cache.preview(files)
                elapsed = time.perf_counter() - started
                bad = [r for r in results if r.error is not None]
                if bad:
                    raise SystemExit(f"the cache could not hash {bad[0].source}: {bad[0].error}")
                return elapsed, {r.source: r.content_hash or "" for r in results}

            (_, want), (_, got) = theirs(), ours()  # also warms the page cache
            if got != want:
                raise SystemExit(f"digests differ: xxh128sum {want} vs the cache {got}")

            def checked(side: Callable[[], tuple[float, dict[str, str]]]) -> float:
                elapsed, digests = side()
                if digests != want:  # every round really hashed every byte
                    raise SystemExit(f"digests changed between rounds: {digests}")
                return elapsed

            ours_t, theirs_t = alternate(
                args.rounds, lambda: checked(ours), lambda: checked(theirs)
            )
        gb = total / 1e9
        print(
            f"hashing {args.files} x {args.mib} MiB (page-cached): the cache "
            f"{gb / median(ours_t):.2f} GB/s, xxh128sum {gb / median(theirs_t):.2f} GB/s "
            f"(medians of {args.rounds}; {cache._engine.hash_workers} hashing threads)"
        )
        ratios = [t / o for o, t in zip(ours_t, theirs_t, strict=True)]
        report.ratio("hash_throughput_vs_xxh128sum", median(ratios), ">=", TARGET)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.exit()


if __name__ == "__main__":
    main()
