"""What the proxy costs on a task it passes through, and saves on a repeated upload.

    python scripts/bench_proxy.py [--rounds 15] [--latency 0.05]

The emulator (its own process on 127.0.0.1) waits 50 ms before each answer,
like a network round trip; the proxy runs in a process of its own in front of
it. Measured side by side, rounds alternating:

- an ``imageInference`` task with no inline image, sent directly and through
  the proxy (which passes it on): ``RATIO proxy_overhead_vs_direct``, target
  <= 1.1;
- an ``imageUpload`` of an image the cache already holds (about 20 KB, the
  size bench_upload.py uses), sent directly (the server stores it again) and
  through the proxy (answered from the cache): ``RATIO cached_upload_vs_direct``
  (direct time / proxy time), target >= 20. The same for a 250 KB image is
  printed too (no target: the client's own JSON and loopback copy of the
  body grow with it on both sides).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _benchlib import KEY, Report, alternate, emulator_stats, median, noisy_png, start_emulator

PROXY = (
    "import sys\n"
    "from assetcache import Proxy\n"
    "def ready(p):\n"
    "    print('listening on ' + p.base_url, flush=True)\n"
    "Proxy(upstream=sys.argv[1], db_path=sys.argv[2]).serve_forever(ready)\n"
)


def start_proxy(upstream: str, db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROXY, upstream, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"proxy did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def timed(client: httpx.Client, url: str, task: dict) -> float:
    start = time.perf_counter()
    resp = client.post(url, json=[task], headers={"Authorization": f"Bearer {KEY}"})
    elapsed = time.perf_counter() - start
    if resp.status_code != 200:
        raise SystemExit(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
    return elapsed


def inference() -> dict:
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": "a lighthouse at dusk",
        "model": "runware:100@1",
        "width": 512,
        "height": 512,
    }


def upload(uri: str) -> dict:
    return {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": uri}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    report = Report()
    emu, upstream = start_emulator(args.latency)
    with tempfile.TemporaryDirectory() as tmp:
        proxy, url = start_proxy(upstream, Path(tmp, "proxy.db"))
        try:
            uri = "data:image/png;base64," + base64.b64encode(noisy_png(7)).decode()
            big = "data:image/png;base64," + base64.b64encode(noisy_png(8, 256)).decode()
            with httpx.Client(timeout=60) as client:
                timed(client, url, upload(uri))  # the cache now holds them
                timed(client, url, upload(big))
                for _ in range(3):  # warm both connections
                    timed(client, upstream, inference())
                    timed(client, url, inference())
                direct, proxied = alternate(
                    args.rounds,
                    lambda: timed(client, upstream, inference()),
                    lambda: timed(client, url, inference()),
                )
                before = emulator_stats(upstream)["upload_count"]
                up_direct, up_proxied = alternate(
                    args.rounds,
                    lambda: timed(client, upstream, upload(uri)),
                    lambda: timed(client, url, upload(uri)),
                )
                big_direct, big_proxied = alternate(
                    args.rounds,
                    lambda: timed(client, upstream, upload(big)),
                    lambda: timed(client, url, upload(big)),
                )
                sent = emulator_stats(upstream)["upload_count"] - before
        finally:
            proxy.terminate()
            proxy.wait(10)
            emu.terminate()
            emu.wait(10)
    d, p = median(direct), median(proxied)
    print(
        f"pass-through imageInference at {args.latency * 1000:.0f} ms upstream latency: "
        f"direct {d * 1000:.1f} ms, through the proxy {p * 1000:.1f} ms "
        f"(medians of {args.rounds})"
    )
    report.ratio("proxy_overhead_vs_direct", p / d, "<=", 1.1)
    ud, up = median(up_direct), median(up_proxied)
    print(
        f"repeated imageUpload of {len(uri) / 1024:.0f} KiB: direct {ud * 1000:.1f} ms "
        f"(the server stores it again), through the proxy {up * 1000:.2f} ms (from the cache); "
        f"upstream uploads during the run: {sent} (all direct)"
    )
    report.ratio("cached_upload_vs_direct", ud / up, ">=", 20)
    bd, bp = median(big_direct), median(big_proxied)
    print(
        f"repeated imageUpload of {len(big) / 1024:.0f} KiB: direct {bd * 1000:.1f} ms, "
        f"through the proxy {bp * 1000:.2f} ms: {bd / bp:.1f}x (no target)"
    )
    if sent != 2 * args.rounds:
        print(f"the proxy sent {sent - 2 * args.rounds} upload(s) upstream", file=sys.stderr)
        report.missed.append("proxy_uploads")
    report.exit()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RUNWARE_API_KEY", KEY)
    main()
