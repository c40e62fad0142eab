"""The task path: what ``cache.run`` costs on a warm task, and what it saves on the wire.

    python scripts/bench_task.py [--calls 2000] [--rounds 15]

1. ``task_overhead_vs_hits``: a task holding 4 local images (seedImage and
   three referenceImages, files aged past the racy window) is run warm with
   ``cache.run(task, send)`` where ``send`` only JSON-encodes the task (no
   network: the emulator is stopped, so a miss would fail). The other side
   does by hand what the cache saves a user from writing: four warm
   ``get_uuid`` hits, then the same JSON encoding of the task with those
   UUIDs. Sides alternate each round; the ratio is the median of the
   per-round ratios. Target: at most 1.5x.
2. ``bytes_sdk_inline_vs_cached``: the WebSocket SDK (``runware`` 0.5.24, in
   its own environment ``.venv-sdk/runware``, built by ``.ci/sdk-envs``) runs
   the same task alone, inlining the four files as base64 on every call, and
   wrapped by ``assetcache.runware.wrap`` (warm: UUIDs only). Bytes are the
   WebSocket messages the emulator received for one call. Target: at least 10x.
   Without that environment the line says why it was not measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import KEY, EmulatorProcess, Report, alternate, median, write_images

from assetcache import AssetCache

ROOT = Path(__file__).resolve().parent.parent
TARGET_OVERHEAD = 1.5
TARGET_BYTES = 10.0


def task_for(images: list[str]) -> dict:
    return {
        "taskType": "imageInference",
        "taskUUID": "0b7e4c55-9d1e-4f0a-8c1b-2e445d1f9c62",
        "model": "runware:100@1",
        "positivePrompt": "a lighthouse at dusk",
        "width": 1024,
        "height": 1024,
        "steps": 28,
        "seedImage": images[0],
        "strength": 0.7,
        "referenceImages": images[1:4],
    }


def overhead(report: Report, calls: int, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-task-"))
    try:
        paths = [str(p) for p in write_images(tmp / "images", 4)]
        time.sleep(2.2)  # past the racy window: stat data alone vouches for each file
        task = task_for(paths)
        with EmulatorProcess() as emu:
            cache = AssetCache(KEY, base_url=emu.url, db_path=tmp / "cache.db")
            sent = cache.run(task, lambda t: t)
        if sent["seedImage"] == paths[0]:
            raise SystemExit("the warm-up did not rewrite the task")
        # The emulator is gone: a miss would now fail, so every call below is warm.
        dumps, get_uuid, run = json.dumps, cache.get_uuid, cache.run

        def send(t: dict) -> bytes:
            return dumps([t]).encode()

        def ours() -> float:
            started = time.perf_counter()
            for _ in range(calls):
                run(task, send)
            return time.perf_counter() - started

        def by_hand() -> float:
            started = time.perf_counter()
            for _ in range(calls):
                uuids = [get_uuid(p) for p in paths]
                send({**task, "seedImage": uuids[0], "referenceImages": uuids[1:]})
            return time.perf_counter() - started

        if cache.run(task, send) != send(sent):
            raise SystemExit("run() and the hand-written path disagree")
        ours(), by_hand()  # warm: page cache, statement caches
        ours_t, hand_t = alternate(rounds, ours, by_hand)
        print(
            f"warm task of 4 local images: run {median(ours_t) / calls * 1e6:.1f} us, "
            f"4 hits + JSON {median(hand_t) / calls * 1e6:.1f} us per task; median of "
            f"{rounds} rounds of {calls}"
        )
        ratios = [a / b for a, b in zip(ours_t, hand_t, strict=True)]
        report.ratio("task_overhead_vs_hits", median(ratios), "<=", TARGET_OVERHEAD)
        cache.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sdk_bytes(report: Report) -> None:
    python = ROOT / ".venv-sdk" / "runware" / "bin" / "python"
    if not python.exists():
        print(
            "RATIO bytes_sdk_inline_vs_cached not measured: no .venv-sdk/runware "
            "(run .ci/sdk-envs to build the WebSocket SDK's environment)"
        )
        return
    result = subprocess.run(
        [str(python), str(Path(__file__).with_name("_bench_task_sdk.py"))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise SystemExit(f"the SDK side failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    got = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"WebSocket SDK, one call with 4 local images: {got['inline']} bytes sent alone "
        f"(inlined base64), {got['cached']} bytes wrapped (warm, UUIDs only)"
    )
    report.ratio(
        "bytes_sdk_inline_vs_cached", got["inline"] / max(1, got["cached"]), ">=", TARGET_BYTES
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    report = Report()
    overhead(report, args.calls, args.rounds)
    sdk_bytes(report)
    report.exit()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
