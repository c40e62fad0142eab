"""Chaos run: 1,000 files against an emulator that faults on 30% of requests.

    python scripts/chaos.py [--files 1000] [--fault-rate 0.3] [--seed 1] [--timeout 1.0]
                            [--batch-size N]

Every fault kind the emulator knows is drawn at random (500, 503, 429 with
Retry-After, dropped connections before and after processing, answers slower
than the client timeout, non-JSON bodies, 200 with empty data, results without
an imageUUID, with a malformed one, with a foreign taskUUID). The cache runs
with its default retry policy (8 attempts, exponential backoff with jitter,
real sleeping), except the request timeout, which is shortened so that the
``slow`` fault exceeds it without a minute's wait. ``--batch-size 1`` sends
one task per request: many more requests, so many more faults.

Prints uploads, retries, failures and the faults injected, then checks that
nothing was lost: every file cached, every cached UUID held by the emulator
for exactly that file's bytes, and a second pass uploading nothing. Exits 1
if any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _benchlib import KEY, write_images

from assetcache import AssetCache, RetryPolicy
from assetcache.emulator import FAULT_KINDS, Emulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="client request timeout; the slow fault takes 2 s more",
    )
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After sent with 429")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tasks per request (default: the cache's default, 16)",
    )
    args = parser.parse_args()

    kinds = sorted(FAULT_KINDS)
    seen: Counter[str] = Counter()
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Emulator(
            api_key=KEY,
            fault_rate=args.fault_rate,
            fault_kinds=kinds,
            seed=args.seed,
            retry_after=args.retry_after,
            slow_seconds=args.timeout + 2.0,
        ) as emu,
    ):
        real_pick = emu._faults.pick

        def pick() -> str | None:
            kind = real_pick()
            if kind is not None:
                seen[kind] += 1
            return kind

        emu._faults.pick = pick  # type: ignore[method-assign]
        files = write_images(Path(tmp, "images"), args.files)
        print(
            f"{len(files)} files, {args.fault_rate:.0%} of requests faulty "
            f"({len(kinds)} kinds), client timeout {args.timeout} s, default retry policy"
        )

        with AssetCache(
            KEY,
            base_url=emu.base_url,
            db_path=Path(tmp, "cache.db"),
            clock=emu.clock,
            retry=RetryPolicy(timeout=args.timeout),
            **({"batch_size": args.batch_size} if args.batch_size else {}),
        ) as cache:
            started = time.perf_counter()
            results = cache.resolve_many(files)
            elapsed = time.perf_counter() - started
            stats = cache.stats()
            failed = [r for r in results if r.error is not None]
            print(
                f"first pass: {elapsed:.1f} s, {emu.request_count} requests, "
                f"{emu.fault_count} faulty"
            )
            print(f"uploads {stats.uploads}  retries {stats.retries}  failures {len(failed)}")
            print("faults injected: " + ", ".join(f"{k} {seen[k]}" for k in kinds))
            for r in failed[:10]:
                problems.append(f"failed: {r.source}: {r.error}")

            rows = cache._engine.store.read("SELECT content_hash, image_uuid FROM assets")
            by_hash = dict(rows)
            wrong = 0
            for path, res in zip(files, results, strict=True):
                if res.error is not None:
                    continue
                held = emu.image(by_hash.get(res.content_hash, ""))
                if held is None or held.sha256 != hashlib.sha256(path.read_bytes()).hexdigest():
                    wrong += 1
            orphans = emu.upload_count - len(rows)
            print(
                f"cached {len(rows)}  held by the emulator for the right bytes "
                f"{len(rows) - wrong}  server-side orphans (uploads the client never "
                f"learnt of) {orphans}"
            )
            if len(rows) != len(files):
                problems.append(f"{len(files) - len(rows)} file(s) not cached")
            if wrong:
                problems.append(f"{wrong} cached UUID(s) not held for the right content")

            before = emu.upload_count
            again = cache.resolve_many(files)
            resent = emu.upload_count - before
            hits = sum(r.outcome == "hit" for r in again)
            print(f"second pass: {hits} hits, {resent} uploads")
            if resent or hits != len(files):
                problems.append(f"second pass uploaded {resent}, hit {hits} of {len(files)}")

    for line in problems:
        print("PROBLEM", line)
    print("lost: nothing" if not problems else f"lost: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
