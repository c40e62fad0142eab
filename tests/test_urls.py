"""The URL an upload answer carried is kept with the entry and served with hits."""

from __future__ import annotations

from pathlib import Path

from helpers import make_png

from assetcache import AssetCache
from assetcache.emulator import Emulator


def test_a_hit_carries_the_url_the_upload_answer_gave(cache: AssetCache, emu: Emulator) -> None:
    data = make_png(1)
    first = cache.resolve(data)
    assert first.outcome == "uploaded"
    assert first.url is not None and first.uuid is not None and first.uuid in first.url
    again = cache.resolve(data)
    assert again.outcome == "hit" and again.url == first.url


def test_an_exported_url_survives_import(cache: AssetCache, make_cache, tmp_path: Path) -> None:
    url = cache.resolve(make_png(2)).url
    lines = list(cache.export_entries())
    assert any(f'"url":"{url}"' in line for line in lines)
    other = make_cache(db_path=tmp_path / "other.db")
    other.import_entries(lines)
    assert other.resolve(make_png(2)).url == url
