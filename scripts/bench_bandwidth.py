"""Bytes and time saved by resizing on the client before upload.

Setup (Debian; real photographs larger than 2048 px, as shipped as wallpapers)::

    apt-get install -y lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
    pip install -e '.[images]'
    python scripts/bench_bandwidth.py [--repeat 2] [--uplink-mbps 100]

The set is every photograph larger than 2048 px in those packages (the
illustrations are left out): 22 JPEGs from 2560x1600 to 6028x3391, 0.2 to
16 MB. The emulator runs as a separate process on 127.0.0.1 and keeps what it
receives downscaled to 2048 px, as Runware does. Each run uploads the whole
set on a fresh cache, (a) with ``resize=False`` (originals; the server
resizes) and (b) with ``resize=True`` (the client resizes); the faster of
``--repeat`` runs counts. Then the images the emulator keeps in (a) and (b)
are compared: PSNR per photo, over RGB.

Quality is measured on each photo the client resized, against the original
itself: (1) an exact reference, the original decoded in full and resized with
a Lanczos filter in floating point (no rounding, no re-encode), and (2) a
server path that resizes with another resampler than the client (bicubic,
also in floating point): what a server that receives the original would
compute before its own re-encode. (The emulator resizes with the client's
own filter, so the (a) vs (b) figure is printed for information only.)

Prints ``RATIO`` lines and exits 1 when a target is missed: bytes sent (a)/(b)
at least 3, wall time (a)/(b) at least 1 (no worse), and the lowest PSNR of
(1) and of (2) at least 40 dB each. Exits 2 when the photos or Pillow are missing.

The emulator reads request bodies at ``--uplink-mbps`` (default 100 Mbit/s,
a fast fibre uplink; home uplinks are often 10 to 50), all connections
sharing it, since on bare loopback bytes cost nothing. ``--uplink-mbps 0``
runs at loopback speed: the least favourable case for sending fewer bytes,
where the client's resizing competes with the emulator's own for the same
cores, and the two modes come out about even.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _benchlib import KEY, emulator_stats, ratio_line, start_emulator

from assetcache import AssetCache

try:
    from PIL import Image, ImageChops, ImageMath, ImageStat
except ImportError:  # reported by main()
    Image = None  # type: ignore[assignment]

SETUP = "apt-get install -y lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds"
_LOMIRI = "/usr/share/backgrounds"
_MATE = "/usr/share/backgrounds/mate"
#: Every photograph over 2048 px in the three packages (their illustrations excluded).
PHOTOS = [
    f"{_LOMIRI}/{name}"
    for name in (
        "Bridge_by_Sander_Klootwijk.jpg",
        "Dragonfly_by_Bolly.jpg",
        "Picture_0B_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg",
        "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg",
        "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",  # lomiri-wallpapers-16.04
        "Kleiber_by_Lukas_Baubkus.jpg",
        "Infinite-Sea_by_Aury88.jpg",  # lomiri-wallpapers-20.04
    )
] + [
    f"{_MATE}/{name}"
    for name in (
        "abstract/Elephants_3840x2160.jpg",
        "abstract/Elephants_5640x3172.jpg",
        "nature/Aqua.jpg",
        "nature/Garden.jpg",
        "nature/LadyBird.jpg",
        "nature/TwoWings.jpg",
        "nature/Wood.jpg",
        "nature/YellowFlower.jpg",  # mate-backgrounds
    )
]


def run(url: str, paths: list[str], resize: bool, folder: Path) -> tuple[float, list, int]:
    """Upload every photo on a fresh cache: ``(seconds, results, bytes the emulator read)``."""
    before = emulator_stats(url)["bytes_received"]
    with (
        tempfile.TemporaryDirectory(dir=folder) as tmp,
        AssetCache(KEY, base_url=url, db_path=Path(tmp) / "cache.db", resize=resize) as cache,
    ):
        started = time.perf_counter()
        results = cache.resolve_many(paths)
        seconds = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"uploads failed: {[str(r.error) for r in failed[:3]]}")
    return seconds, results, emulator_stats(url)["bytes_received"] - before


def stored(client: httpx.Client, url: str, uuid: str) -> bytes:
    resp = client.get(url.rsplit("/", 1)[0] + f"/images/{uuid}")
    resp.raise_for_status()
    return resp.content


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def psnr(x: Image.Image, y: Image.Image) -> float:
    """Peak signal-to-noise ratio over RGB, in dB (inf: identical pixels)."""
    if x.size != y.size:
        return 0.0
    mse = sum(ImageStat.Stat(ImageChops.difference(x, y)).sum2) / (3 * x.size[0] * x.size[1])
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def float_bands(im: Image.Image) -> list[Image.Image]:
    return [band.convert("F") for band in im.convert("RGB").split()]


def exact(path: str, size: tuple[int, int], resampler: Image.Resampling) -> list[Image.Image]:
    """The original resized in floating point (full decode, per channel, never
    rounded to 8 bits nor re-encoded): what a perfect server path computes."""
    with Image.open(path) as im:
        return [band.resize(size, resampler) for band in float_bands(im)]


def psnr_f(x: list[Image.Image], y: list[Image.Image]) -> float:
    """PSNR over RGB between two float images, in dB; the mean square error is
    taken by Pillow itself (squared differences, box-averaged down to one pixel)."""
    if x[0].size != y[0].size:
        return 0.0
    total = 0.0
    for a, b in zip(x, y, strict=True):
        sq = ImageMath.lambda_eval(lambda v: (v["a"] - v["b"]) * (v["a"] - v["b"]), a=a, b=b)
        total += sq.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    mse = total / len(x)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode (best counts)")
    parser.add_argument(
        "--uplink-mbps",
        type=float,
        default=100.0,
        help="the modelled uplink (default 100; 0: loopback speed)",
    )
    args = parser.parse_args()
    missing = [p for p in PHOTOS if not Path(p).is_file()]
    if missing:
        print(
            f"missing {len(missing)} photo(s), e.g. {missing[0]}; set up with:\n  {SETUP}",
            file=sys.stderr,
        )
        return 2
    if Image is None:
        print("Pillow is missing: pip install 'assetcache[images]'", file=sys.stderr)
        return 2
    for path in PHOTOS:  # page cache warm for both modes alike
        Path(path).read_bytes()
    extra = ["--keep-bytes"]
    if args.uplink_mbps:
        extra += ["--uplink-mbps", str(args.uplink_mbps)]
    proc, url = start_emulator(0.0, *extra)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            best: dict[bool, tuple[float, list, int]] = {}
            for _ in range(max(1, args.repeat)):
                for resize in (False, True):
                    outcome = run(url, PHOTOS, resize, Path(tmp))
                    if resize not in best or outcome[0] < best[resize][0]:
                        best[resize] = outcome
        (t_orig, r_orig, b_orig), (t_fit, r_fit, b_fit) = best[False], best[True]
        sent_orig = sum(r.bytes_sent for r in r_orig)
        sent_fit = sum(r.bytes_sent for r in r_fit)
        scores, vs_exact, vs_other = [], [], []
        with httpx.Client(timeout=60) as client:
            print(
                f"{'photo':38} {'original':>9} {'sent':>9} {'(a)v(b)':>8} "
                f"{'(b)vL':>6} {'(b)vB':>6}   (PSNR dB of what the client sent; "
                "L: exact float Lanczos, B: float bicubic, the server path of another resampler)"
            )
            for path, a, b in zip(PHOTOS, r_orig, r_fit, strict=True):
                kept_a = decoded(stored(client, url, a.uuid))
                kept_b = decoded(stored(client, url, b.uuid))
                scores.append(psnr(kept_a, kept_b))
                # Only what the client resized is the client's doing; an original it
                # sent as it is (not smaller once re-encoded) the server resizes alike.
                resized = b.bytes_sent < a.bytes_sent
                note = ""
                if resized:
                    mine = float_bands(kept_b)
                    vs_exact.append(
                        psnr_f(mine, exact(path, kept_b.size, Image.Resampling.LANCZOS))
                    )
                    vs_other.append(
                        psnr_f(mine, exact(path, kept_b.size, Image.Resampling.BICUBIC))
                    )
                    note = f"{vs_exact[-1]:6.2f} {vs_other[-1]:6.2f}"
                else:
                    note = f"{'sent as it is':>13}"
                print(
                    f"{Path(path).name[:38]:38} {a.size:9d} {b.bytes_sent * 3 // 4:9d} "
                    f"{scores[-1]:8.2f} {note}"
                )
        finite = [s for s in scores if math.isfinite(s)]
        mean = sum(finite) / len(finite) if finite else math.inf
        link = f"{args.uplink_mbps:g} Mbit/s uplink" if args.uplink_mbps else "loopback"
        print(
            f"{len(PHOTOS)} photos over {link}; request bodies as the emulator read them: "
            f"{b_orig} vs {b_fit} bytes"
        )
        print(f"(a) originals:        {sent_orig:11d} bytes sent  {t_orig:7.3f} s")
        print(f"(b) resized first:    {sent_fit:11d} bytes sent  {t_fit:7.3f} s")
        print(
            f"PSNR of what the server keeps, (a) vs (b): min {min(scores):.2f} dB, "
            f"mean {mean:.2f} dB (the emulator resizes as the client does; for information)"
        )
        print(f"{len(vs_exact)} photos resized by the client, each compared with the original:")
        oks = [
            ratio_line("bytes_original_vs_resized", sent_orig / sent_fit, ">=", 3.0),
            ratio_line("time_original_vs_resized", t_orig / t_fit, ">=", 1.0),
            ratio_line("psnr_min_db_vs_exact_lanczos", min(vs_exact), ">=", 40.0),
            ratio_line("psnr_min_db_vs_bicubic_server", min(vs_other), ">=", 40.0),
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0 if all(oks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
