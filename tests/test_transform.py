"""Resizing before upload: send only what the server keeps (``_transform``).

Each test compares what the emulator received and keeps (``emu.image(uuid)``)
with the original, so the rules in ``_transform``'s docstring are pinned from
the server's side.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import API_KEY, engine_of, make_png, store_of

from assetcache import AssetCache, AsyncAssetCache
from assetcache._errors import ConfigurationError, SourceError
from assetcache._formats import FormatCheck
from assetcache._transform import Transform, configure, fit, resize_available
from assetcache.emulator import Emulator

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageChops, ImageOps, ImageStat  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TAG = Transform().tag
ORIENTATION = 0x0112


# -- images --------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like content: smooth gradients with fine noise (cheap at any size)."""
    r = Image.linear_gradient("L").resize((width, height))
    g = Image.radial_gradient("L").resize((width, height)).rotate(seed * 37)
    b = ImageChops.add(
        r.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        Image.effect_noise((width, height), 12 + seed),
        2,
        0,
    )
    return Image.merge("RGB", (r, g, b))


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg(
    width: int, height: int, *, orientation: int | None = None, seed: int = 0, quality: int = 95
) -> bytes:
    options: dict[str, object] = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        exif[0x010F] = "TestCam"  # Make: dropped by the transform (not a pixel)
        options["exif"] = exif.tobytes()
    return encode(photo(width, height, seed), "JPEG", **options)


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    mse = sum(ImageStat.Stat(diff).sum2) / (3 * a.size[0] * a.size[1])
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kept(emu: Emulator, uuid: str | None) -> bytes:
    assert uuid is not None
    record = emu.image(uuid)
    assert record is not None and record.data is not None
    return record.data


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- the decision ---------------------------------------------------------------------


def test_variant_rules():
    t = Transform(max_side=2048)
    assert t.variant_for("jpeg", 4000, 3000) == TAG == "fit2048-q95-p44-v2"
    assert t.variant_for("png", 2048, 1000) == ""  # at the limit: untouched
    assert t.variant_for("webp", 1000, 2049) == TAG
    assert t.variant_for("bmp", 2, 2) == t.variant_for("gif", 1, 1) == TAG
    assert t.variant_for("url", None, None) == ""
    assert t.variant_for("jpeg", None, None) is None  # unknown size: read the file first
    assert Transform(max_side=1024).tag != TAG
    assert fit((4000, 3000), 2048) == (2048, 1536)
    assert fit((3000, 4000), 2048) == (1536, 2048)
    assert fit((6000, 4000), 2048) == (2048, 1365)
    assert fit((1000, 800), 2048) == (1000, 800)


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}])
def test_webp_sizes_come_from_the_header(options):
    for size in ((3000, 17), (5, 4100)):
        data = encode(photo(*size), "WEBP", **options)
        check = FormatCheck()
        check(memoryview(data))
        assert check.finish() == "webp" and (check.width, check.height) == size
    # VP8X (extended: here, an ICC profile) carries the canvas size.
    data = encode(photo(2500, 40), "WEBP", icc_profile=b"\0" * 200, **options)
    assert data[12:16] == b"VP8X"
    check = FormatCheck()
    check(memoryview(data))
    assert check.finish() == "webp" and (check.width, check.height) == (2500, 40)


def test_settings_are_checked(monkeypatch):
    monkeypatch.delenv("ASSETCACHE_RESIZE", raising=False)
    assert configure("auto", 2048) == Transform(2048)
    assert configure(False, 2048) is None
    assert configure(None, 1024) == Transform(1024)
    monkeypatch.setenv("ASSETCACHE_RESIZE", "off")
    assert configure(None, 2048) is None
    for bad in ("sometimes", 2):
        with pytest.raises(ConfigurationError, match="resize must be"):
            configure(bad, 2048)  # type: ignore[arg-type]
    for side in (0, -5, 20.5, True):
        with pytest.raises(ConfigurationError, match="max_side"):
            configure(True, side)  # type: ignore[arg-type]


# -- what arrives -----------------------------------------------------------------------


