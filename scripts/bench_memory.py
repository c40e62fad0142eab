"""Memory: uploading one 200 MB image raises the client's peak RSS by how much?

    python scripts/bench_memory.py [--mb 200]

Writes one valid PNG of ``--mb`` MB (random bytes in an ancillary chunk, so
it is sent as it is), starts the emulator in its own process on 127.0.0.1,
and uploads the file from a third process: a fresh interpreter that imports
everything and opens the cache first, notes its peak RSS (``getrusage``),
then resolves the file and notes the peak again. Only that client is
measured; the emulator (which holds the whole request) is not. The ratio is
the rise in the client's peak over the file's size. Target: at most 0.5x
(the hash and the base64 body are both streamed; neither holds the file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _benchlib import KEY, EmulatorProcess, Report, write_big_png

TARGET = 0.5

CLIENT = r"""
import json, resource, sys
import httpx  # everything the upload will need, loaded before the baseline
from assetcache import AssetCache

url, db, path = sys.argv[1:4]

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def peak():
    # VmHWM: this process's own peak (ru_maxrss can carry the parent's over fork).
    try:
        return status("VmHWM")
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

with AssetCache(sys.argv[4], base_url=url, db_path=db) as cache:
    cache._engine.store.conn()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current RSS: the baseline
    except OSError:
        pass
    before = peak()
    res = cache.resolve(path)
    after = peak()
print(json.dumps({"before": before, "after": after, "outcome": res.outcome,
                  "sent": res.bytes_sent}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the image in MB")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    report = Report()
    try:
        image = tmp / "huge.png"
        size = write_big_png(image, 1, args.mb * 10**6)
        with EmulatorProcess() as emu:
            out = subprocess.run(
                [sys.executable, "-c", CLIENT, emu.url, str(tmp / "cache.db"), str(image), KEY],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        if out.returncode != 0:
            raise SystemExit(f"the upload failed:\n{out.stderr.strip()}")
        result = json.loads(out.stdout)
        if result["outcome"] != "uploaded":
            raise SystemExit(f"expected an upload, got {result['outcome']}")
        rise = result["after"] - result["before"]
        print(
            f"uploading {size / 1e6:.0f} MB ({result['sent'] / 1e6:.0f} MB of base64 sent): "
            f"client peak RSS {result['before'] / 1e6:.0f} MB before, "
            f"{result['after'] / 1e6:.0f} MB after (+{rise / 1e6:.1f} MB)"
        )
        report.ratio("upload_peak_rss_rise_vs_file_size", rise / size, "<=", TARGET)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.exit()


if __name__ == "__main__":
    main()
