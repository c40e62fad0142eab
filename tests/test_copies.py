"""Local copies of uploaded bytes: off by default, content-addressed, bounded, verified."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cli_support import EmulatorCLI
from helpers import make_gif, make_png

from assetcache import AssetCache, ConfigurationError, SourceError
from assetcache._copies import Copies
from assetcache._hashing import hash_bytes
from assetcache._protocol import Payload
from assetcache.emulator import Emulator


def copy_path(cache: AssetCache, data: bytes) -> Path:
    digest = hash_bytes(data)
    return Path(cache.db_path + ".copies") / digest[:2] / digest


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_off_by_default(cache: AssetCache, tmp_path: Path) -> None:
    cache.resolve(make_png(1))
    assert not Path(cache.db_path + ".copies").exists()
    usage = cache.copies_usage()
    assert (usage.enabled, usage.files, usage.bytes) == (False, 0, 0)
    assert cache.stats().copies == usage.as_dict()


def test_kept_after_upload_private_and_atomic(
    make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    cache = make_cache(keep_copies=True)
    a = tmp_path / "a.png"
    a.write_bytes(make_png(1))
    cache.resolve_many([a, make_png(2), "https://example.com/cat.png"])
    for data in (make_png(1), make_png(2)):
        path = copy_path(cache, data)
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    folder = Path(cache.db_path + ".copies")
    assert len(listing(folder)) == 2  # no temp files left, nothing for the URL
    usage = cache.copies_usage()
    assert usage.enabled and usage.files == 2
    assert usage.bytes == len(make_png(1)) + len(make_png(2))
    assert cache.stats().copies["path"] == str(folder)  # type: ignore[index]


def test_least_recently_used_go_first(
    make_cache: Callable[..., AssetCache], tmp_path: Path
) -> None:
    a, b, c = make_png(1), make_png(2), make_png(3)
    cache = make_cache(keep_copies=True, copies_max_bytes=len(a) + len(c) + 10)
    cache.resolve(a)
    cache.resolve(b)
    cache.invalidate(a)
    assert cache.resolve(a).outcome == "reuploaded"  # a is used again: b is now the oldest
    cache.resolve(c)
    assert copy_path(cache, a).exists() and copy_path(cache, c).exists()
    assert not copy_path(cache, b).exists()
    assert cache.copies_usage().bytes <= len(a) + len(c) + 10


def test_a_copy_larger_than_the_bound_is_not_kept(make_cache: Callable[..., AssetCache]) -> None:
    cache = make_cache(keep_copies=True, copies_max_bytes=10)
    cache.resolve(make_png(1))
    assert cache.copies_usage().files == 0
    with pytest.raises(ConfigurationError, match="copies_max_bytes"):
        make_cache(keep_copies=True, copies_max_bytes=-1)


def test_a_damaged_copy_is_dropped_not_sent(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    cache = make_cache(keep_copies=True)
    a = tmp_path / "a.png"
    a.write_bytes(make_png(1))
    old = cache.resolve(a).uuid
    damaged = copy_path(cache, make_png(1))
    damaged.write_bytes(make_png(99))
    a.unlink()
    emu.advance(days=28.5)
    uploads = emu.upload_count
    (item,) = cache.refresh(timedelta(days=2)).items
    assert (item.status, item.old_uuid) == ("content-gone", old)
    assert not damaged.exists() and emu.upload_count == uploads
    emu.advance(days=1)  # no longer served: use() would have to upload it again
    with pytest.raises(SourceError, match="content gone"):
        cache.use(old, lambda u: u)  # type: ignore[arg-type]


def test_copies_kept_earlier_are_used_while_keeping_is_off(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    a = tmp_path / "a.png"
    a.write_bytes(make_png(1))
    make_cache(keep_copies=True).resolve(a)
    a.unlink()
    emu.advance(days=28.5)
    cron = make_cache()  # e.g. `assetcache refresh` run without --keep-copies
    (item,) = cron.refresh(timedelta(days=2)).items
    assert item.status == "renewed" and emu.image(item.uuid).data == make_png(1)  # type: ignore[arg-type,union-attr]
    assert not cron.copies_usage().enabled and cron.copies_usage().files == 1


def test_a_source_changed_since_upload_is_not_kept(tmp_path: Path) -> None:
    copies = Copies(tmp_path / "copies")
    uploaded, now = make_png(1), make_png(2)
    assert len(uploaded) == len(now)
    payload = Payload("a.png", len(now), "image/png", open=lambda: io.BytesIO(now))
    assert copies.keep(hash_bytes(uploaded), payload) is False
    assert listing(tmp_path / "copies") == []
    assert copies.keep(hash_bytes(now), payload) is True
    stream = copies.open(hash_bytes(now))
    assert stream is not None and stream.read() == now
    assert copies.open(hash_bytes(uploaded)) is None


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    copies = Copies(tmp_path / "copies", max_bytes=1 << 20)
    data = make_png(1)
    copies.keep(hash_bytes(data), Payload("x", len(data), "image/png", data=data))
    shard = copies.path_for(hash_bytes(data))
    left = Path(shard).parent / ".tmp-crashed"
    left.write_bytes(b"partial")
    hour_ago = time.time() - 7200
    os.utime(left, (hour_ago, hour_ago))
    usage = copies.usage()
    assert (usage.files, usage.bytes) == (1, len(data)) and not left.exists()


def test_a_converted_image_keeps_its_original_bytes(
    make_cache: Callable[..., AssetCache], emu: Emulator, tmp_path: Path
) -> None:
    pytest.importorskip("PIL")
    cache = make_cache(keep_copies=True, resize=True)
    gif = tmp_path / "anim.gif"
    gif.write_bytes(make_gif(3))
    r = cache.resolve(gif)
    assert emu.image(r.uuid).format == "png"  # type: ignore[arg-type,union-attr]  # sent converted
    assert copy_path(cache, make_gif(3)).read_bytes() == make_gif(3)  # kept as it was
    gif.unlink()
    emu.advance(days=28.5)
    (item,) = cache.refresh(timedelta(days=2)).items
    assert item.status == "renewed" and emu.image(item.uuid).format == "png"  # type: ignore[arg-type,union-attr]


def test_cli_shows_copies_in_stats_and_doctor(tmp_path: Path) -> None:
    ecli = EmulatorCLI(tmp_path)
    a = tmp_path / "a.png"
    a.write_bytes(make_png(1))
    assert ecli("--keep-copies", "--copies-max", "2M", "upload", a).exit_code == 0
    folder = f"{ecli.db}.copies"
    stats = ecli("--keep-copies", "--copies-max", "2M", "stats").stdout
    assert f"local copies  {folder} (1 file(s), {len(make_png(1))} B of 2.0 MiB)" in stats
    as_json = json.loads(ecli("--keep-copies", "stats", "--json").stdout)["copies"]
    assert as_json["enabled"] and as_json["files"] == 1 and as_json["path"] == folder
    doctor = ecli("doctor").stdout  # the setting is off here: what is left is shown
    assert f"copies     off (1 file(s), {len(make_png(1))} B of 1.0 GiB left in {folder})" in doctor
    settings = json.loads(ecli("doctor", "--json").stdout)["settings"]
    assert settings["local_copies"]["enabled"] is False
    other = tmp_path / "elsewhere"
    assert ecli("--keep-copies", "--copies-dir", other, "upload", a).exit_code == 0
    assert listing(other) == []  # a hit: nothing uploaded, nothing copied
    assert ecli("--copies-max", "lots", "stats").exit_code == 2