def test_large_jpeg_arrives_at_2048(cache, emu, tmp_path):
    original = jpeg(4000, 3000)
    r = cache.resolve(write(tmp_path, "big.jpg", original))
    record = emu.image(r.uuid)
    assert record is not None and record.data is not None
    received = opened(record.data)
    assert received.format == "JPEG" and received.size == (2048, 1536)
    assert (record.width, record.height) == (2048, 1536)
    # What was sent is what arrived, and far less than the original.
    assert record.size == len(record.data) < len(original) / 3
    assert r.bytes_sent == len("data:image/jpeg;base64,") + 4 * math.ceil(record.size / 3)
    # The record describes the original; the key is its hash plus the settings.
    assert (r.size, r.format) == (len(original), "jpeg")
    assert store_of(cache).read("SELECT variant FROM assets") == [(TAG,)]
    # Indistinguishable from the server resizing the original itself.
    direct = (
        Image.open(io.BytesIO(original))
        .convert("RGB")
        .resize((2048, 1536), Image.Resampling.LANCZOS)
    )
    assert psnr(received, direct) > 40


def test_image_within_the_limit_arrives_byte_identical(cache, emu, tmp_path):
    original = encode(photo(1000, 800), "PNG")
    r = cache.resolve(write(tmp_path, "small.png", original))
    assert kept(emu, r.uuid) == original
    assert emu.uploads_by_sha256() == {sha256(original): 1}
    assert store_of(cache).read("SELECT variant FROM assets") == [("",)]
    small_jpeg = jpeg(2048, 1000, orientation=6)  # at the limit, EXIF and all
    assert kept(emu, cache.resolve(small_jpeg).uuid) == small_jpeg


def test_exif_orientation_is_carried_not_applied(make_cache, emu, tmp_path):
    """Pixels keep their stored orientation and the Orientation tag goes along,
    so the server treats the resized image as it would the original."""
    original = jpeg(4000, 3000, orientation=6)
    path = write(tmp_path, "portrait.jpg", original)
    resized = kept(emu, make_cache().resolve(path).uuid)
    got = opened(resized)
    assert got.size == (2048, 1536)
    assert got.getexif().get(ORIENTATION) == 6
    assert 0x010F not in got.getexif()  # the camera's Make is not sent
    # The same photo sent as it is, resized by the server:
    as_is = make_cache(db_path=tmp_path / "plain.db", resize=False).resolve(path)
    server = opened(kept(emu, as_is.uuid))
    assert server.size == (2048, 1536) and server.getexif().get(ORIENTATION) == 6
    upright_client, upright_server = ImageOps.exif_transpose(got), ImageOps.exif_transpose(server)
    assert upright_client.size == upright_server.size == (1536, 2048)
    assert psnr(upright_client, upright_server) > 40


def test_bmp_goes_as_lossless_png(cache, emu, tmp_path):
    source = photo(300, 200)
    original = encode(source, "BMP")
    r = cache.resolve(write(tmp_path, "pic.bmp", original))
    got = opened(kept(emu, r.uuid))
    assert got.format == "PNG" and got.size == (300, 200)
    assert ImageChops.difference(got.convert("RGB"), source).getbbox() is None  # lossless
    assert (r.format, r.size) == ("bmp", len(original)) and r.bytes_sent < len(original)
    big = encode(photo(3000, 2000), "BMP")
    got = opened(kept(emu, cache.resolve(big).uuid))
    assert got.format == "PNG" and got.size == (2048, 1365)


def test_gif_goes_as_png_keeping_transparency(cache, emu, tmp_path):
    frame = photo(120, 90).quantize(64)
    original = encode(frame, "GIF", transparency=5)
    got = opened(kept(emu, cache.resolve(write(tmp_path, "a.gif", original)).uuid))
    assert got.format == "PNG" and got.size == (120, 90)
    source = opened(original)
    assert ImageChops.difference(got.convert("RGBA"), source.convert("RGBA")).getbbox() is None
    assert got.convert("RGBA").getpixel(_first_index(source, 5))[3] == 0  # still transparent


def _first_index(im: Image.Image, index: int) -> tuple[int, int]:
    i = im.tobytes().index(bytes([index]))
    return i % im.size[0], i // im.size[0]


