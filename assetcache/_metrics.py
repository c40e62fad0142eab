"""Prometheus metrics (the ``metrics`` extra, on ``prometheus-client``).

Two ways out:

* :func:`register_metrics` puts a cache's metrics in the caller's registry
  (``prometheus_client.REGISTRY`` by default), for a service that already
  serves ``/metrics``: the values are this process's, read when scraped;
* :func:`write_textfile` writes the node-exporter textfile format (atomically:
  a temporary file renamed over the old one), which is what ``assetcache stats
  --prometheus FILE`` does from cron with the totals the database keeps.

Metric names follow Prometheus' conventions: ``assetcache_`` prefix, counters
end in ``_total``, byte amounts in ``_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COUNTERS",
    "GAUGES",
    "MetricsUnavailable",
    "Tally",
    "collector",
    "register_metrics",
    "write_textfile",
]

#: Counter name (without prefix and ``_total``) -> help text.
COUNTERS: dict[str, str] = {
    "hits": "Sources answered from the cache, without an upload",
    "misses": "Sources the cache could not answer (uploaded, or failed)",
    "uploads": "Contents uploaded for the first time",
    "reuploads": "Contents uploaded again because the old upload expired or was rejected",
    "heals": "Tasks whose rejected image input was re-uploaded and the task sent again",
    "bytes_sent": "Bytes sent to the server for uploads (request bodies, base64 included)",
    "bytes_saved": "File bytes not sent because the cache answered",
    "failures": "Sources that could not be resolved (bad input, server or network error)",
    "retries": "Requests retried after a transient error",
    "store_errors": "Database operations that failed",
    "lease_waits": "Times a process waited for another one uploading the same content",
    "takeovers": "Upload leases taken over from a process that stopped holding them",
}

#: Gauge name -> help text.
GAUGES: dict[str, str] = {
    "entries": "Contents cached (one imageUUID each)",
    "stored_bytes": "File bytes of the cached contents",
    "files": "Files in the stat index",
    "db_bytes": "Size of the cache database file",
}


class MetricsUnavailable(ImportError):
    """``prometheus-client`` is not installed."""

    def __init__(self) -> None:
        super().__init__("metrics need prometheus-client: pip install 'assetcache[metrics]'")


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise MetricsUnavailable() from None
    return prometheus_client


class Tally:
    """Counts of one process since it started, thread-safe; never reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] = self._counts.get(name, 0) + value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class Sample:
    counters: Mapping[str, int]
    gauges: Mapping[str, float]


def collector(read: Callable[[], Sample], *, prefix: str = "assetcache") -> Any:
    """A prometheus-client collector that calls ``read()`` at each scrape."""
    prom = _prometheus()
    core = prom.core

    class _Collector:
        def describe(self) -> list[Any]:
            # Declared up front, so registering it twice in a registry fails clearly.
            return list(self._families(Sample({}, {})))

        def collect(self) -> Iterator[Any]:
            yield from self._families(read())

        def _families(self, sample: Sample) -> Iterator[Any]:
            for name, help_text in COUNTERS.items():
                family = core.CounterMetricFamily(f"{prefix}_{name}", help_text)
                family.add_metric([], float(sample.counters.get(name, 0)))
                yield family
            for name, help_text in GAUGES.items():
                if name in sample.gauges or not sample.gauges:
                    gauge = core.GaugeMetricFamily(f"{prefix}_{name}", help_text)
                    gauge.add_metric([], float(sample.gauges.get(name, 0)))
                    yield gauge

    return _Collector()


def register_metrics(
    read: Callable[[], Sample], registry: Any = None, *, prefix: str = "assetcache"
) -> Any:
    """Register a collector reading ``read()`` in ``registry`` (default: the global one)."""
    prom = _prometheus()
    target = prom.REGISTRY if registry is None else registry
    coll = collector(read, prefix=prefix)
    target.register(coll)
    return coll


def write_textfile(
    path: str | os.PathLike[str], sample: Sample, *, prefix: str = "assetcache"
) -> None:
    """Write ``sample`` in the node-exporter textfile format to ``path``, atomically."""
    prom = _prometheus()
    registry = prom.CollectorRegistry(auto_describe=True)
    registry.register(collector(lambda: sample, prefix=prefix))
    data = prom.generate_latest(registry)
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".assetcache-", suffix=".prom.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # node-exporter runs as another user
        os.replace(tmp, target)  # a reader sees the old file or the new one, whole
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
