"""Cold and warm batches against a naive one-image-per-request loop.

    python scripts/bench_upload.py [--images 1000] [--latency 0.05]

1,000 distinct ~20 KB PNGs; the emulator (a separate process on 127.0.0.1)
waits 50 ms before each answer, like a network round trip. Measured in one
run: (a) a sequential loop posting one image per request with httpx, the way
today's SDKs work; (b) ``resolve_many`` on a cold cache; (c) the same call on
the warm cache. (b) and (c) run ``--runs`` times (3), each pair on a new cache,
and their medians are compared: on a shared machine one batch of half a second
can be slowed a third by a neighbour, where the naive loop's minute averages it
out. Prints ``RATIO`` lines and exits 1 when a target is missed:
(b) at least 100x faster than (a), (c) at least 1,000x faster than (a), and
the emulator receives exactly N uploads in (b) and none in (c).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _benchlib import KEY, count_line, emulator_stats, ratio_line, start_emulator, write_images

from assetcache import AssetCache


def uploads(url: str) -> int:
    return int(emulator_stats(url)["upload_count"])


def naive(url: str, files: list[Path]) -> list[str]:
    """What the SDKs do: one request per image, one after another."""
    out = []
    with httpx.Client(timeout=60) as client:
        for path in files:
            data = path.read_bytes()
            task = {
                "taskType": "imageUpload",
                "taskUUID": str(uuid.uuid4()),
                "image": "data:image/png;base64," + base64.b64encode(data).decode(),
            }
            resp = client.post(url, json=[task], headers={"Authorization": f"Bearer {KEY}"})
            out.append(resp.json()["data"][0]["imageUUID"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument(
        "--runs", type=int, default=3, help="cold and warm batches, each on a new cache (median)"
    )
    args = parser.parse_args()

    proc, url = start_emulator(args.latency)
    failures = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_images(Path(tmp, "images"), args.images)
            size = sum(p.stat().st_size for p in files) / len(files)
            latency_ms = args.latency * 1000
            print(
                f"{len(files)} images of {size / 1024:.1f} KB, emulator latency {latency_ms:.0f} ms"
            )

            before = uploads(url)
            t0 = time.perf_counter()
            naive(url, files)
            t_naive = time.perf_counter() - t0
            naive_uploads = uploads(url) - before

            colds: list[float] = []
            warms: list[float] = []
            cold_counts: list[int] = []
            warm_counts: list[int] = []
            failed: list = []
            hits: list[int] = []
            for run in range(args.runs):  # each on a new cache: the same cold batch again
                with AssetCache(KEY, base_url=url, db_path=Path(tmp, f"cache{run}.db")) as cache:
                    before = uploads(url)
                    t0 = time.perf_counter()
                    cold = cache.resolve_many(files)
                    colds.append(time.perf_counter() - t0)
                    cold_counts.append(uploads(url) - before)
                    failed += [r for r in cold if r.error]

                    before = uploads(url)
                    t0 = time.perf_counter()
                    warm = cache.resolve_many(files)
                    warms.append(time.perf_counter() - t0)
                    warm_counts.append(uploads(url) - before)
                    hits.append(sum(r.outcome == "hit" for r in warm))
            t_cold, t_warm = statistics.median(colds), statistics.median(warms)
            # Exactly N uploads in every cold run and none in every warm one.
            cold_uploads = next((c for c in cold_counts if c != len(files)), len(files))
            warm_uploads = next((c for c in warm_counts if c != 0), 0)
            runs = ", ".join(f"{t:.3f}" for t in colds)
            print(f"cold runs (s): {runs}; the median is compared")

            print(f"(a) naive sequential: {t_naive:8.3f} s  {naive_uploads} uploads")
            print(
                f"(b) cold resolve_many: {t_cold:7.3f} s  {cold_uploads} uploads  "
                f"{len(failed)} failed"
            )
            print(
                f"(c) warm resolve_many: {t_warm:7.4f} s  {warm_uploads} uploads  {min(hits)} hits"
            )
            oks = [
                ratio_line("cold_vs_naive", t_naive / t_cold, ">=", 100.0),
                ratio_line("warm_vs_naive", t_naive / t_warm, ">=", 1000.0),
                count_line("cold_uploads", cold_uploads, len(files)),
                count_line("warm_uploads", warm_uploads, 0),
            ]
            failures += oks.count(False)
            if failed:
                print(json.dumps([str(r.error) for r in failed[:5]]))
                failures += 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