def test_animated_gif_sends_its_first_frame_with_a_warning(cache, emu, tmp_path, caplog):
    frames = [photo(64, 48, seed).quantize(32) for seed in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with caplog.at_level(logging.WARNING, logger="assetcache"):
        r = cache.resolve(write(tmp_path, "anim.gif", buf.getvalue()))
    got = opened(kept(emu, r.uuid))
    assert got.format == "PNG" and getattr(got, "n_frames", 1) == 1
    first = Image.open(io.BytesIO(buf.getvalue()))
    assert ImageChops.difference(got.convert("RGB"), first.convert("RGB")).getbbox() is None
    assert any("animated GIF (3 frames)" in m and "anim.gif" in m for m in caplog.messages)


def test_webp_keeps_its_format_and_losslessness(cache, emu):
    source = photo(2600, 1300)
    lossless = encode(source, "WEBP", lossless=True)
    got = opened(kept(emu, cache.resolve(lossless).uuid))
    assert got.format == "WEBP" and got.size == (2048, 1024)
    expected = source.resize((2048, 1024), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert ImageChops.difference(got.convert("RGB"), expected).getbbox() is None


def test_png_with_alpha_is_resized_losslessly(cache, emu):
    source = photo(2500, 2500).convert("RGBA")
    source.putalpha(Image.linear_gradient("L").resize((2500, 2500)))
    got = opened(kept(emu, cache.resolve(encode(source, "PNG")).uuid))
    assert got.format == "PNG" and got.mode == "RGBA" and got.size == (2048, 2048)
    expected = source.resize((2048, 2048), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert ImageChops.difference(got, expected).getbbox() is None


def test_a_resize_that_is_not_smaller_sends_the_original(cache, emu):
    # Heavily compressed and only just over the limit: quality 95 would be larger.
    original = jpeg(2100, 1400, quality=20)
    r = cache.resolve(original)
    assert kept(emu, r.uuid) != original  # the server still keeps 2048 px ...
    assert emu.uploads_by_sha256() == {sha256(original): 1}  # ... of the original we sent
    assert r.bytes_sent > len(original)


def test_an_image_pillow_cannot_resize_goes_as_it_is(cache, emu, caplog, monkeypatch):
    def broken(*args: object) -> None:
        raise OSError("decoder jpeg not available")

    monkeypatch.setattr(Transform, "_apply", broken)
    original = jpeg(3000, 2000)
    with caplog.at_level(logging.WARNING, logger="assetcache"):
        r = cache.resolve(original)
    assert emu.uploads_by_sha256() == {sha256(original): 1} and r.ok
    assert any("cannot resize" in m and "sending the original" in m for m in caplog.messages)


def test_streams_and_async_are_resized_too(make_cache, emu, tmp_path):
    original = jpeg(3000, 3000)
    r = make_cache().resolve(io.BytesIO(original))
    assert opened(kept(emu, r.uuid)).size == (2048, 2048)

    async def main() -> str | None:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "a.db", clock=emu.clock
        ) as cache:
            return (await cache.resolve(jpeg(3000, 1000, seed=3))).uuid

    assert opened(kept(emu, asyncio.run(main()))).size == (2048, 683)


def test_large_files_are_streamed_verified_and_resized(cache, emu, tmp_path, monkeypatch):
    monkeypatch.setattr("assetcache._ingest.INLINE_LIMIT", 1000)  # stream, do not keep
    path = write(tmp_path, "big.jpg", jpeg(3000, 2000))
    assert opened(kept(emu, cache.resolve(path).uuid)).size == (2048, 1365)
    # Rewritten between hashing and sending: refused, never sent under the old key.
    other = write(tmp_path, "other.jpg", jpeg(3000, 2000, seed=1))
    prepared = engine_of(cache).prepare(other)
    Path(other).write_bytes(jpeg(3000, 2000, seed=2))
    with pytest.raises(SourceError, match="changed since it was hashed"):
        prepared.payload()


# -- keys and the warm path ------------------------------------------------------------


def test_settings_change_reuploads_only_what_it_changes(make_cache, emu, tmp_path):
    big = write(tmp_path, "big.jpg", jpeg(4000, 3000))
    small = write(tmp_path, "small.png", encode(photo(1000, 800), "PNG"))
    first = make_cache()
    assert [r.outcome for r in first.resolve_many([big, small])] == ["uploaded", "uploaded"]
    assert [r.outcome for r in first.resolve_many([big, small])] == ["hit", "hit"]
    first.close()

    smaller = make_cache(max_side=1024)
    rs = smaller.resolve_many([big, small])
    assert [r.outcome for r in rs] == ["uploaded", "hit"]  # 1000x800 fits both settings
    assert opened(kept(emu, rs[0].uuid)).size == (1024, 768)
    smaller.close()

    again = make_cache()
    assert [r.outcome for r in again.resolve_many([big, small])] == ["hit", "hit"]
    again.close()
    plain = make_cache(resize=False)
    r = plain.resolve(big)
    assert r.outcome == "uploaded" and opened(kept(emu, r.uuid)).size == (2048, 1536)
    assert emu.upload_count == 4


@pytest.mark.parametrize(
    "name,data",
    [
        ("big.jpg", lambda: jpeg(3000, 2000)),
        ("small.jpg", lambda: jpeg(800, 600)),
        ("pic.bmp", lambda: encode(photo(40, 30), "BMP")),
        ("pic.gif", lambda: encode(photo(40, 30).quantize(16), "GIF")),
        ("big.webp", lambda: encode(photo(2100, 50), "WEBP")),
    ],
)
def test_warm_path_agrees_with_the_slow_path(make_cache, emu, tmp_path, name, data):
    """The warm path's SQL picks the same variant as ``Transform.variant_for``."""
    cache = make_cache(racy_window=0)
    path = write(tmp_path, name, data())
    first = cache.resolve(path)
    hit = engine_of(cache).fast_hit(path)
    assert hit is not None and (hit.uuid, hit.outcome) == (first.uuid, "hit")
    assert emu.upload_count == 1


def test_rows_without_a_recorded_size_are_read_once(make_cache, emu, tmp_path):
    cache = make_cache(racy_window=0)
    path = write(tmp_path, "big.jpg", jpeg(3000, 2000))
    first = cache.resolve(path)
    assert engine_of(cache).fast_hit(path) is not None
    with store_of(cache).write() as conn:
        # As written before sizes were recorded.
        conn.execute("DELETE FROM dimensions")
        conn.execute("UPDATE files SET side = NULL")
    assert engine_of(cache).fast_hit(path) is None
    again = cache.resolve(path)
    assert (again.outcome, again.uuid) == ("hit", first.uuid) and emu.upload_count == 1
    assert engine_of(cache).fast_hit(path) is not None


def test_hits_and_start_up_never_import_pillow(emu, tmp_path):
    db = tmp_path / "c.db"
    path = write(tmp_path, "big.jpg", jpeg(3000, 2000))
    with AssetCache(
        API_KEY, base_url=emu.base_url, db_path=db, clock=emu.clock, racy_window=0
    ) as cache:
        cache.resolve(path)
    code = (
        "import sys; from assetcache import AssetCache\n"
        f"c = AssetCache({API_KEY!r}, base_url={emu.base_url!r}, db_path={str(db)!r}, "
        "racy_window=0)\n"
        f"r = c.resolve({path!r}); assert r.outcome == 'hit', r\n"
        f"r = c.resolve(open({path!r}, 'rb').read()); assert r.outcome == 'hit', r\n"
        "assert 'PIL' not in sys.modules, 'Pillow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- without Pillow ---------------------------------------------------------------------


def test_without_pillow_the_originals_go(make_cache, emu, tmp_path, monkeypatch):
    originals = [jpeg(4000, 3000), encode(photo(40, 30), "BMP"), make_png(1)]
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    assert resize_available() == (
        False,
        "Pillow is not installed: images are sent as they are (pip install 'assetcache[images]')",
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'assetcache\[images\]'"):
        make_cache(resize=True)
    cache = make_cache()
    results = cache.resolve_many(originals)
    assert all(r.outcome == "uploaded" for r in results)
    assert emu.uploads_by_sha256() == {sha256(d): 1 for d in originals}
    assert store_of(cache).read("SELECT DISTINCT variant FROM assets") == [("",)]
    # The emulator cannot downscale either, and keeps what it received.
    assert kept(emu, results[0].uuid) == originals[0]


def test_resize_available_names_pillow():
    ok, text = resize_available()
    assert ok and text.startswith(f"Pillow {PIL.__version__}") and "2048" in text


# -- the emulator keeps at most 2048 px -------------------------------------------------


def test_emulator_keeps_large_uploads_downscaled(tmp_path):
    with (
        Emulator(api_key=API_KEY) as emu,
        AssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock, resize=False
        ) as cache,
    ):
        assert emu.downscales
        big_png = encode(photo(3000, 1000), "PNG")
        record = emu.image(cache.resolve(big_png).uuid)
        assert record is not None and record.data is not None
        assert (record.format, record.width, record.height) == ("png", 2048, 683)
        assert record.size == len(big_png) and record.sha256 == sha256(big_png)
        gif = encode(photo(2100, 30).quantize(8), "GIF")
        record = emu.image(cache.resolve(gif).uuid)
        assert record is not None and (record.format, record.width) == ("png", 2048)
        small = jpeg(640, 480)
        record = emu.image(cache.resolve(small).uuid)
        assert record is not None and record.data == small
        assert (record.width, record.height) == (640, 480)
    with (
        Emulator(api_key=API_KEY, max_side=0) as emu,
        AssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "d.db", clock=emu.clock, resize=False
        ) as cache,
    ):
        assert not emu.downscales
        record = emu.image(cache.resolve(big_png).uuid)
        assert record is not None and record.data == big_png


def test_the_emulator_reads_a_small_pngs_size_from_its_header_as_pillow_does(tmp_path):
    # PNGs within the limit are kept byte for byte with the size Pillow reads;
    # a header the shortcut refuses (bad CRC) falls back to Pillow's judgement.
    with (
        Emulator(api_key=API_KEY) as emu,
        AssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock, resize=False
        ) as cache,
    ):
        for width, height in ((1, 1), (2048, 3), (5, 2048), (321, 123)):
            png = encode(photo(width, height), "PNG")
            record = emu.image(cache.resolve(png).uuid)
            assert record is not None and record.data == png
            assert (record.format, record.width, record.height) == ("png", width, height)
        over = encode(photo(2049, 10), "PNG")
        record = emu.image(cache.resolve(over).uuid)
        assert record is not None and (record.width, record.height) == (2048, 10)
    from assetcache.emulator._downscale import keep

    png = bytearray(encode(photo(40, 30), "PNG"))
    png[29] ^= 0xFF  # the IHDR CRC
    kept = keep(bytes(png), "png", 2048)
    assert kept.data == bytes(png) and (kept.width, kept.height) == (None, None)


# -- doctor -----------------------------------------------------------------------------


def test_doctor_says_whether_images_are_resized(tmp_path, monkeypatch):
    from cli_support import EmulatorCLI

    ecli = EmulatorCLI(tmp_path)
    (tmp_path / "big.jpg").write_bytes(jpeg(3000, 2000))
    assert ecli("upload", tmp_path / "big.jpg").exit_code == 0
    text = ecli("doctor").stdout
    assert f"resizing   Pillow {PIL.__version__}: images larger than 2048 px" in text
    settings = json.loads(ecli("doctor", "--json").stdout)["settings"]
    assert (settings["resize"], settings["resize_available"]) == (TAG, True)
    off = ecli("doctor", env={"ASSETCACHE_RESIZE": "0"}).stdout
    assert "resizing   off (resize=False or ASSETCACHE_RESIZE=0)" in off
    monkeypatch.setitem(sys.modules, "PIL", None)
    missing = ecli("doctor").stdout
    assert "resizing   Pillow is not installed: images are sent as they are" in missing


def test_emulator_uplink_paces_request_bodies(tmp_path, monkeypatch):
    """``uplink_mbps``: bodies are read as fast as that link would carry them, one
    link for all connections (waits recorded, not slept)."""
    import assetcache.emulator._emulator as emulator_module

    waits: list[float] = []
    monkeypatch.setattr(emulator_module.time, "sleep", waits.append)
    with Emulator(api_key=API_KEY, uplink_mbps=8) as emu:  # 1 MB/s
        assert emu.throttled
        emu.throttle(500_000)
        emu.throttle(500_000)  # queued behind the first: done a second from now
        assert waits == [pytest.approx(0.5, abs=0.05), pytest.approx(1.0, abs=0.05)]
        waits.clear()
        with AssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db", clock=emu.clock, resize=False
        ) as cache:
            original = jpeg(600, 400)
            assert kept(emu, cache.resolve(original).uuid) == original
        assert len(waits) >= 1 and sum(waits) >= len(original) * 8 / 8e6
    with pytest.raises(ValueError, match="uplink_mbps"):
        Emulator(uplink_mbps=-1)
    assert not Emulator().throttled
