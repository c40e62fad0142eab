"""Prometheus metrics: a collector in the caller's registry, the textfile format."""

from __future__ import annotations

import os
import threading

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from assetcache._metrics import (  # noqa: E402
    COUNTERS,
    GAUGES,
    Sample,
    Tally,
    register_metrics,
    write_textfile,
)


def test_tally_counts_across_threads():
    tally = Tally()

    def work():
        for _ in range(1000):
            tally.add(hits=1, bytes_saved=3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.snapshot() == {"hits": 4000, "bytes_saved": 12000}


def test_register_in_callers_registry_reads_at_each_scrape():
    registry = prometheus_client.CollectorRegistry()
    tally = Tally()
    register_metrics(lambda: Sample(tally.snapshot(), {"entries": 2}), registry)
    assert registry.get_sample_value("assetcache_hits_total") == 0
    tally.add(hits=3, uploads=1, takeovers=2)
    assert registry.get_sample_value("assetcache_hits_total") == 3
    assert registry.get_sample_value("assetcache_uploads_total") == 1
    assert registry.get_sample_value("assetcache_takeovers_total") == 2
    assert registry.get_sample_value("assetcache_entries") == 2
    with pytest.raises(ValueError):  # the same names twice in one registry
        register_metrics(lambda: Sample({}, {}), registry)


def test_every_counter_and_gauge_is_exposed():
    registry = prometheus_client.CollectorRegistry()
    register_metrics(lambda: Sample({}, dict.fromkeys(GAUGES, 1)), registry)
    text = prometheus_client.generate_latest(registry).decode()
    for name in COUNTERS:
        assert f"# TYPE assetcache_{name}_total counter" in text or (
            f"# TYPE assetcache_{name} counter" in text
        )
    for name in GAUGES:
        assert f"assetcache_{name} 1.0" in text


def test_textfile_is_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "assetcache.prom"
    target.write_text("old\n")
    write_textfile(target, Sample({"hits": 5, "bytes_sent": 1024}, {"entries": 1}))
    text = target.read_text()
    assert "assetcache_hits_total 5.0" in text
    assert "assetcache_bytes_sent_total 1024.0" in text
    assert [p.name for p in tmp_path.iterdir()] == ["assetcache.prom"]
    # a failed write leaves the old file whole
    real = os.replace

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_textfile(target, Sample({"hits": 6}, {}))
    monkeypatch.setattr(os, "replace", real)
    assert "assetcache_hits_total 5.0" in target.read_text()


def test_a_cache_registers_its_metrics_in_the_callers_registry(make_cache, tmp_path):
    from helpers import write_images

    cache = make_cache()
    registry = prometheus_client.CollectorRegistry()
    cache.register_metrics(registry)
    a, b = write_images(tmp_path, 1, 2)
    cache.resolve_many([a, b])
    cache.resolve(a)
    value = registry.get_sample_value
    assert value("assetcache_uploads_total") == 2
    assert value("assetcache_hits_total") == 1
    assert value("assetcache_misses_total") == 2
    assert value("assetcache_bytes_sent_total") > value("assetcache_stored_bytes") > 0
    assert value("assetcache_entries") == 2
    cache.resolve(b)
    assert value("assetcache_hits_total") == 2  # lifetime: saved counts are not lost


def test_stats_prometheus_writes_the_textfile(tmp_path):
    from cli_support import EmulatorCLI
    from helpers import write_images

    ecli = EmulatorCLI(tmp_path)
    (a,) = write_images(tmp_path, 1)
    ecli("upload", a)
    ecli("upload", a)
    out = tmp_path / "textfile" / "assetcache.prom"
    out.parent.mkdir()
    result = ecli("stats", "--prometheus", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "# TYPE assetcache_uploads_total counter" in text
    assert "assetcache_uploads_total 1.0" in text
    assert "assetcache_hits_total 1.0" in text
    assert "assetcache_entries 1.0" in text
    assert [p.name for p in out.parent.iterdir()] == ["assetcache.prom"]  # no temporary left
    bad = ecli("stats", "--prometheus", tmp_path / "no" / "such" / "x.prom")
    assert bad.exit_code == 2 and "cannot write" in bad.stderr


def test_the_async_twin_writes_the_textfile_too(tmp_path, emu):
    import asyncio

    from helpers import API_KEY

    from assetcache import AsyncAssetCache

    async def main() -> str:
        async with AsyncAssetCache(
            API_KEY, base_url=emu.base_url, db_path=tmp_path / "c.db"
        ) as cache:
            await cache.resolve(make_png_bytes())
            await cache.write_metrics(tmp_path / "m.prom")
        return (tmp_path / "m.prom").read_text()

    def make_png_bytes() -> bytes:
        from helpers import make_png

        return make_png(77)

    assert "assetcache_uploads_total 1.0" in asyncio.run(main())
