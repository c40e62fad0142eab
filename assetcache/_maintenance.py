"""Maintenance operations behind the CLI (listing, stats, prune, verify, ...).

A mixin of :class:`~assetcache.AssetCache` and its async twin; every method
works on the cache's own store and engine (``self._engine``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ._scan import FileStatus, scan

if TYPE_CHECKING:
    from ._cache import _Engine


class MaintenanceMixin:
    _engine: _Engine

    def status(self, paths: Iterable[str]) -> Iterator[FileStatus]:
        """Each file's standing (fresh, expiring, expired, changed, new, missing); no upload."""
        return scan(self._engine, paths)

